//! What moderators (and the HTTP API) may do to someone in a room: the
//! commands `/kick`, `/ban`, `/unban`, `/mute` and `/unmute`, their JSON
//! requests, and the room's notice of each.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Close code of every connection of someone kicked or banned from a room:
/// clients do not reconnect after it. In the range RFC 6455 leaves to
/// applications.
pub const REMOVED_CLOSE_CODE: u16 = 4003;
/// Longest reason given with a kick or a ban, in bytes.
pub const MAX_REASON_BYTES: usize = 200;
/// Bans and mutes one room holds at once; expired ones are not counted.
pub const MAX_SANCTIONS_PER_ROOM: usize = 1000;
/// Bans and mutes all rooms hold at once.
pub const MAX_SANCTIONS: usize = 10_000;
/// Longest ban or mute: a longer one is refused (none given means until
/// lifted).
pub const MAX_SANCTION: Duration = Duration::from_hours(366 * 24);

/// One of the moderators' actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Closes the person's connections to the room.
    Kick,
    /// Kicks, and refuses the person's joins until it expires or is lifted.
    Ban,
    /// Lifts a ban.
    Unban,
    /// Lets the person read but not send, until it expires or is lifted.
    Mute,
    /// Lifts a mute.
    Unmute,
}

impl Action {
    /// The command's name, without its slash.
    pub fn command(self) -> &'static str {
        match self {
            Action::Kick => "kick",
            Action::Ban => "ban",
            Action::Unban => "unban",
            Action::Mute => "mute",
            Action::Unmute => "unmute",
        }
    }

    /// How the action is told: `NAME was kicked`.
    fn past(self) -> &'static str {
        match self {
            Action::Kick => "kicked",
            Action::Ban => "banned",
            Action::Unban => "unbanned",
            Action::Mute => "muted",
            Action::Unmute => "unmuted",
        }
    }

    /// Whether it lasts (a ban or a mute), so takes a duration.
    pub fn lasts(self) -> bool {
        matches!(self, Action::Ban | Action::Mute)
    }

    /// The command's usage.
    pub fn usage(self) -> &'static str {
        match self {
            Action::Kick => "/kick NAME [REASON]",
            Action::Ban => "/ban NAME [DURATION] [REASON] (DURATION like 10m, 2h, 7d)",
            Action::Unban => "/unban NAME",
            Action::Mute => "/mute NAME [DURATION] (DURATION like 10m, 2h, 7d)",
            Action::Unmute => "/unmute NAME",
        }
    }

    /// The action a command's name (without its slash) asks for.
    pub fn from_command(name: &str) -> Option<Self> {
        [Action::Kick, Action::Ban, Action::Unban, Action::Mute, Action::Unmute]
            .into_iter()
            .find(|action| action.command() == name)
    }
}

/// A moderator's request: an action on the person named `name` in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moderation<'a> {
    /// What to do.
    pub action: Action,
    /// Who to do it to, by the name they have (or had) in the room.
    pub name: &'a str,
    /// For a ban or a mute: how long; none means until lifted.
    pub duration: Option<Duration>,
    /// For a kick or a ban: why, told to the room and to the person.
    pub reason: Option<&'a str>,
}

/// Why a moderation request is refused before anything is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ModerationError {
    /// The duration is over [`MAX_SANCTION`] or zero.
    #[error("a ban or mute lasts from 1 second to {} days", MAX_SANCTION.as_secs() / 86_400)]
    Duration,
    /// The reason is over [`MAX_REASON_BYTES`] or holds control characters.
    #[error("a reason is at most {MAX_REASON_BYTES} bytes on one line")]
    Reason,
    /// The name is not one anyone could have.
    #[error("no one can be named that: {0}")]
    Name(super::NameError),
}

impl Moderation<'_> {
    /// Checks the duration and reason.
    pub fn check(&self) -> Result<(), ModerationError> {
        // Cheap first: the rules' checks (and any key) cost per character.
        if self.name.chars().count() > super::MAX_NAME_CHARS + 1 {
            let max = super::MAX_NAME_CHARS;
            return Err(ModerationError::Name(super::NameError::TooLong { max }));
        }
        // A guest's name is any valid name with the mark before it.
        let unmarked = self.name.strip_prefix(super::GUEST_MARK).unwrap_or(self.name);
        super::validate_name(unmarked).map_err(ModerationError::Name)?;
        if self.duration.is_some_and(|d| d.is_zero() || d > MAX_SANCTION) {
            return Err(ModerationError::Duration);
        }
        // One visible line: no line breaks (U+2028 included), no controls,
        // nothing invisible (a bidi override would reorder what follows).
        let one_line =
            |c: char| !c.is_control() && !super::is_line_break(c) && !super::names::is_invisible(c);
        if self.reason.is_some_and(|r| r.len() > MAX_REASON_BYTES || !r.chars().all(one_line)) {
            return Err(ModerationError::Reason);
        }
        Ok(())
    }
}

