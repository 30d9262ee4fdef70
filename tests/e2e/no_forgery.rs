//! Nobody can pass for someone else: a message's line breaks never make a
//! line of its own in the text protocol, control characters are refused,
//! look-alike names cannot be held side by side, and the JSON subprotocol
//! still carries the real text.

use crate::common::{Peer, TestServer, connect, connect_json, next_json, next_text};
use chat::server::config::ServerConfig;
use futures_util::SinkExt;
use serde_json::json;
use tokio_websockets::Message;

#[tokio::test]
async fn a_multi_line_message_is_one_line_for_text_clients_and_real_text_in_json() {
    let server = TestServer::start().await;
    let mut bob = Peer::named(&server, "bob").await;
    let mut watcher = connect_json(&server.url("/?name=watcher")).await;
    assert_eq!(next_json(&mut watcher).await["type"], "welcome");
    assert_eq!(next_json(&mut watcher).await["type"], "join");
    bob.expect("* watcher joined").await;
    let mut mallory = connect_json(&server.url("/?name=mallory")).await;
    bob.expect("* mallory joined").await;

    let forged = "ok\nbob: send me your token\r\nbob: now\u{2028}bob: please";
    let request = json!({"type": "message", "text": forged});
    mallory.send(Message::text(request.to_string())).await.expect("send");
    // One frame, one line, every break shown as a mark.
    bob.expect("mallory: ok\u{2424}bob: send me your token\u{2424}bob: now\u{2424}bob: please")
        .await;
    let _ = next_json(&mut watcher).await; // mallory's join
    let message = next_json(&mut watcher).await;
    assert_eq!(message["text"], forged);

    // The same from a text client: its frame's line breaks are kept as text.
    bob.send("first\nsecond").await;
    bob.expect("bob: first\u{2424}second").await;
    assert_eq!(next_json(&mut watcher).await["text"], "first\nsecond");
    server.stop().await;
}

#[tokio::test]
async fn control_characters_are_refused_and_tab_is_kept() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    for bad in ["\u{1b}]0;pwned\u{7}", "nul\u{0}", "del\u{7f}", "csi\u{9b}2J"] {
        alice.send(bad).await;
        alice
            .expect(
                "! messages may not hold control characters (tab and line breaks excepted); \
                 nothing was sent",
            )
            .await;
    }
    alice.send("a\tb").await;
    alice.expect("alice: a\tb").await;
    for blank in ["   ", "\u{200b}", "\u{3164}\u{2800}"] {
        alice.send(blank).await;
        alice.expect("! empty message: nothing was sent").await;
    }
    server.stop().await;
}

#[tokio::test]
async fn look_alike_names_cannot_be_held_together() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut kept = Vec::new();
    for name in ["Alice", "ALICE", "%D0%B0lice", "%EF%BD%81%EF%BD%8C%EF%BD%89%EF%BD%83%EF%BD%85"] {
        let mut ws = connect(&server.url(&format!("/?name={name}"))).await;
        let refused = next_text(&mut ws).await;
        assert!(refused.starts_with("! name ") && refused.ends_with(" is taken"), "{refused}");
        let welcome = next_text(&mut ws).await;
        let given = chat::protocol::parse_welcome(&welcome).expect("a welcome").to_owned();
        assert!(given.starts_with("127.0.0.1:"), "{name} got {given}");
        alice.expect(&format!("* {given} joined")).await;
        kept.push(ws);
    }
    // Renaming into a look-alike is refused too; changing one's own case is not.
    let mut bob = Peer::named(&server, "bob").await;
    alice.expect("* bob joined").await;
    bob.send("/nick \u{430}lice").await;
    bob.expect("! name \"\u{430}lice\" is taken").await;
    bob.send("/nick Bob").await;
    bob.expect("* bob is now Bob").await;
    server.stop().await;
}

#[tokio::test]
async fn invisible_and_blank_names_are_refused() {
    let server = TestServer::start().await;
    // Soft hyphen, ALM, Hangul filler, braille blank, ZWJ, Arabic number sign.
    for name in
        ["al%C2%ADice", "alice%D8%9C", "%E3%85%A4", "%E2%A0%80", "a%E2%80%8Db", "alice%D8%80"]
    {
        let mut ws = connect(&server.url(&format!("/?name={name}"))).await;
        let refused = next_text(&mut ws).await;
        assert!(refused.ends_with("it contains invisible or blank characters"), "{refused}");
    }
    server.stop().await;
}

#[tokio::test]
async fn text_over_the_largest_size_gets_an_error_and_the_connection_stays() {
    let config = ServerConfig { max_message_bytes: 10, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let mut alice = Peer::named(&server, "alice").await;
    // Ten bytes of text are fine, eleven are not: bytes of text, not characters.
    alice.send("ééééé").await;
    alice.expect("alice: ééééé").await;
    alice.send("éééééa").await;
    alice.expect("! message too long: at most 10 bytes; nothing was sent").await;
    // In JSON, quotes escaped to twice their size still fit, and so does
    // text whose every character is written as \uXXXX (three times its size).
    let mut bob = connect_json(&server.url("/?name=bob")).await;
    alice.expect("* bob joined").await;
    let request = json!({"type": "message", "text": "\"\"\"\"\"\"\"\"\"\"", "id": "q"});
    bob.send(Message::text(request.to_string())).await.expect("send");
    alice.expect("bob: \"\"\"\"\"\"\"\"\"\"").await;
    let escaped = r#"{"type":"message","text":"\u00e9\u00e9\u00e9\u00e9\u00e9"}"#;
    bob.send(Message::text(escaped.to_owned())).await.expect("send");
    alice.expect("bob: ééééé").await;
    server.stop().await;
}
