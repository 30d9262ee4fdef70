//! Where the client's output goes: stdout in a pipe, above the prompt in a
//! terminal, with what could drive a terminal escaped.

use std::io::{self, Write};

use crate::protocol::names::escape_for_display;
use crate::protocol::{Event, PastMessage, is_line_break};

/// How events are printed in a pipe.
#[derive(Debug, Clone, Copy)]
pub(super) struct Style {
    /// Each event as its JSON object (`--json`).
    pub json: bool,
    /// Messages only (`--quiet`).
    pub quiet: bool,
}

/// Where received lines go.
pub(super) enum Output {
    /// Stdout as is: one event per line, in the server's text form.
    Pipe(Style),
    /// Above the prompt, with local times, own messages highlighted.
    Terminal { printer: Box<dyn rustyline::ExternalPrinter + Send>, color: bool },
}

impl Output {
    /// Prints an event; `own` is our name, to highlight our messages.
    pub(super) fn event(&mut self, event: &Event<'_>, own: Option<&str>) -> io::Result<()> {
        match self {
            Output::Pipe(style) => {
                if let (Event::Earlier { .. }, false) = (event, style.json) {
                    return earlier_lines(event, style.quiet);
                }
                if style.quiet && !matches!(event, Event::Message { .. }) {
                    if let Event::Error { text, .. } = event {
                        writeln!(io::stderr(), "error: {}", sanitize(text))?;
                    }
                    return Ok(());
                }
                let line = if style.json { json(event) } else { sanitize(&event.to_string()) };
                print_line(&line)
            }
            Output::Terminal { printer, color } => {
                if let Event::Earlier { messages, more, .. } = event {
                    let shown = earlier_in_terminal(messages, *more, own, *color);
                    return printer.print(shown).map_err(io::Error::other);
                }
                let time = match event {
                    Event::Message { ts, .. }
                    | Event::Join { ts, .. }
                    | Event::Leave { ts, .. } => {
                        ts.with_timezone(&chrono::Local).format("%H:%M ").to_string()
                    }
                    _ => "      ".to_owned(),
                };
                let text = match event {
                    // A message of several lines: its name once, its lines
                    // under one another.
                    Event::Message { from, text, .. } => {
                        let indent = " ".repeat(6 + from.chars().count() + 2);
                        let mut lines = split_lines(text).map(sanitize);
                        let first = lines.next().unwrap_or_default();
                        let mut shown = format!("{}: {first}", sanitize(from));
                        for line in lines {
                            shown.push('\n');
                            shown.push_str(&indent);
                            shown.push_str(&line);
                        }
                        shown
                    }
                    _ => sanitize(&event.to_string()),
                };
                let styled = match event {
                    _ if !*color => text,
                    Event::Error { .. } | Event::Missed { .. } => format!("\x1b[31m{text}\x1b[0m"),
                    Event::Message { from, .. } if Some(from.as_ref()) == own => {
                        format!("\x1b[1;32m{text}\x1b[0m")
                    }
                    Event::Message { .. } => text,
                    _ => dim(&text, true),
                };
                printer.print(dim(&time, *color) + &styled + "\n").map_err(io::Error::other)
            }
        }
    }

    /// A message from the client itself, on stderr so stdout stays the server's.
    pub(super) fn notice(&mut self, text: &str) -> io::Result<()> {
        match self {
            Output::Pipe(_) => writeln!(io::stderr(), "{}", sanitize(text)),
            Output::Terminal { printer, color, .. } => {
                printer.print(dim(&sanitize(text), *color) + "\n").map_err(io::Error::other)
            }
        }
    }

    /// Says that line `number` of the input was not sent, or not carried
    /// out, and why.
    pub(super) fn line_refused(&mut self, number: u64, why: &str, by: Refusal) -> io::Result<()> {
        let why = sanitize(why);
        match self {
            Output::Pipe(_) => writeln!(io::stderr(), "error: line {number} was not sent: {why}"),
            Output::Terminal { printer, color } => {
                // In a terminal the line was just typed: the server's own
                // words say what happened to it.
                let text = match by {
                    Refusal::Local => format!("! not sent: {why}"),
                    Refusal::Server => format!("! {why}"),
                };
                let text = if *color { format!("\x1b[31m{text}\x1b[0m") } else { text };
                printer.print(format!("      {text}\n")).map_err(io::Error::other)
            }
        }
    }
}

