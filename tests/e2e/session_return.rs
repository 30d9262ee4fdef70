//! A client that comes back with its session secret gets its name back at
//! once, even while its dead connection still holds it; nobody else can.

use crate::common::{Peer, TestServer, connect_json, next_frame, next_json};
use futures_util::SinkExt;
use serde_json::json;
use tokio_websockets::Message;

#[tokio::test]
async fn a_returning_session_takes_its_name_back_and_retires_the_old_connection() {
    let server = TestServer::start().await;
    let mut bob = Peer::named(&server, "bob").await;
    let mut old = connect_json(&server.url("/?name=alice")).await;
    let welcome = next_json(&mut old).await;
    let secret = welcome["session"].as_str().expect("a session").to_owned();
    bob.expect("* alice joined").await;

    // Someone else, without the secret or with a wrong one, cannot.
    for query in ["/?name=alice", "/?name=alice&session=00000000000000000000000000000000"] {
        let mut thief = connect_json(&server.url(query)).await;
        let refused = next_json(&mut thief).await;
        assert_eq!(refused["code"], "name_taken");
        let welcome = next_json(&mut thief).await;
        let name = welcome["name"].as_str().expect("a name").to_owned();
        assert_ne!(name, "alice");
        bob.expect(&format!("* {name} joined")).await;
        thief.send(Message::close(None, "")).await.expect("close");
        bob.expect(&format!("* {name} left")).await;
    }

    // The old connection is silently dead as far as the client knows; it
    // comes back with its secret.
    let mut new = connect_json(&server.url(&format!("/?name=alice&session={secret}"))).await;
    let welcome = next_json(&mut new).await;
    assert_eq!(welcome["name"], "alice");
    assert_ne!(welcome["session"].as_str(), Some(secret.as_str()));
    loop {
        let frame = next_frame(&mut old).await;
        if let Some((code, reason)) = frame.as_close() {
            assert_eq!((u16::from(code), reason), (4001, "replaced by a new connection"));
            break;
        }
    }
    // The room saw no leave and no join: the next thing it sees is alice talking.
    new.send(Message::text(json!({"type": "message", "text": "back"}).to_string()))
        .await
        .expect("send");
    bob.expect("alice: back").await;
    bob.send("/who").await;
    bob.expect("* 2 in lobby: alice, bob").await;
    server.stop().await;
}

#[tokio::test]
async fn a_retired_connection_cannot_rename_and_another_spelling_is_announced() {
    let server = TestServer::start().await;
    let mut bob = Peer::named(&server, "bob").await;
    let mut old = connect_json(&server.url("/?name=alice")).await;
    let secret = next_json(&mut old).await["session"].as_str().expect("a session").to_owned();
    bob.expect("* alice joined").await;

    // Back under another spelling of the same name: the room is told.
    let mut new = connect_json(&server.url(&format!("/?name=Alice&session={secret}"))).await;
    assert_eq!(next_json(&mut new).await["name"], "Alice");
    bob.expect("* alice is now Alice").await;
    // The old connection, retired, renames no one, whenever its frame is read.
    let rename = json!({"type": "nick", "name": "zed"});
    let _ = old.send(Message::text(rename.to_string())).await;
    let mut thief = connect_json(&server.url("/?name=alice")).await;
    assert_eq!(next_json(&mut thief).await["code"], "name_taken");
    let mut zed = connect_json(&server.url("/?name=zed")).await;
    assert_eq!(next_json(&mut zed).await["name"], "zed");
    server.stop().await;
}
