//! The memory scenarios of `bench/memory.sh`: what a running server holds
//! (RSS from /proc, and `chat_memory_bytes`, the bytes it accounts for)
//! before, during and after each of:
//!
//! - `rooms`: 2,000 rooms with one client each;
//! - `history`: 4 rooms each sent 100 messages of 64 KiB of quotes, the
//!   costliest text (JSON doubles it);
//! - `reader`: a JSON client that never reads, in a room where 3 clients
//!   send such messages at the rate limit for 18 s;
//! - `pages`: 200 JSON clients that never read, each asking 500 times for
//!   a page of 200 earlier messages (256 KiB of text, about 640 KiB as
//!   JSON) in a room of 200 such messages, for 18 s.
//!
//! `cargo run --release --example memory_scenarios -- --addr 127.0.0.1:8080 --pid PID rooms`

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Runs one memory scenario against a running server.
#[derive(Debug, Parser)]
struct Cli {
    /// The server's address.
    #[arg(long)]
    addr: SocketAddr,
    /// The server's process id, for its RSS.
    #[arg(long)]
    pid: u32,
    /// Bytes of each message's text in `history` and `reader`.
    #[arg(long, default_value_t = 64 * 1024)]
    message_bytes: usize,
    /// Seconds the `reader` and `pages` scenarios last.
    #[arg(long, default_value_t = 18)]
    seconds: u64,
    /// Rooms of the `rooms` scenario.
    #[arg(long, default_value_t = 2000)]
    rooms: usize,
    /// Clients that never read in the `pages` scenario.
    #[arg(long, default_value_t = 200)]
    pagers: usize,
    scenario: Scenario,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    Rooms,
    History,
    Reader,
    Pages,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let before = sample(&cli).await?;
    let (during, extra) = match cli.scenario {
        Scenario::Rooms => rooms(&cli).await?,
        Scenario::History => history(&cli).await?,
        Scenario::Reader => reader(&cli).await?,
        Scenario::Pages => pages(&cli).await?,
    };
    // What stays once every client has gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(cli.addr, "chat_connections").await? > 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(100)).await;
    }
    let after = sample(&cli).await?;
    println!(
        "{:?}: rss_mib before {:.1} during {:.1} after {:.1}; accounted_mib during {:.1} after {:.1}{extra}",
        cli.scenario,
        mib(before.0),
        mib(during.0),
        mib(after.0),
        mib(during.1),
        mib(after.1),
    );
    Ok(())
}

/// 2,000 one-client rooms, held while sampled.
async fn rooms(cli: &Cli) -> anyhow::Result<((usize, usize), String)> {
    let before = sample(cli).await?;
    let mut clients = Vec::with_capacity(cli.rooms);
    for room in 0..cli.rooms {
        let mut ws = connect(cli.addr, &format!("/solo{room}"), false).await?;
        next_text(&mut ws).await?;
        clients.push(ws);
    }
    let during = sample(cli).await?;
    let per_client = during.0.saturating_sub(before.0) / cli.rooms;
    drop(clients);
    Ok((during, format!("; {per_client} bytes of RSS per one-client room")))
}

/// 4 rooms, 100 messages each of the costliest text.
async fn history(cli: &Cli) -> anyhow::Result<((usize, usize), String)> {
    let text = "\"".repeat(cli.message_bytes);
    let mut tasks = Vec::new();
    for room in 0..4 {
        let (addr, text) = (cli.addr, text.clone());
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(addr, &format!("/history{room}"), true).await?;
            for n in 0..100 {
                send_paced(&mut ws, &text, n).await?;
            }
            anyhow::Ok(ws)
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await??);
    }
    let during = sample(cli).await?;
    drop(clients);
    Ok((during, String::new()))
}

/// A JSON client that never reads, and 3 senders in its room.
async fn reader(cli: &Cli) -> anyhow::Result<((usize, usize), String)> {
    let stuck = connect(cli.addr, "/feed", true).await?;
    let text = "\"".repeat(cli.message_bytes);
    let until = Instant::now() + Duration::from_secs(cli.seconds);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (addr, text) = (cli.addr, text.clone());
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(addr, "/feed", true).await?;
            let mut n = 0;
            while Instant::now() < until {
                send_paced(&mut ws, &text, n).await?;
                n += 1;
            }
            anyhow::Ok((ws, n))
        }));
    }
    // The peak, sampled each half second while they send.
    let mut peak = (0, 0);
    while Instant::now() < until {
        sleep(Duration::from_millis(500)).await;
        let now = sample(cli).await?;
        peak = (peak.0.max(now.0), peak.1.max(now.1));
    }
    let mut sent = 0;
    let mut clients = Vec::new();
    for task in tasks {
        let (ws, n) = task.await??;
        sent += n;
        clients.push(ws);
    }
    let during = sample(cli).await?;
    drop(stuck);
    drop(clients);
    let peak = (peak.0.max(during.0), peak.1.max(during.1));
    Ok((peak, format!("; {sent} messages sent (during = the peak)")))
}

