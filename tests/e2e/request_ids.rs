//! JSON requests with an id get exactly one answer carrying it: an ack
//! after the message's own echo, or an error with a machine-readable code.
//! The welcome tells a JSON client its limits.

use crate::common::{self, TestServer, connect_json, next_json};
use chat::server::config::ServerConfig;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_websockets::Message;

async fn send(ws: &mut common::Socket, value: Value) {
    ws.send(Message::text(value.to_string())).await.expect("send");
}

#[tokio::test]
async fn every_request_with_an_id_is_answered_with_it() {
    let config =
        ServerConfig { max_message_bytes: 100, rate_limit: 7, burst: 9, ..Default::default() };
    let server = TestServer::with(config).await;
    let mut bob = connect_json(&server.url("/?name=bob")).await;
    let welcome = next_json(&mut bob).await;
    assert_eq!(welcome["limits"], json!({"per_second": 7, "burst": 9, "max_bytes": 100}));
    assert_eq!(welcome["session"].as_str().map(str::len), Some(32));
    assert_eq!(next_json(&mut bob).await["type"], "join");

    send(&mut bob, json!({"type": "message", "text": "hi", "id": "1"})).await;
    let echo = next_json(&mut bob).await;
    assert_eq!((echo["type"].as_str(), echo["seq"].as_u64()), (Some("message"), Some(1)));
    assert_eq!(next_json(&mut bob).await, json!({"type": "ack", "id": "1", "seq": 1}));

    send(&mut bob, json!({"type": "message", "text": "x".repeat(101), "id": "2"})).await;
    let error = next_json(&mut bob).await;
    assert_eq!((error["code"].as_str(), error["id"].as_str()), (Some("too_long"), Some("2")));

    send(&mut bob, json!({"type": "message", "text": "\u{1b}[2J", "id": "3"})).await;
    let error = next_json(&mut bob).await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("control_character"), Some("3"))
    );

    send(&mut bob, json!({"type": "nick", "name": "a b", "id": "4"})).await;
    let error = next_json(&mut bob).await;
    assert_eq!((error["code"].as_str(), error["id"].as_str()), (Some("invalid_name"), Some("4")));

    send(&mut bob, json!({"type": "nick", "name": "rob", "id": "5"})).await;
    assert_eq!(next_json(&mut bob).await["type"], "nick");
    assert_eq!(next_json(&mut bob).await, json!({"type": "ack", "id": "5"}));

    send(&mut bob, json!({"type": "who", "id": "6"})).await;
    let who = next_json(&mut bob).await;
    assert_eq!((who["type"].as_str(), who["id"].as_str()), (Some("who"), Some("6")));

    // Without an id: no ack, and the error still has its code.
    send(&mut bob, json!({"type": "message", "text": ""})).await;
    let error = next_json(&mut bob).await;
    assert_eq!(
        error,
        json!({"type": "error", "text": "empty message: nothing was sent", "code": "empty"})
    );

    send(&mut bob, json!({"type": "message", "text": "x", "id": "i".repeat(65)})).await;
    assert_eq!(next_json(&mut bob).await["code"], "malformed");

    // Over the rate: refused with its id, so the sender knows which.
    for n in 10..30 {
        send(&mut bob, json!({"type": "message", "text": "flood", "id": n.to_string()})).await;
    }
    let mut refused = None;
    for _ in 0..40 {
        let event = next_json(&mut bob).await;
        if event["code"] == "slow_down" {
            refused = event["id"].as_str().map(str::to_owned);
            break;
        }
    }
    assert!(refused.is_some_and(|id| id.parse::<u32>().is_ok_and(|n| n >= 10)));
    server.stop().await;
}
