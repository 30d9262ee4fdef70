//! History with several nodes (`--redis`): a room outlives its members, its
//! earlier messages can be paged through from Redis in both protocols, and
//! `--keep-for` expires an empty room's keys, after which a newcomer gets
//! nothing and a new epoch.

use std::time::Duration;

use crate::common::{PATIENCE, connect, next_json, next_text};
use crate::redis_nodes::{Node, Redis, Ws, after_welcome, join, messages_through, say, until};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::timeout;
use tokio_websockets::Message;

/// Between two looks at Redis while waiting for a key to expire: how often
/// to ask, not how long to wait (PATIENCE bounds that).
const POLL_INTERVAL: Duration = Duration::from_millis(20);

fn key(room: &str, part: &str) -> String {
    format!("chat:room:{room}:{part}")
}

/// Subscribes to `room`'s channel, as the nodes do, to see what its scripts
/// publish: a departure is published by the same script that releases the
/// name, so once it arrives, the name is gone from Redis.
async fn watch(redis: &Redis, room: &str) -> redis::aio::PubSub {
    let client = redis::Client::open(redis.url()).expect("a Redis URL");
    let mut pubsub = client.get_async_pubsub().await.expect("subscribe to Redis");
    pubsub.subscribe(format!("chat:room:{room}")).await.expect("subscribe");
    pubsub
}

/// Waits for a `leave` of `name` published in the watched room.
async fn left(pubsub: &mut redis::aio::PubSub, name: &str) {
    let mut messages = pubsub.on_message();
    let seen = async {
        while let Some(message) = messages.next().await {
            let payload: String = message.get_payload().expect("a text payload");
            let event: Value = serde_json::from_str(&payload).expect("JSON");
            if event["type"] == "leave" && event["name"] == name {
                return;
            }
        }
        panic!("the subscription ended");
    };
    timeout(PATIENCE, seen).await.expect("the leave is published in time");
}

async fn exists(redis: &Redis, key: &str) -> bool {
    redis.run(redis::cmd("EXISTS").arg(key)).await == redis::Value::Int(1)
}

async fn ttl_ms(redis: &Redis, key: &str) -> i64 {
    match redis.run(redis::cmd("PTTL").arg(key)).await {
        redis::Value::Int(ttl) => ttl,
        other => panic!("PTTL answered {other:?}"),
    }
}

/// Sends a history request and returns its answer.
async fn history(ws: &mut Ws, request: Value) -> Value {
    ws.send(Message::text(request.to_string())).await.expect("send");
    until(ws, |event| event["type"] == "earlier").await
}

/// (seq, from, text) of an `earlier` answer's messages.
fn paged(earlier: &Value) -> Vec<(u64, String, String)> {
    let messages = earlier["messages"].as_array().expect("messages");
    let fields = |message: &Value| {
        let text = |field: &str| message[field].as_str().expect("a string").to_owned();
        assert!(message["ts"].is_string(), "{message}");
        (message["seq"].as_u64().expect("seq"), text("from"), text("text"))
    };
    messages.iter().map(fields).collect()
}

fn by_alice(seqs: std::ops::RangeInclusive<u64>) -> Vec<(u64, String, String)> {
    seqs.map(|seq| (seq, "alice".to_owned(), format!("m{seq}"))).collect()
}

