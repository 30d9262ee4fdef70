//! Several nodes sharing rooms through Redis (`--redis`).
//!
//! Redis holds what the nodes share: each room's message numbers and history
//! (a stream capped at `--history`), its names (which node holds each) and
//! its presence counters. Every change is one Lua script, so it is atomic,
//! and a message is numbered, kept and published in one step: the order of
//! its seq is the order every node delivers it in. A node delivers even its
//! own clients' messages only when they come back from Redis.
//!
//! A node subscribes to the channels of the rooms it has clients in, so a
//! message crosses Redis once per interested node; the node decodes and
//! encodes it once and the hub's fan-out shares the frames.
//!
//! [`Redis::run`] keeps the link: a heartbeat key that expires when the node
//! dies (the other nodes then remove its clients from presence), and, when
//! Redis is lost, degraded mode (each node's clients chat among themselves:
//! [`Mode::Degraded`](super::Mode::Degraded)), reconnection with backoff and a catch-up from history.
//! Only the heartbeat decides that the link is lost: a client's request that
//! times out fails alone, so no sequence of requests can put a node in
//! degraded mode while Redis still answers its heartbeat.
//!
//! A room outlives its members: its history, epoch and numbering stay while
//! it has members, and once it has none Redis expires them `--keep-for`
//! after its last message (each message renews that, and a join cancels it).
//! The next joiner then gets a new epoch, which tells clients that their old
//! seqs mean nothing now: numbering never restarts silently.
//!
//! What clients can make a script read is bounded: a join reads only the
//! messages it replays, at most `--history` of them and `--history-bytes`,
//! and a history request only the page it gets (see [`Redis::page`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, RedisError, Script};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Claim, Events, Held, Join, Joined, Sanction, Snapshot, new_epoch, unix_ms};
use crate::protocol::{
    Action, Event, HISTORY_PAGE_BYTES, HISTORY_PAGE_MESSAGES, MAX_SANCTIONS_PER_ROOM,
    MAX_WHO_NAMES, PastMessage, name_key, now,
};
use crate::server::config::ServerConfig;
use crate::server::metrics::Metrics;
use crate::util::{backoff, lock};

/// How often a node renews its heartbeat key, removes departed nodes' clients
/// from its rooms and sends large rooms their presence summaries.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// Life of a heartbeat key: a node silent this long is taken for dead, so its
/// clients leave everyone's presence at most this plus one heartbeat later.
pub const NODE_TTL: Duration = Duration::from_secs(10);
/// Longest wait for Redis to connect or answer one request; that request
/// then fails (a client's join or message), but the link stays up.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// The link counts as down when no heartbeat was answered for this long
/// (or at once when a connection closes): a Redis merely slow to answer, as
/// under a burst of requests, is not taken for a dead one. Shorter than
/// [`NODE_TTL`], so a node knows it is cut off before the others drop its
/// clients.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(6);
/// First wait before reconnecting to Redis; doubles up to [`RECONNECT_MAX`].
pub const RECONNECT_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between two attempts to reconnect to Redis.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Prefix of every key and channel this server uses in Redis.
const PREFIX: &str = "chat";

/// What went wrong with Redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The URL is not a Redis URL. (Not quoted: it may hold a password.)
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(RedisError),
    /// Redis refused or failed a request.
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    /// Redis took longer than [`REDIS_TIMEOUT`].
    #[error("Redis did not answer within {REDIS_TIMEOUT:?}")]
    Timeout,
    /// The link is down: the node is in degraded mode.
    #[error("the link to Redis is down")]
    Down,
    /// No heartbeat was answered for [`LINK_TIMEOUT`].
    #[error("Redis answered no heartbeat for {LINK_TIMEOUT:?}")]
    Unanswered,
    /// Redis ended the subscription's stream.
    #[error("Redis closed the subscription")]
    Unsubscribed,
}

impl LinkError {
    /// Whether the connection itself failed (closed, reset, refused), as
    /// opposed to Redis answering late or refusing one request.
    fn is_dead_link(&self) -> bool {
        match self {
            LinkError::Redis(error) => {
                !error.is_timeout()
                    && (error.is_io_error()
                        || error.is_connection_dropped()
                        || error.is_unrecoverable_error())
            }
            LinkError::Down | LinkError::Unanswered | LinkError::Unsubscribed => true,
            LinkError::InvalidUrl(_) | LinkError::Timeout => false,
        }
    }
}

