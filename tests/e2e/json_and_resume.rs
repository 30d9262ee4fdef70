//! The JSON subprotocol, message numbers and resuming: every event's JSON
//! form on a real connection, malformed requests, and `?since=&epoch=` with
//! no gap and no duplicate even while messages keep coming.

use crate::common::{Peer, TestServer, connect, connect_json, next_json, next_text};
use chat::server::config::ServerConfig;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_websockets::Message;

async fn send_json(
    ws: &mut (impl futures_util::Sink<Message, Error = tokio_websockets::Error> + Unpin),
    value: Value,
) {
    ws.send(Message::text(value.to_string())).await.expect("send");
}

/// The event without its time, which the test cannot know; checks it is
/// RFC 3339 UTC.
fn untimed(mut event: Value) -> Value {
    if let Some(ts) = event.as_object_mut().and_then(|o| o.remove("ts")) {
        let ts = ts.as_str().expect("ts is a string");
        assert!(ts.ends_with('Z'), "{ts}");
        chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339");
    }
    event
}

#[tokio::test]
async fn a_json_client_gets_every_event_as_json_and_chats_with_text_clients() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = connect_json(&server.url("/?name=bob")).await;

    let welcome = next_json(&mut bob).await;
    let epoch = welcome["epoch"].as_str().expect("an epoch").to_owned();
    // JSON clients also learn their limits and a session secret.
    let session = welcome["session"].as_str().expect("a session secret").to_owned();
    assert!(session.len() == 32 && session.bytes().all(|b| b.is_ascii_hexdigit()), "{session}");
    assert_eq!(
        welcome,
        json!({"type": "welcome", "room": "lobby", "name": "bob", "online": 2, "epoch": epoch, "seq": 0,
               "limits": {"per_second": 20, "burst": 50, "max_bytes": 65536}, "session": session})
    );
    assert_eq!(
        untimed(next_json(&mut bob).await),
        json!({"type": "join", "room": "lobby", "name": "bob"})
    );
    alice.expect("* bob joined").await;

    alice.send("hello {\"x\"}").await;
    alice.expect("alice: hello {\"x\"}").await;
    assert_eq!(
        untimed(next_json(&mut bob).await),
        json!({"type": "message", "room": "lobby", "seq": 1, "from": "alice", "text": "hello {\"x\"}"})
    );

    // A leading slash is text in JSON: commands have their own types.
    send_json(&mut bob, json!({"type": "message", "text": "/who"})).await;
    assert_eq!(next_json(&mut bob).await["seq"], 2);
    alice.expect("bob: /who").await;

    send_json(&mut bob, json!({"type": "who"})).await;
    assert_eq!(
        next_json(&mut bob).await,
        json!({"type": "who", "room": "lobby", "count": 2, "names": ["alice", "bob"]})
    );
    send_json(&mut bob, json!({"type": "nick", "name": "rob"})).await;
    assert_eq!(
        next_json(&mut bob).await,
        json!({"type": "nick", "room": "lobby", "old": "bob", "new": "rob"})
    );
    alice.expect("* bob is now rob").await;
    send_json(&mut bob, json!({"type": "nick", "name": "alice"})).await;
    assert_eq!(
        next_json(&mut bob).await,
        json!({"type": "error", "text": "name \"alice\" is taken", "code": "name_taken"})
    );

    alice.close().await;
    assert_eq!(
        untimed(next_json(&mut bob).await),
        json!({"type": "leave", "room": "lobby", "name": "alice"})
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_json_gets_an_error_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let mut bob = connect_json(&server.url("/?name=bob")).await;
    next_json(&mut bob).await;
    next_json(&mut bob).await;
    let bad = [
        "hello",
        "{\"type\":\"shout\",\"text\":\"x\"}",
        "{\"type\":\"message\"}",
        "{\"type\":\"message\",\"text\":7}",
        "[1,2]",
        "{\"type\":\"message\",\"text\":\"unterminated",
        // Hostile: a huge number, a wrong type, deep nesting.
        "{\"type\":\"nick\",\"name\":1e999999}",
        "{\"type\":\"nick\",\"name\":18446744073709551616123}",
        "{\"type\":\"message\",\"text\":[\"a\"]}",
        &format!("{{\"type\":\"message\",\"text\":{}{}}}", "[".repeat(20_000), "]".repeat(20_000)),
        &"[".repeat(60_000),
    ];
    for frame in bad {
        bob.send(Message::text(frame.to_owned())).await.expect("send");
        let error = next_json(&mut bob).await;
        assert_eq!(error["type"], "error", "{frame}: {error}");
        let text = error["text"].as_str().expect("text");
        assert!(
            text.starts_with("malformed request: ") && text.ends_with("; nothing was sent"),
            "{text}"
        );
    }
    bob.send(Message::binary(&b"\x00"[..])).await.expect("send");
    assert_eq!(next_json(&mut bob).await["type"], "error");
    send_json(&mut bob, json!({"type": "message", "text": "still here"})).await;
    let message = next_json(&mut bob).await;
    assert_eq!((message["text"].as_str(), message["seq"].as_u64()), (Some("still here"), Some(1)));
    server.stop().await;
}

