//! Rooms and names, and the fan-out: each room has one tokio broadcast channel
//! whose items are frames encoded once in each protocol, cloned by reference
//! count for every recipient, never copied.
//!
//! Each room numbers its messages (`seq`) and keeps the last ones, so that a
//! client joining late sees them and one coming back resumes where it left.
//!
//! A client is in a room while it holds a [`Member`]; dropping it leaves the
//! room, announces the departure and forgets the room when it empties.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;
use tokio_websockets::Message;

use crate::protocol::{
    ChatRequest, ClientError, Event, MAX_WHO_NAMES, Phase, Protocol, Resume, Str, now,
    validate_name,
};

/// One event broadcast to a room, with its position in the room's stream.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Counts every frame broadcast in the room since it was created.
    pub pos: u64,
    /// The event, encoded, shared by every recipient.
    pub frames: Frames,
}

/// An event encoded once per protocol, for the protocols its recipients
/// speak: every recipient clones each frame it carries, so a frame nobody
/// needs would cost every delivery a reference count.
#[derive(Debug, Clone)]
pub struct Frames {
    text: Option<Message>,
    json: Option<Message>,
}

impl Frames {
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
    pub fn take(self, protocol: Protocol) -> Option<Message> {
        match protocol {
            Protocol::Text => self.text,
            Protocol::Json => self.json,
        }
    }

