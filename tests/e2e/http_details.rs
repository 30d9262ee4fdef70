//! HTTP details a proxy or a careful client relies on: HTTP/1.0 upgrades
//! are refused, absolute-form targets are understood, HEAD is GET without a
//! body, the `Authorization` scheme is case-insensitive, and the server's own
//! paths (and `.`, `..`) are never rooms.

use crate::common::{PATIENCE, Peer, TestServer, status_of as status};
use chat::server::config::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// Sends a request and reads the answer's head (and whatever follows, until
/// the server closes or switches protocols).
async fn exchange(server: &TestServer, request: &str) -> String {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let n = timeout(PATIENCE, stream.read(&mut buf)).await.expect("in time").expect("read");
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        // A 101 keeps the connection: its head is enough.
        if n == 0 || text.starts_with("HTTP/1.1 101") && text.contains("\r\n\r\n") {
            return text.into_owned();
        }
    }
}

#[tokio::test]
async fn an_http_1_0_upgrade_gets_400() {
    let server = TestServer::start().await;
    let response = exchange(&server, &format!("GET / HTTP/1.0\r\nHost: x\r\n{UPGRADE}\r\n")).await;
    assert_eq!(status(&response), "400", "{response}");
    assert!(response.ends_with("a WebSocket upgrade needs HTTP/1.1\n"), "{response}");
    server.stop().await;
}

#[tokio::test]
async fn an_absolute_form_target_names_its_room() {
    let server = TestServer::start().await;
    let mut watcher = Peer::join(&server, "/rust?name=watcher").await;
    let request = format!("GET http://x:1/rust?name=proxied HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n");
    let response = exchange(&server, &request).await;
    assert_eq!(status(&response), "101", "{response}");
    watcher.expect("* proxied joined").await;
    let page = exchange(&server, "GET https://x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&page), "200", "{page}");
    server.stop().await;
}

#[tokio::test]
async fn head_is_answered_like_get_without_a_body() {
    let server = TestServer::start().await;
    for path in ["/", "/rust", "/healthz", "/metrics"] {
        let get = exchange(&server, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        let head = exchange(&server, &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert_eq!(status(&head), "200", "{path}: {head}");
        let (get_head, get_body) = get.split_once("\r\n\r\n").expect("a head");
        assert!(!get_body.is_empty(), "{path}");
        let (head_head, head_body) = head.split_once("\r\n\r\n").expect("a head");
        assert_eq!(head_body, "", "{path}");
        let length =
            |head: &str| head.lines().find(|l| l.starts_with("Content-Length:")).map(str::to_owned);
        // The metrics' counts move between the two requests; their length
        // may too.
        if path != "/metrics" {
            assert_eq!(length(head_head), length(get_head), "{path}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn the_authorization_scheme_is_case_insensitive() {
    let config = ServerConfig { token: Some("s3cret".into()), ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let request =
            format!("GET / HTTP/1.1\r\nHost: x\r\nAuthorization: {scheme} s3cret\r\n{UPGRADE}\r\n");
        assert_eq!(status(&exchange(&server, &request).await), "101", "{scheme}");
    }
    let request =
        format!("GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic s3cret\r\n{UPGRADE}\r\n");
    assert_eq!(status(&exchange(&server, &request).await), "401");
    server.stop().await;
}

#[tokio::test]
async fn the_servers_own_paths_and_dots_are_not_rooms() {
    let server = TestServer::start().await;
    for path in ["/.", "/..", "/healthz", "/metrics", "/readyz", "/livez", "/api", "/favicon.ico"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n");
        let response = exchange(&server, &request).await;
        assert_eq!(status(&response), "404", "{path}: {response}");
        assert!(response.ends_with("it is reserved\n"), "{path}: {response}");
    }
    for path in ["/favicon.ico", "/api"] {
        let response = exchange(&server, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert_eq!(status(&response), "404", "{path}: {response}");
    }
    // What they answer without an upgrade is unchanged.
    let health = exchange(&server, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&health), "200");
    let metrics = exchange(&server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&metrics), "200");
    server.stop().await;
}
