//! The client: sends stdin lines to the server and prints what it relays, one
//! line per event, in the server's text form.
//!
//! It speaks the JSON subprotocol, which tells it each message's number and
//! time: when the connection is lost it reconnects on its own, with growing
//! waits, and resumes after the last message it printed, so nothing is missed
//! twice or printed twice.
//!
//! With a terminal on both ends it shows a prompt with line editing (rustyline)
//! and prints incoming lines above it, with their local time; otherwise it is a
//! plain filter whose output is exactly the server's text protocol. Either way,
//! control characters in what it prints are escaped, so nobody in the room can
//! drive your terminal.
//!
//! Stdin is read on a plain thread, not a tokio blocking task, so that the
//! process can exit while a read is still pending.

use std::cell::RefCell;
use std::io::{self, BufRead, IsTerminal, Read};
use std::thread;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Uri;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};
use tokio_websockets::{CloseCode, Connector, MaybeTlsStream, Message, WebSocketStream};
use tracing::debug;

mod connect;
mod output;
mod terminal;

pub use connect::CONNECT_TIMEOUT;
pub use output::sanitize;

use crate::config::{
    ClientConfig, LINE_QUEUE, MAX_LINE_BYTES, RECONNECT_FIRST_DELAY, RECONNECT_MAX_DELAY,
};
use crate::protocol::{ClientError, Command, Event, HELP, Request, parse_command};
use connect::{connect, describe, describe_code};
use output::Output;
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
    /// Stdout or the terminal failed.
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
    /// TLS could not be set up (`--ca-cert`).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the client knows of its place in the room, to come back to it.
#[derive(Debug, Default)]
struct Session {
    /// Our current name, from the welcome and our renames.
    name: Option<String>,
    /// The room's history epoch, from the welcome.
    epoch: Option<String>,
    /// The last message number printed.
    seq: Option<u64>,
}

/// Joins the server at `config.url` and chats until stdin ends or the server
/// closes for good, reconnecting when the connection is lost. Returns `Ok`
/// after a normal close.
pub async fn run(config: ClientConfig) -> Result<(), Error> {
    // Checked once, before anything else.
    chat_uri(&config.url, config.name.as_deref(), None)?;
    let tls = Connector::Rustls(crate::tls::connector(config.ca_cert.as_deref())?);
    let interactive = io::stdin().is_terminal() && io::stdout().is_terminal();
    let (tx, mut lines) = mpsc::channel(LINE_QUEUE);
    let (output, editor) = if interactive {
        let (printer, editor) = spawn_editor(tx)?;
        (Output::Terminal { printer, color: std::env::var_os("NO_COLOR").is_none() }, Some(editor))
    } else {
        spawn_pipe_reader(tx);
        (Output::Pipe, None)
    };
    let output = RefCell::new(output);
    let mut session = Session { name: config.name.clone(), ..Session::default() };
    let mut pending = None;

    let Some(mut editor) = editor else {
        return chat(&config, &tls, &mut session, &mut lines, &mut pending, &output).await;
    };
    // Quitting is watched apart from the lines, so it works in every state:
    // connecting, waiting to reconnect, or with the line queue full.
    let result = tokio::select! {
        result = chat(&config, &tls, &mut session, &mut lines, &mut pending, &output) => result,
        () = editor.quit_requested() => Ok(()),
    };
    // The editor's thread may still hold the terminal in raw mode: it is left
    // blocked in its read, and ends with the process.
    editor.restore();
    if let Some(line) = editor.not_sent(lines.len() + usize::from(pending.is_some())) {
        eprintln!("{line}");
    }
    result
}

