//! Names (`?name=`, `/nick`), the other commands, and bad frames: every refusal
//! goes to the sender only and changes nothing.

use crate::common::{self, Peer, TestServer, connect, next_text};
use futures_util::SinkExt;
use tokio_websockets::Message;

#[tokio::test]
async fn without_a_name_a_client_is_its_address() {
    let server = TestServer::start().await;
    let anon = Peer::join(&server, "/").await;
    let addr: std::net::SocketAddr = anon.name.parse().expect("the name is IP:PORT");
    assert!(addr.ip().is_loopback());
    server.stop().await;
}

#[tokio::test]
async fn a_taken_or_invalid_requested_name_falls_back_to_the_address_with_a_notice() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;

    let mut ws = connect(&server.url("/?name=alice")).await;
    assert_eq!(next_text(&mut ws).await, "! name \"alice\" is taken");
    let welcome = next_text(&mut ws).await;
    let name = chat::protocol::parse_welcome(&welcome).expect("welcome").to_owned();
    assert!(name.parse::<std::net::SocketAddr>().is_ok(), "{name}");
    alice.expect(&format!("* {name} joined")).await;

    let mut ws = connect(&server.url("/?name=%1B%5B31mred")).await;
    assert_eq!(
        next_text(&mut ws).await,
        "! invalid name \"\\u{1b}[31mred\": it contains control characters"
    );
    let welcome = next_text(&mut ws).await;
    assert!(welcome.starts_with("* you are 127.0.0.1:"), "{welcome}");
    server.stop().await;
}

#[tokio::test]
async fn nick_renames_and_refuses_invalid_or_taken_names() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = Peer::named(&server, "bob").await;
    alice.expect("* bob joined").await;

    bob.send("/nick robert").await;
    bob.expect("* bob is now robert").await;
    alice.expect("* bob is now robert").await;
    bob.send("hi").await;
    bob.expect("robert: hi").await;
    alice.expect("robert: hi").await;

    let long = "x".repeat(33);
    let refusals = [
        ("/nick alice", "! name \"alice\" is taken".to_owned()),
        ("/nick two words", "! invalid name \"two words\": it contains whitespace".to_owned()),
        (
            "/nick evil\u{202E}txt",
            "! invalid name \"evil\\u{202e}txt\": it contains invisible or blank characters"
                .to_owned(),
        ),
        (
            &format!("/nick {long}"),
            format!("! invalid name \"{long}\": it is longer than 32 characters"),
        ),
        ("/nick", "! usage: /nick NAME".to_owned()),
    ];
    for (command, answer) in &refusals {
        bob.send(command).await;
        bob.expect(answer).await;
    }
    // The old name stays, and alice heard none of it: her next frame is this.
    bob.send("/who").await;
    bob.expect("* 2 in lobby: alice, robert").await;
    bob.send("still me").await;
    alice.expect("robert: still me").await;
    server.stop().await;
}

#[tokio::test]
async fn who_help_unknown_commands_and_escaped_slashes() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = Peer::named(&server, "bob").await;
    alice.expect("* bob joined").await;

    alice.send("/who").await;
    alice.expect("* 2 in lobby: alice, bob").await;
    alice.send("/help").await;
    alice.expect(&format!("* {}", chat::protocol::HELP)).await;
    alice.send("/shout hey").await;
    alice.expect("! unknown command /shout; /help lists the commands").await;
    alice.send("").await;
    alice.expect("! empty message: nothing was sent").await;
    alice.send("//who is there?").await;
    alice.expect("alice: /who is there?").await;
    // Bob saw only the message: answers and errors are private.
    bob.expect("alice: /who is there?").await;
    server.stop().await;
}

#[tokio::test]
async fn a_binary_frame_gets_an_error_and_is_not_relayed() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = Peer::named(&server, "bob").await;
    alice.expect("* bob joined").await;

    alice.ws.send(Message::binary(&b"\x00\x01binary"[..])).await.expect("send");
    alice.expect("! binary frames are not chat: send text frames; nothing was sent").await;
    alice.send("text").await;
    bob.expect("alice: text").await;
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_that_connection_with_1009_and_is_not_relayed() {
    let config =
        chat::server::config::ServerConfig { max_message_bytes: 1024, ..Default::default() };
    let server = TestServer::with(config).await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = Peer::named(&server, "bob").await;
    alice.expect("* bob joined").await;

    // Over the text limit: refused, and the connection stays.
    bob.send(&"x".repeat(1025)).await;
    bob.expect("! message too long: at most 1024 bytes; nothing was sent").await;
    // Over the frame limit (three times the text limit and 1 KiB for JSON): closed.
    bob.send(&"x".repeat(4 * 1024 + 1)).await;
    assert_eq!(bob.closed().await.0, 1009);
    alice.expect("* bob left").await;
    alice.send(&"y".repeat(1024)).await;
    alice.expect(&format!("alice: {}", "y".repeat(1024))).await;
    server.stop().await;
}

#[tokio::test]
async fn over_the_rate_limit_messages_are_dropped_with_a_notice_and_a_flood_is_closed() {
    let config = chat::server::config::ServerConfig {
        rate_limit: 10,
        burst: 2,
        flood_grace: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let server = TestServer::with(config).await;
    let mut watcher = Peer::named(&server, "watcher").await;
    let mut alice = Peer::named(&server, "alice").await;
    watcher.expect("* alice joined").await;

    for text in ["one", "two", "three"] {
        alice.send(text).await;
    }
    alice.expect("alice: one").await;
    alice.expect("alice: two").await;
    alice.expect("! slow down: at most 10 messages a second; this one was not sent").await;
    watcher.expect("alice: one").await;
    watcher.expect("alice: two").await;

    // Keep flooding: each message gets its echo or a notice, until the grace
    // is over and the server closes with 1008.
    let mut code = None;
    for _ in 0..100_000 {
        alice.send("flood").await;
        let frame = common::next_frame(&mut alice.ws).await;
        if let Some((close, _)) = frame.as_close() {
            code = Some(u16::from(close));
            break;
        }
    }
    assert_eq!(code, Some(1008));
    watcher.wait_for("* alice left").await;
    server.stop().await;
}