/// Writes one line to stdout.
fn print_line(line: &str) -> io::Result<()> {
    match writeln!(io::stdout(), "{line}") {
        // A reader that went away (`| head`) is not a failure.
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        result => result,
    }
}

/// An `earlier` answer in a pipe: the server's text form, so that scripts
/// read the same lines whichever protocol they speak. A header, one
/// `#SEQ YYYY-MM-DD HH:MM:SSZ NAME: TEXT` line per message (UTC, so the
/// output does not depend on where it runs; line breaks marked, so that no
/// message forges a line), and `* more: /history N SEQ` when the store holds
/// older ones. With `--quiet`, the message lines only.
fn earlier_lines(event: &Event<'_>, quiet: bool) -> io::Result<()> {
    for line in event.to_string().split('\n') {
        if quiet && line.starts_with("* ") {
            continue;
        }
        print_line(&sanitize(line))?;
    }
    Ok(())
}

/// An `earlier` answer above the prompt, in one piece: each message with its
/// local date and time, its lines under one another as live ones are, and a
/// last line that says whether `/history` again would find more.
fn earlier_in_terminal(
    messages: &[PastMessage<'_>],
    more: bool,
    own: Option<&str>,
    color: bool,
) -> String {
    const BLANK: &str = "      ";
    if messages.is_empty() {
        return dim(&format!("{BLANK}* no earlier messages"), color) + "\n";
    }
    let count = messages.len();
    let s = if count == 1 { "" } else { "s" };
    let mut shown = dim(&format!("{BLANK}* {count} earlier message{s}:"), color) + "\n";
    for PastMessage { from, text, ts, .. } in messages {
        let when = ts.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M ").to_string();
        let indent = " ".repeat(when.chars().count() + from.chars().count() + 2);
        let mut lines = split_lines(text).map(sanitize);
        let mut line = format!("{}: {}", sanitize(from), lines.next().unwrap_or_default());
        for rest in lines {
            line.push('\n');
            line.push_str(&indent);
            line.push_str(&rest);
        }
        if color && Some(from.as_ref()) == own {
            line = format!("\x1b[1;32m{line}\x1b[0m");
        }
        shown.push_str(&dim(&when, color));
        shown.push_str(&line);
        shown.push('\n');
    }
    let footer = if more {
        "* more: /history again for earlier ones"
    } else {
        "* no earlier messages before these"
    };
    shown + &dim(&format!("{BLANK}{footer}"), color) + "\n"
}

/// Who refused a line.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refusal {
    /// The client, before sending it.
    Local,
    /// The server, in its answer.
    Server,
}

/// The event's JSON line, without the session secret: output may be shared.
fn json(event: &Event<'_>) -> String {
    if let Event::Welcome { session: Some(_), .. } = event {
        let mut event = event.clone();
        if let Event::Welcome { session, .. } = &mut event {
            *session = None;
        }
        return event.encode_json();
    }
    event.encode_json()
}

/// The lines of a message, split at every kind of line break.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split("\r\n").flat_map(|part| part.split(is_line_break))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_messages_in_a_terminal_have_dates_and_say_whether_there_are_more() {
        let ts = "2026-11-24T10:00:00Z".parse().unwrap();
        let past =
            |seq, text: &'static str| PastMessage { seq, from: "al".into(), text: text.into(), ts };
        let shown =
            earlier_in_terminal(&[past(1, "one"), past(2, "a\nb\u{1b}")], true, None, false);
        let date = ts.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M ").to_string();
        let indent = " ".repeat(date.len() + 4);
        assert_eq!(
            shown,
            format!(
                "      * 2 earlier messages:\n{date}al: one\n{date}al: a\n{indent}b\\u{{1b}}\n      \
                 * more: /history again for earlier ones\n"
            )
        );
        let last = earlier_in_terminal(&[past(1, "one")], false, None, false);
        assert!(last.ends_with("* no earlier messages before these\n"), "{last}");
        assert_eq!(earlier_in_terminal(&[], false, None, false), "      * no earlier messages\n");
    }
}