/// Connects, and reconnects while the connection is lost, until the end.
async fn chat(
    config: &ClientConfig,
    tls: &Connector,
    session: &mut Session,
    lines: &mut mpsc::Receiver<String>,
    // A line read but not sent yet (typed while disconnected, or cut off),
    // sent first once connected again.
    pending: &mut Option<String>,
    output: &RefCell<Output>,
) -> Result<(), Error> {
    let mut failures = 0;
    let mut connected_once = false;
    loop {
        let failure = match connect(config, tls, session).await {
            Ok(ws) => {
                connected_once = true;
                failures = 0;
                match converse(ws, config, session, lines, pending, output).await {
                    Ended::Quit => return Ok(()),
                    Ended::Closed { code, reason } => {
                        let reason = if reason.is_empty() { describe_code(code) } else { reason };
                        if code == 1000 {
                            output
                                .borrow_mut()
                                .notice(&format!("the server closed the connection: {reason}"))?;
                            return Ok(());
                        }
                        if matches!(code, 1002 | 1003 | 1007 | 1009 | 1010) {
                            // Our own fault: it would happen again.
                            return Err(Error::Closed { code, reason });
                        }
                        Error::Closed { code, reason }
                    }
                    Ended::Lost(cause) => Error::Lost { url: config.url.clone(), cause },
                    Ended::Output(error) => return Err(Error::Output(error)),
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
        let delay = backoff(failures);
        output
            .borrow_mut()
            .notice(&format!("{failure}; reconnecting in {:.1} s", delay.as_secs_f64()))?;
        // Waiting, but still watching stdin: the user may quit meanwhile.
        let wait = sleep(delay);
        tokio::pin!(wait);
        while pending.is_none() {
            tokio::select! {
                () = &mut wait => break,
                line = lines.recv() => match line {
                    Some(line) => *pending = Some(line),
                    None => return Ok(()),
                },
            }
        }
        wait.await;
    }
}

/// The wait before reconnection attempt `n` (from 1): doubling from
/// [`RECONNECT_FIRST_DELAY`] up to [`RECONNECT_MAX_DELAY`], drawn between half
/// and all of that.
fn backoff(n: u32) -> Duration {
    let full = RECONNECT_FIRST_DELAY.saturating_mul(1 << n.saturating_sub(1).min(16));
    let full = full.min(RECONNECT_MAX_DELAY);
    full.mul_f64(0.5 + fastrand::f64() / 2.0)
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
}

/// Sends stdin lines and prints the server's events until one side ends.
async fn converse(
    ws: Socket,
    config: &ClientConfig,
    session: &mut Session,
    lines: &mut mpsc::Receiver<String>,
    pending: &mut Option<String>,
    output: &RefCell<Output>,
) -> Ended {
    let (mut sink, mut stream) = ws.split();
    // Sending and receiving run together: a server that waits for us to read
    // never blocks our writes, and the other way round.
    let sending = async {
        loop {
            // A line stays pending until it is sent: if the connection is
            // lost meanwhile, it is sent again after reconnecting.
            if pending.is_none() {
                match lines.recv().await {
                    Some(line) => *pending = Some(line),
                    None => break,
                }
            }
            send(&mut sink, pending.as_deref().unwrap_or_default(), output).await?;
            *pending = None;
        }
        sink.send(Message::close(Some(CloseCode::NORMAL_CLOSURE), "")).await
    };
    let receiving = receive(&mut stream, session, output);
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

/// Sends one line as a request, or answers it here when it needs no server.
async fn send<S>(sink: &mut S, line: &str, output: &RefCell<Output>) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let request = match parse_command(line) {
        Command::Say(text) => Request::Message { text: text.into() },
        Command::Nick(name) => Request::Nick { name: name.into() },
        Command::Who => Request::Who,
        // The same answers the text protocol gives, without a round trip.
        local => {
            let event = match local {
                Command::MissingArgument(usage) => ClientError::Usage { usage }.into(),
                Command::Unknown(command) => ClientError::UnknownCommand { command }.into(),
                _ => Event::Notice { text: HELP.into() },
            };
            if let Err(error) = output.borrow_mut().event(&event, None) {
                debug!(%error, "cannot print");
            }
            return Ok(());
        }
    };
    // Serializing a request cannot fail: every key is a string.
    sink.send(Message::text(serde_json::to_string(&request).unwrap_or_default())).await
}

async fn receive<S>(stream: &mut S, session: &mut Session, output: &RefCell<Output>) -> Ended
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
                            session.update(&event);
                            output.borrow_mut().event(&event, session.name.as_deref())
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

impl Session {
    fn update(&mut self, event: &Event<'_>) {
        match event {
            Event::Welcome { name, epoch, .. } => {
                if self.epoch.as_deref() != Some(epoch) {
                    // A new history: its numbers start over.
                    self.epoch = Some(epoch.to_string());
                    self.seq = None;
                }
                self.name = Some(name.to_string());
            }
            Event::Nick { old, new, .. } if self.name.as_deref() == Some(old) => {
                self.name = Some(new.to_string());
            }
            Event::Message { seq, .. } => self.seq = Some(*seq),
            _ => {}
        }
    }
}

/// The URL to connect to: `url` checked, with `?name=` and, to resume,
/// `?since=SEQ&epoch=E` added.
fn chat_uri(url: &str, name: Option<&str>, resume: Option<(u64, &str)>) -> Result<Uri, Error> {
    let invalid =
        |reason: &str| Error::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
    let uri: Uri =
        url.parse().map_err(|error: http::uri::InvalidUri| invalid(&error.to_string()))?;
    match uri.scheme_str() {
        Some("ws" | "wss") => {}
        _ => return Err(invalid("the URL must start with ws:// or wss://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host"));
    }
    if name.is_none() && resume.is_none() {
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
    path_and_query.push('?');
    path_and_query.push_str(&query.finish());
    let mut parts = uri.into_parts();
    parts.path_and_query =
        Some(path_and_query.parse().map_err(|_| invalid("cannot add the name"))?);
    Uri::from_parts(parts).map_err(|error| invalid(&error.to_string()))
}

/// Reads stdin lines into `tx` until EOF: each non-empty line, without its
/// line ending, at most [`MAX_LINE_BYTES`] long.
fn spawn_pipe_reader(tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let limit = MAX_LINE_BYTES as u64 + 1;
            match (&mut stdin).take(limit).read_until(b'\n', &mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) => {
                    eprintln!("error: cannot read stdin: {error}");
                    return;
                }
            }
            if !buf.ends_with(b"\n") && buf.len() as u64 == limit {
                eprintln!("warning: a line over {MAX_LINE_BYTES} bytes was not sent");
                // Skip the rest of that line.
                let mut rest = Vec::new();
                if stdin.read_until(b'\n', &mut rest).is_err() {
                    return;
                }
                continue;
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']);
            if !line.is_empty() && tx.blocking_send(line.to_owned()).is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_control_and_invisible_characters() {
        assert_eq!(sanitize("plain text\twith tab"), "plain text\twith tab");
        assert_eq!(sanitize("\x1b[31mred"), "\\u{1b}[31mred");
        assert_eq!(sanitize("a\nb\rc"), "a\\u{a}b\\u{d}c");
        assert_eq!(sanitize("abc\u{202E}txt"), "abc\\u{202e}txt");
        assert_eq!(sanitize("\u{9b}31m"), "\\u{9b}31m");
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
        let uri = chat_uri("ws://127.0.0.1:8080", Some("zoë b"), None).unwrap();
        assert_eq!(uri.to_string(), "ws://127.0.0.1:8080/?name=zo%C3%AB+b");
        let uri = chat_uri("ws://h:1/rust?x=1", Some("a&b"), Some((7, "e"))).unwrap();
        assert_eq!(uri.to_string(), "ws://h:1/rust?x=1&name=a%26b&since=7&epoch=e");
        assert_eq!(chat_uri("ws://h/r", None, None).unwrap().to_string(), "ws://h/r");
    }

    #[test]
    fn chat_uri_refuses_unusable_urls() {
        for url in ["http://h/", "h:80", "ws:///x", "ws://h h/"] {
            let error = chat_uri(url, None, None).unwrap_err();
            assert!(matches!(error, Error::InvalidUrl { .. }), "{url}: {error}");
        }
    }
}
