//! What clients can make a node ask of Redis is bounded (`--redis`): a join
//! reads only what it replays, at most `--history` messages and
//! `--history-bytes`, and no burst of joins, however costly, puts a node in
//! degraded mode or stops other rooms' messages.

use crate::common::{PATIENCE, next_json};
use crate::redis_nodes::{Node, Redis, Ws, after_welcome, join, messages_through, say, until};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::timeout;
use tokio_websockets::ClientBuilder;

/// Sends `count` messages of `bytes` characters each, `m1` … (the number
/// first, then filler), and waits for the echo of the last.
async fn fill(ws: &mut Ws, count: usize, bytes: usize) {
    for n in 1..=count {
        let label = format!("m{n} ");
        say(ws, &format!("{label}{}", "x".repeat(bytes - label.len()))).await;
    }
    let last = format!("m{count} ");
    until(ws, |event| {
        event["type"] == "message" && event["text"].as_str().is_some_and(|t| t.starts_with(&last))
    })
    .await;
}

/// Number, from its text (`mN …`), of each replayed message.
fn replayed(events: &[Value]) -> Vec<u64> {
    let numbers = events.iter().filter(|event| event["type"] == "message").map(|event| {
        let text = event["text"].as_str().expect("text");
        text[1..text.find(' ').expect("a label")].parse::<u64>().expect("a number")
    });
    numbers.collect()
}

#[tokio::test]
async fn a_join_replays_at_most_history_bytes_and_a_resume_is_told_what_did_not_fit() {
    let Some(redis) = Redis::start("replay bytes").await else { return };
    // 20 messages of about 10 KB: 10 fit in 100 KiB, 11 do not.
    let flags = ["--history-bytes", "100KiB", "--rate-limit", "0"];
    let node = Node::start_with(&redis, &flags).await;
    let (mut alice, welcome) = join(&node, "/big?name=alice").await;
    let epoch = welcome["epoch"].as_str().expect("epoch").to_owned();
    fill(&mut alice, 20, 10_000).await;

    // A newcomer gets the newest messages that fit, in order.
    let (mut bob, _) = join(&node, "/big?name=bob").await;
    let events = after_welcome(&mut bob).await;
    assert_eq!(replayed(&events), (11..=20).collect::<Vec<_>>());
    assert_eq!(events[0], json!({"type": "history", "phase": "start", "count": 10}));

    // A resume from further back is told what it misses first.
    let path = format!("/big?name=carol&since=2&epoch={epoch}");
    let (mut carol, _) = join(&node, &path).await;
    let events = after_welcome(&mut carol).await;
    assert_eq!(events[0], json!({"type": "missed", "count": 8}));
    assert_eq!(events[1], json!({"type": "history", "phase": "start", "count": 10}));
    assert_eq!(replayed(&events), (11..=20).collect::<Vec<_>>());

    // And one that is close gets all it lacks.
    let path = format!("/big?name=dave&since=17&epoch={epoch}");
    let (mut dave, _) = join(&node, &path).await;
    assert_eq!(replayed(&after_welcome(&mut dave).await), [18, 19, 20]);
}

#[tokio::test]
async fn redis_keeps_at_most_history_bytes_of_a_room() {
    let Some(redis) = Redis::start("stream bytes").await else { return };
    let flags = ["--history-bytes", "100KiB", "--rate-limit", "0"];
    let node = Node::start_with(&redis, &flags).await;
    let (mut alice, _) = join(&node, "/kept?name=alice").await;
    // 20 messages of about 10 KB, as stored: 10 fit in 100 KiB.
    fill(&mut alice, 20, 10_000).await;
    let len = redis.run(&redis::cmd("XLEN").arg("chat:room:kept:log").clone()).await;
    let len: usize = redis::from_redis_value(len).expect("a length");
    assert_eq!(len, 10, "the stream keeps what fits in --history-bytes");
    let bytes =
        redis.run(&redis::cmd("HGET").arg("chat:room:kept:meta").arg("bytes").clone()).await;
    let bytes: usize = redis::from_redis_value(bytes).expect("a count");
    assert!((100_000..=100 * 1024).contains(&bytes), "{bytes} bytes counted");
}

