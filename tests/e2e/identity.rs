//! Signed identity (issue 18, first slice): tokens checked against the one
//! configured key, the claims they carry, guests and their mark, one name
//! per person in a room, and connections closed when their token expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chat::protocol::{TOKEN_EXPIRED_CLOSE_CODE, name_key};
use chat::server::config::ServerConfig;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::{PATIENCE, Peer, SERVER, TestServer, command, exchange_from, status_of};

pub(crate) const SECRET: &str = "the signing secret";
pub(crate) const LOOPBACK: [u8; 4] = [127, 0, 0, 1];

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// An HS256 token with `claims`, signed with `secret`.
fn hs256(claims: &Value, secret: &[u8]) -> String {
    let key = EncodingKey::from_secret(secret).expect("a secret");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("encoded")
}

pub(crate) fn token(claims: &Value) -> String {
    hs256(claims, SECRET.as_bytes())
}

pub(crate) fn hs256_server_config() -> ServerConfig {
    ServerConfig { jwt_secret: Some(SECRET.into()), ..ServerConfig::default() }
}

/// An upgrade of `target` presenting `token` as `Authorization: Bearer`.
pub(crate) fn upgrade_with_bearer(target: &str, token: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Authorization: Bearer {token}\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The response to an upgrade of `target` with `token` (none: no header).
pub(crate) async fn answer(server: &TestServer, target: &str, token: Option<&str>) -> String {
    let request = match token {
        Some(token) => upgrade_with_bearer(target, token),
        None => crate::common::upgrade_request(target),
    };
    exchange_from(LOOPBACK, server.addr, request.as_bytes()).await
}

/// The body of a refusal: its one line.
pub(crate) fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body.trim_end())
}

