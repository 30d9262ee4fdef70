//! Connecting, end to end with the real `client` binary: what a refusal
//! says (the server's own words, and when to come back), which failures are
//! retried, and TLS failures that name their fix.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::common::{self, CLIENT, PATIENCE, TestServer, command, run};
use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How a scripted server answers one connection.
#[derive(Clone)]
enum Reply {
    /// A correct 101 for chat.v1.json, these bytes in the same write, then
    /// the end of the connection.
    Upgrade(Vec<u8>),
    /// These bytes, then the end of the connection.
    Raw(Vec<u8>),
}

/// A fake server: each connection gets the next reply (the last one
/// repeats), after its request head is read and kept.
struct Scripted {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Scripted {
    async fn start(replies: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            for n in 0.. {
                let Ok((stream, _)) = listener.accept().await else { return };
                let reply = replies[n.min(replies.len() - 1)].clone();
                let mut stream = BufReader::new(stream);
                let mut head = String::new();
                while !head.ends_with("\r\n\r\n") {
                    match stream.read_line(&mut head).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let bytes = match reply {
                    Reply::Upgrade(then) => {
                        let mut bytes = upgraded(&head).into_bytes();
                        bytes.extend_from_slice(&then);
                        bytes
                    }
                    Reply::Raw(bytes) => bytes,
                };
                seen.lock().expect("requests").push(head);
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
            }
        });
        Self { addr, requests, task }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The 101 a server answers to `request`, choosing chat.v1.json.
fn upgraded(request: &str) -> String {
    let key = request
        .lines()
        .find_map(|line| line.strip_prefix("Sec-WebSocket-Key: "))
        .expect("a key in the request");
    let digest = sha1_smol::Sha1::from(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11"));
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.digest().bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: chat.v1.json\r\n\r\n"
    )
}

/// A server's unmasked text frame (short payloads only).
fn text_frame(text: &str) -> Vec<u8> {
    let mut frame = vec![0x81, u8::try_from(text.len()).expect("short")];
    frame.extend_from_slice(text.as_bytes());
    frame
}

fn refusal(status: &str, extra: &str, body: &str) -> Reply {
    Reply::Raw(
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// Runs the client against a server that upgrades once and then drops the
/// connection, so that the client reconnects into `then`: returns its exit
/// code, stderr, and how many connections the server saw.
async fn reconnect_into(then: Reply, retries: &str) -> (i32, String, usize) {
    let server = Scripted::start(vec![Reply::Upgrade(Vec::new()), then]).await;
    let url = server.url("/");
    let mut child = command(CLIENT, &[&url, "--retries", retries]).spawn().expect("spawn");
    // Stdin stays open: the client ends only by giving up.
    let _stdin = child.stdin.take();
    let output =
        timeout(PATIENCE, child.wait_with_output()).await.expect("exits in time").expect("wait");
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    (output.status.code().expect("an exit code"), stderr, server.requests().len())
}

#[tokio::test]
async fn a_refusal_quotes_the_first_line_of_the_servers_body() {
    let server = Scripted::start(vec![refusal(
        "403 Forbidden",
        "",
        "\r\nnot from your address\r\nsecond line\r\n",
    )])
    .await;
    let url = server.url("/rust");
    let (code, stdout, stderr) = run(CLIENT, &[&url], "hi\n").await;
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(
        stderr,
        format!(
            "error: cannot connect to {url}: the server refused the upgrade with HTTP 403: \
             not from your address\n"
        )
    );

    // Control characters in the body cannot drive the terminal.
    let server = Scripted::start(vec![refusal("404 Not Found", "", "\x1b[2Jgone")]).await;
    let url = server.url("/");
    let (_, _, stderr) = run(CLIENT, &[&url], "").await;
    assert!(stderr.ends_with("HTTP 404: \\u{1b}[2Jgone\n"), "{stderr}");
}

#[tokio::test]
async fn a_full_or_rate_limiting_server_says_when_to_come_back() {
    for status in ["503 Service Unavailable", "429 Too Many Requests"] {
        let code = &status[..3];
        let server = Scripted::start(vec![refusal(status, "Retry-After: 1\r\n", "busy\n")]).await;
        let url = server.url("/");
        let (exit, _, stderr) = run(CLIENT, &[&url], "").await;
        assert_eq!(exit, 1);
        assert_eq!(
            stderr,
            format!(
                "error: cannot connect to {url}: the server refused the upgrade with \
                 HTTP {code}: busy (retry after 1 s)\n"
            )
        );
    }
}

#[tokio::test]
async fn busy_servers_are_retried_and_refusals_for_good_are_not() {
    let busy = refusal("503 Service Unavailable", "Retry-After: 1\r\n", "restarting\n");
    let (code, stderr, connections) = reconnect_into(busy, "2").await;
    assert_eq!(code, 1, "{stderr}");
    // The upgrade, then two tries that met the 503.
    assert_eq!(connections, 3, "{stderr}");
    assert!(stderr.trim_end().ends_with("HTTP 503: restarting (retry after 1 s)"), "{stderr}");

    let slow_down = refusal("429 Too Many Requests", "", "slow down\n");
    let (code, stderr, connections) = reconnect_into(slow_down, "1").await;
    assert_eq!((code, connections), (1, 2), "{stderr}");
    assert!(stderr.trim_end().ends_with("HTTP 429: slow down"), "{stderr}");

    let gone = refusal("404 Not Found", "", "no such room\n");
    let (code, stderr, connections) = reconnect_into(gone, "2").await;
    assert_eq!(code, 1, "{stderr}");
    // Given up at the first 404.
    assert_eq!(connections, 2, "{stderr}");
    assert!(stderr.trim_end().ends_with("HTTP 404: no such room"), "{stderr}");
}

#[tokio::test]
async fn the_request_names_the_protocol_and_token_and_the_welcome_after_101_is_kept() {
    let welcome =
        r#"{"type":"welcome","room":"lobby","name":"bob","online":1,"epoch":"e","seq":0}"#;
    let server = Scripted::start(vec![Reply::Upgrade(text_frame(welcome))]).await;
    let url = server.url("/rust?x=1");
    let args = [url.as_str(), "--name", "bob", "--token", "s3cret", "--retries", "0"];
    let (_, stdout, stderr) = run(CLIENT, &args, "").await;
    // Sent in the same write as the 101, and printed.
    assert_eq!(
        stdout, "* you are bob in room lobby, 1 online; /help lists the commands\n",
        "{stderr}"
    );
    let requests = server.requests();
    let request = &requests[0];
    assert!(request.starts_with("GET /rust?x=1&name=bob HTTP/1.1\r\n"), "{request}");
    for line in [
        format!("Host: {}", server.addr),
        "Upgrade: websocket".into(),
        "Connection: Upgrade".into(),
        "Sec-WebSocket-Version: 13".into(),
        "Sec-WebSocket-Protocol: chat.v1.json".into(),
        "Authorization: Bearer s3cret".into(),
    ] {
        assert!(request.lines().any(|l| l == line), "{line:?} in {request}");
    }
    let key = request.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).expect("key");
    let nonce = base64::engine::general_purpose::STANDARD.decode(key).expect("base64");
    assert_eq!(nonce.len(), 16);
}

#[tokio::test]
async fn a_wrong_accept_or_an_endless_head_fails_in_one_line() {
    let wrong = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\
                 Sec-WebSocket-Protocol: chat.v1.json\r\n\r\n";
    let server = Scripted::start(vec![Reply::Raw(wrong.into())]).await;
    let url = server.url("/");
    let (code, _, stderr) = run(CLIENT, &[&url], "").await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!(
            "error: cannot connect to {url}: the server's upgrade response is invalid: \
             the wrong Sec-WebSocket-Accept\n"
        )
    );

    let mut endless = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
    endless.extend(b"X-Padding: 0123456789\r\n".repeat(1000));
    let server = Scripted::start(vec![Reply::Raw(endless)]).await;
    let url = server.url("/");
    let (code, _, stderr) = run(CLIENT, &[&url], "").await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!("error: cannot connect to {url}: the server's response head is over 16384 bytes\n")
    );
}

#[tokio::test]
async fn localhost_is_resolved_to_the_server_on_127_0_0_1() {
    let server = TestServer::start().await;
    let url = format!("ws://localhost:{}/", server.addr.port());
    let (code, stdout, stderr) = run(CLIENT, &[&url, "--name", "lou"], "by name\n").await;
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert!(stdout.ends_with("* lou joined\nlou: by name\n"), "{stdout}");
    server.stop().await;
}

#[tokio::test]
async fn wss_to_a_plain_server_says_it_does_not_speak_tls() {
    let server = TestServer::start().await;
    let url = format!("wss://127.0.0.1:{}/", server.addr.port());
    let (code, _, stderr) = run(CLIENT, &[&url], "").await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!("error: cannot connect to {url}: the server does not speak TLS: try ws://\n")
    );
    server.stop().await;
}