#[tokio::test]
async fn a_resume_with_nothing_to_replay_reads_nothing_from_the_stream() {
    let Some(redis) = Redis::start("nothing to replay").await else { return };
    let node = Node::start(&redis).await;
    let (mut alice, welcome) = join(&node, "/quiet?name=alice").await;
    let epoch = welcome["epoch"].as_str().expect("epoch").to_owned();
    fill(&mut alice, 5, 100).await;

    redis.run(&redis::cmd("CONFIG").arg("RESETSTAT").clone()).await;
    let (mut bob, welcome) = join(&node, &format!("/quiet?name=bob&since=5&epoch={epoch}")).await;
    assert_eq!(welcome["seq"], 5);
    assert_eq!(after_welcome(&mut bob).await.len(), 1, "nothing but its join");
    let stats = redis.run(&redis::cmd("INFO").arg("commandstats").clone()).await;
    let stats: String = redis::from_redis_value(stats).expect("INFO text");
    assert!(stats.contains("cmdstat_evalsha"), "the join ran: {stats}");
    assert!(!stats.contains("cmdstat_xrange") && !stats.contains("cmdstat_xrevrange"), "{stats}");
}

/// Joins `path` and leaves at once, whatever the answer (a welcome, or
/// 1013 when the node cannot reach Redis).
async fn join_and_go(url: String) {
    let Ok(builder) = ClientBuilder::new().uri(&url) else { return };
    let protocol = http::HeaderValue::from_static(chat::protocol::JSON_PROTOCOL);
    let Ok(builder) = builder.add_header(http::header::SEC_WEBSOCKET_PROTOCOL, protocol) else {
        return;
    };
    let Ok(Ok((mut ws, _))) = timeout(PATIENCE, builder.connect()).await else { return };
    let _ = timeout(PATIENCE, ws.next()).await;
}

#[tokio::test]
async fn joins_into_a_large_history_leave_the_link_up_and_other_rooms_flowing() {
    /// Joins at once on each node, half newcomers, half resumes with nothing
    /// to replay: on the previous main each read the whole 6 MB stream.
    const JOINS: usize = 60;
    let Some(redis) = Redis::start("costly joins").await else { return };
    let flags = ["--rate-limit", "0", "--max-connections", "10000"];
    let nodes = [Node::start_with(&redis, &flags).await, Node::start_with(&redis, &flags).await];
    let (mut holder, welcome) = join(&nodes[0], "/big?name=holder").await;
    let epoch = welcome["epoch"].as_str().expect("epoch").to_owned();
    // The default --history (100) of messages near the size limit.
    fill(&mut holder, 100, 60_000).await;
    let (mut x, _) = join(&nodes[0], "/other?name=x").await;
    let (mut y, _) = join(&nodes[1], "/other?name=y").await;

    let mut attack = tokio::task::JoinSet::new();
    for node in &nodes {
        for n in 0..JOINS {
            let path = if n % 2 == 0 {
                format!("/big?name=j{n}")
            } else {
                format!("/big?name=j{n}&since=100&epoch={epoch}")
            };
            attack.spawn(join_and_go(node.url(&path)));
        }
    }
    say(&mut x, "during").await;
    let seen = messages_through(&mut y, "during").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    while attack.join_next().await.is_some() {}

    say(&mut x, "after").await;
    for ws in [&mut x, &mut y] {
        let event = until(ws, |event| {
            event["text"] == "after" || event["type"] == "notice" || event["type"] == "error"
        })
        .await;
        assert_eq!(event["text"], "after", "the link stayed up: {event}");
    }
    for node in &nodes {
        let metrics = node.metrics().await;
        assert!(metrics.contains("chat_cluster_outages_total 0\n"), "{metrics}");
    }
    // The room under attack still works too.
    let (mut late, _) = join(&nodes[1], "/big?name=late").await;
    let first = next_json(&mut late).await;
    assert_eq!(first["type"], "history", "{first}");
}
