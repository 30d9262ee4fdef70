//! What the HTTP API (`server::api`) asks of the hub: publishing in a room
//! whether or not anyone is there, a room's history and members, and the
//! rooms with their counts. Kept apart from joins and leaves.
//!
//! A room exists on this node only while it has members, so a publish holds
//! a silent membership for its duration: counted in the room (which keeps
//! it, or reads it back from the store), but holding no name and
//! announcing nothing, like a connection that never got its name.

use std::sync::Arc;

use tracing::warn;

use crate::protocol::{
    ClientError, Event, MAX_WHO_NAMES, NameError, Protocol, Who, check_text, now, validate_name,
};
use crate::server::backend::store::Loaded;
use crate::server::backend::{BackendError, Mode, Page, StoreError};
use crate::server::hub::ring::Charge;
use crate::server::hub::{Hub, Member, Room, Tenure};
use crate::util::lock;

/// What an HTTP API sender's name is shown with: `ci` publishes as
/// `ci (api)`. No person's name holds whitespace, so none can pass for it.
pub const API_SENDER_SUFFIX: &str = " (api)";

/// The name an HTTP API sender `from` is shown under.
pub fn api_sender(from: &str) -> String {
    format!("{from}{API_SENDER_SUFFIX}")
}

/// Why a publish through the HTTP API was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// `from` breaks the name rules.
    #[error("from {name:?} is not a valid name: {reason}")]
    Name {
        /// The refused name.
        name: String,
        /// Why.
        reason: NameError,
    },
    /// `from` ends with `:`: `bob: (api): hi` would read, in the text
    /// protocol, as bob saying `(api): hi`.
    #[error("from {0:?} may not end with ':': its line would read as someone else's")]
    Colon(String),
    /// The text was refused as a client's would be (too long, blank,
    /// control characters), or the server has no memory for it.
    #[error("{0}")]
    Text(ClientError<'static>),
    /// The shared backend is out of reach (degraded mode) or failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A room's members as `/who` lists them: how many, and the first
/// [`MAX_WHO_NAMES`] names, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Names held in the room.
    pub count: usize,
    /// The first of them, sorted.
    pub names: Vec<String>,
}

impl Room {
    /// This node's names in the room, as `/who` lists them.
    pub(super) fn listing(&self) -> Listing {
        let state = lock(&self.state);
        let mut names: Vec<&str> = state.names.values().map(|h| h.name.as_str()).collect();
        // Only the first names are listed: select them before sorting, since
        // this runs under the room's lock.
        if names.len() > MAX_WHO_NAMES {
            names.select_nth_unstable(MAX_WHO_NAMES);
            names.truncate(MAX_WHO_NAMES);
        }
        names.sort_unstable();
        Listing { count: state.names.len(), names: names.into_iter().map(str::to_owned).collect() }
    }
}

impl Hub {
    /// A charge of `bytes` against `--max-memory`, for an answer held
    /// until written; `None` when the budget has no room for it.
    pub fn hold(&self, bytes: usize) -> Option<Charge> {
        self.budget.try_hold(bytes)
    }

    /// Publishes `text` in `room` from the HTTP API sender `from` (shown as
    /// [`api_sender`]): numbered, kept and delivered like any client's
    /// message, with the same checks. Returns its seq.
    pub async fn publish(
        self: &Arc<Self>,
        room: &str,
        from: &str,
        text: &str,
    ) -> Result<u64, PublishError> {
        validate_name(from).map_err(|reason| PublishError::Name { name: from.into(), reason })?;
        if from.ends_with(':') {
            return Err(PublishError::Colon(from.into()));
        }
        check_text(text, self.limits.max_bytes).map_err(PublishError::Text)?;
        let from = api_sender(from);
        match self.backend.mode() {
            Mode::Alone => {
                let member = self.silent_member(room, from).await;
                match member.say(text).await.map_err(PublishError::Text)? {
                    (_, Some(seq)) => Ok(seq),
                    // Only degraded mode leaves messages unnumbered.
                    (_, None) => Err(BackendError::Down.into()),
                }
            }
            Mode::Shared => {
                // The backend numbers and publishes it; this node's clients
                // get it back like every other node's.
                let here = lock(&self.rooms).get(room).cloned();
                let floor = here.map_or(0, |room| lock(&room.state).seq);
                let from = from.as_str().into();
                let event = Event::Message {
                    room: room.into(),
                    seq: 0,
                    from,
                    text: text.into(),
                    ts: now(),
                };
                Ok(self.backend.say(room, &event.encode_json(), floor).await?)
            }
            Mode::Degraded => Err(BackendError::Down.into()),
        }
    }