/// Reads a moderation command's argument (after `/kick` and the like):
/// `NAME [REASON]`, `NAME [DURATION] [REASON]` or `NAME [DURATION]`. `None`
/// when it does not fit the usage.
pub fn parse_moderation(action: Action, arg: &str) -> Option<Moderation<'_>> {
    let (name, rest) = match arg.split_once(char::is_whitespace) {
        Some((name, rest)) => (name, rest.trim()),
        None => (arg, ""),
    };
    if name.is_empty() {
        return None;
    }
    let mut moderation = Moderation { action, name, duration: None, reason: None };
    let mut rest = rest;
    if action.lasts() && !rest.is_empty() {
        let (first, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if let Ok(duration) = humantime::parse_duration(first) {
            moderation.duration = Some(duration);
            rest = after.trim();
        } else if first.bytes().all(|b| b.is_ascii_digit()) {
            // `/ban bob 10 spam`: a length without its unit, not a reason.
            return None;
        }
    }
    match action {
        Action::Kick | Action::Ban => moderation.reason = Some(rest).filter(|r| !r.is_empty()),
        // Nothing else may follow.
        _ if !rest.is_empty() => return None,
        _ => {}
    }
    Some(moderation)
}

/// A ban's or mute's length as people write it: `7d`, `1h 30m`, `45s`
/// (the web page writes it the same way).
pub fn span(seconds: u64) -> String {
    use fmt::Write as _;
    let mut left = seconds;
    let mut told = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if left >= size {
            let sep = if told.is_empty() { "" } else { " " };
            let _ = write!(told, "{sep}{}{unit}", left / size);
            left %= size;
        }
    }
    if told.is_empty() { "0s".to_owned() } else { told }
}

/// Time left of a ban or mute, as people say it: past a minute, in whole
/// minutes rounded up (`1h 59m 58s` left of a two-hour ban says `2h`).
pub fn span_left(seconds: u64) -> String {
    span(if seconds > 60 { seconds.div_ceil(60) * 60 } else { seconds })
}

/// How a moderation is told (`bob was banned by alice for 1h: spam`): to
/// the room, and to the person removed in its close frame.
pub fn describe(
    action: Action,
    name: &str,
    by: Option<&str>,
    seconds: Option<u64>,
    reason: Option<&str>,
) -> String {
    use fmt::Write as _;
    let mut told = format!("{name} was {}", action.past());
    if let Some(by) = by {
        let _ = write!(told, " by {by}");
    }
    if let Some(seconds) = seconds {
        let _ = write!(told, " for {}", span(seconds));
    }
    if let Some(reason) = reason {
        let _ = write!(told, ": {reason}");
    }
    told
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::NameError;

    #[test]
    fn durations_and_reasons_are_told_apart() {
        let ban = parse_moderation(Action::Ban, "bob 2h spamming links").expect("fits");
        assert_eq!(ban.name, "bob");
        assert_eq!(ban.duration, Some(Duration::from_hours(2)));
        assert_eq!(ban.reason, Some("spamming links"));
        let ban = parse_moderation(Action::Ban, "bob spamming").expect("fits");
        assert_eq!((ban.duration, ban.reason), (None, Some("spamming")));
        let kick = parse_moderation(Action::Kick, "bob 2h").expect("fits");
        assert_eq!((kick.duration, kick.reason), (None, Some("2h")), "a kick does not last");
        let mute = parse_moderation(Action::Mute, "bob 10m").expect("fits");
        assert_eq!(mute.duration, Some(Duration::from_mins(10)));
        assert_eq!(parse_moderation(Action::Mute, "bob for a while"), None);
        assert_eq!(parse_moderation(Action::Ban, "bob 10 spam"), None, "10 what?");
        assert_eq!(parse_moderation(Action::Unban, "bob now"), None);
        assert_eq!(parse_moderation(Action::Kick, ""), None);
    }

    #[test]
    fn long_or_zero_sanctions_and_long_reasons_are_refused() {
        let year = parse_moderation(Action::Ban, "bob 400d").expect("fits");
        assert_eq!(year.check(), Err(ModerationError::Duration));
        let zero = parse_moderation(Action::Mute, "bob 0s").expect("fits");
        assert_eq!(zero.check(), Err(ModerationError::Duration));
        let long = "x".repeat(MAX_REASON_BYTES + 1);
        let kick =
            Moderation { action: Action::Kick, name: "bob", duration: None, reason: Some(&long) };
        assert_eq!(kick.check(), Err(ModerationError::Reason));
        let long = "b".repeat(40);
        let kick = Moderation { action: Action::Kick, name: &long, duration: None, reason: None };
        assert_eq!(kick.check(), Err(ModerationError::Name(NameError::TooLong { max: 32 })));
        for name in ["", "a\nb", "\u{200b}"] {
            let ban = Moderation { action: Action::Ban, name, duration: None, reason: None };
            assert!(matches!(ban.check(), Err(ModerationError::Name(_))), "{name:?}");
        }
        let guest = Moderation { action: Action::Ban, name: "~bob", duration: None, reason: None };
        assert_eq!(guest.check(), Ok(()));
        let forged = Moderation { reason: Some("ok\u{2028}mallory: hi"), ..guest };
        assert_eq!(forged.check(), Err(ModerationError::Reason));
        let reordered = Moderation { reason: Some("ok\u{202e}olleh"), ..guest };
        assert_eq!(reordered.check(), Err(ModerationError::Reason));
    }

    #[test]
    fn the_notice_reads_as_a_sentence() {
        let told = describe(Action::Ban, "bob", Some("alice"), Some(3600), Some("spam"));
        assert_eq!(told, "bob was banned by alice for 1h: spam");
        assert_eq!(describe(Action::Unmute, "bob", None, None, None), "bob was unmuted");
        assert_eq!(span(7 * 86_400 + 5400), "7d 1h 30m");
        assert_eq!(span(59), "59s");
        assert_eq!(span_left(7198), "2h");
        assert_eq!(span_left(45), "45s");
    }
}
