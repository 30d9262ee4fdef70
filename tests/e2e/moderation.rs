//! Moderation (issue 18): `/kick`, `/ban`, `/unban`, `/mute` and `/unmute`
//! from a token whose `mod` claim names the room, their JSON requests, and
//! what they do to the person's connections, joins and messages.

use chat::protocol::REMOVED_CLOSE_CODE;
use chat::server::config::ServerConfig;
use futures_util::SinkExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::time::timeout;

use crate::common::{
    CLIENT, PATIENCE, Peer, TestServer, command, connect_json, join_from, next_json, next_of,
    status_of,
};
use crate::durable_history::TempDb;
use crate::identity::{another_device, answer, body, hs256_server_config, token};

/// The path of a join with a token of `sub`, named `name`, moderating `mods`.
fn path_of(sub: &str, name: &str, mods: &Value) -> String {
    let claims = if mods.is_null() {
        json!({"sub": sub, "name": name})
    } else {
        json!({"sub": sub, "name": name, "mod": mods})
    };
    format!("/?token={}", token(&claims))
}

/// alice, who moderates every room.
fn moderator() -> String {
    path_of("u-alice", "alice", &json!("*"))
}

fn bob_path() -> String {
    path_of("u-bob", "bob", &Value::Null)
}

#[tokio::test]
async fn a_kick_closes_every_connection_of_the_person_and_the_room_is_told() {
    let server = TestServer::with(hs256_server_config()).await;
    let mut alice = Peer::join(&server, &moderator()).await;
    let mut laptop = Peer::join(&server, &bob_path()).await;
    // One person: the second device is not announced.
    let (mut phone, _) = another_device(&server, &bob_path()).await;
    alice.wait_for("* bob joined").await;
    alice.send("/kick bob flooding the room").await;
    alice.wait_for("* bob was kicked by alice: flooding the room").await;
    for device in [&mut laptop, &mut phone] {
        let (code, reason) = device.closed().await;
        assert_eq!(code, REMOVED_CLOSE_CODE);
        assert_eq!(reason, "bob was kicked by alice: flooding the room");
    }
    // A kick is not a ban: bob may come back.
    let back = Peer::join(&server, &bob_path()).await;
    assert_eq!(back.name, "bob");
    server.stop().await;
}

#[tokio::test]
async fn a_non_moderator_is_refused_and_nothing_happens() {
    let server = TestServer::with(hs256_server_config()).await;
    let mut bob = Peer::join(&server, &bob_path()).await;
    // Moderates another room only.
    let mut carol = Peer::join(&server, &path_of("u-carol", "carol", &json!(["other"]))).await;
    bob.wait_for("* carol joined").await;
    for command in ["/kick carol", "/ban carol 1h", "/mute carol", "/unban carol"] {
        bob.send(command).await;
        bob.expect("! you do not moderate this room: nothing was done").await;
    }
    carol.send("/kick bob").await;
    carol.expect("! you do not moderate this room: nothing was done").await;
    // Nobody was removed or muted: both still speak.
    carol.send("still here").await;
    bob.expect("carol: still here").await;
    bob.send("me too").await;
    bob.expect("bob: me too").await;
    carol.wait_for("bob: me too").await;
    // Nor does /help list what they may not do.
    bob.send("/help").await;
    let help = bob.next().await;
    assert!(help.starts_with("* commands:") && !help.contains("/kick"), "{help}");
    server.stop().await;
}

#[tokio::test]
async fn a_moderator_is_told_so_and_sees_the_commands_in_help() {
    let server = TestServer::with(hs256_server_config()).await;
    let mut ws = crate::common::connect(&server.url(&moderator())).await;
    let welcome = crate::common::next_text(&mut ws).await;
    assert!(welcome.contains("signed in as a moderator"), "{welcome}");
    let mut alice = Peer { ws, name: "alice".into() };
    alice.expect("* alice joined").await;
    alice.send("/help").await;
    let help = alice.next().await;
    for command in ["/kick NAME [REASON]", "/ban NAME [DURATION] [REASON]", "/unmute NAME"] {
        assert!(help.contains(command), "{help}");
    }
    // Mistakes are told, and change nothing.
    alice.send("/kick zed").await;
    alice.expect("! nobody named \"zed\" is in this room: nothing was done").await;
    alice.send("/unban zed").await;
    alice.expect("! \"zed\" is not banned or muted here: nothing was done").await;
    alice.send("/ban zed 500d").await;
    alice.expect("! a ban or mute lasts from 1 second to 366 days: nothing was done").await;
    alice.send("/mute").await;
    let usage = alice.next().await;
    assert!(usage.starts_with("! usage: /mute NAME [DURATION]"), "{usage}");
    server.stop().await;
}

