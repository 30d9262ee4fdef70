//! The server's settings: command-line flags with their environment twins,
//! their defaults, and the fixed bounds next to them.
//!
//! Flags are parsed and checked once here; the rest of the crate trusts them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches as _};

use crate::protocol::MAX_MESSAGE_BYTES_LIMIT;
use crate::server::limit::RateLimit;
use crate::util::parse_seconds;
use clap::builder::TypedValueParser as _;

/// Default `--host`.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Default `--port`.
pub const DEFAULT_PORT: u16 = 8080;
/// Default `--max-lag`: messages a client may fall behind before it misses some.
pub const DEFAULT_MAX_LAG: usize = 1024;
/// Default `--history`: messages a room keeps for those who join later.
pub const DEFAULT_HISTORY: usize = 100;
/// Default `--max-lag-bytes`.
pub const DEFAULT_MAX_LAG_BYTES: usize = 4 * 1024 * 1024;
/// Default `--history-bytes`.
pub const DEFAULT_HISTORY_BYTES: usize = 1024 * 1024;
/// Default `--max-memory`.
pub const DEFAULT_MAX_MEMORY: usize = 256 * 1024 * 1024;
/// `--max-memory` is at least this times `--max-message-bytes`: a message
/// costs up to 6 times its text (text and JSON, in history and ring), and
/// freeing memory leaves 1/8 of the total free for rooms.
pub const MEMORY_PER_MESSAGE_BYTE: usize = 64;
/// Rooms (histories, frames not taken yet) may hold `--max-memory` less
/// 1/this of it; the rest is left to what connections hold for their client
/// alone (join replays, `/history` answers), so that these still fit when
/// rooms are full.
pub const CONNECTION_SHARE: usize = 8;
/// Default `--presence-limit`: rooms up to this size announce each join and leave.
pub const DEFAULT_PRESENCE_LIMIT: usize = 100;
/// How often large rooms get a summary of who joined and left.
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(1);
/// Default `--max-message-bytes`: the largest text frame a client may send.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Default `--jwt-leeway`: the clocks of a token's issuer and of this
/// server may differ by this much.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);
/// Largest `--jwt-leeway`: a day is already no expiry to speak of, and a
/// leeway past the clock's own count would turn jsonwebtoken's check around.
pub const MAX_JWT_LEEWAY: Duration = Duration::from_hours(24);
/// Default `--ping-interval`.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Default `--ping-timeout`.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_mins(1);
/// Default `--batch-window`.
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Largest `--batch-window`: longer would make a busy room feel slow.
pub const MAX_BATCH_WINDOW: Duration = Duration::from_secs(1);
/// Default `--slow-client-timeout`.
pub const DEFAULT_SLOW_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `--rate-limit`, in messages per second.
pub const DEFAULT_RATE_LIMIT: u32 = 20;
/// Default `--burst`.
pub const DEFAULT_BURST: u32 = 50;
/// Pings per second a client may send on average; past it (after
/// [`PING_BURST`]) for `--flood-grace`, it is closed with 1008 "too many
/// pings". Browsers and tools ping every few seconds at most.
pub const MAX_PINGS_PER_SECOND: u32 = 10;
/// Pings a client may send at once.
pub const PING_BURST: u32 = 20;
/// Default `--flood-grace`.
pub const DEFAULT_FLOOD_GRACE: Duration = Duration::from_secs(10);
/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Connections past `--max-connections` that are read to be answered 503 at
/// the same time; further ones are closed without an answer.
pub const MAX_PENDING_REFUSALS: usize = 64;
/// Bytes a frame may hold beyond three times `--max-message-bytes`: the JSON
/// request around the text.
pub const FRAME_OVERHEAD: usize = 1024;
/// Largest HTTP request head (request line and headers) the server reads.
pub const MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;
/// Largest body of an HTTP API request; past it, 413. A publish's may be
/// larger: three times `--max-message-bytes` plus [`FRAME_OVERHEAD`], a
/// WebSocket frame's bound, so that a text of that size fits with its JSON
/// escapes.
pub const MAX_API_BODY_BYTES: usize = 64 * 1024;
/// An HTTP API connection must send each request head within this time
/// after the previous answer (or its start): also how long an idle
/// keep-alive connection is kept.
pub const API_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// An HTTP API request's body must arrive within this time.
pub const API_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP API connection is closed (after its request in progress) once
/// this old, so that none holds its connection slot for ever.
pub const API_CONNECTION_LIFETIME: Duration = Duration::from_mins(10);
/// Messages per second the HTTP API may publish on average, all its
/// connections together; past it (after [`API_PUBLISH_BURST`]), 429 with
/// Retry-After.
pub const API_PUBLISHES_PER_SECOND: u32 = 50;
/// Messages the HTTP API may publish at once after being quiet.
pub const API_PUBLISH_BURST: u32 = 100;
/// Most rooms `GET /api/rooms` lists (by name); `more` says whether there
/// are others.
pub const API_ROOMS_LISTED: usize = 1000;
/// How long a ticket from `POST /api/ticket` may be used to connect.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(30);
/// Tickets not used yet, at most (each holds its token's claims, up to
/// some 16 KiB); past it (once the expired are gone), the exchange answers
/// 503 with Retry-After. A page uses its ticket within milliseconds.
pub const MAX_TICKETS: usize = 1024;
/// Tickets one address (an IPv6 /64), and one token's `sub`, may have
/// waiting: a page needs one at a time, and one holder of a token must not
/// take every place.
pub const MAX_TICKETS_EACH: usize = 16;
/// A connection must finish its HTTP upgrade within this time (slowloris guard).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames taken from the room channel before one write to the socket: bounds
/// what one connection queues in memory while keeping writes large.
pub const MAX_BATCH: usize = 256;
/// Bytes of room frames taken for one write (at least one frame): with
/// `--max-lag-bytes`, the most a client that does not read holds up.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Frames in one write that mark a client busy: its room frames are then
/// gathered for `--batch-window` before the next write.
pub const BUSY_BATCH: usize = 4;
/// How long a closing connection waits for its peer to take the Close frame.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long shutdown waits for connections to close before returning; under the
/// 5 s a supervisor usually allows.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);
/// How long shutdown waits for the store to write what is queued, after
/// the connections closed.
pub const STORE_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// First wait after a failed `accept` (for example out of file descriptors);
/// doubles on each failure in a row.
pub const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(10);
/// Longest wait between two `accept` attempts.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Default `--max-handshakes`: connections in their handshake (TLS, then the
/// HTTP request head) at once, from all addresses together.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// Default `--max-handshakes-per-ip`: an office behind one NAT opens a few at
/// a time; a slow-header attack from one address is held to this many.
pub const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = 64;
/// Default `--max-connections-per-ip`: room for an office of a few hundred
/// people behind one NAT, a tab or two each.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default `--joins-per-ip`: joins and resumes per second from one address,
/// in bursts of as many; each replays at most `--history-bytes`.
pub const DEFAULT_JOINS_PER_IP: u32 = 64;
/// Default `--auth-failures-per-ip`: failed authentications per minute from
/// one address, in bursts of as many, before it gets 429.
pub const DEFAULT_AUTH_FAILURES_PER_IP: u32 = 64;
/// How long a connection past a per-address or the overall handshake cap is
/// told to wait (`Retry-After`), in seconds.
pub const BUSY_RETRY_AFTER_SECONDS: u64 = 2;
/// `Retry-After` of an API request turned away for a moment (the publish
/// rate, memory short, the link to the other nodes down).
pub const API_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Default `--db`: the store beside the server. The library's
/// [`ServerConfig::default`] uses [`MEMORY_DB`] instead, so that tests keep
/// nothing on disk: the one deliberate difference from the binary's defaults.
pub const DEFAULT_DB: &str = "chat.db";
/// The `--db` that keeps the store in memory only (SQLite's own name).
pub const MEMORY_DB: &str = ":memory:";
/// Default `--keep-messages`: messages the store keeps per room.
pub const DEFAULT_KEEP_MESSAGES: u64 = 10_000;
/// Default `--keep-for`: how long the store (or Redis) keeps a message.
pub const DEFAULT_KEEP_FOR: Duration = Duration::from_hours(30 * 24);
/// Default `--db-max-bytes`: message bytes (text and sender) the whole
/// store keeps.
pub const DEFAULT_DB_MAX_BYTES: usize = 1024 * 1024 * 1024;
/// Default `--db-queue-bytes`: message bytes waiting for the store's writer.
pub const DEFAULT_DB_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// A default's text for clap, written once from its constant by `$show`
/// (what `default_value_t` does for types whose text is what they parse).
macro_rules! shown {
    ($value:expr, $show:path) => {{
        static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        TEXT.get_or_init(|| $show($value)).as_str()
    }};
}

