//! This node's rooms. Map: this file holds the rooms, their names, recent
//! history and members, and implements [`Events`] for a shared backend;
//! `ring.rs` is each room's fan-out and the server's memory [`Budget`].
//!
//! Each room has one [`Ring`] whose items are frames encoded once in each
//! protocol, cloned by reference count for every recipient, never copied.
//!
//! What rooms hold is counted in bytes against one [`Budget`]
//! (`--max-memory`): when it runs short, the oldest history of any room goes
//! first, then frames clients too far behind have not taken. A frame stays
//! counted until every connection that took it has written it; join
//! replays and `/history` answers are counted too, in the share of the
//! budget rooms leave to connections.
//!
//! Each room numbers its messages (`seq`) and keeps the last ones, so that a
//! client joining late sees them and one coming back resumes where it left.
//!
//! A client is in a room while it holds a [`Member`]; dropping it leaves the
//! room, announces the departure and forgets the room when it empties.
//!
//! The hub is local: what nodes share (names, numbering, history, presence)
//! is its [`Backend`]'s. In-process, the hub applies the backend's rules
//! itself under each room's lock. With a shared backend, the hub is one
//! node's part of each room: it asks the backend, and relays what the
//! backend publishes, through [`Events`]. In degraded mode it relays its own
//! clients' messages among themselves.

pub(crate) mod api;
mod moderation;
pub(crate) mod ring;

pub use moderation::{Restriction, subject};

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use tracing::warn;

use crate::protocol::{
    ChatRequest, ClientError, Event, Frame, GUEST_MARK, Identity, Limits, NameError, Phase,
    Protocol, Resume, Str, Who, name_key, now, validate_name,
};
use crate::server::backend::local::{self, FALLBACK_CANDIDATES, Presence};
use crate::server::backend::store::{Ceiling, Loaded, RESERVE_AHEAD, RESERVE_MARGIN, Stored};
use crate::server::backend::{
    Backend, BackendError, Claim, Events, Held, Holding, Join, LINK_DOWN, LINK_UP, LocalRoom, Mode,
    Snapshot, StoreError, new_epoch,
};
use crate::server::config::{CONNECTION_SHARE, ServerConfig};
use crate::server::hub::ring::{Budget, Receiver, Ring, Wake};
use crate::util::lock;

/// One event broadcast to a room, with its position in the room's stream.
#[derive(Debug, Clone)]
pub struct Broadcast {
    /// Counts every frame broadcast in the room since it was created.
    pub pos: u64,
    /// A message's seq; 0 for other events.
    pub seq: u64,
    /// The event, encoded, shared by every recipient.
    pub frames: Encoded,
}

/// An event encoded once per protocol, for the protocols its recipients
/// speak: every recipient clones each frame it carries, so a frame nobody
/// needs would cost every delivery a reference count.
#[derive(Debug, Clone)]
pub struct Encoded {
    text: Option<Frame>,
    json: Option<Frame>,
}

impl Encoded {
    /// Bytes these frames hold, with what keeping them costs.
    fn bytes(&self) -> usize {
        let cost = |frame: &Option<Frame>| frame.as_ref().map_or(0, kept_cost);
        cost(&self.text) + cost(&self.json)
    }

    /// These frames, each tying the charge for its bytes (charged already)
    /// to itself: they stay counted until the ring and every connection
    /// that took one have let it go.
    fn charged(self, budget: &Arc<Budget>) -> Self {
        let tie = |frame: Frame| {
            let charge = budget.adopt(kept_cost(&frame));
            frame.tied_to(charge)
        };
        Self { text: self.text.map(tie), json: self.json.map(tie) }
    }

    /// The event in every protocol (for the history: anyone may join later).
    fn all(event: &Event<'_>) -> Self {
        Self::only(event, Speakers { text: 1, json: 1 })
    }

    /// The event in the protocols `speakers` use.
    fn only(event: &Event<'_>, speakers: Speakers) -> Self {
        Self {
            text: (speakers.text > 0).then(|| event.encode(Protocol::Text)),
            json: (speakers.json > 0).then(|| event.encode(Protocol::Json)),
        }
    }

    /// These frames, less those `speakers` do not use.
    fn keep(&self, speakers: Speakers) -> Self {
        Self {
            text: self.text.as_ref().filter(|_| speakers.text > 0).cloned(),
            json: self.json.as_ref().filter(|_| speakers.json > 0).cloned(),
        }
    }

    /// The frame for a client of `protocol`: always there for a member of
    /// the room it was sent to.
    pub fn take(self, protocol: Protocol) -> Option<Frame> {
        match protocol {
            Protocol::Text => self.text,
            Protocol::Json => self.json,
        }
    }

    fn get(&self, protocol: Protocol) -> Option<Frame> {
        match protocol {
            Protocol::Text => self.text.clone(),
            Protocol::Json => self.json.clone(),
        }
    }
}

/// How many members of a room speak each protocol.
#[derive(Debug, Clone, Copy, Default)]
struct Speakers {
    text: usize,
    json: usize,
}

impl Speakers {
    fn count(&mut self, protocol: Protocol) -> &mut usize {
        match protocol {
            Protocol::Text => &mut self.text,
            Protocol::Json => &mut self.json,
        }
    }
}

/// What keeping a frame costs besides its bytes (its share of an entry in
/// a ring or a history, or of a queue), counted with them.
const KEPT_OVERHEAD: usize = 32;

/// What a frame kept costs the budget.
fn kept_cost(frame: &Frame) -> usize {
    KEPT_OVERHEAD + frame.bytes().len()
}

/// All rooms of a server.
#[derive(Debug)]
pub struct Hub {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// Moderations acted on so far: a join checked against a room's bans
    /// and mutes before one came checks again (see [`Restriction`]).
    moderations: AtomicU64,
    /// The last kicks, with their moderation's number, so that a join past
    /// its checks when one came is kicked too: at most
    /// [`moderation::RECENT_KICKS`].
    recent_kicks: Mutex<VecDeque<moderation::Kicked>>,
    /// Frames each room's ring keeps for its slowest client (`--max-lag`).
    max_lag: usize,
    /// Bytes of them (`--max-lag-bytes`).
    max_lag_bytes: usize,
    /// Messages each room keeps for those who join later (`--history`).
    history: usize,
    /// Bytes of them (`--history-bytes`).
    history_bytes: usize,
    /// How long messages are kept (`--keep-for`).
    keep_for: std::time::Duration,
    /// What all rooms hold, against `--max-memory`.
    budget: Arc<Budget>,
    /// Taken by whoever frees memory for all rooms: one at a time.
    reclaiming: Mutex<()>,
    /// Taken while a room is read back from the store and entered: many
    /// joins at once to a room not in memory would otherwise each read its
    /// history, none of it counted (60 such joins once took 370 MB). The
    /// store's one writer reads one room at a time anyway.
    loading: tokio::sync::Mutex<()>,
    /// Largest room whose joins and leaves are announced one by one
    /// (`--presence-limit`); larger rooms get [`Hub::summarize`]'s summaries.
    presence_limit: usize,
    /// What clients may send, told in their welcome.
    limits: Limits,
    /// Where names, numbering, history and presence are shared.
    backend: Backend,
}

#[derive(Debug)]
struct Room {
    name: String,
    ring: Arc<Ring<Broadcast, Tenure>>,
    state: Mutex<RoomState>,
    /// Set once this node receives the room's events from a shared backend.
    subscribed: tokio::sync::OnceCell<()>,
}

#[derive(Debug, Default)]
struct RoomState {
    /// Random, drawn when the room is created (by a shared backend, when
    /// there is one): its message numbers mean something only within it.
    epoch: String,
    /// Clients holding a [`Member`] of this room, joining ones included.
    members: usize,
    /// Names of this node's clients, by [`name_key`]: names that look
    /// alike have the same key, so only one of them can be held. A token
    /// holder is one entry however many connections it has here.
    names: HashMap<String, Holder>,
    speakers: Speakers,
    /// The last message's number (the last delivered, with a shared backend).
    seq: u64,
    /// After a crash: numbers up to here may have been handed out, so
    /// numbering goes on above it (0 otherwise).
    floor: u64,
    /// With the store: the highest number this epoch may hand out (see
    /// [`Ceiling`]); none for a room the store does not keep.
    ceiling: Option<Arc<Ceiling>>,
    /// The highest number asked of the store so far.
    reserved: u64,
    /// Arrivals and departures not announced yet, in a large room.
    presence: Presence,
    /// The last messages, oldest first, numbered in order (without a gap,
    /// but for the jump after a crash).
    history: VecDeque<Kept>,
    /// Bytes of `history`, counted in the budget.
    history_bytes: usize,
    /// Sessions that left lately, with the id of their last message request
    /// carried out: one that comes back learns where it got to. At most
    /// [`DEPARTED_SESSIONS`], the oldest forgotten first.
    departed: VecDeque<(Secret, Box<str>)>,
}