#[tokio::test]
async fn history_survives_an_empty_room_and_numbering_goes_on() {
    let Some(redis) = Redis::start("empty room").await else { return };
    let (one, two) = (Node::start(&redis).await, Node::start(&redis).await);
    let mut watcher = watch(&redis, "kept").await;
    let (mut alice, welcome) = join(&one, "/kept?name=alice").await;
    let epoch = welcome["epoch"].as_str().expect("epoch").to_owned();
    for text in ["m1", "m2", "m3"] {
        say(&mut alice, text).await;
    }
    messages_through(&mut alice, "m3").await;
    alice.send(Message::close(None, "")).await.expect("close");
    left(&mut watcher, "alice").await;
    // Nobody is in the room on any node now; what it said is still there.
    assert!(!exists(&redis, &key("kept", "names")).await, "nobody holds a name");
    assert!(exists(&redis, &key("kept", "log")).await, "the history is kept");

    let (mut bob, welcome) = join(&two, "/kept?name=bob").await;
    assert_eq!(welcome["epoch"], epoch.as_str(), "the same epoch: nothing was lost");
    assert_eq!(welcome["seq"], 3);
    let events = after_welcome(&mut bob).await;
    assert_eq!(events[0], json!({"type": "history", "phase": "start", "count": 3}));
    let replayed: Vec<_> = events.iter().filter(|event| event["type"] == "message").collect();
    let replayed: Vec<_> = replayed.iter().map(|event| (&event["seq"], &event["text"])).collect();
    assert_eq!(
        replayed,
        [(&json!(1), &json!("m1")), (&json!(2), &json!("m2")), (&json!(3), &json!("m3"))]
    );
    // And the numbering goes on where it was.
    say(&mut bob, "m4").await;
    assert_eq!(messages_through(&mut bob, "m4").await, [(4, "bob".to_owned(), "m4".to_owned())]);
}

#[tokio::test]
async fn earlier_messages_are_paged_from_redis_in_both_protocols() {
    let Some(redis) = Redis::start("paging").await else { return };
    let (one, two) = (Node::start(&redis).await, Node::start(&redis).await);
    let (mut alice, _) = join(&one, "/pages?name=alice").await;
    for seq in 1..=5 {
        say(&mut alice, &format!("m{seq}")).await;
    }
    messages_through(&mut alice, "m5").await;

    // JSON, on the other node: the messages before 5, oldest first.
    let (mut bob, _) = join(&two, "/pages?name=bob").await;
    let request = json!({"type": "history", "before": 5, "limit": 2, "id": "p1"});
    let earlier = history(&mut bob, request).await;
    assert_eq!((earlier["room"].as_str(), earlier["id"].as_str()), (Some("pages"), Some("p1")));
    assert_eq!(paged(&earlier), by_alice(3..=4));
    assert_eq!(earlier["more"], true);
    // On from the first of them, to the start of the room.
    let earlier = history(&mut bob, json!({"type": "history", "before": 3, "limit": 5})).await;
    assert_eq!(paged(&earlier), by_alice(1..=2));
    assert_eq!(earlier["more"], false);
    // Without `before`: the last ones; before the first: nothing.
    let earlier = history(&mut bob, json!({"type": "history"})).await;
    assert_eq!((paged(&earlier), &earlier["more"]), (by_alice(1..=5), &json!(false)));
    let earlier = history(&mut bob, json!({"type": "history", "before": 1})).await;
    assert_eq!((paged(&earlier), &earlier["more"]), (Vec::new(), &json!(false)));

    // Text: `/history 2` gets the last two, one line each, and how to go on.
    let mut carol = connect(&two.url("/pages?name=carol")).await;
    while next_text(&mut carol).await != "* carol joined" {}
    carol.send(Message::text("/history 2".to_owned())).await.expect("send");
    let answer = next_text(&mut carol).await;
    let lines: Vec<&str> = answer.lines().collect();
    assert_eq!(lines.len(), 4, "{answer}");
    assert_eq!(lines[0], "* 2 earlier messages from #4:");
    for (line, (seq, text)) in lines[1..3].iter().zip([(4, "m4"), (5, "m5")]) {
        assert!(line.starts_with(&format!("#{seq} ")), "{line}");
        assert!(line.ends_with(&format!(" alice: {text}")), "{line}");
    }
    assert_eq!(lines[3], "* more: /history N 4");
}

