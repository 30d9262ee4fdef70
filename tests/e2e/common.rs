//! Shared by the end-to-end tests: a server on a free loopback port, run
//! in-process, and a WebSocket peer with helpers that wait for what they expect.

use std::net::SocketAddr;
use std::time::Duration;

use chat::server::config::ServerConfig;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

/// A valid WebSocket upgrade request for `target` (a path and query), as a
/// raw client sends it.
pub fn upgrade_request(target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Safety net for anything a test waits on; never a synchronization tool.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(ServerConfig::default()).await
    }

    pub async fn with(config: ServerConfig) -> Self {
        Self::with_tls(config, None).await
    }

    pub async fn with_tls(config: ServerConfig, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let backend = chat::server::Backend::open(&config).expect("the store opens");
        let task = tokio::spawn(chat::server::run(listener, config, tls, backend, async {
            let _ = stopped.await;
        }));
        Self { addr, stop: Some(stop), task }
    }

    /// The URL of a room path such as `/` or `/rust?name=bob`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Tells the server to shut down, without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts the server down and waits until `run` has returned.
    pub async fn stop(mut self) {
        self.begin_stop();
        timeout(PATIENCE, &mut self.task)
            .await
            .expect("server::run returns after shutdown")
            .expect("server task did not panic");
    }
}

/// A client socket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw WebSocket client, speaking the text protocol.
pub struct Peer {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub name: String,
}

impl Peer {
    /// Connects to `path` and reads the welcome and its own join notice.
    pub async fn join(server: &TestServer, path: &str) -> Self {
        let mut ws = connect(&server.url(path)).await;
        let welcome = next_text(&mut ws).await;
        let name = chat::protocol::parse_welcome(&welcome)
            .unwrap_or_else(|| panic!("expected a welcome, got {welcome:?}"))
            .to_owned();
        let mut peer = Self { ws, name };
        // The room's history, if any, comes before the join notice.
        let mut line = peer.next().await;
        if line.ends_with(" earlier messages") || line.ends_with(" earlier message") {
            while line != "* end of history" {
                line = peer.next().await;
            }
            line = peer.next().await;
        }
        assert_eq!(line, format!("* {} joined", peer.name));
        peer
    }

    /// Joins `/?name=NAME` and checks the name was granted.
    pub async fn named(server: &TestServer, name: &str) -> Self {
        let peer = Self::join(server, &format!("/?name={name}")).await;
        assert_eq!(peer.name, name);
        peer
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.expect("send");
    }

    /// Sends a normal Close frame; the server's answer can still be read.
    pub async fn close(&mut self) {
        let close = Message::close(Some(tokio_websockets::CloseCode::NORMAL_CLOSURE), "bye");
        self.ws.send(close).await.expect("send close");
    }

    pub async fn next(&mut self) -> String {
        next_text(&mut self.ws).await
    }

    /// The next frame must be exactly `line`.
    pub async fn expect(&mut self, line: &str) {
        let got = self.next().await;
        assert_eq!(got, line, "{} expected {line:?}", self.name);
    }