#[tokio::test]
async fn bans_and_mutes_hold_across_a_restart_until_lifted() {
    let db = TempDb::new();
    let config = || ServerConfig { jwt_secret: hs256_server_config().jwt_secret, ..db.config() };
    let server = TestServer::with(config()).await;
    let mut alice = Peer::join(&server, &moderator()).await;
    let dave = path_of("u-dave", "dave", &Value::Null);
    let _dave = Peer::join(&server, &dave).await;
    alice.wait_for("* dave joined").await;
    alice.send("/mute dave").await;
    alice.expect("* dave was muted by alice").await;
    let mut bob = Peer::join(&server, &bob_path()).await;
    alice.send("/ban bob 2h spam").await;
    alice.wait_for("* bob was banned by alice for 2h: spam").await;
    let (code, reason) = bob.closed().await;
    assert_eq!(
        (code, reason.as_str()),
        (REMOVED_CLOSE_CODE, "bob was banned by alice for 2h: spam")
    );
    let bob_token = bob_token();
    let refused = answer(&server, "/", Some(&bob_token)).await;
    assert_eq!(status_of(&refused), "403", "{refused}");
    let told = body(&refused);
    assert!(told.starts_with("you are banned from room \"lobby\" for "), "{refused}");
    assert!(body(&refused).ends_with(": spam"), "{refused}");
    // Only from that room.
    assert_eq!(status_of(&answer(&server, "/elsewhere", Some(&bob_token)).await), "101");
    drop(alice);
    server.stop().await;

    let server = TestServer::with(config()).await;
    let refused = answer(&server, "/", Some(&bob_token)).await;
    assert_eq!(status_of(&refused), "403", "kept in the store: {refused}");
    let mut dave = Peer::join(&server, &dave).await;
    dave.send("back again").await;
    dave.expect("! you are muted in this room: this message was not sent").await;
    let mut alice = Peer::join(&server, &moderator()).await;
    alice.send("/unban bob").await;
    alice.expect("* bob was unbanned by alice").await;
    let bob = Peer::join(&server, &bob_path()).await;
    assert_eq!(bob.name, "bob");
    server.stop().await;
}

fn bob_token() -> String {
    token(&json!({"sub": "u-bob", "name": "bob"}))
}

