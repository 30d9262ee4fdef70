//! What clients can make the server hold is bounded in bytes: rooms cost
//! what they hold, not `--max-lag` slots; a history counts every encoding;
//! a client that does not read pins at most its own bound; and all rooms
//! together stay under `--max-memory`.
//!
//! Figures come from `chat_memory_bytes` in `/metrics` (what the server
//! accounts for) and from the RSS of a child `server` process.

use std::time::Duration;

use crate::common::{
    self, PATIENCE, SERVER, Socket, TestServer, connect, connect_json, next_json, next_text,
};
use chat::server::config::ServerConfig;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_websockets::Message;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// A value of the server's `/metrics`.
async fn metric(addr: std::net::SocketAddr, name: &str) -> usize {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut text = String::new();
    timeout(PATIENCE, stream.read_to_string(&mut text)).await.expect("in time").expect("read");
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number")
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
        .expect("VmRSS");
    kib * KIB
}

/// A `server` child process on a free port, with `args`: (process, address).
async fn spawn_server(args: &[&str]) -> (tokio::process::Child, std::net::SocketAddr) {
    let mut all = vec!["--port", "0"];
    all.extend_from_slice(args);
    let mut child = common::command(SERVER, &all).spawn().expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = timeout(PATIENCE, lines.next_line()).await.expect("listening in time");
    let line = line.expect("read").expect("a line");
    let addr = line.rsplit("://").next().expect("an address").parse().expect("address");
    (child, addr)
}

