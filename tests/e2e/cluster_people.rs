//! One person on several nodes (`--redis` with a JWT key): the same `sub`
//! connected to two nodes is one name in `/who` and in the counts on both,
//! announced when its first connection anywhere joins and when its last
//! leaves; a node that dies takes only its own connections with it; and
//! another `sub` with a look-alike name is refused on any node.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::time::timeout;
use tokio_websockets::Message;

use crate::common::{PATIENCE, connect_json, exchange_from, next_frame, next_json, status_of};
use crate::identity::{SECRET, token};
use crate::redis_nodes::{Node, Redis, Ws, join, say, until};

/// The presence requirement: a node that dies leaves presence within this.
const DEAD_NODE_GONE_WITHIN: Duration = Duration::from_secs(30);

/// A node taking identity tokens signed with the tests' secret, and guests.
async fn node(redis: &Redis) -> Node {
    Node::start_with(redis, &["--jwt-secret", SECRET, "--guests"]).await
}

fn path(room: &str, sub: &str, name: &str) -> String {
    format!("/{room}?token={}", token(&json!({"sub": sub, "name": name})))
}

/// The `/who` answer a JSON client gets, past any other event.
async fn who(ws: &mut Ws) -> Value {
    ws.send(Message::text(json!({"type": "who"}).to_string())).await.expect("send");
    until(ws, |event| event["type"] == "who").await
}

/// The events up to and with the message saying `text`.
async fn events_through(ws: &mut Ws, text: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = next_json(ws).await;
        let done = event["type"] == "message" && event["text"] == text;
        events.push(event);
        if done {
            return events;
        }
    }
}

fn presence_of<'a>(events: &'a [Value], name: &str) -> Vec<&'a str> {
    let kinds = events.iter().filter(|e| e["name"] == name);
    kinds
        .filter_map(|e| e["type"].as_str().filter(|kind| ["join", "leave"].contains(kind)))
        .collect()
}

/// Waits (at most `within`) until Redis counts the person of `key` in `room`
/// on one node only: its value in the names hash, `+ NODE=N NAME SUB`, names
/// a single node. Nothing else shows that a connection left silently.
async fn on_one_node(redis: &Redis, room: &str, key: &str, within: Duration) {
    let client = redis::Client::open(redis.url()).expect("a Redis URL");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect");
    let mut hget = redis::cmd("HGET");
    hget.arg(format!("chat:room:{room}:names")).arg(key);
    // Looked at every few ms: a poll's pace, not a guess at how long it takes.
    let mut polls = tokio::time::interval(Duration::from_millis(20));
    let waited = timeout(within, async {
        loop {
            polls.tick().await;
            let value: Option<String> = hget.query_async(&mut connection).await.expect("HGET");
            let value = value.unwrap_or_default();
            let counts = value.split(' ').nth(1).unwrap_or_default();
            if value.starts_with("+ ") && !counts.contains(',') {
                return;
            }
        }
    });
    waited.await.expect("one node's connections left in time");
}

#[tokio::test]
async fn the_same_sub_on_two_nodes_is_one_person_announced_once() {
    let Some(redis) = Redis::start("people").await else { return };
    let (one, two) = (node(&redis).await, node(&redis).await);
    let (mut bob, _) = join(&one, &path("people", "u-2", "bob")).await;
    let alice = path("people", "u-1", "alice");
    let (mut laptop, welcome) = join(&one, &alice).await;
    assert_eq!(welcome["online"], 2);
    until(&mut bob, |event| event["type"] == "join" && event["name"] == "alice").await;
    let (mut phone, welcome) = join(&two, &alice).await;
    assert_eq!((welcome["name"].as_str(), welcome["online"].as_u64()), (Some("alice"), Some(2)));
    say(&mut phone, "from the phone").await;
    let seen = events_through(&mut bob, "from the phone").await;
    assert!(presence_of(&seen, "alice").is_empty(), "the phone is not announced: {seen:?}");
    for ws in [&mut bob, &mut phone] {
        let answer = who(ws).await;
        assert_eq!(
            (answer["count"].clone(), answer["names"].clone()),
            (json!(2), json!(["alice", "bob"]))
        );
    }

    // The laptop (the connection the room heard join) goes: not announced.
    laptop.send(Message::close(None, "")).await.expect("close");
    on_one_node(&redis, "people", "alice", PATIENCE).await;
    say(&mut phone, "still here").await;
    let seen = events_through(&mut bob, "still here").await;
    assert!(presence_of(&seen, "alice").is_empty(), "{seen:?}");
    let answer = who(&mut bob).await;
    assert_eq!(answer["names"], json!(["alice", "bob"]));

    // The last connection goes: announced once, on every node.
    phone.send(Message::close(None, "")).await.expect("close");
    until(&mut bob, |event| event["type"] == "leave" && event["name"] == "alice").await;
    say(&mut bob, "after").await;
    let seen = events_through(&mut bob, "after").await;
    assert!(presence_of(&seen, "alice").is_empty(), "one leave: {seen:?}");
    assert_eq!(who(&mut bob).await["names"], json!(["bob"]));
}