impl RoomState {
    /// Seats a token holder's connection under its name's `key`: with the
    /// person's other connections if it has some here, else as a new
    /// entry. Another `sub` (or anyone else) holding the key is refused.
    /// Returns whether this is the person's first connection here.
    fn seat(
        &mut self,
        identity: &Identity,
        name: &str,
        key: String,
        tenure: &Arc<Tenure>,
    ) -> Result<bool, JoinError> {
        match self.names.entry(key) {
            Entry::Occupied(mut held) => {
                let holder = held.get_mut();
                if holder.sub.as_deref() != Some(&*identity.sub) {
                    return Err(JoinError::NameHeld { name: name.to_owned() });
                }
                holder.tenures.push(tenure.clone());
                Ok(false)
            }
            Entry::Vacant(free) => {
                free.insert(Holder {
                    name: name.to_owned(),
                    tenures: vec![tenure.clone()],
                    sub: Some(identity.sub.clone()),
                });
                Ok(true)
            }
        }
    }

    /// Lets go of `tenure`'s hold on the name of `key`: returns `None` if
    /// it held none (it was retired: its name is its successor's), else
    /// whether the name is gone from the room with it (a person's last
    /// connection, or any other holder).
    fn release(&mut self, key: &str, tenure: &Arc<Tenure>) -> Option<bool> {
        let holder = self.names.get_mut(key)?;
        let at = holder.tenures.iter().position(|held| Arc::ptr_eq(held, tenure))?;
        holder.tenures.remove(at);
        let gone = holder.tenures.is_empty();
        if gone {
            self.names.remove(key);
        }
        Some(gone)
    }

    /// Holds `name` for `tenure`, as the shared backend granted it: with
    /// its person's other connections here if it is a token holder's
    /// (`sub`), else in place of whoever held it here (a returning
    /// session's old connection, retired).
    fn hold(&mut self, name: &str, tenure: &Arc<Tenure>, sub: Option<Arc<str>>) {
        let tenures = vec![tenure.clone()];
        match self.names.entry(name_key(name)) {
            Entry::Occupied(mut held) if sub.is_some() && held.get().sub == sub => {
                held.get_mut().tenures.push(tenure.clone());
            }
            Entry::Occupied(mut held) => {
                held.get().retire();
                held.insert(Holder { name: name.to_owned(), tenures, sub });
            }
            Entry::Vacant(free) => {
                free.insert(Holder { name: name.to_owned(), tenures, sub });
            }
        }
    }

    /// Every connection of this node holding the name of `key` in the
    /// room: a token holder's all (say, to close them all), or a plain
    /// name's one; none if nobody here holds it.
    fn tenures_of(&self, key: &str) -> Vec<Arc<Tenure>> {
        self.names.get(key).map_or_else(Vec::new, |holder| holder.tenures.clone())
    }
}

/// A message in a room's history.
#[derive(Debug)]
struct Kept {
    seq: u64,
    /// When it was said, for `--keep-for`.
    ts: crate::protocol::Timestamp,
    /// When it was kept ([`Budget::stamp`]).
    stamp: u64,
    frames: Encoded,
}

impl RoomState {
    /// The last number handed out, or that may have been.
    fn last(&self) -> u64 {
        self.seq.max(self.floor)
    }

    /// A room as the store had it: its history (the last messages within
    /// the hub's count and byte bounds, and what the budget has free)
    /// charged to the hub's budget.
    fn loaded(loaded: Loaded, hub: &Hub) -> Self {
        let mut state = RoomState {
            epoch: loaded.epoch,
            seq: loaded.seq,
            floor: loaded.floor,
            reserved: loaded.ceiling.get(),
            ceiling: Some(loaded.ceiling),
            ..RoomState::default()
        };
        let room = &loaded.room;
        for Stored { seq, from, text, ts } in loaded.history.into_iter().rev() {
            let event = Event::Message {
                room: room.as_str().into(),
                seq,
                from: from.into(),
                text: text.into(),
                ts,
            };
            let frames = Encoded::all(&event);
            let bytes = frames.bytes();
            if state.history.len() >= hub.history
                || state.history_bytes + bytes > hub.history_bytes
                || !hub.budget.try_charge(bytes)
            {
                break;
            }
            state.history_bytes += bytes;
            state.history.push_front(Kept { seq, ts, stamp: hub.budget.stamp(), frames });
        }
        state
    }

    /// Forgets the oldest message of the history; says whether there was one.
    fn forget_oldest(&mut self, budget: &Budget) -> bool {
        let Some(kept) = self.history.pop_front() else { return false };
        let bytes = kept.frames.bytes();
        self.history_bytes -= bytes;
        budget.release(bytes);
        true
    }
}

/// Sessions a room remembers after they leave, so that one coming back
/// (its connection reset) learns which of its requests were carried out.
pub const DEPARTED_SESSIONS: usize = 64;

/// Who holds a name in a room: a plain or guest name's one connection, or
/// a token holder (a person) with every connection it has in the room on
/// this node.
#[derive(Debug)]
struct Holder {
    /// The name as its holder wrote it.
    name: String,
    /// Its connections' [`Member::tenure`]s, oldest first, never empty: the
    /// entry goes with the last one. More than one only for a token holder,
    /// bounded by `--max-connections` (and `--max-connections-per-ip` for
    /// each of its addresses).
    tenures: Vec<Arc<Tenure>>,
    /// A token holder's `sub`: the only one whose connections may join it.
    sub: Option<Arc<str>>,
}

impl Holder {
    /// A plain or guest name's holder: one connection.
    fn one(name: String, tenure: Arc<Tenure>) -> Self {
        Self { name, tenures: vec![tenure], sub: None }
    }

    /// Whether `presented` is the session secret of this plain name's
    /// holder (a token holder's connections are each its own).
    fn owned_by(&self, presented: Option<&str>) -> bool {
        self.sub.is_none()
            // A connection a moderator removed gives its name back to nobody.
            && presented.is_some_and(|p| {
                self.tenures.iter().any(|t| t.session.proven_by(p) && !t.is_removed())
            })
    }

    /// Retires every connection holding it: their name is someone else's now.
    fn retire(&self) {
        for tenure in &self.tenures {
            tenure.retire();
        }
    }
}

/// What a connection shares with the name it holds: its session secret,
/// the wake-up of its writer (which also retires it), and how far its
/// requests got, for its session's next connection. One allocation per
/// connection, and no future of its own in the connection's task.
#[derive(Debug)]
pub struct Tenure {
    session: Secret,
    /// Wakes the connection's writer: something is queued for it, or it
    /// was retired.
    wake: Notify,
    retired: AtomicBool,
    /// The id of the last message request carried out.
    last_id: Mutex<Option<Box<str>>>,
    /// Who bans and mutes recorded against this connection apply to:
    /// `sub:SUB` for a token holder, else `ip:ADDRESS` (see [`subject`]).
    subject: Box<str>,
    /// Set when a moderator kicked or banned it: what its close frame says.
    removed: Mutex<Option<Box<str>>>,
    /// Muted until this time (Unix ms); 0: not muted, `u64::MAX`: until lifted.
    muted_until: AtomicU64,
}

impl Tenure {
    fn new(subject: &str) -> Self {
        Self {
            session: Secret::new(),
            wake: Notify::new(),
            retired: AtomicBool::new(false),
            last_id: Mutex::new(None),
            subject: subject.into(),
            removed: Mutex::new(None),
            muted_until: AtomicU64::new(0),
        }
    }

    /// Whether a moderator removed it (kicked or banned).
    fn is_removed(&self) -> bool {
        lock(&self.removed).is_some()
    }

    /// Why a moderator removed it (kicked or banned), once it was.
    pub fn removed(&self) -> Option<Box<str>> {
        lock(&self.removed).clone()
    }

    /// Closes the connection for a moderator, saying `why`.
    fn remove(&self, why: &str) {
        *lock(&self.removed) = Some(why.into());
        self.retire();
    }

    /// The writer's wake-up.
    pub fn wake(&self) -> &Notify {
        &self.wake
    }

    /// Whether the same session joined again from a new connection, which
    /// now holds the name: this connection must close.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Notes that the message request `id` was carried out.
    pub fn done(&self, id: &str) {
        *lock(&self.last_id) = Some(id.into());
    }

    fn last_id(&self) -> Option<Box<str>> {
        lock(&self.last_id).clone()
    }
}

impl Wake for Tenure {
    fn wake(&self) {
        self.wake.notify_one();
    }
}

/// A session secret: 128 random bits from the operating system, shown in hex.
#[derive(Clone, Copy)]
struct Secret([u8; 16]);

impl Secret {
    fn new() -> Self {
        let mut bytes = [0u8; 16];
        // Without the OS's randomness no secret can be made safely; it is
        // there on every platform tokio runs on.
        getrandom::fill(&mut bytes).expect("the operating system's random source");
        Self(bytes)
    }

    fn hex(self) -> String {
        crate::util::hex(&self.0)
    }

