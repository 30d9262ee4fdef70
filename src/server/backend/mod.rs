//! What nodes share: names, numbering, history and presence. Map:
//! - [`local`]: in-process, the default. There is one node, so the hub's
//!   rooms are all there is: the hub claims names, numbers and keeps
//!   messages under each room's lock, by the rules in that module, and
//!   [`store`] keeps them on disk (`--db`).
//! - [`redis`] (`--redis`): several nodes share rooms through Redis. What it
//!   publishes comes back to the hub through [`Events`], which the hub
//!   implements; the backend never names the hub. While its link is down it
//!   is in degraded mode ([`Mode::Degraded`]).
//!
//! [`Backend`] is an enum rather than a boxed trait object: the in-process
//! path costs one match per operation, and no allocation or dynamic call per
//! connection or per delivery.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use std::collections::HashMap;

use crate::protocol::{Action, Event, MAX_SANCTIONS, MAX_SANCTIONS_PER_ROOM};
use crate::server::config::ServerConfig;
use crate::server::metrics::Metrics;

pub(crate) mod local;
pub(crate) mod redis;
pub(crate) mod store;

use store::Store;
pub use store::{StoreCounters, StoreError};

/// Why the shared backend could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// It is out of reach: the node is in degraded mode.
    #[error("the link to the other nodes is down")]
    Down,
    /// Redis failed, refused or did not answer.
    #[error(transparent)]
    Redis(#[from] redis::LinkError),
    /// The store (`--db`) failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a client is told when the link to the other nodes goes down.
pub const LINK_DOWN: &str = "the link to the other nodes is down: until it is back, only \
                             clients of this node see your messages, and they are not kept";
/// What a client is told when the link to the other nodes is back.
pub const LINK_UP: &str = "the link to the other nodes is back";

/// Longest a client's next frame waits for the echo of its message from
/// the backend (which a failing link may never bring).
pub(crate) const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a server keeps what its nodes share: in-process
/// ([`Backend::local`]), or in Redis ([`Backend::connect`] with `--redis`).
#[derive(Debug, Clone)]
pub struct Backend(Kind);

#[derive(Debug, Clone)]
enum Kind {
    Local(Store),
    Redis(Arc<redis::Redis>),
    /// A backend in a given mode that answers nothing, for the hub's tests.
    #[cfg(test)]
    Fake(Mode),
}

/// Who names, numbers, keeps and announces, right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// In-process: this node, under each room's lock.
    Alone,
    /// The shared backend, reached: what it publishes comes back through
    /// [`Events`], this node's clients' messages included.
    Shared,
    /// The shared backend, out of reach: this node's clients chat among
    /// themselves, their messages neither numbered nor kept, and names
    /// cannot change. New clients are refused until the link is back.
    Degraded,
}

