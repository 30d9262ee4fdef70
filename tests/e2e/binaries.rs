//! The built `client` and `server` binaries, end to end: output, exit codes
//! and one-line errors.

use crate::common::{self, CLIENT, PATIENCE, Peer, Proxy, SERVER, TestServer, command, run};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// Reads one line of a child's stdout.
async fn line(reader: &mut BufReader<tokio::process::ChildStdout>) -> String {
    let mut line = String::new();
    timeout(PATIENCE, reader.read_line(&mut line)).await.expect("a line in time").expect("read");
    line.trim_end_matches('\n').to_owned()
}

#[tokio::test]
async fn client_in_a_pipe_prints_the_relayed_line_and_exits_0() {
    let server = TestServer::start().await;
    let url = server.url("/");
    let (code, stdout, stderr) =
        run(CLIENT, &[&url, "--name", "bob"], "hi\n\nsecond line\r\n").await;
    assert_eq!(
        stdout,
        "* you are bob in room lobby, 1 online; /help lists the commands\n* bob joined\nbob: hi\nbob: second line\n"
    );
    assert_eq!(stderr, "");
    assert_eq!(code, 0);
    server.stop().await;
}

#[tokio::test]
async fn client_against_a_closed_port_exits_1_with_one_line() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let url = format!("ws://127.0.0.1:{port}/");
    let (code, stdout, stderr) = run(CLIENT, &[&url], "").await;
    assert_eq!(code, 1);
    assert_eq!(stdout, "");
    assert_eq!(stderr, format!("error: cannot connect to {url}: connection refused\n"));
}

#[tokio::test]
async fn client_reports_a_refused_upgrade_and_a_malformed_url_in_one_line() {
    let server = TestServer::start().await;
    let url = server.url("/no/such/room");
    let (code, _, stderr) = run(CLIENT, &[&url], "").await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!(
            "error: cannot connect to {url}: the server refused the upgrade with HTTP 404: \
             no such room \"/no/such/room\": room names use only letters, digits, '-', '_' and '.'\n"
        )
    );

    let (code, _, stderr) = run(CLIENT, &["http://example.com/"], "").await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "error: invalid URL \"http://example.com/\": the URL must start with ws:// or wss:// (ws://HOST:PORT/ROOM)\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn client_escapes_bidi_controls_keeps_one_line_and_reports_the_server_closing() {
    let mut server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let url = server.url("/?name=bob");
    let mut child: Child = command(CLIENT, &[&url, "--retries", "0"]).spawn().expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    assert!(line(&mut stdout).await.starts_with("* you are bob in room lobby"));
    assert_eq!(line(&mut stdout).await, "* bob joined");
    alice.expect("* bob joined").await;

    // The server refuses control characters; what remains to disguise text
    // (bidirectional controls) is escaped, and a line break stays in the line.
    alice.send("\u{202E}olleh\u{2066}x\nfake: line 👨\u{200d}👩\u{200d}👧").await;
    assert_eq!(
        line(&mut stdout).await,
        "alice: \\u{202e}olleh\\u{2066}x\u{2424}fake: line 👨\u{200d}👩\u{200d}👧"
    );

    // Keep stdin open: `wait` would close it, and the client would then be
    // leaving on its own rather than being closed by the server.
    let _stdin = child.stdin.take();
    server.begin_stop();
    let status = timeout(PATIENCE, child.wait()).await.expect("exits in time").expect("wait");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).await.expect("read");
    assert_eq!(
        stderr,
        "error: the server closed the connection: server shutting down (code 1001)\n"
    );
    assert_eq!(status.code(), Some(1));
    server.stop().await;
}

#[tokio::test]
async fn client_reconnects_after_a_dropped_connection_and_prints_what_it_missed_once() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut child = command(CLIENT, &[&proxy.url("/"), "--name", "bob"]).spawn().expect("spawn");
    let _stdin = child.stdin.take();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    assert!(line(&mut stdout).await.starts_with("* you are bob in room lobby"));
    assert_eq!(line(&mut stdout).await, "* bob joined");
    alice.expect("* bob joined").await;
    alice.send("one").await;
    assert_eq!(line(&mut stdout).await, "alice: one");

    proxy.cut();
    alice.wait_for("* bob left").await;
    alice.send("two").await;
    alice.send("three").await;
    alice.wait_for("* bob joined").await;
    alice.send("four").await;
    assert!(line(&mut stdout).await.starts_with("* you are bob in room lobby"));
    for expected in [
        "* 2 earlier messages",
        "alice: two",
        "alice: three",
        "* end of history",
        "* bob joined",
        "alice: four",
    ] {
        assert_eq!(line(&mut stdout).await, expected);
    }
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut notice = String::new();
    timeout(PATIENCE, stderr.read_line(&mut notice)).await.expect("in time").expect("read");
    assert!(notice.starts_with("connection to ") && notice.contains("reconnecting in"), "{notice}");
    server.stop().await;
}

#[tokio::test]
async fn client_comes_back_to_a_restarted_server_and_says_the_history_was_reset() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let mut child = command(CLIENT, &[&proxy.url("/"), "--name", "bob"]).spawn().expect("spawn");
    let _stdin = child.stdin.take();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    assert!(line(&mut stdout).await.starts_with("* you are bob in room lobby"));
    assert_eq!(line(&mut stdout).await, "* bob joined");

    server.stop().await;
    let server = TestServer::start().await;
    proxy.redirect(server.addr);
    assert!(line(&mut stdout).await.starts_with("* you are bob in room lobby"));
    assert_eq!(
        line(&mut stdout).await,
        "! missed an unknown number of messages: the room's history was reset"
    );
    assert_eq!(line(&mut stdout).await, "* bob joined");
    let mut alice = Peer::named(&server, "alice").await;
    alice.send("welcome back").await;
    assert_eq!(line(&mut stdout).await, "* alice joined");
    assert_eq!(line(&mut stdout).await, "alice: welcome back");
    server.stop().await;
}

