//! Several server nodes sharing rooms through Redis (`--redis`): each test
//! starts its own `redis-server` on a free loopback port and real `server`
//! binaries against it.
//!
//! Without `redis-server` the tests report themselves skipped and pass,
//! unless `CHAT_REQUIRE_REDIS=1` (set by `.ci/run`) makes that a failure.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{PATIENCE, connect, connect_json, next_json, next_text};
use crate::redis_nodes::{Node, Redis, join, messages_through, notice, say, until};
use chat::server::{LINK_DOWN, LINK_UP};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::timeout;
use tokio_websockets::Message;

/// The presence requirement: a node that dies leaves presence within this.
const DEAD_NODE_GONE_WITHIN: Duration = Duration::from_secs(30);
/// Messages each client sends in the ordering test.
const EACH: usize = 20;

#[tokio::test]
async fn every_client_on_every_node_gets_every_message_once_in_one_order() {
    let Some(redis) = Redis::start("order").await else { return };
    let nodes = [Node::start(&redis).await, Node::start(&redis).await, Node::start(&redis).await];
    let mut clients = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for c in 0..2 {
            clients.push(join(node, &format!("/order?name=n{n}c{c}")).await.0);
        }
    }
    // Everyone is subscribed once welcomed: all send at once, interleaved.
    for i in 0..EACH {
        for (c, ws) in clients.iter_mut().enumerate() {
            say(ws, &format!("{c}:{i}")).await;
        }
    }
    let total = EACH * clients.len();
    let mut orders = Vec::new();
    for ws in &mut clients {
        let mut seen = Vec::new();
        while seen.len() < total {
            let event = next_json(ws).await;
            if event["type"] == "message" {
                let seq = event["seq"].as_u64().expect("seq");
                seen.push((seq, event["text"].as_str().expect("text").to_owned()));
            }
        }
        orders.push(seen);
    }
    let first = &orders[0];
    let seqs: Vec<u64> = first.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "numbered by Redis, without gaps");
    let texts: HashSet<&str> = first.iter().map(|(_, text)| text.as_str()).collect();
    assert_eq!(texts.len(), total, "each message exactly once");
    for (c, order) in orders.iter().enumerate() {
        assert_eq!(order, first, "client {c} saw another order");
    }
    // Each sender's messages keep the order it sent them in.
    for c in 0..clients.len() {
        let mine: Vec<&str> = first
            .iter()
            .map(|(_, text)| text.as_str())
            .filter(|text| text.starts_with(&format!("{c}:")))
            .collect();
        let sent: Vec<String> = (0..EACH).map(|i| format!("{c}:{i}")).collect();
        assert_eq!(mine, sent);
    }
}

