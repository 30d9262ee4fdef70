//! What the server sends: each event's text and JSON forms, and the
//! WebSocket frame it is encoded into once for every recipient.

use std::fmt::{self, Write as _};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::{ClientError, Limits, Protocol, Str, Timestamp};

/// One frame from the server. Its text form (the default protocol) is its
/// [`fmt::Display`]; its JSON form (subprotocol [`JSON_PROTOCOL`](super::JSON_PROTOCOL)) is its serde
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
    /// `* NAME was kicked by MODERATOR: REASON`, and the like.
    Moderated {
        /// The room.
        room: Str<'a>,
        /// What was done.
        action: super::Action,
        /// To whom.
        name: Str<'a>,
        /// By which moderator; none for the HTTP API.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<Str<'a>>,
        /// For how long, in seconds (a ban or a mute); none: until lifted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seconds: Option<u64>,
        /// Why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<Str<'a>>,
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
        /// Whether its name comes from a signed identity token.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        signed_in: bool,
        /// Whether it moderates the room (its token's `mod` claim).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        moderator: bool,
    },
    /// Answer to `/who`: `* N in ROOM: a, b, c` (and `, and M more` past
    /// [`MAX_WHO_NAMES`](super::MAX_WHO_NAMES)).
    Who {
        /// The room.
        room: Str<'a>,
        /// How many are in the room.
        count: usize,
        /// Names, sorted; at most [`MAX_WHO_NAMES`](super::MAX_WHO_NAMES).
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
    /// Answer to a history request, to its client only: the room's messages
    /// before `before`, oldest first. A type of its own, not `message`
    /// events, so that a client's resume position never moves back.
    Earlier {
        /// The room.
        room: Str<'a>,
        /// The messages, oldest first, numbered below the request's `before`
        /// (a gap in their numbers: messages the store no longer holds).
        #[serde(borrow)]
        messages: Vec<PastMessage<'a>>,
        /// Whether the store holds messages older than the first of these.
        more: bool,
        /// The request's id, if it had one.
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

/// What the text protocol shows for each line break in a message, so that
/// one message is one line and nobody can forge a line of someone else's.
pub const LINE_BREAK_MARK: char = '\u{2424}';

/// Whether `c` breaks a line: `\n`, `\r`, NEL, LINE and PARAGRAPH SEPARATOR.
pub fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
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

/// A message of a [`Event::Earlier`] answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PastMessage<'a> {
    /// Its number in the room.
    pub seq: u64,
    /// Sender's name.
    #[serde(borrow)]
    pub from: Str<'a>,
    /// The text, verbatim.
    #[serde(borrow)]
    pub text: Str<'a>,
    /// When the server relayed it.
    pub ts: Timestamp,
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

    /// The same frame, keeping `keep` until its last clone is dropped: the
    /// server ties the charge for a frame's bytes to it this way.
    #[must_use]
    pub fn tied_to<T: Send + 'static>(self, keep: T) -> Self {
        /// The frame's bytes with what they keep.
        struct Tied<T> {
            bytes: Bytes,
            _keep: T,
        }
        impl<T> AsRef<[u8]> for Tied<T> {
            fn as_ref(&self) -> &[u8] {
                &self.bytes
            }
        }
        Self(Bytes::from_owner(Tied { bytes: self.0, _keep: keep }))
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
            Event::Moderated { action, name, by, seconds, reason, .. } => {
                let told =
                    super::describe(*action, name, by.as_deref(), *seconds, reason.as_deref());
                write!(f, "* {told}")
            }
            Event::Welcome { name, room, online, signed_in, moderator, .. } => {
                write!(f, "* you are {name} in room {room}, {online} online")?;
                match (signed_in, moderator) {
                    (true, true) => f.write_str(", signed in as a moderator")?,
                    (true, false) => f.write_str(", signed in")?,
                    _ => {}
                }
                f.write_str("; /help lists the commands")
            }
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
                write!(f, "* {count} earlier message{}", plural(*count as u64))
            }
            Event::History { phase: Phase::End, .. } => f.write_str("* end of history"),
            Event::Missed { count: Some(count), .. } => {
                write!(f, "! missed {count} message{}", plural(*count))
            }
            Event::Missed { count: None, .. } => {
                f.write_str("! missed an unknown number of messages: the room's history was reset")
            }
            Event::Notice { text } => write!(f, "* {text}"),
            Event::Error { text, .. } => write!(f, "! {text}"),
            Event::Ack { id, .. } => write!(f, "* done: {id}"),
            Event::Earlier { messages, more, .. } => {
                // One frame, one line per message: each message's line
                // breaks are marked, so no line can be forged.
                match messages.first() {
                    None => f.write_str("* no earlier messages")?,
                    Some(first) => {
                        let count = messages.len();
                        let s = plural(count as u64);
                        write!(f, "* {count} earlier message{s} from #{}:", first.seq)?;
                    }
                }
                for PastMessage { seq, from, text, ts } in messages {
                    write!(f, "\n#{seq} {} {from}: ", ts.format("%Y-%m-%d %H:%M:%SZ"))?;
                    write_one_line(f, text)?;
                }
                if let (true, Some(first)) = (more, messages.first()) {
                    write!(f, "\n* more: /history N {}", first.seq)?;
                }
                Ok(())
            }
        }
    }
}

/// The name in a [`Event::Welcome`] line, for clients that track their own name.
pub fn parse_welcome(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("* you are ")?;
    rest.split_once(" in room ").map(|(name, _)| name)
}

/// The plural ending for `count` of something: "1 message", "2 messages".
fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}
