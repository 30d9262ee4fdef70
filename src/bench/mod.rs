//! The load generator behind `chat-bench`: many clients in one room, a few of
//! them sending on a fixed schedule, all of them checking what they receive.
//!
//! Open loop: sender `i` of `S` sends its `k`-th message at `start + (k·S + i) / R`
//! whatever happened before, and the message carries that scheduled time, so a
//! server (or a sender) that falls behind shows up as latency instead of
//! slowing the load down (no coordinated omission). Every client, senders
//! included, checks per sender that sequence numbers arrive exactly once and in
//! order.

// Counts become f64 only for rates and percentages in the report.
#![allow(clippy::cast_precision_loss)]

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_websockets::{ClientBuilder, Message};

use crate::client::config::DEFAULT_URL;

/// Latencies are kept per client and merged in batches of this many, so the
/// shared histogram's lock is taken rarely.
const LATENCY_BATCH: usize = 1024;
/// Latencies above this are clamped into the histogram's last bucket.
const MAX_LATENCY: Duration = Duration::from_mins(1);
/// File descriptors the bench needs besides one per client.
const SPARE_FDS: u64 = 64;
/// The kernel reports process times in /proc in units of `USER_HZ`, which is
/// 100 on every Linux architecture we run on.
const USER_HZ: f64 = 100.0;
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The fixed-width header of every bench message: run id, sender, sequence
/// number and scheduled send time in nanoseconds after the start.
const HEADER_LEN: usize = 8 + 1 + 4 + 1 + 10 + 1 + 16;