/// A node's link to Redis.
pub(crate) struct Redis {
    client: Client,
    /// This node's random identity, for the names it holds.
    node: String,
    /// Whether the link is up: the node is subscribed and caught up.
    up: AtomicBool,
    /// Connections for commands; replaced on reconnection.
    commands: std::sync::Mutex<Option<Links>>,
    /// Subscriptions. An async lock: (un)subscribing waits for Redis, and
    /// each decision to unsubscribe must see the rooms as they are when sent.
    subscriptions: tokio::sync::Mutex<Option<PubSubSink>>,
    /// The first connection's messages, until [`Cluster::run`] takes them.
    first: std::sync::Mutex<Option<PubSubStream>>,
    scripts: Scripts,
    /// Most bytes of messages a join replays and a room's stream keeps
    /// (`--history-bytes`).
    replay_bytes: usize,
    /// Joins sent to Redis and not answered yet, at most
    /// [`MAX_JOINS_IN_FLIGHT`].
    joins_in_flight: tokio::sync::Semaphore,
    /// Messages each room keeps and a join replays (`--history`).
    history: usize,
    /// How long a room nobody is in is kept after its last message, in ms
    /// (`--keep-for`).
    keep_for_ms: u64,
    /// Largest room whose joins and leaves are announced one by one
    /// (`--presence-limit`).
    presence_limit: usize,
}

/// Joins and history pages a node has sent to Redis and not seen answered,
/// at once. Each answer may carry `--history-bytes` of replay (or a page of
/// [`HISTORY_PAGE_BYTES`]): without this bound, requests coming faster than
/// Redis answers would queue scripts on the connection and their answers in
/// Redis's output buffer, without limit. A join that waits longer than
/// [`REDIS_TIMEOUT`] for its turn fails (1013, try again), and so does a
/// page (the client is told to try again).
pub const MAX_JOINS_IN_FLIGHT: usize = 4;

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connections and scripts say nothing useful.
        f.debug_struct("Redis")
            .field("node", &self.node)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// The connections commands go through. Each answers in order, so a
/// command waits behind those sent before it on the same connection: joins,
/// whose replays are the largest answers, have their own, and the heartbeat,
/// which decides whether the link is up, has its own, so that neither a
/// burst of joins nor its replies can delay it.
#[derive(Clone)]
struct Links {
    /// Messages, renames, leaves, `/who`, presence ticks.
    commands: MultiplexedConnection,
    /// Joins.
    joins: MultiplexedConnection,
    /// The heartbeat.
    beats: MultiplexedConnection,
}

/// What the join script returns.
type JoinScriptReply = (String, u8, usize, String, u64, u64, Vec<String>);

/// Published when a returning session took its name back: the node holding
/// the old connection retires it.
#[derive(Debug, serde::Deserialize)]
struct Retire<'a> {
    /// The name's key.
    #[serde(borrow)]
    key: crate::protocol::Str<'a>,
    /// The node the session returned to, which retires its own old
    /// connection itself.
    #[serde(borrow)]
    node: crate::protocol::Str<'a>,
}
/// What the rejoin script returns.
type RejoinScriptReply = (usize, String, u64, u64, Vec<String>);
/// What the page script returns: whether older messages exist, and the
/// messages as published, oldest first.
type PageScriptReply = (u8, Vec<String>);

/// The Lua scripts, each prefixed with the helpers they share.
struct Scripts {
    join: Script,
    say: Script,
    leave: Script,
    rename: Script,
    tick: Script,
    rejoin: Script,
    who: Script,
    page: Script,
    /// A ban's or mute's record against a holder, written only while the
    /// one by name it follows is still there (an unban that came first must
    /// not be undone by it), and the room holds fewer than its bound.
    holder: Script,
    /// Deletes the fields starting with a prefix (an unban: the ban by name
    /// and those against its holders), in one step with any write.
    lift: Script,
    /// Deletes fields whose values are still those read (expired ones), so
    /// that one written again meanwhile stays.
    forget: Script,
}

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("redis/common.lua"), include_str!($file)))
    };
}

