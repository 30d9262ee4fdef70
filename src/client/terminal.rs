//! The terminal side of the client: a line editor on its own thread.

use std::io;
use std::thread;

use rustyline::error::ReadlineError;
use tokio::sync::mpsc;

use super::Error;

pub(super) type Printer = Box<dyn rustyline::ExternalPrinter + Send>;

/// Runs a line editor on its own thread, sending each entered line to `tx`
/// until Ctrl-D, Ctrl-C or `/quit`.
pub(super) fn spawn_editor(
    tx: mpsc::Sender<String>,
) -> Result<(Printer, thread::JoinHandle<()>), Error> {
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