/// Sends `count` messages as `alice` over the text protocol; returns the
/// room's epoch, learned by a JSON peer.
async fn said(server: &TestServer, count: usize) -> String {
    let mut alice = Peer::named(server, "alice").await;
    for i in 1..=count {
        alice.send(&format!("m{i}")).await;
        alice.expect(&format!("alice: m{i}")).await;
    }
    let mut probe = connect_json(&server.url("/?name=probe")).await;
    let welcome = next_json(&mut probe).await;
    assert_eq!(welcome["seq"], count);
    // Alice stays: an empty room is forgotten, history and all.
    std::mem::forget(alice);
    welcome["epoch"].as_str().expect("epoch").to_owned()
}

#[tokio::test]
async fn resuming_replays_only_what_came_after_and_counts_what_is_gone() {
    let server = TestServer::with(ServerConfig { history: 3, ..Default::default() }).await;
    let epoch = said(&server, 10).await;

    // Within the history: only messages 9 and 10.
    let mut ws = connect_json(&server.url(&format!("/?name=a&since=8&epoch={epoch}"))).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    assert_eq!(next_json(&mut ws).await, json!({"type": "history", "phase": "start", "count": 2}));
    assert_eq!(next_json(&mut ws).await["seq"], 9);
    assert_eq!(next_json(&mut ws).await["seq"], 10);
    assert_eq!(next_json(&mut ws).await, json!({"type": "history", "phase": "end", "count": 2}));
    assert_eq!(next_json(&mut ws).await["type"], "join");

    // Up to date: nothing replayed.
    let mut ws = connect_json(&server.url(&format!("/?name=b&since=10&epoch={epoch}"))).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    assert_eq!(next_json(&mut ws).await["type"], "join");

    // From before the history: 3..=7 are gone, 8..=10 follow.
    let mut ws = connect_json(&server.url(&format!("/?name=c&since=2&epoch={epoch}"))).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    assert_eq!(next_json(&mut ws).await, json!({"type": "missed", "count": 5}));
    assert_eq!(next_json(&mut ws).await["count"], 3);
    for seq in 8..=10 {
        assert_eq!(next_json(&mut ws).await["seq"], seq);
    }

    // The same in the text protocol.
    let mut ws = connect(&server.url(&format!("/?name=d&since=2&epoch={epoch}"))).await;
    assert!(next_text(&mut ws).await.starts_with("* you are d in room lobby"));
    for line in [
        "! missed 5 messages",
        "* 3 earlier messages",
        "alice: m8",
        "alice: m9",
        "alice: m10",
        "* end of history",
        "* d joined",
    ] {
        assert_eq!(next_text(&mut ws).await, line);
    }

    // Another epoch: the history restarted, so how much is gone is unknown.
    // The notice carries the room's epoch, to resume in from now on.
    let mut ws = connect_json(&server.url("/?name=e&since=4&epoch=0123")).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "missed", "count": null, "epoch": epoch.as_str()})
    );
    assert_eq!(next_json(&mut ws).await["count"], 3);

    // A number the room has not reached is an error, and nothing is replayed.
    let mut ws = connect_json(&server.url(&format!("/?name=f&since=99&epoch={epoch}"))).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "error", "text": "cannot resume after message 99: the room's last message is 10", "code": "resume_ahead"})
    );
    assert_eq!(next_json(&mut ws).await["type"], "join");
    server.stop().await;
}

