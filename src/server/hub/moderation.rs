//! Moderation: what kicks, bans and mutes do to a room's members, and the
//! bans and mutes a joiner is checked against.
//!
//! A ban or mute is recorded by the name it was given to (its key), and by
//! who held that name there (`sub:SUB` for a token holder, `ip:ADDRESS` for
//! anyone else, see [`subject`]): a guest that comes back under another
//! name from the same address is still banned. The record is the
//! backend's (the store's, or Redis's); the effect on connections is each
//! node's, on the room's [`Event::Moderated`], which a shared backend
//! publishes to every node.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::warn;

use super::{Ack, Hub, Member, Tenure, requested_name};
use crate::protocol::{
    Action, ChatRequest, ClientError, Event, Moderation, Who, describe, name_key, span_left,
};
use crate::server::backend::{BackendError, Mode, Sanction, unix_ms};
use crate::util::lock;

/// Longest close reason a WebSocket close frame carries, in bytes.
const MAX_CLOSE_REASON_BYTES: usize = 123;
/// Kicks the hub remembers, for joins that were past their checks when one
/// came (a join takes milliseconds: a few are plenty).
pub(super) const RECENT_KICKS: usize = 64;

/// A kick the hub remembers: its moderation's number, room, name key and
/// what its close frame says.
#[derive(Debug)]
pub(super) struct Kicked {
    number: u64,
    room: String,
    key: String,
    told: Box<str>,
}

/// Who bans and mutes recorded against a connection apply to: `sub:SUB`
/// for a token holder, `ip:ADDRESS` for anyone else (`address` is the
/// per-address rules' key: an IPv6 client's /64).
pub fn subject(who: &Who, address: impl std::fmt::Display) -> String {
    match who.identity() {
        Some(identity) => format!("sub:{}", identity.sub),
        None => format!("ip:{address}"),
    }
}

/// What a connection about to join a room is held to there.
#[derive(Debug, Default)]
pub struct Restriction {
    /// Banned: why, as its 403 says.
    pub banned: Option<String>,
    /// Muted until (Unix ms; `u64::MAX`: until lifted); 0: not muted.
    muted_until: u64,
    /// The hub's count of moderations when it was read.
    read_at: u64,
}

impl Restriction {
    /// Applies the mute, if any, to a member that has just joined. A ban or
    /// mute given between the check before the upgrade and the join (which
    /// missed it, not being in the room yet) is read again (always, with a
    /// shared backend): a ban then closes the connection with 4003 at once.
    pub async fn apply(self, member: &Member, request: &ChatRequest) {
        let hub = &member.hub;
        // With a shared backend, another node's ban reaches this one only
        // once it has the room: always read again.
        let read_at = self.read_at;
        let unchanged = hub.moderations.load(Ordering::Acquire) == read_at;
        // Degraded, nothing can be read again: what was read stands.
        let stands = hub.backend.mode() == Mode::Degraded;
        let restriction = if stands || (unchanged && !hub.backend.is_shared()) {
            self
        } else {
            Box::pin(hub.restriction(request, &member.tenure.subject)).await.unwrap_or(self)
        };
        if let Some(told) = &restriction.banned {
            member.tenure.remove(truncate(told, MAX_CLOSE_REASON_BYTES));
        } else if !unchanged {
            let key = name_key(member.name());
            let kicks = lock(&hub.recent_kicks);
            let room = &member.room.name;
            let missed = kicks
                .iter()
                .find(|kick| kick.number > read_at && kick.room == *room && kick.key == key);
            if let Some(kick) = missed {
                member.tenure.remove(&kick.told);
            }
        }
        if restriction.muted_until > 0 {
            member.tenure.muted_until.store(restriction.muted_until, Ordering::Release);
        }
    }
}

impl Tenure {
    /// Refuses a message while it is muted, saying for how long.
    pub(super) fn check_muted(&self) -> Result<(), ClientError<'static>> {
        match self.muted_until.load(Ordering::Acquire) {
            0 => Ok(()),
            u64::MAX => Err(ClientError::Muted { seconds_left: None }),
            until => {
                let now = unix_ms();
                if until <= now {
                    return Ok(());
                }
                Err(ClientError::Muted { seconds_left: Some((until - now).div_ceil(1000)) })
            }
        }
    }
}

