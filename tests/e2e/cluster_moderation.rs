//! Moderation across nodes sharing rooms through Redis: a kick or mute on
//! one node reaches the person's connections on another, and a ban kept in
//! Redis refuses joins on every node. Skipped without `redis-server`,
//! unless `CHAT_REQUIRE_REDIS=1`.

use chat::protocol::REMOVED_CLOSE_CODE;
use futures_util::SinkExt as _;
use serde_json::{Value, json};
use tokio::time::timeout;
use tokio_websockets::Message;

use crate::common::{PATIENCE, closed, exchange_from, status_of};
use crate::identity::{LOOPBACK, SECRET, body, token, upgrade_with_bearer};
use crate::redis_nodes::{Node, Redis, Ws, join, say, until};

fn path_of(claims: &Value) -> String {
    format!("/mods?token={}", token(claims))
}

async fn request(ws: &mut Ws, request: &Value) {
    ws.send(Message::text(request.to_string())).await.expect("sent");
}

fn moderated(action: &'static str) -> impl Fn(&Value) -> bool {
    move |event| event["type"] == "moderated" && event["action"] == action
}

#[tokio::test]
async fn a_kick_mute_and_ban_on_one_node_hold_on_the_other() {
    let Some(redis) = Redis::start("moderation").await else { return };
    let flags = ["--jwt-secret", SECRET];
    let (one, two) =
        (Node::start_with(&redis, &flags).await, Node::start_with(&redis, &flags).await);
    let (mut alice, _) =
        join(&one, &path_of(&json!({"sub": "a", "name": "alice", "mod": "*"}))).await;
    let bob_token = token(&json!({"sub": "b", "name": "bob"}));
    let (mut bob, _) = join(&two, &format!("/mods?token={bob_token}")).await;
    let (mut dave, _) = join(&two, &path_of(&json!({"sub": "d", "name": "dave"}))).await;
    until(&mut alice, |event| event["type"] == "join" && event["name"] == "dave").await;

    // A mute on node one: dave, on node two, reads but cannot send.
    request(&mut alice, &json!({"type": "mute", "name": "dave"})).await;
    until(&mut dave, moderated("mute")).await;
    say(&mut dave, "am I heard").await;
    let refused = until(&mut dave, |event| event["type"] == "error").await;
    assert_eq!(refused["code"], "muted", "{refused}");

    // A kick on node one closes bob's connection on node two.
    request(&mut alice, &json!({"type": "kick", "name": "bob", "reason": "enough"})).await;
    let told = until(&mut alice, moderated("kick")).await;
    assert_eq!((told["by"].as_str(), told["reason"].as_str()), (Some("alice"), Some("enough")));
    let (code, reason) = closed(&mut bob).await;
    assert_eq!((code, reason.as_str()), (REMOVED_CLOSE_CODE, "bob was kicked by alice: enough"));

    // A ban on node one refuses bob's joins on node two, kept in Redis.
    request(&mut alice, &json!({"type": "ban", "name": "bob", "seconds": 3600})).await;
    until(&mut alice, moderated("ban")).await;
    let upgrade = upgrade_with_bearer("/mods", &bob_token);
    for node in [&two, &one] {
        let refused = exchange_from(LOOPBACK, node.addr, upgrade.as_bytes()).await;
        assert_eq!(status_of(&refused), "403", "{refused}");
        assert!(body(&refused).starts_with("you are banned from room \"mods\""), "{refused}");
    }
    // A node started afterwards knows it too.
    let three = Node::start_with(&redis, &flags).await;
    let refused = exchange_from(LOOPBACK, three.addr, upgrade.as_bytes()).await;
    assert_eq!(status_of(&refused), "403", "{refused}");
    // A ban of dave, on node two, is recorded there against who he is
    // too: under another name, the same sub is refused on node one.
    request(&mut alice, &json!({"type": "ban", "name": "dave"})).await;
    let (code, _) = closed(&mut dave).await;
    assert_eq!(code, REMOVED_CLOSE_CODE);
    let mut hkeys = redis::cmd("HKEYS");
    hkeys.arg("chat:room:mods:sanctions");
    let recorded = timeout(PATIENCE, async {
        // Written by node two as the ban reaches it: polled, no event says so.
        while !format!("{:?}", redis.run(&hkeys).await).contains("ban dave sub:d") {
            tokio::task::yield_now().await;
        }
    });
    recorded.await.expect("the ban recorded against dave's sub");
    let david = upgrade_with_bearer("/mods", &token(&json!({"sub": "d", "name": "david"})));
    let refused = exchange_from(LOOPBACK, one.addr, david.as_bytes()).await;
    assert_eq!(status_of(&refused), "403", "{refused}");

    // Lifted on node two, bob comes back anywhere.
    let (mut alice_on_two, _) =
        join(&two, &path_of(&json!({"sub": "a", "name": "alice", "mod": "mods"}))).await;
    request(&mut alice_on_two, &json!({"type": "unban", "name": "bob"})).await;
    until(&mut alice_on_two, moderated("unban")).await;
    let (_, welcome) = join(&one, &format!("/mods?token={bob_token}")).await;
    assert_eq!(welcome["name"], "bob");
}
