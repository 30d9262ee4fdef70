//! Joins and resumes are paced per address (`--joins-per-ip`), since each
//! replays up to `--history-bytes` of history: past the budget an upgrade
//! gets 429 with Retry-After; other addresses are not affected. The real
//! client takes such a 429 as "try later": it waits and comes back.

use crate::common::{
    self, CLIENT, PATIENCE, Proxy, TestServer, command, exchange_from, join_from, status_of,
    upgrade_request,
};
use chat::server::config::ServerConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

const JOINER: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];

#[tokio::test]
async fn repeated_joins_from_one_address_get_429_with_retry_after() {
    // The default budget, twice over, back to back: it refills 64 a second,
    // far slower than loopback joins come.
    let server = TestServer::start().await;
    let mut refused = None;
    for i in 0..4 * chat::server::config::DEFAULT_JOINS_PER_IP {
        let request = upgrade_request(&format!("/?name=j{i}"));
        let response = exchange_from(JOINER, server.addr, request.as_bytes()).await;
        match status_of(&response) {
            "101" => {}
            "429" => {
                refused = Some(response);
                break;
            }
            other => panic!("join {i} got {other}: {response:?}"),
        }
    }
    let refused = refused.expect("429 before the end");
    assert!(refused.contains("\r\nRetry-After: "), "{refused}");
    // Another address joins.
    join_from(OTHER, &server, "/?name=other").await;
    server.stop().await;
}

#[tokio::test]
async fn zero_turns_the_join_rate_off() {
    let server =
        TestServer::with(ServerConfig { joins_per_ip: 0, ..ServerConfig::default() }).await;
    for i in 0..4 * chat::server::config::DEFAULT_JOINS_PER_IP {
        let request = upgrade_request(&format!("/?name=j{i}"));
        let response = exchange_from(JOINER, server.addr, request.as_bytes()).await;
        assert_eq!(status_of(&response), "101", "join {i}: {response:?}");
    }
    server.stop().await;
}

/// Reads stderr lines until one contains all of `words`; returns it.
async fn stderr_line_with(
    stderr: &mut BufReader<tokio::process::ChildStderr>,
    words: &[&str],
) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let read =
            timeout(PATIENCE, stderr.read_line(&mut line)).await.expect("in time").expect("read");
        assert!(read > 0, "stderr ended before {words:?}: {seen}");
        seen += &line;
        if words.iter().all(|word| line.contains(word)) {
            return line;
        }
    }
}

/// Takes a chat slot from 127.0.0.1 with a raw upgrade; `None` if refused.
async fn hold_a_slot(server: &TestServer) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = upgrade_request("/?name=keeper");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = vec![0u8; 12];
    timeout(PATIENCE, stream.read_exact(&mut head)).await.expect("in time").expect("read");
    (status_of(&String::from_utf8_lossy(&head)) == "101").then_some(stream)
}

#[tokio::test]
async fn the_client_takes_429_as_try_later_and_comes_back() {
    // One chat connection per address: while another holds 127.0.0.1's,
    // the client (through a relay on 127.0.0.1) is told 429.
    let config = ServerConfig { max_connections_per_ip: 1, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let proxy = Proxy::start(server.addr).await;
    let mut watcher = join_from(OTHER, &server, "/?name=watcher").await;
    let mut child = command(CLIENT, &[&proxy.url("/"), "--name", "bob"]).spawn().expect("spawn");
    let _stdin = child.stdin.take();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    watcher.wait_for("* bob joined").await;
    // Cut only once bob knows he is in: a first connection is never retried.
    assert!(stdout_line(&mut stdout).await.starts_with("* you are bob"));

    // Cut bob's connection and take his address's slot before he is back
    // (should he win the race, cut again).
    let keeper = loop {
        proxy.cut();
        watcher.wait_for("* bob left").await;
        let held = timeout(PATIENCE, async {
            loop {
                // The slot may not be given back yet: the server saw the
                // cut a moment ago.
                if let Some(stream) = hold_a_slot(&server).await {
                    return Some(stream);
                }
                if bob_is_back(&mut watcher).await {
                    return None;
                }
            }
        })
        .await
        .expect("the slot or bob, in time");
        if let Some(stream) = held {
            break stream;
        }
    };
    let refused = stderr_line_with(&mut stderr, &["HTTP 429", "reconnecting in"]).await;
    assert!(refused.contains("retry after"), "{refused}");
    drop(keeper);
    // Bob comes back on his own after the wait.
    watcher.wait_for("* bob joined").await;
    while !stdout_line(&mut stdout).await.starts_with("* you are bob") {}
    server.stop().await;
}

/// The next line of the client's stdout.
async fn stdout_line(stdout: &mut BufReader<tokio::process::ChildStdout>) -> String {
    let mut line = String::new();
    let read =
        timeout(PATIENCE, stdout.read_line(&mut line)).await.expect("in time").expect("read");
    assert!(read > 0, "stdout ended");
    line
}

/// Whether bob rejoined (seen by the watcher) rather than being refused.
async fn bob_is_back(watcher: &mut common::Peer) -> bool {
    // Non-blocking look: anything the watcher already has.
    match timeout(std::time::Duration::ZERO, watcher.next()).await {
        Ok(line) => line == "* bob joined",
        Err(_) => false,
    }
}