#[tokio::test]
async fn an_untrusted_certificate_names_ca_cert_and_insecure_skips_the_check() {
    let (cert, key, _) = common::self_signed_certificate();
    let acceptor = chat::tls::acceptor(&cert, &key).expect("acceptor");
    let server =
        TestServer::with_tls(chat::server::config::ServerConfig::default(), Some(acceptor)).await;
    let url = format!("wss://localhost:{}/", server.addr.port());

    let (code, stdout, stderr) = run(CLIENT, &[&url, "--name", "eve"], "hi\n").await;
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(
        stderr,
        format!(
            "error: cannot connect to {url}: the server's certificate is not trusted \
             (UnknownIssuer): pass its CA with --ca-cert, or -k to skip the check\n"
        )
    );

    for flag in ["-k", "--insecure"] {
        let (code, stdout, stderr) = run(CLIENT, &[&url, "--name", "kim", flag], "hi\n").await;
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stderr, "warning: --insecure: the server's certificate is not checked\n");
        assert!(stdout.ends_with("* kim joined\nkim: hi\n"), "{stdout}");
    }

    // Plain WebSocket to the TLS port: the answer is a TLS alert, not HTTP.
    let plain = format!("ws://127.0.0.1:{}/", server.addr.port());
    let (code, _, stderr) = run(CLIENT, &[&plain], "").await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!("error: cannot connect to {plain}: the server speaks TLS: try wss://\n")
    );

    server.stop().await;
    let _ = std::fs::remove_dir_all(cert.parent().expect("dir"));
}