    /// Whether `presented` is this secret in hex, compared in constant time.
    fn proven_by(self, presented: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(presented.as_bytes().ct_eq(self.hex().as_bytes()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never in a log.
        f.write_str("Secret(..)")
    }
}

/// What [`Hub::join`] gives a new client.
#[derive(Debug)]
pub struct Joined {
    /// Membership; drop it to leave.
    pub member: Member,
    /// The room's frames, starting with this client's own join notice.
    pub rx: Receiver<Broadcast, Tenure>,
    /// Frames for this client only, to send before anything else.
    pub notices: Vec<Frame>,
    /// Messages up to this seq are in `notices` already: skip them in `rx`.
    pub skip_through: u64,
}

/// What a client's frame must be followed by before its next one is read:
/// its echo, so that a client closing right after a message still gets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Nothing from the room.
    None,
    /// The room's frame at this position.
    Pos(u64),
    /// The message with this seq, once it comes back from Redis.
    Seq(u64),
}

/// A client's place in a room.
#[derive(Debug)]
pub struct Member {
    hub: Arc<Hub>,
    room: Arc<Room>,
    name: String,
    protocol: Protocol,
    /// Whether `name` is held (by the backend, when shared).
    registered: bool,
    /// Shared with the name it holds.
    tenure: Arc<Tenure>,
    /// Who it is: a token holder's name is its token's.
    who: Who,
}

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// A shared backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Another token holder (another `sub`) holds a name that looks like
    /// this one's: it came in between the check before the upgrade and the
    /// join, or (with a shared backend) holds it on another node.
    #[error("{name:?} looks like the name of someone else in the room")]
    NameHeld {
        /// The token's name.
        name: String,
    },
}

/// A name as shown (a guest's with its mark), and its [`name_key`].
type ShownName = (String, String);

/// The name a join asks for, unchecked, with its check: the name shown and
/// its key. A token holder's name is its token's (`?name=` is ignored); a
/// guest's is marked once it is found valid.
fn requested_name<'a>(
    who: &'a Who,
    requested: Option<&'a str>,
) -> Option<(&'a str, Result<ShownName, NameError>)> {
    let requested = match who {
        Who::User(identity) => Some(identity.name.as_str()),
        Who::Anyone => requested,
        // A guest asking for its name with the mark gets it once.
        Who::Guest => requested.map(|name| name.strip_prefix(GUEST_MARK).unwrap_or(name)),
    };
    requested.map(|name| {
        let checked = validate_name(name).map(|()| {
            let shown = shown_as(who, name).into_owned();
            let key = name_key(&shown);
            (shown, key)
        });
        (name, checked)
    })
}

/// Holds `name` (of `key`, free) for a plain or guest name's connection;
/// returns the name.
fn plain(state: &mut RoomState, name: String, key: String, tenure: &Arc<Tenure>) -> String {
    state.names.insert(key, Holder::one(name.clone(), tenure.clone()));
    name
}

/// A name as `who` is shown under it: a guest's with [`GUEST_MARK`] before it.
fn shown_as<'a>(who: &Who, name: &'a str) -> Cow<'a, str> {
    if *who == Who::Guest { Cow::Owned(format!("{GUEST_MARK}{name}")) } else { Cow::Borrowed(name) }
}

impl Hub {
    /// A hub with `config`'s bounds, counting what its rooms hold in
    /// `budget`, sharing what nodes share through `backend`.
    pub fn new(config: &ServerConfig, budget: Arc<Budget>, backend: Backend) -> Arc<Self> {
        Arc::new(Self {
            rooms: Mutex::default(),
            max_lag: config.max_lag,
            max_lag_bytes: config.max_lag_bytes,
            history: config.history,
            history_bytes: config.history_bytes,
            keep_for: config.keep_for,
            budget,
            reclaiming: Mutex::new(()),
            moderations: AtomicU64::new(0),
            recent_kicks: Mutex::default(),
            loading: tokio::sync::Mutex::new(()),
            presence_limit: config.presence_limit,
            limits: config.wire_limits(),
            backend,
        })
    }

    /// Frees memory for all rooms until the budget holds at most 3/4 of
    /// `--max-memory` (an eighth below what rooms may hold): the oldest
    /// history of any room goes first, then the oldest frames clients have
    /// not taken (they are told what they missed).
    /// Runs with no room locked; one caller at a time, others go on.
    fn reclaim(&self) {
        let Ok(_one_at_a_time) = self.reclaiming.try_lock() else { return };
        let target = self.budget.rooms_limit() - self.budget.limit() / CONNECTION_SHARE;
        if self.budget.used() <= target {
            return;
        }
        let rooms = self.rooms();
        let oldest_kept = |room: &Room| lock(&room.state).history.front().map(|kept| kept.stamp);
        let mut oldest: BinaryHeap<_> = (rooms.iter().enumerate())
            .filter_map(|(at, room)| Some(Reverse((oldest_kept(room)?, at))))
            .collect();
        while self.budget.used() > target
            && let Some(Reverse((_, at))) = oldest.pop()
        {
            let mut state = lock(&rooms[at].state);
            state.forget_oldest(&self.budget);
            if let Some(kept) = state.history.front() {
                oldest.push(Reverse((kept.stamp, at)));
            }
        }
        let mut oldest: BinaryHeap<_> = (rooms.iter().enumerate())
            .filter_map(|(at, room)| Some(Reverse((room.ring.oldest()?, at))))
            .collect();
        while self.budget.used() > target
            && let Some(Reverse((_, at))) = oldest.pop()
        {
            let ring = &rooms[at].ring;
            ring.drop_oldest();
            if let Some(stamp) = ring.oldest() {
                oldest.push(Reverse((stamp, at)));
            }
        }
    }

    /// Announces, in each room too large for individual notices, how many
    /// joined and left since the last call. The server calls it periodically,
    /// so a crowd of N joining costs N summaries' worth of frames per period
    /// rather than N² notices. (A shared backend counts and announces.)
    pub fn summarize(&self) {
        if self.backend.is_shared() {
            return;
        }
        for room in self.rooms() {
            let mut state = lock(&room.state);
            let online = state.names.len();
            if let Some(summary) = state.presence.summary(&room.name, online) {
                room.broadcast(&mut state, &summary);
            }
        }
    }

