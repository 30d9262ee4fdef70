//! Where the client's output goes: stdout in a pipe, above the prompt in a
//! terminal, with what could drive a terminal escaped.

use std::io::{self, Write};

use crate::names::escape_for_display;
use crate::protocol::Event;

/// Where received lines go.
pub(super) enum Output {
    /// Stdout as is: one event per line, in the server's text form.
    Pipe,
    /// Above the prompt, with local times, own messages highlighted.
    Terminal { printer: Box<dyn rustyline::ExternalPrinter + Send>, color: bool },
}

impl Output {
    /// Prints an event; `own` is our name, to highlight our messages.
    pub(super) fn event(&mut self, event: &Event<'_>, own: Option<&str>) -> io::Result<()> {
        let safe = sanitize(&event.to_string());
        match self {
            Output::Pipe => match writeln!(io::stdout(), "{safe}") {
                // A reader that went away (`| head`) is not a failure.
                Err(error) if error.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
                result => result,
            },
            Output::Terminal { printer, color } => {
                let styled = match event {
                    _ if !*color => safe,
                    Event::Error { .. } | Event::Missed { .. } => format!("\x1b[31m{safe}\x1b[0m"),
                    Event::Message { from, .. } if Some(from.as_ref()) == own => {
                        format!("\x1b[1;32m{safe}\x1b[0m")
                    }
                    Event::Message { .. } => safe,
                    _ => dim(&safe, true),
                };
                let time = match event {
                    Event::Message { ts, .. }
                    | Event::Join { ts, .. }
                    | Event::Leave { ts, .. } => {
                        ts.with_timezone(&chrono::Local).format("%H:%M ").to_string()
                    }
                    _ => "      ".to_owned(),
                };
                printer.print(dim(&time, *color) + &styled + "\n").map_err(io::Error::other)
            }
        }
    }

    /// A message from the client itself, on stderr so stdout stays the server's.
    pub(super) fn notice(&mut self, text: &str) -> io::Result<()> {
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

/// Escapes what could drive a terminal or reorder what it shows (see
/// [`escape_for_display`]), so that received text cannot move the cursor,
/// recolour the terminal, break a line or disguise itself.
pub fn sanitize(text: &str) -> String {
    escape_for_display(text).into_owned()
}
