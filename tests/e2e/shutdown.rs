//! Graceful shutdown: every client gets Close 1001 and `run` returns, even when
//! a client never answers.

use crate::common::{self, PATIENCE, Peer, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[tokio::test]
async fn shutdown_sends_1001_to_every_client_and_returns() {
    let mut server = TestServer::start().await;
    let mut peers = Vec::new();
    for name in ["a", "b", "c"] {
        peers.push(Peer::named(&server, name).await);
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        for later in ["a", "b", "c"].iter().skip(i + 1) {
            peer.expect(&format!("* {later} joined")).await;
        }
    }

    server.begin_stop();
    for peer in &mut peers {
        assert_eq!(peer.closed().await, (1001, "server shutting down".to_owned()));
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_returns_even_when_a_client_never_answers() {
    let mut server = TestServer::start().await;
    let _listening = Peer::named(&server, "polite").await;

    // Upgraded, then silent: it never reads its Close nor answers it.
    let mut mute = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!(
        "GET /?name=mute HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    mute.write_all(request.as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    timeout(PATIENCE, mute.read_exact(&mut head)).await.expect("in time").expect("read");
    assert_eq!(&head, b"HTTP/1.1 101");

    // A connection still in its handshake must not hold shutdown either.
    let _half = TcpStream::connect(server.addr).await.expect("connect");

    server.begin_stop();
    server.stop().await;
    drop(mute);
}

#[tokio::test]
async fn while_shutting_down_newcomers_and_health_checks_get_503() {
    let mut server = TestServer::start().await;
    let mut polite = Peer::named(&server, "polite").await;
    // Never answers the Close: keeps the shutdown going for a while.
    let mut mute = TcpStream::connect(server.addr).await.expect("connect");
    let request = common::upgrade_request("/?name=mute");
    mute.write_all(request.as_bytes()).await.expect("write");
    polite.expect("* mute joined").await;

    server.begin_stop();
    // The 1001 tells us the shutdown has begun.
    assert_eq!(polite.closed().await.0, 1001);
    let mut health = TcpStream::connect(server.addr).await.expect("still accepting");
    health.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut response = String::new();
    timeout(PATIENCE, health.read_to_string(&mut response)).await.expect("in time").expect("read");
    assert!(response.starts_with("HTTP/1.1 503 "), "{response}");
    server.stop().await;
    drop(mute);
}
