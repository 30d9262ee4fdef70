//! The HTTP API for programs (`/api/`, with `--api-key`) and the page's
//! ticket exchange (`POST /api/ticket`): real sockets, hyper's client.

use chat::server::config::{ApiKey, ServerConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{
    HttpClient, PATIENCE, Peer, TestServer, api, connect_json, exchange_from, next_of, status_of,
    upgrade_request,
};

const KEY: &str = "the API key";
const SECRET: &str = "the signing secret";

fn with_api_key() -> ServerConfig {
    ServerConfig { api_key: Some(ApiKey::from(KEY)), ..ServerConfig::default() }
}

/// Publishes `text` in `room` as `from`; returns the answer.
async fn publish(server: &TestServer, room: &str, from: &str, text: &str) -> (u16, Value) {
    let body = json!({ "from": from, "text": text }).to_string();
    let path = format!("/api/rooms/{room}/messages");
    let answer = api(server, "POST", &path, Some(KEY), Some(&body)).await;
    (answer.status, answer.json)
}

#[tokio::test]
async fn a_published_message_reaches_the_room_numbered_as_the_api_said() {
    let server = TestServer::with(with_api_key()).await;
    let mut ws = connect_json(&server.url("/ops?name=alice")).await;
    next_of(&mut ws, "join").await;
    let (status, answer) = publish(&server, "ops", "ci", "deploy done").await;
    assert_eq!(status, 200, "{answer}");
    let message = next_of(&mut ws, "message").await;
    assert_eq!(message["seq"], answer["seq"], "{message}");
    assert_eq!(message["from"], "ci (api)");
    assert_eq!(message["text"], "deploy done");
    server.stop().await;
}

#[tokio::test]
async fn a_message_published_to_an_empty_room_is_kept_for_the_next_joiner() {
    let server = TestServer::with(with_api_key()).await;
    let (status, answer) = publish(&server, "quiet", "cron", "nightly build green").await;
    assert_eq!((status, &answer["seq"]), (200, &json!(1)), "{answer}");
    // Nobody is there: the publish held the room without showing in it.
    let rooms = api(&server, "GET", "/api/rooms", Some(KEY), None).await;
    assert_eq!(rooms.json, json!({ "rooms": [], "more": false }));
    let mut ws = connect_json(&server.url("/quiet?name=dora")).await;
    let welcome = next_of(&mut ws, "welcome").await;
    assert_eq!((welcome["online"].as_u64(), welcome["seq"].as_u64()), (Some(1), Some(1)));
    let replayed = next_of(&mut ws, "message").await;
    assert_eq!(replayed["seq"], 1);
    assert_eq!(replayed["from"], "cron (api)");
    assert_eq!(replayed["text"], "nightly build green");
    let joined = next_of(&mut ws, "join").await;
    assert_eq!(joined["name"], "dora", "no other join came before the joiner's own");
    server.stop().await;
}

#[tokio::test]
async fn history_comes_in_pages_before_a_number() {
    let server = TestServer::with(with_api_key()).await;
    for n in 1..=5 {
        let (status, answer) = publish(&server, "log", "ci", &format!("line {n}")).await;
        assert_eq!((status, answer["seq"].as_u64()), (200, Some(n)));
    }
    let seqs = |page: &Value| -> Vec<u64> {
        let messages = page["messages"].as_array().expect("messages");
        messages.iter().map(|m| m["seq"].as_u64().expect("a seq")).collect()
    };
    let shared = &server;
    let page = |query: &str| {
        let path = format!("/api/rooms/log/messages{query}");
        async move { api(shared, "GET", &path, Some(KEY), None).await }
    };
    let newest = page("?limit=2").await;
    assert_eq!((newest.status, seqs(&newest.json)), (200, vec![4, 5]));
    assert_eq!(newest.json["more"], true);
    assert_eq!(newest.json["messages"][0]["from"], "ci (api)");
    assert_eq!(newest.json["messages"][0]["text"], "line 4");
    assert!(newest.json["messages"][0]["ts"].is_string(), "{}", newest.json);
    let earlier = page("?before=4&limit=2").await;
    assert_eq!((seqs(&earlier.json), &earlier.json["more"]), (vec![2, 3], &json!(true)));
    let first = page("?before=2").await;
    assert_eq!((seqs(&first.json), &first.json["more"]), (vec![1], &json!(false)));
    let all = page("").await;
    assert_eq!(seqs(&all.json), vec![1, 2, 3, 4, 5]);
    for bad in ["?limit=0", "?limit=201", "?before=soon"] {
        let refused = page(bad).await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.json);
        assert!(refused.json["error"].is_string());
    }
    server.stop().await;
}

