//! When Redis loses its data (`FLUSHALL`, or a restart without persistence)
//! under running nodes, clients are told with the room's new epoch, every
//! message said afterwards still reaches everyone, and a later resume, on
//! any node, brings no duplicate.

use crate::redis_nodes::{Node, Redis, after_welcome, join, messages_through, say, until};
use serde_json::json;

#[tokio::test]
async fn after_redis_loses_its_data_clients_resume_in_the_new_epoch_without_duplicates() {
    let Some(redis) = Redis::start("data loss").await else { return };
    let (one, two) = (Node::start(&redis).await, Node::start(&redis).await);
    let (mut bob, _) = join(&two, "/lost?name=bob").await;
    for text in ["m1", "m2", "m3"] {
        say(&mut bob, text).await;
    }
    messages_through(&mut bob, "m3").await;
    // Alice joins after them, so her connection has them all already.
    let (mut alice, welcome) = join(&one, "/lost?name=alice").await;
    let old = welcome["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(welcome["seq"], 3);

    redis.run(&redis::cmd("FLUSHALL")).await;
    say(&mut bob, "m4").await;
    // Both are told, with the new epoch, and both get m4 numbered on.
    let mut new = String::new();
    for ws in [&mut alice, &mut bob] {
        let missed = until(ws, |event| event["type"] == "missed").await;
        assert_eq!(missed["count"], json!(null), "{missed}");
        new = missed["epoch"].as_str().expect("the new epoch").to_owned();
        assert_ne!(new, old);
        assert_eq!(messages_through(ws, "m4").await, [(4, "bob".to_owned(), "m4".to_owned())]);
    }

    // Alice comes back on the other node in the new epoch: nothing again.
    drop(alice);
    until(&mut bob, |event| event["type"] == "leave" && event["name"] == "alice").await;
    let path = format!("/lost?name=alice&since=4&epoch={new}");
    let (mut alice, welcome) = join(&two, &path).await;
    assert_eq!((welcome["epoch"].as_str(), welcome["seq"].as_u64()), (Some(&*new), Some(4)));
    let events = after_welcome(&mut alice).await;
    assert_eq!(events.len(), 1, "nothing but her join: {events:?}");

    // One that kept the old epoch is told, given the new one, and gets what
    // the new epoch holds, once.
    let path = format!("/lost?name=carol&since=3&epoch={old}");
    let (mut carol, _) = join(&one, &path).await;
    let events = after_welcome(&mut carol).await;
    assert_eq!(events[0], json!({"type": "missed", "count": null, "epoch": new}));
    assert_eq!(events[1], json!({"type": "history", "phase": "start", "count": 1}));
    assert_eq!(events[2]["text"], "m4");

    // And the room goes on, once for everyone.
    say(&mut carol, "m5").await;
    for ws in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(messages_through(ws, "m5").await, [(5, "carol".to_owned(), "m5".to_owned())]);
    }
}
