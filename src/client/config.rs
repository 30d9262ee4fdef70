//! The client's settings: command-line flags with their environment twins,
//! their defaults, and the fixed bounds next to them.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::protocol::MAX_MESSAGE_BYTES_LIMIT;
use crate::util::parse_seconds;

/// Default server URL of the client.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:8080/";
/// Longest stdin line the client reads: the largest `--max-message-bytes`
/// a server can have. Lines over the server's own limit, which it tells the
/// client when it joins, are refused locally.
pub const MAX_LINE_BYTES: usize = MAX_MESSAGE_BYTES_LIMIT;
/// Lines read from stdin waiting to be sent, in the queue from the reading
/// thread and again in the client while it is disconnected.
pub const LINE_QUEUE: usize = 64;
/// Bytes of typed lines the terminal client holds between its line editor
/// and the line queue: the editor never waits for room, so that Ctrl-D and
/// `/quit` always work; a line past this is refused with a notice.
pub const TYPED_BYTES: usize = 1024 * 1024;
/// Lines sent and not answered yet: past it, the client waits for answers
/// before sending more (each is kept until answered, to send it again if the
/// server says `slow down`).
pub const MAX_IN_FLIGHT: usize = 64;

/// The client's first wait before reconnecting; each failed attempt doubles
/// it, up to [`RECONNECT_MAX_DELAY`], and each wait is drawn at random between
/// half and all of it, so clients of a restarted server do not return at once.
pub const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between two reconnection attempts.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(30);
/// The longest `Retry-After` the client obeys before reconnecting.
pub const MAX_RETRY_AFTER: Duration = Duration::from_mins(5);

/// Client flags.
#[derive(Debug, Clone, Args)]
// Each bool is a flag of its own, as websocat's are.
#[allow(clippy::struct_excessive_bools)]
pub struct ClientConfig {
    /// Server to join; the path names the room (`ws://HOST:PORT/rust`).
    #[arg(env = "CHAT_URL", default_value = DEFAULT_URL)]
    pub url: String,

    /// Name to join with (sent as `?name=`); the server uses your address without it.
    #[arg(long, env = "CHAT_NAME")]
    pub name: Option<String>,

    /// The server's shared secret, if it requires one (sent as `Authorization: Bearer`).
    #[arg(long, env = "CHAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Certificates (PEM) to trust for `wss://`, besides the system's: for a
    /// server with a private or self-signed certificate.
    #[arg(long, env = "CHAT_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// Reconnection attempts in a row, after the connection is lost, before
    /// giving up; 0 never reconnects. Unlimited when not given.
    #[arg(long, env = "CHAT_RETRIES")]
    pub retries: Option<u32>,

    /// Seconds to wait, after stdin ends, for the echoes and the server's
    /// close; and, if the server is unreachable then, for it to come back
    /// before giving up on the lines not sent.
    #[arg(long, env = "CHAT_LINGER", default_value = "2", value_parser = parse_seconds)]
    pub linger: Duration,

    /// Print each event as its JSON object, one per line (for `jq`), instead
    /// of its text line.
    #[arg(long, env = "CHAT_JSON")]
    pub json: bool,

    /// Print messages only: no welcome, history markers, joins, leaves or
    /// notices (errors still go to stderr).
    #[arg(short, long, env = "CHAT_QUIET")]
    pub quiet: bool,

    /// Keep printing what the room says after stdin ends, until the server
    /// closes or you press Ctrl-C.
    #[arg(short = 'n', long, env = "CHAT_NO_CLOSE")]
    pub no_close: bool,

    /// Accept any TLS certificate, for a server with a self-signed one;
    /// anyone on the path can then read and change your chat. Warns on stderr.
    #[arg(short = 'k', long, env = "CHAT_INSECURE")]
    pub insecure: bool,
}