#[tokio::test]
async fn a_look_alike_of_another_sub_is_refused_on_any_node() {
    let Some(redis) = Redis::start("look-alike").await else { return };
    let (one, two) = (node(&redis).await, node(&redis).await);
    let (mut alice, _) = join(&one, &path("alike", "u-1", "alice")).await;
    // Where the node knows (alice is its client): 409 before the upgrade.
    let mallory = path("alike", "u-666", "\u{430}lice");
    let upgrade = crate::common::upgrade_request(&mallory);
    let response = exchange_from([127, 0, 0, 1], one.addr, upgrade.as_bytes()).await;
    assert_eq!(status_of(&response), "409", "{response}");
    // Where it learns it from Redis: closed with 1008 right after the upgrade.
    let mut ws = connect_json(&two.url(&mallory)).await;
    let close = next_frame(&mut ws).await;
    let (code, reason) = close.as_close().expect("a Close frame");
    assert_eq!(u16::from(code), 1008, "{reason}");
    assert!(reason.contains("looks like the name of someone else"), "{reason}");
    // Guests are marked on any node, and never look like a token holder.
    let mut guest = connect_json(&two.url("/alike?name=alice")).await;
    let welcome = next_json(&mut guest).await;
    assert_eq!(
        (welcome["type"].as_str(), welcome["name"].as_str()),
        (Some("welcome"), Some("~alice"))
    );
    until(&mut alice, |event| event["type"] == "join" && event["name"] == "~alice").await;
    // And a guest's new name is marked too.
    let nick = json!({"type": "nick", "name": "ann"}).to_string();
    guest.send(Message::text(nick)).await.expect("send");
    until(&mut alice, |event| event["type"] == "nick" && event["new"] == "~ann").await;
    say(&mut alice, "only us").await;
    let seen = events_through(&mut alice, "only us").await;
    assert!(seen.iter().all(|e| e["type"] != "join"), "mallory never came in: {seen:?}");
}

#[tokio::test]
async fn a_node_that_dies_takes_only_its_own_connections_of_a_person() {
    let Some(redis) = Redis::start("people-reap").await else { return };
    let (mut one, two) = (node(&redis).await, node(&redis).await);
    let (mut bob, _) = join(&two, &path("reap", "u-2", "bob")).await;
    let alice = path("reap", "u-1", "alice");
    let (_laptop, _) = join(&one, &alice).await;
    until(&mut bob, |event| event["type"] == "join" && event["name"] == "alice").await;
    let (mut phone, _) = join(&two, &alice).await;
    one.child.kill().await.expect("kill node one");
    // Its heartbeat lapses and another node reaps it (within NODE_TTL and a beat).
    on_one_node(&redis, "reap", "alice", DEAD_NODE_GONE_WITHIN).await;
    say(&mut phone, "still here").await;
    let seen = events_through(&mut bob, "still here").await;
    assert!(presence_of(&seen, "alice").is_empty(), "{seen:?}");
    assert_eq!(who(&mut bob).await["names"], json!(["alice", "bob"]));
    phone.send(Message::close(None, "")).await.expect("close");
    until(&mut bob, |event| event["type"] == "leave" && event["name"] == "alice").await;
}

#[tokio::test]
async fn a_person_on_two_nodes_is_claimed_again_once_after_redis_loses_its_data() {
    let Some(redis) = Redis::start("people-lost").await else { return };
    let (one, two) = (node(&redis).await, node(&redis).await);
    let (mut bob, _) = join(&two, &path("lost", "u-2", "bob")).await;
    let alice = path("lost", "u-1", "alice");
    let (mut laptop, _) = join(&one, &alice).await;
    let (mut phone, _) = join(&two, &alice).await;
    until(&mut bob, |event| event["type"] == "join" && event["name"] == "alice").await;

    redis.run(&redis::cmd("FLUSHALL")).await;
    say(&mut bob, "m1").await;
    // Each node claims its clients' names again before it delivers m1.
    for ws in [&mut bob, &mut laptop, &mut phone] {
        until(ws, |event| event["type"] == "missed").await;
        let seen = events_through(ws, "m1").await;
        assert!(presence_of(&seen, "alice").is_empty(), "{seen:?}");
    }
    let answer = who(&mut bob).await;
    assert_eq!(
        (answer["count"].clone(), answer["names"].clone()),
        (json!(2), json!(["alice", "bob"]))
    );

    // Both nodes' connections were counted again: the first to go is silent.
    laptop.send(Message::close(None, "")).await.expect("close");
    on_one_node(&redis, "lost", "alice", PATIENCE).await;
    say(&mut phone, "still here").await;
    let seen = events_through(&mut bob, "still here").await;
    assert!(presence_of(&seen, "alice").is_empty(), "{seen:?}");
    phone.send(Message::close(None, "")).await.expect("close");
    until(&mut bob, |event| event["type"] == "leave" && event["name"] == "alice").await;
}