impl Member {
    /// Whether this client moderates its room (its token's `mod` claim).
    pub fn moderates(&self) -> bool {
        self.who.moderates(&self.room.name)
    }

    /// Carries out a moderator's request in this client's room, by this
    /// client; returns what its ack waits for: the room's notice.
    pub async fn moderate<'a>(&self, moderation: &Moderation<'a>) -> Result<Ack, ClientError<'a>> {
        // Boxed: its state stays out of every connection's future.
        Box::pin(self.hub.moderate(&self.room.name, Some(&self.name), moderation)).await
    }
}

impl Hub {
    /// The ban and the mute that apply to `request` in its room, from
    /// `subject` (see [`subject`]).
    pub async fn restriction(
        &self,
        request: &ChatRequest,
        subject: &str,
    ) -> Result<Restriction, BackendError> {
        let read_at = self.moderations.load(Ordering::Acquire);
        // Degraded: the join itself is refused (1013), which says more.
        if self.backend.mode() == Mode::Degraded {
            return Ok(Restriction { read_at, ..Restriction::default() });
        }
        let key = || match requested_name(&request.who, request.name.as_deref()) {
            Some((_, Ok((_, key)))) => key,
            _ => String::new(),
        };
        let sanctions = Box::pin(self.backend.sanctions(&request.room, key, subject)).await?;
        let mut restriction = Restriction { read_at, ..Restriction::default() };
        for sanction in &sanctions {
            let until = sanction.until.unwrap_or(u64::MAX);
            match sanction.action {
                Action::Ban => {
                    use std::fmt::Write as _;
                    let room = &request.room;
                    let mut told = format!("you are banned from room {room:?}");
                    if until != u64::MAX {
                        let left = until.saturating_sub(unix_ms()).div_ceil(1000);
                        let _ = write!(told, " for {}", span_left(left));
                    }
                    if let Some(reason) = &sanction.reason {
                        let _ = write!(told, ": {reason}");
                    }
                    restriction.banned = Some(told);
                }
                _ => restriction.muted_until = restriction.muted_until.max(until),
            }
        }
        Ok(restriction)
    }