/// Server flags. Their defaults are declared here only: [`ServerConfig::default`]
/// parses no flags.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address or host name to listen on (`localhost` binds its first
    /// address).
    #[arg(long, env = "CHAT_HOST", default_value = DEFAULT_HOST,
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub host: String,

    /// Port to listen on; 0 picks a free one.
    #[arg(long, env = "CHAT_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Frames a client may fall behind its room before it misses some and
    /// is told how many; nothing is allocated up front.
    #[arg(long, env = "CHAT_MAX_LAG", default_value_t = DEFAULT_MAX_LAG,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576).map(|v| v as usize))]
    pub max_lag: usize,

    /// Messages each room keeps and shows to whoever joins; 0 turns history off.
    #[arg(long, env = "CHAT_HISTORY", default_value_t = DEFAULT_HISTORY,
          value_parser = clap::value_parser!(u32).range(0..=100_000).map(|v| v as usize))]
    pub history: usize,

    /// Bytes of frames (every protocol's encoding counted) a client may
    /// fall behind before it misses messages and is told how many: with
    /// `--max-lag`, the most a client that does not read can hold up.
    /// Accepts units: `4MiB`, `512KiB`.
    #[arg(long, env = "CHAT_MAX_LAG_BYTES", default_value = shown!(DEFAULT_MAX_LAG_BYTES, size_text),
          value_parser = parse_bytes)]
    pub max_lag_bytes: usize,

    /// Bytes each room's history may hold, every encoding counted; the
    /// oldest messages go first past it. Also the most a join or a resume
    /// is replayed.
    #[arg(long, env = "CHAT_HISTORY_BYTES", default_value = shown!(DEFAULT_HISTORY_BYTES, size_text),
          value_parser = parse_bytes)]
    pub history_bytes: usize,

    /// Bytes of frames the server may hold for its clients: rooms'
    /// histories, frames not taken or not written yet, join replays and
    /// `/history` answers not written yet. Rooms may fill 7/8 of it; past
    /// that, the oldest history (of any room) goes first, then clients too
    /// far behind miss messages; a message that still does not fit is
    /// refused with `server_full`. A replay is cut to what fits, a
    /// `/history` answer that does not fit refused.
    #[arg(long, env = "CHAT_MAX_MEMORY", default_value = shown!(DEFAULT_MAX_MEMORY, size_text),
          value_parser = parse_bytes)]
    pub max_memory: usize,

    /// Largest room whose joins and leaves are announced one by one; larger
    /// rooms get a summary every second instead.
    #[arg(long, env = "CHAT_PRESENCE_LIMIT", default_value_t = DEFAULT_PRESENCE_LIMIT)]
    pub presence_limit: usize,

    /// Most chat connections at once; past it, upgrades get HTTP 503 and
    /// existing clients are untouched.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|v| v as usize))]
    pub max_connections: usize,

    /// Seconds between two pings to a client.
    #[arg(long, env = "CHAT_PING_INTERVAL", default_value = shown!(DEFAULT_PING_INTERVAL, seconds_text),
          value_parser = parse_positive_seconds)]
    pub ping_interval: Duration,

    /// Seconds a client may stay silent (not even answering pings) before it
    /// is closed with code 1008 and its leave is announced.
    #[arg(long, env = "CHAT_PING_TIMEOUT", default_value = shown!(DEFAULT_PING_TIMEOUT, seconds_text),
          value_parser = parse_positive_seconds)]
    pub ping_timeout: Duration,

    /// Seconds a busy client's room frames are gathered for after a write
    /// before the next one (at most 1): one write then carries many frames,
    /// which costs both ends far less than a write each. A client is busy
    /// when its last write carried 4 frames or more; one that gets a few
    /// frames at a time gets each at once, and a client's own echo and
    /// answers are never held. 0 writes whenever frames are pending.
    #[arg(long, env = "CHAT_BATCH_WINDOW", default_value = shown!(DEFAULT_BATCH_WINDOW, seconds_text),
          value_parser = parse_batch_window)]
    pub batch_window: Duration,

    /// Seconds a client may leave the server unable to write to it (its
    /// socket full) before it is closed with code 1008 "too slow"; it can
    /// reconnect.
    #[arg(long, env = "CHAT_SLOW_CLIENT_TIMEOUT", default_value = shown!(DEFAULT_SLOW_CLIENT_TIMEOUT, seconds_text),
          value_parser = parse_positive_seconds)]
    pub slow_client_timeout: Duration,

    /// Messages per second a client may send on average; past it messages are
    /// dropped with a `! slow down` notice. 0 turns limiting off (benchmarks).
    #[arg(long, env = "CHAT_RATE_LIMIT", default_value_t = DEFAULT_RATE_LIMIT)]
    pub rate_limit: u32,

    /// Messages a client may send at once after a quiet spell (a paste).
    #[arg(long, env = "CHAT_BURST", default_value_t = DEFAULT_BURST,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub burst: u32,

    /// Seconds a client may stay over the rate limit before it is closed with
    /// code 1008.
    #[arg(long, env = "CHAT_FLOOD_GRACE", default_value = shown!(DEFAULT_FLOOD_GRACE, seconds_text),
          value_parser = parse_positive_seconds)]
    pub flood_grace: Duration,

    /// An origin (`https://chat.example.com`) whose pages may connect, besides
    /// the server's own; repeat it, or separate them with commas in the
    /// environment. Requests with another Origin header get HTTP 403;
    /// requests without one (terminal tools) are not affected.
    #[arg(long, env = "CHAT_ALLOW_ORIGIN", value_delimiter = ',')]
    pub allow_origin: Vec<String>,

    /// A shared secret every client must present (`Authorization: Bearer`, or
    /// `?token=` from a browser); others get HTTP 401. Never logged. An
    /// empty one is refused: it would lock everyone out.
    #[arg(long, env = "CHAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// A secret that HS256 identity tokens (JWT) are signed with: clients
    /// present one as `--token`'s is presented, and their name and rooms
    /// come from it (see README, "Identity and access"). Not with `--token`
    /// or `--jwt-public-key`. Never logged.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true,
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub jwt_secret: Option<String>,

    /// Enables the HTTP API for programs under `/api/` (see README, "HTTP
    /// API"): requests carry `Authorization: Bearer KEY`. Without it,
    /// `/api/` answers 404. Never logged.
    #[arg(long, env = "CHAT_API_KEY", hide_env_values = true, value_parser = parse_api_key)]
    pub api_key: Option<ApiKey>,

    /// A PEM file with the public key that identity tokens (JWT) are signed
    /// with: RS256 for an RSA key, ES256 for an EC P-256 key. As
    /// `--jwt-secret` otherwise.
    #[arg(long, env = "CHAT_JWT_PUBLIC_KEY", value_name = "FILE",
          value_parser = crate::server::identity::parse_public_key)]
    pub jwt_public_key: Option<crate::server::identity::PublicKey>,

    /// Seconds a token is still taken after its `exp` (clocks differ); an
    /// open connection is closed with code 4002 once `exp` plus this is past.
    #[arg(long, env = "CHAT_JWT_LEEWAY",
          default_value = shown!(DEFAULT_JWT_LEEWAY, seconds_text),
          value_parser = parse_seconds)]
    pub jwt_leeway: Duration,

    /// With a JWT key: let in clients without a token, as guests, whose
    /// names start with `~` (which no other name may hold).
    #[arg(long, env = "CHAT_GUESTS")]
    pub guests: bool,

    /// Largest message a client may send, in UTF-8 bytes of its text; a
    /// longer one is refused with an error and the connection stays up.
    /// Frames over three times this plus 1 KiB (room for JSON escapes) close
    /// the connection with code 1009.
    #[arg(long, env = "CHAT_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES,
          value_parser = clap::value_parser!(u32).range(1..=MAX_MESSAGE_BYTES_LIMIT as i64).map(|v| v as usize))]
    pub max_message_bytes: usize,

    /// Certificate chain (PEM) to serve `wss://` and `https://` with; needs
    /// `--tls-key`.
    #[arg(long, env = "CHAT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, env = "CHAT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Shares rooms with every other server started with the same Redis
    /// (`redis://HOST:PORT`); without it, this server is on its own and needs
    /// nothing else.
    #[arg(long, env = "CHAT_REDIS_URL", hide_env_values = true)]
    pub redis: Option<String>,

    /// Most connections in their handshake (TLS, then the HTTP request head,
    /// within 10 s) at once; past it, new ones are told 503 (or, over TLS,
    /// closed). Chat connections do not count.
    #[arg(long, env = "CHAT_MAX_HANDSHAKES", default_value_t = DEFAULT_MAX_HANDSHAKES,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|v| v as usize))]
    pub max_handshakes: usize,

    /// Most connections in their handshake from one address (an IPv6 /64)
    /// at once; past it, new ones are told 429 (or, over TLS, closed).
    /// Trusted proxies are exempt. 0 turns it off (benchmarks).
    #[arg(long, env = "CHAT_MAX_HANDSHAKES_PER_IP", default_value_t = DEFAULT_MAX_HANDSHAKES_PER_IP)]
    pub max_handshakes_per_ip: usize,

    /// Most chat connections from one address (an IPv6 /64) at once; past
    /// it, upgrades get HTTP 429. 0 turns it off (benchmarks).
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_IP", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,

    /// Joins and resumes per second from one address, in bursts of as many;
    /// past it, upgrades get HTTP 429 with Retry-After. 0 turns it off.
    #[arg(long, env = "CHAT_JOINS_PER_IP", default_value_t = DEFAULT_JOINS_PER_IP)]
    pub joins_per_ip: u32,

    /// Failed authentications (wrong or missing `--token`) per minute from
    /// one address, in bursts of as many; past it, the address gets HTTP 429
    /// with Retry-After, and no token is checked. 0 turns it off.
    #[arg(long, env = "CHAT_AUTH_FAILURES_PER_IP", default_value_t = DEFAULT_AUTH_FAILURES_PER_IP)]
    pub auth_failures_per_ip: u32,

    /// A proxy (`10.0.0.0/8`, `::1`) whose `X-Forwarded-For` names the client
    /// for every per-address rule; repeat it, or separate them with commas
    /// in the environment.
    #[arg(long, env = "CHAT_TRUSTED_PROXY", value_delimiter = ',',
          value_parser = crate::server::address::parse_proxy)]
    pub trusted_proxy: Vec<ipnet::IpNet>,

    /// A public origin of this server (`https://chat.example.com`), as
    /// browsers see it behind a proxy; repeat it, or separate them with
    /// commas in the environment. Pages from it may connect.
    #[arg(long, env = "CHAT_PUBLIC_URL", value_delimiter = ',')]
    pub public_url: Vec<crate::server::origin::PublicUrl>,

    /// SQLite file that keeps every room's messages, numbering and epoch
    /// across restarts; `:memory:` keeps them in memory only. Not used with
    /// --redis, where Redis keeps them.
    #[arg(long, env = "CHAT_DB", default_value = DEFAULT_DB)]
    pub db: PathBuf,

    /// Messages the store keeps per room, the oldest going first (with
    /// --redis: --history is the stream's length instead).
    #[arg(long, env = "CHAT_KEEP_MESSAGES", default_value_t = DEFAULT_KEEP_MESSAGES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_messages: u64,

    /// How long a message is kept, in the store or in Redis (`30d`, `12h`,
    /// `90s`). With --redis, a room's keys expire this long after its last
    /// message.
    #[arg(long, env = "CHAT_KEEP_FOR", default_value = shown!(DEFAULT_KEEP_FOR, duration_text),
          value_parser = parse_keep_for)]
    pub keep_for: Duration,

    /// Message bytes (text and sender names) the whole store keeps, the
    /// oldest messages of any room going first. With `--db :memory:`, at
    /// most --max-memory.
    #[arg(long, env = "CHAT_DB_MAX_BYTES", default_value = shown!(DEFAULT_DB_MAX_BYTES, size_text),
          value_parser = parse_bytes)]
    pub db_max_bytes: usize,

    /// Message bytes waiting for the store's writer. Past it, messages are
    /// still delivered but not stored (counted in /metrics).
    #[arg(long, env = "CHAT_DB_QUEUE_BYTES", default_value = shown!(DEFAULT_DB_QUEUE_BYTES, size_text),
          value_parser = parse_bytes)]
    pub db_queue_bytes: usize,
}

