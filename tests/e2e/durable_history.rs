//! The store (`--db`): history that outlives members and restarts (clean or
//! killed), exact resumes across them, retention by count, age and size,
//! paging back in both protocols, and a store that fails at start (one line)
//! or while running (chat goes on, and the store comes back).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chat::server::config::ServerConfig;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout};
use tokio_websockets::Message;

use crate::common::{
    PATIENCE, Peer, SERVER, Socket, TestServer, command, connect_json, next_json, run,
};

/// A database file of its own, deleted with its WAL when dropped.
pub(crate) struct TempDb(PathBuf);

impl TempDb {
    pub(crate) fn new() -> Self {
        let name = format!("chat-test-{}-{:016x}.db", std::process::id(), fastrand::u64(..));
        Self(std::env::temp_dir().join(name))
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }

    pub(crate) fn config(&self) -> ServerConfig {
        ServerConfig { db: self.0.clone(), ..ServerConfig::default() }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

async fn send_json(ws: &mut Socket, value: Value) {
    ws.send(Message::text(value.to_string())).await.expect("send");
}

/// Sends `texts` as JSON messages and waits for each echo; returns their seqs.
async fn say_all(ws: &mut Socket, texts: &[&str]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for text in texts {
        send_json(ws, json!({"type": "message", "text": text})).await;
        seqs.push(next_of(ws, "message").await["seq"].as_u64().expect("a seq"));
    }
    seqs
}

/// The next event of type `kind`, past joins, leaves and notices.
async fn next_of(ws: &mut Socket, kind: &str) -> Value {
    loop {
        let event = next_json(ws).await;
        if event["type"] == kind {
            return event;
        }
        assert!(
            ["join", "leave", "notice", "presence"].contains(&event["type"].as_str().unwrap_or("")),
            "expected {kind}, got {event}"
        );
    }
}

/// Everything a JSON client is sent on joining, up to the end of its
/// replay (or its welcome, when nothing is replayed): welcome first.
async fn join_events(ws: &mut Socket) -> Vec<Value> {
    let welcome = next_json(ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let mut events = vec![welcome];
    loop {
        let event = next_json(ws).await;
        let done =
            event["type"] == "join" || (event["type"] == "history" && event["phase"] == "end");
        events.push(event);
        if done {
            return events;
        }
    }
}

fn texts(events: &[Value]) -> Vec<&str> {
    events.iter().filter(|e| e["type"] == "message").filter_map(|e| e["text"].as_str()).collect()
}

/// Waits until the in-process server has no connection left, so that
/// rooms were forgotten and the next join reads them back from the store.
async fn gone(server: &TestServer) {
    let base = server.url("").replace("ws://", "http://");
    let patience = Patience::new();
    while metric(&base, "chat_connections").await > 0 {
        patience.again("every connection closed").await;
    }
}

/// A server binary on a port of its own, started with `args`.
struct Node {
    child: Child,
    url: String,
}

impl Node {
    async fn start(args: &[&str]) -> Self {
        let mut child = command(SERVER, args).spawn().expect("spawn the server");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        timeout(PATIENCE, stdout.read_line(&mut line))
            .await
            .expect("starts in time")
            .expect("read");
        let url = line.trim().strip_prefix("listening on ").expect("the listening line").to_owned();
        Self { child, url }
    }

    /// Stops it with `signal` (TERM or KILL) and waits for it to exit.
    async fn stop(mut self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let killed = Command::new("kill").args([&format!("-{signal}"), &pid]).status().await;
        assert!(killed.expect("kill").success());
        timeout(PATIENCE, self.child.wait()).await.expect("exits in time").expect("wait");
    }

    async fn metric(&self, name: &str) -> i64 {
        metric(&self.url.replace("ws://", "http://"), name).await
    }
}

/// A value from `/metrics` of the server at `base` (`http://HOST:PORT`).
async fn metric(base: &str, name: &str) -> i64 {
    let addr = base.strip_prefix("http://").expect("http://");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.expect("write");
    let mut body = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut body).await.expect("read");
    let line = body
        .lines()
        .find(|line| {
            line.split(' ').next() == Some(name) || line.starts_with(&format!("{name}_total "))
        })
        .unwrap_or_else(|| panic!("no {name} in {body}"));
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number")
}

/// Lets a test look again for something it waits for, for PATIENCE at most.
struct Patience(tokio::time::Instant);

impl Patience {
    fn new() -> Self {
        Self(tokio::time::Instant::now() + PATIENCE)
    }

    /// Waits a little before the next look, failing the test past PATIENCE.
    async fn again(&self, what: &str) {
        assert!(tokio::time::Instant::now() < self.0, "never happened: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_restarted_server_replays_what_was_said_and_numbers_on() {
    let db = TempDb::new();
    let server = TestServer::with(db.config()).await;
    let mut alice = connect_json(&server.url("/garden?name=alice")).await;
    let epoch = join_events(&mut alice).await[0]["epoch"].clone();
    assert_eq!(say_all(&mut alice, &["one", "two", "three"]).await, [1, 2, 3]);
    drop(alice);
    server.stop().await;

    let server = TestServer::with(db.config()).await;
    let mut bob = connect_json(&server.url("/garden?name=bob")).await;
    let events = join_events(&mut bob).await;
    assert_eq!(events[0]["epoch"], epoch, "the same epoch after a clean restart");
    assert_eq!(events[0]["seq"], 3);
    assert_eq!(texts(&events), ["one", "two", "three"]);
    assert!(events.iter().all(|e| e["type"] != "missed"), "{events:?}");
    assert_eq!(say_all(&mut bob, &["four"]).await, [4], "numbering goes on");
    server.stop().await;
}

#[tokio::test]
async fn an_emptied_room_keeps_its_history_and_numbering() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    alice.send("before everyone left").await;
    alice.expect("alice: before everyone left").await;
    alice.close().await;
    gone(&server).await;
    // The room was forgotten: it is read back from the store.
    let mut bob = connect_json(&server.url("/?name=bob")).await;
    let events = join_events(&mut bob).await;
    assert_eq!(texts(&events), ["before everyone left"]);
    assert_eq!(events[0]["seq"], 1);
    assert_eq!(say_all(&mut bob, &["after"]).await, [2]);
    server.stop().await;
}

/// Resumes after a restart by `signal`: exactly the messages after `since`,
/// and no word of a loss.
async fn resume_across_a_restart(signal: &str) {
    let db = TempDb::new();
    let node = Node::start(&["--port", "0", "--db", db.path(), "--rate-limit", "0"]).await;
    let mut alice = connect_json(&format!("{}/garden?name=alice", node.url)).await;
    let epoch = join_events(&mut alice).await[0]["epoch"].as_str().expect("epoch").to_owned();
    let said = say_all(&mut alice, &["m1", "m2", "m3", "m4", "m5"]).await;
    assert_eq!(said, [1, 2, 3, 4, 5]);
    // Killed only once the store has all five: what a crash may lose is
    // README's business, not this test's.
    let patience = Patience::new();
    while node.metric("chat_store_written").await < 5 {
        patience.again("the five are stored").await;
    }
    node.stop(signal).await;

    let node = Node::start(&["--port", "0", "--db", db.path(), "--rate-limit", "0"]).await;
    let url = format!("{}/garden?name=alice&since=2&epoch={epoch}", node.url);
    let mut alice = connect_json(&url).await;
    let events = join_events(&mut alice).await;
    assert_eq!(events[0]["epoch"], epoch.as_str(), "{events:?}");
    assert_eq!(texts(&events), ["m3", "m4", "m5"], "{events:?}");
    assert!(events.iter().all(|e| e["type"] != "missed"), "{events:?}");
    // A crash may have handed out numbers the store never saw: numbering
    // goes on above any of them, never reusing one.
    let next = say_all(&mut alice, &["m6"]).await[0];
    if signal == "TERM" {
        assert_eq!(next, 6);
    } else {
        assert!(next > 5, "{next}");
    }
    // And one resuming from the end hears of no loss either.
    let url = format!("{}/garden?name=bob&since=5&epoch={epoch}", node.url);
    let mut bob = connect_json(&url).await;
    let welcome = next_json(&mut bob).await;
    assert_eq!(welcome["type"], "welcome");
    let after = next_json(&mut bob).await;
    assert_eq!(after["type"], "history", "{after}");
    assert_eq!(texts(&[next_json(&mut bob).await]), ["m6"]);
    node.stop("TERM").await;
}

#[tokio::test]
async fn a_resume_across_a_clean_restart_is_exact() {
    resume_across_a_restart("TERM").await;
}

#[tokio::test]
async fn a_resume_across_a_killed_server_is_exact_and_no_number_is_reused() {
    resume_across_a_restart("KILL").await;
}

#[tokio::test]
async fn history_pages_back_in_both_protocols() {
    let server = TestServer::with(ServerConfig { rate_limit: 0, ..ServerConfig::default() }).await;
    let mut alice = connect_json(&server.url("/?name=alice")).await;
    join_events(&mut alice).await;
    let all: Vec<String> = (1..=30).map(|n| format!("m{n}")).collect();
    say_all(&mut alice, &all.iter().map(String::as_str).collect::<Vec<_>>()).await;

    send_json(&mut alice, json!({"type": "history", "before": 11, "limit": 5, "id": "p1"})).await;
    let page = next_of(&mut alice, "earlier").await;
    assert_eq!(page["id"], "p1");
    assert_eq!(page["more"], true);
    let seqs: Vec<_> =
        page["messages"].as_array().expect("messages").iter().map(|m| m["seq"].clone()).collect();
    assert_eq!(seqs, [6, 7, 8, 9, 10]);
    assert_eq!(page["messages"][0]["from"], "alice");
    assert_eq!(page["messages"][0]["text"], "m6");
    send_json(&mut alice, json!({"type": "history", "before": 3, "limit": 5})).await;
    let page = next_of(&mut alice, "earlier").await;
    assert_eq!(page["more"], false);
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(2));
    // Without `before`: the newest; a limit past the largest page is cut to it.
    send_json(&mut alice, json!({"type": "history", "limit": 100_000})).await;
    let page = next_of(&mut alice, "earlier").await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(30));
    assert_eq!(page["messages"][29]["text"], "m30");
    // The largest `before` a client can write is the newest too, and costs
    // the store nothing.
    send_json(&mut alice, json!({"type": "history", "before": u64::MAX, "limit": 1})).await;
    assert_eq!(next_of(&mut alice, "earlier").await["messages"][0]["text"], "m30");
    let base = server.url("").replace("ws://", "http://");
    assert_eq!(metric(&base, "chat_store_errors").await, 0);

    let mut bob = Peer::named(&server, "bob").await;
    bob.send("/history 2").await;
    let answer = loop {
        let line = bob.next().await;
        if line.starts_with("* 2 earlier") {
            break line;
        }
    };
    let lines: Vec<_> = answer.lines().collect();
    assert_eq!(lines[0], "* 2 earlier messages from #29:");
    assert!(lines[1].starts_with("#29 ") && lines[1].ends_with(" alice: m29"), "{answer}");
    assert!(lines[2].starts_with("#30 ") && lines[2].ends_with(" alice: m30"), "{answer}");
    assert_eq!(lines[3], "* more: /history N 29");
    bob.send("/history two").await;
    assert!(bob.next().await.starts_with("! usage: /history [N] [BEFORE]"));
    server.stop().await;
}

#[tokio::test]
async fn retention_keeps_the_last_messages_of_each_room() {
    let config = ServerConfig { keep_messages: 3, rate_limit: 0, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let mut alice = connect_json(&server.url("/?name=alice")).await;
    join_events(&mut alice).await;
    say_all(&mut alice, &["m1", "m2", "m3", "m4", "m5", "m6"]).await;
    send_json(&mut alice, json!({"type": "history", "before": 7, "limit": 10})).await;
    let page = next_of(&mut alice, "earlier").await;
    let kept: Vec<_> =
        page["messages"].as_array().expect("messages").iter().map(|m| m["text"].clone()).collect();
    assert_eq!(kept, ["m4", "m5", "m6"]);
    assert_eq!(page["more"], false);
    drop(alice);
    gone(&server).await;
    // Read back from the store once the room emptied: the same three.
    let mut bob = connect_json(&server.url("/?name=bob")).await;
    assert_eq!(texts(&join_events(&mut bob).await), ["m4", "m5", "m6"]);
    server.stop().await;
}

#[tokio::test]
async fn retention_forgets_messages_older_than_keep_for() {
    let config = ServerConfig { keep_for: Duration::from_secs(1), ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let mut alice = connect_json(&server.url("/?name=alice")).await;
    join_events(&mut alice).await;
    say_all(&mut alice, &["soon gone"]).await;
    send_json(&mut alice, json!({"type": "history"})).await;
    assert_eq!(next_of(&mut alice, "earlier").await["messages"][0]["text"], "soon gone");
    let patience = Patience::new();
    loop {
        send_json(&mut alice, json!({"type": "history"})).await;
        let page = next_of(&mut alice, "earlier").await;
        if page["messages"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        patience.again("the message is too old to be kept").await;
    }
    // Nor is it replayed to a newcomer, though the room kept it in memory.
    let mut bob = connect_json(&server.url("/?name=bob")).await;
    assert!(texts(&join_events(&mut bob).await).is_empty());
    server.stop().await;
}

#[tokio::test]
async fn retention_keeps_the_whole_store_under_its_size() {
    let config = ServerConfig { db_max_bytes: 2000, rate_limit: 0, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let text = "x".repeat(500);
    for room in ["a", "b"] {
        let mut ws = connect_json(&server.url(&format!("/{room}?name=alice"))).await;
        join_events(&mut ws).await;
        say_all(&mut ws, &[&text, &text, &text]).await;
    }
    let base = server.url("").replace("ws://", "http://");
    let patience = Patience::new();
    while metric(&base, "chat_store_trimmed").await < 3 {
        patience.again("the oldest messages are trimmed").await;
    }
    assert!(metric(&base, "chat_store_bytes").await <= 2000);
    // The oldest went: room a's first messages, not b's last.
    let mut ws = connect_json(&server.url("/b?name=bob")).await;
    join_events(&mut ws).await;
    send_json(&mut ws, json!({"type": "history", "before": 4})).await;
    assert_eq!(next_of(&mut ws, "earlier").await["messages"].as_array().map(Vec::len), Some(3));
    server.stop().await;
}

#[tokio::test]
async fn a_full_writer_queue_never_stops_delivery_and_is_counted() {
    // Each message is larger than the whole queue: none is stored.
    let config = ServerConfig { db_queue_bytes: 100, rate_limit: 0, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let mut alice = connect_json(&server.url("/?name=alice")).await;
    join_events(&mut alice).await;
    let text = "y".repeat(200);
    assert_eq!(say_all(&mut alice, &[&text, &text, &text]).await, [1, 2, 3]);
    let base = server.url("").replace("ws://", "http://");
    assert_eq!(metric(&base, "chat_store_dropped").await, 3);
    assert_eq!(metric(&base, "chat_store_written").await, 0);
    server.stop().await;
}

/// Runs the server binary on a store that cannot be used: one line naming
/// the file, exit 1.
async fn refused_at_start(db: &str, reason: &str) {
    let (code, stdout, stderr) = run(SERVER, &["--port", "0", "--db", db], "").await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("error: cannot open the store {db}: ")), "{stderr}");
    assert!(stderr.contains(reason), "{stderr}");
}

#[tokio::test]
async fn a_store_that_cannot_be_used_stops_the_server_at_start_with_one_line() {
    let corrupt = TempDb::new();
    std::fs::write(&corrupt.0, vec![0x5a; 8192]).expect("write garbage");
    refused_at_start(corrupt.path(), "not a database").await;
    // Unwritable even for root.
    refused_at_start("/proc/version", "unable to open").await;
    let missing = std::env::temp_dir().join("no-such-directory-for-chat").join("chat.db");
    refused_at_start(missing.to_str().expect("UTF-8"), "unable to open").await;

    // A second server on a file in use.
    let db = TempDb::new();
    let first = Node::start(&["--port", "0", "--db", db.path()]).await;
    refused_at_start(db.path(), "another server uses it").await;
    first.stop("TERM").await;
}

#[tokio::test]
async fn a_store_failing_while_running_stops_no_chat_and_comes_back() {
    if !Path::new("/usr/bin/prlimit").exists() && !Path::new("/bin/prlimit").exists() {
        assert!(std::env::var_os("CI").is_none(), "prlimit (util-linux) is needed");
        eprintln!("SKIPPED: no prlimit");
        return;
    }
    let db = TempDb::new();
    // Files the server writes may not grow past 256 KiB (a soft limit, which
    // the server's owner may lift): the WAL soon fails.
    let mut child = command(
        "prlimit",
        &[
            "--fsize=262144:unlimited",
            "--",
            SERVER,
            "--port",
            "0",
            "--db",
            db.path(),
            "--rate-limit",
            "0",
        ],
    )
    .spawn()
    .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    timeout(PATIENCE, stdout.read_line(&mut line)).await.expect("in time").expect("read");
    let url = line.trim().strip_prefix("listening on ").expect("listening").to_owned();
    let node = Node { child, url };
    let mut alice = connect_json(&format!("{}/?name=alice", node.url)).await;
    join_events(&mut alice).await;
    let mut bob = connect_json(&format!("{}/?name=bob", node.url)).await;
    join_events(&mut bob).await;
    next_of(&mut alice, "join").await;

    let text = "z".repeat(16 * 1024);
    let mut sent = 0;
    while node.metric("chat_store_errors").await == 0 {
        assert!(sent < 200, "the store never failed");
        say_all(&mut alice, &[&text]).await;
        sent += 1;
        // Every message reaches bob all the same.
        assert_eq!(
            next_of(&mut bob, "message").await["text"].as_str().map(str::len),
            Some(text.len())
        );
    }
    assert_eq!(node.metric("chat_store_up").await, 0);
    // The disk comes back.
    let pid = node.child.id().expect("running").to_string();
    let lifted =
        Command::new("prlimit").args(["--pid", &pid, "--fsize=unlimited:unlimited"]).status().await;
    assert!(lifted.expect("prlimit").success());
    let written = node.metric("chat_store_written").await;
    let patience = Patience::new();
    loop {
        say_all(&mut alice, &["after the disk came back"]).await;
        next_of(&mut bob, "message").await;
        if node.metric("chat_store_up").await == 1
            && node.metric("chat_store_written").await > written
        {
            break;
        }
        patience.again("the store writes again").await;
    }
    node.stop("TERM").await;
}
