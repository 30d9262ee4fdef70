//! The client: sends stdin lines to the server and prints what it relays, one
//! line per event, in the server's text form (or JSON with `--json`).
//!
//! It speaks the JSON subprotocol, which tells it each message's number and
//! time, its limits and a session secret: when the connection is lost it
//! reconnects on its own, with growing waits, takes its name back and
//! resumes after the last message it printed, so nothing is missed twice or
//! printed twice.
//!
//! Each line is a request whose id is its line number, so the server's
//! answer to it, or its refusal, is known. The client paces itself to the
//! rate the server announces, so no line is dropped as a flood; a line the
//! server still refuses is reported on stderr and makes the exit code 3.
//!
//! With a terminal on both ends it shows a prompt with line editing (rustyline)
//! and prints incoming lines above it, with their local time; otherwise it is a
//! plain filter whose output is exactly the server's text protocol. Either way,
//! what could drive a terminal in what it prints is escaped, so nobody in the
//! room can drive yours.
//!
//! `/history [N]` asks for the N messages before the oldest one seen in the
//! room; the answer is printed as a block (with dates) and never moves where
//! a resume starts.
//!
//! Stdin is read on a plain thread, not a tokio blocking task, so that the
//! process can exit while a read is still pending.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, BufRead, IsTerminal, Read};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Uri;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_rustls::TlsConnector;
use tokio_websockets::{CloseCode, Message};
use tracing::debug;

pub mod config;
mod connect;
mod output;
mod terminal;

pub use connect::CONNECT_TIMEOUT;
pub use output::sanitize;

use crate::protocol::{
    ClientError, Command, Event, Limits, REMOVED_CLOSE_CODE, REPLACED_CLOSE_CODE, Request,
    TOKEN_EXPIRED_CLOSE_CODE, help, parse_command,
};
use config::{
    ClientConfig, LINE_QUEUE, MAX_IN_FLIGHT, MAX_LINE_BYTES, MAX_RETRY_AFTER,
    RECONNECT_FIRST_DELAY, RECONNECT_MAX_DELAY,
};
use connect::{Socket, connect, describe, describe_code, tls_connector};
use output::{Output, Refusal, Style};
use terminal::spawn_editor;

/// Why the client stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL cannot be used.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting or upgrading failed.
    #[error("cannot connect to {url}: {cause}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        cause: String,
        /// Whether trying again later may work: the server is down,
        /// restarting or full.
        temporary: bool,
        /// How long the server asked us to wait (`Retry-After` of a 429 or
        /// 503), as given: not capped.
        retry_after: Option<Duration>,
    },
    /// The connection broke without a Close frame.
    #[error("connection to {url} lost: {cause}")]
    Lost {
        /// The URL.
        url: String,
        /// Why.
        cause: String,
    },
    /// The server closed the connection with an error code.
    #[error("the server closed the connection: {reason} (code {code})")]
    Closed {
        /// The close code.
        code: u16,
        /// The reason the server gave.
        reason: String,
    },
    /// Some lines were not sent; each was reported as it happened.
    #[error("{count} line{s} not sent{why}", s = if *count == 1 { " was" } else { "s were" })]
    Unsent {
        /// How many.
        count: u64,
        /// Why, when it is one reason for all: `": the server is unreachable"`.
        why: String,
    },
    /// In a pipe, the name asked for was refused: nothing was sent.
    #[error("{0}: nothing sent under another name")]
    NameRefused(String),
    /// Stdout or the terminal failed.
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
    /// TLS could not be set up (`--ca-cert`).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

impl Error {
    /// The process's exit code for this error: 3 when lines were not sent,
    /// 1 for anything else (2 is a usage error, from the flag parser).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Unsent { .. } => ExitCode::from(EXIT_UNSENT),
            _ => ExitCode::FAILURE,
        }
    }
}

/// Exit code when some lines were not sent.
pub const EXIT_UNSENT: u8 = 3;