#[tokio::test]
async fn server_binary_prints_its_address_serves_and_exits_0_on_sigterm() {
    let mut server = command(SERVER, &["--port", "0"]).spawn().expect("spawn");
    let mut stdout = BufReader::new(server.stdout.take().expect("stdout"));
    let listening = line(&mut stdout).await;
    let url = listening.strip_prefix("listening on ").expect("the listening line").to_owned();
    let addr: std::net::SocketAddr =
        url.strip_prefix("ws://").expect("ws://").parse().expect("HOST:PORT");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{listening}");

    let (code, out, _) = run(CLIENT, &[&url, "--name", "carol"], "ping\n").await;
    assert_eq!(code, 0);
    assert!(out.ends_with("* carol joined\ncarol: ping\n"), "{out}");

    let mut watcher = common::connect(&format!("{url}?name=dave")).await;
    common::next_text(&mut watcher).await;
    let pid = server.id().expect("pid").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
    assert!(killed.success());
    let status = timeout(PATIENCE, server.wait()).await.expect("exits in time").expect("wait");
    assert_eq!(status.code(), Some(0));
    // Only the listening line on stdout: logs go to stderr.
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.expect("read");
    assert_eq!(rest, "");
}

#[tokio::test]
async fn server_binary_that_cannot_bind_exits_1_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let (code, stdout, stderr) = run(SERVER, &["--port", &port], "").await;
    assert_eq!(code, 1);
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("error: cannot listen on 127.0.0.1:{port}: ")), "{stderr}");
}

#[tokio::test]
async fn client_presents_its_token() {
    let config =
        chat::server::config::ServerConfig { token: Some("s3cret".into()), ..Default::default() };
    let server = TestServer::with(config).await;
    let url = server.url("/");
    let (code, stdout, _) =
        run(CLIENT, &[&url, "--name", "eve", "--token", "s3cret"], "hi\n").await;
    assert_eq!(code, 0);
    assert!(stdout.ends_with("* eve joined\neve: hi\n"), "{stdout}");

    let (code, _, stderr) = run(CLIENT, &[&url, "--name", "eve"], "hi\n").await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!(
            "error: cannot connect to {url}: the server refused the upgrade with HTTP 401: \
             a valid token is required: Authorization: Bearer TOKEN, or ?token= \
             (this client sends one with --token)\n"
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn server_listens_on_localhost_says_where_the_page_is_and_never_logs_a_session() {
    let mut server = command(SERVER, &["--host", "localhost", "--port", "0"])
        .env("RUST_LOG", "debug")
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(server.stdout.take().expect("stdout"));
    let listening = line(&mut stdout).await;
    let url = listening.strip_prefix("listening on ").expect("the listening line").to_owned();
    let addr: std::net::SocketAddr =
        url.strip_prefix("ws://").expect("ws://").parse().expect("HOST:PORT");
    assert!(addr.ip().is_loopback(), "{listening}");

    // A session secret handed out, then presented again.
    let mut first = common::connect_json(&format!("{url}?name=alice")).await;
    let welcome = common::next_json(&mut first).await;
    let secret = welcome["session"].as_str().expect("a session").to_owned();
    let mut again = common::connect_json(&format!("{url}?name=alice&session={secret}")).await;
    assert_eq!(common::next_json(&mut again).await["name"], "alice");
    drop((first, again));

    let pid = server.id().expect("pid").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
    assert!(killed.success());
    timeout(PATIENCE, server.wait()).await.expect("exits in time").expect("wait");
    let mut stderr = String::new();
    server.stderr.take().expect("stderr").read_to_string(&mut stderr).await.expect("read");
    let page = format!("web page: open http://{addr}/ in a browser");
    assert!(stderr.contains(&page), "{stderr}");
    assert!(stderr.contains("alice"), "debug logs name the client: {stderr}");
    assert!(!stderr.contains(&secret), "the session secret was logged: {stderr}");
}

#[tokio::test]
async fn an_empty_token_is_refused_at_start_by_both_binaries() {
    for program in [SERVER, CLIENT] {
        let mut child = command(program, &["--port", "0"][..usize::from(program == SERVER) * 2])
            .env("CHAT_TOKEN", "")
            .spawn()
            .expect("spawn");
        drop(child.stdin.take());
        let output =
            timeout(PATIENCE, child.wait_with_output()).await.expect("in time").expect("wait");
        assert_ne!(output.status.code(), Some(0));
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            "error: --token (CHAT_TOKEN) is empty: give the secret, or unset it\n"
        );
    }
}

#[tokio::test]
async fn a_memory_total_too_small_for_the_largest_message_is_refused_at_start() {
    let args = ["--port", "0", "--max-memory", "1MiB"];
    let child = command(SERVER, &args).spawn().expect("spawn");
    let output = timeout(PATIENCE, child.wait_with_output()).await.expect("in time").expect("wait");
    assert_ne!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: --max-memory (CHAT_MAX_MEMORY) must be at least 4194304 bytes: 64 times \
         --max-message-bytes\n"
    );
}