/// `--api-key`: shown as `ApiKey(..)`, so that no Debug of the
/// configuration prints it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Whether `presented` is the key, compared in constant time so that
    /// timing does not reveal how much of it matched.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        // Digests of equal length: comparing the keys themselves would
        // return at once on a length that differs, telling the key's length.
        let digest = |text: &str| sha1_smol::Sha1::from(text).digest().bytes();
        bool::from(digest(presented).ct_eq(&digest(&self.0)))
    }
}

impl From<&str> for ApiKey {
    fn from(key: &str) -> Self {
        Self(key.to_owned())
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

/// `--api-key`: not empty (it would let anyone in), one line.
fn parse_api_key(text: &str) -> Result<ApiKey, String> {
    if text.trim().is_empty() || text.chars().any(char::is_control) {
        return Err("must be a non-empty key without control characters".into());
    }
    Ok(ApiKey(text.to_owned()))
}

/// What each connection enforces on its client: that it is still there,
/// keeps up with its room, and does not flood it.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time between pings.
    pub ping_interval: Duration,
    /// Silence after which the client is closed.
    pub ping_timeout: Duration,
    /// How long a write to the client may stay blocked before it is closed.
    pub slow_client: Duration,
    /// How long a busy client's frames are gathered after a write.
    pub batch_window: Duration,
    /// How much the client may send.
    pub rate: RateLimit,
    /// Largest message text, in bytes.
    pub max_message_bytes: usize,
}

impl ServerConfig {
    /// `--max-memory` must hold several of the largest messages (each kept
    /// in both encodings, in its room's history and ring), or a message
    /// allowed by `--max-message-bytes` could be refused for ever.
    pub fn check_memory(&self) -> Result<(), String> {
        let least = MEMORY_PER_MESSAGE_BYTE * self.max_message_bytes;
        if self.max_memory < least {
            return Err(format!(
                "--max-memory (CHAT_MAX_MEMORY) must be at least {least} bytes: \
                 {MEMORY_PER_MESSAGE_BYTE} times --max-message-bytes"
            ));
        }
        Ok(())
    }