/// What the client knows of its place in the room, to come back to it.
#[derive(Debug, Default)]
struct Session {
    /// Our current name, from the welcome and our renames.
    name: Option<String>,
    /// The room's history epoch, from the welcome.
    epoch: Option<String>,
    /// The last message number printed: where a resume starts.
    seq: Option<u64>,
    /// The lowest message number seen in this epoch (replayed, live or from
    /// `/history`): where the next `/history` pages back from.
    oldest: Option<u64>,
    /// The secret that gets our name back when we reconnect.
    secret: Option<String>,
    /// What the server lets us send.
    limits: Option<Limits>,
    /// In a pipe with `--name`: a name refused before the first welcome
    /// ends the client, rather than posting under the address the server
    /// falls back to.
    strict_name: bool,
    /// Whether a welcome came on any connection.
    welcomed: bool,
    /// Whether the last welcome said we moderate the room.
    moderator: bool,
}

/// Lines on their way to the server.
#[derive(Debug, Default)]
struct Lines {
    /// Lines read and not sent yet, with their numbers: typed while
    /// disconnected, or to be sent again after a `slow down`.
    pending: VecDeque<(u64, String)>,
    /// Lines sent whose answer (ack or error) has not come yet.
    in_flight: VecDeque<(u64, String)>,
    /// The number of the last line read.
    read: u64,
    /// Lines that were not sent, each reported already.
    unsent: u64,
    /// Whether stdin has ended.
    ended: bool,
}

/// Joins the server at `config.url` and chats until stdin ends or the server
/// closes for good, reconnecting when the connection is lost. Returns `Ok`
/// after a normal close with every line sent.
pub async fn run(config: ClientConfig) -> Result<(), Error> {
    // Checked once, before anything else.
    chat_uri(&config.url, config.name.as_deref(), None, None)?;
    let tls = tls_connector(&config)?;
    let interactive = io::stdin().is_terminal() && io::stdout().is_terminal();
    let (tx, mut stdin) = mpsc::channel(LINE_QUEUE);
    let unsent = Arc::new(AtomicU64::new(0));
    let (output, editor) = if interactive {
        let (printer, editor) = spawn_editor(tx)?;
        (Output::Terminal { printer, color: std::env::var_os("NO_COLOR").is_none() }, Some(editor))
    } else {
        spawn_pipe_reader(tx, unsent.clone());
        let style = Style { json: config.json, quiet: config.quiet };
        (Output::Pipe(style), None)
    };
    let output = RefCell::new(output);
    // A name asked for with --name, or in the URL's query.
    let named = config.name.is_some()
        || config.url.split_once('?').is_some_and(|(_, query)| {
            form_urlencoded::parse(query.as_bytes()).any(|(key, _)| key == "name")
        });
    let strict_name = !interactive && named;
    let mut session = Session { name: config.name.clone(), strict_name, ..Session::default() };
    let lines = RefCell::new(Lines::default());

    let chatting = stay_connected(&config, &tls, &mut session, &mut stdin, &lines, &output);
    let result = match editor {
        None => chatting.await,
        Some(mut editor) => {
            // Quitting is watched apart from the lines, so it works in every
            // state: connecting, waiting to reconnect, or with lines queued.
            // Quitting first: it wins over whatever else ended meanwhile.
            let result = tokio::select! {
                biased;
                () = editor.quit_requested() => Ok(()),
                result = chatting => result,
            };
            // The editor's thread may still hold the terminal in raw mode: it
            // is left blocked in its read, and ends with the process.
            editor.restore();
            if let Some(line) = editor.not_sent(stdin.len() + lines.borrow().pending.len()) {
                eprintln!("{line}");
            }
            result
        }
    };
    result?;
    // In a terminal each refusal was shown as it came, under its line, and
    // what was typed and not sent is said on leaving: quitting is not a
    // failure. A script learns it from the exit code.
    let count = lines.borrow().unsent + unsent.load(Ordering::Relaxed);
    if count > 0 && !interactive {
        return Err(Error::Unsent { count, why: String::new() });
    }
    Ok(())
}

