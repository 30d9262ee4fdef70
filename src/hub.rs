//! Rooms and names, and the fan-out: each room has one tokio broadcast channel
//! whose items are encoded frames, cloned by reference count for every
//! recipient, never copied.
//!
//! A client is in a room while it holds a [`Member`]; dropping it leaves the
//! room, announces the departure and forgets the room when it empties.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;
use tokio_websockets::Message;

use crate::protocol::{ClientError, Event, MAX_WHO_NAMES, validate_name};

/// One frame broadcast to a room, with its position in the room's stream.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Counts every frame broadcast in the room since it was created.
    pub pos: u64,
    /// The encoded frame, shared by every recipient.
    pub frame: Message,
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
    tx: broadcast::Sender<Outbound>,
    state: Mutex<RoomState>,
}

#[derive(Debug, Default)]
struct RoomState {
    names: HashSet<String>,
    pos: u64,
    /// Arrivals and departures not announced yet, in a large room.
    joined: u64,
    left: u64,
    /// The last messages, oldest first, as sent.
    history: VecDeque<Message>,
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
                    joined: state.joined,
                    left: state.left,
                    online: state.names.len(),
                };
                state.joined = 0;
                state.left = 0;
                room.broadcast(&mut state, event);
            }
        }
    }

    /// Number of rooms with at least one client.
    pub fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }

    /// Puts a client in `room` under `requested` if that name is valid and free,
    /// else under `fallback` (its address) with an error notice saying why.
    pub fn join(self: &Arc<Self>, room: &str, requested: Option<&str>, fallback: &str) -> Joined {
        // Holding the hub lock while inserting keeps a concurrent last leave from
        // forgetting the room between our lookup and our insertion.
        let mut rooms = lock(&self.rooms);
        let room = rooms
            .entry(room.to_owned())
            .or_insert_with(|| {
                Arc::new(Room {
                    name: room.to_owned(),
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
                    notices.push(text(Event::Error(error)));
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
        notices.push(text(Event::Welcome {
            name: &name,
            room: &room.name,
            online: state.names.len(),
        }));
        // What was said before, then live frames: both under the room's lock,
        // so nothing falls between them and nothing comes twice.
        if !state.history.is_empty() {
            let count = state.history.len();
            notices.reserve(count + 2);
            notices.push(text(Event::HistoryStart { count }));
            notices.extend(state.history.iter().cloned());
            notices.push(text(Event::HistoryEnd));
        }

        // Subscribe before announcing, so the joiner sees its own join notice.
        let rx = room.tx.subscribe();
        if state.names.len() <= self.presence_limit {
            room.broadcast(&mut state, Event::Joined { name: &name });
        } else {
            state.joined += 1;
        }
        drop(state);

        Joined { member: Member { hub: self.clone(), room, name }, rx, notices }
    }
}

impl Room {
    /// Sends a frame to every member, the sender included; returns its position.
    /// Called with the state locked so positions follow the channel's order.
    fn broadcast(&self, state: &mut RoomState, event: Event<'_>) -> u64 {
        self.send(state, text(event))
    }

    fn send(&self, state: &mut RoomState, frame: Message) -> u64 {
        state.pos += 1;
        // An error only means nobody is subscribed, so there is nobody to tell.
        let _ = self.tx.send(Outbound { pos: state.pos, frame });
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
        let frame = text(Event::Message { from: &self.name, text: message });
        let mut state = lock(&self.room.state);
        if self.hub.history > 0 {
            if state.history.len() == self.hub.history {
                state.history.pop_front();
            }
            // A reference-counted clone: the history shares the broadcast's bytes.
            state.history.push_back(frame.clone());
        }
        Ok(self.room.send(&mut state, frame))
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
        Ok(self.room.broadcast(&mut state, Event::Renamed { old: &old, new }))
    }

    /// The `/who` answer: this room's names, sorted.
    pub fn who(&self) -> Message {
        let state = lock(&self.room.state);
        let mut names: Vec<&str> = state.names.iter().map(String::as_str).collect();
        // Only the first names are listed: select them before sorting, since
        // this runs under the room's lock.
        if names.len() > MAX_WHO_NAMES {
            names.select_nth_unstable(MAX_WHO_NAMES);
            names.truncate(MAX_WHO_NAMES);
        }
        names.sort_unstable();
        text(Event::Who { room: &self.room.name, count: state.names.len(), names: &names })
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut state = lock(&self.room.state);
        if state.names.len() <= self.hub.presence_limit {
            self.room.broadcast(&mut state, Event::Left { name: &self.name });
        } else {
            state.left += 1;
        }
        state.names.remove(&self.name);
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

/// Encodes an event as a text frame.
pub fn text(event: Event<'_>) -> Message {
    Message::text(event.to_string())
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the
/// state consistent, and no lock is held across an `.await`.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
