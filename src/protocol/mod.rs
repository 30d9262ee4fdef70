//! The wire protocol, shared by server, client and tests. Map: this file
//! holds what a client's text frame asks for, the frames the server sends,
//! and the rules for rooms; [`names`] holds the rules for names (the ones
//! the protocol refers to are re-exported here) and for escaping received text.
//!
//! Every server frame is one line whose first characters say what it is:
//! `NAME: TEXT` is a message (names never hold whitespace, so the first `": "`
//! ends the name), `* ` starts a notice and `! ` starts an error meant for the
//! reader only.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

pub mod names;

// Re-exported: a refused name is part of the protocol's error events.
pub use crate::protocol::names::{MAX_NAME_CHARS, NameError, name_key, validate_name};

/// The room of the path `/`.
pub const DEFAULT_ROOM: &str = "lobby";
/// Most names a `/who` answer lists; the rest are counted.
pub const MAX_WHO_NAMES: usize = 100;
/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 32;

/// A chat upgrade request, checked: what a client asks for when it joins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatRequest {
    /// The room its path names.
    pub room: String,
    /// The name from `?name=`, not yet validated.
    pub name: Option<String>,
    /// From `?since=SEQ&epoch=E`: the last message it has.
    pub resume: Option<Resume>,
    /// What it asked for in `Sec-WebSocket-Protocol`.
    pub protocol: Protocol,
    /// From `?session=`: the secret of an earlier connection, to take its
    /// name back. Never logged.
    pub session: Option<String>,
}

/// Where a returning client left a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The last message number it got.
    pub since: u64,
    /// The epoch that number belongs to.
    pub epoch: String,
}

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

/// Paths of the server's own, now or to come, that can never be rooms (rooms
/// will be kept, so the names are taken before anyone holds them).
pub const RESERVED_ROOMS: [&str; 8] =
    [".", "..", "healthz", "readyz", "livez", "metrics", "api", "favicon.ico"];

/// The room a request path names: `/` is [`DEFAULT_ROOM`], `/rust` is `rust`.
/// Room names are 1 to [`MAX_ROOM_CHARS`] ASCII letters, digits, `-`, `_` or `.`,
/// other than the [`RESERVED_ROOMS`].
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
    if RESERVED_ROOMS.iter().any(|reserved| reserved.eq_ignore_ascii_case(room)) {
        return Err(NameError::Reserved);
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

/// A string on the wire: borrowed when the server builds an event, owned when
/// a client decodes one.
pub type Str<'a> = Cow<'a, str>;

/// When something happened: RFC 3339, UTC, to the millisecond.
pub type Timestamp = DateTime<Utc>;

/// The current time as events carry it.
pub fn now() -> Timestamp {
    Utc::now().trunc_subsecs(3)
}

/// One frame from the server. Its text form (the default protocol) is its
/// [`fmt::Display`]; its JSON form (subprotocol [`JSON_PROTOCOL`]) is its serde
/// form: one object whose `type` names the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event<'a> {
    /// `NAME: TEXT`
    Message {
        /// The room.
        room: Str<'a>,
        /// The message's number in its room: strictly increasing.
        seq: u64,
        /// Sender's name.
        from: Str<'a>,
        /// The text, verbatim.
        text: Str<'a>,
        /// When the server relayed it.
        ts: Timestamp,
    },
    /// `* NAME joined`
    Join {
        /// The room.
        room: Str<'a>,
        /// Who joined.
        name: Str<'a>,
        /// When.
        ts: Timestamp,
    },
    /// `* NAME left`
    Leave {
        /// The room.
        room: Str<'a>,
        /// Who left.
        name: Str<'a>,
        /// When.
        ts: Timestamp,
    },
    /// `* OLD is now NEW`
    Nick {
        /// The room.
        room: Str<'a>,
        /// Name before.
        old: Str<'a>,
        /// Name after.
        new: Str<'a>,
    },
    /// Sent to a client when it joins, before anything else but an error about
    /// its requested name.
    Welcome {
        /// Its room.
        room: Str<'a>,
        /// The client's name.
        name: Str<'a>,
        /// Clients in the room, itself included.
        online: usize,
        /// Identifies the room's history: a different epoch means the
        /// numbering restarted (a restarted server, or a room that emptied).
        epoch: Str<'a>,
        /// The room's last message number; later ones are live.
        seq: u64,
        /// What this client may send (JSON only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limits: Option<Limits>,
        /// A secret that gets this client its name back when it reconnects
        /// with `?session=` (JSON only; never printed or logged).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<Str<'a>>,
        /// For a returning session: the id of the last message request its
        /// old connection carried out, so that it sends again only the rest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_id: Option<Str<'a>>,
    },
    /// Answer to `/who`: `* N in ROOM: a, b, c` (and `, and M more` past
    /// [`MAX_WHO_NAMES`]).
    Who {
        /// The room.
        room: Str<'a>,
        /// How many are in the room.
        count: usize,
        /// Names, sorted; at most [`MAX_WHO_NAMES`].
        names: Vec<Str<'a>>,
        /// The request's id, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Str<'a>>,
    },
    /// In a room too large to announce each arrival: what changed lately.
    Presence {
        /// The room.
        room: Str<'a>,
        /// Arrivals since the last summary.
        joined: u64,
        /// Departures since the last summary.
        left: u64,
        /// Clients in the room now.
        online: usize,
    },
    /// Around the room's earlier messages replayed to a client that joins:
    /// `* N earlier messages` before, `* end of history` after.
    History {
        /// Start or end.
        phase: Phase,
        /// How many messages are replayed.
        count: usize,
    },
    /// Messages this client will not get: it fell behind, or asked to resume
    /// from further back than the history holds.
    Missed {
        /// How many; unknown (`null`) when the room's history was reset since.
        count: Option<u64>,
        /// With an unknown count: the room's epoch now, for the client's
        /// next resume (`?epoch=`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<Str<'a>>,
    },
    /// Information for this client only: `* TEXT`.
    Notice {
        /// The information.
        text: Str<'a>,
    },
    /// Something this client sent was refused; only it sees this: `! TEXT`.
    Error {
        /// What and why.
        text: Str<'a>,
        /// What went wrong, for programs: [`ClientError::code`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<Str<'a>>,
        /// The refused request's id, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Str<'a>>,
    },
    /// A request with an id was carried out (JSON only): after a message's
    /// own echo, or a rename's notice.
    Ack {
        /// The request's id.
        id: Str<'a>,
        /// The message's number, for a message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
}

/// What a client may send, told in its welcome so it can keep within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Messages per second on average; 0 means no limit.
    pub per_second: u32,
    /// Messages at once after a quiet spell.
    pub burst: u32,
    /// Largest message text, in UTF-8 bytes of the text itself.
    pub max_bytes: usize,
}