#[tokio::test]
async fn rooms_are_listed_with_their_counts_and_members_by_name() {
    let server = TestServer::with(with_api_key()).await;
    let _alice = Peer::join(&server, "/den?name=alice").await;
    let _bob = Peer::join(&server, "/den?name=bob").await;
    let _carol = Peer::join(&server, "/lab?name=carol").await;
    let rooms = api(&server, "GET", "/api/rooms", Some(KEY), None).await;
    let expected = json!({
        "rooms": [{ "room": "den", "online": 2 }, { "room": "lab", "online": 1 }],
        "more": false,
    });
    assert_eq!((rooms.status, rooms.json), (200, expected));
    let members = api(&server, "GET", "/api/rooms/den/members", Some(KEY), None).await;
    let expected = json!({ "room": "den", "count": 2, "names": ["alice", "bob"] });
    assert_eq!((members.status, members.json), (200, expected));
    let nobody = api(&server, "GET", "/api/rooms/empty/members", Some(KEY), None).await;
    assert_eq!(nobody.json, json!({ "room": "empty", "count": 0, "names": [] }));
    server.stop().await;
}

#[tokio::test]
async fn without_an_api_key_the_api_is_not_there() {
    let server = TestServer::start().await;
    for path in ["/api/rooms", "/api/rooms/lobby/messages", "/api/ticket"] {
        let answer = api(&server, "GET", path, Some(KEY), None).await;
        assert_eq!(answer.status, 404, "{path}: {}", answer.json);
        assert!(answer.json["error"].is_string());
    }
    server.stop().await;
}