impl Scripts {
    fn new() -> Self {
        Self {
            join: script!("redis/join.lua"),
            holder: Script::new(
                "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 \
                 and redis.call('HLEN', KEYS[1]) < tonumber(ARGV[4]) then \
                 redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) return 1 end return 0",
            ),
            lift: Script::new(
                "local n = 0 \
                 for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do \
                 if string.sub(f, 1, #ARGV[1]) == ARGV[1] then \
                 redis.call('HDEL', KEYS[1], f) n = n + 1 end end return n",
            ),
            forget: Script::new(
                "for i = 1, #ARGV, 2 do \
                 if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then \
                 redis.call('HDEL', KEYS[1], ARGV[i]) end end return 0",
            ),
            say: script!("redis/say.lua"),
            leave: script!("redis/leave.lua"),
            rename: script!("redis/rename.lua"),
            tick: script!("redis/tick.lua"),
            rejoin: script!("redis/rejoin.lua"),
            who: script!("redis/who.lua"),
            page: script!("redis/page.lua"),
        }
    }
}

impl Redis {
    /// Connects to Redis at `url`, so that a wrong URL or an unreachable
    /// server stops the node at start-up rather than later; with `config`'s
    /// history and presence bounds.
    pub(crate) async fn connect(url: &str, config: &ServerConfig) -> Result<Arc<Self>, LinkError> {
        let client = Client::open(url).map_err(LinkError::InvalidUrl)?;
        let cluster = Self {
            client,
            node: new_epoch(),
            up: AtomicBool::new(false),
            commands: std::sync::Mutex::default(),
            subscriptions: tokio::sync::Mutex::default(),
            first: std::sync::Mutex::default(),
            scripts: Scripts::new(),
            replay_bytes: config.history_bytes,
            joins_in_flight: tokio::sync::Semaphore::new(MAX_JOINS_IN_FLIGHT),
            history: config.history,
            keep_for_ms: u64::try_from(config.keep_for.as_millis()).unwrap_or(u64::MAX),
            presence_limit: config.presence_limit,
        };
        let (mut links, sink, stream) = cluster.open().await?;
        cluster.beat(&mut links.beats).await?;
        *lock(&cluster.commands) = Some(links);
        *cluster.subscriptions.lock().await = Some(sink);
        *lock(&cluster.first) = Some(stream);
        cluster.up.store(true, Ordering::Release);
        Ok(Arc::new(cluster))
    }

