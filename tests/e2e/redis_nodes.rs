//! Shared by the tests of several nodes through Redis (`--redis`): a
//! `redis-server` of the test's own on a free loopback port, `server`
//! binaries joined to it, and JSON clients' helpers.
//!
//! Without `redis-server` a test reports itself skipped and passes, unless
//! `CHAT_REQUIRE_REDIS=1` (set by `.ci/run`) makes that a failure.

use std::net::SocketAddr;
use std::process::Stdio;

use crate::common::{PATIENCE, SERVER, command, connect_json, next_json};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::timeout;
use tokio_websockets::Message;

/// A `redis-server` of this test's own, without persistence.
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    /// Starts one on a free port, or `None` (after saying so) when the
    /// binary is missing and the tests may be skipped.
    pub async fn start(test: &str) -> Option<Self> {
        let installed = std::process::Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !installed {
            assert!(
                std::env::var_os("CHAT_REQUIRE_REDIS").is_none(),
                "CHAT_REQUIRE_REDIS is set but redis-server is missing"
            );
            eprintln!("SKIPPED {test}: redis-server not found (apt-get install redis-server)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        Some(Self::start_on(port).await)
    }

    /// Starts one on `port`; returns once it accepts connections.
    pub async fn start_on(port: u16) -> Self {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--loglevel", "notice"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = async {
            while let Some(line) = lines.next_line().await.expect("redis-server output") {
                if line.contains("Ready to accept connections") {
                    return;
                }
            }
            panic!("redis-server exited before it was ready");
        };
        timeout(PATIENCE, ready).await.expect("redis-server ready in time");
        // Keep reading its output, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { port, child }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs a command in it, as an operator would.
    pub async fn run(&self, command: &redis::Cmd) -> redis::Value {
        let client = redis::Client::open(self.url()).expect("a Redis URL");
        let mut connection =
            client.get_multiplexed_async_connection().await.expect("connect to redis-server");
        command.query_async(&mut connection).await.expect("a Redis answer")
    }

    /// Kills it at once, as a crash would.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill redis-server");
    }
}

/// A `server` binary joined to a Redis.
pub struct Node {
    pub addr: SocketAddr,
    pub child: Child,
}

impl Node {
    pub async fn start(redis: &Redis) -> Self {
        Self::start_with(redis, &[]).await
    }

    /// One with these flags too.
    pub async fn start_with(redis: &Redis, flags: &[&str]) -> Self {
        let url = redis.url();
        let args = [&["--port", "0", "--redis", &url], flags].concat();
        // CHAT_TEST_LOGS=1 shows the nodes' logs, to see why a test failed.
        let logs = std::env::var_os("CHAT_TEST_LOGS").is_some();
        let stderr = if logs { Stdio::inherit() } else { Stdio::null() };
        let mut child = command(SERVER, &args).stderr(stderr).spawn().expect("spawn server");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        timeout(PATIENCE, stdout.read_line(&mut line))
            .await
            .expect("server starts in time")
            .expect("read server stdout");
        let addr = line
            .trim()
            .strip_prefix("listening on ws://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("an address");
        Self { addr, child }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Its answer to `GET path`: the status and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        timeout(PATIENCE, stream.read_to_string(&mut response))
            .await
            .expect("an answer in time")
            .expect("read the answer");
        let status = response.get(9..12).and_then(|s| s.parse().ok()).expect("a status");
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        (status, body.to_owned())
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }
}

pub type Ws = tokio_websockets::WebSocketStream<tokio_websockets::MaybeTlsStream<TcpStream>>;

/// A JSON client past its welcome; returns it with the welcome.
pub async fn join(node: &Node, path: &str) -> (Ws, Value) {
    let mut ws = connect_json(&node.url(path)).await;
    loop {
        let event = next_json(&mut ws).await;
        if event["type"] == "welcome" {
            return (ws, event);
        }
    }
}

pub async fn say(ws: &mut Ws, text: &str) {
    let request = json!({"type": "message", "text": text}).to_string();
    ws.send(Message::text(request)).await.expect("send");
}

/// Reads events until one matches; returns it.
pub async fn until(ws: &mut Ws, matches: impl Fn(&Value) -> bool) -> Value {
    loop {
        let event = next_json(ws).await;
        if matches(&event) {
            return event;
        }
    }
}

pub fn notice(text: &'static str) -> impl Fn(&Value) -> bool {
    move |event| event["type"] == "notice" && event["text"] == text
}

/// Messages until (and with) the one saying `last`, as (seq, from, text).
pub async fn messages_through(ws: &mut Ws, last: &str) -> Vec<(u64, String, String)> {
    let mut seen = Vec::new();
    loop {
        let event = next_json(ws).await;
        if event["type"] == "message" {
            let text = event["text"].as_str().expect("text").to_owned();
            let from = event["from"].as_str().expect("from").to_owned();
            let done = text == last;
            seen.push((event["seq"].as_u64().expect("seq"), from, text));
            if done {
                return seen;
            }
        }
    }
}

/// The events a JSON client gets after its welcome, through its own join.
pub async fn after_welcome(ws: &mut Ws) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = next_json(ws).await;
        let done = event["type"] == "join";
        events.push(event);
        if done {
            return events;
        }
    }
}