#[tokio::test]
async fn a_missing_or_wrong_key_gets_401() {
    let server = TestServer::with(with_api_key()).await;
    for bearer in [None, Some("not the key"), Some("the API ke")] {
        let answer = api(&server, "GET", "/api/rooms", bearer, None).await;
        assert_eq!(answer.status, 401, "{bearer:?}: {}", answer.json);
        assert!(answer.json["error"].as_str().is_some_and(|e| e.contains("API key")));
        assert_eq!(
            answer.headers.get("www-authenticate").map(http::HeaderValue::as_bytes),
            Some(&b"Bearer"[..])
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_fitting_statuses() {
    let config = ServerConfig { max_message_bytes: 16, max_memory: 1 << 20, ..with_api_key() };
    let server = TestServer::with(config).await;
    let shared = &server;
    let post = |path: &'static str, body: &'static str| async move {
        let answer = api(shared, "POST", path, Some(KEY), Some(body)).await;
        assert!(answer.json["error"].is_string(), "{path} {body}: {}", answer.json);
        answer.status
    };
    let messages = "/api/rooms/ops/messages";
    assert_eq!(post(messages, "{\"from\": \"ci\"").await, 400, "not JSON");
    assert_eq!(post(messages, "{\"from\": \"ci\"}").await, 400, "no text");
    assert_eq!(post(messages, r#"{"from": "ci (api)", "text": "x"}"#).await, 400, "a bad name");
    assert_eq!(post(messages, r#"{"from": "~ci", "text": "x"}"#).await, 400, "a guest's mark");
    assert_eq!(post(messages, r#"{"from": "ci", "text": "  "}"#).await, 400, "blank");
    assert_eq!(post(messages, r#"{"from": "ci", "text": "17 bytes, so long"}"#).await, 413);
    assert_eq!(post("/api/rooms/a%20b/messages", r#"{"from": "ci", "text": "x"}"#).await, 400);
    assert_eq!(post("/api/rooms/api/messages", r#"{"from": "ci", "text": "x"}"#).await, 400);
    assert_eq!(post("/api/rooms//messages", r#"{"from": "ci", "text": "x"}"#).await, 400);
    assert_eq!(post("/api/rooms/ops/members", "").await, 405);
    assert_eq!(post("/api/rooms", "").await, 405);
    assert_eq!(post("/api/nothing", "").await, 404);
    server.stop().await;
}

#[tokio::test]
async fn a_body_over_the_bound_gets_413_before_it_is_sent() {
    let server = TestServer::with(with_api_key()).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let head = format!(
        "POST /api/rooms/ops/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        // A publish's bound: three times the largest message, and 1 KiB.
        3 * chat::server::config::DEFAULT_MAX_MESSAGE_BYTES + 1024 + 1
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await;
    read.expect("an answer in time").expect("read");
    let response = String::from_utf8_lossy(&response);
    assert_eq!(status_of(&response), "413", "{response}");
    assert!(response.contains("\"error\""), "{response}");
    server.stop().await;
}

#[tokio::test]
async fn the_largest_message_fits_in_a_publish_whatever_its_escapes() {
    let server = TestServer::with(with_api_key()).await;
    let largest = chat::server::config::DEFAULT_MAX_MESSAGE_BYTES;
    // Quotes take two bytes each in JSON.
    let (status, body) = publish(&server, "ops", "ci", &"\"".repeat(largest)).await;
    assert_eq!((status, body), (200, json!({"seq": 1})));
    // `é` as Python's json.dumps writes it: 6 bytes for 2.
    let accents = "é".repeat(largest / 2);
    let escaped = json!({"from": "ci", "text": "PLACEHOLDER"})
        .to_string()
        .replace("PLACEHOLDER", &"\\u00e9".repeat(largest / 2));
    let answer = api(&server, "POST", "/api/rooms/ops/messages", Some(KEY), Some(&escaped)).await;
    assert_eq!((answer.status, answer.json), (200, json!({"seq": 2})), "{} bytes", accents.len());
    let (status, body) = publish(&server, "ops", "ci", &"x".repeat(largest + 1)).await;
    assert_eq!(status, 413, "{body}");
    // A sender ending with ':' would read as someone else in the text protocol.
    let (status, body) = publish(&server, "ops", "bob:", "hello").await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn nobody_can_take_the_name_an_api_sender_is_shown_under() {
    let server = TestServer::with(with_api_key()).await;
    let mut ws = connect_json(&server.url("/ops?name=ci%20(api)")).await;
    let refused = next_of(&mut ws, "error").await;
    assert_eq!(refused["code"], "invalid_name", "{refused}");
    let welcome = next_of(&mut ws, "welcome").await;
    assert_ne!(welcome["name"], "ci (api)");
    server.stop().await;
}

#[tokio::test]
async fn one_connection_carries_several_requests() {
    let server = TestServer::with(with_api_key()).await;
    let mut client = HttpClient::connect(server.addr).await;
    let rooms = client.send("GET", "/api/rooms", Some(KEY), None).await;
    assert_eq!(rooms.status, 200);
    let body = json!({ "from": "ci", "text": "one" }).to_string();
    let said = client.send("POST", "/api/rooms/ops/messages", Some(KEY), Some(&body)).await;
    assert_eq!((said.status, &said.json), (200, &json!({ "seq": 1 })));
    let page = client.send("GET", "/api/rooms/ops/messages", Some(KEY), None).await;
    assert_eq!(page.json["messages"][0]["text"], "one");
    // A path that is not the API's, on a connection handed to the API.
    let other = client.send("GET", "/lobby", None, None).await;
    assert_eq!(other.status, 404, "{}", other.json);
    server.stop().await;
}

/// An HS256 token with `claims`, signed with [`SECRET`].
fn token(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("a secret");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("encoded")
}

#[tokio::test]
async fn a_ticket_stands_for_its_token_once_and_needs_no_api_key() {
    let config = ServerConfig { jwt_secret: Some(SECRET.into()), ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let alice = token(&json!({ "sub": "u-1", "name": "alice" }));
    let exchanged = api(&server, "POST", "/api/ticket", Some(&alice), None).await;
    assert_eq!(exchanged.status, 200, "{}", exchanged.json);
    assert_eq!(exchanged.json["name"], "alice");
    let ticket = exchanged.json["ticket"].as_str().expect("a ticket").to_owned();
    assert_eq!(ticket.len(), 32, "128 bits in hex");
    let peer = Peer::join(&server, &format!("/?ticket={ticket}&name=mallory")).await;
    assert_eq!(peer.name, "alice");
    // Used: refused, with the reason.
    let again = upgrade_request(&format!("/?ticket={ticket}"));
    let response = exchange_from([127, 0, 0, 1], server.addr, again.as_bytes()).await;
    assert_eq!(status_of(&response), "401", "{response}");
    assert!(response.ends_with("ticket unknown or used\n"), "{response}");
    let unknown = upgrade_request(&format!("/?ticket={}", "0".repeat(32)));
    let response = exchange_from([127, 0, 0, 1], server.addr, unknown.as_bytes()).await;
    assert_eq!(status_of(&response), "401", "{response}");

    // A bad token is refused at the exchange, with the upgrade's reason.
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "u-1" }),
        &EncodingKey::from_secret(b"another secret").expect("a secret"),
    )
    .expect("encoded");
    let refused = api(&server, "POST", "/api/ticket", Some(&forged), None).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json, json!({ "error": "the token's signature is not valid" }));
    let missing = api(&server, "POST", "/api/ticket", None, None).await;
    assert_eq!(missing.status, 401);
    assert!(missing.json["error"].as_str().is_some_and(|e| e.contains("required")));
    let wrong_method = api(&server, "GET", "/api/ticket", Some(&alice), None).await;
    assert_eq!(wrong_method.status, 405);
    // The rest of the API is not there without --api-key.
    let rooms = api(&server, "GET", "/api/rooms", Some(&alice), None).await;
    assert_eq!(rooms.status, 404);
    server.stop().await;
}

#[tokio::test]
async fn with_redis_a_publish_on_one_node_reaches_the_others_and_is_kept() {
    use crate::redis_nodes::{Node, Redis, join, until};
    let Some(redis) = Redis::start("api_with_redis").await else { return };
    let flags = ["--api-key", KEY];
    let (a, b) = (Node::start_with(&redis, &flags).await, Node::start_with(&redis, &flags).await);
    let (mut bob, _) = join(&b, "/ops?name=bob").await;
    until(&mut bob, |event| event["type"] == "join").await;
    let body = json!({ "from": "ci", "text": "through redis" }).to_string();
    let mut client = HttpClient::connect(a.addr).await;
    let said = client.send("POST", "/api/rooms/ops/messages", Some(KEY), Some(&body)).await;
    assert_eq!(said.status, 200, "{}", said.json);
    let message = until(&mut bob, |event| event["type"] == "message").await;
    assert_eq!((&message["seq"], &message["from"]), (&said.json["seq"], &json!("ci (api)")));
    // A room nobody is in, on any node: kept in Redis for later.
    let body = json!({ "from": "ci", "text": "for later" }).to_string();
    let said = client.send("POST", "/api/rooms/quiet/messages", Some(KEY), Some(&body)).await;
    assert_eq!((said.status, &said.json["seq"]), (200, &json!(1)), "{}", said.json);
    let page = HttpClient::connect(b.addr)
        .await
        .send("GET", "/api/rooms/quiet/messages", Some(KEY), None)
        .await;
    assert_eq!(page.json["messages"][0]["text"], "for later", "{}", page.json);
    let members = client.send("GET", "/api/rooms/ops/members", Some(KEY), None).await;
    assert_eq!(members.json["names"], json!(["bob"]), "asked of Redis, from the other node");
}

#[tokio::test]
async fn an_api_connection_holds_a_connection_slot_of_its_address() {
    let config = ServerConfig { max_connections_per_ip: 1, ..with_api_key() };
    let server = TestServer::with(config).await;
    let mut client = HttpClient::connect(server.addr).await;
    assert_eq!(client.send("GET", "/api/rooms", Some(KEY), None).await.status, 200);
    let request = upgrade_request("/lobby");
    let response = exchange_from([127, 0, 0, 1], server.addr, request.as_bytes()).await;
    assert_eq!(status_of(&response), "429", "{response}");
    // The API connection itself goes on.
    assert_eq!(client.send("GET", "/api/rooms", Some(KEY), None).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn publishes_past_the_api_rate_get_429_with_retry_after() {
    let server = TestServer::with(with_api_key()).await;
    let body = json!({ "from": "ci", "text": "tick" }).to_string();
    // The bucket holds API_PUBLISH_BURST and refills far slower than
    // publishes on loopback come: it runs dry long before this many.
    let most = 20 * chat::server::config::API_PUBLISH_BURST;
    let mut client = HttpClient::connect(server.addr).await;
    let mut refused = None;
    for _ in 0..most {
        let answer = client.send("POST", "/api/rooms/ops/messages", Some(KEY), Some(&body)).await;
        if answer.status != 200 {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("a refusal once the bucket is dry");
    assert_eq!(refused.status, 429, "{}", refused.json);
    assert!(refused.headers.contains_key("retry-after"));
    server.stop().await;
}

/// `POST /api/rooms/{room}/{action}` with `body`.
async fn moderate(server: &TestServer, room: &str, action: &str, body: &Value) -> (u16, Value) {
    let path = format!("/api/rooms/{room}/{action}");
    let answer = api(server, "POST", &path, Some(KEY), Some(&body.to_string())).await;
    (answer.status, answer.json)
}

#[tokio::test]
async fn the_api_kicks_bans_and_mutes_as_a_moderator_does() {
    let server = TestServer::with(with_api_key()).await;
    let mut carol = Peer::named(&server, "carol").await;
    let mut bob = Peer::named(&server, "bob").await;
    carol.expect("* bob joined").await;

    // A mute: bob reads, cannot send; the room is told, without a moderator's name.
    let (status, body) =
        moderate(&server, "lobby", "mute", &json!({"name": "bob", "seconds": 60})).await;
    assert_eq!((status, body), (200, json!({"room": "lobby", "action": "mute", "name": "bob"})));
    carol.expect("* bob was muted for 1m").await;
    bob.expect("* bob was muted for 1m").await;
    bob.send("hello?").await;
    let refused = bob.next().await;
    assert!(refused.starts_with("! you are muted in this room for "), "{refused}");
    let (status, _) = moderate(&server, "lobby", "unmute", &json!({"name": "bob"})).await;
    assert_eq!(status, 200);
    carol.expect("* bob was unmuted").await;

    // A kick closes bob with 4003 and the reason.
    let kick = json!({"name": "bob", "reason": "off topic"});
    assert_eq!(moderate(&server, "lobby", "kick", &kick).await.0, 200);
    carol.expect("* bob was kicked: off topic").await;
    let (code, reason) = bob.closed().await;
    assert_eq!(
        (code, reason.as_str()),
        (chat::protocol::REMOVED_CLOSE_CODE, "bob was kicked: off topic")
    );

    // A ban of bob (gone now: by name) refuses the name; an unban lifts it.
    let ban = json!({"name": "bob", "seconds": 3600, "reason": "spam"});
    assert_eq!(moderate(&server, "lobby", "ban", &ban).await.0, 200);
    carol.wait_for("* bob was banned for 1h: spam").await;
    let refused =
        exchange_from([127, 0, 0, 1], server.addr, upgrade_request("/?name=bob").as_bytes()).await;
    assert_eq!(status_of(&refused), "403", "{refused}");
    assert_eq!(moderate(&server, "lobby", "unban", &json!({"name": "bob"})).await.0, 200);
    let back = Peer::named(&server, "bob").await;
    assert_eq!(back.name, "bob");

    // Mistakes: 404 for nobody there or nothing to lift, 400 for a body
    // that does not fit the action, 405 for another method, 401 without the key.
    let (status, body) = moderate(&server, "lobby", "kick", &json!({"name": "zed"})).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("nobody named")), "{body}");
    assert_eq!(moderate(&server, "lobby", "unmute", &json!({"name": "carol"})).await.0, 404);
    assert_eq!(
        moderate(&server, "lobby", "kick", &json!({"name": "carol", "seconds": 5})).await.0,
        400
    );
    assert_eq!(
        moderate(&server, "lobby", "ban", &json!({"name": "carol", "seconds": 0})).await.0,
        400
    );
    assert_eq!(moderate(&server, "lobby", "ban", &json!({"nom": "carol"})).await.0, 400);
    assert_eq!(moderate(&server, "lobby", "shout", &json!({"name": "carol"})).await.0, 404);
    let get = api(&server, "GET", "/api/rooms/lobby/kick", Some(KEY), None).await;
    assert_eq!(get.status, 405);
    let body = json!({"name": "carol"}).to_string();
    let keyless = api(&server, "POST", "/api/rooms/lobby/kick", None, Some(&body)).await;
    assert_eq!(keyless.status, 401);
    let wrong =
        api(&server, "POST", "/api/rooms/lobby/kick", Some("not the key"), Some(&body)).await;
    assert_eq!(wrong.status, 401);
    // None of which touched carol.
    carol.send("still here").await;
    carol.wait_for("carol: still here").await;
    server.stop().await;
}