/// The close code of a connection whose session continued in a new
/// connection (`?session=`): it must not reconnect.
pub const REPLACED_CLOSE_CODE: u16 = 4001;

/// Longest request id, in bytes.
pub const MAX_ID_BYTES: usize = 64;

/// What the text protocol shows for each line break in a message, so that
/// one message is one line and nobody can forge a line of someone else's.
pub const LINE_BREAK_MARK: char = '\u{2424}';

/// Whether `c` breaks a line: `\n`, `\r`, NEL, LINE and PARAGRAPH SEPARATOR.
pub fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// Checks a message's text: not blank, at most `max_bytes` bytes, and free
/// of control characters other than tab and line breaks.
pub fn check_text(text: &str, max_bytes: usize) -> Result<(), ClientError<'static>> {
    if text.len() > max_bytes {
        return Err(ClientError::TooLong { max_bytes });
    }
    // Zero-width spaces or Hangul fillers alone show as nothing: blank too.
    if text.chars().all(|c| c.is_whitespace() || crate::protocol::names::is_invisible(c)) {
        return Err(ClientError::EmptyMessage);
    }
    if text.chars().any(|c| c.is_control() && c != '\t' && !is_line_break(c)) {
        return Err(ClientError::ControlCharacter);
    }
    Ok(())
}

/// Writes `text` on one line: each line break (`\r\n` counts as one)
/// becomes [`LINE_BREAK_MARK`].
fn write_one_line(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(is_line_break) {
        f.write_str(&rest[..at])?;
        f.write_char(LINE_BREAK_MARK)?;
        let after = &rest[at..];
        let skip = if after.starts_with("\r\n") {
            2
        } else {
            after.chars().next().map_or(1, char::len_utf8)
        };
        rest = &after[skip..];
    }
    f.write_str(rest)
}

/// Which side of a history replay a [`Event::History`] marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Before the first replayed message.
    Start,
    /// After the last.
    End,
}

/// The subprotocol (`Sec-WebSocket-Protocol`) of JSON events.
pub const JSON_PROTOCOL: &str = "chat.v1.json";

