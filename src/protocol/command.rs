//! What a client's text frame asks for, and what it can do wrong.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Action, Moderation, ModerationError, NameError, Str, is_line_break};

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
    /// `/history [N] [BEFORE]`: the room's last `limit` messages before the
    /// one numbered `before` (before the newest, without it).
    History {
        /// How many, at most [`HISTORY_PAGE_MESSAGES`](super::HISTORY_PAGE_MESSAGES).
        limit: usize,
        /// Older than this seq.
        before: Option<u64>,
    },
    /// `/kick`, `/ban`, `/unban`, `/mute` or `/unmute`.
    Moderate(Moderation<'a>),
    /// `/nick` without a name, or `/history` with words that are not numbers.
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
        "history" => parse_history(arg),
        _ => match Action::from_command(name) {
            Some(action) => super::parse_moderation(action, arg)
                .map_or(Command::MissingArgument(action.usage()), Command::Moderate),
            None => Command::Unknown(name),
        },
    }
}

/// `/history`'s usage.
const HISTORY_USAGE: &str = "/history [N] [BEFORE]: the N messages before message BEFORE";

fn parse_history(arg: &str) -> Command<'static> {
    let mut words = arg.split_whitespace().map(str::parse::<u64>);
    let limit = match words.next() {
        None => super::HISTORY_PAGE_DEFAULT,
        Some(Ok(limit)) => usize::try_from(limit).unwrap_or(usize::MAX),
        Some(Err(_)) => return Command::MissingArgument(HISTORY_USAGE),
    };
    let before = match words.next() {
        None => None,
        Some(Ok(before)) => Some(before),
        Some(Err(_)) => return Command::MissingArgument(HISTORY_USAGE),
    };
    if words.next().is_some() {
        return Command::MissingArgument(HISTORY_USAGE);
    }
    Command::History { limit, before }
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

/// What a client sends under [`JSON_PROTOCOL`](super::JSON_PROTOCOL): one object per frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Request<'a> {
    /// Relay `text` to the room, as is (a leading `/` is not a command).
    Message {
        /// The text.
        #[serde(borrow)]
        text: Str<'a>,
        /// Echoed in the answer: [`Event::Ack`](super::Event::Ack) or [`Event::Error`](super::Event::Error).
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
    /// The room's messages before `before` (before the newest, without it),
    /// answered with one [`Event::Earlier`](super::Event::Earlier).
    History {
        /// Older than this seq.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        /// How many at most; [`HISTORY_PAGE_DEFAULT`](super::HISTORY_PAGE_DEFAULT) without it,
        /// never more than [`HISTORY_PAGE_MESSAGES`](super::HISTORY_PAGE_MESSAGES).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        /// Echoed in the answer.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        id: Option<Str<'a>>,
    },
    /// A moderator closes `name`'s connections to the room.
    Kick {
        /// Who.
        #[serde(borrow)]
        name: Str<'a>,
        /// Why, told to the room and to the person.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        reason: Option<Str<'a>>,
        /// Echoed in the answer.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        id: Option<Str<'a>>,
    },
    /// A moderator kicks `name` and refuses their joins for `seconds` (until
    /// lifted without it).
    Ban {
        /// Who.
        #[serde(borrow)]
        name: Str<'a>,
        /// How long.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seconds: Option<u64>,
        /// Why.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        reason: Option<Str<'a>>,
        /// Echoed in the answer.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        id: Option<Str<'a>>,
    },
    /// A moderator lifts `name`'s ban.
    Unban {
        /// Who.
        #[serde(borrow)]
        name: Str<'a>,
        /// Echoed in the answer.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        id: Option<Str<'a>>,
    },
    /// A moderator lets `name` read but not send, for `seconds` (until
    /// lifted without it).
    Mute {
        /// Who.
        #[serde(borrow)]
        name: Str<'a>,
        /// How long.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seconds: Option<u64>,
        /// Echoed in the answer.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        id: Option<Str<'a>>,
    },
    /// A moderator lifts `name`'s mute.
    Unmute {
        /// Who.
        #[serde(borrow)]
        name: Str<'a>,
        /// Echoed in the answer.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        id: Option<Str<'a>>,
    },
}

impl<'a> Request<'a> {
    /// The JSON request of a moderation command.
    pub fn moderation(moderation: &Moderation<'a>, id: Option<Str<'a>>) -> Self {
        let name = moderation.name.into();
        let reason = moderation.reason.map(Into::into);
        let seconds = moderation.duration.map(|d| d.as_secs());
        match moderation.action {
            Action::Kick => Request::Kick { name, reason, id },
            Action::Ban => Request::Ban { name, seconds, reason, id },
            Action::Unban => Request::Unban { name, id },
            Action::Mute => Request::Mute { name, seconds, id },
            Action::Unmute => Request::Unmute { name, id },
        }
    }
}