/// What the hub does for the backend: the events the backend publishes, and
/// what this node's rooms hold. One dynamic call per event from Redis, never
/// on the in-process path.
pub(crate) trait Events: Send + Sync {
    /// Relays an event published in `room` to this node's clients there; a
    /// message already delivered (seen again after a catch-up) is dropped.
    /// `bytes` is its size as published, to make room for it first.
    fn deliver(&self, room: &str, event: &Event<'_>, bytes: usize);
    /// A returning session took the name of key `key` in `room` on another
    /// node: its old connection here goes.
    fn retire(&self, room: &str, key: &str);
    /// `room` got a new epoch: the backend lost its history. Returns whether
    /// this node's clients there knew another one, in which case the backend
    /// lost their names too and must claim them again.
    fn reset(&self, room: &str, epoch: &str) -> bool;
    /// The link is down: tells every client of this node.
    fn link_down(&self);
    /// The link is back: tells every client of this node.
    fn link_up(&self);
    /// After a rejoin: relays what `room`'s clients missed meanwhile.
    fn recover(&self, room: &str, snapshot: &Snapshot);
    /// The rooms this node has clients in.
    fn local_rooms(&self) -> Vec<String>;
    /// Where this node got to in `room`, and who holds names there.
    fn local_room(&self, room: &str) -> Option<LocalRoom>;
}

/// What a node knows of one of its rooms, to claim it again after a loss.
#[derive(Debug, Default)]
pub(crate) struct LocalRoom {
    /// The room's epoch on this node.
    pub epoch: String,
    /// The last seq this node delivered there.
    pub seq: u64,
    /// The names its clients hold there.
    pub holders: Vec<Holding>,
}

/// A name held by a client of this node, or by a person's connections here.
#[derive(Debug)]
pub(crate) struct Holding {
    /// The name's look-alike key.
    pub key: String,
    /// The name as its holder wrote it.
    pub name: String,
    /// Who holds it.
    pub held: Held,
}

/// Who holds a name on a node.
#[derive(Debug)]
pub(crate) enum Held {
    /// A plain or guest name's one connection, by its session secret.
    Session(String),
    /// A token holder: its `sub`, and how many connections it has here.
    Person {
        /// The token's `sub`.
        sub: String,
        /// Its connections in the room on this node.
        connections: usize,
    },
}

/// What a client asks for when it joins a shared room.
#[derive(Debug)]
pub(crate) struct Join<'a> {
    /// The name it asks for (valid), with its key.
    pub requested: Option<(&'a str, String)>,
    /// A token holder's `sub`: its name is its person's, which any number
    /// of its connections share, and which no other `sub` may hold.
    pub sub: Option<&'a str>,
    /// The session secret it came back with, if any.
    pub presented: Option<&'a str>,
    /// Its new session secret.
    pub session: &'a str,
    /// Names to fall back on, in order, with their keys
    /// ([`local::fallback_names`]).
    pub candidates: &'a [(String, String)],
    /// The epoch and seq it resumes after, if it resumes.
    pub resume: Option<(&'a str, u64)>,
    /// The last seq this node delivered in the room: numbering goes on from
    /// it if the backend lost the room.
    pub floor: u64,
}

/// What the backend says of a room a client joins.
#[derive(Debug)]
pub(crate) struct Joined {
    /// The name the client got.
    pub name: String,
    /// What became of the name it asked for.
    pub outcome: Claim,
    /// Names in the room on all nodes (a person counts once).
    pub online: usize,
    /// The room's position and what to replay.
    pub room: Snapshot,
}

/// What became of the name a client asked for when it joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// It got it (or none was asked for), or joined its person's other
    /// connections under it.
    Granted,
    /// Someone else held it (or a look-alike): the client got a fallback name.
    Taken,
    /// A token holder's name, held by another `sub` (or a look-alike is):
    /// the client was refused, nothing was claimed.
    Held,
}

/// A room's epoch, last seq and history, as the shared backend holds them.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The room's epoch.
    pub epoch: String,
    /// The last message's seq.
    pub seq: u64,
    /// The seq of the first message in `history` (`seq + 1` when none is).
    pub first: u64,
    /// The messages to replay, oldest first, as published (JSON events):
    /// the last ones, or those after a resume's seq, within the count and
    /// byte bounds.
    pub history: Vec<String>,
}

impl Backend {
    /// The in-process backend: one node, its store opened now (`--db`), so
    /// that a file that cannot be used stops the server at start-up.
    pub fn open(config: &ServerConfig) -> Result<Self, BackendError> {
        Ok(Self(Kind::Local(Store::open(config)?)))
    }

    /// The backend `config` asks for: Redis with `--redis`, connected now so
    /// that a wrong URL or an unreachable server stops the node at start-up;
    /// else the in-process one ([`Backend::open`]).
    pub async fn connect(config: &ServerConfig) -> Result<Self, BackendError> {
        match &config.redis {
            None => Self::open(config),
            Some(url) => Ok(Self(Kind::Redis(redis::Redis::connect(url, config).await?))),
        }
    }

    /// The store's counters, for `/metrics`: in-process only.
    pub fn store_counters(&self) -> Option<&StoreCounters> {
        self.store().map(Store::counters)
    }

    /// The in-process store.
    pub(crate) fn store(&self) -> Option<&Store> {
        match &self.0 {
            Kind::Local(store) => Some(store),
            Kind::Redis(_) => None,
            #[cfg(test)]
            Kind::Fake(_) => None,
        }
    }

