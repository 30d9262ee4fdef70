//! The client: sends stdin lines as text frames and prints every frame the
//! server sends, one per line.
//!
//! With a terminal on both ends it shows a prompt with line editing (rustyline)
//! and prints incoming lines above it; otherwise it is a plain filter whose
//! output is the server's frames. Either way, control characters in what it
//! prints are escaped, so nobody in the room can drive your terminal.
//!
//! Stdin is read on a plain thread, not a tokio blocking task, so that the
//! process can exit while a read is still pending.

use std::fmt::Write as _;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::thread;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Uri;
use rustyline::error::ReadlineError;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_websockets::{ClientBuilder, CloseCode, Message};
use tracing::debug;

use crate::config::{ClientConfig, LINE_QUEUE, MAX_LINE_BYTES};
use crate::protocol::{is_invisible_format, parse_renamed, parse_sender, parse_welcome};

/// How long connecting and upgrading may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// Joins the server at `config.url` and chats until stdin ends or the server
/// closes. Returns `Ok` after a normal close.
pub async fn run(config: ClientConfig) -> Result<(), Error> {
    let uri = chat_uri(&config.url, config.name.as_deref())?;
    let url = config.url.clone();
    let interactive = io::stdin().is_terminal() && io::stdout().is_terminal();

    let mut builder = ClientBuilder::from_uri(uri);
    if let Some(token) = &config.token {
        let bearer = http::HeaderValue::from_str(&format!("Bearer {token}"));
        builder = bearer
            .ok()
            .and_then(|value| builder.add_header(http::header::AUTHORIZATION, value).ok())
            .ok_or_else(|| Error::Connect {
                url: url.clone(),
                cause: "the token is not a valid header value".into(),
            })?;
    }
    let ws = match timeout(CONNECT_TIMEOUT, builder.connect()).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(error)) => {
            return Err(Error::Connect { url, cause: describe(&error) });
        }
        Err(_) => {
            return Err(Error::Connect { url, cause: "timed out".into() });
        }
    };
    let (mut sink, mut stream) = ws.split();

    let (tx, mut lines) = mpsc::channel(LINE_QUEUE);
    let (mut output, input) = if interactive {
        let (printer, thread) = spawn_editor(tx)?;
        (
            Output::Terminal { printer, own: None, color: std::env::var_os("NO_COLOR").is_none() },
            Some(thread),
        )
    } else {
        spawn_pipe_reader(tx);
        (Output::Pipe, None)
    };

    // Sending and receiving run together: a server that waits for us to read
    // never blocks our writes, and the other way round.
    let sending = async {
        while let Some(line) = lines.recv().await {
            sink.send(Message::text(line)).await?;
        }
        sink.send(Message::close(Some(CloseCode::NORMAL_CLOSURE), "")).await
    };
    let ended = {
        let receiving = receive(&mut stream, &mut output);
        tokio::pin!(receiving);
        let ended = tokio::select! {
            ended = &mut receiving => Some(ended),
            sent = sending => {
                if let Err(error) = sent {
                    debug!(%error, "sending failed");
                }
                None
            }
        };
        match ended {
            Some(ended) => ended,
            // Stdin ended and our Close is sent: wait a little for the echoes
            // and the server's answering Close.
            None => match timeout(config.linger, &mut receiving).await {
                Ok(Ended::Closed { .. }) | Err(_) => return Ok(()),
                Ok(ended) => ended,
            },
        }
    };

    let result = match ended {
        Ended::Closed { code, reason } => {
            let reason = if reason.is_empty() { describe_code(code) } else { reason };
            if matches!(code, 1000 | 1001) {
                output.notice(&format!("the server closed the connection: {reason}"))?;
                Ok(())
            } else {
                Err(Error::Closed { code, reason })
            }
        }
        Ended::Lost(cause) => Err(Error::Lost { url: config.url.clone(), cause }),
        Ended::Output(error) => Err(Error::Output(error)),
    };
    drop(lines);
    if let Some(thread) = input {
        // The editor holds the terminal in raw mode: let it finish its line so
        // it can restore the terminal before we exit.
        let _ = output.notice("connection closed; press Enter to exit");
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    result
}

/// How the connection ended, seen from the receiving side.
enum Ended {
    Closed { code: u16, reason: String },
    Lost(String),
    Output(io::Error),
}