/// `chat-bench` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchConfig {
    /// Server and room to load; repeat it to spread the clients over several
    /// nodes, round robin (senders included).
    #[arg(long, default_value = DEFAULT_URL)]
    pub url: Vec<String>,
    /// Clients to connect, senders included.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Clients that send.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of measured load, after the warm-up.
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    pub duration: Duration,
    /// Seconds of load before measuring (counted for loss, not for latency or throughput).
    #[arg(long, default_value = "1", value_parser = parse_seconds)]
    pub warmup: Duration,
    /// Bytes of message text (at least 32, the bench header).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Seconds to wait, after the last send, for the last deliveries.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub drain: Duration,
    /// Connections opened at once while connecting.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// The server's process id, to report its memory and CPU time.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is not a usable duration"))
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flags do not make a run.
    #[error("{0}")]
    Config(String),
    /// Not enough file descriptors for the clients asked for.
    #[error(
        "{clients} clients need about {needed} file descriptors but the limit is {limit}: raise it with `ulimit -n {needed}`"
    )]
    FileDescriptors {
        /// Clients asked for.
        clients: usize,
        /// Descriptors needed.
        needed: u64,
        /// The soft limit.
        limit: u64,
    },
    /// A client could not connect.
    #[error("client {index} cannot connect to {url}: {cause}")]
    Connect {
        /// Which client.
        index: usize,
        /// Where to.
        url: String,
        /// Why, with a hint for OS limits.
        cause: String,
    },
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Clients connected (all of them, or the run fails).
    pub clients: usize,
    /// Clients that sent.
    pub senders: usize,
    /// Messages per second asked for.
    pub rate: u64,
    /// Bytes per message.
    pub payload: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Messages sent, warm-up included.
    pub messages_sent: u64,
    /// Messages sent × clients.
    pub deliveries_expected: u64,
    /// Messages received exactly once, in order, counted over every client.
    pub deliveries_received: u64,
    /// Expected deliveries that never came.
    pub lost: u64,
    /// Messages received twice or out of order.
    pub duplicates: u64,
    /// Lost deliveries of each sender's messages, over every client.
    pub lost_per_sender: Vec<u64>,
    /// Duplicate or out-of-order deliveries of each sender's messages.
    pub duplicates_per_sender: Vec<u64>,
    /// Deliveries received during the measured window, per second of it: what
    /// the server sustained, whatever the rate asked for.
    pub delivered_per_s: f64,
    /// Latency from scheduled send to receipt of the messages scheduled in the
    /// measured window, in milliseconds.
    pub latency_ms: Latency,
    /// The server's resident memory, in KiB, when `--server-pid` is given.
    pub server_rss_kib: Option<Rss>,
    /// The server's CPU time (user + system) during the measured window, in seconds.
    pub server_cpu_s: Option<f64>,
    /// That CPU time per delivery of the measured window, in microseconds.
    pub server_cpu_us_per_delivery: Option<f64>,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |nanos: u64| nanos as f64 / 1e6;
        Self {
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// The server's resident memory at three moments, in KiB.
#[derive(Debug, Serialize)]
pub struct Rss {
    /// Before the bench connected.
    pub before: u64,
    /// With every client connected, before the load.
    pub connected: u64,
    /// After the load, clients still connected.
    pub after: u64,
}

/// What every client task shares.
struct Shared {
    latencies: Mutex<Histogram<u64>>,
    received: AtomicU64,
    received_in_window: AtomicU64,
    duplicates: AtomicU64,
    /// Per sender: deliveries received once and in order, and duplicates.
    received_from: Vec<AtomicU64>,
    duplicates_from: Vec<AtomicU64>,
}

/// Tells receivers that the senders are done, and how many each sent.
#[derive(Default)]
struct Finish {
    sent: OnceLock<Vec<u64>>,
    token: CancellationToken,
}

impl Shared {
    fn new(senders: usize) -> Result<Self, Error> {
        let histogram = Histogram::new_with_bounds(1_000, as_nanos(MAX_LATENCY), 3)
            .map_err(|error| Error::Config(format!("latency histogram: {error}")))?;
        Ok(Self {
            latencies: Mutex::new(histogram),
            received: AtomicU64::new(0),
            received_in_window: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            received_from: (0..senders).map(|_| AtomicU64::new(0)).collect(),
            duplicates_from: (0..senders).map(|_| AtomicU64::new(0)).collect(),
        })
    }
}

/// The schedule every task follows.
#[derive(Clone, Copy)]
struct Schedule {
    /// Tells this run's messages from anything else in the room (another
    /// run, or the history of earlier ones).
    run: u32,
    start: Instant,
    senders: usize,
    rate: u64,
    window_start: Duration,
    window_end: Duration,
}

impl Schedule {
    /// When sender `sender` sends its message `seq`, after the start.
    fn at(&self, sender: usize, seq: u64) -> Duration {
        let slot = seq * self.senders as u64 + sender as u64;
        Duration::from_nanos(
            u64::try_from(u128::from(slot) * 1_000_000_000 / u128::from(self.rate))
                .unwrap_or(u64::MAX),
        )
    }

    fn in_window(&self, at: Duration) -> bool {
        at >= self.window_start && at < self.window_end
    }
}

/// Connects, loads, and measures.
pub async fn run(config: BenchConfig) -> Result<Report, Error> {
    check(&config)?;
    let before = config.server_pid.and_then(rss_kib);

    let clients = connect_all(&config).await?;
    let connected = config.server_pid.and_then(rss_kib);

    let schedule = Schedule {
        run: run_id(),
        start: Instant::now() + Duration::from_millis(200),
        senders: config.senders,
        rate: config.rate,
        window_start: config.warmup,
        window_end: config.warmup + config.duration,
    };
    let shared = Arc::new(Shared::new(config.senders)?);
    // The number of messages each sender sent, once they are done.
    let finish = Arc::new(Finish::default());
    // Tells receivers still missing something to give up and report.
    let stop = CancellationToken::new();

    let mut senders = Vec::new();
    let mut receivers = tokio::task::JoinSet::new();
    for (index, ws) in clients.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        if index < config.senders {
            senders.push(tokio::spawn(send(sink, index, schedule, config.payload)));
        } else {
            drop(sink);
        }
        let receiving = receive(stream, schedule, shared.clone(), finish.clone(), stop.clone());
        receivers.spawn(receiving);
    }

    sleep_until(schedule.start + schedule.window_start).await;
    let cpu_start = config.server_pid.and_then(cpu_seconds);
    sleep_until(schedule.start + schedule.window_end).await;
    let cpu_end = config.server_pid.and_then(cpu_seconds);

    let mut sent = Vec::new();
    for sender in senders {
        sent.push(sender.await.unwrap_or(0));
    }
    let _ = finish.sent.set(sent.clone());
    finish.token.cancel();
    let wait_all = async { while receivers.join_next().await.is_some() {} };
    if timeout(config.drain, wait_all).await.is_err() {
        stop.cancel();
        while receivers.join_next().await.is_some() {}
    }
    let after = config.server_pid.and_then(rss_kib);

    let server_cpu_s = cpu_start.zip(cpu_end).map(|(start, end)| end - start);
    let rss = match (before, connected, after) {
        (Some(before), Some(connected), Some(after)) => Some(Rss { before, connected, after }),
        _ => None,
    };
    Ok(report(&config, &shared, &sent, rss, server_cpu_s))
}

