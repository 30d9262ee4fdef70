//! Pings are metered: a client that pings faster than the budget for longer
//! than `--flood-grace` is closed with 1008; one that pings now and then is
//! not. The room carries on.

use std::time::Duration;

use crate::common::{PATIENCE, Peer, TestServer, connect};
use chat::server::config::ServerConfig;
use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_websockets::Message;

#[tokio::test]
async fn a_ping_flood_is_closed_with_1008_and_the_room_carries_on() {
    let config =
        ServerConfig { flood_grace: Duration::from_millis(300), ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let mut alice = Peer::named(&server, "alice").await;
    let ws = connect(&server.url("/?name=pinger")).await;
    alice.expect("* pinger joined").await;

    let (mut sink, mut stream) = ws.split();
    // Pings as fast as the server takes them, pongs read as they come.
    let flood = async {
        loop {
            if sink.send(Message::ping(&b"x"[..])).await.is_err() {
                return;
            }
        }
    };
    let closed = async {
        while let Some(frame) = stream.next().await {
            if let Some((code, reason)) = frame.ok().as_ref().and_then(Message::as_close) {
                return Some((u16::from(code), reason.to_owned()));
            }
        }
        None
    };
    let closed = timeout(PATIENCE, async {
        tokio::pin!(closed);
        tokio::select! {
            closed = &mut closed => closed,
            // Sending fails once the server has closed: its Close is read.
            () = flood => closed.await,
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(closed, Some((1008, "too many pings".to_owned())));
    alice.expect("* pinger left").await;
    alice.send("unharmed").await;
    alice.expect("alice: unharmed").await;
    server.stop().await;
}

#[tokio::test]
async fn a_few_pings_are_answered() {
    let server = TestServer::start().await;
    let mut ws = connect(&server.url("/?name=calm")).await;
    // The burst, all answered.
    for _ in 0..chat::server::config::PING_BURST {
        ws.send(Message::ping(&b"p"[..])).await.expect("send");
    }
    let mut pongs = 0;
    while pongs < chat::server::config::PING_BURST {
        let frame =
            timeout(PATIENCE, ws.next()).await.expect("in time").expect("open").expect("ok");
        if frame.is_pong() {
            pongs += 1;
        }
    }
    ws.send(Message::text("still here".to_owned())).await.expect("send");
    loop {
        let frame =
            timeout(PATIENCE, ws.next()).await.expect("in time").expect("open").expect("ok");
        if frame.as_text() == Some("calm: still here") {
            break;
        }
    }
    server.stop().await;
}