    /// Number of rooms with at least one client.
    pub fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }

    fn rooms(&self) -> Vec<Arc<Room>> {
        lock(&self.rooms).values().cloned().collect()
    }

    /// Puts a client in the room it asks for, under the name it asks for if
    /// that is valid and free, else under `fallback` (its address) with an
    /// error notice saying why. Its first frames replay the room's history,
    /// or only what it missed when it resumes.
    ///
    /// A token holder's name is its token's (`?name=` is ignored); a
    /// guest's gets [`GUEST_MARK`] before it, fallback names included.
    ///
    /// Fails with a shared backend that cannot be reached, or when another
    /// token holder holds a look-alike of a token holder's name.
    pub async fn join(
        self: &Arc<Self>,
        request: &ChatRequest,
        fallback: &str,
        subject: &str,
    ) -> Result<Joined, JoinError> {
        let fallback = &*shown_as(&request.who, fallback);
        let from = (fallback, subject);
        match self.backend.mode() {
            // Boxed: the store's answer stays out of every connection's future.
            Mode::Alone => Box::pin(self.join_alone(request, from)).await,
            // Boxed: the backend's state stays out of every connection's future.
            Mode::Shared => Ok(Box::pin(self.join_shared(request, from)).await?),
            Mode::Degraded => Err(BackendError::Down.into()),
        }
    }

    /// Whether another `sub` than `identity`'s holds a look-alike of its
    /// name in `room` on this node: checked before the upgrade, to answer
    /// 409 (the join checks again).
    pub fn name_held_by_other(&self, room: &str, identity: &Identity) -> bool {
        let key = name_key(&identity.name);
        let Some(room) = lock(&self.rooms).get(room).cloned() else { return false };
        let state = lock(&room.state);
        state.names.get(&key).is_some_and(|holder| holder.sub.as_deref() != Some(&*identity.sub))
    }

    /// Joins in-process: a room not in memory is read back from the store
    /// first (outside any lock), unless someone else brought it back
    /// meanwhile. A store that fails gives a room of its own, not kept.
    async fn join_alone(
        self: &Arc<Self>,
        request: &ChatRequest,
        from: (&str, &str),
    ) -> Result<Joined, JoinError> {
        let Some(store) = self.backend.store() else {
            return self.join_here(request, from, None);
        };
        loop {
            if lock(&self.rooms).contains_key(&request.room) {
                let mut loaded = None;
                if let Some(joined) = self.try_join_here(request, from, &mut loaded) {
                    return joined;
                }
            }
            // Not in memory: read back by one join while the others wait,
            // and find it there.
            let _loading = self.loading.lock().await;
            let mut loaded = None;
            if !lock(&self.rooms).contains_key(&request.room) {
                let read = store.load(&request.room, self.history, self.history_bytes).await;
                loaded = Some(read.map_err(|error| {
                    warn!(%error, room = request.room, "cannot read the room back: not keeping it");
                    error
                }));
            }
            // Another client's last leave may forget the room before it is
            // entered: then it is read back again.
            if let Some(joined) = self.try_join_here(request, from, &mut loaded) {
                return joined;
            }
        }
    }

    /// Finds or creates the room and counts the client in it, then runs `f`
    /// under the room's lock. Creating one needs what the store said of it
    /// (`loaded`, taken), if there is a store: without it, `None`.
    fn enter<T>(
        &self,
        room: &str,
        protocol: Protocol,
        loaded: &mut Option<Result<Loaded, StoreError>>,
        f: impl FnOnce(&Arc<Room>, &mut RoomState) -> T,
    ) -> Option<(Arc<Room>, T)> {
        // Holding the hub lock while counting the client in keeps a concurrent
        // last leave from forgetting the room between lookup and insertion.
        let mut rooms = lock(&self.rooms);
        let room = if let Some(room) = rooms.get(room) {
            room.clone()
        } else {
            {
                let state = match loaded.take() {
                    Some(Ok(loaded)) => RoomState::loaded(loaded, self),
                    None if self.backend.store().is_some() => return None,
                    // A shared backend's, or one the store could not read.
                    Some(Err(_)) | None => RoomState { epoch: new_epoch(), ..RoomState::default() },
                };
                let created = Arc::new(Room {
                    name: room.to_owned(),
                    ring: Arc::new(Ring::new(
                        self.max_lag,
                        self.max_lag_bytes,
                        self.budget.clone(),
                    )),
                    state: Mutex::new(state),
                    subscribed: tokio::sync::OnceCell::new(),
                });
                rooms.insert(room.to_owned(), created.clone());
                created
            }
        };
        let mut state = lock(&room.state);
        drop(rooms);
        state.members += 1;
        // Counted before subscribing, so every frame sent from now on
        // carries this client's protocol.
        *state.speakers.count(protocol) += 1;
        let result = f(&room, &mut state);
        drop(state);
        Some((room, result))
    }

    /// Joins in-process, with what the store said of the room if it was
    /// read (or `None`: no store, or the room is in memory).
    fn join_here(
        self: &Arc<Self>,
        request: &ChatRequest,
        from: (&str, &str),
        loaded: Option<Result<Loaded, StoreError>>,
    ) -> Result<Joined, JoinError> {
        let mut loaded = loaded;
        loop {
            if let Some(joined) = self.try_join_here(request, from, &mut loaded) {
                return joined;
            }
            // Only with a store, which join_alone asks: a room the store has
            // not read is created unkept rather than waited for here.
            loaded = Some(Err(StoreError::Failed("not read".into())));
        }
    }

    fn try_join_here(
        self: &Arc<Self>,
        request: &ChatRequest,
        from: (&str, &str),
        loaded: &mut Option<Result<Loaded, StoreError>>,
    ) -> Option<Result<Joined, JoinError>> {
        let ChatRequest { room, name: requested, resume, protocol, session, who } = request;
        let protocol = *protocol;
        let (fallback, subject) = from;
        let tenure = Arc::new(Tenure::new(subject));
        let secret = tenure.session.hex();
        // Keys are computed before the room's lock is taken.
        let requested = requested_name(who, requested.as_deref());
        // The first fallback name's key too; the others are rarely needed.
        let mut fallbacks = local::fallback_names(fallback).peekable();
        fallbacks.peek();
        let keep_for = self.keep_for;
        let (room, joined) = self.enter(room, protocol, loaded, |room, state| {
            let mut notices = Vec::new();
            let mut last_id = None;
            // A client coming back with its session takes its name back from
            // its own dead connection, which is retired without a word; this
            // is how that connection spelled it.
            let mut was = None;
            // A token holder's connection joining its others here: the room
            // knows the person already.
            let mut further = false;
            let granted = match (requested, who.identity()) {
                (None, _) => None,
                (Some((name, Err(reason))), _) => {
                    notices.push(error_frame(ClientError::InvalidName { name, reason }, protocol));
                    None
                }
                // One person, however many connections: one entry in `names`.
                (Some((_, Ok((name, key)))), Some(id)) => {
                    further = !state.seat(id, &name, key, &tenure)?;
                    Some(name)
                }
                (Some((name, Ok((shown, key)))), None) => match state.names.get(&key) {
                    None => Some(plain(state, shown, key, &tenure)),
                    Some(holder) if holder.owned_by(session.as_deref()) => {
                        holder.retire();
                        last_id = holder.tenures.iter().find_map(|t| t.last_id());
                        was = state.names.remove(&key).map(|holder| holder.name);
                        Some(plain(state, shown, key, &tenure))
                    }
                    Some(_) => {
                        notices.push(error_frame(ClientError::NameTaken { name }, protocol));
                        None
                    }
                },
            };
            let name = granted.unwrap_or_else(|| {
                let mut free = fallbacks.filter(|(_, key)| !state.names.contains_key(key));
                let (name, key) = free.next().unwrap_or_default();
                plain(state, name, key, &tenure)
            });
            if last_id.is_none()
                && let Some(presented) = session.as_deref()
            {
                last_id = take_departed(&mut state.departed, presented);
            }
            notices.push(self.welcome(
                room,
                (&name, who),
                state.names.len(),
                (&state.epoch, state.last()),
                (&secret, last_id.as_deref()),
                protocol,
            ));
            // Nothing older than --keep-for is replayed.
            let cutoff =
                now() - chrono::Duration::from_std(keep_for).unwrap_or(chrono::Duration::MAX);
            while state.history.front().is_some_and(|kept| kept.ts < cutoff) {
                state.forget_oldest(&self.budget);
            }
            // What was said before, then live frames: both under the room's lock,
            // so nothing falls between them and nothing comes twice.
            let first_held = state.history.front().map_or(state.seq + 1, |kept| kept.seq);
            let held = state.history.len();
            let (mut skip, missed) =
                local::replay_skip(first_held, held, state.last(), &state.epoch, resume.as_ref());
            // After a crash numbering jumps: the history may have a gap,
            // so what the client has is found by number.
            if let Some(Resume { since, epoch }) = resume.as_ref()
                && *epoch == state.epoch
                && *since <= state.last()
            {
                skip = state.history.partition_point(|kept| kept.seq <= *since);
            }
            let replay =
                state.history.iter().skip(skip).filter_map(|kept| kept.frames.get(protocol));
            replay_into(&mut notices, missed, replay, &self.budget, protocol);

            // Subscribe before announcing, so the joiner sees its own join notice.
            let rx = room.ring.subscribe(tenure.clone());
            if let Some(was) = was {
                // The room saw this name all along: nothing to announce,
                // unless it comes back spelled otherwise (`Alice` for `alice`).
                if was != name {
                    let event = Event::Nick {
                        room: room.name.as_str().into(),
                        old: was.into(),
                        new: name.as_str().into(),
                    };
                    room.broadcast(state, &event);
                }
            } else if !further {
                // (A person's further connection: its first was announced.)
                room.arrived(state, &name, self.presence_limit);
            }
            Ok((name, notices, rx))
        })?;
        let (who, registered, name) = (who.clone(), joined.is_ok(), String::new());
        let mut member =
            Member { hub: self.clone(), room, name, protocol, registered, tenure, who };
        // When refused, the member was counted in, and is out again as it drops.
        Some(joined.map(|(name, notices, rx)| {
            member.name = name;
            Joined { member, rx, notices, skip_through: 0 }
        }))
    }

    /// The welcome of a client of `protocol`: JSON clients also learn their
    /// limits and their session secret.
    fn welcome(
        &self,
        room: &Room,
        (name, who): (&str, &Who),
        online: usize,
        (epoch, seq): (&str, u64),
        (session, last_id): (&str, Option<&str>),
        protocol: Protocol,
    ) -> Frame {
        let json = protocol == Protocol::Json;
        Event::Welcome {
            room: room.name.as_str().into(),
            name: name.into(),
            online,
            epoch: epoch.into(),
            seq,
            limits: json.then_some(self.limits),
            session: json.then(|| session.into()),
            last_id: last_id.filter(|_| json).map(Into::into),
            signed_in: who.identity().is_some(),
            moderator: who.moderates(&room.name),
        }
        .encode(protocol)
    }

    async fn join_shared(
        self: &Arc<Self>,
        request: &ChatRequest,
        from: (&str, &str),
    ) -> Result<Joined, JoinError> {
        let ChatRequest { room, name: requested, resume, protocol, session, who } = request;
        let protocol = *protocol;
        let (fallback, subject) = from;
        // In the room (and subscribed to its events) before the backend announces
        // the join, so the joiner sees its own notice and all that follows.
        let tenure = Arc::new(Tenure::new(subject));
        let entered = self.enter(room, protocol, &mut None, |room, state| {
            if state.members == 1 {
                // Nobody here knew the room: its epoch is the backend's, learnt
                // below, and a reset published meanwhile is nothing to tell.
                state.epoch.clear();
            }
            (room.ring.subscribe(tenure.clone()), state.seq)
        });
        // A shared backend has no store: the room is always created.
        let (room, (rx, floor)) = entered.ok_or(BackendError::Down)?;
        let mut member = Member {
            hub: self.clone(),
            room,
            name: String::new(),
            protocol,
            registered: false,
            tenure,
            who: who.clone(),
        };
        let room = &member.room;
        room.subscribed.get_or_try_init(|| self.backend.subscribe(&room.name)).await?;

        let mut notices = Vec::new();
        let requested = match requested_name(who, requested.as_deref()) {
            None => None,
            Some((_, Ok(shown))) => Some(shown),
            Some((name, Err(reason))) => {
                notices.push(error_frame(ClientError::InvalidName { name, reason }, protocol));
                None
            }
        };
        let sub = who.identity().map(|identity| &*identity.sub);
        // Another person here holds a look-alike: no need to ask.
        if let (Some(sub), Some((name, key))) = (sub, &requested)
            && lock(&room.state).names.get(key).is_some_and(|h| h.sub.as_deref() != Some(sub))
        {
            return Err(JoinError::NameHeld { name: name.clone() });
        }
        // Lua has no Unicode tables: the keys are computed here, and the
        // script claims the first free candidate.
        let candidates: Vec<_> =
            local::fallback_names(fallback).take(FALLBACK_CANDIDATES).collect();
        let join = Join {
            requested: requested.as_ref().map(|(name, key)| (name.as_str(), key.clone())),
            sub,
            presented: session.as_deref(),
            session: &member.tenure.session.hex(),
            candidates: &candidates,
            resume: resume.as_ref().map(|resume| (resume.epoch.as_str(), resume.since)),
            floor,
        };
        let reply = self.backend.join(&room.name, &join).await?;
        match reply.outcome {
            Claim::Granted => {}
            Claim::Taken => {
                let name = requested.as_ref().map_or("", |(name, _)| name.as_str());
                notices.push(error_frame(ClientError::NameTaken { name }, protocol));
            }
            Claim::Held => {
                let name = requested.map(|(name, _)| name).unwrap_or_default();
                return Err(JoinError::NameHeld { name });
            }
        }
        let state = reply.room;
        let reset = {
            let mut local = lock(&room.state);
            let reset = room.adopt_epoch(&mut local, &state.epoch);
            let sub = who.identity().map(|identity| identity.sub.clone());
            local.hold(&reply.name, &member.tenure, sub);
            reset
        };
        // The backend lost the room, and this join learnt it before the
        // reset came: this node's other clients are put back in it.
        if reset && let Err(error) = self.backend.reclaim(&room.name, &**self).await {
            warn!(%error, room = room.name, "cannot claim the names again after a reset");
        }
        notices.push(self.welcome(
            room,
            (&reply.name, who),
            reply.online,
            (&state.epoch, state.seq),
            (&member.tenure.session.hex(), None),
            protocol,
        ));
        let held = state.history.len();
        let (skip, missed) =
            local::replay_skip(state.first, held, state.seq, &state.epoch, resume.as_ref());
        let frames = state.history.iter().skip(skip).filter_map(|payload| {
            Some(serde_json::from_str::<Event<'_>>(payload).ok()?.encode(protocol))
        });
        replay_into(&mut notices, missed, frames, &self.budget, protocol);

        member.name = reply.name;
        member.registered = true;
        Ok(Joined { member, rx, notices, skip_through: state.seq })
    }
}

