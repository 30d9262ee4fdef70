//! `chat-bench` against a real server: every delivery is accounted for.
//! (Its numbers are not checked here: timings belong to the benchmark.)

use std::time::Duration;

use crate::common::{self, TestServer};
use chat::bench::{BenchConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_counts_every_delivery() {
    // A benchmark lifts the rate limit.
    let config = chat::server::config::ServerConfig { rate_limit: 0, ..Default::default() };
    let server = TestServer::with(config).await;
    let config = BenchConfig {
        url: vec![server.url("/bench")],
        clients: 20,
        senders: 4,
        rate: 200,
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(200),
        payload: 64,
        drain: Duration::from_secs(20),
        connect_concurrency: 8,
        server_pid: Some(std::process::id()),
        json: false,
    };
    // Twice in the same room, kept alive in between: the second run must not
    // count the first one's messages, which the room's history replays.
    let _keeper = common::Peer::join(&server, "/bench?name=keeper").await;
    run(config.clone()).await.expect("a first run");
    let report = run(config).await.expect("a second run");
    assert_eq!(report.clients, 20);
    // 200 msg/s for 0.7 s, on a fixed schedule: 140 messages.
    assert_eq!(report.messages_sent, 140);
    assert_eq!(report.deliveries_expected, 140 * 20);
    assert_eq!(report.deliveries_received, 140 * 20);
    assert_eq!(report.lost, 0);
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.lost_per_sender, vec![0; 4]);
    assert_eq!(report.duplicates_per_sender, vec![0; 4]);
    assert!(report.server_rss_kib.is_some(), "RSS read from /proc");
    let text = report.to_string();
    assert!(text.contains("lost                 0 (0.000%)"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn the_load_generator_refuses_impossible_runs() {
    let config = BenchConfig {
        url: vec!["ws://127.0.0.1:1/".into()],
        clients: 10,
        senders: 11,
        rate: 10,
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        payload: 64,
        drain: Duration::from_secs(1),
        connect_concurrency: 1,
        server_pid: None,
        json: false,
    };
    let error = run(config.clone()).await.expect_err("more senders than clients");
    assert_eq!(error.to_string(), "--senders must be between 1 and --clients");

    let error = run(BenchConfig { senders: 1, clients: 1_000_000, ..config.clone() })
        .await
        .expect_err("too many");
    assert!(error.to_string().contains("raise it with `ulimit -n"), "{error}");

    let error = run(BenchConfig { senders: 1, ..config }).await.expect_err("nobody listens");
    assert!(
        error.to_string().starts_with("client 0 cannot connect to ws://127.0.0.1:1/: "),
        "{error}"
    );
}