async fn receive<S>(stream: &mut S, output: &mut Output) -> Ended
where
    S: futures_util::Stream<Item = Result<Message, tokio_websockets::Error>> + Unpin,
{
    let mut close = None;
    loop {
        match stream.next().await {
            Some(Ok(frame)) => {
                if let Some(text) = frame.as_text() {
                    if let Err(error) = output.line(text) {
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

/// Where received lines go.
enum Output {
    /// Stdout as is: one frame per line.
    Pipe,
    /// Above the prompt, own messages highlighted.
    Terminal {
        printer: Box<dyn rustyline::ExternalPrinter + Send>,
        /// Our current name, learned from the welcome and rename notices.
        own: Option<String>,
        color: bool,
    },
}

impl Output {
    fn line(&mut self, text: &str) -> io::Result<()> {
        let safe = sanitize(text);
        match self {
            Output::Pipe => match writeln!(io::stdout(), "{safe}") {
                // A reader that went away (`| head`) is not a failure.
                Err(error) if error.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
                result => result,
            },
            Output::Terminal { printer, own, color } => {
                if let Some(name) = parse_welcome(text) {
                    *own = Some(name.to_owned());
                } else if let Some((old, new)) = parse_renamed(text)
                    && own.as_deref() == Some(old)
                {
                    *own = Some(new.to_owned());
                }
                let styled = if !*color {
                    safe
                } else if text.starts_with("! ") {
                    format!("\x1b[31m{safe}\x1b[0m")
                } else if text.starts_with("* ") {
                    dim(&safe, true)
                } else if own.is_some() && parse_sender(text) == own.as_deref() {
                    format!("\x1b[1;32m{safe}\x1b[0m")
                } else {
                    safe
                };
                printer.print(styled + "\n").map_err(io::Error::other)
            }
        }
    }

    /// A message from the client itself, on stderr so stdout stays the server's.
    fn notice(&mut self, text: &str) -> io::Result<()> {
        match self {
            Output::Pipe => writeln!(io::stderr(), "{}", sanitize(text)),
            Output::Terminal { printer, color, .. } => {
                printer.print(dim(&sanitize(text), *color) + "\n").map_err(io::Error::other)
            }
        }
    }
}

fn dim(text: &str, color: bool) -> String {
    if color { format!("\x1b[2m{text}\x1b[0m") } else { text.to_owned() }
}

/// Escapes control characters (tab excepted) and invisible formatting
/// characters, so that received text cannot move the cursor, recolour the
/// terminal, break a line or disguise itself.
pub fn sanitize(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_owned();
    }
    let mut safe = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(safe, "{}", c.escape_unicode());
        } else {
            safe.push(c);
        }
    }
    safe
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t') || is_invisible_format(c)
}

/// The URL to connect to: `url` checked, with `?name=` added.
fn chat_uri(url: &str, name: Option<&str>) -> Result<Uri, Error> {
    let invalid =
        |reason: &str| Error::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
    let uri: Uri =
        url.parse().map_err(|error: http::uri::InvalidUri| invalid(&error.to_string()))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => {
            return Err(invalid("wss:// needs TLS, which this client does not support yet"));
        }
        _ => return Err(invalid("the URL must start with ws://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host"));
    }
    let Some(name) = name else { return Ok(uri) };
    let mut path_and_query = uri.path().to_owned();
    if path_and_query.is_empty() {
        path_and_query.push('/');
    }
    let mut query = form_urlencoded::Serializer::new(uri.query().unwrap_or_default().to_owned());
    query.append_pair("name", name);
    path_and_query.push('?');
    path_and_query.push_str(&query.finish());
    let mut parts = uri.into_parts();
    parts.path_and_query =
        Some(path_and_query.parse().map_err(|_| invalid("cannot add the name"))?);
    Uri::from_parts(parts).map_err(|error| invalid(&error.to_string()))
}

/// One line for a connection error, without Debug noise.
fn describe(error: &tokio_websockets::Error) -> String {
    use tokio_websockets::Error as E;
    match error {
        E::Io(error) => match error.kind() {
            io::ErrorKind::ConnectionRefused => "connection refused".into(),
            io::ErrorKind::ConnectionReset => "connection reset".into(),
            io::ErrorKind::UnexpectedEof => "the server closed the connection".into(),
            _ => error.to_string(),
        },
        E::Upgrade(tokio_websockets::upgrade::Error::DidNotSwitchProtocols(status)) => {
            format!("the server refused the upgrade with HTTP {status}")
        }
        E::CannotResolveHost => "cannot resolve the host".into(),
        error => error.to_string(),
    }
}

fn describe_code(code: u16) -> String {
    match code {
        1000 => "normal closure".into(),
        1001 => "going away".into(),
        1005 => "no reason given".into(),
        1008 => "policy violation".into(),
        1009 => "message too big".into(),
        1011 => "server error".into(),
        code => format!("code {code}"),
    }
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

type Printer = Box<dyn rustyline::ExternalPrinter + Send>;

/// Runs a line editor on its own thread, sending each entered line to `tx`
/// until Ctrl-D, Ctrl-C or `/quit`.
fn spawn_editor(tx: mpsc::Sender<String>) -> Result<(Printer, thread::JoinHandle<()>), Error> {
    let mut editor = rustyline::DefaultEditor::new().map_err(io::Error::other)?;
    let printer: Printer = Box::new(editor.create_external_printer().map_err(io::Error::other)?);
    let thread = thread::spawn(move || {
        loop {
            match editor.readline("> ") {
                Ok(line) if line.trim() == "/quit" => return,
                Ok(line) if line.is_empty() => {}
                Ok(line) => {
                    let _ = editor.add_history_entry(line.as_str());
                    if tx.blocking_send(line).is_err() {
                        return;
                    }
                }
                Err(ReadlineError::Eof | ReadlineError::Interrupted) => return,
                Err(error) => {
                    eprintln!("error: cannot read the terminal: {error}");
                    return;
                }
            }
        }
    });
    Ok((printer, thread))
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
    fn chat_uri_adds_the_name() {
        let uri = chat_uri("ws://127.0.0.1:8080", Some("zoë b")).unwrap();
        assert_eq!(uri.to_string(), "ws://127.0.0.1:8080/?name=zo%C3%AB+b");
        let uri = chat_uri("ws://h:1/rust?x=1", Some("a&b")).unwrap();
        assert_eq!(uri.to_string(), "ws://h:1/rust?x=1&name=a%26b");
        assert_eq!(chat_uri("ws://h/r", None).unwrap().to_string(), "ws://h/r");
    }

    #[test]
    fn chat_uri_refuses_unusable_urls() {
        for url in ["http://h/", "h:80", "wss://h/", "ws:///x", "ws://h h/"] {
            let error = chat_uri(url, None).unwrap_err();
            assert!(matches!(error, Error::InvalidUrl { .. }), "{url}: {error}");
        }
    }
}
