//! The terminal side of the client: a line editor on its own thread, a quit
//! signal that does not wait for the line queue, and putting the terminal back
//! as it was found when the process ends under a running editor.
//!
//! Lines typed or pasted faster than they are read stay in rustyline's
//! read-ahead buffer between two `readline` calls (its `buffer-redux`
//! feature), so none is lost. A bracketed paste of several lines comes back
//! from rustyline as one line with real `\n` in it, and is sent as one
//! multi-line message.
//!
//! The editor never waits for room in the line queue, so Ctrl-D and `/quit`
//! are read in every state: it hands each line to a forwarding thread
//! through a hand-off bounded in bytes ([`TYPED_BYTES`]); a line past that is
//! refused with a notice, never dropped in silence.
//!
//! What the client prints reaches rustyline through a relay thread: rustyline
//! prints nothing while it works through typed-ahead keys, and a client
//! blocked on printing would stop taking lines from the editor, which would
//! then wait for room in the line queue forever.

use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use rustyline::error::ReadlineError;
use tokio::sync::{mpsc, oneshot};

use super::Error;
use crate::client::config::TYPED_BYTES;
use crate::util::lock;

pub(super) type Printer = Box<dyn rustyline::ExternalPrinter + Send>;

/// Lines waiting to be printed above the prompt, which fill up while a long
/// paste is being read: past this many, lines are dropped and counted rather
/// than make the client wait.
const PRINT_QUEUE: usize = 1024;

/// The line editor, running on its own thread until the user quits.
pub(super) struct Editor {
    /// Closed when the editor thread ends: Ctrl-D, Ctrl-C, `/quit`, or a
    /// terminal it cannot read.
    ended: oneshot::Receiver<()>,
    /// Lines typed and not yet in the line queue.
    typed: Arc<Typed>,
    /// SIGINT, which Ctrl-C raises whenever rustyline is between two lines
    /// (the terminal is in its usual mode then), for instance while the
    /// editor waits for room in a full line queue. Registered before the
    /// editor starts, so that rustyline restores our handler after each line.
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    /// Whether the user quit with a SIGINT, which the terminal echoed as `^C`.
    interrupted: bool,
    /// The terminal's settings before rustyline first switched it to raw mode.
    #[cfg(unix)]
    saved: Option<nix::sys::termios::Termios>,
}

/// Runs a line editor on its own thread, sending each entered line to `tx`
/// until Ctrl-D, Ctrl-C or `/quit`. Returns the printer that writes above the
/// prompt, and the editor to wait on.
pub(super) fn spawn_editor(tx: mpsc::Sender<String>) -> Result<(Printer, Editor), Error> {
    #[cfg(unix)]
    let saved = nix::sys::termios::tcgetattr(io::stdin()).ok();
    #[cfg(unix)]
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut editor = rustyline::DefaultEditor::new().map_err(io::Error::other)?;
    let printer = relay(editor.create_external_printer().map_err(io::Error::other)?);
    let (done, ended) = oneshot::channel::<()>();
    let typed = Arc::new(Typed::default());
    forward(typed.clone(), tx);
    let hand_off = typed.clone();
    thread::spawn(move || {
        // Dropped when this thread ends, which tells `run` to stop.
        let _done = done;
        loop {
            match editor.readline("> ") {
                Ok(line) => {
                    let Some(line) = to_send(&line) else { continue };
                    if line.trim() == "/quit" {
                        return;
                    }
                    let _ = editor.add_history_entry(line);
                    if !hand_off.push(line) {
                        // Between two lines the terminal is in its usual mode.
                        eprintln!(
                            "! not queued: {TYPED_BYTES} bytes of typed lines are waiting to \
                             be sent already; type it again later"
                        );
                    }
                }
                // Ctrl-D, Ctrl-C, or a SIGINT from elsewhere while reading.
                Err(
                    ReadlineError::Eof
                    | ReadlineError::Interrupted
                    | ReadlineError::Signal(rustyline::error::Signal::Interrupt),
                ) => return,
                Err(ReadlineError::Signal(_)) => {}
                Err(error) => {
                    eprintln!("error: cannot read the terminal: {error}");
                    return;
                }
            }
        }
    });
    let editor = Editor {
        ended,
        typed,
        #[cfg(unix)]
        interrupt,
        interrupted: false,
        #[cfg(unix)]
        saved,
    };
    Ok((printer, editor))
}

/// A printer that never blocks: it hands lines to a thread that waits for
/// rustyline to print them.
fn relay(mut printer: impl rustyline::ExternalPrinter + Send + 'static) -> Printer {
    let (tx, rx) = sync_channel::<String>(PRINT_QUEUE);
    let dropped = Arc::new(AtomicUsize::new(0));
    let counted = dropped.clone();
    thread::spawn(move || {
        for line in rx {
            let missed = counted.swap(0, Ordering::Relaxed);
            if missed > 0 {
                let notice = format!("({missed} lines not shown: the terminal fell behind)");
                if printer.print(notice).is_err() {
                    return;
                }
            }
            if printer.print(line).is_err() {
                return;
            }
        }
    });
    Box::new(Relay { tx, dropped })
}

