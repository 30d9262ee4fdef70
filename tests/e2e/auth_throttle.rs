//! Token guessing is slowed down: past `--auth-failures-per-ip` failures an
//! address gets 429 with Retry-After, whatever it presents, while other
//! addresses still get in.

use crate::common::{TestServer, exchange_from, status_of};
use chat::server::config::{DEFAULT_AUTH_FAILURES_PER_IP, ServerConfig};

const GUESSER: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];

fn upgrade_with(token: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test]
async fn a_guesser_stops_getting_401_after_401() {
    let config = ServerConfig { token: Some("s3cret".into()), ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    // Twice the default budget: the refill during the run cannot make up
    // for it (the budget refills in a minute).
    let mut statuses = Vec::new();
    for guess in 0..2 * DEFAULT_AUTH_FAILURES_PER_IP {
        let response =
            exchange_from(GUESSER, server.addr, upgrade_with(&format!("guess{guess}")).as_bytes())
                .await;
        if status_of(&response) == "429" {
            assert!(response.contains("\r\nRetry-After: "), "{response}");
        }
        statuses.push(status_of(&response).to_owned());
    }
    let first_429 = statuses.iter().position(|s| s == "429").expect("429 at last");
    assert!(first_429 >= 10, "a few mistakes are forgiven: {statuses:?}");
    assert!(statuses[..first_429].iter().all(|s| s == "401"), "{statuses:?}");
    assert_eq!(statuses.last().map(String::as_str), Some("429"), "{statuses:?}");
    // Even the right token is not checked for that address now.
    let right = exchange_from(GUESSER, server.addr, upgrade_with("s3cret").as_bytes()).await;
    assert_eq!(status_of(&right), "429", "{right}");
    // Another address is not affected.
    let other = exchange_from(OTHER, server.addr, upgrade_with("s3cret").as_bytes()).await;
    assert_eq!(status_of(&other), "101", "{other}");
    server.stop().await;
}

#[tokio::test]
async fn zero_turns_the_throttle_off() {
    let config = ServerConfig {
        token: Some("s3cret".into()),
        auth_failures_per_ip: 0,
        ..ServerConfig::default()
    };
    let server = TestServer::with(config).await;
    for guess in 0..2 * DEFAULT_AUTH_FAILURES_PER_IP {
        let response =
            exchange_from(GUESSER, server.addr, upgrade_with(&format!("guess{guess}")).as_bytes())
                .await;
        assert_eq!(status_of(&response), "401", "{response}");
    }
    server.stop().await;
}