    /// Carries out a moderator's request in `room`, by `by` (a moderator's
    /// name; none for the HTTP API). Whether the requester may is the
    /// caller's to check. Returns the room's notice's position (none with
    /// a shared backend, which publishes it, or when nobody is in the room).
    pub async fn moderate<'a>(
        self: &Arc<Self>,
        room: &str,
        by: Option<&str>,
        moderation: &Moderation<'a>,
    ) -> Result<Ack, ClientError<'a>> {
        moderation.check().map_err(ClientError::Moderation)?;
        let Moderation { action, name, duration, reason } = *moderation;
        let key = name_key(name);
        let shared = match self.backend.mode() {
            Mode::Alone => false,
            Mode::Shared => true,
            Mode::Degraded => return Err(ClientError::LinkDown),
        };
        let link = |error: BackendError| {
            warn!(%error, "cannot moderate");
            ClientError::LinkDown
        };
        if matches!(action, Action::Kick | Action::Mute) {
            let here = if shared {
                Box::pin(self.backend.holds(room, &key)).await.map_err(link)?
            } else {
                !self.tenures_of(room, &key).is_empty()
            };
            if !here {
                return Err(ClientError::NotHere { name });
            }
        }
        let until = duration.map(|d| unix_ms() + u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // Told as the person spells it (`Eve` for `/kick eve`), when known.
        let spelled = if shared { None } else { self.holder_name(room, &key) };
        let shown = spelled.as_deref().unwrap_or(name);
        match action {
            Action::Ban | Action::Mute => {
                let sanction = Sanction {
                    action,
                    key: key.clone(),
                    name: shown.to_owned(),
                    subject: None,
                    until,
                    reason: reason.map(str::to_owned),
                };
                if !Box::pin(self.backend.sanction(room, sanction)).await.map_err(link)? {
                    return Err(ClientError::TooManySanctions);
                }
            }
            Action::Unban | Action::Unmute => {
                let lifted = if action == Action::Unban { Action::Ban } else { Action::Mute };
                if !Box::pin(self.backend.lift(room, lifted, &key)).await.map_err(link)? {
                    return Err(ClientError::NotSanctioned { name });
                }
            }
            Action::Kick => {}
        }
        let event = Event::Moderated {
            room: room.into(),
            action,
            name: shown.into(),
            by: by.map(Into::into),
            seconds: duration.map(|d| d.as_secs()),
            reason: reason.map(Into::into),
        };
        if shared {
            // Every node, this one too, acts on it as it comes back.
            Box::pin(self.backend.publish(room, &event)).await.map_err(link)?;
            return Ok(Ack::None);
        }
        let mut told = Ack::None;
        if let Some(room) = lock(&self.rooms).get(room).cloned() {
            told = Ack::Pos(room.broadcast(&mut lock(&room.state), &event));
        }
        self.enforce(room, &event);
        Ok(told)
    }

    /// The name as its holder on this node spells it, if one is in `room`.
    fn holder_name(&self, room: &str, key: &str) -> Option<String> {
        let room = lock(&self.rooms).get(room).cloned()?;
        let state = lock(&room.state);
        state.names.get(key).map(|holder| holder.name.clone())
    }

    /// The connections of this node in `room` under the name of key `key`.
    fn tenures_of(&self, room: &str, key: &str) -> Vec<Arc<Tenure>> {
        let Some(room) = lock(&self.rooms).get(room).cloned() else { return Vec::new() };
        let state = lock(&room.state);
        state.tenures_of(key)
    }

    /// Acts on a moderation told to `room` (the room has been told): a
    /// kick or ban closes this node's connections under the name, a mute
    /// or unmute marks them; a ban or mute is also recorded against who
    /// they are, so another name does not evade it.
    pub(super) fn enforce(&self, room: &str, event: &Event<'_>) {
        let Event::Moderated { action, name, by, seconds, reason, .. } = event else { return };
        let number = self.moderations.fetch_add(1, Ordering::AcqRel) + 1;
        let key = name_key(name);
        let told = describe(*action, name, by.as_deref(), *seconds, reason.as_deref());
        let told = truncate(&told, MAX_CLOSE_REASON_BYTES);
        if *action == Action::Kick {
            let (room, key, told) = (room.to_owned(), key.clone(), told.into());
            let kicked = Kicked { number, room, key, told };
            let mut kicks = lock(&self.recent_kicks);
            if kicks.len() == RECENT_KICKS {
                kicks.pop_front();
            }
            kicks.push_back(kicked);
        }
        let targets = self.tenures_of(room, &key);
        if targets.is_empty() {
            return;
        }
        let until = seconds.map(|s| unix_ms().saturating_add(s.saturating_mul(1000)));
        match action {
            Action::Kick | Action::Ban => {
                for tenure in &targets {
                    tenure.remove(told);
                }
            }
            Action::Mute => {
                for tenure in &targets {
                    tenure.muted_until.store(until.unwrap_or(u64::MAX), Ordering::Release);
                }
            }
            Action::Unmute => {
                for tenure in &targets {
                    tenure.muted_until.store(0, Ordering::Release);
                }
            }
            Action::Unban => {}
        }
        if matches!(action, Action::Ban | Action::Mute) {
            let mut subjects: Vec<Box<str>> = targets.iter().map(|t| t.subject.clone()).collect();
            subjects.sort_unstable();
            subjects.dedup();
            let sanctions: Vec<Sanction> = (subjects.into_iter())
                .map(|subject| Sanction {
                    action: *action,
                    key: key.clone(),
                    name: name.to_string(),
                    subject: Some(subject.into()),
                    until,
                    reason: reason.as_ref().map(ToString::to_string),
                })
                .collect();
            // In-process, at once: an unban right after must find them.
            if let Some(store) = self.backend.store() {
                for sanction in sanctions {
                    if !store.sanction(room, sanction) {
                        warn!(room, "too many bans and mutes to record one more");
                    }
                }
                return;
            }
            // A shared backend's call, from its events: in the background.
            let (backend, room) = (self.backend.clone(), room.to_owned());
            tokio::spawn(async move {
                for sanction in sanctions {
                    match backend.sanction(&room, sanction).await {
                        // Written, or lifted meanwhile: nothing to follow.
                        Ok(_) => {}
                        Err(error) => {
                            warn!(%error, room, "cannot record a ban or mute against its holder");
                        }
                    }
                }
            });
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
