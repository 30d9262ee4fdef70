//! A client that stops reading must not delay anyone else, must cost bounded
//! memory, and must be told what it missed when it reads again.

use crate::common::{self, PATIENCE, Peer, TestServer, next_text};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_websockets::{ClientBuilder, WebSocketStream};

const MESSAGES: usize = 1000;
const WINDOW: usize = 32;
const MESSAGE_BYTES: usize = 32 * 1024;

/// A client "sleepy" with a tiny receive buffer, so that the server's writes
/// to it block after a few frames; past its welcome.
async fn sleepy(server: &TestServer) -> WebSocketStream<TcpStream> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(server.addr).await.expect("connect");
    let builder = ClientBuilder::new().uri(&server.url("/?name=sleepy")).expect("uri");
    let (mut slow, _) = builder.connect_on(stream).await.expect("upgrade");
    assert!(next_text(&mut slow).await.starts_with("* you are sleepy"));
    slow
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_delay_others_and_learns_what_it_missed() {
    let max_lag = 256;
    let config =
        chat::server::config::ServerConfig { max_lag, rate_limit: 0, ..Default::default() };
    let server = TestServer::with(config).await;

    // 1000 × 32 KiB is far more than any socket buffers.
    let mut slow = sleepy(&server).await;
    assert_eq!(next_text(&mut slow).await, "* sleepy joined");

    let mut fast = Peer::named(&server, "fast").await;
    let mut watcher = Peer::named(&server, "watcher").await;
    fast.expect("* watcher joined").await;

    // The slow client reads nothing from here on; the others get every
    // message. The sender sends in windows well under `max_lag` and waits for
    // the others to read each one, as a conversation would: that keeps the
    // readers within the lag allowed, whatever their socket buffers hold.
    let payload = "p".repeat(MESSAGE_BYTES - 8);
    let all = async {
        for window in (0..MESSAGES).collect::<Vec<_>>().chunks(WINDOW) {
            for i in window {
                fast.send(&format!("{i:06}:{payload}")).await;
            }
            for i in window {
                let line = format!("fast: {i:06}:{payload}");
                for peer in [&mut fast, &mut watcher] {
                    let got = peer.next().await;
                    assert!(
                        got == line,
                        "{} got {:?}, expected message {i}",
                        peer.name,
                        &got[..got.len().min(20)]
                    );
                }
            }
        }
    };
    timeout(PATIENCE * 3, all).await.expect("the others are served while one client is stuck");

    // Now the slow client reads. Since its own join, the room broadcast two
    // join notices and the messages: each one it either got, in order, or was
    // told it missed. And it did miss some.
    let mut received = Vec::new();
    let mut joins = 0;
    let mut missed = 0;
    while received.last() != Some(&(MESSAGES - 1)) {
        let line = next_text(&mut slow).await;
        if let Some(count) =
            line.strip_prefix("! missed ").and_then(|rest| rest.strip_suffix(" messages"))
        {
            missed += count.parse::<usize>().expect("a count");
        } else if line == "* fast joined" || line == "* watcher joined" {
            joins += 1;
        } else {
            let index: usize = line["fast: ".len()..][..6].parse().expect("an index");
            received.push(index);
        }
    }
    assert!(missed > 0, "the slow client was told it missed messages");
    assert!(received.windows(2).all(|w| w[0] < w[1]), "what it got is in order");
    assert_eq!(
        received.len() + joins + missed,
        MESSAGES + 2,
        "every frame is received or counted as missed"
    );
    drop(slow);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_its_socket_full_too_long_is_closed_and_leaves() {
    let config = chat::server::config::ServerConfig {
        slow_client_timeout: std::time::Duration::from_millis(300),
        rate_limit: 0,
        ..Default::default()
    };
    let server = TestServer::with(config).await;
    let mut slow = sleepy(&server).await;

    let mut fast = Peer::named(&server, "fast").await;
    // Fill the slow client's socket (10 MB against a few MB of buffers), then
    // wait for the server to give up on it.
    let payload = "p".repeat(MESSAGE_BYTES);
    let mut left = false;
    for i in 0..300 {
        fast.send(&format!("{i}:{payload}")).await;
        let echo = format!("fast: {i}:{payload}");
        loop {
            let line = fast.next().await;
            left |= line == "* sleepy left";
            if line == echo {
                break;
            }
        }
    }
    if !left {
        fast.wait_for("* sleepy left").await;
    }

    // What it had been sent is still there to read, then the connection ends.
    let ended = timeout(PATIENCE, async {
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut slow).await {}
    })
    .await;
    assert!(ended.is_ok(), "the server closed the connection");
    server.stop().await;
}

/// A client that sends pings and never reads: each ping's pong is queued by
/// tokio-websockets, so reading on would queue pongs without bound. The server
/// stops reading once a pong cannot be written, and closes the client when
/// the write stays blocked for the slow-client timeout.
#[tokio::test]
async fn a_client_that_pings_without_reading_is_not_read_on_and_is_closed() {
    use tokio::io::AsyncWriteExt;

    let config = chat::server::config::ServerConfig {
        slow_client_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let server = TestServer::with(config).await;
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(server.addr).await.expect("connect");
    stream.write_all(common::upgrade_request("/?name=pinger").as_bytes()).await.expect("upgrade");

    // Masked pings with the largest control payload, 64 KiB of them per write.
    // FIN + ping; masked, 125 bytes; the mask.
    let mut ping = vec![0x89, 0x80 | 0x7d, 1, 2, 3, 4];
    ping.extend((0..125u8).map(|i| i ^ [1, 2, 3, 4][usize::from(i) % 4]));
    let chunk: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 500).collect();
    // Far more than the socket buffers on both sides can hold.
    let limit: usize = 512 << 20;
    let mut sent = 0;
    let failed = timeout(PATIENCE, async {
        while sent < limit {
            if let Err(error) = stream.write_all(&chunk).await {
                return Some(error);
            }
            sent += chunk.len();
        }
        None
    })
    .await
    .expect("the server neither stopped reading nor closed the client");
    assert!(failed.is_some(), "the server read {sent} bytes of pings without writing their pongs");
    server.stop().await;
}
