//! The wire protocol, in one place: what a client's text frame asks for, the text
//! frames the server sends, and the rules for names and rooms.
//!
//! Every server frame is one line whose first characters say what it is:
//! `NAME: TEXT` is a message (names never hold whitespace, so the first `": "`
//! ends the name), `* ` starts a notice and `! ` starts an error meant for the
//! reader only.

use std::fmt;

/// The room of the path `/`.
pub const DEFAULT_ROOM: &str = "lobby";
/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Most names a `/who` answer lists; the rest are counted.
pub const MAX_WHO_NAMES: usize = 100;
/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 32;

/// What one text frame from a client asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// Relay this text to the room.
    Say(&'a str),
    /// `/nick NAME`: change name.
    Nick(&'a str),
    /// `/who`: list the room.
    Who,
    /// `/help`: list the commands.
    Help,
    /// `/nick` without a name.
    MissingArgument(&'static str),
    /// Any other `/command`.
    Unknown(&'a str),
}

/// Reads one client text frame. A leading `//` escapes a literal `/`.
pub fn parse_command(text: &str) -> Command<'_> {
    if text.starts_with("//") {
        // Keep one slash: `//help` says `/help`.
        return Command::Say(&text[1..]);
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Command::Say(text);
    };
    let (name, arg) = match rest.split_once(char::is_whitespace) {
        Some((name, arg)) => (name, arg.trim()),
        None => (rest, ""),
    };
    match name {
        "nick" if arg.is_empty() => Command::MissingArgument("/nick NAME"),
        "nick" => Command::Nick(arg),
        "who" => Command::Who,
        "help" => Command::Help,
        _ => Command::Unknown(name),
    }
}

/// Why a name or room name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing was given.
    #[error("it is empty")]
    Empty,
    /// Over the length limit.
    #[error("it is longer than {max} characters")]
    TooLong {
        /// The limit, in characters.
        max: usize,
    },
    /// Holds a space, tab or other whitespace.
    #[error("it contains whitespace")]
    Whitespace,
    /// Holds a control character or an invisible formatting character
    /// (bidirectional overrides, zero-width characters) that could disguise it.
    #[error("it contains control or invisible formatting characters")]
    Control,
    /// A room name holds something other than letters, digits, `-`, `_` or `.`.
    #[error("room names use only letters, digits, '-', '_' and '.'")]
    RoomCharacter,
}

/// Bidirectional overrides and zero-width characters: text that displays as
/// something other than what it is.
pub fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Checks a user name: 1 to [`MAX_NAME_CHARS`] characters, no whitespace, no
/// control or invisible formatting characters.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(NameError::TooLong { max: MAX_NAME_CHARS });
    }
    if name.chars().any(char::is_whitespace) {
        return Err(NameError::Whitespace);
    }
    if name.chars().any(|c| c.is_control() || is_invisible_format(c)) {
        return Err(NameError::Control);
    }
    Ok(())
}

/// The room a request path names: `/` is [`DEFAULT_ROOM`], `/rust` is `rust`.
/// Room names are 1 to [`MAX_ROOM_CHARS`] ASCII letters, digits, `-`, `_` or `.`.
pub fn room_from_path(path: &str) -> Result<&str, NameError> {
    let room = path.strip_prefix('/').unwrap_or(path);
    if room.is_empty() {
        return Ok(DEFAULT_ROOM);
    }
    if room.len() > MAX_ROOM_CHARS {
        return Err(NameError::TooLong { max: MAX_ROOM_CHARS });
    }
    if !room.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(NameError::RoomCharacter);
    }
    Ok(room)
}

/// The `name` parameter of a request's query string, if any.
pub fn name_from_query(query: Option<&str>) -> Option<String> {
    query_param(query, "name")
}

/// A parameter of a request's query string, decoded, if present.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