    /// The identity flags go together as documented: one JWT key at most,
    /// not with `--token` (two ways to admit would be one too many), and
    /// `--guests` only with a key.
    pub fn check_identity(&self) -> Result<(), String> {
        let jwt = self.jwt_secret.is_some() || self.jwt_public_key.is_some();
        if self.jwt_secret.is_some() && self.jwt_public_key.is_some() {
            return Err("--jwt-secret and --jwt-public-key cannot be used together".into());
        }
        if jwt && self.token.is_some() {
            return Err("--token cannot be used with --jwt-secret or --jwt-public-key".into());
        }
        if self.jwt_leeway > MAX_JWT_LEEWAY {
            return Err(format!(
                "--jwt-leeway (CHAT_JWT_LEEWAY) must be at most {} seconds",
                MAX_JWT_LEEWAY.as_secs()
            ));
        }
        if self.guests && !jwt {
            return Err("--guests needs --jwt-secret or --jwt-public-key".into());
        }
        Ok(())
    }

    /// The flood control settings.
    pub fn rate_limit(&self) -> RateLimit {
        RateLimit { per_second: self.rate_limit, burst: self.burst, grace: self.flood_grace }
    }

    /// What each connection enforces.
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            slow_client: self.slow_client_timeout,
            batch_window: self.batch_window,
            rate: self.rate_limit(),
            max_message_bytes: self.max_message_bytes,
        }
    }

    /// What clients are told of these limits in their welcome.
    pub fn wire_limits(&self) -> crate::protocol::Limits {
        crate::protocol::Limits {
            per_second: self.rate_limit,
            burst: self.burst,
            max_bytes: self.max_message_bytes,
        }
    }

    /// Largest frame read: a message's text at its largest, with room for
    /// JSON's escapes. An encoder that writes every non-ASCII character as
    /// `\uXXXX` (Python's `json.dumps`, for one) makes a 2-byte `é` 6 bytes,
    /// and a 4-byte emoji 12: three times the text at most. Control
    /// characters, which would make 1 byte 6, are refused anyway.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_message_bytes * 3 + FRAME_OVERHEAD
    }
}

