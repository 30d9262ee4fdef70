//! The wire protocol, shared by server, client and tests. Map:
//! - this file: the upgrade request and the rules for rooms, the limits and
//!   codes both sides know, and the encodings ([`Protocol`]);
//! - `command.rs`: what a client's frame asks for ([`Command`], [`Request`])
//!   and what it can do wrong ([`ClientError`]);
//! - `event.rs`: what the server sends ([`Event`]), in text and JSON, and the
//!   frames it is encoded into once ([`Frame`]);
//! - `identity.rs`: who a connection is ([`Who`]): the claims of an
//!   identity token and the guest mark;
//! - `moderation.rs`: what moderators may do ([`Moderation`]);
//! - [`names`]: the rules for names (the ones the protocol refers to are
//!   re-exported here) and for escaping received text.
//!
//! Every server frame is one line whose first characters say what it is:
//! `NAME: TEXT` is a message (names never hold whitespace, so the first `": "`
//! ends the name), `* ` starts a notice and `! ` starts an error meant for the
//! reader only.

use std::borrow::Cow;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

mod command;
mod event;
mod identity;
mod moderation;
pub mod names;

pub use command::*;
pub use event::*;
pub use identity::*;
pub use moderation::*;

// Re-exported: a refused name is part of the protocol's error events.
pub use crate::protocol::names::{MAX_NAME_CHARS, NameError, name_key, validate_name};

/// The room of the path `/`.
pub const DEFAULT_ROOM: &str = "lobby";
/// Most names a `/who` answer lists; the rest are counted.
pub const MAX_WHO_NAMES: usize = 100;
/// Messages a history request gets without a `limit`.
pub const HISTORY_PAGE_DEFAULT: usize = 20;
/// Most messages one history answer holds.
pub const HISTORY_PAGE_MESSAGES: usize = 200;
/// Most bytes of text (and sender names) one history answer holds, though
/// never less than one message: its frame is at most about six times this
/// (JSON escapes).
pub const HISTORY_PAGE_BYTES: usize = 256 * 1024;
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
    /// Who the request proved to be (its token), checked before the upgrade.
    pub who: Who,
}

/// Where a returning client left a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The last message number it got.
    pub since: u64,
    /// The epoch that number belongs to.
    pub epoch: String,
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

/// The close code of a connection whose token (`exp`, plus the server's
/// leeway) expired. Tokens are not renewed on an open connection: the
/// client connects again with a new one.
pub const TOKEN_EXPIRED_CLOSE_CODE: u16 = 4002;

/// Longest request id, in bytes.
pub const MAX_ID_BYTES: usize = 64;

/// The subprotocol (`Sec-WebSocket-Protocol`) of JSON events.
pub const JSON_PROTOCOL: &str = "chat.v1.json";

/// What an offered subprotocol that carries a token starts with
/// (`chat.token.TOKEN`, offered beside [`JSON_PROTOCOL`]): the way a browser,
/// which cannot set `Authorization` on a WebSocket, keeps a token out of
/// the request line. It is never chosen.
pub const TOKEN_PROTOCOL_PREFIX: &str = "chat.token.";

/// How a connection's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// One line per frame ([`Display`](std::fmt::Display)): the default.
    #[default]
    Text,
    /// One JSON object per frame ([`JSON_PROTOCOL`]).
    Json,
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
                    signed_in: false,
                    moderator: false,
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
            signed_in: true,
            moderator: true,
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