/// One frame from the server, in its text form (see [`fmt::Display`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// `NAME: TEXT`
    Message {
        /// Sender's name.
        from: &'a str,
        /// The text, verbatim.
        text: &'a str,
    },
    /// `* NAME joined`
    Joined {
        /// Who joined.
        name: &'a str,
    },
    /// `* NAME left`
    Left {
        /// Who left.
        name: &'a str,
    },
    /// `* OLD is now NEW`
    Renamed {
        /// Name before.
        old: &'a str,
        /// Name after.
        new: &'a str,
    },
    /// Sent to a client when it joins, before its own join notice.
    Welcome {
        /// The client's name.
        name: &'a str,
        /// Its room.
        room: &'a str,
        /// Clients in the room, itself included.
        online: usize,
    },
    /// Answer to `/who`: `* N in ROOM: a, b, c` (and `, and M more` past
    /// [`MAX_WHO_NAMES`]).
    Who {
        /// The room.
        room: &'a str,
        /// How many are in the room.
        count: usize,
        /// Names, sorted; at most [`MAX_WHO_NAMES`].
        names: &'a [&'a str],
    },
    /// In a room too large to announce each arrival: what changed lately.
    Presence {
        /// Arrivals since the last summary.
        joined: u64,
        /// Departures since the last summary.
        left: u64,
        /// Clients in the room now.
        online: usize,
    },
    /// Answer to `/help`.
    Help,
    /// Before the room's recent messages, sent to a client that joins.
    HistoryStart {
        /// How many follow.
        count: usize,
    },
    /// After them.
    HistoryEnd,
    /// The client fell behind and these messages were skipped for it.
    Missed {
        /// How many.
        count: u64,
    },
    /// Something the client sent was refused; only that client sees it.
    Error(ClientError<'a>),
}

/// What a client did wrong; sent to that client only, as `! ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError<'a> {
    /// A name that breaks [`validate_name`].
    InvalidName {
        /// The refused name.
        name: &'a str,
        /// Why.
        reason: NameError,
    },
    /// Someone in the room already has this name.
    NameTaken {
        /// The refused name.
        name: &'a str,
    },
    /// A `/command` the server does not know.
    UnknownCommand {
        /// The command without its slash.
        command: &'a str,
    },
    /// A command without its argument.
    Usage {
        /// How to call it.
        usage: &'static str,
    },
    /// An empty text frame.
    EmptyMessage,
    /// A binary frame: this protocol is text.
    BinaryFrame,
    /// Over the rate limit: the frame was dropped.
    SlowDown {
        /// The limit, in messages per second.
        per_second: u32,
    },
}

/// `/help`'s answer.
pub const HELP: &str = "* commands: /nick NAME changes your name, /who lists the room, \
                        /help shows this; start a message with // to send a literal /";

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Message { from, text } => write!(f, "{from}: {text}"),
            Event::Joined { name } => write!(f, "* {name} joined"),
            Event::Left { name } => write!(f, "* {name} left"),
            Event::Renamed { old, new } => write!(f, "* {old} is now {new}"),
            Event::Welcome { name, room, online } => write!(
                f,
                "* you are {name} in room {room}, {online} online; /help lists the commands"
            ),
            Event::Who { room, count, names } => {
                write!(f, "* {count} in {room}: {}", names.join(", "))?;
                if *count > names.len() {
                    write!(f, ", and {} more", count - names.len())?;
                }
                Ok(())
            }
            Event::Presence { joined, left, online } => {
                write!(f, "* {joined} joined, {left} left; {online} online")
            }
            Event::Help => f.write_str(HELP),
            Event::HistoryStart { count } => write!(f, "* {count} earlier messages"),
            Event::HistoryEnd => f.write_str("* end of history"),
            Event::Missed { count } => write!(f, "! missed {count} messages"),
            Event::Error(error) => write!(f, "! {error}"),
        }
    }
}

impl fmt::Display for ClientError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Debug quoting escapes whatever control characters the name holds.
            ClientError::InvalidName { name, reason } => {
                write!(f, "invalid name {name:?}: {reason}")
            }
            ClientError::NameTaken { name } => write!(f, "name {name:?} is taken"),
            ClientError::UnknownCommand { command } => {
                write!(f, "unknown command /{}; /help lists the commands", command.escape_debug())
            }
            ClientError::Usage { usage } => write!(f, "usage: {usage}"),
            ClientError::EmptyMessage => f.write_str("empty message: nothing was sent"),
            ClientError::SlowDown { per_second } => write!(
                f,
                "slow down: at most {per_second} messages a second; this one was not sent"
            ),
            ClientError::BinaryFrame => {
                f.write_str("binary frames are not chat: send text frames; nothing was sent")
            }
        }
    }
}

/// The name in a [`Event::Welcome`] line, for clients that track their own name.
pub fn parse_welcome(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("* you are ")?;
    rest.split_once(" in room ").map(|(name, _)| name)
}

/// The old and new names in a [`Event::Renamed`] line.
pub fn parse_renamed(line: &str) -> Option<(&str, &str)> {
    let (old, new) = line.strip_prefix("* ")?.split_once(" is now ")?;
    (validate_name(old).is_ok() && validate_name(new).is_ok()).then_some((old, new))
}

