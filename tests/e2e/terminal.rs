//! The client at a terminal, through a real pseudo-terminal: lines typed or
//! pasted faster than they are read all arrive, a bracketed paste is one
//! message, quitting works in every state and leaves the terminal as it was,
//! received text is displayed intact, and `/history` shows earlier messages
//! with their dates.
//!
//! The tests run on a multi-threaded runtime: the terminal is waited on with
//! blocking reads on the test's own thread while the server runs on the
//! workers.

use std::fs::File;
use std::io::Read as _;
use std::process::Command;
use std::sync::mpsc;
use std::time::Instant;

use crate::common::{CLIENT, PATIENCE, Peer, TestServer, connect_json, next_json};
use chat::server::config::ServerConfig;
use expectrl::process::unix::WaitStatus;
use expectrl::{Expect as _, Session};
use nix::sys::termios::{InputFlags, LocalFlags, tcgetattr};

/// The client running at a pseudo-terminal, and what it has displayed.
struct Terminal {
    session: expectrl::session::OsSession,
    /// The master side, to read the terminal's settings.
    master: File,
    /// What a thread reads from the terminal; closed when the client is gone.
    output: mpsc::Receiver<Vec<u8>>,
    /// Displayed and not yet matched.
    seen: Vec<u8>,
}

impl Terminal {
    /// Starts the client at a new terminal, joining `url` with `args`.
    fn start(url: &str, args: &[&str]) -> Self {
        let mut command = Command::new(CLIENT);
        command.arg(url).args(args);
        for var in ["CHAT_URL", "CHAT_NAME", "CHAT_TOKEN", "CHAT_RETRIES", "RUST_LOG"] {
            command.env_remove(var);
        }
        command.env("TERM", "xterm").env("NO_COLOR", "1");
        let session = Session::spawn(command).expect("spawn the client at a terminal");
        let master = session.get_process().get_raw_handle().expect("the terminal's master side");
        // Read on a thread with blocking reads: waiting costs no CPU.
        let mut reader = master.try_clone().expect("a second handle");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            // The read fails (EIO) once the client and its terminal are gone.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Self { session, master, output, seen: Vec::new() }
    }

    /// Types (or pastes) `keys` in one write.
    fn keys(&mut self, keys: &str) {
        self.session.send(keys).expect("write to the terminal");
    }

    /// Waits until the editor has returned `count` lines and reads keys
    /// again: rustyline turns bracketed paste off when it returns a line, and
    /// on when it is back in raw mode. In between, the terminal is in its
    /// usual mode, where a Ctrl-D would be taken by the terminal itself.
    fn lines_read(&mut self, count: usize) {
        for _ in 0..count {
            self.expect("\x1b[?2004l");
            self.expect("\x1b[?2004h");
        }
    }