/// Connects, and reconnects while the connection is lost, until the end.
async fn stay_connected(
    config: &ClientConfig,
    tls: &TlsConnector,
    session: &mut Session,
    stdin: &mut mpsc::Receiver<String>,
    lines: &RefCell<Lines>,
    output: &RefCell<Output>,
) -> Result<(), Error> {
    let mut failures = 0;
    let mut connected_once = false;
    // Once stdin has ended, how long the server may stay unreachable.
    let mut give_up: Option<Instant> = None;
    loop {
        let failure = match connect(config, tls, session).await {
            Ok(ws) => {
                connected_once = true;
                failures = 0;
                match converse(ws, config, session, stdin, lines, output).await {
                    Ended::Quit => return Ok(()),
                    Ended::Closed { code, reason } => {
                        let reason = if reason.is_empty() { describe_code(code) } else { reason };
                        if code == 1000 {
                            output
                                .borrow_mut()
                                .notice(&format!("the server closed the connection: {reason}"))?;
                            return Ok(());
                        }
                        if matches!(
                            code,
                            1002 | 1003
                                | 1007
                                | 1009
                                | 1010
                                | REPLACED_CLOSE_CODE
                                | TOKEN_EXPIRED_CLOSE_CODE
                                | REMOVED_CLOSE_CODE
                        ) {
                            // Our own fault, our session went on elsewhere, or
                            // a moderator removed us: coming back would not help.
                            return Err(Error::Closed { code, reason });
                        }
                        Error::Closed { code, reason }
                    }
                    Ended::Lost(cause) => Error::Lost { url: config.url.clone(), cause },
                    Ended::Output(error) => return Err(Error::Output(error)),
                    Ended::NameRefused(why) => return Err(Error::NameRefused(why)),
                }
            }
            // The first connection fails at once: the URL or server is wrong.
            Err(error) if !connected_once => return Err(error),
            Err(error @ Error::Connect { temporary: true, .. }) => error,
            Err(error) => return Err(error),
        };
        if config.retries.is_some_and(|retries| failures >= retries) {
            return Err(failure);
        }
        failures += 1;
        // A server that says when to come back is believed, within reason.
        let delay = match &failure {
            Error::Connect { retry_after: Some(after), .. } => {
                backoff(failures).max((*after).min(MAX_RETRY_AFTER))
            }
            _ => backoff(failures),
        };
        output
            .borrow_mut()
            .notice(&format!("{failure}; reconnecting in {:.1} s", delay.as_secs_f64()))?;
        // Waiting, but still reading stdin: lines typed meanwhile are kept,
        // and the end of stdin starts the last wait for the server.
        let wait = sleep(delay);
        tokio::pin!(wait);
        loop {
            // With --no-close, the end of stdin ends nothing: keep coming back.
            if lines.borrow().ended && !config.no_close {
                let deadline = *give_up.get_or_insert_with(|| Instant::now() + config.linger);
                if lines.borrow().pending.is_empty() {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    let count = lines.borrow().pending.len() as u64;
                    lines.borrow_mut().pending.clear();
                    lines.borrow_mut().unsent += count;
                    return Err(Error::Unsent {
                        count,
                        why: format!(": the server was unreachable ({failure})"),
                    });
                }
            }
            let room = lines.borrow().pending.len() < LINE_QUEUE;
            tokio::select! {
                () = &mut wait => break,
                () = sleep_until(give_up.unwrap_or_else(far_future)), if give_up.is_some() => {}
                line = stdin.recv(), if room && !lines.borrow().ended => {
                    read_line(line, lines);
                }
            }
        }
    }
}

/// An instant no wait reaches.
fn far_future() -> Instant {
    Instant::now() + Duration::from_hours(24 * 365)
}

impl Lines {
    /// Whether the next line is a `/history` that must wait for the answer
    /// to one in flight: it pages back from where that answer ends.
    fn history_waits(&self) -> bool {
        let history = |(_, line): &(u64, String)| match parse_command(line) {
            Command::History { before, .. } => Some(before),
            _ => None,
        };
        self.pending.front().and_then(history) == Some(None)
            && self.in_flight.iter().any(|line| history(line).is_some())
    }
}

/// Takes one line from stdin (`None` at its end) into the pending lines.
fn read_line(line: Option<String>, lines: &RefCell<Lines>) {
    let mut lines = lines.borrow_mut();
    match line {
        Some(line) => {
            lines.read += 1;
            // A blank line is nothing to say; it still counts, so that line
            // numbers are stdin's.
            if !line.trim().is_empty() {
                let number = lines.read;
                lines.pending.push_back((number, line));
            }
        }
        None => lines.ended = true,
    }
}

