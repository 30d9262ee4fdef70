//! Joining late shows the room's last messages, between markers, before
//! anything live; `--history` bounds them and 0 turns them off.

use crate::common::{Peer, TestServer, connect, next_text};
use chat::server::config::ServerConfig;

#[tokio::test]
async fn a_late_joiner_sees_the_last_messages_then_live_ones() {
    let server = TestServer::with(ServerConfig { history: 3, ..Default::default() }).await;
    let mut alice = Peer::named(&server, "alice").await;
    for i in 1..=4 {
        alice.send(&format!("m{i}")).await;
        alice.expect(&format!("alice: m{i}")).await;
    }
    // Notices are not history; /nick and /who answers neither.
    alice.send("/who").await;
    alice.expect("* 1 in lobby: alice").await;

    let mut bob = connect(&server.url("/?name=bob")).await;
    let expected = [
        "* you are bob in room lobby, 2 online; /help lists the commands",
        "* 3 earlier messages",
        "alice: m2",
        "alice: m3",
        "alice: m4",
        "* end of history",
        "* bob joined",
    ];
    for line in expected {
        assert_eq!(next_text(&mut bob).await, line);
    }
    alice.expect("* bob joined").await;
    alice.send("live").await;
    assert_eq!(next_text(&mut bob).await, "alice: live");

    // History belongs to its room.
    let mut carol = connect(&server.url("/other?name=carol")).await;
    assert!(next_text(&mut carol).await.starts_with("* you are carol in room other"));
    assert_eq!(next_text(&mut carol).await, "* carol joined");
    server.stop().await;
}

#[tokio::test]
async fn history_zero_turns_it_off() {
    let server = TestServer::with(ServerConfig { history: 0, ..Default::default() }).await;
    let mut alice = Peer::named(&server, "alice").await;
    alice.send("hello").await;
    alice.expect("alice: hello").await;
    let mut bob = connect(&server.url("/?name=bob")).await;
    assert!(next_text(&mut bob).await.starts_with("* you are bob"));
    assert_eq!(next_text(&mut bob).await, "* bob joined");
    server.stop().await;
}