    /// Skips frames until one equals `line`.
    pub async fn wait_for(&mut self, line: &str) {
        loop {
            if self.next().await == line {
                return;
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        closed(&mut self.ws).await
    }
}

/// Reads until the server closes; returns the close code and reason.
pub async fn closed(ws: &mut Socket) -> (u16, String) {
    loop {
        let frame = timeout(PATIENCE, ws.next())
            .await
            .expect("a Close frame in time")
            .expect("a Close frame before the end of the stream")
            .expect("a frame, not an error");
        if let Some((code, reason)) = frame.as_close() {
            return (code.into(), reason.to_owned());
        }
    }
}

/// The next JSON event of type `kind`, skipping others.
pub async fn next_of<S>(ws: &mut S, kind: &str) -> serde_json::Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_websockets::Error>> + Unpin,
{
    loop {
        let event = next_json(ws).await;
        if event["type"] == kind {
            return event;
        }
    }
}

pub async fn connect(url: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let builder = ClientBuilder::new().uri(url).expect("valid url");
    let (ws, _) =
        timeout(PATIENCE, builder.connect()).await.expect("connect in time").expect("connect");
    ws
}

/// The next text frame, past pings and pongs (which tokio-websockets answers);
/// panics on anything else.
pub async fn next_text<S>(ws: &mut S) -> String
where
    S: futures_util::Stream<Item = Result<Message, tokio_websockets::Error>> + Unpin,
{
    let frame = next_frame(ws).await;
    frame.as_text().unwrap_or_else(|| panic!("expected a text frame, got {frame:?}")).to_owned()
}

/// The next frame other than a ping or pong.
pub async fn next_frame<S>(ws: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, tokio_websockets::Error>> + Unpin,
{
    loop {
        let frame = timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
            .expect("a frame, not the end")
            .expect("a frame, not an error");
        if !frame.is_ping() && !frame.is_pong() {
            return frame;
        }
    }
}

/// Connects asking for the JSON subprotocol, and checks the server agreed.
pub async fn connect_json(url: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let builder = ClientBuilder::new()
        .uri(url)
        .expect("valid url")
        .add_header(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(chat::protocol::JSON_PROTOCOL),
        )
        .expect("allowed header");
    let (ws, response) =
        timeout(PATIENCE, builder.connect()).await.expect("connect in time").expect("connect");
    assert_eq!(
        response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .map(http::HeaderValue::as_bytes),
        Some(chat::protocol::JSON_PROTOCOL.as_bytes())
    );
    ws
}

/// The next JSON event, past pings and pongs.
pub async fn next_json<S>(ws: &mut S) -> serde_json::Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_websockets::Error>> + Unpin,
{
    let text = next_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text:?}"))
}

/// A TCP relay between clients and a server whose connections can all be cut
/// at once, as a dropped network would: the server sees them reset, not closed.
pub struct Proxy {
    pub addr: SocketAddr,
    upstream: std::sync::Arc<std::sync::Mutex<SocketAddr>>,
    cut: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let upstream = std::sync::Arc::new(std::sync::Mutex::new(upstream));
        let target = upstream.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                let upstream = *target.lock().expect("upstream");
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {
                            // Reset both sides rather than closing them cleanly.
                            let _ = client.set_zero_linger();
                            let _ = server.set_zero_linger();
                        }
                    }
                });
            }
        });
        Self { addr, upstream, cut, task }
    }

    /// Relays new connections to `upstream` from now on: a restarted server
    /// need not win its old port back.
    pub fn redirect(&self, upstream: SocketAddr) {
        *self.upstream.lock().expect("upstream") = upstream;
    }

    /// Resets every connection relayed so far; new ones are relayed again.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The built binaries.
pub const CLIENT: &str = env!("CARGO_BIN_EXE_client");
pub const SERVER: &str = env!("CARGO_BIN_EXE_server");

/// A binary with piped stdio and none of the settings' environment twins.
pub fn command(program: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command.args(args);
    for var in [
        "CHAT_URL",
        "CHAT_NAME",
        "CHAT_PORT",
        "CHAT_HOST",
        "CHAT_TOKEN",
        "CHAT_JWT_SECRET",
        "CHAT_JWT_PUBLIC_KEY",
        "CHAT_JWT_LEEWAY",
        "CHAT_GUESTS",
        "CHAT_CA_CERT",
        "CHAT_RETRIES",
        "CHAT_TLS_CERT",
        "CHAT_TLS_KEY",
        "CHAT_REDIS_URL",
        "CHAT_LINGER",
        "CHAT_JSON",
        "CHAT_QUIET",
        "CHAT_NO_CLOSE",
        "CHAT_INSECURE",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    // Spawned servers keep nothing on disk unless a test names a --db.
    command.env("CHAT_DB", ":memory:");
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs a program to the end with `input` on stdin: (exit code, stdout, stderr).
pub async fn run(program: &str, args: &[&str], input: &str) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = command(program, args).spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).await.expect("write stdin");
    drop(stdin);
    let output =
        timeout(PATIENCE, child.wait_with_output()).await.expect("exits in time").expect("wait");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8 output");
    (output.status.code().expect("an exit code"), text(output.stdout), text(output.stderr))
}