#[tokio::test]
async fn a_ban_of_a_name_holds_for_whoever_claims_it_and_ends_when_it_expires() {
    let server = TestServer::with(hs256_server_config()).await;
    let mut alice = Peer::join(&server, &moderator()).await;
    // Nobody named mallory is here: the name itself is banned.
    alice.send("/ban mallory 1s").await;
    alice.expect("* mallory was banned by alice for 1s").await;
    let mallory = token(&json!({"sub": "u-m", "name": "mallory"}));
    let refused = answer(&server, "/", Some(&mallory)).await;
    assert_eq!(status_of(&refused), "403", "{refused}");
    // It expires by itself: the join gets in once it has (polled, within PATIENCE).
    // Each try from another address: the join rate is per address.
    let mut from = [127, 0, 0, 10];
    let admitted = timeout(PATIENCE, async {
        loop {
            from[3] = if from[3] >= 250 { 10 } else { from[3] + 1 };
            let request = crate::identity::upgrade_with_bearer("/", &mallory);
            let response =
                crate::common::exchange_from(from, server.addr, request.as_bytes()).await;
            if status_of(&response) == "101" {
                return;
            }
            // Refused as banned, or, once every address tried, as too fast.
            assert!(["403", "429"].contains(&status_of(&response)), "{response}");
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(admitted.is_ok(), "a one-second ban ends");
    server.stop().await;
}

#[tokio::test]
async fn a_ban_on_a_guest_holds_for_its_address_under_any_name() {
    let config = ServerConfig { guests: true, ..hs256_server_config() };
    let server = TestServer::with(config).await;
    let mut alice = Peer::join(&server, &moderator()).await;
    let guest = join_from([127, 0, 0, 7], &server, "/?name=bob").await;
    assert_eq!(guest.name, "~bob");
    alice.wait_for("* ~bob joined").await;
    alice.send("/ban ~bob").await;
    alice.expect("* ~bob was banned by alice").await;
    // From the same address, under another name: refused once the ban is
    // recorded against the address (it follows the notice; polled).
    let refused = timeout(PATIENCE, async {
        loop {
            let response = crate::common::exchange_from(
                [127, 0, 0, 7],
                server.addr,
                crate::common::upgrade_request("/?name=robert").as_bytes(),
            )
            .await;
            if status_of(&response) == "403" {
                return response;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the address is banned");
    assert!(body(&refused).starts_with("you are banned from room \"lobby\""), "{refused}");
    // Another address may come in under another name...
    let other = join_from([127, 0, 0, 8], &server, "/?name=robert").await;
    assert_eq!(other.name, "~robert");
    // ...but not as the banned name.
    let response = crate::common::exchange_from(
        [127, 0, 0, 8],
        server.addr,
        crate::common::upgrade_request("/?name=bob").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&response), "403", "{response}");
    server.stop().await;
}

#[tokio::test]
async fn a_muted_person_reads_but_cannot_send_until_unmuted() {
    let server = TestServer::with(hs256_server_config()).await;
    let mut alice = Peer::join(&server, &moderator()).await;
    let mut bob = Peer::join(&server, &bob_path()).await;
    alice.wait_for("* bob joined").await;
    alice.send("/mute bob 10m").await;
    alice.expect("* bob was muted by alice for 10m").await;
    bob.expect("* bob was muted by alice for 10m").await;
    bob.send("can you hear me").await;
    bob.expect("! you are muted in this room for 10m: this message was not sent").await;
    alice.send("bob reads this").await;
    bob.expect("alice: bob reads this").await;
    // Coming back does not lift it.
    bob.close().await;
    alice.wait_for("* bob left").await;
    let mut bob = Peer::join(&server, &bob_path()).await;
    bob.send("and now").await;
    let refused = bob.next().await;
    assert!(refused.starts_with("! you are muted in this room for "), "{refused}");
    alice.send("/unmute bob").await;
    alice.wait_for("* bob was unmuted by alice").await;
    bob.wait_for("* bob was unmuted by alice").await;
    bob.send("thanks").await;
    bob.expect("bob: thanks").await;
    alice.expect("bob: thanks").await;
    server.stop().await;
}

#[tokio::test]
async fn json_requests_moderate_and_are_answered_by_id() {
    let server = TestServer::with(hs256_server_config()).await;
    let mut alice = connect_json(&server.url(&moderator())).await;
    let welcome = next_json(&mut alice).await;
    assert_eq!(
        (welcome["signed_in"].clone(), welcome["moderator"].clone()),
        (json!(true), json!(true))
    );
    let mut bob = connect_json(&server.url(&bob_path())).await;
    let welcome = next_json(&mut bob).await;
    assert_eq!(welcome["moderator"], Value::Null, "{welcome}");
    let send = |value: Value| tokio_websockets::Message::text(value.to_string());
    bob.send(send(json!({"type": "kick", "name": "alice", "id": "b1"}))).await.expect("sent");
    let refused = next_of(&mut bob, "error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["id"].as_str()),
        (Some("not_moderator"), Some("b1"))
    );
    let mute = json!({"type": "mute", "name": "bob", "seconds": 60, "id": "a1"});
    alice.send(send(mute)).await.expect("sent");
    let told = next_of(&mut alice, "moderated").await;
    assert_eq!(
        told,
        json!({"type": "moderated", "room": "lobby", "action": "mute", "name": "bob", "by": "alice", "seconds": 60})
    );
    let ack = next_of(&mut alice, "ack").await;
    assert_eq!(ack["id"], "a1");
    bob.send(send(json!({"type": "message", "text": "hi", "id": "b2"}))).await.expect("sent");
    let refused = next_of(&mut bob, "error").await;
    assert_eq!((refused["code"].as_str(), refused["id"].as_str()), (Some("muted"), Some("b2")));
    let kick = json!({"type": "kick", "name": "bob", "reason": "enough", "id": "a2"});
    alice.send(send(kick)).await.expect("sent");
    let told = next_of(&mut alice, "moderated").await;
    assert_eq!((told["action"].as_str(), told["reason"].as_str()), (Some("kick"), Some("enough")));
    server.stop().await;
}

#[tokio::test]
async fn the_terminal_client_shows_the_reason_and_does_not_come_back() {
    let server = TestServer::with(hs256_server_config()).await;
    let mut alice = Peer::join(&server, &moderator()).await;
    let url = server.url("/");
    let bob_token = bob_token();
    let mut client = command(CLIENT, &[&url, "--token", &bob_token]).spawn().expect("spawn");
    let mut stdout = BufReader::new(client.stdout.take().expect("stdout")).lines();
    // Keeps stdin open: the client stays until the server closes.
    let _stdin = client.stdin.take();
    let welcome = timeout(PATIENCE, stdout.next_line()).await.expect("in time").expect("read");
    assert!(welcome.as_deref().is_some_and(|line| line.contains("you are bob")), "{welcome:?}");
    alice.wait_for("* bob joined").await;
    alice.send("/kick bob off topic").await;
    alice.wait_for("* bob was kicked by alice: off topic").await;
    let output = timeout(PATIENCE, client.wait_with_output()).await.expect("exits").expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bob was kicked by alice: off topic"), "{stderr}");
    assert!(stderr.contains("4003"), "{stderr}");
    // It did not come back.
    alice.send("/who").await;
    alice.wait_for("* 1 in lobby: alice").await;
    server.stop().await;
}