#[tokio::test]
async fn presence_and_names_span_nodes() {
    let Some(redis) = Redis::start("presence").await else { return };
    let (one, two) = (Node::start(&redis).await, Node::start(&redis).await);

    let mut alice = connect(&one.url("/names?name=alice")).await;
    assert_eq!(
        next_text(&mut alice).await,
        "* you are alice in room names, 1 online; /help lists the commands"
    );
    assert_eq!(next_text(&mut alice).await, "* alice joined");
    let mut bob = connect(&two.url("/names?name=bob")).await;
    assert_eq!(
        next_text(&mut bob).await,
        "* you are bob in room names, 2 online; /help lists the commands"
    );
    assert_eq!(next_text(&mut bob).await, "* bob joined");
    assert_eq!(next_text(&mut alice).await, "* bob joined");

    // A name held on another node is taken here too.
    let mut carol = connect(&two.url("/names?name=alice")).await;
    assert_eq!(next_text(&mut carol).await, "! name \"alice\" is taken");
    let welcome = next_text(&mut carol).await;
    let carol_name = chat::protocol::parse_welcome(&welcome).expect("a welcome").to_owned();
    assert_ne!(carol_name, "alice");
    assert_eq!(next_text(&mut carol).await, format!("* {carol_name} joined"));
    assert_eq!(next_text(&mut alice).await, format!("* {carol_name} joined"));

    bob.send(Message::text("/who".to_owned())).await.expect("send");
    let mut who = next_text(&mut bob).await;
    while !who.starts_with("* 3 in names: ") {
        who = next_text(&mut bob).await;
    }
    let mut expected = [carol_name.clone(), "alice".to_owned(), "bob".to_owned()];
    expected.sort();
    assert_eq!(who, format!("* 3 in names: {}", expected.join(", ")));

    bob.send(Message::text("/nick alice".to_owned())).await.expect("send");
    assert_eq!(next_text(&mut bob).await, "! name \"alice\" is taken");
    bob.send(Message::text("/nick bobby".to_owned())).await.expect("send");
    assert_eq!(next_text(&mut alice).await, "* bob is now bobby");
    // The old name is free again, on any node.
    alice.send(Message::text("/nick bob".to_owned())).await.expect("send");
    assert_eq!(next_text(&mut carol).await, "* bob is now bobby");
    assert_eq!(next_text(&mut carol).await, "* alice is now bob");

    alice.send(Message::close(None, "")).await.expect("close");
    assert_eq!(next_text(&mut carol).await, "* bob left");
}

#[tokio::test]
async fn a_client_resumes_on_another_node() {
    let Some(redis) = Redis::start("resume").await else { return };
    let (one, two) = (Node::start(&redis).await, Node::start(&redis).await);
    let (mut bob, _) = join(&two, "/resume?name=bob").await;
    let (mut alice, welcome) = join(&one, "/resume?name=alice").await;
    let epoch = welcome["epoch"].as_str().expect("epoch").to_owned();
    say(&mut bob, "m1").await;
    say(&mut bob, "m2").await;
    let seen = messages_through(&mut alice, "m2").await;
    assert_eq!(seen.iter().map(|(seq, ..)| *seq).collect::<Vec<_>>(), [1, 2]);

    alice.send(Message::close(None, "")).await.expect("close");
    until(&mut bob, |event| event["type"] == "leave" && event["name"] == "alice").await;
    for text in ["m3", "m4", "m5"] {
        say(&mut bob, text).await;
    }
    messages_through(&mut bob, "m5").await;

    let url = two.url(&format!("/resume?name=alice&since=2&epoch={epoch}"));
    let mut alice = connect_json(&url).await;
    let welcome = next_json(&mut alice).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["name"], "alice");
    assert_eq!(welcome["epoch"], epoch.as_str());
    assert_eq!(welcome["seq"], 5);
    assert_eq!(
        next_json(&mut alice).await,
        json!({"type": "history", "phase": "start", "count": 3})
    );
    for (seq, text) in [(3, "m3"), (4, "m4"), (5, "m5")] {
        let message = next_json(&mut alice).await;
        assert_eq!((message["seq"].as_u64(), message["text"].as_str()), (Some(seq), Some(text)));
    }
    assert_eq!(next_json(&mut alice).await, json!({"type": "history", "phase": "end", "count": 3}));
    let joined = next_json(&mut alice).await;
    assert_eq!((joined["type"].as_str(), joined["name"].as_str()), (Some("join"), Some("alice")));
    // And it chats on from there, once.
    say(&mut bob, "m6").await;
    assert_eq!(messages_through(&mut alice, "m6").await, [(6, "bob".to_owned(), "m6".to_owned())]);
}