impl Events for Hub {
    fn deliver(&self, room: &str, event: &Event<'_>, bytes: usize) {
        let Some(room) = lock(&self.rooms).get(room).cloned() else { return };
        // Delivered whatever the budget says (the message is the backend's
        // already), after the oldest of what rooms hold makes room for it.
        if self.budget.used() + 3 * bytes + 2 * KEPT_OVERHEAD > self.budget.rooms_limit() {
            self.reclaim();
        }
        room.relay(&mut lock(&room.state), event);
        // Acts on a moderation (nothing, for any other event).
        self.enforce(&room.name, event);
    }

    fn retire(&self, room: &str, key: &str) {
        let Some(room) = lock(&self.rooms).get(room).cloned() else { return };
        let mut state = lock(&room.state);
        // Only a plain name's session returns: a person's connections are each its own.
        if state.names.get(key).is_some_and(|holder| holder.sub.is_none())
            && let Some(old) = state.names.remove(key)
        {
            old.retire();
        }
    }

    fn reset(&self, room: &str, epoch: &str) -> bool {
        let Some(room) = lock(&self.rooms).get(room).cloned() else { return false };
        room.adopt_epoch(&mut lock(&room.state), epoch)
    }

    fn link_down(&self) {
        let notice = Event::Notice { text: LINK_DOWN.into() };
        for room in self.rooms() {
            room.broadcast(&mut lock(&room.state), &notice);
        }
    }

    fn link_up(&self) {
        let notice = Event::Notice { text: LINK_UP.into() };
        for room in self.rooms() {
            room.broadcast(&mut lock(&room.state), &notice);
        }
    }

    fn recover(&self, room: &str, snapshot: &Snapshot) {
        let Some(room) = lock(&self.rooms).get(room).cloned() else { return };
        let mut state = lock(&room.state);
        // Numbering went on from this node's seq if the epoch is new, so
        // what was delivered stays delivered.
        let reset = room.adopt_epoch(&mut state, &snapshot.epoch);
        let missed = snapshot.first.saturating_sub(state.seq + 1);
        if missed > 0 && !reset {
            room.broadcast(&mut state, &Event::Missed { count: Some(missed), epoch: None });
        }
        for payload in &snapshot.history {
            if let Ok(event) = serde_json::from_str::<Event<'_>>(payload) {
                room.relay(&mut state, &event);
            }
        }
        state.seq = state.seq.max(snapshot.seq);
    }

    fn local_rooms(&self) -> Vec<String> {
        lock(&self.rooms).keys().cloned().collect()
    }

    fn local_room(&self, room: &str) -> Option<LocalRoom> {
        let room = lock(&self.rooms).get(room).cloned()?;
        let state = lock(&room.state);
        let holders = state.names.iter().map(|(key, holder)| Holding {
            key: key.clone(),
            name: holder.name.clone(),
            held: match &holder.sub {
                Some(sub) => {
                    Held::Person { sub: sub.to_string(), connections: holder.tenures.len() }
                }
                None => Held::Session(holder.tenures[0].session.hex()),
            },
        });
        Some(LocalRoom { epoch: state.epoch.clone(), seq: state.seq, holders: holders.collect() })
    }
}

/// The last id of the departed session `presented`, forgotten once told.
fn take_departed(departed: &mut VecDeque<(Secret, Box<str>)>, presented: &str) -> Option<Box<str>> {
    let at = departed.iter().position(|(session, _)| session.proven_by(presented))?;
    departed.remove(at).map(|(_, last_id)| last_id)
}

fn error_frame(error: ClientError<'_>, protocol: Protocol) -> Frame {
    Event::from(error).encode(protocol)
}

/// Appends the replay of held messages, after what was missed. Each
/// message replayed is charged to `budget` until the client is sent it,
/// newest first: the oldest that do not fit are left out and counted as
/// missed, told first.
fn replay_into(
    notices: &mut Vec<Frame>,
    missed: Option<Event<'static>>,
    replay: impl Iterator<Item = Frame>,
    budget: &Arc<Budget>,
    protocol: Protocol,
) {
    let mut replay: Vec<Frame> = replay.collect();
    let mut charges: Vec<_> =
        replay.iter().rev().map_while(|frame| budget.try_hold(kept_cost(frame))).collect();
    let left_out = replay.len() - charges.len();
    let missed = match missed {
        _ if left_out == 0 => missed,
        Some(Event::Missed { count: Some(count), epoch }) => {
            Some(Event::Missed { count: Some(count + left_out as u64), epoch })
        }
        None => Some(Event::Missed { count: Some(left_out as u64), epoch: None }),
        // Already told that an unknown number went.
        unknown => unknown,
    };
    if let Some(missed) = missed {
        notices.push(missed.encode(protocol));
    }
    replay.drain(..left_out);
    let count = replay.len();
    if count > 0 {
        notices.reserve(count + 2);
        notices.push(Event::History { phase: Phase::Start, count }.encode(protocol));
        charges.reverse();
        notices
            .extend(replay.into_iter().zip(charges).map(|(frame, charge)| frame.tied_to(charge)));
        notices.push(Event::History { phase: Phase::End, count }.encode(protocol));
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        // A room is forgotten once empty: its history's bytes are free.
        let state = self.state.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.ring.budget().release(state.history_bytes);
    }
}

impl Room {
    /// Before numbering `seq` in a kept room: past the ceiling the store
    /// has on disk (it fell behind, or failed), the room takes a new epoch,
    /// so that no number can mean two messages after a crash; near it,
    /// asks the store to reserve more.
    fn reserve(&self, hub: &Hub, state: &mut RoomState, seq: u64) {
        let (Some(ceiling), Some(store)) = (&state.ceiling, hub.backend.store()) else { return };
        if seq > ceiling.get() {
            warn!(room = self.name, "the store is behind: the room's numbering takes a new epoch");
            state.epoch = new_epoch();
            let event = Event::Missed { count: None, epoch: Some(state.epoch.clone().into()) };
            self.broadcast(state, &event);
            state.reserved = seq + RESERVE_AHEAD;
            let ceiling = Ceiling::new(state.reserved);
            store.reserve(&self.name, &state.epoch, state.reserved, ceiling.clone());
            state.ceiling = Some(ceiling);
        } else if seq + RESERVE_MARGIN > state.reserved {
            state.reserved = seq + RESERVE_AHEAD;
            store.reserve(&self.name, &state.epoch, state.reserved, ceiling.clone());
        }
    }

    /// Announces that `name` joined, or counts it for the next summary in
    /// a room larger than `presence_limit`.
    fn arrived(&self, state: &mut RoomState, name: &str, presence_limit: usize) {
        if local::announces_each(state.names.len(), presence_limit) {
            let event =
                Event::Join { room: self.name.as_str().into(), name: name.into(), ts: now() };
            self.broadcast(state, &event);
        } else {
            state.presence.joined();
        }
    }

    /// Sends an event to every member, the sender included; returns its
    /// position. Called with the state locked so positions follow the
    /// ring's order.
    fn broadcast(&self, state: &mut RoomState, event: &Event<'_>) -> u64 {
        self.send(Encoded::only(event, state.speakers), 0)
    }