#[tokio::test]
async fn a_resume_past_the_history_bytes_gets_missed_first_then_what_fits() {
    // Room for 100 messages by count, a few kilobytes by bytes: the byte
    // bound decides what a resume gets back.
    let config = ServerConfig { history: 100, history_bytes: 8 * 1024, ..Default::default() };
    let server = TestServer::with(config).await;
    let mut alice = Peer::named(&server, "alice").await;
    let big = "q".repeat(1000);
    for i in 1..=10 {
        alice.send(&format!("{i} {big}")).await;
        alice.expect(&format!("alice: {i} {big}")).await;
    }
    let mut probe = connect_json(&server.url("/?name=probe")).await;
    let epoch = next_json(&mut probe).await["epoch"].as_str().expect("epoch").to_owned();

    let mut ws = connect_json(&server.url(&format!("/?name=c&since=2&epoch={epoch}"))).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    let missed = next_json(&mut ws).await;
    assert_eq!(missed["type"], "missed", "{missed}");
    let missed = missed["count"].as_u64().expect("a count");
    let start = next_json(&mut ws).await;
    assert_eq!(start["phase"], "start", "{start}");
    let kept = start["count"].as_u64().expect("a count");
    // Some went, some fit, and together they are the 8 after message 2.
    assert!(missed > 0 && kept > 0, "missed {missed}, kept {kept}");
    assert_eq!(missed + kept, 8);
    let mut replayed = 0;
    for seq in 3 + missed..=10 {
        let message = next_json(&mut ws).await;
        assert_eq!(message["seq"], seq, "{message}");
        assert_eq!(message["text"], format!("{seq} {big}"));
        replayed += 1;
    }
    assert_eq!(replayed, kept);
    assert_eq!(next_json(&mut ws).await["phase"], "end");
    server.stop().await;
}

#[tokio::test]
async fn resuming_while_messages_flow_has_no_gap_and_no_duplicate() {
    const TOTAL: u64 = 400;
    let config = ServerConfig { history: 1000, rate_limit: 0, ..Default::default() };
    let server = TestServer::with(config).await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = connect_json(&server.url("/?name=bob")).await;
    let epoch = next_json(&mut bob).await["epoch"].as_str().expect("epoch").to_owned();
    alice.expect("* bob joined").await;

    // Alice sends without pause, while Bob drops and comes back.
    let sender = tokio::spawn(async move {
        for i in 1..=TOTAL {
            alice.send(&format!("m{i}")).await;
        }
        alice
    });

    let mut seen = Vec::new();
    while seen.len() < 50 {
        let event = next_json(&mut bob).await;
        if event["type"] == "message" {
            seen.push(event["seq"].as_u64().expect("seq"));
        }
    }
    // Gone without a goodbye, with frames unread.
    drop(bob);
    let last = *seen.last().expect("some seen");
    let mut bob =
        connect_json(&server.url(&format!("/?name=bob2&since={last}&epoch={epoch}"))).await;
    while seen.last() != Some(&TOTAL) {
        let event = next_json(&mut bob).await;
        match event["type"].as_str() {
            Some("message") => seen.push(event["seq"].as_u64().expect("seq")),
            Some("missed") => panic!("nothing may be missed: {event}"),
            _ => {}
        }
    }
    assert_eq!(seen, (1..=TOTAL).collect::<Vec<_>>());
    let _alice = sender.await.expect("sender");
    server.stop().await;
}