#[tokio::test]
async fn a_killed_node_leaves_presence() {
    let Some(redis) = Redis::start("killed node").await else { return };
    let (mut one, two) = (Node::start(&redis).await, Node::start(&redis).await);
    let (_alice, _) = join(&one, "/killed?name=alice").await;
    let (mut bob, _) = join(&two, "/killed?name=bob").await;
    until(&mut bob, |event| event["type"] == "join" && event["name"] == "bob").await;

    // SIGKILL: no goodbye, no leave script; only the heartbeat key expires.
    one.child.kill().await.expect("kill node");
    let left = until(&mut bob, |event| event["type"] == "leave");
    let left = timeout(DEAD_NODE_GONE_WITHIN, left).await.expect("alice leaves within 30 s");
    assert_eq!(left["name"], "alice");
    bob.send(Message::text(json!({"type": "who"}).to_string())).await.expect("send");
    let who = until(&mut bob, |event| event["type"] == "who").await;
    assert_eq!((who["count"].as_u64(), &who["names"]), (Some(1), &json!(["bob"])));
}

#[tokio::test]
async fn a_redis_outage_degrades_then_recovers() {
    let Some(mut redis) = Redis::start("outage").await else { return };
    let (one, two) = (Node::start(&redis).await, Node::start(&redis).await);
    let (mut a1, welcome) = join(&one, "/outage?name=a1").await;
    let epoch = welcome["epoch"].as_str().expect("epoch").to_owned();
    let (mut a2, _) = join(&one, "/outage?name=a2").await;
    let (mut b, _) = join(&two, "/outage?name=b").await;
    say(&mut a1, "before").await;
    for ws in [&mut a1, &mut a2, &mut b] {
        messages_through(ws, "before").await;
    }

    redis.kill().await;
    for ws in [&mut a1, &mut a2, &mut b] {
        until(ws, notice(LINK_DOWN)).await;
    }
    // Degraded: each node's clients chat among themselves.
    say(&mut a1, "during-a").await;
    say(&mut b, "during-b").await;
    for ws in [&mut a1, &mut a2] {
        assert_eq!(messages_through(ws, "during-a").await.len(), 1);
    }
    assert_eq!(messages_through(&mut b, "during-b").await.len(), 1);
    // New clients are turned away meanwhile, with "try again later".
    let mut late = connect(&one.url("/outage")).await;
    let closed = timeout(PATIENCE, late.next()).await.expect("an answer in time");
    let close = closed.expect("a frame").expect("a Close frame");
    assert_eq!(close.as_close().map(|(code, _)| u16::from(code)), Some(1013));

    let _redis = Redis::start_on(redis.port).await;
    // The restarted Redis is empty: the history was reset, in a new epoch
    // that the clients are given to resume in.
    for ws in [&mut a1, &mut a2, &mut b] {
        let event = until(ws, |event| event["type"] == "missed" || event["type"] == "notice").await;
        assert_eq!(event["count"], json!(null), "{event}");
        assert_ne!(event["epoch"].as_str().expect("the new epoch"), epoch);
        until(ws, notice(LINK_UP)).await;
    }
    say(&mut a2, "after").await;
    // What each saw between its outage message and "after": nothing from
    // the other node's outage. Numbering went on from "before" (1).
    for ws in [&mut a1, &mut a2, &mut b] {
        let seen = messages_through(ws, "after").await;
        assert_eq!(seen, [(2, "a2".to_owned(), "after".to_owned())]);
    }
    // Only what was said since the link came back is kept.
    let (mut c, welcome) = join(&two, "/outage?name=c").await;
    assert_eq!(welcome["online"], 4);
    assert_eq!(next_json(&mut c).await, json!({"type": "history", "phase": "start", "count": 1}));
    assert_eq!(next_json(&mut c).await["text"], "after");

    let metrics = one.metrics().await;
    assert!(metrics.contains("chat_cluster_outages_total 1\n"), "{metrics}");
    assert!(metrics.contains("chat_cluster_link_up 1\n"), "{metrics}");
    assert!(metrics.contains("reason=\"cluster_down\"} 1\n"), "{metrics}");
}

