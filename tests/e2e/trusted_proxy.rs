//! Behind a reverse proxy every peer is the proxy: with `--trusted-proxy`,
//! its `X-Forwarded-For` names the client for every per-address rule, and
//! the proxy's own handshakes are not held to the per-address cap. Anyone
//! else's `X-Forwarded-For` is ignored.

use crate::common::{self, TestServer, exchange_from, join_from, status_of, tcp_from};
use chat::server::config::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends an upgrade from `from` and reads the status; the connection stays
/// open (and, if upgraded, holds its slot).
async fn upgrade_held(from: [u8; 4], server: &TestServer, request: &str) -> (String, TcpStream) {
    let mut stream = tcp_from(from, server.addr).await;
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = vec![0u8; 12];
    tokio::time::timeout(common::PATIENCE, stream.read_exact(&mut head))
        .await
        .expect("in time")
        .expect("read");
    (status_of(&String::from_utf8_lossy(&head)).to_owned(), stream)
}

const PROXY: [u8; 4] = [127, 0, 0, 1];
const STRANGER: [u8; 4] = [127, 0, 0, 2];

fn upgrade_for(client: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test]
async fn a_trusted_proxys_clients_are_counted_apart() {
    let config = ServerConfig {
        trusted_proxy: vec!["127.0.0.1/32".parse().expect("a network")],
        max_connections_per_ip: 1,
        max_handshakes_per_ip: 2,
        ..ServerConfig::default()
    };
    let server = TestServer::with(config).await;
    let mut held = Vec::new();
    // Two clients behind the proxy: one chat connection each.
    for client in ["203.0.113.1", "198.51.100.7, 203.0.113.2"] {
        let (status, stream) = upgrade_held(PROXY, &server, &upgrade_for(client)).await;
        assert_eq!(status, "101", "{client}");
        held.push(stream);
    }
    // The rightmost address that is not a trusted proxy is the client.
    let again =
        exchange_from(PROXY, server.addr, upgrade_for("203.0.113.1, 127.0.0.1").as_bytes()).await;
    assert_eq!(status_of(&again), "429", "{again:?}");
    // The proxy's own slow handshakes are not capped per address.
    for _ in 0..3 {
        let mut stream = tcp_from(PROXY, server.addr).await;
        stream.write_all(b"G").await.expect("write");
        held.push(stream);
    }
    let third = exchange_from(PROXY, server.addr, upgrade_for("203.0.113.3").as_bytes()).await;
    assert_eq!(status_of(&third), "101", "{third:?}");

    // A stranger's X-Forwarded-For counts for nothing: it is one address.
    let _first = join_from(STRANGER, &server, "/?name=s1").await;
    let second = exchange_from(STRANGER, server.addr, upgrade_for("203.0.113.9").as_bytes()).await;
    assert_eq!(status_of(&second), "429", "{second:?}");
    server.stop().await;
}