/// A new EC P-256 key pair: (PEM file of the public key, private key PEM).
fn es256_key_pair(label: &str) -> (std::path::PathBuf, String) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    let dir = std::env::temp_dir().join(format!("chat-jwt-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join("public.pem");
    std::fs::write(&path, pair.public_key_pem()).expect("written");
    (path, pair.serialize_pem())
}

#[tokio::test]
async fn an_hs256_token_names_its_holder_and_name_in_the_url_is_ignored() {
    let server = TestServer::with(hs256_server_config()).await;
    let alice = token(&json!({"sub": "u-1", "name": "alice"}));
    let peer = Peer::join(&server, &format!("/?token={alice}&name=mallory")).await;
    assert_eq!(peer.name, "alice");
    let response = answer(&server, "/", Some(&alice)).await;
    assert_eq!(status_of(&response), "101", "{response}");
    // Without `name`, the name is `sub`.
    let bob = Peer::join(&server, &format!("/?token={}", token(&json!({"sub": "bob"})))).await;
    assert_eq!(bob.name, "bob");
    // An `exp` past what clocks count is taken as never.
    let far = token(&json!({"sub": "carol", "exp": u64::MAX}));
    let mut carol = Peer::join(&server, &format!("/?token={far}")).await;
    carol.send("/who").await;
    carol.expect("* 3 in lobby: alice, bob, carol").await;
    server.stop().await;
}

#[tokio::test]
async fn an_es256_token_made_with_a_key_made_now_is_accepted() {
    let (public, private) = es256_key_pair("es256");
    let key = chat::server::identity::parse_public_key(public.to_str().expect("UTF-8 path"))
        .expect("an EC public key");
    let config = ServerConfig { jwt_public_key: Some(key), ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let signing = EncodingKey::from_ec_pem(private.as_bytes()).expect("an EC private key");
    let claims = json!({"sub": "carol", "exp": unix_now() + 600});
    let carol =
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &signing).expect("encoded");
    let response = answer(&server, "/", Some(&carol)).await;
    assert_eq!(status_of(&response), "101", "{response}");

    // The public key used as an HS256 secret: the algorithm is pinned.
    let pem = std::fs::read(&public).expect("read");
    let forged = hs256(&claims, &pem);
    let response = answer(&server, "/", Some(&forged)).await;
    assert_eq!(status_of(&response), "401", "{response}");
    assert!(body(&response).contains("algorithm"), "{response}");
    server.stop().await;
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_one_line_reason() {
    let config = ServerConfig { jwt_leeway: Duration::ZERO, ..hs256_server_config() };
    let server = TestServer::with(config).await;
    let claims = URL_SAFE_NO_PAD.encode(json!({"sub": "alice"}).to_string());
    let unsigned = format!("{}.{claims}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#));
    let cases = [
        (Some(unsigned), "algorithm"),
        (Some(token(&json!({"sub": "alice", "exp": unix_now() - 120}))), "expired"),
        (Some(hs256(&json!({"sub": "alice"}), b"another secret")), "signature"),
        (Some(token(&json!({"name": "alice"}))), "sub"),
        (Some(token(&json!({"sub": ""}))), "sub is empty"),
        (Some(token(&json!({"sub": "a b"}))), "not usable"),
        (Some(token(&json!({"sub": "u", "name": "~alice"}))), "not usable"),
        (Some("not.a.token".into()), "not valid"),
        (Some("garbage".into()), "not valid: a JWT is three base64url parts"),
        (None, "required"),
    ];
    for (presented, reason) in cases {
        let response = answer(&server, "/", presented.as_deref()).await;
        assert_eq!(status_of(&response), "401", "{presented:?}: {response}");
        let body = body(&response);
        assert!(body.contains(reason), "{presented:?}: {body}");
        assert!(!body.contains('\n'), "one line: {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn failed_token_checks_count_for_the_address_throttle() {
    let config = ServerConfig { auth_failures_per_ip: 2, ..hs256_server_config() };
    let server = TestServer::with(config).await;
    let forged = hs256(&json!({"sub": "alice"}), b"a guess");
    for _ in 0..2 {
        assert_eq!(status_of(&answer(&server, "/", Some(&forged)).await), "401");
    }
    // Past its failures, the address is not heard, a good token neither.
    let good = token(&json!({"sub": "alice"}));
    assert_eq!(status_of(&answer(&server, "/", Some(&good)).await), "429");
    server.stop().await;
}

#[tokio::test]
async fn a_token_for_room_a_is_refused_on_room_b_with_403() {
    let server = TestServer::with(hs256_server_config()).await;
    let only_a = token(&json!({"sub": "alice", "rooms": ["a"]}));
    assert_eq!(status_of(&answer(&server, "/a", Some(&only_a)).await), "101");
    let response = answer(&server, "/b", Some(&only_a)).await;
    assert_eq!(status_of(&response), "403", "{response}");
    assert!(body(&response).contains("\"b\""), "{response}");
    let all = token(&json!({"sub": "alice", "rooms": "*"}));
    assert_eq!(status_of(&answer(&server, "/b", Some(&all)).await), "101");
    // Counted as what it is, not as a foreign origin.
    let metrics =
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {all}\r\n\r\n");
    let metrics = exchange_from(LOOPBACK, server.addr, metrics.as_bytes()).await;
    assert!(metrics.contains("chat_refused_total{reason=\"room_forbidden\"} 1"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn guests_are_marked_and_never_look_like_a_token_holder() {
    let config = ServerConfig { guests: true, ..hs256_server_config() };
    let server = TestServer::with(config).await;
    let mut alice =
        Peer::join(&server, &format!("/?token={}", token(&json!({"sub": "alice"})))).await;
    for tried in ["alice", "Alice", "%D0%B0lice", "%EF%BD%81lice"] {
        let guest = Peer::join(&server, &format!("/?name={tried}")).await;
        assert!(guest.name.starts_with('~'), "{}", guest.name);
        assert_ne!(name_key(&guest.name), name_key("alice"), "{}", guest.name);
        alice.wait_for(&format!("* {} joined", guest.name)).await;
    }
    // Asking with the mark gets it once; the mark inside a name is refused,
    // and the guest gets its marked address.
    let eve = Peer::join(&server, "/?name=~eve").await;
    assert_eq!(eve.name, "~eve");
    let mut ws = crate::common::connect(&server.url("/?name=~~alice")).await;
    let refusal = crate::common::next_text(&mut ws).await;
    assert!(refusal.starts_with("! invalid name \"~alice\""), "{refusal}");
    let welcome = crate::common::next_text(&mut ws).await;
    let name = chat::protocol::parse_welcome(&welcome).expect("a welcome").to_owned();
    assert!(name.starts_with("~127.0.0.1:"), "{name}");
    let mut guest = Peer { ws, name };
    guest.wait_for(&format!("* {} joined", guest.name)).await;
    // A guest's new name is marked too.
    guest.send("/nick zed").await;
    guest.wait_for(&format!("* {} is now ~zed", guest.name)).await;
    guest.name = "~zed".into();
    guest.send("/nick ~ann").await;
    guest.wait_for("* ~zed is now ~ann").await;
    server.stop().await;
}

#[tokio::test]
async fn with_guests_credentials_that_are_no_bearer_token_are_refused_not_taken_for_a_guest() {
    let server = TestServer::with(ServerConfig { guests: true, ..hs256_server_config() }).await;
    for authorization in ["Basic YWxpY2U6cHc=", "Bearer", "Bearer   "] {
        let request = format!(
            "GET /?name=alice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Authorization: {authorization}\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let response = exchange_from(LOOPBACK, server.addr, request.as_bytes()).await;
        assert_eq!(status_of(&response), "401", "{authorization}: {response}");
        assert!(body(&response).contains("no bearer token"), "{response}");
    }
    server.stop().await;
}

#[tokio::test]
async fn without_guests_a_request_without_token_is_refused() {
    let server = TestServer::with(hs256_server_config()).await;
    let response = answer(&server, "/?name=alice", None).await;
    assert_eq!(status_of(&response), "401", "{response}");
    server.stop().await;
}

#[tokio::test]
async fn a_token_holder_cannot_change_its_name() {
    let server = TestServer::with(hs256_server_config()).await;
    let mut alice =
        Peer::join(&server, &format!("/?token={}", token(&json!({"sub": "alice"})))).await;
    alice.send("/nick bob").await;
    alice.expect("! your name comes from your token: it cannot be changed").await;
    alice.send("/who").await;
    alice.expect("* 1 in lobby: alice").await;
    server.stop().await;
}

#[tokio::test]
async fn the_same_sub_may_connect_twice_under_its_name() {
    let server = TestServer::with(hs256_server_config()).await;
    let path = format!("/?token={}", token(&json!({"sub": "u-1", "name": "alice"})));
    let mut laptop = Peer::join(&server, &path).await;
    let mut phone = Peer::join(&server, &path).await;
    assert_eq!((laptop.name.as_str(), phone.name.as_str()), ("alice", "alice"));
    laptop.expect("* alice joined").await;
    phone.send("from the phone").await;
    laptop.expect("alice: from the phone").await;
    phone.expect("alice: from the phone").await;

    // The first connection gone, the name is still the person's.
    laptop.close().await;
    phone.expect("* alice left").await;
    let other = token(&json!({"sub": "u-2", "name": "Alice"}));
    assert_eq!(status_of(&answer(&server, "/", Some(&other)).await), "409");
    // And a third connection of the same person comes in.
    let third = Peer::join(&server, &path).await;
    assert_eq!(third.name, "alice");
    server.stop().await;
}

#[tokio::test]
async fn two_subs_with_look_alike_names_cannot_share_a_room() {
    let server = TestServer::with(hs256_server_config()).await;
    let first = token(&json!({"sub": "u-1", "name": "alice"}));
    let _alice = Peer::join(&server, &format!("/?token={first}")).await;
    let second = token(&json!({"sub": "u-2", "name": "\u{430}lice"}));
    let response = answer(&server, "/", Some(&second)).await;
    assert_eq!(status_of(&response), "409", "{response}");
    assert!(body(&response).contains("looks like someone else's"), "{response}");
    // Another room is another matter.
    assert_eq!(status_of(&answer(&server, "/elsewhere", Some(&second)).await), "101");
    server.stop().await;
}

#[tokio::test]
async fn a_connection_is_closed_when_its_token_expires() {
    let config = ServerConfig { jwt_leeway: Duration::ZERO, ..hs256_server_config() };
    let server = TestServer::with(config).await;
    let short = token(&json!({"sub": "alice", "exp": unix_now() + 2}));
    let mut alice = Peer::join(&server, &format!("/?token={short}")).await;
    // `closed` waits for the Close frame itself, within PATIENCE.
    let (code, reason) = alice.closed().await;
    assert_eq!((code, reason.as_str()), (TOKEN_EXPIRED_CLOSE_CODE, "token expired"));
    assert!(PATIENCE > Duration::from_secs(3));
    server.stop().await;
}

/// What the server binary says when it refuses `args` at start.
async fn refusal_at_start(args: &[&str]) -> String {
    let child = command(SERVER, args).spawn().expect("spawn");
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("in time")
        .expect("wait");
    assert_ne!(output.status.code(), Some(0), "{args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_jwt_key_with_the_shared_token_is_refused_at_start() {
    assert_eq!(
        refusal_at_start(&["--port", "0", "--token", "a", "--jwt-secret", "b"]).await,
        "error: --token cannot be used with --jwt-secret or --jwt-public-key\n"
    );
    assert_eq!(
        refusal_at_start(&["--port", "0", "--guests"]).await,
        "error: --guests needs --jwt-secret or --jwt-public-key\n"
    );
    assert_eq!(
        refusal_at_start(&["--port", "0", "--jwt-secret", "b", "--redis", "redis://127.0.0.1:1"])
            .await,
        "error: --jwt-secret and --jwt-public-key do not work with --redis yet\n"
    );
}

#[tokio::test]
async fn the_page_is_served_without_a_token_which_may_come_as_a_subprotocol() {
    let server = TestServer::with(hs256_server_config()).await;
    let page = "GET /garden HTTP/1.1\r\nHost: x\r\n\r\n";
    let response = exchange_from(LOOPBACK, server.addr, page.as_bytes()).await;
    assert_eq!(status_of(&response), "200", "{response}");
    assert!(response.contains("text/html"), "{response}");
    // The page offers the token beside the JSON subprotocol, which is chosen.
    let ida = token(&json!({"sub": "ida"}));
    let upgrade = crate::common::upgrade_request("/garden").replace(
        "\r\n\r\n",
        &format!("\r\nSec-WebSocket-Protocol: chat.v1.json, chat.token.{ida}\r\n\r\n"),
    );
    let response = exchange_from(LOOPBACK, server.addr, upgrade.as_bytes()).await;
    assert_eq!(status_of(&response), "101", "{response}");
    assert!(
        response.to_ascii_lowercase().contains("sec-websocket-protocol: chat.v1.json\r\n"),
        "{response}"
    );
    server.stop().await;
}
