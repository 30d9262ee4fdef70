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
use chat::server::config::CONNECTION_SHARE;
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
/// Its receive buffer is small, so that what the server sends it stays in
/// the server's memory rather than in the kernel's.
async fn joined_not_reading(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("a small receive buffer");
    let mut stream = socket.connect(addr).await.expect("connect");
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
    let rest = line.strip_prefix("* ");
    let count = rest.and_then(|rest| {
        rest.strip_suffix(" earlier messages").or_else(|| rest.strip_suffix(" earlier message"))
    });
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

/// Polls `/metrics` until `chat_memory_bytes` satisfies `wanted`, checking
/// on the way that it never passes `max`; returns the value.
async fn held_until(
    addr: std::net::SocketAddr,
    max: usize,
    what: &str,
    wanted: impl Fn(usize) -> bool,
) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let held = metric(addr, "chat_memory_bytes").await;
        assert!(held <= max, "{held} bytes held, over --max-memory ({max})");
        if wanted(held) {
            return held;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: still {held} bytes held");
        // Polling /metrics: the server has no event to wait for here.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads JSON events until the answer to the request `id`.
async fn answer_to(ws: &mut Socket, id: &str) -> serde_json::Value {
    loop {
        let event = next_json(ws).await;
        if event["id"] == id {
            return event;
        }
    }
}

#[tokio::test]
async fn non_reading_clients_asking_for_big_history_pages_stay_under_the_total_and_are_answered() {
    let max = 4 * MIB;
    let config = ServerConfig {
        max_memory: max,
        // The store keeps every message; memory only the last two.
        history: 2,
        rate_limit: 0,
        slow_client_timeout: Duration::from_mins(2),
        ..ServerConfig::default()
    };
    let server = TestServer::with(config).await;
    let mut sender = join(&server.url("/big?name=sender")).await;
    // 40 messages of 16 KiB of quotes: a page (256 KiB of text) is about
    // 16 of them, over 512 KiB as JSON.
    let text = quotes(16 * KIB);
    for n in 0..40 {
        say(&mut sender, &format!("{n}{text}")).await;
        next_message(&mut sender).await;
    }
    let before = metric(server.addr, "chat_memory_bytes").await;

    // Each asks for 20 pages and reads nothing: once its socket is full,
    // its answers wait in the server.
    let mut readers = Vec::new();
    for _ in 0..8 {
        let mut ws = connect_json(&server.url("/big")).await;
        for n in 0..20 {
            let request =
                serde_json::json!({ "type": "history", "limit": 200, "id": n.to_string() });
            ws.send(Message::text(request.to_string())).await.expect("send");
        }
        readers.push(ws);
    }
    // What they have not read is counted, within the total.
    held_until(server.addr, max, "the answers waiting are counted", |held| {
        held >= before + 2 * MIB
    })
    .await;

    // Every request is answered: a page, or a refusal saying why.
    let mut refused = 0;
    for ws in &mut readers {
        for n in 0..20 {
            let answer = answer_to(ws, &n.to_string()).await;
            match answer["type"].as_str() {
                Some("earlier") => {
                    assert!(answer["messages"].as_array().is_some_and(|m| !m.is_empty()));
                }
                Some("error") => {
                    assert_eq!(answer["code"], "history_unavailable", "{answer}");
                    refused += 1;
                }
                _ => panic!("not an answer: {answer}"),
            }
        }
        assert!(metric(server.addr, "chat_memory_bytes").await <= max);
    }
    assert!(refused > 0, "160 pages of 512 KiB cannot all wait within 4 MiB");

    // Once everyone has gone, nothing is held.
    drop(readers);
    drop(sender);
    held_until(server.addr, max, "everything released", |held| held == 0).await;
}

#[tokio::test]
async fn a_non_reading_clients_unwritten_frame_is_counted_until_it_is_closed() {
    let max = 256 * MIB;
    let config = ServerConfig {
        max_memory: max,
        max_message_bytes: 4 * MIB,
        rate_limit: 0,
        ..ServerConfig::default()
    };
    let server = TestServer::with(config).await;
    let mut sender = join(&server.url("/feed?name=sender")).await;
    // Twice on the same server: what was released is reused.
    for _ in 0..2 {
        let stuck = joined_not_reading(server.addr, "/feed").await;
        // 4 MiB of quotes: 8 MiB as JSON, more than the kernel's socket
        // buffers take (Linux's default tcp_wmem grows to 4 MiB at most,
        // and the client's receive buffer is small), and more than the
        // history keeps.
        let text = quotes(4 * MIB - 8);
        say(&mut sender, &text).await;
        assert_eq!(next_message(&mut sender).await.len(), "sender: ".len() + text.len());
        // The sender took and wrote its copy; the ring let the frame go;
        // the JSON frame the client has not read is still counted.
        let json = 2 * text.len();
        held_until(server.addr, max, "the unwritten frame is counted", |held| {
            (json..json + 64 * KIB).contains(&held)
        })
        .await;
        drop(stuck);
        held_until(server.addr, max, "released once it is closed", |held| held == 0).await;
    }
}

#[tokio::test]
async fn a_replay_under_a_nearly_full_budget_is_trimmed_and_missed_is_told_first() {
    let max = 4 * MIB;
    let config = ServerConfig {
        max_memory: max,
        history_bytes: 2 * MIB,
        rate_limit: 0,
        ..ServerConfig::default()
    };
    let server = TestServer::with(config).await;
    // Two rooms fill 3 MiB of history, 24 KiB a message in both encodings.
    let small = quotes(8 * KIB);
    let mut fillers = Vec::new();
    for room in 0..2 {
        let mut filler = join(&server.url(&format!("/fill{room}"))).await;
        for n in 0..64 {
            say(&mut filler, &format!("{n}{small}")).await;
            next_message(&mut filler).await;
        }
        fillers.push(filler);
    }
    // Then 2 MiB in the room joined below: the fillers' oldest go to make
    // room, and the rooms stay under their share.
    let text = quotes(16 * KIB);
    let mut sender = join(&server.url("/h?name=sender")).await;
    for n in 0..42 {
        say(&mut sender, &format!("{n:02}{text}")).await;
        next_message(&mut sender).await;
    }
    let held = metric(server.addr, "chat_memory_bytes").await;
    assert!(held <= max - max / CONNECTION_SHARE, "rooms hold {held} bytes, over their share");
    let free = max - held;

    // The replay (42 messages, about 1.3 MiB as JSON) does not fit: the
    // newest that do are replayed, after how many were left out.
    let mut late = connect_json(&server.url("/h")).await;
    assert_eq!(next_json(&mut late).await["type"], "welcome");
    let missed = next_json(&mut late).await;
    assert_eq!(missed["type"], "missed", "{missed}");
    let missed = missed["count"].as_u64().expect("a count");
    let start = next_json(&mut late).await;
    assert_eq!(start["phase"], "start", "{start}");
    let count = start["count"].as_u64().expect("a count");
    assert!(missed >= 1 && count >= 1, "missed {missed}, replayed {count}");
    assert_eq!(missed + count, 42);
    let mut replayed = 0;
    for n in missed..42 {
        let message = next_json(&mut late).await;
        let said = message["text"].as_str().expect("a message");
        assert!(said.starts_with(&format!("{n:02}")), "message {n} out of order");
        replayed += message.to_string().len();
    }
    assert!(replayed <= free, "{replayed} bytes replayed with {free} free");
    assert_eq!(next_json(&mut late).await["phase"], "end");
}

#[tokio::test]
async fn memory_freed_when_rooms_empty_is_reused_and_rooms_leave_connections_their_share() {
    let max = 4 * MIB;
    let config = ServerConfig { max_memory: max, rate_limit: 0, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let text = quotes(16 * KIB);
    for _ in 0..2 {
        // 6 rooms of 1 MiB of history: more than the total.
        let mut peers = Vec::new();
        for room in 0..6 {
            let mut peer = join(&server.url(&format!("/r{room}"))).await;
            for n in 0..21 {
                say(&mut peer, &format!("{n}{text}")).await;
                // Its echo, not server_full.
                assert!(next_message(&mut peer).await.contains(&text));
                let held = metric(server.addr, "chat_memory_bytes").await;
                assert!(held <= max - max / CONNECTION_SHARE, "rooms hold {held} bytes");
            }
            peers.push(peer);
        }
        drop(peers);
        held_until(server.addr, max, "the rooms are gone", |held| held == 0).await;
    }
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
        .expect("VmHWM");
    kib * KIB
}

#[tokio::test]
async fn many_joins_at_once_to_a_room_read_back_from_the_store_read_it_once() {
    let (mut child, addr) = spawn_server(&[
        "--rate-limit",
        "0",
        "--joins-per-ip",
        "0",
        "--max-handshakes-per-ip",
        "0",
        "--max-connections-per-ip",
        "0",
    ])
    .await;
    // 100 messages of 60 KiB in the store; the room then leaves memory.
    let url = format!("ws://{addr}/big");
    let mut filler = join(&format!("{url}?name=filler")).await;
    let text = quotes(60 * KIB);
    for _ in 0..100 {
        say(&mut filler, &text).await;
        assert_eq!(next_message(&mut filler).await, format!("filler: {text}"));
    }
    drop(filler);
    timeout(PATIENCE, async {
        while metric(addr, "chat_memory_bytes").await > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the emptied room forgotten");

    let pid = child.id().expect("a pid");
    let before = rss_bytes(pid);
    let joins =
        (0..60).map(|i| async move { joined_not_reading(addr, &format!("/big?name=j{i}")).await });
    let held = futures_util::future::join_all(joins).await;
    timeout(PATIENCE, async {
        while metric(addr, "chat_connections").await < held.len() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("all joined");
    // Each join used to read the room's 100 messages (6 MB) itself: 60 at
    // once took 370 MB. Read once, and only what the history keeps (1 MiB).
    let grown = peak_rss_bytes(pid).saturating_sub(before);
    assert!(grown < 100 * MIB, "peak RSS grew {} MiB", grown / MIB);
    drop(held);
    child.kill().await.expect("kill");
}

/// HTTP API history pages are counted until written, as `/history` answers
/// are: a client that pipelines requests and reads none holds them in
/// `--max-memory`, and they are let go when it goes.
#[tokio::test]
async fn api_history_pages_not_read_are_counted_and_let_go() {
    const KEY: &str = "the API key";
    let api_key = Some(chat::server::config::ApiKey::from(KEY));
    let server = TestServer::with(ServerConfig { api_key, ..ServerConfig::default() }).await;
    let text = "x".repeat(8 * KIB);
    for n in 0..50 {
        let body = serde_json::json!({"from": "ci", "text": format!("{n} {text}")}).to_string();
        let answer =
            crate::common::api(&server, "POST", "/api/rooms/big/messages", Some(KEY), Some(&body))
                .await;
        assert_eq!(answer.status, 200);
    }
    let before = metric(server.addr, "chat_memory_bytes").await;
    // Sixty requests for pages of 256 KiB of text (more than the socket's
    // buffers take), none read: hyper answers one at a time, and the page
    // it cannot write is held.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!(
        "GET /api/rooms/big/messages?limit=200 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    );
    for _ in 0..60 {
        stream.write_all(request.as_bytes()).await.expect("send");
    }
    let max = ServerConfig::default().max_memory;
    held_until(server.addr, max, "a page held", |held| held >= before + 200 * KIB).await;
    drop(stream);
    held_until(server.addr, max, "pages let go", |held| held <= before).await;
    server.stop().await;
}