    /// A membership of `room` under `name` that holds no name and announces
    /// nothing; the room is read back from the store first if it is not in
    /// memory (as [`Hub::join`] does). Dropping it leaves, silently.
    async fn silent_member(self: &Arc<Self>, room: &str, name: String) -> Member {
        // Counted as a JSON speaker: the room then encodes its frames in
        // JSON too while the member is in, which costs nothing kept.
        let protocol = Protocol::Json;
        let enter = |loaded: &mut Option<Result<Loaded, StoreError>>| {
            self.enter(room, protocol, loaded, |_, _| ()).map(|(room, ())| room)
        };
        let entered = loop {
            let mut loaded = None;
            if let Some(entered) = enter(&mut loaded) {
                break entered;
            }
            // Not in memory, and there is a store: read back by one join
            // while the others wait.
            let _loading = self.loading.lock().await;
            if !lock(&self.rooms).contains_key(room)
                && let Some(store) = self.backend.store()
            {
                let read = store.load(room, self.history, self.history_bytes).await;
                loaded = Some(read.inspect_err(|error| {
                    warn!(%error, room, "cannot read the room back: not keeping it");
                }));
            }
            if let Some(entered) = enter(&mut loaded) {
                break entered;
            }
        };
        Member {
            hub: self.clone(),
            room: entered,
            protocol,
            registered: false,
            // Not a connection: nothing a moderator records applies to it.
            tenure: Arc::new(Tenure::new(&format!("api:{name}"))),
            who: Who::Anyone,
            name,
        }
    }

    /// `room`'s members: on all nodes with a shared backend (this node's
    /// when it cannot be asked), else this node's.
    pub async fn members(&self, room: &str) -> Listing {
        if self.backend.mode() == Mode::Shared {
            match self.backend.who(room).await {
                Ok((count, names)) => return Listing { count, names },
                Err(error) => warn!(%error, "cannot list the room: listing this node's clients"),
            }
        }
        let here = lock(&self.rooms).get(room).cloned();
        here.map_or(Listing { count: 0, names: Vec::new() }, |room| room.listing())
    }

    /// This node's rooms with someone in them, by name, with how many are
    /// in each: the first `most`, and whether there are more.
    pub fn room_counts(&self, most: usize) -> (Vec<(String, usize)>, bool) {
        let mut rooms: Vec<(String, usize)> = self
            .rooms()
            .iter()
            .map(|room| (room.name.clone(), lock(&room.state).names.len()))
            // A room held only by a publish in progress has nobody in it.
            .filter(|(_, online)| *online > 0)
            .collect();
        let more = rooms.len() > most;
        if more {
            rooms.select_nth_unstable(most);
            rooms.truncate(most);
        }
        rooms.sort_unstable();
        (rooms, more)
    }

    /// `room`'s messages numbered below `before` (all of them without it),
    /// oldest first, at most `limit` and the `/history` bounds.
    pub async fn page(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page, BackendError> {
        // In-process, up to the newest this node numbered in a room in
        // memory; otherwise whatever is kept (with a shared backend this
        // node's seq is the last it delivered, which lags the room's).
        let newest = || {
            let here = lock(&self.rooms).get(room).cloned();
            match here {
                Some(room) if !self.backend.is_shared() => lock(&room.state).last() + 1,
                _ => u64::MAX,
            }
        };
        let before = before.unwrap_or_else(newest);
        self.backend.page(room, before, limit).await
    }
}