/// Clients that never read, each asking for many pages of the costliest
/// history, in a room 4 senders filled first.
async fn pages(cli: &Cli) -> anyhow::Result<((usize, usize), String)> {
    let text = "\"".repeat(cli.message_bytes);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (addr, text) = (cli.addr, text.clone());
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(addr, "/pages", true).await?;
            for n in 0..50 {
                send_paced(&mut ws, &text, n).await?;
            }
            anyhow::Ok(ws)
        }));
    }
    let mut senders = Vec::new();
    for task in tasks {
        senders.push(task.await??);
    }
    let until = Instant::now() + Duration::from_secs(cli.seconds);
    let mut tasks = Vec::new();
    for _ in 0..cli.pagers {
        let addr = cli.addr;
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(addr, "/pages", true).await?;
            for n in 0..500 {
                let request =
                    serde_json::json!({ "type": "history", "limit": 200, "id": n.to_string() });
                ws.feed(Message::text(request.to_string())).await?;
            }
            ws.flush().await?;
            anyhow::Ok(ws)
        }));
    }
    // The peak, sampled each half second.
    let mut peak = (0, 0);
    while Instant::now() < until {
        sleep(Duration::from_millis(500)).await;
        let now = sample(cli).await?;
        peak = (peak.0.max(now.0), peak.1.max(now.1));
    }
    let mut pagers = Vec::new();
    for task in tasks {
        pagers.push(task.await??);
    }
    drop(pagers);
    drop(senders);
    Ok((peak, String::from(" (during = the peak)")))
}

/// Time between two messages of one sender: inside the default rate limit
/// (20 a second).
const PACE: Duration = Duration::from_millis(55);

/// Sends a message as request `n`, at most one per [`PACE`], and waits for
/// its ack; again after a `slow_down`.
async fn send_paced(ws: &mut Socket, text: &str, n: usize) -> anyhow::Result<()> {
    let next = Instant::now() + PACE;
    send_acked(ws, text, n).await?;
    tokio::time::sleep_until(next).await;
    Ok(())
}

async fn send_acked(ws: &mut Socket, text: &str, n: usize) -> anyhow::Result<()> {
    loop {
        let id = n.to_string();
        let request = serde_json::json!({ "type": "message", "text": text, "id": id });
        ws.send(Message::text(request.to_string())).await?;
        loop {
            let event: serde_json::Value = serde_json::from_str(&next_text(ws).await?)?;
            if event["id"] != id.as_str() {
                continue;
            }
            match (event["type"].as_str(), event["code"].as_str()) {
                (Some("ack"), _) => return Ok(()),
                (Some("error"), Some("slow_down")) => {
                    sleep(Duration::from_secs(1)).await;
                    break;
                }
                _ => bail!("refused: {event}"),
            }
        }
    }
}

async fn connect(addr: SocketAddr, path: &str, json: bool) -> anyhow::Result<Socket> {
    let mut builder = ClientBuilder::new().uri(&format!("ws://{addr}{path}"))?;
    if json {
        builder = builder.add_header(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(chat::protocol::JSON_PROTOCOL),
        )?;
    }
    let (ws, _) = builder.connect().await.with_context(|| format!("cannot join {path}"))?;
    Ok(ws)
}

async fn next_text(ws: &mut Socket) -> anyhow::Result<String> {
    loop {
        let frame =
            timeout(Duration::from_secs(30), ws.next()).await.context("no frame in time")?;
        let frame = frame.context("closed")??;
        if let Some(text) = frame.as_text() {
            return Ok(text.to_owned());
        }
    }
}

/// The server's RSS and accounted bytes.
async fn sample(cli: &Cli) -> anyhow::Result<(usize, usize)> {
    Ok((rss(cli.pid)?, metric(cli.addr, "chat_memory_bytes").await?))
}

fn rss(pid: u32) -> anyhow::Result<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

async fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<usize> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .with_context(|| format!("no {name} in /metrics"))?;
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).context("not a number")
}

#[allow(clippy::cast_precision_loss)]
fn mib(bytes: usize) -> f64 {
    bytes as f64 / 1_048_576.0
}
