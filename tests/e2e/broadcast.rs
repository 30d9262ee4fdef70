//! Fan-out: every client of a room gets every message, the sender included,
//! and nothing crosses rooms.

use crate::common::{self, Peer, TestServer};

#[tokio::test]
async fn three_clients_all_receive_a_message_sender_included() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = Peer::named(&server, "bob").await;
    alice.expect("* bob joined").await;
    let mut carol = Peer::named(&server, "carol").await;
    alice.expect("* carol joined").await;
    bob.expect("* carol joined").await;

    bob.send("hello, room: ünïcode ✓").await;
    for peer in [&mut alice, &mut bob, &mut carol] {
        peer.expect("bob: hello, room: ünïcode ✓").await;
    }
    server.stop().await;
}

#[tokio::test]
async fn messages_arrive_in_the_order_they_were_sent() {
    // 100 messages at once is a flood by default.
    let config = chat::server::config::ServerConfig { rate_limit: 0, ..Default::default() };
    let server = TestServer::with(config).await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = Peer::named(&server, "bob").await;
    alice.expect("* bob joined").await;

    for i in 0..100 {
        alice.send(&format!("m{i}")).await;
    }
    for i in 0..100 {
        let line = format!("alice: m{i}");
        alice.expect(&line).await;
        bob.expect(&line).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn rooms_are_isolated() {
    let server = TestServer::start().await;
    let mut rust = Peer::join(&server, "/rust?name=ferris").await;
    let mut lobby = Peer::join(&server, "/?name=lola").await;
    let mut lobby_too = Peer::join(&server, "/lobby?name=lou").await;
    lobby.expect("* lou joined").await;

    rust.send("only for rust").await;
    rust.expect("ferris: only for rust").await;
    // Sent after the rust message was delivered: if that one had leaked into
    // the lobby, it would come first.
    lobby.send("only for the lobby").await;
    lobby.expect("lola: only for the lobby").await;
    lobby_too.expect("lola: only for the lobby").await;

    rust.send("/who").await;
    rust.expect("* 1 in rust: ferris").await;
    lobby.send("/who").await;
    lobby.expect("* 2 in lobby: lola, lou").await;
    server.stop().await;
}

#[tokio::test]
async fn joins_and_leaves_are_announced() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = Peer::named(&server, "bob").await;
    alice.expect("* bob joined").await;

    bob.close().await;
    alice.expect("* bob left").await;

    // A connection that just vanishes, without a Close frame, leaves too.
    let carol = Peer::named(&server, "carol").await;
    alice.expect("* carol joined").await;
    drop(carol);
    alice.expect("* carol left").await;

    alice.send("/who").await;
    alice.expect("* 1 in lobby: alice").await;
    server.stop().await;
}

#[tokio::test]
async fn a_message_sent_just_before_close_is_still_echoed() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    alice.send("last words").await;
    alice.close().await;
    alice.expect("alice: last words").await;
    assert_eq!(alice.closed().await.0, 1000);
    server.stop().await;
}

#[tokio::test]
async fn large_rooms_summarize_joins_and_leaves_instead_of_announcing_each() {
    let config = chat::server::config::ServerConfig { presence_limit: 2, ..Default::default() };
    let server = TestServer::with(config).await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = Peer::named(&server, "bob").await;
    alice.expect("* bob joined").await;

    // The third and fourth members are past the limit: no individual notices.
    let mut ws = common::connect(&server.url("/?name=carol")).await;
    assert_eq!(
        common::next_text(&mut ws).await,
        "* you are carol in room lobby, 3 online; /help lists the commands"
    );
    let mut dave = common::connect(&server.url("/?name=dave")).await;
    common::next_text(&mut dave).await;
    drop(dave);
    // Alice hears only summaries (one or more, depending on when the
    // periodic summary falls), which add up to the whole crowd.
    let (mut joined, mut left, mut online) = (0, 0, 0);
    while (joined, left) != (2, 1) {
        let line = alice.next().await;
        let numbers: Vec<usize> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty())
            .map(|n| n.parse().expect("a number"))
            .collect();
        assert!(
            line.starts_with("* ") && line.ends_with(" online") && numbers.len() == 3,
            "{line}"
        );
        joined += numbers[0];
        left += numbers[1];
        online = numbers[2];
    }
    assert_eq!(online, 3);
    bob.send("/who").await;
    bob.wait_for("* 3 in lobby: alice, bob, carol").await;
    server.stop().await;
}

#[tokio::test]
async fn the_batch_window_never_holds_a_clients_own_echo_or_answers() {
    // A window far longer than any test timeout: if it held the frames a
    // client's own message causes, `expect` would time out.
    let config = chat::server::config::ServerConfig {
        batch_window: std::time::Duration::from_hours(1),
        ..Default::default()
    };
    let server = TestServer::with(config).await;
    let mut alice = Peer::named(&server, "alice").await;
    for i in 0..5 {
        alice.send(&format!("m{i}")).await;
        alice.expect(&format!("alice: m{i}")).await;
    }
    alice.send("/who").await;
    alice.expect("* 1 in lobby: alice").await;
    server.stop().await;
}
