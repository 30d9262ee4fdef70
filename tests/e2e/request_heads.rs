//! No request head panics the server: arbitrary bytes (non-ASCII, control
//! characters, split and repeated headers) in the method, the target and the
//! headers the server reads, sent over a real socket, each get an HTTP status,
//! and the server goes on answering. (`Origin: http:/éab` once panicked.)

use crate::common::{TestServer, exchange_from, status_of};
use chat::server::config::ServerConfig;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Headers the server reads, so that random values reach its parsers.
const NAMES: [&str; 12] = [
    "Host",
    "Origin",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Authorization",
    "Cookie",
    "X-Forwarded-For",
    "Sec-Fetch-Site",
    "Content-Length",
];

/// The headers of a valid upgrade: with them, random values get past the
/// first checks.
const UPGRADE: &[u8] = b"Upgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..max),
        any::<String>().prop_map(String::into_bytes),
        "[ -~é€\u{202e}\u{0}\t]{0,40}".prop_map(String::into_bytes),
    ]
}

fn head() -> impl Strategy<Value = Vec<u8>> {
    // Mostly well-formed around one odd part, so that most cases get past
    // the first checks and reach the parsers of values.
    let method =
        prop_oneof![4 => Just(b"GET".to_vec()), 1 => Just(b"HEAD".to_vec()), 1 => bytes(8)];
    let target = prop_oneof![
        2 => Just(b"/".to_vec()),
        2 => Just(b"/room?name=x&token=secret".to_vec()),
        1 => Just(b"http://127.0.0.1/room".to_vec()),
        1 => bytes(64),
    ];
    let name = prop_oneof![
        12 => prop::sample::select(NAMES.to_vec()).prop_map(|n| n.as_bytes().to_vec()),
        1 => bytes(16),
    ];
    // Values without control characters are valid ones, non-ASCII included.
    let value = prop_oneof![
        4 => "[^\x00-\x08\x0a-\x1f\x7f]{0,60}".prop_map(String::into_bytes),
        1 => bytes(80),
    ];
    let headers = prop::collection::vec((name, value), 0..6);
    let version = prop_oneof![
        8 => Just(b"HTTP/1.1".to_vec()),
        1 => Just(b"HTTP/1.0".to_vec()),
        1 => bytes(10),
    ];
    (method, target, version, any::<bool>(), headers).prop_map(
        |(method, target, version, upgrade, headers)| {
            let mut head =
                [method, b" ".to_vec(), target, b" ".to_vec(), version, b"\r\n".to_vec()].concat();
            if upgrade {
                head.extend_from_slice(UPGRADE);
            }
            for (name, value) in headers {
                head.extend_from_slice(&name);
                head.extend_from_slice(b": ");
                head.extend_from_slice(&value);
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"\r\n");
            head
        },
    )
}

#[test]
fn any_request_head_gets_a_status_and_the_server_goes_on() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    // Per-address limits off: every case reaches the parsers, not a 429.
    let config = ServerConfig {
        max_handshakes_per_ip: 0,
        joins_per_ip: 0,
        auth_failures_per_ip: 0,
        token: Some("secret".into()),
        ..ServerConfig::default()
    };
    let server = runtime.block_on(TestServer::with(config));
    let mut runner = TestRunner::new(Config { cases: 256, ..Config::default() });
    runner
        .run(&head(), |head| {
            let response = runtime.block_on(exchange_from([127, 0, 0, 1], server.addr, &head));
            let status = status_of(&response);
            prop_assert!(
                response.starts_with("HTTP/1.1 ") && status.bytes().all(|b| b.is_ascii_digit()),
                "no status for {:?}: {:?}",
                String::from_utf8_lossy(&head),
                response
            );
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    let healthz = runtime.block_on(exchange_from(
        [127, 0, 0, 1],
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ));
    assert_eq!(status_of(&healthz), "200", "{healthz}");
    runtime.block_on(server.stop());
}
