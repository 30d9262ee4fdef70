//! What is not a chat upgrade gets an HTTP status and a closed connection,
//! never a hang, and the server keeps serving.

use crate::common::{self, PATIENCE, Peer, TestServer, status_of as status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Sends raw bytes and returns the whole response, read until the server closes.
async fn exchange(server: &TestServer, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("an answer in time")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn bad_requests_get_a_status() {
    let server = TestServer::start().await;
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n";
    let cases: Vec<(String, &str)> = vec![
        ("GET /a/b HTTP/1.1\r\nHost: x\r\n\r\n".into(), "404"),
        (format!("GET /?since=x&epoch=e HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n"), "400"),
        (format!("GET /?since=1 HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n"), "400"),
        (format!("POST / HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n"), "405"),
        (format!("GET /no/such/room HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n"), "404"),
        (format!("GET /%1b HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n"), "404"),
        ("\x16\x03\x01\x02\x00garbage\r\n\r\n".into(), "400"),
        (format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000)), "431"),
        // tokio-websockets checks the upgrade headers themselves.
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".into(),
            "400",
        ),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
                .into(),
            "400",
        ),
    ];
    for (request, expected) in &cases {
        let response = exchange(&server, request.as_bytes()).await;
        assert_eq!(
            status(&response),
            *expected,
            "{:?} got {response:?}",
            &request[..request.len().min(60)]
        );
    }

    // And chat goes on.
    let mut alice = Peer::named(&server, "alice").await;
    alice.send("still here").await;
    alice.expect("alice: still here").await;
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_hangs_up_mid_request_harms_no_one() {
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    drop(stream);
    let mut alice = Peer::named(&server, "alice").await;
    alice.send("fine").await;
    alice.expect("alice: fine").await;
    server.stop().await;
}

#[tokio::test]
async fn healthz_answers_ok() {
    let server = TestServer::start().await;
    let response = exchange(&server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nok\n"), "{response}");
    server.stop().await;
}

#[tokio::test]
async fn a_plain_get_of_a_room_serves_the_web_page() {
    let server = TestServer::start().await;
    for path in ["/", "/rust"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let response = exchange(&server, request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("Content-Type: text/html; charset=utf-8\r\n"), "{response}");
        let (_, body) = response.split_once("\r\n\r\n").expect("a body");
        assert!(body.starts_with("<!doctype html>") && body.trim_end().ends_with("</html>"));
        // Self-contained: nothing fetched from elsewhere.
        assert!(!body.contains("http://") && !body.contains("https://") && !body.contains("src="));
    }
    server.stop().await;
}

#[tokio::test]
async fn past_max_connections_upgrades_get_503_and_existing_clients_are_untouched() {
    let config = chat::server::config::ServerConfig { max_connections: 2, ..Default::default() };
    let server = TestServer::with(config).await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = Peer::named(&server, "bob").await;
    alice.expect("* bob joined").await;

    let upgrade = common::upgrade_request("/?name=carol");
    let response = exchange(&server, upgrade.as_bytes()).await;
    assert_eq!(status(&response), "503", "{response}");

    bob.send("still fine").await;
    alice.expect("bob: still fine").await;
    server.stop().await;
}

#[tokio::test]
async fn upgrades_from_foreign_origins_get_403_unless_allowed() {
    let config = chat::server::config::ServerConfig {
        allow_origin: vec!["https://chat.example.org".into()],
        ..Default::default()
    };
    let server = TestServer::with(config).await;
    let upgrade = |origin: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\n{origin}Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.addr
        )
    };
    let first_line = |response: String| response.lines().next().unwrap_or_default().to_owned();
    let status_of = |request: String| async move {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut head = vec![0u8; 12];
        timeout(PATIENCE, stream.read_exact(&mut head)).await.expect("in time").expect("read");
        first_line(String::from_utf8_lossy(&head).into_owned())
    };

    let foreign = upgrade("Origin: https://evil.example.com\r\n");
    assert_eq!(status_of(foreign).await, "HTTP/1.1 403");
    let own = upgrade(&format!("Origin: http://{}\r\n", server.addr));
    assert_eq!(status_of(own).await, "HTTP/1.1 101");
    let listed = upgrade("Origin: https://chat.example.org\r\n");
    assert_eq!(status_of(listed).await, "HTTP/1.1 101");
    let tool = upgrade("");
    assert_eq!(status_of(tool).await, "HTTP/1.1 101");
    server.stop().await;
}