/// A raw JSON client that reads its upgrade response and then nothing more.
async fn joined_not_reading(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {}\r\n\r\n",
        chat::protocol::JSON_PROTOCOL
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        timeout(PATIENCE, stream.read_exact(&mut byte)).await.expect("in time").expect("read");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// A text-protocol client of `url`, past its welcome.
async fn join(url: &str) -> Socket {
    let mut ws = connect(url).await;
    let welcome = next_text(&mut ws).await;
    assert!(welcome.starts_with("* you are "), "{welcome}");
    ws
}

/// Sends a message.
async fn say(ws: &mut Socket, text: &str) {
    ws.send(Message::text(text.to_owned())).await.expect("send");
}

/// The next message a text-protocol client gets, past notices.
async fn next_message(ws: &mut Socket) -> String {
    loop {
        let line = next_text(ws).await;
        if !line.starts_with("* ") && !line.starts_with("! ") {
            return line;
        }
    }
}

/// How many messages a newcomer to `url` is replayed.
async fn replayed(url: &str) -> usize {
    let mut ws = join(url).await;
    let line = next_text(&mut ws).await;
    let count = line.strip_prefix("* ").and_then(|rest| rest.strip_suffix(" earlier messages"));
    count.map_or(0, |count| count.parse().expect("a count"))
}

/// Costliest text a message may hold: JSON doubles each quote.
fn quotes(bytes: usize) -> String {
    "\"".repeat(bytes)
}

#[tokio::test]
async fn a_room_of_one_costs_about_a_connection_not_max_lag_slots() {
    // With tokio's broadcast channel, each room allocated --max-lag slots
    // up front: about 115 MB a room at this setting.
    let (mut server, addr) = spawn_server(&["--max-lag", "1048576"]).await;
    let pid = server.id().expect("pid");
    // Warm up the runtime's own allocations first.
    let mut warm = join(&format!("ws://{addr}/warm")).await;
    say(&mut warm, "hi").await;
    next_message(&mut warm).await;
    let before = rss_bytes(pid);
    let mut peers = Vec::new();
    for room in 0..20 {
        let mut peer = join(&format!("ws://{addr}/room{room}")).await;
        say(&mut peer, "hello").await;
        next_message(&mut peer).await;
        peers.push(peer);
    }
    let per_room = rss_bytes(pid).saturating_sub(before) / 20;
    assert!(per_room < 256 * KIB, "a one-client room costs {per_room} bytes of RSS");
    server.kill().await.expect("kill");
}

#[tokio::test]
async fn a_history_counts_every_encoding_and_a_replay_stays_under_it() {
    let config = ServerConfig {
        history_bytes: MIB,
        rate_limit: 0,
        max_message_bytes: 64 * KIB,
        ..ServerConfig::default()
    };
    let server = TestServer::with(config).await;
    let mut json = connect_json(&server.url("/big")).await;
    // The welcome.
    next_json(&mut json).await;
    let text = quotes(64 * KIB);
    for n in 0..40 {
        let request = serde_json::json!({ "type": "message", "text": text, "id": n.to_string() });
        json.send(Message::text(request.to_string())).await.expect("send");
        // Its echo, then its ack.
        loop {
            let event = next_json(&mut json).await;
            if event["type"] == "ack" {
                break;
            }
        }
    }
    // Both encodings of a message, a JSON one twice the text, count.
    let held = metric(server.addr, "chat_memory_bytes").await;
    assert!(held <= MIB, "the room holds {held} bytes, over --history-bytes");
    assert!(held >= MIB / 2, "only {held} bytes held: the history should be nearly full");

    // A newcomer gets the history, within its bound.
    let mut late = connect_json(&server.url("/big")).await;
    let mut replayed = 0;
    loop {
        let frame = timeout(PATIENCE, late.next()).await.expect("in time").expect("open");
        let frame = frame.expect("a frame");
        let Some(event) = frame.as_text() else { continue };
        let value: serde_json::Value = serde_json::from_str(event).expect("json");
        if value["type"] == "message" {
            replayed += event.len();
        }
        if value["type"] == "history" && value["phase"] == "end" {
            break;
        }
    }
    assert!(replayed > 0, "nothing replayed");
    assert!(replayed <= MIB, "a join replayed {replayed} bytes, over --history-bytes");
}

#[tokio::test]
async fn a_client_that_does_not_read_pins_at_most_its_bound() {
    let (mut server, addr) =
        spawn_server(&["--max-lag-bytes", "1MiB", "--history-bytes", "1MiB"]).await;
    let pid = server.id().expect("pid");
    let mut senders = Vec::new();
    for n in 0..3 {
        senders.push(join(&format!("ws://{addr}/feed?name=sender{n}")).await);
    }
    let before = rss_bytes(pid);
    let stuck = joined_not_reading(addr, "/feed").await;
    let text = quotes(64 * KIB - 8);
    // 120 messages (within each sender's burst): 23 MB in both encodings.
    for round in 0..40 {
        for sender in &mut senders {
            say(sender, &format!("{round}{text}")).await;
        }
        for sender in &mut senders {
            for _ in 0..3 {
                next_message(sender).await;
            }
        }
    }
    let held = metric(addr, "chat_memory_bytes").await;
    // The ring's bound plus the history's, and the batch the connection
    // has not written yet: MAX_BATCH_BYTES and at most one frame more.
    let batch = 256 * KIB + 2 * 64 * KIB + KIB;
    assert!(held <= 2 * MIB + batch, "{held} bytes held for a client that does not read");
    let grown = rss_bytes(pid).saturating_sub(before);
    assert!(grown < 32 * MIB, "the server grew by {grown} bytes of RSS");

    drop(stuck);
    // Once it is gone, only the history stays.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let held = metric(addr, "chat_memory_bytes").await;
        if held <= MIB {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {held} bytes held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill().await.expect("kill");
}

#[tokio::test]
async fn all_rooms_stay_under_the_total_and_the_oldest_history_goes_first() {
    let config = ServerConfig {
        history_bytes: MIB,
        max_memory: 3 * MIB,
        rate_limit: 0,
        ..ServerConfig::default()
    };
    let server = TestServer::with(config).await;
    // A message costs 32 KiB as text and 64 KiB as JSON: ten fill a history.
    let text = quotes(32 * KIB);
    let mut peers = Vec::new();
    for room in 0..6 {
        let mut peer = join(&server.url(&format!("/r{room}"))).await;
        for n in 0..10 {
            say(&mut peer, &format!("{n}{text}")).await;
            next_message(&mut peer).await;
            let held = metric(server.addr, "chat_memory_bytes").await;
            assert!(held <= 3 * MIB, "{held} bytes held, over --max-memory");
        }
        peers.push(peer);
    }
    // The first room's history went first; the last room's is whole.
    let first = replayed(&server.url("/r0")).await;
    let last = replayed(&server.url("/r5")).await;
    assert!(first < last, "first room kept {first} messages, last {last}");
    assert_eq!(last, 10);
}

#[tokio::test]
async fn a_message_that_cannot_fit_the_total_is_refused_and_the_client_stays() {
    let config = ServerConfig { max_memory: 100 * KIB, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let mut json = connect_json(&server.url("/")).await;
    next_json(&mut json).await;
    let request = serde_json::json!({ "type": "message", "text": quotes(60 * KIB), "id": "1" });
    json.send(Message::text(request.to_string())).await.expect("send");
    let answer = loop {
        let event = next_json(&mut json).await;
        if event["type"] != "join" {
            break event;
        }
    };
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "server_full", "{answer}");
    assert_eq!(answer["id"], "1", "{answer}");
    let request = serde_json::json!({ "type": "message", "text": "small", "id": "2" });
    json.send(Message::text(request.to_string())).await.expect("send");
    assert_eq!(next_json(&mut json).await["text"], "small");
    assert_eq!(metric(server.addr, "chat_server_full_total").await, 1);
}