    /// Takes `epoch` as the room's, from the shared backend. Its clients are told the
    /// history was reset, with the new epoch to resume in, if they knew
    /// another one; returns whether they were.
    fn adopt_epoch(&self, state: &mut RoomState, epoch: &str) -> bool {
        if state.epoch == epoch {
            return false;
        }
        let known = !state.epoch.is_empty();
        epoch.clone_into(&mut state.epoch);
        if known {
            let event = Event::Missed { count: None, epoch: Some(epoch.into()) };
            self.broadcast(state, &event);
        }
        known
    }

    /// Sends an event the backend published; a message this node has delivered
    /// already (seen again after a catch-up) is dropped.
    fn relay(&self, state: &mut RoomState, event: &Event<'_>) {
        let seq = match *event {
            Event::Message { seq, .. } if seq <= state.seq => return,
            Event::Message { seq, .. } => seq,
            _ => 0,
        };
        state.seq = state.seq.max(seq);
        self.send(Encoded::only(event, state.speakers), seq);
    }

    /// Sends frames whatever the budget says: events other than this
    /// node's clients' messages (joins, leaves, notices, what other nodes
    /// publish), which members must not miss.
    fn send(&self, frames: Encoded, seq: u64) -> u64 {
        let (bytes, budget) = (frames.bytes(), self.ring.budget());
        budget.charge(bytes);
        let frames = frames.charged(budget);
        self.ring.send(bytes, |pos| Broadcast { pos, seq, frames })
    }

    /// Sends a client's message numbered `seq` (0 when not numbered) and
    /// keeps `kept` in the history, if the budget has room for them once
    /// this room's oldest history and then the frames its clients have not
    /// taken are dropped; returns its position.
    fn send_message(
        &self,
        hub: &Hub,
        state: &mut RoomState,
        live: Encoded,
        seq: u64,
        kept: Option<(Encoded, crate::protocol::Timestamp)>,
    ) -> Result<u64, ClientError<'static>> {
        let budget = &*hub.budget;
        let kept_bytes = kept.as_ref().map_or(0, |(frames, _)| frames.bytes());
        // A message larger than the whole history is relayed, not kept.
        let kept = kept.filter(|_| kept_bytes <= hub.history_bytes);
        if kept.is_some() {
            while state.history.len() >= hub.history
                || state.history_bytes + kept_bytes > hub.history_bytes
            {
                state.forget_oldest(budget);
            }
        }
        let live_bytes = live.bytes();
        let cost = live_bytes + kept.as_ref().map_or(0, |_| kept_bytes);
        while !budget.try_charge(cost) {
            if !state.forget_oldest(budget) {
                if self.ring.make_room(cost) {
                    break;
                }
                return Err(ClientError::ServerFull);
            }
        }
        if let Some((frames, ts)) = kept {
            state.history_bytes += kept_bytes;
            state.history.push_back(Kept { seq, ts, stamp: budget.stamp(), frames });
        }
        let live = live.charged(&hub.budget);
        Ok(self.ring.send(live_bytes, |pos| Broadcast { pos, seq, frames: live }))
    }
}

impl Member {
    /// This client's current name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What this connection shares with its name: its writer's wake-up, and
    /// whether it was retired.
    pub fn tenure(&self) -> Arc<Tenure> {
        self.tenure.clone()
    }

    /// Notes that this client's message request `id` was carried out.
    pub fn done(&self, id: &str) {
        self.tenure.done(id);
    }

    /// `answer` for this client alone, counted against `--max-memory` until
    /// it is written; `None` when the budget has no room for it.
    pub fn charged(&self, answer: Frame) -> Option<Frame> {
        let charge = self.hub.budget.try_hold(kept_cost(&answer))?;
        Some(answer.tied_to(charge))
    }

    /// Whether `holder` is this client (or this client's person).
    fn holds(&self, holder: &Holder) -> bool {
        holder.tenures.iter().any(|tenure| Arc::ptr_eq(tenure, &self.tenure))
    }