/// The wait before reconnection attempt `n` (from 1): doubling from
/// [`RECONNECT_FIRST_DELAY`] up to [`RECONNECT_MAX_DELAY`], drawn between half
/// and all of that.
fn backoff(n: u32) -> Duration {
    crate::util::backoff(n, RECONNECT_FIRST_DELAY, RECONNECT_MAX_DELAY)
}

/// How one connection ended.
enum Ended {
    /// Stdin ended or the user quit: our Close is sent.
    Quit,
    Closed {
        code: u16,
        reason: String,
    },
    Lost(String),
    Output(io::Error),
    /// The name asked for was refused ([`Session::strict_name`]).
    NameRefused(String),
}

/// Sends stdin lines and prints the server's events until one side ends.
async fn converse(
    ws: Socket,
    config: &ClientConfig,
    session: &mut Session,
    stdin: &mut mpsc::Receiver<String>,
    lines: &RefCell<Lines>,
    output: &RefCell<Output>,
) -> Ended {
    let (mut sink, mut stream) = ws.split();
    // This connection's welcome tells the limits; until then nothing is sent,
    // so that what is in flight at the welcome is the last connection's.
    session.limits = None;
    // Wakes the sender when an answer frees room in the window, or the
    // welcome tells the limits.
    let answered = Notify::new();
    let session = RefCell::new(session);
    // Sending and receiving run together: a server that waits for us to read
    // never blocks our writes, and the other way round.
    let sending = async {
        let mut pacer: Option<Pacer> = None;
        loop {
            // Nothing goes out before the welcome: it tells the limits.
            let Some(limits) = session.borrow().limits else {
                answered.notified().await;
                continue;
            };
            let pacer = pacer.get_or_insert_with(|| Pacer::new(limits));
            if lines.borrow().pending.is_empty() {
                if !lines.borrow().ended {
                    tokio::select! {
                        line = stdin.recv() => read_line(line, lines),
                        // A refused line may come back to be sent again.
                        () = answered.notified() => {}
                    }
                    continue;
                }
                // Stdin ended: the last answers may still send a line again.
                if lines.borrow().in_flight.is_empty() {
                    break;
                }
                answered.notified().await;
                continue;
            }
            if lines.borrow().in_flight.len() >= MAX_IN_FLIGHT || lines.borrow().history_waits() {
                answered.notified().await;
                continue;
            }
            // Paced before the line leaves the queue: this future may be
            // dropped while it waits (the connection lost), and the line
            // must then still be there.
            pacer.ready().await;
            let Some((number, line)) = lines.borrow_mut().pending.pop_front() else { continue };
            if line.len() > limits.max_bytes {
                let why = format!(
                    "it is {} bytes, and the server takes at most {}",
                    line.len(),
                    limits.max_bytes
                );
                unsent(lines, output, number, &why);
                continue;
            }
            let (oldest, moderator) = {
                let session = session.borrow();
                (session.oldest, session.moderator)
            };
            let Some(request) = request(number, &line, (oldest, moderator), output) else {
                continue;
            };
            // A line stays in flight until answered: a `slow down` sends it again.
            lines.borrow_mut().in_flight.push_back((number, line));
            sink.send(request).await?;
        }
        if config.no_close {
            std::future::pending::<()>().await;
        }
        sink.send(Message::close(Some(CloseCode::NORMAL_CLOSURE), "")).await
    };
    let receiving = receive(&mut stream, &session, lines, &answered, output);
    tokio::pin!(receiving);
    tokio::select! {
        ended = &mut receiving => ended,
        sent = sending => {
            if let Err(error) = sent {
                debug!(%error, "sending failed");
                return receiving.await;
            }
            // Stdin ended and our Close is sent: wait a little for the echoes
            // and the server's answering Close.
            match timeout(config.linger, &mut receiving).await {
                Ok(Ended::Output(error)) => Ended::Output(error),
                _ => Ended::Quit,
            }
        }
    }
}