/// The sender of a [`Event::Message`] line.
pub fn parse_sender(line: &str) -> Option<&str> {
    let (name, _) = line.split_once(": ")?;
    validate_name(name).is_ok().then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse_command("hello"), Command::Say("hello"));
        assert_eq!(parse_command("//nick x"), Command::Say("/nick x"));
        assert_eq!(parse_command("//"), Command::Say("/"));
        assert_eq!(parse_command("/nick  bob "), Command::Nick("bob"));
        assert_eq!(parse_command("/nick"), Command::MissingArgument("/nick NAME"));
        assert_eq!(parse_command("/nick   "), Command::MissingArgument("/nick NAME"));
        assert_eq!(parse_command("/who"), Command::Who);
        assert_eq!(parse_command("/help"), Command::Help);
        assert_eq!(parse_command("/quit now"), Command::Unknown("quit"));
        assert_eq!(parse_command("/"), Command::Unknown(""));
        assert_eq!(parse_command(""), Command::Say(""));
    }

    #[test]
    fn names() {
        assert_eq!(validate_name("alice"), Ok(()));
        assert_eq!(validate_name("zoë_42"), Ok(()));
        assert_eq!(validate_name(&"é".repeat(32)), Ok(()));
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(&"a".repeat(33)), Err(NameError::TooLong { max: 32 }));
        assert_eq!(validate_name("a b"), Err(NameError::Whitespace));
        assert_eq!(validate_name("a\u{3000}b"), Err(NameError::Whitespace));
        assert_eq!(validate_name("a\u{1b}[31m"), Err(NameError::Control));
        assert_eq!(validate_name("evil\u{202E}txt"), Err(NameError::Control));
        assert_eq!(validate_name("a\u{200B}"), Err(NameError::Control));
    }

    #[test]
    fn rooms() {
        assert_eq!(room_from_path("/"), Ok("lobby"));
        assert_eq!(room_from_path(""), Ok("lobby"));
        assert_eq!(room_from_path("/rust"), Ok("rust"));
        assert_eq!(room_from_path("/a.b-c_d"), Ok("a.b-c_d"));
        assert_eq!(room_from_path("/a/b"), Err(NameError::RoomCharacter));
        assert_eq!(room_from_path("/%20"), Err(NameError::RoomCharacter));
        assert!(room_from_path(&format!("/{}", "r".repeat(33))).is_err());
    }

    #[test]
    fn query() {
        assert_eq!(name_from_query(Some("name=alice")), Some("alice".into()));
        assert_eq!(name_from_query(Some("x=1&name=zo%C3%AB")), Some("zoë".into()));
        assert_eq!(name_from_query(Some("name=a+b")), Some("a b".into()));
        assert_eq!(name_from_query(Some("x=1")), None);
        assert_eq!(name_from_query(None), None);
    }

    #[test]
    fn event_text_round_trips_through_the_client_parsers() {
        let welcome = Event::Welcome { name: "bob", room: "lobby", online: 2 }.to_string();
        assert_eq!(parse_welcome(&welcome), Some("bob"));
        let renamed = Event::Renamed { old: "bob", new: "rob" }.to_string();
        assert_eq!(renamed, "* bob is now rob");
        assert_eq!(parse_renamed(&renamed), Some(("bob", "rob")));
        let message = Event::Message { from: "a:", text: "b: c" }.to_string();
        assert_eq!(parse_sender(&message), Some("a:"));
        assert_eq!(parse_sender("* bob joined"), None);
        let who = Event::Who { room: "r", count: 2, names: &["a", "b"] }.to_string();
        assert_eq!(who, "* 2 in r: a, b");
        let who = Event::Who { room: "r", count: 5, names: &["a", "b"] }.to_string();
        assert_eq!(who, "* 5 in r: a, b, and 3 more");
        let presence = Event::Presence { joined: 3, left: 1, online: 200 }.to_string();
        assert_eq!(presence, "* 3 joined, 1 left; 200 online");
        assert_eq!(Event::Missed { count: 3 }.to_string(), "! missed 3 messages");
        let error = ClientError::InvalidName { name: "a\u{1b}", reason: NameError::Control };
        assert_eq!(
            Event::Error(error).to_string(),
            "! invalid name \"a\\u{1b}\": it contains control or invisible formatting characters"
        );
    }
}
