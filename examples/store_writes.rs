//! How many messages a running server's store (`--db`) writes a second at
//! saturation: many rooms, one client each, small messages sent as fast as
//! the server echoes them (each client keeps `--window` unanswered). Reads
//! `chat_store_written_total` and `chat_store_dropped_total` from `/metrics`
//! before and after. Run the server with `--rate-limit 0` and the
//! per-address limits off; `bench/store.sh` does.
//!
//! `cargo run --release --example store_writes -- --addr 127.0.0.1:8080 --rooms 200 --seconds 10`

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_websockets::{ClientBuilder, Message};

/// Measures the store's writes at saturation.
#[derive(Debug, Parser)]
struct Cli {
    /// The server's address.
    #[arg(long)]
    addr: SocketAddr,
    /// Rooms, one client each.
    #[arg(long, default_value_t = 200)]
    rooms: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes of each message's text.
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Messages each client keeps sent and not yet echoed.
    #[arg(long, default_value_t = 16)]
    window: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let before = counters(cli.addr).await?;
    let start = Instant::now();
    let end = start + Duration::from_secs(cli.seconds);
    let mut clients = Vec::new();
    for room in 0..cli.rooms {
        let url = format!("ws://{}/w{room}?name=w{room}", cli.addr);
        let uri = url.parse().context("a room's URL")?;
        let (ws, _) = ClientBuilder::from_uri(uri).connect().await.context("connect")?;
        let (payload, window) = (cli.payload, cli.window);
        clients.push(tokio::spawn(async move { send_until(ws, end, payload, window).await }));
    }
    let mut sent = 0;
    for client in clients {
        sent += client.await.context("a client")??;
    }
    let seconds = start.elapsed().as_secs_f64();
    // What was queued when sending stopped is written within moments.
    let after = settled(cli.addr, before.0 + before.1 + sent).await?;
    let written = after.0 - before.0;
    let dropped = after.1 - before.1;
    println!(
        "{} rooms, {}-byte messages: {sent} sent in {seconds:.1} s ({:.0}/s); \
         {written} written ({:.0}/s), {dropped} not stored (queue full)",
        cli.rooms,
        cli.payload,
        per_second(sent, seconds),
        per_second(written, seconds),
    );
    Ok(())
}

// Counts here stay far below 2^52.
#[allow(clippy::cast_precision_loss)]
fn per_second(count: u64, seconds: f64) -> f64 {
    count as f64 / seconds
}

/// Sends until `end`, keeping `window` messages unanswered; returns how
/// many were echoed.
async fn send_until(
    mut ws: tokio_websockets::WebSocketStream<tokio_websockets::MaybeTlsStream<TcpStream>>,
    end: Instant,
    payload: usize,
    window: usize,
) -> anyhow::Result<u64> {
    let text = "x".repeat(payload);
    let (mut sent, mut echoed) = (0u64, 0u64);
    loop {
        while sent - echoed < window as u64 && Instant::now() < end {
            ws.send(Message::text(text.clone())).await.context("send")?;
            sent += 1;
        }
        if sent == echoed {
            return Ok(echoed);
        }
        let frame = timeout(Duration::from_secs(30), ws.next()).await.context("an echo in time")?;
        let frame = frame.context("the server closed")?.context("a frame")?;
        if frame.as_text().is_some_and(|line| line.ends_with(&text)) {
            echoed += 1;
        }
    }
}

/// Waits (10 s at most) until the store has written or dropped `total`
/// messages, and returns its counters then.
async fn settled(addr: SocketAddr, total: u64) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = counters(addr).await?;
        if now.0 + now.1 >= total || Instant::now() > deadline {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `chat_store_written_total` and `chat_store_dropped_total`.
async fn counters(addr: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let mut stream = TcpStream::connect(addr).await.context("connect for /metrics")?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let value = |name: &str| {
        body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    match (value("chat_store_written_total"), value("chat_store_dropped_total")) {
        (Some(written), Some(dropped)) => Ok((written, dropped)),
        _ => bail!("no store counters in /metrics: is the server running with a --db?"),
    }
}