    /// Whether the link is up; when it is not, the node is in degraded mode.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    async fn open(&self) -> Result<(Links, PubSubSink, PubSubStream), LinkError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let connect = || self.client.get_multiplexed_async_connection_with_config(&config);
        let links =
            Links { commands: connect().await?, joins: connect().await?, beats: connect().await? };
        let pubsub = within(self.client.get_async_pubsub()).await?;
        let (sink, stream) = pubsub.split();
        Ok((links, sink, stream))
    }

    /// Renews this node's heartbeat key.
    async fn beat(&self, commands: &mut MultiplexedConnection) -> Result<(), LinkError> {
        let ttl = u64::try_from(NODE_TTL.as_millis()).unwrap_or(u64::MAX);
        redis::cmd("SET")
            .arg(node_key(&self.node))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .exec_async(commands)
            .await?;
        Ok(())
    }

    fn links(&self) -> Result<Links, LinkError> {
        if !self.is_up() {
            return Err(LinkError::Down);
        }
        lock(&self.commands).clone().ok_or(LinkError::Down)
    }

    fn commands(&self) -> Result<MultiplexedConnection, LinkError> {
        self.links().map(|links| links.commands)
    }

    /// Starts a script call on `room` with the arguments every script takes.
    fn invoke<'a>(&self, script: &'a Script, room: &str) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for part in ["meta", "log", "names", "nodes"] {
            invocation.key(format!("{PREFIX}:room:{room}:{part}"));
        }
        invocation.arg(channel(room)).arg(room).arg(&self.node).arg(now().to_rfc3339());
        invocation.arg(self.presence_limit).arg(self.keep_for_ms);
        invocation
    }

    /// Receives `room`'s messages from now on.
    pub(crate) async fn subscribe(&self, room: &str) -> Result<(), LinkError> {
        let mut subscriptions = self.subscriptions.lock().await;
        let sink = subscriptions.as_mut().ok_or(LinkError::Down)?;
        within(sink.subscribe(channel(room))).await
    }

    /// Stops receiving `room`'s messages, in the background, unless
    /// `events` has clients there again by then.
    pub(crate) fn unsubscribe_later(self: Arc<Self>, room: &str, events: Arc<dyn Events>) {
        let room = room.to_owned();
        spawn(async move { self.unsubscribe(&room, &*events).await });
    }

    async fn unsubscribe(&self, room: &str, events: &dyn Events) {
        let mut subscriptions = self.subscriptions.lock().await;
        if let Some(sink) = subscriptions.as_mut()
            && events.local_room(room).is_none()
            && let Err(error) = within(sink.unsubscribe(channel(room))).await
        {
            // The link is failing; reconnecting subscribes afresh anyway.
            warn!(%error, room, "cannot unsubscribe");
        }
    }

    /// Gives a client a name in `room` (the one it asked for if free, else
    /// `fallback`), announces it, and returns the room's state.
    pub(crate) async fn join(&self, room: &str, join: &Join<'_>) -> Result<Joined, LinkError> {
        let mut commands = self.links()?.joins;
        let turn = timeout(REDIS_TIMEOUT, self.joins_in_flight.acquire()).await;
        let Ok(Ok(_turn)) = turn else { return Err(LinkError::Timeout) };
        let mut invocation = self.invoke(&self.scripts.join, room);
        let (name, key) = join.requested.as_ref().map_or(("", ""), |(n, k)| (*n, k.as_str()));
        invocation.arg(name).arg(key).arg(join.presented.unwrap_or_default());
        invocation.arg(join.session).arg(new_epoch()).arg(join.floor);
        let (epoch, since) = join.resume.map_or(("", -1), |(e, s)| (e, i128::from(s)));
        invocation.arg(epoch).arg(since.to_string()).arg(self.history).arg(self.replay_bytes);
        invocation.arg(join.sub.unwrap_or_default());
        for (name, key) in join.candidates {
            invocation.arg(name).arg(key);
        }
        let (name, claim, online, epoch, seq, first, history): JoinScriptReply =
            invocation.invoke_async(&mut commands).await?;
        let outcome = match claim {
            0 => Claim::Granted,
            1 => Claim::Taken,
            _ => Claim::Held,
        };
        Ok(Joined { name, outcome, online, room: Snapshot { epoch, seq, first, history } })
    }

    /// Numbers, keeps and publishes a message event; returns its seq.
    /// `floor` is the last seq this node delivered in the room, from which
    /// numbering goes on if Redis lost the room or went back in time.
    pub(crate) async fn say(&self, room: &str, event: &str, floor: u64) -> Result<u64, LinkError> {
        let mut commands = self.commands()?;
        let mut invocation = self.invoke(&self.scripts.say, room);
        invocation.arg(event).arg(self.history).arg(new_epoch()).arg(floor).arg(self.replay_bytes);
        Ok(invocation.invoke_async(&mut commands).await?)
    }

    /// Renames a client of session `session`; `false` if the new name (or
    /// one that looks like it) is held.
    pub(crate) async fn rename(
        &self,
        room: &str,
        old: &str,
        new: &str,
        session: &str,
    ) -> Result<bool, LinkError> {
        let mut commands = self.commands()?;
        let mut invocation = self.invoke(&self.scripts.rename, room);
        invocation.arg(name_key(old)).arg(session).arg(new).arg(name_key(new)).arg(old);
        let renamed: u8 = invocation.invoke_async(&mut commands).await?;
        Ok(renamed == 1)
    }

    /// Releases the name of key `key`, if session `session` of this node
    /// still holds it, and announces its departure; in the background. If
    /// the link is down, its recovery releases the name.
    pub(crate) fn leave_later(self: Arc<Self>, room: &str, key: &str, session: &str) {
        let (room, key, session) = (room.to_owned(), key.to_owned(), session.to_owned());
        spawn(async move {
            if let Err(error) = self.leave(&room, &key, &session).await {
                warn!(%error, room, "cannot announce a departure");
            }
        });
    }

    async fn leave(&self, room: &str, key: &str, session: &str) -> Result<(), LinkError> {
        let mut commands = self.commands()?;
        let mut invocation = self.invoke(&self.scripts.leave, room);
        invocation.arg(key).arg(session);
        Ok(invocation.invoke_async(&mut commands).await?)
    }

    /// `room`'s active bans and mutes, from its sanctions hash (field
    /// `ACTION KEY SUBJECT`, value the [`Sanction`] in JSON); the expired
    /// ones are deleted.
    pub(crate) async fn sanctions(&self, room: &str) -> Result<Vec<Sanction>, LinkError> {
        let mut commands = self.commands()?;
        let all: Vec<(String, String)> =
            within(redis::cmd("HGETALL").arg(sanctions_key(room)).query_async(&mut commands))
                .await?;
        let now = unix_ms();
        let mut active = Vec::new();
        let mut forget = self.scripts.forget.prepare_invoke();
        forget.key(sanctions_key(room));
        let mut expired = false;
        for (field, value) in all {
            match serde_json::from_str::<Sanction>(&value) {
                Ok(sanction) if sanction.active(now) => active.push(sanction),
                _ => {
                    forget.arg(field).arg(value);
                    expired = true;
                }
            }
        }
        if expired {
            within(forget.invoke_async::<()>(&mut commands)).await?;
        }
        Ok(active)
    }

    /// Records a ban or mute in `room`, in place of the one of the same
    /// action, key and subject; false when the room holds
    /// [`MAX_SANCTIONS_PER_ROOM`] already. One against a holder goes
    /// through the `holder` script.
    pub(crate) async fn sanction(
        &self,
        room: &str,
        sanction: &Sanction,
    ) -> Result<bool, LinkError> {
        if sanction.subject.is_some() {
            return self.sanction_holder(room, sanction).await;
        }
        let mut commands = self.commands()?;
        let key = sanctions_key(room);
        let field = sanction_field(sanction.action, &sanction.key, None);
        let (held, exists): (usize, bool) = within(
            redis::pipe()
                .cmd("HLEN")
                .arg(&key)
                .cmd("HEXISTS")
                .arg(&key)
                .arg(&field)
                .query_async(&mut commands),
        )
        .await?;
        if held >= MAX_SANCTIONS_PER_ROOM && !exists {
            // Perhaps expired ones: read (and delete) them, then look again.
            if self.sanctions(room).await?.len() >= MAX_SANCTIONS_PER_ROOM {
                return Ok(false);
            }
        }
        let value = serde_json::to_string(sanction).unwrap_or_default();
        within(redis::cmd("HSET").arg(&key).arg(field).arg(value).query_async::<()>(&mut commands))
            .await?;
        Ok(true)
    }

    /// Records a ban or mute against a holder (its `subject`), if the one
    /// by name it follows is still there; false when it is not.
    async fn sanction_holder(&self, room: &str, sanction: &Sanction) -> Result<bool, LinkError> {
        let mut commands = self.commands()?;
        let by_name = sanction_field(sanction.action, &sanction.key, None);
        let field = sanction_field(sanction.action, &sanction.key, sanction.subject.as_deref());
        let value = serde_json::to_string(sanction).unwrap_or_default();
        let mut invocation = self.scripts.holder.prepare_invoke();
        invocation.key(sanctions_key(room)).arg(by_name).arg(field).arg(value);
        invocation.arg(MAX_SANCTIONS_PER_ROOM);
        let written: u8 = within(invocation.invoke_async(&mut commands)).await?;
        Ok(written == 1)
    }

    /// Lifts `room`'s bans (or mutes) of key `key`; false when there was none.
    pub(crate) async fn lift(
        &self,
        room: &str,
        action: Action,
        key: &str,
    ) -> Result<bool, LinkError> {
        let mut commands = self.commands()?;
        // Keys hold no spaces: the prefix is of this key's fields only.
        let mut invocation = self.scripts.lift.prepare_invoke();
        invocation.key(sanctions_key(room)).arg(sanction_field(action, key, None));
        let lifted: usize = within(invocation.invoke_async(&mut commands)).await?;
        Ok(lifted > 0)
    }

    /// Whether the name of key `key` is held in `room` on any node.
    pub(crate) async fn holds(&self, room: &str, key: &str) -> Result<bool, LinkError> {
        let mut commands = self.commands()?;
        let names = format!("{PREFIX}:room:{room}:names");
        within(redis::cmd("HEXISTS").arg(names).arg(key).query_async(&mut commands)).await
    }

    /// Publishes `event` to every node with clients in `room`.
    pub(crate) async fn publish(&self, room: &str, event: &Event<'_>) -> Result<(), LinkError> {
        let mut commands = self.commands()?;
        let payload = serde_json::to_string(event).unwrap_or_default();
        within(redis::cmd("PUBLISH").arg(channel(room)).arg(payload).query_async(&mut commands))
            .await
    }

    /// How many are in `room` on all nodes, and the first names in order.
    pub(crate) async fn who(&self, room: &str) -> Result<(usize, Vec<String>), LinkError> {
        let mut commands = self.commands()?;
        let mut invocation = self.invoke(&self.scripts.who, room);
        invocation.arg(MAX_WHO_NAMES);
        Ok(invocation.invoke_async(&mut commands).await?)
    }

    /// `room`'s messages numbered below `before`, oldest first, from its
    /// stream: at most `limit` (and [`HISTORY_PAGE_MESSAGES`]), and
    /// [`HISTORY_PAGE_BYTES`] of text and senders' names, one message at
    /// least; with whether older ones are kept. One script reads only what
    /// the page holds, plus one message to tell whether there is more.
    pub(crate) async fn page(
        &self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Result<super::Page, LinkError> {
        let mut commands = self.links()?.joins;
        // Nothing is numbered below 1.
        let Some(highest) = before.checked_sub(1).filter(|&highest| highest > 0) else {
            return Ok(super::Page { messages: Vec::new(), more: false });
        };
        // Its answer is as large as a join's: it waits for the same turn.
        let turn = timeout(REDIS_TIMEOUT, self.joins_in_flight.acquire()).await;
        let Ok(Ok(_turn)) = turn else { return Err(LinkError::Timeout) };
        let mut invocation = self.invoke(&self.scripts.page, room);
        invocation.arg(highest).arg(limit.min(HISTORY_PAGE_MESSAGES)).arg(HISTORY_PAGE_BYTES);
        let (more, published): PageScriptReply = invocation.invoke_async(&mut commands).await?;
        let messages = published.iter().filter_map(|payload| past_message(room, payload)).collect();
        Ok(super::Page { messages, more: more == 1 })
    }

    /// Keeps the link until `shutdown`: delivers what Redis publishes to the
    /// hub, beats, and when Redis is lost, puts the hub in degraded mode and
    /// reconnects with backoff.
    pub async fn run(
        self: Arc<Self>,
        events: Arc<dyn Events>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        let mut stream = lock(&self.first).take();
        let mut attempts = 0;
        metrics.cluster_link_up.set(i64::from(self.is_up()));
        loop {
            if let Some(messages) = stream.take() {
                attempts = 0;
                let failure = tokio::select! {
                    () = shutdown.cancelled() => {
                        self.goodbye().await;
                        return;
                    }
                    failure = self.serve(&*events, &metrics, messages) => failure,
                };
                warn!(error = %failure, "lost the link to Redis: degraded mode");
                self.up.store(false, Ordering::Release);
                *self.subscriptions.lock().await = None;
                *lock(&self.commands) = None;
                metrics.cluster_link_up.set(0);
                metrics.cluster_outages.inc();
                events.link_down();
            }
            attempts += 1;
            let delay = backoff(attempts, RECONNECT_FIRST, RECONNECT_MAX);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sleep(delay) => {}
            }
            match self.reconnect(&*events).await {
                Ok(messages) => {
                    info!("link to Redis restored");
                    // Ready before saying so: a client told may send at once.
                    metrics.cluster_link_up.set(1);
                    events.link_up();
                    stream = Some(messages);
                }
                Err(error) => warn!(%error, retry_in = ?delay, "cannot reconnect to Redis"),
            }
        }
    }

    /// Delivers messages and beats until the link fails; returns why.
    async fn serve(
        &self,
        events: &dyn Events,
        metrics: &Metrics,
        mut messages: PubSubStream,
    ) -> LinkError {
        let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut answered = Instant::now();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return LinkError::Unsubscribed };
                    let Some(room) = message.get_channel_name().strip_prefix(CHANNEL_PREFIX) else {
                        continue;
                    };
                    metrics.cluster_received.inc();
                    if let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) {
                        if self.deliver(events, room, payload)
                            && let Err(error) = self.reclaim(events, room).await
                        {
                            if error.is_dead_link() {
                                return error;
                            }
                            warn!(%error, room, "cannot claim the names again after a reset");
                        }
                    } else {
                        warn!(room, "ignored a message that is not UTF-8");
                    }
                }
                _ = ticks.tick() => match self.tick(events).await {
                    Ok(()) => answered = Instant::now(),
                    Err(error) if error.is_dead_link() => return error,
                    // Slow, not gone (a burst of requests ahead of the
                    // heartbeat): only a silence as long as LINK_TIMEOUT is.
                    Err(error) if answered.elapsed() >= LINK_TIMEOUT => {
                        warn!(%error, "Redis answered no heartbeat for too long");
                        return LinkError::Unanswered;
                    }
                    Err(error) => warn!(%error, "a heartbeat failed; the link is kept"),
                },
            }
        }
    }

    /// Hands what Redis published in `room` to `events`. Returns whether
    /// Redis lost the room, which this node's clients were in: their names
    /// must be claimed again.
    fn deliver(&self, events: &dyn Events, room: &str, payload: &str) -> bool {
        match serde_json::from_str::<Event<'_>>(payload) {
            // Published by Redis when it had to draw the room a new epoch.
            Ok(Event::Missed { count: None, epoch: Some(epoch) }) => events.reset(room, &epoch),
            Ok(event) => {
                events.deliver(room, &event, payload.len());
                false
            }
            Err(error) => {
                match serde_json::from_str::<Retire<'_>>(payload) {
                    // A returning session joined on another node: its old
                    // connection here goes. (This node retires its own.)
                    Ok(retire) if retire.node != self.node => events.retire(room, &retire.key),
                    Ok(_) => {}
                    Err(_) => warn!(%error, room, "ignored an event from Redis"),
                }
                false
            }
        }
    }

    /// One heartbeat: the node's key, then each local room's presence. Only
    /// the key says whether Redis answers: a room's script that fails is
    /// logged and tried again at the next heartbeat, unless the connection
    /// itself failed.
    async fn tick(&self, events: &dyn Events) -> Result<(), LinkError> {
        let Links { mut commands, mut beats, .. } = self.links()?;
        self.beat(&mut beats).await?;
        for room in events.local_rooms() {
            let mut invocation = self.invoke(&self.scripts.tick, &room);
            // Where this node got to, so that a Redis that lost the room or
            // went back in time is found within a heartbeat, not at the next
            // message; only while the node has clients there.
            if let Some(local) = events.local_room(&room)
                && !local.holders.is_empty()
            {
                invocation.arg(new_epoch()).arg(local.seq);
            }
            let ticked: Result<(), LinkError> =
                invocation.invoke_async(&mut commands).await.map_err(LinkError::from);
            match ticked {
                Err(error) if error.is_dead_link() => return Err(error),
                Err(error) => warn!(%error, room, "presence tick failed"),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// Opens new connections, subscribes to every local room, claims the
    /// local clients' names again and catches each room up from history.
    async fn reconnect(&self, events: &dyn Events) -> Result<PubSubStream, LinkError> {
        let (mut links, mut sink, stream) = self.open().await?;
        self.beat(&mut links.beats).await?;
        // Holding the lock keeps rooms from (un)subscribing meanwhile; joins
        // wait for the link to be up anyway.
        let mut subscriptions = self.subscriptions.lock().await;
        let rooms = events.local_rooms();
        for room in &rooms {
            within(sink.subscribe(channel(room))).await?;
        }
        // Subscribed first, caught up second: a message published in between
        // comes both ways, and the hub keeps only the first.
        for room in &rooms {
            self.rejoin(&mut links.commands, events, room).await?;
        }
        *subscriptions = Some(sink);
        *lock(&self.commands) = Some(links);
        self.up.store(true, Ordering::Release);
        Ok(stream)
    }

    /// Claims this node's clients' names in `room` again and catches the
    /// room up from where this node got to, within the same bounds as a
    /// client's resume.
    async fn rejoin(
        &self,
        commands: &mut MultiplexedConnection,
        events: &dyn Events,
        room: &str,
    ) -> Result<(), LinkError> {
        // Gone meanwhile: nothing to claim.
        let Some(local) = events.local_room(room) else { return Ok(()) };
        let mut invocation = self.invoke(&self.scripts.rejoin, room);
        invocation.arg(new_epoch()).arg(local.seq).arg(&local.epoch);
        invocation.arg(self.history).arg(self.replay_bytes);
        for holder in &local.holders {
            invocation.arg(&holder.key).arg(&holder.name);
            match &holder.held {
                Held::Session(session) => invocation.arg("").arg(session),
                Held::Person { sub, connections } => invocation.arg(sub).arg(connections),
            };
        }
        let (clashes, epoch, seq, first, history): RejoinScriptReply =
            invocation.invoke_async(commands).await?;
        if clashes > 0 {
            warn!(room, clashes, "names taken on other nodes while the link was down");
        }
        events.recover(room, &Snapshot { epoch, seq, first, history });
        Ok(())
    }

    /// After Redis lost `room` (its data flushed under a live link): this
    /// node's clients are put back in it, before anything else is delivered,
    /// so that the room is not taken for empty and forgotten again.
    pub(crate) async fn reclaim(&self, events: &dyn Events, room: &str) -> Result<(), LinkError> {
        let Links { mut commands, mut beats, .. } = self.links()?;
        // The heartbeat key went with the rest: without it, the next script
        // would take this node for dead and drop its clients again.
        self.beat(&mut beats).await?;
        self.rejoin(&mut commands, events, room).await
    }

    /// At shutdown: the heartbeat key goes at once, so the other nodes remove
    /// this node's clients at their next heartbeat rather than after the TTL.
    async fn goodbye(&self) {
        if let Ok(mut commands) = self.commands() {
            let mut delete = redis::cmd("DEL");
            delete.arg(node_key(&self.node));
            if let Err(error) = within(delete.exec_async(&mut commands)).await {
                warn!(%error, "cannot remove the heartbeat key");
            }
        }
        self.up.store(false, Ordering::Release);
    }
}

const CHANNEL_PREFIX: &str = "chat:room:";

/// A message as `say.lua` kept it, for a history page; anything else in the
/// stream (written by another version) is skipped, with a warning.
fn past_message(room: &str, payload: &str) -> Option<PastMessage<'static>> {
    let Ok(Event::Message { seq, from, text, ts, .. }) = serde_json::from_str::<Event<'_>>(payload)
    else {
        warn!(room, "skipped a history entry that is not a message");
        return None;
    };
    Some(PastMessage { seq, from: from.into_owned().into(), text: text.into_owned().into(), ts })
}

fn channel(room: &str) -> String {
    format!("{CHANNEL_PREFIX}{room}")
}

/// The hash of `room`'s bans and mutes. Never expires with the room: they
/// outlive it, and expire one by one as they are read.
fn sanctions_key(room: &str) -> String {
    format!("{PREFIX}:room:{room}:sanctions")
}

/// A field of the sanctions hash: `ACTION KEY SUBJECT` (names hold no
/// spaces; the subject is empty for a ban of a name alone).
fn sanction_field(action: Action, key: &str, subject: Option<&str>) -> String {
    format!("{} {key} {}", action.command(), subject.unwrap_or_default())
}

fn node_key(node: &str) -> String {
    format!("{PREFIX}:node:{node}")
}

/// Runs a Redis call on its own, if the runtime still runs: a member
/// dropped as the process exits leaves its name to the other nodes'
/// heartbeat.
fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(task);
    }
}

/// A Redis call bounded by [`REDIS_TIMEOUT`].
async fn within<T>(call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, LinkError> {
    Ok(timeout(REDIS_TIMEOUT, call).await.map_err(|_| LinkError::Timeout)??)
}