#[tokio::test]
async fn with_a_token_only_clients_presenting_it_may_upgrade() {
    let config =
        chat::server::config::ServerConfig { token: Some("s3cret".into()), ..Default::default() };
    let server = TestServer::with(config).await;
    let upgrade = |target: &str, extra: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\n{extra}Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let status_of = |request: String| async move {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut head = vec![0u8; 12];
        timeout(PATIENCE, stream.read_exact(&mut head)).await.expect("in time").expect("read");
        String::from_utf8_lossy(&head).into_owned()
    };
    assert_eq!(status_of(upgrade("/", "")).await, "HTTP/1.1 401");
    assert_eq!(status_of(upgrade("/?token=wrong", "")).await, "HTTP/1.1 401");
    assert_eq!(status_of(upgrade("/", "Authorization: Bearer s3cre\r\n")).await, "HTTP/1.1 401");
    assert_eq!(status_of(upgrade("/?token=s3cret", "")).await, "HTTP/1.1 101");
    assert_eq!(status_of(upgrade("/", "Authorization: Bearer s3cret\r\n")).await, "HTTP/1.1 101");
    // The health check stays open.
    let response = exchange(&server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&response), "200");
    // A browser is asked for the token, then gets the page with it.
    let response = exchange(&server, b"GET /rust HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&response), "401");
    assert!(response.contains("Content-Type: text/html") && response.contains("name=\"token\""));
    let response = exchange(&server, b"GET /rust?token=s3cret HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&response), "200");
    assert!(response.contains("new WebSocket("), "the chat page");
    let response = exchange(&server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&response), "401");
    assert!(response.contains("Content-Type: text/plain"), "{response}");
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_connections_messages_and_refusals() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = Peer::named(&server, "bob").await;
    alice.expect("* bob joined").await;
    alice.send("hello").await;
    alice.expect("alice: hello").await;
    bob.expect("alice: hello").await;
    let refused =
        exchange(&server, b"GET /no/such HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n").await;
    assert_eq!(status(&refused), "404");
    // Upgrade headers tokio-websockets refuses are counted as well.
    let refused = exchange(
        &server,
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    assert_eq!(status(&refused), "400");

    let response = exchange(&server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("Content-Type: application/openmetrics-text"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let value = |name: &str| -> u64 {
        let line = body
            .lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in {body}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    assert_eq!(value("chat_connections"), 2);
    assert_eq!(value("chat_connections_opened_total"), 2);
    assert_eq!(value("chat_messages_received_total"), 1);
    assert_eq!(value("chat_received_bytes_total"), 5);
    // Welcome and own join for both, bob's join for alice, the message for both.
    assert!(value("chat_frames_delivered_total") >= 7, "{body}");
    assert_eq!(value("chat_refused_total{reason=\"not_found\"}"), 1);
    assert_eq!(value("chat_refused_total{reason=\"bad_request\"}"), 1);
    assert!(body.ends_with("# EOF\n"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn an_origin_split_inside_a_character_gets_403_not_a_panic() {
    let server = TestServer::start().await;
    // "http:/é" is as long as "http://" plus one byte: slicing the origin at
    // the scheme's length lands inside the é.
    for origin in ["http:/\u{e9}ab", "https:/\u{e9}ab", "\u{e9}", "http://\u{e9}"] {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: abc\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        let response = exchange(&server, request.as_bytes()).await;
        assert_eq!(status(&response), "403", "{origin}: {response}");
    }
    let mut alice = Peer::named(&server, "alice").await;
    alice.send("still up").await;
    alice.expect("alice: still up").await;
    server.stop().await;
}