/// Reports a line that was not sent, and counts it.
fn unsent(lines: &RefCell<Lines>, output: &RefCell<Output>, number: u64, why: &str) {
    lines.borrow_mut().unsent += 1;
    if let Err(error) = output.borrow_mut().line_refused(number, why, Refusal::Local) {
        debug!(%error, "cannot print");
    }
}

/// The request a line makes, with the line's number as its id; `None` when
/// the line is answered here (`/help`, a typo), without a round trip.
/// `/history` without BEFORE pages back from `oldest`, the lowest message
/// number seen, or from the newest when none was.
fn request(
    number: u64,
    line: &str,
    (oldest, moderator): (Option<u64>, bool),
    output: &RefCell<Output>,
) -> Option<Message> {
    let id = Some(number.to_string().into());
    let request = match parse_command(line) {
        Command::Say(text) => Request::Message { text: text.into(), id },
        Command::Nick(name) => Request::Nick { name: name.into(), id },
        Command::Who => Request::Who { id },
        Command::History { limit, before } => {
            Request::History { before: before.or(oldest), limit: Some(limit), id }
        }
        Command::Moderate(moderation) => Request::moderation(&moderation, id),
        // The same answers the text protocol gives.
        local => {
            let event = match local {
                Command::MissingArgument(usage) => ClientError::Usage { usage }.into(),
                Command::Unknown(command) => ClientError::UnknownCommand { command }.into(),
                _ => Event::Notice { text: help(moderator) },
            };
            if let Err(error) = output.borrow_mut().event(&event, None) {
                debug!(%error, "cannot print");
            }
            return None;
        }
    };
    // Serializing a request cannot fail: every key is a string.
    Some(Message::text(serde_json::to_string(&request).unwrap_or_default()))
}