/// How a connection's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// One line per frame ([`fmt::Display`]): the default.
    #[default]
    Text,
    /// One JSON object per frame ([`JSON_PROTOCOL`]).
    Json,
}

impl Event<'_> {
    /// The event as a frame of `protocol`.
    pub fn encode(&self, protocol: Protocol) -> Frame {
        match protocol {
            Protocol::Text => Frame::text(&self.to_string()),
            Protocol::Json => Frame::text(&self.encode_json()),
        }
    }

    /// The event's JSON form.
    pub fn encode_json(&self) -> String {
        // Serializing this enum cannot fail: every key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One frame from the server, header and payload, as it goes on the wire.
///
/// A room encodes each event once and every recipient writes the same bytes:
/// server frames are not masked, so they are the same for everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// A text frame (RFC 6455, section 5.2), not fragmented.
    pub fn text(text: &str) -> Self {
        Self::new(OPCODE_TEXT, text.as_bytes())
    }

    /// A ping with no payload.
    pub fn ping() -> Self {
        Self::new(OPCODE_PING, &[])
    }

    fn new(opcode: u8, payload: &[u8]) -> Self {
        let mut frame = BytesMut::with_capacity(payload.len() + 10);
        frame.put_u8(0x80 | opcode);
        let len = payload.len();
        if let Ok(short @ 0..=125) = u8::try_from(len) {
            frame.put_u8(short);
        } else if let Ok(medium) = u16::try_from(len) {
            frame.put_u8(126);
            frame.put_u16(medium);
        } else {
            frame.put_u8(127);
            frame.put_u64(len as u64);
        }
        frame.put_slice(payload);
        Self(frame.freeze())
    }

    /// The frame's bytes, header first.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The payload of a text frame (for tests and logs).
    pub fn as_text(&self) -> Option<&str> {
        let header = match self.0.get(1)? & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        std::str::from_utf8(self.0.get(header..)?).ok()
    }
}

/// The WebSocket opcodes the server encodes itself.
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_PING: u8 = 0x9;

impl<'a> From<ClientError<'a>> for Event<'a> {
    fn from(error: ClientError<'a>) -> Self {
        Event::Error { text: error.to_string().into(), code: Some(error.code().into()), id: None }
    }
}

impl<'a> Event<'a> {
    /// An error answering the request with this id.
    pub fn error_for(error: ClientError<'_>, id: Option<Str<'a>>) -> Self {
        Event::Error { text: error.to_string().into(), code: Some(error.code().into()), id }
    }
}

/// What a client sends under [`JSON_PROTOCOL`]: one object per frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Request<'a> {
    /// Relay `text` to the room, as is (a leading `/` is not a command).
    Message {
        /// The text.
        #[serde(borrow)]
        text: Str<'a>,
        /// Echoed in the answer: [`Event::Ack`] or [`Event::Error`].
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        id: Option<Str<'a>>,
    },
    /// Change name.
    Nick {
        /// The new name.
        #[serde(borrow)]
        name: Str<'a>,
        /// Echoed in the answer.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        id: Option<Str<'a>>,
    },
    /// List the room.
    Who {
        /// Echoed in the answer.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        id: Option<Str<'a>>,
    },
}

impl Request<'_> {
    /// What the request asks for.
    pub fn command(&self) -> Command<'_> {
        match self {
            Request::Message { text, .. } => Command::Say(text),
            Request::Nick { name, .. } => Command::Nick(name),
            Request::Who { .. } => Command::Who,
        }
    }

    /// The id the answer must carry.
    pub fn id(&self) -> Option<&Str<'_>> {
        match self {
            Request::Message { id, .. } | Request::Nick { id, .. } | Request::Who { id } => {
                id.as_ref()
            }
        }
    }
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
    /// A frame that is not a JSON request, under [`JSON_PROTOCOL`].
    Malformed {
        /// What the JSON parser said.
        reason: &'a str,
    },
    /// `?since=` names a message the room has not reached.
    ResumeAhead {
        /// The number asked for.
        since: u64,
        /// The room's last message number.
        seq: u64,
    },
    /// Over the rate limit: the frame was dropped.
    SlowDown {
        /// The limit, in messages per second.
        per_second: u32,
    },
    /// With `--redis`: the request needed Redis at a moment it was lost.
    LinkDown,
    /// A message's text is over the largest size.
    TooLong {
        /// The limit, in bytes of text.
        max_bytes: usize,
    },
    /// A message holds a control character other than tab or a line break.
    ControlCharacter,
    /// The server holds all the messages its memory bound allows
    /// (`--max-memory`), and none could be dropped for this one.
    ServerFull,
}