impl Request<'_> {
    /// What the request asks for.
    pub fn command(&self) -> Command<'_> {
        match self {
            Request::Message { text, .. } => Command::Say(text),
            Request::Nick { name, .. } => Command::Nick(name),
            Request::Who { .. } => Command::Who,
            Request::History { before, limit, .. } => Command::History {
                limit: limit.unwrap_or(super::HISTORY_PAGE_DEFAULT),
                before: *before,
            },
            Request::Kick { name, reason, .. } => {
                moderate(Action::Kick, name, None, reason.as_deref())
            }
            Request::Ban { name, seconds, reason, .. } => {
                moderate(Action::Ban, name, *seconds, reason.as_deref())
            }
            Request::Unban { name, .. } => moderate(Action::Unban, name, None, None),
            Request::Mute { name, seconds, .. } => moderate(Action::Mute, name, *seconds, None),
            Request::Unmute { name, .. } => moderate(Action::Unmute, name, None, None),
        }
    }

    /// The id the answer must carry.
    pub fn id(&self) -> Option<&Str<'_>> {
        match self {
            Request::Message { id, .. }
            | Request::Nick { id, .. }
            | Request::Who { id }
            | Request::History { id, .. }
            | Request::Kick { id, .. }
            | Request::Ban { id, .. }
            | Request::Unban { id, .. }
            | Request::Mute { id, .. }
            | Request::Unmute { id, .. } => id.as_ref(),
        }
    }
}

fn moderate<'a>(
    action: Action,
    name: &'a str,
    seconds: Option<u64>,
    reason: Option<&'a str>,
) -> Command<'a> {
    let duration = seconds.map(std::time::Duration::from_secs);
    Command::Moderate(Moderation { action, name, duration, reason })
}

/// What a client did wrong; sent to that client only, as `! ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError<'a> {
    /// A name that breaks [`validate_name`](super::validate_name).
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
    /// A token holder's name is its token's: it cannot be changed.
    NameFromToken,
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
    /// A frame that is not a JSON request, under [`JSON_PROTOCOL`](super::JSON_PROTOCOL).
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
    /// The room's earlier messages cannot be read now (the store or the
    /// link to the other nodes failed, or `--max-memory` has no room for
    /// the answer until clients read what they were sent).
    HistoryUnavailable,
    /// The server holds all the messages its memory bound allows
    /// (`--max-memory`), and none could be dropped for this one.
    ServerFull,
    /// A moderation command from someone who does not moderate the room.
    NotModerator,
    /// A moderation request that does not fit (its duration or reason).
    Moderation(ModerationError),
    /// A kick or mute of someone not in the room.
    NotHere {
        /// The name asked for.
        name: &'a str,
    },
    /// An unban or unmute of someone who is not banned or muted.
    NotSanctioned {
        /// The name asked for.
        name: &'a str,
    },
    /// The room holds as many bans and mutes as it may
    /// ([`MAX_SANCTIONS_PER_ROOM`](super::MAX_SANCTIONS_PER_ROOM)).
    TooManySanctions,
    /// A muted client's message: it may read, not send.
    Muted {
        /// Seconds until the mute ends; none: until lifted.
        seconds_left: Option<u64>,
    },
}

impl ClientError<'_> {
    /// The error's machine-readable code, carried in JSON error events.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::InvalidName { .. } => "invalid_name",
            ClientError::NameTaken { .. } => "name_taken",
            ClientError::NameFromToken => "name_from_token",
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
            ClientError::HistoryUnavailable => "history_unavailable",
            ClientError::NotModerator => "not_moderator",
            ClientError::Moderation(_) => "bad_moderation",
            ClientError::NotHere { .. } => "not_here",
            ClientError::NotSanctioned { .. } => "not_sanctioned",
            ClientError::TooManySanctions => "too_many_sanctions",
            ClientError::Muted { .. } => "muted",
        }
    }
}

/// `/help`'s answer.
pub const HELP: &str = "commands: /nick NAME changes your name, /who lists the room, \
                        /history [N] [BEFORE] shows earlier messages, /help shows this; \
                        start a message with // to send a literal /";
/// `/help`'s answer, with the moderation commands for a moderator.
pub fn help(moderator: bool) -> Str<'static> {
    if moderator { format!("{HELP}{MODERATOR_HELP}").into() } else { HELP.into() }
}

/// What `/help` adds for a moderator of the room.
pub const MODERATOR_HELP: &str = "; as a moderator: /kick NAME [REASON], \
                                  /ban NAME [DURATION] [REASON], /unban NAME, \
                                  /mute NAME [DURATION], /unmute NAME (DURATION like 10m, 2h, 7d)";

impl fmt::Display for ClientError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Debug quoting escapes whatever control characters the name holds.
            ClientError::InvalidName { name, reason } => {
                write!(f, "invalid name {name:?}: {reason}")
            }
            ClientError::NameTaken { name } => write!(f, "name {name:?} is taken"),
            ClientError::NameFromToken => {
                f.write_str("your name comes from your token: it cannot be changed")
            }
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
            ClientError::HistoryUnavailable => {
                f.write_str("earlier messages cannot be read right now; try again")
            }
            ClientError::ServerFull => f.write_str(
                "the server is out of memory for messages: this one was not sent; try again",
            ),
            ClientError::NotModerator => {
                f.write_str("you do not moderate this room: nothing was done")
            }
            ClientError::Moderation(error) => write!(f, "{error}: nothing was done"),
            ClientError::NotHere { name } => {
                write!(f, "nobody named {name:?} is in this room: nothing was done")
            }
            ClientError::NotSanctioned { name } => {
                write!(f, "{name:?} is not banned or muted here: nothing was done")
            }
            ClientError::TooManySanctions => f.write_str(
                "this room (or the server, across rooms) holds as many bans and mutes as it \
                 may: lift some first",
            ),
            ClientError::Muted { seconds_left: None } => {
                f.write_str("you are muted in this room: this message was not sent")
            }
            ClientError::Muted { seconds_left: Some(seconds) } => {
                let left = super::span_left(*seconds);
                write!(f, "you are muted in this room for {left}: this message was not sent")
            }
        }
    }
}