/// Keeps the client within the rate the server announced, with a margin:
/// the server counts arrivals, which the network may bunch up.
struct Pacer {
    /// Seconds per message; zero when there is no limit.
    interval: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl Pacer {
    fn new(limits: Limits) -> Self {
        let interval = if limits.per_second == 0 {
            0.0
        } else {
            1.0 / (f64::from(limits.per_second) * PACE_MARGIN)
        };
        // Half the burst: the other half absorbs arrivals bunched up.
        let burst = (f64::from(limits.burst) / 2.0).max(1.0);
        Self { interval, burst, tokens: burst, refilled: Instant::now() }
    }

    /// Waits until a message may be sent, and counts it.
    async fn ready(&mut self) {
        if self.interval == 0.0 {
            return;
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed / self.interval).min(self.burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) * self.interval);
            sleep(wait).await;
            self.tokens = 1.0;
            self.refilled = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// The share of the announced rate the client uses.
const PACE_MARGIN: f64 = 0.9;

async fn receive<S>(
    stream: &mut S,
    session: &RefCell<&mut Session>,
    lines: &RefCell<Lines>,
    answered: &Notify,
    output: &RefCell<Output>,
) -> Ended
where
    S: futures_util::Stream<Item = Result<Message, tokio_websockets::Error>> + Unpin,
{
    let mut close = None;
    loop {
        match stream.next().await {
            Some(Ok(frame)) => {
                if let Some(text) = frame.as_text() {
                    let printed = match serde_json::from_str::<Event<'_>>(text) {
                        Ok(event) => {
                            if let Some(why) = session.borrow().refused_name(&event) {
                                return Ended::NameRefused(why);
                            }
                            on_event(&event, session, lines, answered, output)
                        }
                        Err(error) => output
                            .borrow_mut()
                            .notice(&format!("the server sent an unreadable event: {error}")),
                    };
                    if let Err(error) = printed {
                        return Ended::Output(error);
                    }
                } else if let Some((code, reason)) = frame.as_close() {
                    close = Some((u16::from(code), reason.to_owned()));
                }
                // Binary frames are not part of the protocol; pings are answered for us.
            }
            Some(Err(error)) => return Ended::Lost(describe(&error)),
            None => {
                return match close {
                    Some((code, reason)) => Ended::Closed { code, reason },
                    None => Ended::Lost("the connection closed without a Close frame".into()),
                };
            }
        }
    }
}

/// Acts on one event from the server: notes it, settles the line it
/// answers, and prints it.
fn on_event(
    event: &Event<'_>,
    session: &RefCell<&mut Session>,
    lines: &RefCell<Lines>,
    answered: &Notify,
    output: &RefCell<Output>,
) -> io::Result<()> {
    session.borrow_mut().update(event);
    let id = match event {
        Event::Welcome { last_id, .. } => {
            // Lines sent on a lost connection and never answered go again,
            // first: a returning session is told the last one carried out,
            // and only those after it go. (Without that, after a server
            // restart, a line may come twice, never not at all.)
            let last = last_id.as_ref().and_then(|id| id.parse::<u64>().ok());
            let mut lines = lines.borrow_mut();
            let mut unanswered = std::mem::take(&mut lines.in_flight);
            unanswered.retain(|(number, _)| last.is_none_or(|last| *number > last));
            while let Some(line) = unanswered.pop_back() {
                lines.pending.push_front(line);
            }
            answered.notify_one();
            None
        }
        Event::Ack { id, .. } => Some(id),
        Event::Error { id, .. } | Event::Who { id, .. } | Event::Earlier { id, .. } => id.as_ref(),
        _ => None,
    };
    if let Some(id) = id.and_then(|id| id.parse::<u64>().ok()) {
        let line = {
            let mut lines = lines.borrow_mut();
            let at = lines.in_flight.iter().position(|(number, _)| *number == id);
            at.and_then(|at| lines.in_flight.remove(at))
        };
        answered.notify_one();
        if let (Some((number, text)), Event::Error { code, text: why, .. }) = (line, event) {
            let later =
                [ClientError::SlowDown { per_second: 0 }.code(), ClientError::ServerFull.code()];
            if code.as_deref().is_some_and(|code| later.contains(&code)) {
                // Paced, yet refused: the network bunched the lines up (or
                // the server is short of memory just then). It goes again
                // first, after a pause.
                debug!(line = number, "sent too fast; sending it again");
                lines.borrow_mut().pending.push_front((number, text));
                return Ok(());
            }
            lines.borrow_mut().unsent += 1;
            return output.borrow_mut().line_refused(number, why, Refusal::Server);
        }
        if matches!(event, Event::Ack { .. }) {
            return Ok(());
        }
    }
    let own = session.borrow().name.clone();
    output.borrow_mut().event(event, own.as_deref())
}

impl Session {
    /// Why the name asked for was refused, when that ends the client.
    fn refused_name(&self, event: &Event<'_>) -> Option<String> {
        let refusals = [
            ClientError::InvalidName { name: "", reason: crate::protocol::NameError::Empty }.code(),
            ClientError::NameTaken { name: "" }.code(),
        ];
        match event {
            Event::Error { code: Some(code), text, .. }
                if self.strict_name && !self.welcomed && refusals.contains(&code.as_ref()) =>
            {
                Some(text.to_string())
            }
            _ => None,
        }
    }