    fn get(&self, protocol: Protocol) -> Option<Message> {
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

/// All rooms of a server.
#[derive(Debug)]
pub struct Hub {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// Capacity of each room's channel (`--max-lag`).
    capacity: usize,
    /// Messages each room keeps for those who join later (`--history`).
    history: usize,
    /// Largest room whose joins and leaves are announced one by one
    /// (`--presence-limit`); larger rooms get [`Hub::summarize`]'s summaries.
    presence_limit: usize,
}

#[derive(Debug)]
struct Room {
    name: String,
    /// Random, drawn when the room is created: its message numbers mean
    /// something only within this epoch.
    epoch: String,
    tx: broadcast::Sender<Outbound>,
    state: Mutex<RoomState>,
}

#[derive(Debug, Default)]
struct RoomState {
    names: HashSet<String>,
    speakers: Speakers,
    pos: u64,
    /// The last message's number.
    seq: u64,
    /// Arrivals and departures not announced yet, in a large room.
    joined: u64,
    left: u64,
    /// The last messages, oldest first, numbered without gaps.
    history: VecDeque<(u64, Frames)>,
}

/// What [`Hub::join`] gives a new client.
#[derive(Debug)]
pub struct Joined {
    /// Membership; drop it to leave.
    pub member: Member,
    /// The room's frames, starting with this client's own join notice.
    pub rx: broadcast::Receiver<Outbound>,
    /// Frames for this client only, to send before anything else.
    pub notices: Vec<Message>,
}

/// A client's place in a room.
#[derive(Debug)]
pub struct Member {
    hub: Arc<Hub>,
    room: Arc<Room>,
    name: String,
    protocol: Protocol,
}

impl Hub {
    /// A hub whose rooms buffer `capacity` frames for their slowest client and
    /// announce each join and leave while they hold at most `presence_limit`
    /// clients.
    pub fn new(capacity: usize, presence_limit: usize, history: usize) -> Arc<Self> {
        Arc::new(Self { rooms: Mutex::default(), capacity, history, presence_limit })
    }

    /// Announces, in each room too large for individual notices, how many
    /// joined and left since the last call. The server calls it periodically,
    /// so a crowd of N joining costs N summaries' worth of frames per period
    /// rather than N² notices.
    pub fn summarize(&self) {
        let rooms: Vec<Arc<Room>> = lock(&self.rooms).values().cloned().collect();
        for room in rooms {
            let mut state = lock(&room.state);
            if state.joined > 0 || state.left > 0 {
                let event = Event::Presence {
                    room: room.name.as_str().into(),
                    joined: state.joined,
                    left: state.left,
                    online: state.names.len(),
                };
                state.joined = 0;
                state.left = 0;
                room.broadcast(&mut state, &event);
            }
        }
    }

    /// Number of rooms with at least one client.
    pub fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }

    /// Puts a client in the room it asks for, under the name it asks for if
    /// that is valid and free, else under `fallback` (its address) with an
    /// error notice saying why. Its first frames replay the room's history,
    /// or only what it missed when it resumes.
    pub fn join(self: &Arc<Self>, request: &ChatRequest, fallback: &str) -> Joined {
        let ChatRequest { room, name: requested, resume, protocol } = request;
        let (room, requested, protocol) = (room.as_str(), requested.as_deref(), *protocol);
        // Holding the hub lock while inserting keeps a concurrent last leave from
        // forgetting the room between our lookup and our insertion.
        let mut rooms = lock(&self.rooms);
        let room = rooms
            .entry(room.to_owned())
            .or_insert_with(|| {
                Arc::new(Room {
                    name: room.to_owned(),
                    epoch: format!("{:016x}", fastrand::u64(..)),
                    tx: broadcast::channel(self.capacity).0,
                    state: Mutex::default(),
                })
            })
            .clone();
        let mut state = lock(&room.state);
        drop(rooms);

        let mut notices = Vec::new();
        let refusal = requested.and_then(|name| match validate_name(name) {
            Err(reason) => Some(ClientError::InvalidName { name, reason }),
            Ok(()) if state.names.contains(name) => Some(ClientError::NameTaken { name }),
            Ok(()) => None,
        });
        let name = match (requested, refusal) {
            (Some(name), None) => name.to_owned(),
            (_, refusal) => {
                if let Some(error) = refusal {
                    notices.push(Event::from(error).encode(protocol));
                }
                // Someone may have taken this address as a name: add a suffix.
                let mut name = fallback.to_owned();
                let mut n = 1;
                while state.names.contains(&name) {
                    n += 1;
                    name = format!("{fallback}~{n}");
                }
                name
            }
        };
        state.names.insert(name.clone());
        *state.speakers.count(protocol) += 1;
        notices.push(
            Event::Welcome {
                room: room.name.as_str().into(),
                name: name.as_str().into(),
                online: state.names.len(),
                epoch: room.epoch.as_str().into(),
                seq: state.seq,
            }
            .encode(protocol),
        );
        // What was said before, then live frames: both under the room's lock,
        // so nothing falls between them and nothing comes twice.
        let (skip, missed) = replay_skip(&state, &room.epoch, resume.as_ref());
        if let Some(missed) = missed {
            notices.push(missed.encode(protocol));
        }
        let count = state.history.len().saturating_sub(skip);
        if count > 0 {
            notices.reserve(count + 2);
            notices.push(Event::History { phase: Phase::Start, count }.encode(protocol));
            let replay = state.history.iter().skip(skip);
            notices.extend(replay.filter_map(|(_, frames)| frames.get(protocol)));
            notices.push(Event::History { phase: Phase::End, count }.encode(protocol));
        }

        // Subscribe before announcing, so the joiner sees its own join notice.
        let rx = room.tx.subscribe();
        if state.names.len() <= self.presence_limit {
            let event = Event::Join {
                room: room.name.as_str().into(),
                name: name.as_str().into(),
                ts: now(),
            };
            room.broadcast(&mut state, &event);
        } else {
            state.joined += 1;
        }
        drop(state);

        Joined { member: Member { hub: self.clone(), room, name, protocol }, rx, notices }
    }
}

impl Room {
    /// Sends an event to every member, the sender included; returns its
    /// position. Called with the state locked so positions follow the
    /// channel's order.
    fn broadcast(&self, state: &mut RoomState, event: &Event<'_>) -> u64 {
        self.send(state, Frames::only(event, state.speakers))
    }

