//! One address cannot take every connection slot: connections dribbling
//! their request head hold only their own address's handshake slots, so
//! other addresses still upgrade and `/healthz` still answers; chat
//! connections are capped per address too. (127.0.0.2 stands for another
//! client's address.)

use crate::common::{
    self, TestServer, exchange_from, join_from, status_of, tcp_from, upgrade_request,
};
use chat::server::config::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const ATTACKER: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];

/// Opens `count` connections from the attacker that each send one byte of a
/// request head and then nothing more.
async fn slow_headers(server: &TestServer, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = tcp_from(ATTACKER, server.addr).await;
        // Refused ones may already be closed: that is fine.
        let _ = stream.write_all(b"G").await;
        held.push(stream);
    }
    held
}

#[tokio::test]
async fn slow_headers_from_one_address_stop_neither_another_address_nor_healthz() {
    // The attack: a few chat slots, and more slow connections than
    // slots and pending refusals together.
    let config = ServerConfig { max_connections: 8, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let _held = slow_headers(&server, 100).await;

    let healthz =
        exchange_from(OTHER, server.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&healthz), "200", "{healthz:?}");
    let mut other = join_from(OTHER, &server, "/?name=other").await;
    other.send("still here").await;
    other.expect("other: still here").await;
    server.stop().await;
}

#[tokio::test]
async fn past_its_handshake_slots_an_address_is_told_to_come_back_later() {
    let config = ServerConfig { max_handshakes_per_ip: 4, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let _held = slow_headers(&server, 4).await;
    // Answered at once, without a request: the answer does not wait for a
    // head that a slow client may never finish.
    let mut fifth = tcp_from(ATTACKER, server.addr).await;
    let mut response = Vec::new();
    let _ = timeout(common::PATIENCE, fifth.read_to_end(&mut response))
        .await
        .expect("an answer in time");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{response}");
    assert!(response.contains("\r\nRetry-After: "), "{response}");
    // Another address is not affected.
    join_from(OTHER, &server, "/?name=other").await;
    server.stop().await;
}

#[tokio::test]
async fn past_the_overall_handshake_slots_every_address_is_told_503_until_they_free() {
    let config =
        ServerConfig { max_handshakes: 4, max_handshakes_per_ip: 0, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    // Four addresses each hold one slot with a request head they never finish.
    let mut held = Vec::new();
    for last in 3..7 {
        let mut stream = tcp_from([127, 0, 0, last], server.addr).await;
        stream.write_all(b"G").await.expect("one byte written");
        held.push(stream);
    }
    // The server takes connections in order: once the fifth is answered, the
    // four before it hold their slots.
    let mut fifth = tcp_from([127, 0, 0, 7], server.addr).await;
    let mut response = Vec::new();
    let _ = timeout(common::PATIENCE, fifth.read_to_end(&mut response))
        .await
        .expect("an answer in time");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{response}");
    assert!(response.contains("\r\nRetry-After: "), "{response}");
    // Slots freed by closed connections are taken again.
    drop(held);
    timeout(common::PATIENCE, async {
        loop {
            let answer =
                exchange_from(OTHER, server.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await;
            if status_of(&answer) == "200" {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("slots freed");
    let metrics =
        exchange_from(OTHER, server.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(metrics.contains("chat_refused_total{reason=\"handshakes_full\"} 1\n"), "{metrics}");
    join_from(OTHER, &server, "/?name=other").await;
    server.stop().await;
}

#[tokio::test]
async fn chat_connections_are_capped_per_address() {
    let config = ServerConfig { max_connections_per_ip: 2, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let mut other = join_from(OTHER, &server, "/?name=other").await;
    let first = join_from(ATTACKER, &server, "/?name=a1").await;
    let _second = join_from(ATTACKER, &server, "/?name=a2").await;
    let third = exchange_from(ATTACKER, server.addr, upgrade_request("/?name=a3").as_bytes()).await;
    assert_eq!(status_of(&third), "429", "{third:?}");
    assert!(third.contains("\r\nRetry-After: "), "{third:?}");
    // A slot given back is free again, once the server has seen the close.
    drop(first);
    other.wait_for("* a1 left").await;
    let again = timeout(common::PATIENCE, async {
        loop {
            let request = upgrade_request("/?name=a4");
            let response = exchange_from(ATTACKER, server.addr, request.as_bytes()).await;
            if status_of(&response) != "429" {
                return response;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the slot comes back");
    assert_eq!(status_of(&again), "101", "{again:?}");
    server.stop().await;
}

#[tokio::test]
async fn zero_turns_the_per_address_caps_off() {
    let config = ServerConfig {
        max_handshakes_per_ip: 0,
        max_connections_per_ip: 0,
        ..ServerConfig::default()
    };
    let server = TestServer::with(config).await;
    let held = slow_headers(&server, 80).await;
    // The 81st is not refused: it upgrades.
    let mut peers = Vec::new();
    for i in 0..3 {
        peers.push(join_from(ATTACKER, &server, &format!("/?name=p{i}")).await);
    }
    drop(held);
    server.stop().await;
}

#[tokio::test]
async fn stalled_tls_handshakes_from_one_address_stop_no_other_address() {
    use std::sync::Arc;
    use tokio_rustls::rustls::{self, RootCertStore, pki_types::ServerName};

    let (cert, key, der) = common::self_signed_certificate();
    let acceptor = chat::tls::acceptor(&cert, &key).expect("acceptor");
    let config = ServerConfig { max_connections: 8, ..ServerConfig::default() };
    let server = TestServer::with_tls(config, Some(acceptor)).await;
    // Connected, and never a byte of TLS.
    let mut stalled = Vec::new();
    for _ in 0..100 {
        stalled.push(tcp_from(ATTACKER, server.addr).await);
    }

    let mut roots = RootCertStore::empty();
    roots.add(der.into()).expect("root");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tcp_from(OTHER, server.addr).await;
    let name = ServerName::try_from("localhost").expect("name");
    let mut stream = timeout(common::PATIENCE, connector.connect(name, tcp))
        .await
        .expect("in time")
        .expect("TLS handshake");
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    let mut response = String::new();
    timeout(common::PATIENCE, stream.read_to_string(&mut response)).await.expect("in time").ok();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response:?}");
    drop(stalled);
    server.stop().await;
    let _ = std::fs::remove_dir_all(cert.parent().expect("dir"));
}