#[tokio::test]
async fn a_page_is_bounded_in_bytes_and_by_what_the_stream_keeps() {
    let Some(redis) = Redis::start("page bounds").await else { return };
    // Messages of 60 000 bytes: four fit in a page's 256 KiB, five do not.
    let flags = ["--history", "6", "--history-bytes", "8MiB", "--rate-limit", "0"];
    let node = Node::start_with(&redis, &flags).await;
    let (mut alice, _) = join(&node, "/bounded?name=alice").await;
    let text = |seq: u64| format!("m{seq} {}", "x".repeat(60_000));
    for seq in 1..=8 {
        say(&mut alice, &text(seq)).await;
    }
    until(&mut alice, |event| event["type"] == "message" && event["seq"] == 8).await;

    let earlier = history(&mut alice, json!({"type": "history", "limit": 200})).await;
    let seqs: Vec<u64> = paged(&earlier).iter().map(|(seq, ..)| *seq).collect();
    assert_eq!((seqs, &earlier["more"]), (vec![5, 6, 7, 8], &json!(true)));
    // --history 6 keeps 3 to 8: the next page ends there, with no more.
    let earlier = history(&mut alice, json!({"type": "history", "before": 5})).await;
    let seqs: Vec<u64> = paged(&earlier).iter().map(|(seq, ..)| *seq).collect();
    assert_eq!((seqs, &earlier["more"]), (vec![3, 4], &json!(false)));
    assert_eq!(paged(&earlier)[0].2, text(3));
}