    fn send(&self, state: &mut RoomState, frames: Frames) -> u64 {
        state.pos += 1;
        // An error only means nobody is subscribed, so there is nobody to tell.
        let _ = self.tx.send(Outbound { pos: state.pos, frames });
        state.pos
    }
}

impl Member {
    /// This client's current name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Relays `message` to the room; returns its position.
    pub fn say(&self, message: &str) -> Result<u64, ClientError<'static>> {
        if message.is_empty() {
            return Err(ClientError::EmptyMessage);
        }
        let ts = now();
        let mut state = lock(&self.room.state);
        state.seq += 1;
        let event = Event::Message {
            room: self.room.name.as_str().into(),
            seq: state.seq,
            from: self.name.as_str().into(),
            text: message.into(),
            ts,
        };
        if self.hub.history == 0 {
            let frames = Frames::only(&event, state.speakers);
            return Ok(self.room.send(&mut state, frames));
        }
        if state.history.len() == self.hub.history {
            state.history.pop_front();
        }
        // The history keeps every protocol; the broadcast shares its bytes.
        let frames = Frames::all(&event);
        let live = frames.keep(state.speakers);
        let seq = state.seq;
        state.history.push_back((seq, frames));
        Ok(self.room.send(&mut state, live))
    }

    /// Changes this client's name and tells the room; returns the notice's position.
    pub fn rename<'a>(&mut self, new: &'a str) -> Result<u64, ClientError<'a>> {
        validate_name(new).map_err(|reason| ClientError::InvalidName { name: new, reason })?;
        let mut state = lock(&self.room.state);
        if state.names.contains(new) {
            return Err(ClientError::NameTaken { name: new });
        }
        state.names.remove(&self.name);
        state.names.insert(new.to_owned());
        let old = std::mem::replace(&mut self.name, new.to_owned());
        let event =
            Event::Nick { room: self.room.name.as_str().into(), old: old.into(), new: new.into() };
        Ok(self.room.broadcast(&mut state, &event))
    }

    /// The `/who` answer: this room's names, sorted.
    pub fn who(&self) -> Event<'static> {
        let state = lock(&self.room.state);
        let mut names: Vec<&str> = state.names.iter().map(String::as_str).collect();
        // Only the first names are listed: select them before sorting, since
        // this runs under the room's lock.
        if names.len() > MAX_WHO_NAMES {
            names.select_nth_unstable(MAX_WHO_NAMES);
            names.truncate(MAX_WHO_NAMES);
        }
        names.sort_unstable();
        Event::Who {
            room: self.room.name.clone().into(),
            count: state.names.len(),
            names: names.into_iter().map(|name| Str::Owned(name.to_owned())).collect(),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut state = lock(&self.room.state);
        if state.names.len() <= self.hub.presence_limit {
            let event = Event::Leave {
                room: self.room.name.as_str().into(),
                name: self.name.as_str().into(),
                ts: now(),
            };
            self.room.broadcast(&mut state, &event);
        } else {
            state.left += 1;
        }
        state.names.remove(&self.name);
        *state.speakers.count(self.protocol) -= 1;
        let empty = state.names.is_empty();
        drop(state);
        if empty {
            // Same lock order as `join`: hub, then room. Check again under both,
            // since someone may have joined in between, and remove only this room:
            // another leave may already have replaced it with a new one.
            let mut rooms = lock(&self.hub.rooms);
            let ours = rooms.get(&self.room.name).is_some_and(|r| Arc::ptr_eq(r, &self.room));
            if ours && lock(&self.room.state).names.is_empty() {
                rooms.remove(&self.room.name);
            }
        }
    }
}

/// How many of the held messages a joining client skips (those it already
/// has), and what it is told it missed.
fn replay_skip(
    state: &RoomState,
    epoch: &str,
    resume: Option<&Resume>,
) -> (usize, Option<Event<'static>>) {
    let first_held = state.history.front().map_or(state.seq + 1, |(seq, _)| *seq);
    match resume {
        // A newcomer gets all that is held.
        None => (0, None),
        Some(Resume { epoch: theirs, .. }) if theirs != epoch => {
            (0, Some(Event::Missed { count: None }))
        }
        Some(Resume { since, .. }) if *since > state.seq => {
            let error = ClientError::ResumeAhead { since: *since, seq: state.seq };
            (state.history.len(), Some(Event::from(error)))
        }
        Some(Resume { since, .. }) => {
            let missed = first_held.saturating_sub(since + 1);
            let skip =
                usize::try_from((since + 1).saturating_sub(first_held)).unwrap_or(usize::MAX);
            (skip, (missed > 0).then_some(Event::Missed { count: Some(missed) }))
        }
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the
/// state consistent, and no lock is held across an `.await`.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