/// A self-signed certificate for localhost and 127.0.0.1, made now, as PEM
/// files in a fresh directory: (cert path, key path, cert DER).
pub fn self_signed_certificate() -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).expect("certificate");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("chat-cert-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, signing_key.serialize_pem()).expect("write key");
    (cert_path, key_path, cert.der().to_vec())
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.2
/// and up stand for other clients' addresses).
pub async fn tcp_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    if from == [127, 0, 0, 1] {
        return timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .expect("in time")
            .expect("connect");
    }
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((from, 0))).expect("bind the client's address");
    timeout(PATIENCE, socket.connect(addr)).await.expect("connect in time").expect("connect")
}

/// Sends `request` from `from` and returns the response: read until the
/// server closes, or, for an upgrade (101), its head only.
pub async fn exchange_from(from: [u8; 4], addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tcp_from(from, addr).await;
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            // A reset after the answer still leaves the answer read.
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
            let head_done = response.windows(4).any(|w| w == b"\r\n\r\n");
            if head_done && response.starts_with(b"HTTP/1.1 101") {
                return;
            }
        }
    };
    timeout(PATIENCE, read).await.expect("an answer in time");
    String::from_utf8_lossy(&response).into_owned()
}

/// Joins `path` from `from`, reading the welcome and the join notice.
pub async fn join_from(from: [u8; 4], server: &TestServer, path: &str) -> Peer {
    let stream = tcp_from(from, server.addr).await;
    let builder = ClientBuilder::new().uri(&server.url(path)).expect("valid url");
    let (ws, _) = timeout(PATIENCE, builder.connect_on(MaybeTlsStream::Plain(stream)))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    let mut peer = Peer { ws, name: String::new() };
    let welcome = peer.next().await;
    peer.name = chat::protocol::parse_welcome(&welcome)
        .unwrap_or_else(|| panic!("expected a welcome, got {welcome:?}"))
        .to_owned();
    peer.wait_for(&format!("* {} joined", peer.name)).await;
    peer
}

/// The status code of a raw response ("101", "429"...), or the response
/// itself when it has none.
pub fn status_of(response: &str) -> &str {
    response.get(9..12).unwrap_or(response)
}

/// An HTTP/1.1 connection for the HTTP API (hyper's client): its requests
/// go one after another on the same connection.
pub struct HttpClient {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
}

/// An API answer: its status, headers and JSON body.
pub struct ApiAnswer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub json: serde_json::Value,
}

impl HttpClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let io = hyper_util::rt::TokioIo::new(stream);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(io).await.expect("an HTTP/1.1 connection");
        tokio::spawn(connection);
        Self { sender }
    }

    /// Sends `method path`, with `Authorization: Bearer KEY` and a body if
    /// given, and reads the JSON answer.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&str>,
    ) -> ApiAnswer {
        use http_body_util::BodyExt as _;
        let mut request = http::Request::builder().method(method).uri(path).header("host", "x");
        if let Some(bearer) = bearer {
            request = request.header("authorization", format!("Bearer {bearer}"));
        }
        let body = bytes::Bytes::from(body.unwrap_or_default().to_owned());
        let request = request.body(http_body_util::Full::new(body)).expect("a request");
        let exchange = async {
            self.sender.ready().await.expect("the connection takes a request");
            let response = self.sender.send_request(request).await.expect("an answer");
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.expect("the body").to_bytes();
            let json = serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                panic!("JSON, not {:?}: {error}", String::from_utf8_lossy(&bytes))
            });
            ApiAnswer { status: parts.status.as_u16(), headers: parts.headers, json }
        };
        timeout(PATIENCE, exchange).await.expect("an answer in time")
    }
}

/// One API request on a connection of its own.
pub async fn api(
    server: &TestServer,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> ApiAnswer {
    HttpClient::connect(server.addr).await.send(method, path, bearer, body).await
}