#[tokio::test]
async fn keep_for_expires_an_empty_room_and_a_newcomer_starts_a_new_epoch() {
    let Some(redis) = Redis::start("keep for").await else { return };
    let (one, two) = (
        Node::start_with(&redis, &["--keep-for", "2s"]).await,
        Node::start_with(&redis, &["--keep-for", "2s"]).await,
    );
    let mut watcher = watch(&redis, "brief").await;
    let (mut alice, welcome) = join(&one, "/brief?name=alice").await;
    let epoch = welcome["epoch"].as_str().expect("epoch").to_owned();
    say(&mut alice, "m1").await;
    messages_through(&mut alice, "m1").await;
    // While someone is in the room, nothing of it can expire.
    for part in ["meta", "log", "names"] {
        assert_eq!(ttl_ms(&redis, &key("brief", part)).await, -1, "{part} never expires");
    }

    alice.send(Message::close(None, "")).await.expect("close");
    left(&mut watcher, "alice").await;
    // Empty: kept at most --keep-for after its last message, then gone.
    for part in ["meta", "log"] {
        let ttl = ttl_ms(&redis, &key("brief", part)).await;
        assert!(ttl == -2 || (0..=2_000).contains(&ttl), "{part}: PTTL {ttl}");
    }
    let gone = async {
        while exists(&redis, &key("brief", "meta")).await
            || exists(&redis, &key("brief", "log")).await
        {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    };
    timeout(PATIENCE, gone).await.expect("the room's keys expire in time");

    // A newcomer gets no history, in a new epoch numbered from the start.
    let (mut bob, welcome) = join(&two, "/brief?name=bob").await;
    assert_ne!(welcome["epoch"], epoch.as_str());
    assert_eq!(welcome["seq"], 0);
    let events = after_welcome(&mut bob).await;
    assert_eq!(events.len(), 1, "nothing but his join: {events:?}");
    // One resuming in the old epoch is told its seqs mean nothing now.
    let path = format!("/brief?name=alice&since=1&epoch={epoch}");
    let (mut alice, _) = join(&one, &path).await;
    let missed = next_json(&mut alice).await;
    assert_eq!((missed["type"].as_str(), &missed["count"]), (Some("missed"), &json!(null)));
    assert_eq!(missed["epoch"], welcome["epoch"]);
}

#[tokio::test]
async fn redis_gone_back_in_time_gives_the_room_a_new_epoch_instead_of_reusing_seqs() {
    let Some(redis) = Redis::start("back in time").await else { return };
    let node = Node::start(&redis).await;
    let (mut alice, welcome) = join(&node, "/rewound?name=alice").await;
    let old = welcome["epoch"].as_str().expect("epoch").to_owned();
    for text in ["m1", "m2", "m3"] {
        say(&mut alice, text).await;
    }
    messages_through(&mut alice, "m3").await;
    // What Redis restarted from a snapshot taken after m1 would hold.
    let (meta, log) = (key("rewound", "meta"), key("rewound", "log"));
    redis.run(redis::cmd("HSET").arg(&meta).arg("seq").arg(1)).await;
    redis.run(redis::cmd("XDEL").arg(&log).arg("0-2").arg("0-3")).await;

    // Numbered 2 again, m4 would be taken for delivered already: instead
    // the room takes a new epoch, said to every client, and goes on from 3.
    say(&mut alice, "m4").await;
    let missed = until(&mut alice, |event| event["type"] == "missed").await;
    assert_eq!(missed["count"], json!(null), "{missed}");
    assert_ne!(missed["epoch"].as_str().expect("the new epoch"), old);
    assert_eq!(
        messages_through(&mut alice, "m4").await,
        [(4, "alice".to_owned(), "m4".to_owned())]
    );
}

#[tokio::test]
async fn an_empty_room_whose_numbering_was_evicted_numbers_on_above_its_history() {
    let Some(redis) = Redis::start("evicted meta").await else { return };
    let node = Node::start(&redis).await;
    let mut watcher = watch(&redis, "evicted").await;
    let (mut alice, welcome) = join(&node, "/evicted?name=alice").await;
    let old = welcome["epoch"].as_str().expect("epoch").to_owned();
    for text in ["m1", "m2", "m3"] {
        say(&mut alice, text).await;
    }
    messages_through(&mut alice, "m3").await;
    alice.send(Message::close(None, "")).await.expect("close");
    left(&mut watcher, "alice").await;
    // A volatile-* policy may evict one of the empty room's keys, not both.
    redis.run(redis::cmd("DEL").arg(key("evicted", "meta"))).await;

    let (mut bob, welcome) = join(&node, "/evicted?name=bob").await;
    assert_ne!(welcome["epoch"], old.as_str(), "the numbering is new");
    assert_eq!(welcome["seq"], 3, "and goes on above the history kept");
    let events = after_welcome(&mut bob).await;
    assert_eq!(events[0], json!({"type": "history", "phase": "start", "count": 3}));
    say(&mut bob, "m4").await;
    assert_eq!(messages_through(&mut bob, "m4").await, [(4, "bob".to_owned(), "m4".to_owned())]);
}

#[tokio::test]
async fn a_node_that_delivered_more_finds_redis_gone_back_within_a_heartbeat() {
    let Some(redis) = Redis::start("back in time, quiet").await else { return };
    let (one, two) = (Node::start(&redis).await, Node::start(&redis).await);
    let (mut alice, welcome) = join(&one, "/quiet?name=alice").await;
    let old = welcome["epoch"].as_str().expect("epoch").to_owned();
    for text in ["m1", "m2", "m3"] {
        say(&mut alice, text).await;
    }
    messages_through(&mut alice, "m3").await;
    let (meta, log) = (key("quiet", "meta"), key("quiet", "log"));
    redis.run(redis::cmd("HSET").arg(&meta).arg("seq").arg(1)).await;
    redis.run(redis::cmd("XDEL").arg(&log).arg("0-2").arg("0-3")).await;

    // Alice says nothing: her node's heartbeat finds it, and tells her.
    let missed = until(&mut alice, |event| event["type"] == "missed").await;
    assert_ne!(missed["epoch"].as_str().expect("the new epoch"), old);
    // Bob, on a node that saw none of it, is numbered on from there.
    let (mut bob, welcome) = join(&two, "/quiet?name=bob").await;
    assert_eq!(welcome["epoch"], missed["epoch"]);
    say(&mut bob, "m4").await;
    assert_eq!(messages_through(&mut alice, "m4").await, [(4, "bob".to_owned(), "m4".to_owned())]);
}