impl ClientError<'_> {
    /// The error's machine-readable code, carried in JSON error events.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::InvalidName { .. } => "invalid_name",
            ClientError::NameTaken { .. } => "name_taken",
            ClientError::UnknownCommand { .. } => "unknown_command",
            ClientError::Usage { .. } => "usage",
            ClientError::EmptyMessage => "empty",
            ClientError::BinaryFrame => "binary",
            ClientError::Malformed { .. } => "malformed",
            ClientError::ResumeAhead { .. } => "resume_ahead",
            ClientError::SlowDown { .. } => "slow_down",
            ClientError::LinkDown => "link_down",
            ClientError::TooLong { .. } => "too_long",
            ClientError::ControlCharacter => "control_character",
            ClientError::ServerFull => "server_full",
        }
    }
}

/// `/help`'s answer.
pub const HELP: &str = "commands: /nick NAME changes your name, /who lists the room, \
                        /help shows this; start a message with // to send a literal /";

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Message { from, text, .. } => {
                write!(f, "{from}: ")?;
                write_one_line(f, text)
            }
            Event::Join { name, .. } => write!(f, "* {name} joined"),
            Event::Leave { name, .. } => write!(f, "* {name} left"),
            Event::Nick { old, new, .. } => write!(f, "* {old} is now {new}"),
            Event::Welcome { name, room, online, .. } => write!(
                f,
                "* you are {name} in room {room}, {online} online; /help lists the commands"
            ),
            Event::Who { room, count, names, .. } => {
                write!(f, "* {count} in {room}: {}", names.join(", "))?;
                if *count > names.len() {
                    write!(f, ", and {} more", count - names.len())?;
                }
                Ok(())
            }
            Event::Presence { joined, left, online, .. } => {
                write!(f, "* {joined} joined, {left} left; {online} online")
            }
            Event::History { phase: Phase::Start, count } => {
                write!(f, "* {count} earlier messages")
            }
            Event::History { phase: Phase::End, .. } => f.write_str("* end of history"),
            Event::Missed { count: Some(count), .. } => write!(f, "! missed {count} messages"),
            Event::Missed { count: None, .. } => {
                f.write_str("! missed an unknown number of messages: the room's history was reset")
            }
            Event::Notice { text } => write!(f, "* {text}"),
            Event::Error { text, .. } => write!(f, "! {text}"),
            Event::Ack { id, .. } => write!(f, "* done: {id}"),
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
            ClientError::TooLong { max_bytes } => {
                write!(f, "message too long: at most {max_bytes} bytes; nothing was sent")
            }
            ClientError::ControlCharacter => f.write_str(
                "messages may not hold control characters (tab and line breaks excepted); \
                 nothing was sent",
            ),
            ClientError::LinkDown => {
                f.write_str("the link to the other nodes failed: nothing was done; try again")
            }
            ClientError::SlowDown { per_second } => write!(
                f,
                "slow down: at most {per_second} messages a second; this one was not sent"
            ),
            ClientError::ResumeAhead { since, seq } => {
                write!(f, "cannot resume after message {since}: the room's last message is {seq}")
            }
            ClientError::Malformed { reason } => {
                write!(f, "malformed request: {reason}; nothing was sent")
            }
            ClientError::BinaryFrame => {
                f.write_str("binary frames are not chat: send text frames; nothing was sent")
            }
            ClientError::ServerFull => f.write_str(
                "the server is out of memory for messages: this one was not sent; try again",
            ),
        }
    }
}

/// The name in a [`Event::Welcome`] line, for clients that track their own name.
pub fn parse_welcome(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("* you are ")?;
    rest.split_once(" in room ").map(|(name, _)| name)
}

/// Largest `--max-message-bytes` a server can have, and so the longest line
/// a client reads.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 16 * 1024 * 1024;