#[tokio::test]
async fn look_alike_names_clash_across_nodes() {
    let Some(redis) = Redis::start("look-alikes").await else { return };
    let (one, two) = (Node::start(&redis).await, Node::start(&redis).await);
    let (mut alice, _) = join(&one, "/alike?name=alice").await;
    until(&mut alice, |e| e["type"] == "join").await;
    // Cyrillic а, then capitals: the key is computed in Rust, the claim in Lua.
    for name in ["%D0%B0lice", "ALICE"] {
        let mut ws = connect_json(&two.url(&format!("/alike?name={name}"))).await;
        assert_eq!(next_json(&mut ws).await["code"], "name_taken");
        let welcome = next_json(&mut ws).await;
        assert!(welcome["name"].as_str().is_some_and(|n| n.starts_with("127.0.0.1:")));
    }
    let (mut bob, _) = join(&two, "/alike?name=bob").await;
    let request = json!({"type": "nick", "name": "\u{430}lice", "id": "1"});
    bob.send(Message::text(request.to_string())).await.expect("send");
    let refused = until(&mut bob, |e| e["type"] == "error").await;
    assert_eq!((refused["code"].as_str(), refused["id"].as_str()), (Some("name_taken"), Some("1")));
    // Changing one's own case is not a clash with oneself.
    let request = json!({"type": "nick", "name": "Bob", "id": "2"});
    bob.send(Message::text(request.to_string())).await.expect("send");
    let renamed = until(&mut alice, |e| e["type"] == "nick").await;
    assert_eq!((renamed["old"].as_str(), renamed["new"].as_str()), (Some("bob"), Some("Bob")));
}

#[tokio::test]
async fn a_returning_session_takes_its_name_back_on_another_node() {
    let Some(redis) = Redis::start("returning").await else { return };
    let (one, two) = (Node::start(&redis).await, Node::start(&redis).await);
    let (mut watcher, _) = join(&one, "/back?name=watcher").await;
    let (mut old, welcome) = join(&one, "/back?name=alice").await;
    let secret = welcome["session"].as_str().expect("a session").to_owned();
    until(&mut watcher, |e| e["type"] == "join" && e["name"] == "alice").await;

    let (mut new, welcome) = join(&two, &format!("/back?name=alice&session={secret}")).await;
    assert_eq!(welcome["name"], "alice");
    // The node holding the old connection retires it.
    let closed = timeout(PATIENCE, async {
        loop {
            match old.next().await {
                Some(Ok(frame)) if frame.is_close() => {
                    return frame.as_close().map(|(code, _)| u16::from(code));
                }
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(closed, Some(4001));
    // No leave, no join: the next event the room sees is alice talking.
    say(&mut new, "back").await;
    let next = until(&mut watcher, |e| e["type"] != "presence").await;
    assert_eq!((next["type"].as_str(), next["text"].as_str()), (Some("message"), Some("back")));
    // And the name stays hers after the old connection is gone.
    let mut thief = connect_json(&one.url("/back?name=alice")).await;
    assert_eq!(next_json(&mut thief).await["code"], "name_taken");
}

#[tokio::test]
async fn readiness_fails_while_new_clients_are_turned_away_and_liveness_does_not() {
    let Some(mut redis) = Redis::start("health").await else { return };
    let node = Node::start(&redis).await;
    for path in ["/healthz", "/readyz", "/livez"] {
        assert_eq!(node.get(path).await, (200, "ok\n".to_owned()), "{path}");
    }
    let (mut alice, _) = join(&node, "/health?name=alice").await;

    redis.kill().await;
    until(&mut alice, notice(LINK_DOWN)).await;
    // New clients get 1013 now, so the load balancer must look elsewhere.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(node.get(path).await.0, 503, "{path}");
    }
    // The process itself is fine: no reason to restart it.
    assert_eq!(node.get("/livez").await, (200, "ok\n".to_owned()));

    let _redis = Redis::start_on(redis.port).await;
    until(&mut alice, notice(LINK_UP)).await;
    for path in ["/healthz", "/readyz", "/livez"] {
        assert_eq!(node.get(path).await, (200, "ok\n".to_owned()), "{path}");
    }
}