impl Default for ServerConfig {
    /// What no flags give, whatever the environment holds.
    fn default() -> Self {
        let matches =
            defaults_command().try_get_matches_from(["server"]).expect("the defaults parse");
        let config = Self::from_arg_matches(&matches).expect("the defaults are a configuration");
        // Deliberately not the binary's default (see DEFAULT_DB).
        Self { db: MEMORY_DB.into(), ..config }
    }
}

/// The server's flags without their environment twins.
fn defaults_command() -> clap::Command {
    ServerConfig::augment_args(clap::Command::new("server")).mut_args(|arg| arg.env(None))
}

/// A size as `--max-memory` and the like take it, in the largest binary unit
/// that divides it (`4MiB`).
fn size_text(bytes: usize) -> String {
    [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        .into_iter()
        .find(|(unit, _)| bytes > 0 && bytes.is_multiple_of(*unit))
        .map_or_else(|| bytes.to_string(), |(unit, name)| format!("{}{name}", bytes / unit))
}

/// A duration as `--keep-for` takes it (`30days`).
fn duration_text(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// `--keep-for`: a duration with its unit, more than 0.
fn parse_keep_for(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if duration < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(duration)
}

/// A duration as the flags take it, in seconds (`30`, `0.02`).
fn seconds_text(duration: Duration) -> String {
    duration.as_secs_f64().to_string()
}

/// A size in bytes, with an optional unit (`64KiB`, `4MiB`, `1GB`).
fn parse_bytes(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text.parse()?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{text:?} is too large"))
}

fn parse_batch_window(text: &str) -> Result<Duration, String> {
    let window = parse_seconds(text)?;
    if window > MAX_BATCH_WINDOW {
        return Err(format!("must be at most {} s", MAX_BATCH_WINDOW.as_secs()));
    }
    Ok(window)
}

fn parse_positive_seconds(text: &str) -> Result<Duration, String> {
    let duration = parse_seconds(text)?;
    if duration.is_zero() {
        return Err("must be more than 0 seconds".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_what_no_flags_give() {
        let config = ServerConfig::default();
        assert_eq!(config.host, DEFAULT_HOST);
        assert_eq!(config.port, DEFAULT_PORT);
        assert_eq!(config.max_lag, DEFAULT_MAX_LAG);
        assert_eq!(config.max_lag_bytes, DEFAULT_MAX_LAG_BYTES);
        assert_eq!(config.history_bytes, DEFAULT_HISTORY_BYTES);
        assert_eq!(config.max_memory, DEFAULT_MAX_MEMORY);
        assert_eq!(config.ping_interval, DEFAULT_PING_INTERVAL);
        assert_eq!(config.ping_timeout, DEFAULT_PING_TIMEOUT);
        assert_eq!(config.batch_window, DEFAULT_BATCH_WINDOW);
        assert_eq!(config.slow_client_timeout, DEFAULT_SLOW_CLIENT_TIMEOUT);
        assert_eq!(config.flood_grace, DEFAULT_FLOOD_GRACE);
        assert_eq!(config.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(config.auth_failures_per_ip, DEFAULT_AUTH_FAILURES_PER_IP);
        assert_eq!(config.db, std::path::Path::new(MEMORY_DB), "tests keep nothing on disk");
        assert_eq!(config.keep_messages, DEFAULT_KEEP_MESSAGES);
        assert_eq!(config.keep_for, DEFAULT_KEEP_FOR);
        assert_eq!(config.db_max_bytes, DEFAULT_DB_MAX_BYTES);
        assert_eq!(config.db_queue_bytes, DEFAULT_DB_QUEUE_BYTES);
        assert!(config.token.is_none() && config.redis.is_none() && config.tls_cert.is_none());
        assert!(config.allow_origin.is_empty() && config.trusted_proxy.is_empty());
        config.check_memory().expect("the defaults fit in memory");
    }

    // So CHAT_PORT and the like, set for the process, do not leak into it.
    #[test]
    fn a_leeway_past_a_day_is_refused() {
        let secret = Some("s3cret".into());
        let config = ServerConfig {
            jwt_secret: secret,
            jwt_leeway: MAX_JWT_LEEWAY,
            ..ServerConfig::default()
        };
        assert_eq!(config.check_identity(), Ok(()));
        let config = ServerConfig { jwt_leeway: MAX_JWT_LEEWAY * 2, ..config };
        let error = config.check_identity().expect_err("refused");
        assert!(error.starts_with("--jwt-leeway"), "{error}");
    }

    #[test]
    fn the_api_key_is_never_shown() {
        let config = ServerConfig { api_key: Some(ApiKey::from("s3cret")), ..Default::default() };
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(parse_api_key("").is_err() && parse_api_key(" ").is_err());
        assert!(
            parse_api_key("s3cret").is_ok_and(|key| key.matches("s3cret") && !key.matches("s3"))
        );
    }

    #[test]
    fn the_default_reads_no_environment() {
        assert!(defaults_command().get_arguments().all(|arg| arg.get_env().is_none()));
        let flags = ServerConfig::augment_args(clap::Command::new("server"));
        let port = flags.get_arguments().find(|arg| arg.get_id() == "port").expect("--port");
        assert_eq!(port.get_env(), Some(std::ffi::OsStr::new("CHAT_PORT")));
    }

    #[test]
    fn defaults_are_shown_as_they_are_written() {
        assert_eq!(size_text(DEFAULT_MAX_LAG_BYTES), "4MiB");
        assert_eq!(size_text(DEFAULT_MAX_MEMORY), "256MiB");
        assert_eq!(size_text(1536), "1536");
        assert_eq!(seconds_text(DEFAULT_PING_TIMEOUT), "60");
        assert_eq!(seconds_text(DEFAULT_BATCH_WINDOW), "0.02");
        assert_eq!(duration_text(DEFAULT_KEEP_FOR), "30days");
        assert_eq!(parse_keep_for("30days"), Ok(DEFAULT_KEEP_FOR));
        assert!(parse_keep_for("0s").is_err() && parse_keep_for("soon").is_err());
    }
}
