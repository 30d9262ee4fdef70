//! The client in a pipe, as scripts use it: every line arrives, in order,
//! within the server's rate limit; lines that cannot be sent are reported on
//! stderr and make the exit code 3; `--json`, `--quiet` and `--no-close`;
//! `/history` in the server's text form.

use crate::common::{self, CLIENT, PATIENCE, Peer, TestServer, command, run};
use chat::server::config::ServerConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

#[tokio::test]
async fn a_hundred_piped_lines_all_arrive_in_order_within_the_default_rate_limit() {
    let server = TestServer::start().await;
    let mut watcher = Peer::named(&server, "watcher").await;
    let input = (1..=100).map(|n| format!("line {n}")).collect::<Vec<_>>().join("\n") + "\n";
    let url = server.url("/?name=piper");
    let (code, stdout, stderr) = run(CLIENT, &[&url], &input).await;
    watcher.expect("* piper joined").await;
    for n in 1..=100 {
        watcher.expect(&format!("piper: line {n}")).await;
    }
    assert_eq!(stderr, "");
    assert_eq!(code, 0);
    let echoes = stdout.lines().filter(|line| line.starts_with("piper: line ")).count();
    assert_eq!(echoes, 100, "{stdout}");
    server.stop().await;
}

#[tokio::test]
async fn a_refused_name_ends_a_piped_client_before_it_posts_under_another() {
    let server = TestServer::start().await;
    let mut holder = Peer::named(&server, "bob").await;
    for (args, why) in [
        (vec![server.url("/"), "--name".to_owned(), "a b".to_owned()], "invalid name \"a b\""),
        (vec![server.url("/?name=BOB")], "name \"BOB\" is taken"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = run(CLIENT, &args, "posted\n").await;
        assert_eq!(code, 1, "{stderr}");
        assert_eq!(stdout, "");
        assert!(stderr.starts_with(&format!("error: {why}")), "{stderr}");
        assert!(stderr.ends_with(": nothing sent under another name\n"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    // Nothing was posted: the server let them in under their address
    // before they heard the refusal, and they left without a word.
    holder.send("still alone").await;
    loop {
        let line = holder.next().await;
        assert!(!line.ends_with(": posted"), "{line}");
        if line == "bob: still alone" {
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn lines_that_cannot_be_sent_are_reported_on_stderr_and_exit_3() {
    let config = ServerConfig { max_message_bytes: 16, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let url = server.url("/?name=piper");
    let input = format!("ok\n{}\nbad\u{1b}[2J\n   \nfine\n", "x".repeat(17));
    let (code, stdout, stderr) = run(CLIENT, &[&url], &input).await;
    assert_eq!(
        stdout,
        "* you are piper in room lobby, 1 online; /help lists the commands\n* piper joined\n\
         piper: ok\npiper: fine\n"
    );
    assert_eq!(
        stderr,
        "error: line 2 was not sent: it is 17 bytes, and the server takes at most 16\n\
         error: line 3 was not sent: messages may not hold control characters (tab and line \
         breaks excepted); nothing was sent\n\
         error: 2 lines were not sent\n"
    );
    assert_eq!(code, 3);
    server.stop().await;
}

#[tokio::test]
async fn end_of_input_while_the_server_is_gone_waits_linger_then_exits_3() {
    let server = TestServer::start().await;
    let url = server.url("/?name=piper");
    let mut child = command(CLIENT, &[&url, "--linger", "1"]).spawn().expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let next = |line: Option<String>| line.expect("a line");
    let welcome = timeout(PATIENCE, stdout.next_line()).await.expect("in time").expect("read");
    assert!(next(welcome).starts_with("* you are piper"));
    server.stop().await;
    let notice = timeout(PATIENCE, stderr.next_line()).await.expect("in time").expect("read");
    assert!(next(notice).contains("reconnecting in"));

    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"lost one\nlost two\n").await.expect("write");
    drop(stdin);
    let status = timeout(PATIENCE, child.wait()).await.expect("exits in time").expect("wait");
    assert_eq!(status.code(), Some(3));
    let mut last = String::new();
    while let Ok(Some(line)) = stderr.next_line().await {
        last = line;
    }
    assert!(last.starts_with("error: 2 lines were not sent: the server was unreachable"), "{last}");
}

#[tokio::test]
async fn json_prints_events_for_jq_without_the_session_secret() {
    let server = TestServer::start().await;
    let url = server.url("/?name=piper");
    let (code, stdout, stderr) = run(CLIENT, &[&url, "--json"], "hi\n").await;
    assert_eq!((code, stderr.as_str()), (0, ""));
    let events: Vec<serde_json::Value> =
        stdout.lines().map(|line| serde_json::from_str(line).expect("JSON")).collect();
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["welcome", "join", "message"]);
    assert_eq!(events[0]["name"], "piper");
    assert!(events[0].get("session").is_none(), "{}", events[0]);
    assert_eq!(events[2]["text"], "hi");
    server.stop().await;
}

#[tokio::test]
async fn quiet_prints_messages_only_and_no_close_keeps_printing_after_input_ends() {
    let server = TestServer::start().await;
    let mut watcher = Peer::named(&server, "watcher").await;
    let url = server.url("/?name=piper");
    let mut child = command(CLIENT, &[&url, "-q", "-n"]).spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"before\n").await.expect("write");
    drop(stdin);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    watcher.expect("* piper joined").await;
    watcher.expect("piper: before").await;
    let line = timeout(PATIENCE, stdout.next_line()).await.expect("in time").expect("read");
    assert_eq!(line.as_deref(), Some("piper: before"));
    // Stdin has ended, and the client still prints what the room says.
    watcher.send("after").await;
    let line = timeout(PATIENCE, stdout.next_line()).await.expect("in time").expect("read");
    assert_eq!(line.as_deref(), Some("watcher: after"));
    child.kill().await.expect("kill");
    server.stop().await;
}

#[tokio::test]
async fn a_connection_dropped_mid_pipe_loses_and_repeats_no_line() {
    let server = TestServer::start().await;
    let proxy = common::Proxy::start(server.addr).await;
    let mut watcher = Peer::named(&server, "watcher").await;
    let url = proxy.url("/?name=piper");
    let mut child = command(CLIENT, &[&url]).spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = (1..=60).map(|n| format!("line {n}")).collect::<Vec<_>>().join("\n") + "\n";
    stdin.write_all(input.as_bytes()).await.expect("write");
    drop(stdin);
    watcher.expect("* piper joined").await;
    for n in 1..=10 {
        watcher.expect(&format!("piper: line {n}")).await;
    }
    // Reset mid-stream, with lines in flight: the client comes back with its
    // session, learns the last line carried out, and sends the rest once.
    proxy.cut();
    let mut n = 11;
    while n <= 60 {
        let line = watcher.next().await;
        if line != "* piper left" && line != "* piper joined" {
            assert_eq!(line, format!("piper: line {n}"));
            n += 1;
        }
    }
    let status = timeout(PATIENCE, child.wait()).await.expect("exits in time").expect("wait");
    assert_eq!(status.code(), Some(0));
    // Nothing came twice: after line 60, only the leave.
    watcher.expect("* piper left").await;
    watcher.send("done").await;
    watcher.expect("watcher: done").await;
    server.stop().await;
}

/// `lines` with each `#SEQ DATE` prefix's date, checked, replaced by `DATE`.
fn dates_checked(lines: &str) -> String {
    let checked = lines.lines().map(|line| {
        let Some((seq, rest)) = line.split_once(' ').filter(|_| line.starts_with('#')) else {
            return line.to_owned();
        };
        // `2026-12-01 11:30:00Z`: 20 characters, UTC.
        let (date, rest) = rest.split_at(20);
        chrono::NaiveDateTime::parse_from_str(date, "%Y-%m-%d %H:%M:%SZ")
            .unwrap_or_else(|error| panic!("{date:?} in {line:?}: {error}"));
        format!("{seq} DATE{rest}")
    });
    checked.map(|line| line + "\n").collect()
}

#[tokio::test]
async fn history_prints_earlier_messages_with_dates_one_line_each_and_pages_back() {
    let server = TestServer::with(ServerConfig { history: 2, ..ServerConfig::default() }).await;
    let mut alice = Peer::named(&server, "alice").await;
    for text in ["m1", "two\nbob: forged", "m3", "m4", "m5"] {
        alice.send(text).await;
    }
    alice.expect("alice: m1").await;
    alice.expect("alice: two\u{2424}bob: forged").await;
    for text in ["m3", "m4", "m5"] {
        alice.expect(&format!("alice: {text}")).await;
    }
    let url = server.url("/?name=piper");
    // Each /history pages back from the oldest message seen: the join's
    // replay (m4, m5), then each answer.
    let (code, stdout, stderr) = run(CLIENT, &[&url], "/history 2\n/history\n/history\n").await;
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    assert_eq!(
        dates_checked(&stdout),
        "* you are piper in room lobby, 2 online; /help lists the commands\n\
         * 2 earlier messages\nalice: m4\nalice: m5\n* end of history\n* piper joined\n\
         * 2 earlier messages from #2:\n\
         #2 DATE alice: two\u{2424}bob: forged\n\
         #3 DATE alice: m3\n\
         * more: /history N 2\n\
         * 1 earlier message from #1:\n\
         #1 DATE alice: m1\n\
         * no earlier messages\n"
    );
    // Quiet: the messages only, the earlier ones included.
    let (code, stdout, stderr) = run(CLIENT, &[&url, "-q"], "/history 1\n").await;
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    assert_eq!(dates_checked(&stdout), "alice: m4\nalice: m5\n#3 DATE alice: m3\n");
    server.stop().await;
}