struct Relay {
    tx: SyncSender<String>,
    dropped: Arc<AtomicUsize>,
}

impl rustyline::ExternalPrinter for Relay {
    fn print(&mut self, line: String) -> rustyline::Result<()> {
        match self.tx.try_send(line) {
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // Disconnected: the printer ends only when the editor has, so
            // the user is quitting and `run` is about to see it.
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
        }
        Ok(())
    }
}

/// What to send for a line the editor returned: `None` for a blank line.
/// Line breaks around a pasted block are dropped; the ones inside it stay.
fn to_send(line: &str) -> Option<&str> {
    if line.trim().is_empty() {
        return None;
    }
    Some(line.trim_matches(['\n', '\r']))
}

impl Editor {
    /// Resolves when the user asks to quit.
    pub(super) async fn quit_requested(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = &mut self.ended => {}
            _ = self.interrupt.recv() => self.interrupted = true,
        }
        #[cfg(not(unix))]
        let _ = (&mut self.ended).await;
    }

    /// Puts the terminal back as it was before the editor started, if the
    /// editor still holds it in raw mode: the process is about to end without
    /// waiting for the editor's thread, which never returns from a read. Ends
    /// with the cursor at the start of a line.
    pub(super) fn restore(&self) {
        #[cfg(unix)]
        {
            use nix::sys::termios::{SetArg, tcgetattr, tcsetattr};
            let Some(saved) = &self.saved else { return };
            let Ok(now) = tcgetattr(io::stdin()) else { return };
            let mut stdout = io::stdout();
            if now.local_flags == saved.local_flags && now.input_flags == saved.input_flags {
                if self.interrupted {
                    // Off the line where the terminal echoed `^C`.
                    let _ = stdout.write_all(b"\n").and_then(|()| stdout.flush());
                }
                return;
            }
            // Bracketed paste off, as rustyline does when it ends a line, and
            // off the prompt's line so that what follows starts on its own.
            let _ = stdout.write_all(b"\x1b[?2004l\r\n").and_then(|()| stdout.flush());
            let _ = tcsetattr(io::stdin(), SetArg::TCSADRAIN, saved);
        }
    }

    /// The line to print when the user quits with typed lines unsent:
    /// `queued` of them, and those still in the hand-off.
    pub(super) fn not_sent(&self, queued: usize) -> Option<String> {
        not_sent(queued + self.typed.len())
    }
}

/// Typed lines on their way from the editor to the line queue, at most
/// [`TYPED_BYTES`] of them.
#[derive(Default)]
struct Typed {
    /// The lines, with their bytes counted; and a line the forwarding thread
    /// holds while it waits for room in the queue.
    lines: Mutex<(VecDeque<String>, usize, bool)>,
    ready: Condvar,
}

impl Typed {
    /// Adds a line; `false` if it does not fit.
    fn push(&self, line: &str) -> bool {
        let mut guard = lock(&self.lines);
        let (lines, bytes, _) = &mut *guard;
        if *bytes + line.len() > TYPED_BYTES {
            return false;
        }
        *bytes += line.len();
        lines.push_back(line.to_owned());
        self.ready.notify_one();
        true
    }

    fn len(&self) -> usize {
        let guard = lock(&self.lines);
        guard.0.len() + usize::from(guard.2)
    }
}

/// Moves typed lines into the line queue, waiting for room there so that
/// the editor never does.
fn forward(typed: Arc<Typed>, tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        loop {
            let line = {
                let mut guard = lock(&typed.lines);
                while guard.0.is_empty() {
                    guard =
                        typed.ready.wait(guard).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                let (lines, bytes, holding) = &mut *guard;
                let line = lines.pop_front().unwrap_or_default();
                *bytes -= line.len();
                *holding = true;
                line
            };
            if tx.blocking_send(line).is_err() {
                return;
            }
            lock(&typed.lines).2 = false;
        }
    });
}

fn not_sent(count: usize) -> Option<String> {
    match count {
        0 => None,
        1 => Some("1 typed line was not sent".into()),
        n => Some(format!("{n} typed lines were not sent")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_are_not_sent_and_pasted_blocks_keep_inner_breaks() {
        assert_eq!(to_send(""), None);
        assert_eq!(to_send(" \t "), None);
        assert_eq!(to_send("\n \n"), None);
        assert_eq!(to_send("\u{3000}"), None);
        assert_eq!(to_send(" hi "), Some(" hi "));
        assert_eq!(to_send("one\ntwo\n"), Some("one\ntwo"));
        assert_eq!(to_send("\none\n\ntwo"), Some("one\n\ntwo"));
    }

    #[test]
    fn the_not_sent_count_reads_as_a_sentence() {
        assert_eq!(not_sent(0), None);
        assert_eq!(not_sent(1).as_deref(), Some("1 typed line was not sent"));
        assert_eq!(not_sent(3).as_deref(), Some("3 typed lines were not sent"));
    }
}
