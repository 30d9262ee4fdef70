//! Keepalive: the server pings; a client that answers stays, one that is
//! silent past the timeout is closed (1008) and its leave is announced.

use std::time::Duration;

use crate::common::{self, PATIENCE, Peer, TestServer};
use chat::server::config::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[tokio::test]
async fn a_silent_client_is_closed_and_leaves_while_an_answering_one_stays() {
    let config = ServerConfig {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let server = TestServer::with(config).await;
    // Alice reads all along, and tokio-websockets answers pings as it reads.
    let mut alice = Peer::named(&server, "alice").await;

    // Upgraded, then silent: never reads, never answers a ping.
    let mut mute = TcpStream::connect(server.addr).await.expect("connect");
    let request = common::upgrade_request("/?name=mute");
    mute.write_all(request.as_bytes()).await.expect("write");
    alice.expect("* mute joined").await;
    alice.expect("* mute left").await;

    // What the mute client was sent ends with a Close frame carrying 1008.
    let mut received = Vec::new();
    timeout(PATIENCE, mute.read_to_end(&mut received))
        .await
        .expect("closed in time")
        .expect("read");
    let reason = b"no answer to ping";
    // 0x88: a final Close frame; 19: its length; 0x03F0: 1008.
    let close = [&[0x88, 19, 0x03, 0xF0][..], reason].concat();
    assert!(received.ends_with(&close), "{:?}", String::from_utf8_lossy(&received));

    alice.send("still here").await;
    alice.expect("alice: still here").await;
    server.stop().await;
}