/// Sums up what the clients counted.
fn report(
    config: &BenchConfig,
    shared: &Shared,
    sent: &[u64],
    rss: Option<Rss>,
    server_cpu_s: Option<f64>,
) -> Report {
    let messages_sent: u64 = sent.iter().sum();
    let clients = config.clients as u64;
    let received = shared.received.load(Ordering::Relaxed);
    let in_window = shared.received_in_window.load(Ordering::Relaxed);
    let duration_s = config.duration.as_secs_f64();
    let latency_ms =
        Latency::of(&shared.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    Report {
        clients: config.clients,
        senders: config.senders,
        rate: config.rate,
        payload: config.payload,
        duration_s,
        messages_sent,
        deliveries_expected: messages_sent * clients,
        deliveries_received: received,
        lost: (messages_sent * clients).saturating_sub(received),
        duplicates: shared.duplicates.load(Ordering::Relaxed),
        lost_per_sender: sent
            .iter()
            .zip(&shared.received_from)
            .map(|(sent, received)| {
                (sent * clients).saturating_sub(received.load(Ordering::Relaxed))
            })
            .collect(),
        duplicates_per_sender: shared
            .duplicates_from
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect(),
        delivered_per_s: in_window as f64 / duration_s,
        latency_ms,
        server_rss_kib: rss,
        server_cpu_s,
        server_cpu_us_per_delivery: server_cpu_s
            .filter(|_| in_window > 0)
            .map(|cpu| cpu * 1e6 / in_window as f64),
    }
}

fn check(config: &BenchConfig) -> Result<(), Error> {
    let bad = |text: &str| Err(Error::Config(text.to_owned()));
    if config.senders == 0 || config.senders > config.clients {
        return bad("--senders must be between 1 and --clients");
    }
    if config.senders > 9999 {
        return bad("--senders is at most 9999");
    }
    if config.rate == 0 {
        return bad("--rate must be at least 1");
    }
    if config.payload < HEADER_LEN {
        return bad(&format!("--payload must be at least {HEADER_LEN} bytes, the bench header"));
    }
    if config.duration.is_zero() {
        return bad("--duration must be positive");
    }
    let needed = config.clients as u64 + SPARE_FDS;
    if let Some(limit) = open_files_limit()
        && needed > limit
    {
        return Err(Error::FileDescriptors { clients: config.clients, needed, limit });
    }
    Ok(())
}

type Ws = tokio_websockets::WebSocketStream<tokio_websockets::MaybeTlsStream<TcpStream>>;

/// Connects every client, a bounded number at a time, each past its welcome.
async fn connect_all(config: &BenchConfig) -> Result<Vec<Ws>, Error> {
    let builders = config
        .url
        .iter()
        .map(|url| {
            let builder = ClientBuilder::new()
                .uri(url)
                .map_err(|error| Error::Config(format!("invalid --url {url:?}: {error}")))?;
            Ok(Arc::new(builder))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    if builders.is_empty() {
        return Err(Error::Config("no --url".into()));
    }
    let attempts = futures_util::stream::iter(0..config.clients).map(|index| {
        let builder = builders[index % builders.len()].clone();
        let url = config.url[index % builders.len()].clone();
        async move {
            let connecting = async {
                let (mut ws, _) = builder.connect().await?;
                // The welcome proves the server has put us in the room.
                ws.next().await.ok_or(tokio_websockets::Error::AlreadyClosed)??;
                Ok::<_, tokio_websockets::Error>(ws)
            };
            match timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(Ok(ws)) => Ok(ws),
                Ok(Err(error)) => Err(Error::Connect { index, url, cause: explain(&error) }),
                Err(_) => Err(Error::Connect { index, url, cause: "timed out".into() }),
            }
        }
    });
    let mut attempts = attempts.buffered(config.connect_concurrency.max(1));
    let mut clients = Vec::with_capacity(config.clients);
    while let Some(client) = attempts.next().await {
        clients.push(client?);
    }
    Ok(clients)
}

/// One line for a connection error, with the fix for the usual OS limits.
fn explain(error: &tokio_websockets::Error) -> String {
    const EMFILE: i32 = 24;
    match error {
        tokio_websockets::Error::Io(io) if io.raw_os_error() == Some(EMFILE) => {
            "out of file descriptors: raise the limit with `ulimit -n`".into()
        }
        tokio_websockets::Error::Io(io) if io.kind() == io::ErrorKind::AddrNotAvailable => {
            "out of ephemeral ports: widen net.ipv4.ip_local_port_range or use fewer clients".into()
        }
        // Every client of the bench comes from one address.
        tokio_websockets::Error::Upgrade(
            tokio_websockets::upgrade::Error::DidNotSwitchProtocols(429),
        ) => format!(
            "{error}: the server limits each address; start it with --max-handshakes-per-ip 0 \
             --max-connections-per-ip 0 --joins-per-ip 0"
        ),
        error => error.to_string(),
    }
}

/// Sends on schedule until the end of the measured window; returns how many.
async fn send<S>(mut sink: S, sender: usize, schedule: Schedule, payload: usize) -> u64
where
    S: futures_util::Sink<Message, Error = tokio_websockets::Error> + Unpin,
{
    let mut seq = 0;
    let padding = "x".repeat(payload - HEADER_LEN);
    loop {
        let at = schedule.at(sender, seq);
        if at >= schedule.window_end {
            return seq;
        }
        sleep_until(schedule.start + at).await;
        // Catch up on everything due, then write it in one go.
        let now = schedule.start.elapsed();
        let mut fed = 0;
        while fed < 1024 {
            let at = schedule.at(sender, seq);
            if at > now || at >= schedule.window_end {
                break;
            }
            let text = format!(
                "{:08x} {sender:04} {seq:010} {:016} {padding}",
                schedule.run,
                as_nanos(at)
            );
            if sink.feed(Message::text(text)).await.is_err() {
                return seq;
            }
            seq += 1;
            fed += 1;
        }
        if sink.flush().await.is_err() {
            return seq;
        }
    }
}

/// Receives until every sender's last message has arrived; checks order and
/// records latency.
async fn receive<S>(
    mut stream: S,
    schedule: Schedule,
    shared: Arc<Shared>,
    finish: Arc<Finish>,
    stop: CancellationToken,
) where
    S: futures_util::Stream<Item = Result<Message, tokio_websockets::Error>> + Unpin,
{
    let mut tally = Tally::new(&schedule);
    // Pinned once: creating these futures on every frame costs more than the
    // rest of the loop.
    let finished = finish.token.cancelled();
    let stopped = stop.cancelled();
    tokio::pin!(finished, stopped);
    let mut done: Option<&[u64]> = None;
    'run: loop {
        let frame = tokio::select! {
            biased;
            () = &mut stopped => break,
            () = &mut finished, if done.is_none() => {
                done = finish.sent.get().map(Vec::as_slice);
                if done.is_some_and(|last| all_seen(&tally.next, last)) {
                    break;
                }
                continue;
            }
            frame = stream.next() => frame,
        };
        // Frames already read arrived together: one clock reading serves
        // them all, and they are taken without polling the tokens again.
        let now = schedule.start.elapsed();
        let mut frame = frame;
        loop {
            let Some(Ok(message)) = frame else { break 'run };
            tally.count(&message, now, &schedule, &shared);
            if done.is_some_and(|last| all_seen(&tally.next, last)) {
                break 'run;
            }
            match stream.next().now_or_never() {
                Some(next) => frame = next,
                None => break,
            }
        }
    }
    tally.report(&shared);
}

/// What one client received.
struct Tally {
    /// The next seq expected from each sender.
    next: Vec<u64>,
    latencies: Vec<u64>,
    received: u64,
    in_window: u64,
    duplicates: u64,
    received_from: Vec<u64>,
    duplicates_from: Vec<u64>,
}

impl Tally {
    fn new(schedule: &Schedule) -> Self {
        Self {
            next: vec![0; schedule.senders],
            latencies: Vec::with_capacity(LATENCY_BATCH),
            received: 0,
            in_window: 0,
            duplicates: 0,
            received_from: vec![0; schedule.senders],
            duplicates_from: vec![0; schedule.senders],
        }
    }

    /// Counts one frame received at `now` (since the start).
    fn count(&mut self, frame: &Message, now: Duration, schedule: &Schedule, shared: &Shared) {
        let Some((sender, seq, at)) = frame.as_text().and_then(|line| parse(line, schedule.run))
        else {
            return;
        };
        let Some(expected) = self.next.get_mut(sender) else {
            return;
        };
        if seq < *expected {
            self.duplicates += 1;
            self.duplicates_from[sender] += 1;
            return;
        }
        *expected = seq + 1;
        self.received += 1;
        self.received_from[sender] += 1;
        if schedule.in_window(now) {
            self.in_window += 1;
        }
        if schedule.in_window(at) {
            let latency = now.saturating_sub(at);
            self.latencies.push(as_nanos(latency.min(MAX_LATENCY)).max(1_000));
            if self.latencies.len() == LATENCY_BATCH {
                record(shared, &mut self.latencies);
            }
        }
    }

    fn report(mut self, shared: &Shared) {
        record(shared, &mut self.latencies);
        shared.received.fetch_add(self.received, Ordering::Relaxed);
        shared.received_in_window.fetch_add(self.in_window, Ordering::Relaxed);
        shared.duplicates.fetch_add(self.duplicates, Ordering::Relaxed);
        for (total, mine) in shared.received_from.iter().zip(self.received_from) {
            total.fetch_add(mine, Ordering::Relaxed);
        }
        for (total, mine) in shared.duplicates_from.iter().zip(self.duplicates_from) {
            total.fetch_add(mine, Ordering::Relaxed);
        }
    }
}

fn all_seen(next: &[u64], last: &[u64]) -> bool {
    next.iter().zip(last).all(|(next, last)| next >= last)
}

fn record(shared: &Shared, latencies: &mut Vec<u64>) {
    let mut histogram = shared.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for &latency in latencies.iter() {
        histogram.saturating_record(latency);
    }
    latencies.clear();
}

/// Reads `NAME: RRRRRRRR SSSS QQQQQQQQQQ TTTTTTTTTTTTTTTT ...` of run `run`.
fn parse(line: &str, run: u32) -> Option<(usize, u64, Duration)> {
    // "name: text", where the benchmark's unnamed clients' names hold no
    // space (a char search is cheaper than one for ": ").
    let (from, text) = line.split_once(' ')?;
    from.strip_suffix(':')?;
    let header = text.get(..HEADER_LEN)?;
    if u32::from_str_radix(header.get(0..8)?, 16).ok()? != run {
        return None;
    }
    let sender = header.get(9..13)?.parse().ok()?;
    let seq = header.get(14..24)?.parse().ok()?;
    let at = header.get(25..41)?.parse().ok()?;
    Some((sender, seq, Duration::from_nanos(at)))
}

/// A random id for this run, from the standard library's randomly keyed hasher.
fn run_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let hash = std::collections::hash_map::RandomState::new().build_hasher().finish();
    u32::try_from(hash & u64::from(u32::MAX)).unwrap_or_default()
}

fn as_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The soft limit on open files, from /proc.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A process's resident memory in KiB, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A process's CPU time so far (user + system, all threads), in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lost_pct = if self.deliveries_expected == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / self.deliveries_expected as f64
        };
        writeln!(f, "clients              {} ({} senders)", self.clients, self.senders)?;
        writeln!(
            f,
            "load                 {} messages/s of {} B for {} s",
            self.rate, self.payload, self.duration_s
        )?;
        writeln!(f, "messages sent        {}", self.messages_sent)?;
        writeln!(f, "deliveries expected  {}", self.deliveries_expected)?;
        writeln!(f, "deliveries received  {}", self.deliveries_received)?;
        writeln!(
            f,
            "lost                 {} ({lost_pct:.3}%), duplicates {}",
            self.lost, self.duplicates
        )?;
        if self.lost > 0 || self.duplicates > 0 {
            writeln!(f, "lost per sender      {:?}", self.lost_per_sender)?;
            writeln!(f, "dups per sender      {:?}", self.duplicates_per_sender)?;
        }
        writeln!(f, "delivered per second {:.0}", self.delivered_per_s)?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "latency ms           p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        if let Some(rss) = &self.server_rss_kib {
            writeln!(
                f,
                "server RSS KiB       before {}  connected {}  after {}",
                rss.before, rss.connected, rss.after
            )?;
        }
        if let (Some(cpu), Some(per)) = (self.server_cpu_s, self.server_cpu_us_per_delivery) {
            writeln!(f, "server CPU           {cpu:.2} s, {per:.3} µs per delivery")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_back() {
        let text = format!(
            "127.0.0.1:5000: {:08x} {:04} {:010} {:016} {}",
            0xbeef,
            7,
            42,
            1_234_567,
            "x".repeat(10)
        );
        assert_eq!(parse(&text, 0xbeef), Some((7, 42, Duration::from_nanos(1_234_567))));
        assert_eq!(parse(&text, 0xbeee), None, "another run's message");
        assert_eq!(parse("* 127.0.0.1:1 joined", 0xbeef), None);
        assert_eq!(parse("a: short", 0xbeef), None);
    }

    #[test]
    fn the_schedule_spreads_senders_over_the_rate() {
        let schedule = Schedule {
            run: 1,
            start: Instant::now(),
            senders: 4,
            rate: 1000,
            window_start: Duration::ZERO,
            window_end: Duration::from_secs(1),
        };
        assert_eq!(schedule.at(0, 0), Duration::ZERO);
        assert_eq!(schedule.at(1, 0), Duration::from_millis(1));
        assert_eq!(schedule.at(0, 1), Duration::from_millis(4));
        assert_eq!(schedule.at(3, 249), Duration::from_millis(999));
    }
}