    fn update(&mut self, event: &Event<'_>) {
        match event {
            Event::Welcome { name, epoch, limits, session, moderator, .. } => {
                self.welcomed = true;
                self.moderator = *moderator;
                if self.epoch.as_deref() != Some(epoch) {
                    // A new history: its numbers start over.
                    self.epoch = Some(epoch.to_string());
                    self.seq = None;
                    self.oldest = None;
                }
                self.name = Some(name.to_string());
                self.secret = session.as_ref().map(ToString::to_string);
                self.limits = Some(limits.unwrap_or(Limits {
                    per_second: 0,
                    burst: 1,
                    max_bytes: MAX_LINE_BYTES,
                }));
            }
            Event::Nick { old, new, .. } if self.name.as_deref() == Some(old) => {
                self.name = Some(new.to_string());
            }
            Event::Message { seq, .. } => {
                self.seq = Some(*seq);
                self.oldest = Some(self.oldest.map_or(*seq, |oldest| oldest.min(*seq)));
            }
            // Earlier messages page back only: the resume position stays
            // where it is, or the next resume would repeat what followed.
            Event::Earlier { messages, .. } => {
                if let Some(first) = messages.iter().map(|m| m.seq).min() {
                    self.oldest = Some(self.oldest.map_or(first, |oldest| oldest.min(first)));
                }
            }
            // The room's history was reset: its numbering went on from where
            // it was, in this new epoch, so the next resume is asked in it.
            Event::Missed { count: None, epoch: Some(epoch) } => {
                self.epoch = Some(epoch.to_string());
            }
            _ => {}
        }
    }
}

/// The URL to connect to: `url` checked, with `?name=`, to resume
/// `?since=SEQ&epoch=E`, and to take our name back `?session=` added.
fn chat_uri(
    url: &str,
    name: Option<&str>,
    resume: Option<(u64, &str)>,
    secret: Option<&str>,
) -> Result<Uri, Error> {
    let invalid =
        |reason: &str| Error::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
    let uri: Uri = url.parse().map_err(|error: http::uri::InvalidUri| {
        invalid(&format!("{error}; write it as ws://HOST:PORT/ROOM"))
    })?;
    match uri.scheme_str() {
        Some("ws" | "wss") => {}
        _ => return Err(invalid("the URL must start with ws:// or wss:// (ws://HOST:PORT/ROOM)")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host"));
    }
    if name.is_none() && resume.is_none() && secret.is_none() {
        return Ok(uri);
    }
    let mut path_and_query = uri.path().to_owned();
    if path_and_query.is_empty() {
        path_and_query.push('/');
    }
    let mut query = form_urlencoded::Serializer::new(uri.query().unwrap_or_default().to_owned());
    if let Some(name) = name {
        query.append_pair("name", name);
    }
    if let Some((since, epoch)) = resume {
        query.append_pair("since", &since.to_string());
        query.append_pair("epoch", epoch);
    }
    if let Some(secret) = secret {
        query.append_pair("session", secret);
    }
    path_and_query.push('?');
    path_and_query.push_str(&query.finish());
    let mut parts = uri.into_parts();
    parts.path_and_query =
        Some(path_and_query.parse().map_err(|_| invalid("cannot add the name"))?);
    Uri::from_parts(parts).map_err(|error| invalid(&error.to_string()))
}

/// Reads stdin lines into `tx` until EOF, without their line endings. A
/// line over [`MAX_LINE_BYTES`] is reported and counted in `unsent`, and
/// sent as an empty line so that line numbers stay stdin's.
fn spawn_pipe_reader(tx: mpsc::Sender<String>, unsent: Arc<AtomicU64>) {
    thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = Vec::new();
        let mut number = 0u64;
        loop {
            buf.clear();
            let limit = MAX_LINE_BYTES as u64 + 1;
            match (&mut stdin).take(limit).read_until(b'\n', &mut buf) {
                Ok(0) => return,
                Ok(_) => number += 1,
                Err(error) => {
                    eprintln!("error: cannot read stdin: {error}");
                    return;
                }
            }
            let line = if !buf.ends_with(b"\n") && buf.len() as u64 == limit {
                eprintln!("error: line {number} was not sent: it is over {MAX_LINE_BYTES} bytes");
                unsent.fetch_add(1, Ordering::Relaxed);
                if skip_line(&mut stdin).is_err() {
                    return;
                }
                String::new()
            } else {
                let line = String::from_utf8_lossy(&buf);
                line.trim_end_matches(['\n', '\r']).to_owned()
            };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
}

/// Reads past the end of the current line, holding little of it at a time.
fn skip_line(input: &mut impl BufRead) -> io::Result<()> {
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        if let Some(at) = chunk.iter().position(|&b| b == b'\n') {
            input.consume(at + 1);
            return Ok(());
        }
        let len = chunk.len();
        input.consume(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PastMessage;

    #[test]
    fn a_reset_history_is_resumed_in_its_new_epoch_from_the_same_place() {
        let mut session =
            Session { epoch: Some("old".to_owned()), seq: Some(7), ..Session::default() };
        session.update(&Event::Missed { count: Some(3), epoch: None });
        assert_eq!((session.epoch.as_deref(), session.seq), (Some("old"), Some(7)));
        session.update(&Event::Missed { count: None, epoch: Some("new".into()) });
        assert_eq!((session.epoch.as_deref(), session.seq), (Some("new"), Some(7)));
    }

    #[test]
    fn earlier_messages_page_back_without_moving_the_resume_position() {
        let ts = crate::protocol::now();
        let message =
            |seq| Event::Message { room: "r".into(), seq, from: "a".into(), text: "t".into(), ts };
        let mut session = Session::default();
        session.update(&message(8));
        session.update(&message(9));
        assert_eq!((session.seq, session.oldest), (Some(9), Some(8)));
        let past = |seq| PastMessage { seq, from: "a".into(), text: "t".into(), ts };
        let earlier = Event::Earlier {
            room: "r".into(),
            messages: vec![past(3), past(4)],
            more: true,
            id: None,
        };
        session.update(&earlier);
        assert_eq!((session.seq, session.oldest), (Some(9), Some(3)));
        let asked = |oldest| {
            let output = RefCell::new(Output::Pipe(output::Style { json: false, quiet: true }));
            let frame = request(7, "/history 2", (oldest, false), &output).expect("a request");
            frame.as_text().expect("text").to_owned()
        };
        assert_eq!(asked(Some(3)), r#"{"type":"history","before":3,"limit":2,"id":"7"}"#);
        assert_eq!(asked(None), r#"{"type":"history","limit":2,"id":"7"}"#);
    }

    #[test]
    fn a_history_line_waits_for_the_history_answer_in_flight() {
        let line = |n: u64, text: &str| (n, text.to_owned());
        let mut lines = Lines::default();
        lines.pending.push_back(line(2, "/history"));
        assert!(!lines.history_waits());
        lines.in_flight.push_back(line(1, "/history 5"));
        assert!(lines.history_waits());
        lines.pending[0] = line(2, "/history 5 10");
        assert!(!lines.history_waits());
        lines.pending[0] = line(2, "hello");
        assert!(!lines.history_waits());
    }

    #[test]
    fn sanitize_escapes_controls_and_bidi_but_keeps_joiners() {
        assert_eq!(sanitize("plain text\twith tab"), "plain text\twith tab");
        assert_eq!(sanitize("\x1b[31mred"), "\\u{1b}[31mred");
        assert_eq!(sanitize("a\nb\rc"), "a\\u{a}b\\u{d}c");
        assert_eq!(sanitize("abc\u{202E}txt"), "abc\\u{202e}txt");
        assert_eq!(sanitize("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(sanitize("x\u{2066}y\u{2069}"), "x\\u{2066}y\\u{2069}");
        // Joiners and variation selectors are part of the text, not tricks.
        assert_eq!(sanitize("👨\u{200D}👩\u{200D}👧"), "👨\u{200D}👩\u{200D}👧");
        assert_eq!(sanitize("می\u{200C}خواهم"), "می\u{200C}خواهم");
        assert_eq!(sanitize("❤\u{FE0F}"), "❤\u{FE0F}");
    }

    #[test]
    fn reconnection_waits_double_with_jitter_up_to_the_cap() {
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= RECONNECT_FIRST_DELAY / 2 && first <= RECONNECT_FIRST_DELAY);
            let third = backoff(3);
            assert!(third >= RECONNECT_FIRST_DELAY * 2 && third <= RECONNECT_FIRST_DELAY * 4);
            let late = backoff(1000);
            assert!(late >= RECONNECT_MAX_DELAY / 2 && late <= RECONNECT_MAX_DELAY);
        }
    }

    #[test]
    fn chat_uri_adds_the_name() {
        let uri = chat_uri("ws://127.0.0.1:8080", Some("zoë b"), None, None).unwrap();
        assert_eq!(uri.to_string(), "ws://127.0.0.1:8080/?name=zo%C3%AB+b");
        let uri = chat_uri("ws://h:1/rust?x=1", Some("a&b"), Some((7, "e")), Some("5ec")).unwrap();
        assert_eq!(uri.to_string(), "ws://h:1/rust?x=1&name=a%26b&since=7&epoch=e&session=5ec");
        assert_eq!(chat_uri("ws://h/r", None, None, None).unwrap().to_string(), "ws://h/r");
    }

    #[test]
    fn chat_uri_refuses_unusable_urls() {
        for url in ["http://h/", "h:80", "ws:///x", "ws://h h/"] {
            let error = chat_uri(url, None, None, None).unwrap_err();
            assert!(matches!(error, Error::InvalidUrl { .. }), "{url}: {error}");
        }
    }
}
