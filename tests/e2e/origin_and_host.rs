//! The server's own origin comes from its configuration, not from the
//! request: on loopback, a DNS-rebinding page (`Host: evil.example`, whose
//! name points at 127.0.0.1) is refused, while the loopback names on the
//! server's port, and `--public-url`s, are its own.

use crate::common::{PATIENCE, TestServer, status_of};
use chat::server::config::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// The status a raw request gets.
async fn status(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = vec![0u8; 12];
    timeout(PATIENCE, stream.read_exact(&mut head)).await.expect("in time").expect("read");
    status_of(&String::from_utf8_lossy(&head)).to_owned()
}

fn upgrade(host: &str, origin: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test]
async fn on_loopback_a_dns_rebinding_page_is_refused() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    // The case: the page's origin and its Host agree, and are not ours.
    assert_eq!(status(server.addr, &upgrade("evil.example", "http://evil.example")).await, "403");
    let evil = format!("evil.example:{port}");
    assert_eq!(status(server.addr, &upgrade(&evil, &format!("http://{evil}"))).await, "403");
    // A browser's plain request (Sec-Fetch-*) for the page or the metrics too.
    for path in ["/", "/metrics"] {
        let page = format!("GET {path} HTTP/1.1\r\nHost: {evil}\r\nSec-Fetch-Site: none\r\n\r\n");
        assert_eq!(status(server.addr, &page).await, "403", "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn on_loopback_every_loopback_name_on_the_port_is_own() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    for name in ["127.0.0.1", "localhost", "[::1]"] {
        let own = format!("{name}:{port}");
        assert_eq!(
            status(server.addr, &upgrade(&own, &format!("http://{own}"))).await,
            "101",
            "{own}"
        );
    }
    // Another port is another origin.
    let other = format!("localhost:{}", port.wrapping_add(1));
    assert_eq!(status(server.addr, &upgrade(&other, &format!("http://{other}"))).await, "403");
    server.stop().await;
}

#[tokio::test]
async fn public_urls_name_the_origins_behind_a_proxy() {
    let config = ServerConfig {
        public_url: vec!["https://chat.example.com".parse().expect("a URL")],
        ..ServerConfig::default()
    };
    let server = TestServer::with(config).await;
    let public = upgrade("chat.example.com", "https://chat.example.com");
    assert_eq!(status(server.addr, &public).await, "101");
    // The proxy may also pass its own Host to the upstream.
    let proxied = upgrade(&server.addr.to_string(), "https://chat.example.com");
    assert_eq!(status(server.addr, &proxied).await, "101");
    let plain = upgrade("chat.example.com", "http://chat.example.com");
    assert_eq!(status(server.addr, &plain).await, "403");
    server.stop().await;
}

#[tokio::test]
async fn on_a_wildcard_bind_without_public_urls_the_host_is_matched() {
    let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(chat::server::run(
        listener,
        ServerConfig::default(),
        None,
        chat::server::Backend::open(&ServerConfig::default()).expect("the store opens"),
        async {
            let _ = stopped.await;
        },
    ));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let named = format!("box.example:{port}");
    assert_eq!(status(addr, &upgrade(&named, &format!("http://{named}"))).await, "101");
    assert_eq!(status(addr, &upgrade(&named, "http://evil.example")).await, "403");
    let _ = stop.send(());
    timeout(PATIENCE, task).await.expect("stops in time").expect("no panic");
}