    /// `room`'s messages numbered below `before`, oldest first, bounded by
    /// `limit`, [`HISTORY_PAGE_MESSAGES`](crate::protocol::HISTORY_PAGE_MESSAGES)
    /// and [`HISTORY_PAGE_BYTES`](crate::protocol::HISTORY_PAGE_BYTES).
    pub(crate) async fn page(
        &self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Result<Page, BackendError> {
        match &self.0 {
            Kind::Local(store) => Ok(store.page(room, before, limit).await?),
            Kind::Redis(redis) => Ok(redis.page(room, before, limit).await?),
            #[cfg(test)]
            Kind::Fake(_) => Err(BackendError::Down),
        }
    }

    /// Writes what is queued and stops the store (a clean stop once every
    /// room was settled); waits at most `timeout`.
    pub(crate) async fn close(&self, timeout: Duration) {
        if let Kind::Local(store) = &self.0 {
            store.close(timeout).await;
        }
    }

    #[cfg(test)]
    pub(crate) fn fake(mode: Mode) -> Self {
        Self(Kind::Fake(mode))
    }

    /// Whether rooms are shared with other nodes (in any mode).
    pub(crate) fn is_shared(&self) -> bool {
        !matches!(self.0, Kind::Local(_))
    }

    /// Who names, numbers and keeps now.
    pub(crate) fn mode(&self) -> Mode {
        match &self.0 {
            Kind::Local(_) => Mode::Alone,
            Kind::Redis(redis) if redis.is_up() => Mode::Shared,
            Kind::Redis(_) => Mode::Degraded,
            #[cfg(test)]
            Kind::Fake(mode) => *mode,
        }
    }

    /// Keeps the link until `shutdown`, delivering what the backend
    /// publishes to `events`. Returns at once in-process.
    pub(crate) async fn run(
        self,
        events: Arc<dyn Events>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        if let Kind::Redis(redis) = self.0 {
            redis.run(events, metrics, shutdown).await;
        }
    }

    /// The shared backend, for the operations only it carries out.
    fn shared(&self) -> Result<&redis::Redis, BackendError> {
        match &self.0 {
            Kind::Redis(redis) => Ok(redis),
            // The hub asks only in [`Mode::Shared`], never in-process; a
            // fake answers nothing.
            Kind::Local(_) => Err(BackendError::Down),
            #[cfg(test)]
            Kind::Fake(_) => Err(BackendError::Down),
        }
    }

    /// Receives `room`'s events from now on.
    pub(crate) async fn subscribe(&self, room: &str) -> Result<(), BackendError> {
        Ok(self.shared()?.subscribe(room).await?)
    }

    /// Gives a client a name in `room` (the one it asked for if free, else
    /// the first free candidate), announces it, and returns the room.
    pub(crate) async fn join(&self, room: &str, join: &Join<'_>) -> Result<Joined, BackendError> {
        Ok(self.shared()?.join(room, join).await?)
    }

    /// Numbers, keeps and publishes a message event (JSON); returns its seq.
    /// `floor` is the last seq this node delivered in the room.
    pub(crate) async fn say(
        &self,
        room: &str,
        event: &str,
        floor: u64,
    ) -> Result<u64, BackendError> {
        Ok(self.shared()?.say(room, event, floor).await?)
    }

    /// Renames a client of session `session`; `false` if the new name (or
    /// one that looks like it) is held.
    pub(crate) async fn rename(
        &self,
        room: &str,
        old: &str,
        new: &str,
        session: &str,
    ) -> Result<bool, BackendError> {
        Ok(self.shared()?.rename(room, old, new, session).await?)
    }

    /// How many are in `room` on all nodes, and the first names in order.
    pub(crate) async fn who(&self, room: &str) -> Result<(usize, Vec<String>), BackendError> {
        Ok(self.shared()?.who(room).await?)
    }

    /// Releases the name of key `key` in `room` if session `session` still
    /// holds it, and announces the departure; in the background.
    pub(crate) fn leave(&self, room: &str, key: &str, session: &str) {
        if let Kind::Redis(redis) = &self.0 {
            redis.clone().leave_later(room, key, session);
        }
    }

    /// `room`'s active bans and mutes that apply to the name of key `key()`
    /// or to `subject`. The key is computed only for a room that has some.
    pub(crate) async fn sanctions(
        &self,
        room: &str,
        key: impl FnOnce() -> String,
        subject: &str,
    ) -> Result<Vec<Sanction>, BackendError> {
        match &self.0 {
            Kind::Local(store) => Ok(store.sanctions(room, key, subject)),
            Kind::Redis(redis) => {
                let all = redis.sanctions(room).await?;
                if all.is_empty() {
                    return Ok(all);
                }
                let key = key();
                Ok(all.into_iter().filter(|s| s.applies(&key, subject)).collect())
            }
            #[cfg(test)]
            Kind::Fake(_) => Err(BackendError::Down),
        }
    }

    /// Records a ban or mute in `room`, in place of the same one of the same
    /// name key and subject; false when the room holds as many as it may.
    /// With a shared backend, one against a holder (with a subject) is
    /// written only while the one by name it follows is still there: an
    /// unban may have come first.
    pub(crate) async fn sanction(
        &self,
        room: &str,
        sanction: Sanction,
    ) -> Result<bool, BackendError> {
        match &self.0 {
            Kind::Local(store) => Ok(store.sanction(room, sanction)),
            Kind::Redis(redis) => Ok(redis.sanction(room, &sanction).await?),
            #[cfg(test)]
            Kind::Fake(_) => Err(BackendError::Down),
        }
    }

    /// Lifts `room`'s bans (or mutes) of the name of key `key`; false when
    /// there was none.
    pub(crate) async fn lift(
        &self,
        room: &str,
        action: Action,
        key: &str,
    ) -> Result<bool, BackendError> {
        match &self.0 {
            Kind::Local(store) => Ok(store.lift(room, action, key)),
            Kind::Redis(redis) => Ok(redis.lift(room, action, key).await?),
            #[cfg(test)]
            Kind::Fake(_) => Err(BackendError::Down),
        }
    }

    /// Whether someone holds the name of key `key` in `room`, on any node.
    pub(crate) async fn holds(&self, room: &str, key: &str) -> Result<bool, BackendError> {
        Ok(self.shared()?.holds(room, key).await?)
    }

    /// Publishes `event` (a moderation) to every node with clients in `room`.
    pub(crate) async fn publish(&self, room: &str, event: &Event<'_>) -> Result<(), BackendError> {
        Ok(self.shared()?.publish(room, event).await?)
    }

    /// This node's last client left `room`: stop receiving its events,
    /// unless `events` has clients there again by then; in the background.
    pub(crate) fn forget(&self, room: &str, events: Arc<dyn Events>) {
        if let Kind::Redis(redis) = &self.0 {
            redis.clone().unsubscribe_later(room, events);
        }
    }

    /// The backend lost `room`, which this node's clients are in: claims
    /// their names again and catches the room up, through `events`.
    pub(crate) async fn reclaim(
        &self,
        room: &str,
        events: &dyn Events,
    ) -> Result<(), BackendError> {
        Ok(self.shared()?.reclaim(events, room).await?)
    }
}

pub(crate) use store::Page;

/// A ban or a mute in a room: of a name (its key), and, once it was given
/// to someone there, of who that was (`sub:SUB` or `ip:ADDRESS`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Sanction {
    /// [`Action::Ban`] or [`Action::Mute`].
    pub action: Action,
    /// The [`name_key`](crate::protocol::name_key) of the name it was given to.
    pub key: String,
    /// That name, as the moderator wrote it.
    pub name: String,
    /// Who had that name then, if anyone there did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Until when (Unix ms); none: until lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Sanction {
    /// Whether it has not expired at `now` (Unix ms).
    pub(crate) fn active(&self, now: u64) -> bool {
        self.until.is_none_or(|until| until > now)
    }