/// An empty `--token` (often `CHAT_TOKEN=` left in an environment file)
/// would make every client need an empty token: refused, not obeyed.
pub fn check_token(token: Option<&str>) -> Result<(), &'static str> {
    match token {
        Some("") => Err("--token (CHAT_TOKEN) is empty: give the secret, or unset it"),
        _ => Ok(()),
    }
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
    fn rooms() {
        assert_eq!(room_from_path("/"), Ok("lobby"));
        assert_eq!(room_from_path(""), Ok("lobby"));
        assert_eq!(room_from_path("/rust"), Ok("rust"));
        assert_eq!(room_from_path("/a.b-c_d"), Ok("a.b-c_d"));
        assert_eq!(room_from_path("/a/b"), Err(NameError::RoomCharacter));
        assert_eq!(room_from_path("/%20"), Err(NameError::RoomCharacter));
        assert!(room_from_path(&format!("/{}", "r".repeat(33))).is_err());
        for reserved in ["/.", "/..", "/healthz", "/metrics", "/API", "/favicon.ico", "/livez"] {
            assert_eq!(room_from_path(reserved), Err(NameError::Reserved), "{reserved}");
        }
        assert_eq!(room_from_path("/..."), Ok("..."));
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
    // One table of every event: longer than a function should be, and clearer.
    #[allow(clippy::too_many_lines)]
    fn every_event_round_trips_through_json_and_has_its_text_form() {
        let ts: Timestamp = "2026-11-24T10:00:00.123Z".parse().unwrap();
        let room = || Str::from("lobby");
        let cases: Vec<(Event<'_>, &str, &str)> = vec![
            (
                Event::Message {
                    room: room(),
                    seq: 7,
                    from: "a:".into(),
                    text: "b: \"c\"".into(),
                    ts,
                },
                r#"{"type":"message","room":"lobby","seq":7,"from":"a:","text":"b: \"c\"","ts":"2026-11-24T10:00:00.123Z"}"#,
                "a:: b: \"c\"",
            ),
            (
                Event::Join { room: room(), name: "bob".into(), ts },
                r#"{"type":"join","room":"lobby","name":"bob","ts":"2026-11-24T10:00:00.123Z"}"#,
                "* bob joined",
            ),
            (
                Event::Leave { room: room(), name: "bob".into(), ts },
                r#"{"type":"leave","room":"lobby","name":"bob","ts":"2026-11-24T10:00:00.123Z"}"#,
                "* bob left",
            ),
            (
                Event::Nick { room: room(), old: "bob".into(), new: "rob".into() },
                r#"{"type":"nick","room":"lobby","old":"bob","new":"rob"}"#,
                "* bob is now rob",
            ),
            (
                Event::Welcome {
                    room: room(),
                    name: "bob".into(),
                    online: 2,
                    epoch: "e1".into(),
                    seq: 9,
                    limits: Some(Limits { per_second: 20, burst: 50, max_bytes: 65536 }),
                    session: Some("5ec".into()),
                    last_id: None,
                },
                r#"{"type":"welcome","room":"lobby","name":"bob","online":2,"epoch":"e1","seq":9,"limits":{"per_second":20,"burst":50,"max_bytes":65536},"session":"5ec"}"#,
                "* you are bob in room lobby, 2 online; /help lists the commands",
            ),
            (
                Event::Who {
                    room: "r".into(),
                    count: 5,
                    names: vec!["a".into(), "b".into()],
                    id: Some("3".into()),
                },
                r#"{"type":"who","room":"r","count":5,"names":["a","b"],"id":"3"}"#,
                "* 5 in r: a, b, and 3 more",
            ),
            (
                Event::Presence { room: room(), joined: 3, left: 1, online: 200 },
                r#"{"type":"presence","room":"lobby","joined":3,"left":1,"online":200}"#,
                "* 3 joined, 1 left; 200 online",
            ),
            (
                Event::History { phase: Phase::Start, count: 3 },
                r#"{"type":"history","phase":"start","count":3}"#,
                "* 3 earlier messages",
            ),
            (
                Event::History { phase: Phase::End, count: 3 },
                r#"{"type":"history","phase":"end","count":3}"#,
                "* end of history",
            ),
            (
                Event::Missed { count: Some(3), epoch: None },
                r#"{"type":"missed","count":3}"#,
                "! missed 3 messages",
            ),
            (
                Event::Missed { count: None, epoch: Some("e2".into()) },
                r#"{"type":"missed","count":null,"epoch":"e2"}"#,
                "! missed an unknown number of messages: the room's history was reset",
            ),
            (
                Event::Notice { text: "hi \"you\"".into() },
                r#"{"type":"notice","text":"hi \"you\""}"#,
                "* hi \"you\"",
            ),
            (
                ClientError::InvalidName { name: "a\u{1b}", reason: NameError::Control }.into(),
                r#"{"type":"error","text":"invalid name \"a\\u{1b}\": it contains control characters","code":"invalid_name"}"#,
                "! invalid name \"a\\u{1b}\": it contains control characters",
            ),
            (
                Event::error_for(ClientError::TooLong { max_bytes: 9 }, Some("7".into())),
                r#"{"type":"error","text":"message too long: at most 9 bytes; nothing was sent","code":"too_long","id":"7"}"#,
                "! message too long: at most 9 bytes; nothing was sent",
            ),
            (
                Event::Ack { id: "7".into(), seq: Some(12) },
                r#"{"type":"ack","id":"7","seq":12}"#,
                "* done: 7",
            ),
        ];
        for (event, json, text) in cases {
            assert_eq!(serde_json::to_string(&event).unwrap(), json);
            assert_eq!(serde_json::from_str::<Event<'_>>(json).unwrap(), event);
            assert_eq!(event.to_string(), text);
            assert_eq!(event.encode(Protocol::Json).as_text(), Some(json));
            assert_eq!(event.encode(Protocol::Text).as_text(), Some(text));
        }
        let welcome = Event::Welcome {
            room: room(),
            name: "bob".into(),
            online: 2,
            epoch: "e".into(),
            seq: 0,
            limits: None,
            session: None,
            last_id: None,
        };
        assert_eq!(parse_welcome(&welcome.to_string()), Some("bob"));
    }

    #[test]
    fn a_message_is_one_line_in_the_text_protocol_whatever_its_line_breaks() {
        let ts: Timestamp = "2026-11-24T10:00:00.123Z".parse().unwrap();
        for (text, shown) in [
            ("ok\nbob: send me your token", "mallory: ok\u{2424}bob: send me your token"),
            (
                "a\r\nb\rc\u{85}d\u{2028}e\u{2029}f",
                "mallory: a\u{2424}b\u{2424}c\u{2424}d\u{2424}e\u{2424}f",
            ),
            ("\n\n", "mallory: \u{2424}\u{2424}"),
            ("tab\tkept", "mallory: tab\tkept"),
        ] {
            let event = Event::Message {
                room: "r".into(),
                seq: 1,
                from: "mallory".into(),
                text: text.into(),
                ts,
            };
            let line = event.to_string();
            assert_eq!(line, shown);
            assert!(!line.contains(is_line_break), "{line:?}");
            // JSON carries the real text.
            let json = event.encode_json();
            let back: Event<'_> = serde_json::from_str(&json).unwrap();
            assert!(matches!(back, Event::Message { text: t, .. } if t == text));
        }
    }

    #[test]
    fn message_text_is_checked_in_bytes_and_for_control_characters() {
        assert_eq!(check_text("héllo", 6), Ok(()));
        assert_eq!(check_text("héllo", 5), Err(ClientError::TooLong { max_bytes: 5 }));
        assert_eq!(check_text("two\nlines\r\n\u{2028}", 100), Ok(()));
        assert_eq!(check_text("tab\there", 100), Ok(()));
        assert_eq!(check_text("👨\u{200d}👩\u{200d}👧 می\u{200c}خواهم", 100), Ok(()));
        for bad in ["\u{1b}[2J", "a\u{0}", "del\u{7f}", "c1\u{9b}", "bell\u{7}"] {
            assert_eq!(check_text(bad, 100), Err(ClientError::ControlCharacter), "{bad:?}");
        }
        for blank in ["", " ", "\t\n", "\u{3000}", "\u{200b}", "\u{3164}\u{2800}", " \u{feff}"] {
            assert_eq!(check_text(blank, 100), Err(ClientError::EmptyMessage), "{blank:?}");
        }
    }

    #[test]
    fn requests_decode_to_commands() {
        let decode = |json| serde_json::from_str::<Request<'_>>(json);
        let request = decode(r#"{"type":"message","text":"/who \u00e9"}"#).unwrap();
        assert_eq!(request.command(), Command::Say("/who é"));
        let request = decode(r#"{"type":"nick","name":"bob","extra":1}"#).unwrap();
        assert_eq!(request.command(), Command::Nick("bob"));
        assert_eq!(request.id(), None);
        let request = decode(r#"{"type":"message","text":"hi","id":"42"}"#).unwrap();
        assert_eq!(request.id().map(AsRef::as_ref), Some("42"));
        assert_eq!(decode(r#"{"type":"who"}"#).unwrap().command(), Command::Who);
        for bad in [r#"{"type":"shout","text":"x"}"#, r#"{"type":"message"}"#, "hello", "[1]", "{}"]
        {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }
}