    /// Waits until `text` is displayed; returns what was displayed before it.
    /// What comes after it stays to be matched.
    fn expect(&mut self, text: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(at) = self.seen.windows(text.len()).position(|w| w == text.as_bytes()) {
                let before = String::from_utf8_lossy(&self.seen[..at]).into_owned();
                self.seen.drain(..at + text.len());
                return before;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.seen.extend(bytes),
                Err(end) => panic!(
                    "expected {text:?} on the terminal ({end}); it shows {:?}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    /// The rest of the displayed line that starts with `text`.
    fn line_after(&mut self, text: &str) -> String {
        self.expect(text);
        self.expect("\n").trim_end_matches('\r').to_owned()
    }

    /// Waits until the client has exited and closed the terminal; returns
    /// everything it displayed meanwhile.
    fn expect_end(&mut self) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.seen.extend(bytes),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return String::from_utf8_lossy(&std::mem::take(&mut self.seen)).into_owned();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "the client did not exit; it shows {:?}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    /// The client's exit code, once it has exited.
    fn exit_code(&mut self) -> i32 {
        match self.session.get_process().wait().expect("wait for the client") {
            WaitStatus::Exited(_, code) => code,
            status => panic!("the client did not exit normally: {status:?}"),
        }
    }

    /// Whether the terminal is back in its usual mode, not raw: lines edited
    /// by the terminal, Ctrl-C a signal, Enter read as a line feed. (Echo is
    /// not checked: the terminal starts without it, the way expectrl sets it.)
    fn is_cooked(&self) -> bool {
        let settings = tcgetattr(&self.master).expect("the terminal's settings");
        settings.local_flags.contains(LocalFlags::ICANON | LocalFlags::ISIG | LocalFlags::IEXTEN)
            && settings.input_flags.contains(InputFlags::ICRNL)
    }
}

/// Starts the client as bob at a terminal, and waits until it is in the room
/// with its prompt shown (the editor reads keys from then on).
fn bob_joins(server: &TestServer, args: &[&str]) -> Terminal {
    let mut bob = Terminal::start(&server.url("/"), &[&["--name", "bob"], args].concat());
    bob.expect("* bob joined");
    bob.expect("> ");
    bob
}

/// Ctrl-D, then the client must exit with 0 and leave the terminal cooked.
fn quits(mut bob: Terminal) {
    bob.keys("\x04");
    let shown = bob.expect_end();
    assert_eq!(bob.exit_code(), 0, "the client exited after showing {shown:?}");
    assert!(bob.is_cooked());
}

/// The next message event a JSON client gets, as (from, text).
async fn next_message<S>(ws: &mut S) -> (String, String)
where
    S: futures_util::Stream<Item = Result<tokio_websockets::Message, tokio_websockets::Error>>
        + Unpin,
{
    loop {
        let event = next_json(ws).await;
        if event["type"] == "message" {
            let field = |key: &str| event[key].as_str().expect("a string field").to_owned();
            return (field("from"), field("text"));
        }
    }
}

fn numbered(word: &str, count: usize) -> Vec<String> {
    (1..=count).map(|n| format!("{word} {n}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_lines_typed_in_one_burst_all_arrive_in_order() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = bob_joins(&server, &[]);
    alice.expect("* bob joined").await;

    bob.keys("fast one\rfast two\rfast three\r");
    bob.lines_read(3);
    alice.expect("bob: fast one").await;
    alice.expect("bob: fast two").await;
    alice.expect("bob: fast three").await;
    quits(bob);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_line_paste_without_bracketed_paste_is_30_messages_in_order() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = bob_joins(&server, &[]);
    alice.expect("* bob joined").await;

    let lines = numbered("line", 30);
    bob.keys(&(lines.join("\r") + "\r"));
    bob.lines_read(30);
    for line in &lines {
        alice.expect(&format!("bob: {line}")).await;
    }
    quits(bob);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_line_bracketed_paste_is_one_message_with_its_line_breaks() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut carol = connect_json(&server.url("/?name=carol")).await;
    alice.expect("* carol joined").await;
    let mut bob = bob_joins(&server, &[]);
    alice.expect("* bob joined").await;

    // The terminal wraps a paste in ESC[200~ … ESC[201~ and sends its line
    // breaks as carriage returns; Enter sends it.
    let lines = numbered("pasted", 30);
    bob.keys(&format!("\x1b[200~{}\r\x1b[201~\r", lines.join("\r")));
    bob.lines_read(1);
    assert_eq!(next_message(&mut carol).await, ("bob".into(), lines.join("\n")));
    // The text protocol shows it on one line, each break as U+2424.
    alice.expect(&format!("bob: {}", lines.join("\u{2424}"))).await;
    bob.keys("after the paste\r");
    bob.lines_read(1);
    assert_eq!(next_message(&mut carol).await, ("bob".into(), "after the paste".into()));
    alice.expect("bob: after the paste").await;
    quits(bob);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_of_only_whitespace_are_not_sent() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = bob_joins(&server, &[]);
    alice.expect("* bob joined").await;

    bob.keys("   \r\u{3000}\rnot blank\r");
    bob.lines_read(3);
    alice.expect("bob: not blank").await;
    quits(bob);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_reconnecting_with_a_queued_line_exits_0_and_says_it_was_not_sent() {
    let server = TestServer::start().await;
    let mut bob = bob_joins(&server, &[]);
    server.stop().await;
    bob.expect("reconnecting in");

    bob.keys("typed while away\r");
    bob.lines_read(1);
    bob.keys("\x03");
    let rest = bob.expect_end();
    assert!(rest.contains("1 typed line was not sent"), "{rest:?}");
    assert_eq!(bob.exit_code(), 0);
    assert!(bob.is_cooked());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_d_while_connected_exits_0() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let bob = bob_joins(&server, &[]);
    alice.expect("* bob joined").await;

    quits(bob);
    alice.expect("* bob left").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_shown_under_its_line_does_not_make_quitting_a_failure() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = bob_joins(&server, &[]);
    alice.expect("* bob joined").await;

    bob.keys("/nick alice\r");
    bob.expect("name \"alice\" is taken");
    bob.keys("hello\r");
    alice.expect("bob: hello").await;
    bob.keys("/quit\r");
    let rest = bob.expect_end();
    assert!(!rest.contains("not sent"), "{rest:?}");
    assert_eq!(bob.exit_code(), 0);
    alice.expect("* bob left").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_command_while_connected_exits_0() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = bob_joins(&server, &[]);
    alice.expect("* bob joined").await;

    bob.keys("/quit\r");
    let rest = bob.expect_end();
    assert!(!rest.contains("not sent"), "{rest:?}");
    assert_eq!(bob.exit_code(), 0);
    assert!(bob.is_cooked());
    alice.expect("* bob left").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_exits_without_a_key_press_when_the_server_is_gone_for_good() {
    let server = TestServer::start().await;
    let mut bob = bob_joins(&server, &["--retries", "0"]);
    // Half a line typed: the editor is in the middle of a read.
    bob.keys("half a li");
    bob.expect("half a li");
    server.stop().await;

    let rest = bob.expect_end();
    assert!(rest.contains("error: the server closed the connection"), "{rest:?}");
    assert_eq!(bob.exit_code(), 1);
    assert!(bob.is_cooked());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emoji_sequences_and_zwnj_are_displayed_intact() {
    let server = TestServer::start().await;
    let mut alice = Peer::named(&server, "alice").await;
    let mut bob = bob_joins(&server, &[]);
    alice.expect("* bob joined").await;

    // A family (three people joined by ZWJ) and Persian with a ZWNJ.
    let text = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467} \u{645}\u{6CC}\u{200C}\u{62E}\u{648}\u{627}\u{647}\u{645}";
    assert_eq!(text, "👨‍👩‍👧 می‌خواهم");
    alice.send(text).await;
    assert_eq!(bob.line_after("alice: "), text);
    quits(bob);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_d_while_reconnecting_with_more_lines_than_the_queue_holds_exits_0() {
    let server = TestServer::start().await;
    let mut bob = bob_joins(&server, &[]);
    server.stop().await;
    bob.expect("reconnecting in");

    // More lines than the line queue and the client's pending lines hold
    // (64 each): the editor still reads keys, so Ctrl-D is seen.
    let count = 200;
    let mut keys = numbered("away", count).join("\r");
    keys.push_str("\r\x04");
    bob.keys(&keys);
    let rest = bob.expect_end();
    assert!(rest.contains(&format!("{count} typed lines were not sent")), "{rest:?}");
    assert_eq!(bob.exit_code(), 0);
    assert!(bob.is_cooked());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_earlier_messages_with_their_dates_and_whether_there_are_more() {
    let config = ServerConfig { history: 2, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let mut alice = Peer::named(&server, "alice").await;
    for n in 1..=5 {
        alice.send(&format!("m{n}")).await;
        alice.expect(&format!("alice: m{n}")).await;
    }
    // The join replays m4 and m5: /history pages back from there.
    let mut bob = bob_joins(&server, &[]);
    bob.keys("/history 2\r");
    bob.lines_read(1);
    bob.expect("* 2 earlier messages:");
    for text in ["alice: m2", "alice: m3"] {
        let before = bob.expect(text);
        // Each line starts with its local date and time.
        let date = before.rsplit(['\n', '\r']).next().unwrap_or_default();
        let parsed = chrono::NaiveDateTime::parse_from_str(date, "%Y-%m-%d %H:%M ");
        assert!(parsed.is_ok(), "{text} shown after {before:?}");
    }
    bob.expect("* more: /history again for earlier ones");
    bob.keys("/history 2\r");
    bob.lines_read(1);
    bob.expect("* 1 earlier message:");
    bob.expect("alice: m1");
    bob.expect("* no earlier messages before these");
    bob.keys("/history\r");
    bob.lines_read(1);
    bob.expect("* no earlier messages\r\n");
    quits(bob);
    server.stop().await;
}