    /// Whether it applies to a connection of name key `key` and subject
    /// `subject`.
    pub(crate) fn applies(&self, key: &str, subject: &str) -> bool {
        self.key == key || self.subject.as_deref() == Some(subject)
    }

    /// Whether it is the same as `other` but for its duration and reason.
    fn replaces(&self, other: &Sanction) -> bool {
        self.action == other.action && self.key == other.key && self.subject == other.subject
    }
}

/// Every room's bans and mutes, in memory: the in-process backend's, read
/// from the store at start and written through to it.
#[derive(Debug, Default)]
pub(crate) struct Sanctions {
    rooms: HashMap<String, Vec<Sanction>>,
    count: usize,
}

impl Sanctions {
    /// `room`'s active ones that apply to key `key` or `subject`; the
    /// expired ones are forgotten.
    fn applying(
        &mut self,
        room: &str,
        key: impl FnOnce() -> String,
        subject: &str,
    ) -> Vec<Sanction> {
        self.forget_expired(room);
        let Some(held) = self.rooms.get(room) else { return Vec::new() };
        let key = key();
        held.iter().filter(|s| s.applies(&key, subject)).cloned().collect()
    }

    fn forget_expired(&mut self, room: &str) {
        let now = unix_ms();
        self.retain(room, |sanction| sanction.active(now));
    }

    /// Keeps `room`'s that `keep` says to, counted; returns how many went.
    fn retain(&mut self, room: &str, keep: impl Fn(&Sanction) -> bool) -> usize {
        let Some(held) = self.rooms.get_mut(room) else { return 0 };
        let before = held.len();
        held.retain(keep);
        let gone = before - held.len();
        self.count -= gone;
        if held.is_empty() {
            self.rooms.remove(room);
        }
        gone
    }

    /// Adds `sanction` in place of the one it replaces; false past the bounds.
    fn add(&mut self, room: &str, sanction: Sanction) -> bool {
        self.forget_expired(room);
        let held = self.rooms.entry(room.to_owned()).or_default();
        if let Some(old) = held.iter_mut().find(|old| old.replaces(&sanction)) {
            *old = sanction;
            return true;
        }
        if held.len() >= MAX_SANCTIONS_PER_ROOM {
            return false;
        }
        if self.count >= MAX_SANCTIONS {
            // Other rooms' expired ones, not read since, free their places.
            let rooms: Vec<String> = self.rooms.keys().cloned().collect();
            for other in rooms {
                self.forget_expired(&other);
            }
            if self.count >= MAX_SANCTIONS {
                return false;
            }
        }
        self.rooms.entry(room.to_owned()).or_default().push(sanction);
        self.count += 1;
        true
    }

    /// Forgets `room`'s `action`s of key `key`; false when there was none.
    fn lift(&mut self, room: &str, action: Action, key: &str) -> bool {
        self.forget_expired(room);
        self.retain(room, |sanction| sanction.action != action || sanction.key != key) > 0
    }
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// A random epoch for a new room: its message numbers mean something only
/// within it.
pub(crate) fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}