    /// Relays `message` to the room; returns what its echo is, and its seq
    /// (none in degraded mode: such messages are not numbered).
    pub async fn say(&self, message: &str) -> Result<(Ack, Option<u64>), ClientError<'static>> {
        if message.is_empty() {
            return Err(ClientError::EmptyMessage);
        }
        self.tenure.check_muted()?;
        let ts = now();
        let room = self.room.name.as_str();
        let mode = self.hub.backend.mode();
        if mode == Mode::Shared {
            // Boxed whole: its state stays out of every connection's future.
            return Box::pin(self.say_shared(message, ts)).await;
        }
        let hub = &*self.hub;
        // What the message may cost at most (JSON doubles quotes, in its
        // history and its live frames): with the budget short of that, all
        // rooms' oldest history goes first, before this room's lock is taken.
        let most = 6 * message.len() + 4 * KEPT_OVERHEAD + 512;
        if hub.budget.used() + most > hub.budget.rooms_limit() {
            hub.reclaim();
        }
        let mut state = lock(&self.room.state);
        if self.tenure.is_retired() {
            // Its successor speaks for it now; this connection is closing.
            return Ok((Ack::None, None));
        }
        // Degraded mode: this node's clients only, not kept, numbered after
        // the last message the backend numbered.
        let degraded = mode == Mode::Degraded;
        let seq = if degraded { state.seq } else { state.last() + 1 };
        if !degraded {
            self.room.reserve(hub, &mut state, seq);
        }
        let event = Event::Message {
            room: room.into(),
            seq,
            from: self.name.as_str().into(),
            text: message.into(),
            ts,
        };
        if degraded || hub.history == 0 {
            let live = Encoded::only(&event, state.speakers);
            let numbered = if degraded { 0 } else { seq };
            let pos = self.room.send_message(hub, &mut state, live, numbered, None)?;
            if !degraded {
                state.seq = seq;
                self.store(&state, seq, message, ts);
            }
            return Ok((Ack::Pos(pos), (!degraded).then_some(seq)));
        }
        // The history keeps every protocol; the broadcast shares its bytes.
        let frames = Encoded::all(&event);
        let live = frames.keep(state.speakers);
        let pos = self.room.send_message(hub, &mut state, live, seq, Some((frames, ts)))?;
        state.seq = seq;
        self.store(&state, seq, message, ts);
        Ok((Ack::Pos(pos), Some(seq)))
    }

    /// Queues a message numbered `seq` for the store, if the room is kept.
    fn store(&self, state: &RoomState, seq: u64, text: &str, ts: crate::protocol::Timestamp) {
        if state.ceiling.is_some()
            && let Some(store) = self.hub.backend.store()
        {
            let message = Stored { seq, from: self.name.clone(), text: text.to_owned(), ts };
            store.append(&self.room.name, message);
        }
    }

    /// The room's messages before `before` (before the newest, without
    /// it), from the store or the shared backend.
    pub async fn history(
        &self,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Event<'static>, ClientError<'static>> {
        // Boxed: the backend's state stays out of every connection's future.
        let page = Box::pin(self.hub.page(&self.room.name, before, limit)).await;
        let page = page.map_err(|error| {
            warn!(%error, "cannot read the room's history");
            ClientError::HistoryUnavailable
        })?;
        Ok(Event::Earlier {
            room: self.room.name.clone().into(),
            messages: page.messages,
            more: page.more,
            id: None,
        })
    }

    /// Has the backend number a message and publish it: it comes back to
    /// this node like to any other.
    async fn say_shared(
        &self,
        message: &str,
        ts: crate::protocol::Timestamp,
    ) -> Result<(Ack, Option<u64>), ClientError<'static>> {
        let room = self.room.name.as_str();
        let from = self.name.as_str().into();
        let event = Event::Message { room: room.into(), seq: 0, from, text: message.into(), ts };
        let floor = lock(&self.room.state).seq;
        let said = self.hub.backend.say(room, &event.encode_json(), floor).await;
        said.map(|seq| (Ack::Seq(seq), Some(seq))).map_err(|error| {
            warn!(%error, "message not relayed");
            ClientError::LinkDown
        })
    }

    /// Changes this client's name and tells the room; returns what its
    /// notice is.
    pub async fn rename<'a>(&mut self, new: &'a str) -> Result<Ack, ClientError<'a>> {
        if self.who.identity().is_some() {
            return Err(ClientError::NameFromToken);
        }
        let new =
            if self.who == Who::Guest { new.strip_prefix(GUEST_MARK).unwrap_or(new) } else { new };
        validate_name(new).map_err(|reason| ClientError::InvalidName { name: new, reason })?;
        if self.hub.backend.is_shared() {
            // Boxed whole: its state stays out of every connection's future.
            return Box::pin(self.rename_shared(new)).await;
        }
        let shown = &*shown_as(&self.who, new);
        let (key, old_key) = (name_key(shown), name_key(&self.name));
        let mut state = lock(&self.room.state);
        // Retired under this lock: its name is its successor's to change.
        if self.tenure.is_retired() {
            return Ok(Ack::None);
        }
        if state.names.get(&key).is_some_and(|holder| !self.holds(holder)) {
            return Err(ClientError::NameTaken { name: new });
        }
        let holder = state.names.remove(&old_key);
        let holder = holder.map(|h| Holder { name: shown.to_owned(), ..h });
        state.names.extend(holder.map(|h| (key, h)));
        let old = std::mem::replace(&mut self.name, shown.to_owned());
        let event = Event::Nick {
            room: self.room.name.as_str().into(),
            old: old.into(),
            new: shown.into(),
        };
        Ok(Ack::Pos(self.room.broadcast(&mut state, &event)))
    }

    /// Renames through the shared backend, which holds the names.
    async fn rename_shared<'a>(&mut self, new: &'a str) -> Result<Ack, ClientError<'a>> {
        let shown = shown_as(&self.who, new).into_owned();
        let key = name_key(&shown);
        if lock(&self.room.state).names.get(&key).is_some_and(|holder| !self.holds(holder)) {
            return Err(ClientError::NameTaken { name: new });
        }
        // Names are the backend's: no renaming while it cannot be asked.
        if self.hub.backend.mode() != Mode::Shared {
            return Err(ClientError::LinkDown);
        }
        let session = self.tenure.session.hex();
        let renamed = self.hub.backend.rename(&self.room.name, &self.name, &shown, &session).await;
        match renamed {
            Ok(true) => {}
            Ok(false) => return Err(ClientError::NameTaken { name: new }),
            Err(error) => {
                warn!(%error, "cannot rename");
                return Err(ClientError::LinkDown);
            }
        }
        let old_key = name_key(&self.name);
        let mut state = lock(&self.room.state);
        if self.tenure.is_retired() {
            return Ok(Ack::None);
        }
        let holder = state.names.remove(&old_key);
        let holder = holder.map(|h| Holder { name: shown.clone(), ..h });
        state.names.extend(holder.map(|h| (key, h)));
        self.name = shown;
        // The notice comes back from the backend, after any message sent before it.
        Ok(Ack::None)
    }

    /// The `/who` answer: this room's names, sorted (only this node's
    /// in degraded mode).
    pub async fn who(&self) -> Event<'static> {
        // Boxed: the backend's state stays out of every connection's future.
        let api::Listing { count, names } = Box::pin(self.hub.members(&self.room.name)).await;
        let names = names.into_iter().map(Str::Owned).collect();
        Event::Who { room: self.room.name.clone().into(), count, names, id: None }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let key = name_key(&self.name);
        let mut state = lock(&self.room.state);
        let online = state.names.len();
        // A retired connection's name is its successor's now.
        let released = if self.registered { state.release(&key, &self.tenure) } else { None };
        if let Some(gone) = released {
            let mode = self.hub.backend.mode();
            match mode {
                // The backend releases the name (a person's once its last
                // connection on any node leaves) and announces the departure.
                Mode::Shared => {
                    self.hub.backend.leave(&self.room.name, &key, &self.tenure.session.hex());
                }
                // A person's other connections are still here.
                _ if !gone => {}
                // Degraded: announced to this node's clients, whatever the size.
                _ if mode == Mode::Degraded
                    || local::announces_each(online, self.hub.presence_limit) =>
                {
                    let event = Event::Leave {
                        room: self.room.name.as_str().into(),
                        name: self.name.as_str().into(),
                        ts: now(),
                    };
                    self.room.broadcast(&mut state, &event);
                }
                _ => state.presence.left(),
            }
            if let Some(last_id) = self.tenure.last_id() {
                if state.departed.len() == DEPARTED_SESSIONS {
                    state.departed.pop_front();
                }
                state.departed.push_back((self.tenure.session, last_id));
            }
        }
        state.members -= 1;
        *state.speakers.count(self.protocol) -= 1;
        let empty = state.members == 0;
        drop(state);
        if empty {
            // Same lock order as `join`: hub, then room. Check again under both,
            // since someone may have joined in between, and remove only this room:
            // another leave may already have replaced it with a new one.
            let mut rooms = lock(&self.hub.rooms);
            let ours = rooms.get(&self.room.name).is_some_and(|r| Arc::ptr_eq(r, &self.room));
            let state = lock(&self.room.state);
            if ours && state.members == 0 {
                // Before it is gone: a join reading it back comes after.
                if state.ceiling.is_some()
                    && let Some(store) = self.hub.backend.store()
                {
                    store.settle(&self.room.name, &state.epoch, state.last());
                }
                drop(state);
                rooms.remove(&self.room.name);
                drop(rooms);
                self.hub.backend.forget(&self.room.name, self.hub.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::gauge::Gauge;

    use super::*;
    use crate::server::hub::ring::Received;

    fn hub(backend: Backend, config: &ServerConfig) -> Arc<Hub> {
        let budget = Arc::new(Budget::new(config.max_memory, Gauge::default()));
        Hub::new(config, budget, backend)
    }

    fn request(room: &str, name: Option<&str>) -> ChatRequest {
        ChatRequest {
            room: room.to_owned(),
            name: name.map(str::to_owned),
            protocol: Protocol::Text,
            ..ChatRequest::default()
        }
    }

    /// The in-process backend, its store in memory.
    fn local() -> Backend {
        Backend::open(&ServerConfig::default()).expect("an in-memory store")
    }

    /// Joins, reading the room from the store if it is new.
    fn join(hub: &Arc<Hub>, room: &str, name: Option<&str>) -> Joined {
        block_on(hub.join(&request(room, name), "10.0.0.1", "ip:10.0.0.1")).expect("joined")
    }

    fn text(frame: &Frame) -> String {
        frame.as_text().expect("a text frame").trim_end().to_owned()
    }

    /// The text lines a member has been sent since it last looked.
    fn taken(rx: &mut Receiver<Broadcast, Tenure>) -> Vec<String> {
        let mut lines = Vec::new();
        rx.take_while(|received| {
            match received {
                Received::Item(sent) => {
                    lines.extend(sent.frames.take(Protocol::Text).map(|f| text(&f)));
                }
                Received::Missed(count) => lines.push(format!("missed {count}")),
            }
            true
        });
        lines
    }

    #[test]
    fn a_room_past_the_ceiling_on_disk_takes_a_new_epoch() {
        let hub = hub(local(), &ServerConfig::default());
        let mut alice = join(&hub, "lobby", Some("alice"));
        let room = lock(&hub.rooms)["lobby"].clone();
        let epoch = lock(&room.state).epoch.clone();
        // As if the store had not yet written a reservation asked for
        // long ago: only numbers up to 1 are safe.
        lock(&room.state).ceiling = Some(Ceiling::new(1));
        lock(&room.state).reserved = 10_000;
        block_on(alice.member.say("one")).expect("said");
        block_on(alice.member.say("two")).expect("said");
        let lines = taken(&mut alice.rx);
        assert_eq!(
            lines[1..],
            [
                "alice: one",
                "! missed an unknown number of messages: the room's history was reset",
                "alice: two"
            ]
        );
        let state = lock(&room.state);
        assert_ne!(state.epoch, epoch);
        assert_eq!(state.seq, 2, "numbering goes on");
        assert_eq!(state.reserved, 2 + RESERVE_AHEAD);
    }

    /// A member of `room` in degraded mode, put there as a join would have
    /// while the link was up.
    fn member_while_linked(hub: &Arc<Hub>, room: &str, name: &str) -> Joined {
        let tenure = Arc::new(Tenure::new("ip:10.0.0.1"));
        let entered = hub.enter(room, Protocol::Text, &mut None, |room, state| {
            state.names.insert(name_key(name), Holder::one(name.to_owned(), tenure.clone()));
            room.ring.subscribe(tenure.clone())
        });
        let (room, rx) = entered.expect("a fake backend has no store");
        let member = Member {
            hub: hub.clone(),
            room,
            name: name.to_owned(),
            protocol: Protocol::Text,
            registered: true,
            tenure,
            who: Who::Anyone,
        };
        Joined { member, rx, notices: Vec::new(), skip_through: 0 }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("a runtime").block_on(future)
    }

    #[test]
    fn a_replay_short_of_memory_leaves_out_the_oldest_and_says_so_first() {
        let budget = Arc::new(Budget::new(1000, Gauge::default()));
        // Each costs 134 bytes: 7 of the 10 fit.
        let frames: Vec<Frame> =
            (0..10).map(|n| Frame::text(&format!("{n}{}", "x".repeat(99)))).collect();
        let resumed = Event::Missed { count: Some(2), epoch: None };
        let mut notices = Vec::new();
        replay_into(&mut notices, Some(resumed), frames.into_iter(), &budget, Protocol::Text);
        let lines: Vec<_> = notices.iter().map(text).collect();
        assert_eq!(lines[0], "! missed 5 messages", "the 2 resumed past and the 3 left out");
        assert_eq!(lines[1], "* 7 earlier messages");
        assert!(lines[2].starts_with('3') && lines[8].starts_with('9'), "{lines:?}");
        assert_eq!(budget.used(), 7 * 134);
        drop(notices);
        assert_eq!(budget.used(), 0, "released once sent");
    }

    #[test]
    fn in_process_a_taken_name_falls_back_to_the_address_with_a_notice() {
        let hub = hub(local(), &ServerConfig::default());
        let alice = join(&hub, "lobby", Some("alice"));
        let other = join(&hub, "lobby", Some("ALICE"));
        assert_eq!(alice.member.name(), "alice");
        assert_eq!(other.member.name(), "10.0.0.1");
        let notices: Vec<_> = other.notices.iter().map(text).collect();
        assert!(notices[0].starts_with("! ") && notices[0].contains("ALICE"), "{notices:?}");
        // A third without a name gets the next free fallback.
        let third = join(&hub, "lobby", None);
        assert_eq!(third.member.name(), "10.0.0.1~2");
    }

    #[test]
    fn in_process_messages_are_numbered_kept_and_replayed_to_a_late_joiner() {
        let hub = hub(local(), &ServerConfig::default());
        let mut alice = join(&hub, "lobby", Some("alice"));
        assert_eq!(taken(&mut alice.rx), ["* alice joined"]);
        for (n, text) in ["one", "two"].into_iter().enumerate() {
            let (ack, seq) = block_on(alice.member.say(text)).expect("said");
            assert_eq!(seq, Some(n as u64 + 1));
            assert!(matches!(ack, Ack::Pos(_)));
        }
        assert_eq!(taken(&mut alice.rx), ["alice: one", "alice: two"]);
        let bob = join(&hub, "lobby", Some("bob"));
        let notices: Vec<_> = bob.notices.iter().map(text).collect();
        assert!(notices.iter().any(|line| line == "alice: one"), "{notices:?}");
        assert!(notices.iter().any(|line| line == "alice: two"), "{notices:?}");
        assert_eq!(taken(&mut alice.rx), ["* bob joined"]);
    }

    #[test]
    fn in_process_a_crowd_is_summarized_not_announced_one_by_one() {
        let config = ServerConfig { presence_limit: 1, ..ServerConfig::default() };
        let hub = hub(local(), &config);
        let mut alice = join(&hub, "big", Some("alice"));
        let bob = join(&hub, "big", Some("bob"));
        let carol = join(&hub, "big", Some("carol"));
        drop(bob);
        assert_eq!(taken(&mut alice.rx), ["* alice joined"]);
        hub.summarize();
        assert_eq!(taken(&mut alice.rx), ["* 2 joined, 1 left; 2 online"]);
        hub.summarize();
        assert!(taken(&mut alice.rx).is_empty(), "nothing new to summarize");
        drop(carol);
    }

    /// Joins `room` as the holder of a token for `sub` named `name`.
    fn join_as(hub: &Arc<Hub>, room: &str, sub: &str, name: &str) -> Result<Joined, JoinError> {
        block_on(hub.join(&request_as(room, sub, name), "10.0.0.1", "ip:10.0.0.1"))
    }

    #[test]
    fn in_process_a_person_is_one_name_however_many_connections() {
        let hub = hub(local(), &ServerConfig::default());
        let mut bob = join(&hub, "lobby", Some("bob"));
        let laptop = join_as(&hub, "lobby", "u-1", "alice").expect("joined");
        let mut phone = join_as(&hub, "lobby", "u-1", "alice").expect("joined");
        let tablet = join_as(&hub, "lobby", "u-1", "alice").expect("joined");
        assert_eq!(taken(&mut bob.rx), ["* bob joined", "* alice joined"]);
        let welcome = text(phone.notices.last().expect("a welcome"));
        assert!(welcome.contains(", 2 online,"), "{welcome}");
        let room = lock(&hub.rooms)["lobby"].clone();
        let every = |state: &RoomState| state.tenures_of(&name_key("alice"));
        assert_eq!(every(&lock(&room.state)).len(), 3);
        assert_eq!(lock(&room.state).names.len(), 2, "one entry for the person");
        // Another person's look-alike is refused outright.
        let other = join_as(&hub, "lobby", "u-2", "ALICE");
        assert!(matches!(other, Err(JoinError::NameHeld { .. })), "{other:?}");

        // The first connection (the one announced) goes, then another: silently.
        drop(laptop);
        drop(tablet);
        let left = every(&lock(&room.state));
        assert!(left.len() == 1 && Arc::ptr_eq(&left[0], &phone.member.tenure()));
        let Event::Who { count, names, .. } = block_on(bob.member.who()) else { panic!("who") };
        assert_eq!((count, names.len()), (2, 2));
        block_on(phone.member.say("still here")).expect("said");
        assert_eq!(taken(&mut bob.rx), ["alice: still here"]);
        assert!(taken(&mut phone.rx).iter().all(|line| !line.contains("left")));
        drop(phone);
        assert_eq!(taken(&mut bob.rx), ["* alice left"]);
        assert!(every(&lock(&room.state)).is_empty());
        // Free for another person now.
        let other = join_as(&hub, "lobby", "u-2", "ALICE").expect("joined");
        assert_eq!(other.member.name(), "ALICE");
    }

    #[test]
    fn in_process_a_crowd_counts_persons_in_its_summaries() {
        let config = ServerConfig { presence_limit: 0, ..ServerConfig::default() };
        let hub = hub(local(), &config);
        let mut bob = join(&hub, "big", Some("bob"));
        let laptop = join_as(&hub, "big", "u-1", "alice").expect("joined");
        let phone = join_as(&hub, "big", "u-1", "alice").expect("joined");
        drop(laptop);
        hub.summarize();
        assert_eq!(taken(&mut bob.rx), ["* 2 joined, 0 left; 2 online"]);
        drop(phone);
        hub.summarize();
        assert_eq!(taken(&mut bob.rx), ["* 0 joined, 1 left; 1 online"]);
    }

    #[test]
    fn degraded_messages_reach_this_nodes_clients_unnumbered_and_unkept() {
        let hub = hub(Backend::fake(Mode::Degraded), &ServerConfig::default());
        let mut alice = member_while_linked(&hub, "lobby", "alice");
        let mut bob = member_while_linked(&hub, "lobby", "bob");
        let (ack, seq) = block_on(alice.member.say("anyone?")).expect("relayed");
        assert!(matches!(ack, Ack::Pos(_)));
        assert_eq!(seq, None, "not numbered");
        assert_eq!(taken(&mut bob.rx), ["alice: anyone?"]);
        assert_eq!(taken(&mut alice.rx), ["alice: anyone?"]);
        let room = lock(&hub.rooms).get("lobby").cloned().expect("the room");
        assert!(lock(&room.state).history.is_empty(), "not kept");
    }

    #[test]
    fn degraded_names_cannot_change_and_who_lists_this_node() {
        let hub = hub(Backend::fake(Mode::Degraded), &ServerConfig::default());
        let mut alice = member_while_linked(&hub, "lobby", "alice");
        let _bob = member_while_linked(&hub, "lobby", "bob");
        let renamed = block_on(alice.member.rename("alicia"));
        assert!(matches!(renamed, Err(ClientError::LinkDown)), "{renamed:?}");
        let Event::Who { count, names, .. } = block_on(alice.member.who()) else {
            panic!("a who answer");
        };
        assert_eq!(count, 2);
        assert_eq!(names.iter().map(AsRef::as_ref).collect::<Vec<&str>>(), ["alice", "bob"]);
    }

    #[test]
    fn degraded_joins_are_refused_and_departures_announced_here() {
        let config = ServerConfig { presence_limit: 0, ..ServerConfig::default() };
        let hub = hub(Backend::fake(Mode::Degraded), &config);
        let joined =
            block_on(hub.join(&request("lobby", Some("carol")), "10.0.0.1", "ip:10.0.0.1"));
        assert!(matches!(joined, Err(JoinError::Backend(BackendError::Down))), "{joined:?}");
        let mut alice = member_while_linked(&hub, "lobby", "alice");
        let bob = member_while_linked(&hub, "lobby", "bob");
        drop(bob);
        // Past the presence limit, yet announced: no summary comes from
        // the backend while it is out of reach.
        assert_eq!(taken(&mut alice.rx), ["* bob left"]);
    }

    fn request_as(room: &str, sub: &str, name: &str) -> ChatRequest {
        let identity = Identity {
            sub: sub.into(),
            name: name.to_owned(),
            expires: None,
            rooms: crate::protocol::Scope::All,
            moderates: crate::protocol::Scope::All,
        };
        ChatRequest { who: Who::User(Arc::new(identity)), ..request(room, None) }
    }

    /// A token holder's second device, past its checks as a kick or ban of
    /// the person comes, and joined after it: removed once it has joined.
    #[test]
    fn a_device_joining_as_its_person_is_kicked_or_banned_is_removed_too() {
        use crate::protocol::{Action, Moderation};
        let told = [
            (Action::Kick, "alice was kicked by mod"),
            (Action::Ban, "you are banned from room \"lobby\""),
        ];
        for (action, words) in told {
            let hub = hub(local(), &ServerConfig::default());
            let laptop = join_as(&hub, "lobby", "u-1", "alice").expect("joined");
            let phone = request_as("lobby", "u-1", "alice");
            let checked = block_on(hub.restriction(&phone, "sub:u-1")).expect("read");
            assert!(checked.banned.is_none());
            let moderation = Moderation { action, name: "alice", duration: None, reason: None };
            block_on(hub.moderate("lobby", Some("mod"), &moderation)).expect("done");
            assert!(laptop.member.tenure.is_retired(), "{action:?}: the laptop goes at once");
            let joined = block_on(hub.join(&phone, "10.0.0.1", "sub:u-1")).expect("joined");
            assert!(!joined.member.tenure.is_retired(), "{action:?}: not yet");
            block_on(checked.apply(&joined.member, &phone));
            assert_eq!(joined.member.tenure.removed().as_deref(), Some(words), "{action:?}");
        }
    }
}
