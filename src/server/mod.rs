//! The chat server. Map:
//! - this file: the accept loop and graceful shutdown ([`run`]);
//! - [`config`]: flags, their defaults, and the fixed bounds;
//! - `http`: reads and checks the HTTP request, answers the page,
//!   `/healthz` and `/metrics`, and routes upgrades;
//! - `connection`: one client: reads its frames, writes what its room sends;
//! - `commands`: what a client's commands do (a message, `/nick`, `/who`);
//! - `wire`: the socket under tokio-websockets, which writes frames encoded once;
//! - `hub`: this node's rooms, their locks, recent history and fan-out;
//! - `backend`: what nodes share (names, numbering, history, presence),
//!   in-process or in Redis;
//! - [`identity`]: checks identity tokens (JWT) against the configured key;
//! - `limit`, `address`, `origin`: flood control, per-address bounds, and
//!   the Origin and Host checks;
//! - `metrics`: the counters behind `GET /metrics`;
//! - `api`, `ticket`: the HTTP API for programs (`/api/`, served by hyper)
//!   and the page's single-use tickets.
//!
//! The accept loop takes connections from a bound listener, runs each in its
//! own task, and shuts everything down gracefully when told to.
//!
//! Like mini-redis, [`run`] takes a listener that is already bound and a
//! shutdown future, so tests bind port 0 and stop the server at will.

pub(crate) mod address;
pub(crate) mod api;
pub(crate) mod backend;
pub(crate) mod commands;
pub mod config;
pub(crate) mod connection;
pub(crate) mod http;
pub(crate) mod hub;
pub mod identity;
pub(crate) mod limit;
pub(crate) mod metrics;
pub(crate) mod origin;
pub(crate) mod ticket;
pub(crate) mod wire;

pub use address::{AddressKey, client_address, parse_proxy};
pub use backend::{Backend, BackendError, LINK_DOWN, LINK_UP};

pub use origin::{OwnOrigins, PublicUrl};

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::HeaderValue;
use ::http::header::SEC_WEBSOCKET_PROTOCOL;
use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_websockets::{CloseCode, Limits, Message, ServerBuilder};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::protocol::{ChatRequest, JSON_PROTOCOL, Protocol};
use crate::server::address::{AddressLimits, Addresses, Full, SWEEP_INTERVAL, Slot};
use crate::server::config::{
    ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_START, BUSY_RETRY_AFTER_SECONDS, CLOSE_TIMEOUT,
    ConnectionLimits, HANDSHAKE_TIMEOUT, MAX_PENDING_REFUSALS, PRESENCE_INTERVAL, SHUTDOWN_TIMEOUT,
    STORE_CLOSE_TIMEOUT, ServerConfig,
};
use crate::server::http::{
    Access, Answer, Handshake, HandshakeError, read_head, read_request, refuse, respond,
};
use crate::server::hub::ring::Budget;
use crate::server::hub::{Hub, JoinError, Restriction, subject};
use crate::server::metrics::Metrics;
use crate::server::wire::Wire;
use connection::Setup;

/// Serves chat on `listener` (over TLS when `tls` is given, sharing rooms
/// with other nodes through `backend` when it is shared) until `shutdown` completes,
/// then closes every connection with code 1001 and returns once they are gone
/// (or after [`SHUTDOWN_TIMEOUT`]).
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    tls: Option<TlsAcceptor>,
    backend: Backend,
    shutdown: impl Future<Output = ()>,
) {
    let metrics = Arc::new(Metrics::new(backend.is_shared(), backend.store_counters()));
    metrics.memory_limit_bytes.set(i64::try_from(config.max_memory).unwrap_or(i64::MAX));
    let budget = Arc::new(Budget::new(config.max_memory, metrics.memory_bytes.clone()));
    let hub = Hub::new(&config, budget, backend.clone());
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(summarize_presence(hub.clone(), metrics.clone(), token.clone()));
    let access = access(&config, &listener, tls.is_some());
    let addresses = access.addresses.clone();
    tracker.spawn(forget_idle_addresses(addresses.clone(), token.clone()));
    tracker.spawn(backend.clone().run(hub.clone(), metrics.clone(), token.clone()));
    let context = Arc::new(Context {
        hub: hub.clone(),
        metrics: metrics.clone(),
        websockets: websockets(&config, Protocol::Text),
        websockets_json: websockets(&config, Protocol::Json),
        limits: config.limits(),
        access,
        tls: tls.clone(),
        // A permit per chat connection, taken once the request is read.
        slots: Arc::new(Semaphore::new(config.max_connections)),
        addresses,
        api: api::Api::new(config.api_key.clone()),
    });

    // A permit per connection in its handshake, overall and per address
    // (trusted proxies exempt); past either, a few connections are told to
    // come back later, without reading their request, and the rest are
    // closed at once.
    let handshakes = Arc::new(Semaphore::new(config.max_handshakes));
    let refusals = Arc::new(Semaphore::new(MAX_PENDING_REFUSALS));

    tokio::pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF_START;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_START;
                let Some((handshake, stream)) =
                    admit(&context, &handshakes, &refusals, stream, peer)
                else {
                    continue;
                };
                let span = info_span!("conn", %peer, room = tracing::field::Empty, name = tracing::field::Empty);
                // Chat frames are small and latency matters more than packet
                // count; the writer batches on its own.
                if let Err(error) = stream.set_nodelay(true) {
                    debug!(%error, "cannot set TCP_NODELAY");
                }
                let start = Start {
                    peer,
                    handshake,
                    deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                    context: context.clone(),
                    shutdown: token.clone(),
                    tracker: tracker.clone(),
                };
                // Two kinds of task, so that plain connections do not carry
                // the TLS state.
                match &context.tls {
                    None => tracker.spawn(upgrade_and_join(stream, start).instrument(span)),
                    Some(tls) => tracker
                        .spawn(tls_upgrade_and_join(tls.clone(), stream, start).instrument(span)),
                };
            }
            Err(error) if is_per_connection(&error) => {
                debug!(%error, "accept failed for one connection");
            }
            Err(error) => {
                // Typically out of file descriptors: wait for some to be freed.
                error!(%error, retry_in = ?backoff, "accept failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }

    info!(connections = tracker.len(), "shutting down");
    token.cancel();
    tracker.close();
    // While connections close, whoever knocks (a health check, a client
    // reconnecting) is told 503 rather than finding the port closed.
    let turn_away = turn_away_all(&listener, &refusals, tls.as_ref());
    tokio::select! {
        waited = timeout(SHUTDOWN_TIMEOUT, tracker.wait()) => if waited.is_err() {
            warn!(left = tracker.len(), "some connections did not close in time");
        },
        () = turn_away => {}
    }
    // Every room left is settled by now: the store stops clean.
    backend.close(STORE_CLOSE_TIMEOUT).await;
}

/// Who may connect, and the per-address table.
fn access(config: &ServerConfig, listener: &TcpListener, secure: bool) -> Access {
    // The own origins are those of the address actually bound (port 0 too).
    let own = match listener.local_addr() {
        Ok(bound) => OwnOrigins::new(bound, secure, config.public_url.clone()),
        Err(error) => {
            warn!(%error, "cannot read the bound address: origins are matched with Host");
            OwnOrigins::default()
        }
    };
    Access {
        allowed_origins: config.allow_origin.clone(),
        token: config.token.clone(),
        jwt: crate::server::identity::Verifier::from_config(config).map(Arc::new),
        guests: config.guests,
        tickets: Arc::default(),
        own,
        proxies: config.trusted_proxy.clone(),
        addresses: Addresses::new(AddressLimits {
            handshakes: config.max_handshakes_per_ip,
            connections: config.max_connections_per_ip,
            joins_per_second: config.joins_per_ip,
            auth_failures_per_minute: config.auth_failures_per_ip,
        }),
    }
}

/// How connections of `protocol` are upgraded.
fn websockets(config: &ServerConfig, protocol: Protocol) -> ServerBuilder {
    let builder = ServerBuilder::new()
        .limits(Limits::default().max_payload_len(Some(config.max_frame_bytes())));
    match protocol {
        Protocol::Text => builder,
        // Answer that the JSON subprotocol was chosen.
        Protocol::Json => builder
            .add_header(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(JSON_PROTOCOL))
            .expect("Sec-WebSocket-Protocol is an allowed response header"),
    }
}

/// A connection's handshake slots, overall and of its address; `None` when
/// either is full, after telling the client so (or closing it).
fn admit(
    context: &Context,
    handshakes: &Arc<Semaphore>,
    refusals: &Arc<Semaphore>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<((OwnedSemaphorePermit, Slot), TcpStream)> {
    let key = AddressKey::of(peer.ip());
    let proxy = context.access.proxies.iter().any(|net| net.contains(&peer.ip()));
    let admitted = match handshakes.clone().try_acquire_owned() {
        Ok(permit) => match context.addresses.handshake(key, proxy) {
            Ok(slot) => Ok((permit, slot)),
            Err(Full::Address) => Err((429, "address_handshakes")),
            Err(Full::Table) => Err((503, "addresses_full")),
        },
        Err(_) => Err((503, "handshakes_full")),
    };
    let (status, reason) = match admitted {
        Ok(handshake) => return Some((handshake, stream)),
        Err(refused) => refused,
    };
    context.metrics.refuse(reason);
    match refusals.clone().try_acquire_owned() {
        // Over TLS, an answer would need the handshake this slot is for.
        Ok(permit) if context.tls.is_none() => {
            debug!(%peer, reason, "busy: told to come back later");
            tokio::spawn(refuse_busy(stream, status, permit));
        }
        _ => debug!(%peer, reason, "busy: closed without an answer"),
    }
    None
}

/// Tells a connection past a handshake cap to come back later: the answer is
/// written at once, without waiting for a request that a slow client may
/// never finish, then what it sends is read (briefly, and bounded) so that
/// closing does not reset the connection before it reads the answer.
async fn refuse_busy(mut stream: TcpStream, status: u16, permit: OwnedSemaphorePermit) {
    let _permit = permit;
    let answer = Answer {
        retry_after: Some(Duration::from_secs(BUSY_RETRY_AFTER_SECONDS)),
        ..Answer::text(status, "too many connections at once: try again later".into())
    };
    let _ = timeout(CLOSE_TIMEOUT, async {
        // Counted by the caller, before the answer.
        respond(&mut stream, answer, None).await;
        let _ = read_head(&mut stream).await;
    })
    .await;
}

/// Forgets, now and then, the addresses that hold nothing and owe nothing.
async fn forget_idle_addresses(addresses: Arc<Addresses>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => addresses.forget_idle(),
        }
    }
}

/// Answers every connection with 503, as many at once as `refusals` allows.
async fn turn_away_all(
    listener: &TcpListener,
    refusals: &Arc<Semaphore>,
    tls: Option<&TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            sleep(ACCEPT_BACKOFF_START).await;
            continue;
        };
        let Ok(permit) = refusals.clone().try_acquire_owned() else { continue };
        let tls = tls.cloned();
        tokio::spawn(async move {
            let _permit = permit;
            let answer = async {
                match tls {
                    None => turn_away(stream).await,
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            turn_away(stream).await;
                        }
                    }
                }
            };
            let _ = timeout(CLOSE_TIMEOUT, answer).await;
        });
    }
}

/// Tells a client that knocks during shutdown to come back later.
async fn turn_away<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    if read_head(&mut stream).await.is_ok() {
        let answer = Answer::text(503, "the server is shutting down".into());
        // Not counted: from now on nobody can read the metrics.
        respond(&mut stream, answer, None).await;
    }
}

/// Sends large rooms their join and leave summaries until shutdown.
async fn summarize_presence(hub: Arc<Hub>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(PRESENCE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                hub.summarize();
                metrics.rooms.set(i64::try_from(hub.room_count()).unwrap_or(i64::MAX));
            }
        }
    }
}

/// Errors that concern only the connection being accepted, not the listener.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// What every connection shares.
struct Context {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    websockets: ServerBuilder,
    websockets_json: ServerBuilder,
    limits: ConnectionLimits,
    access: Access,
    tls: Option<TlsAcceptor>,
    /// `--max-connections`.
    slots: Arc<Semaphore>,
    /// The same as `access.addresses`.
    addresses: Arc<Addresses>,
    /// `--api-key` and the API's publish rate.
    api: api::Api,
}

/// A chat client to join once upgraded: its request, subject and
/// restriction, its socket, and its slots.
type Joining<S> = (
    (ChatRequest, String, Restriction),
    Box<tokio_websockets::WebSocketStream<Wire<S>>>,
    OwnedSemaphorePermit,
    Slot,
);

/// What a connection's handshake came to: a chat client to join, or an API
/// client for hyper (boxed: the chat path's value is as large as it was).
#[allow(clippy::large_enum_variant)]
enum Upgraded<S> {
    Chat(Joining<S>),
    Api(Box<api::Handover<S>>),
}

/// What a connection's task starts with, besides its stream.
struct Start {
    peer: SocketAddr,
    /// The handshake's slots, overall and of its address: given back once
    /// the connection is upgraded or refused.
    handshake: (OwnedSemaphorePermit, Slot),
    /// When TLS and the upgrade must be done.
    deadline: Instant,
    context: Arc<Context>,
    shutdown: CancellationToken,
    /// Where the connection's own task is spawned after the handshake.
    tracker: TaskTracker,
}

/// A TLS connection: the TLS handshake, then [`upgrade_and_join`].
async fn tls_upgrade_and_join(tls: TlsAcceptor, stream: TcpStream, start: Start) {
    let accepted = tokio::select! {
        () = start.shutdown.cancelled() => return,
        accepted = timeout_at(start.deadline, tls.accept(stream)) => accepted,
    };
    match accepted {
        Ok(Ok(stream)) => upgrade_and_join(stream, start).await,
        Ok(Err(error)) => {
            debug!(%error, "TLS handshake failed");
            start.context.metrics.refuse("tls");
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            start.context.metrics.refuse("handshake_timeout");
        }
    }
}

/// The 409 of a token holder whose name looks like another's (another
/// `sub`) in the room it asks for.
fn look_alike(hub: &Hub, request: &ChatRequest) -> Option<Answer> {
    let identity = request.who.identity()?;
    hub.name_held_by_other(&request.room, identity).then(|| {
        let (name, room) = (&identity.name, &request.room);
        let text = format!("the name {name:?} looks like someone else's in room {room:?}");
        Answer { reason: Some("name_held"), ..Answer::text(409, text) }
    })
}

/// The chat slots, overall and of the client's address, held for the
/// whole connection; or the 503 or 429 that says they are all taken.
fn chat_slots(
    context: &Context,
    client: AddressKey,
) -> Result<(OwnedSemaphorePermit, Slot), Answer> {
    let wait = Duration::from_secs(BUSY_RETRY_AFTER_SECONDS);
    let Ok(slot) = context.slots.clone().try_acquire_owned() else {
        let reason = "the server is full: try again later".to_owned();
        return Err(Answer::busy(503, "full", wait, reason));
    };
    match context.addresses.connection(client) {
        Ok(address_slot) => Ok((slot, address_slot)),
        Err(full) => {
            let (status, reason, text) = match full {
                Full::Address => {
                    (429, "address_connections", "too many connections from your address")
                }
                Full::Table => (503, "addresses_full", "the server is full"),
            };
            Err(Answer::busy(status, reason, wait, format!("{text}: try again later")))
        }
    }
}

/// What `request` is held to in its room from `subject`: the 403 of a ban,
/// or its mute, if any.
async fn restriction(
    hub: &Hub,
    request: &ChatRequest,
    subject: &str,
) -> Result<Restriction, Answer> {
    match hub.restriction(request, subject).await {
        Ok(Restriction { banned: Some(told), .. }) => {
            Err(Answer { reason: Some("banned"), ..Answer::text(403, told) })
        }
        Ok(restriction) => Ok(restriction),
        // Not let in unchecked: the client tries again.
        Err(error) => {
            warn!(%error, "cannot read the room's bans");
            let wait = Duration::from_secs(BUSY_RETRY_AFTER_SECONDS);
            let text = "cannot check the room's bans right now: try again later".to_owned();
            Err(Answer::busy(503, "bans_unreadable", wait, text))
        }
    }
}

/// One connection's HTTP handshake and join; the chat itself is spawned as
/// [`connection::serve`]. Errors end here, logged.
async fn upgrade_and_join<S>(mut stream: S, start: Start)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Start { peer, handshake, deadline, context, shutdown, tracker } = start;
    let upgrading = context.clone();
    let upgrade = async move {
        let (request, read, client) =
            match read_request(&mut stream, peer.ip(), &upgrading.access, &upgrading.metrics)
                .await?
            {
                Handshake::Upgrade((request, read, client)) => (Some(request), read, client),
                Handshake::Api((read, client)) => (None, read, client),
                Handshake::Served { status } => {
                    debug!(status, "served without upgrading");
                    return Ok(None);
                }
            };
        let (slot, address_slot) = match chat_slots(&upgrading, client) {
            Ok(slots) => slots,
            Err(answer) => return Err(refuse(&mut stream, answer, Some(&upgrading.metrics)).await),
        };
        let Some(request) = request else {
            let handover = api::Handover { stream, read, client, slots: (slot, address_slot) };
            return Ok(Some(Upgraded::Api(Box::new(handover))));
        };
        // A look-alike of another token holder's name: refused before the
        // upgrade, so the client reads why (the join checks again).
        if let Some(answer) = look_alike(&upgrading.hub, &request) {
            return Err(refuse(&mut stream, answer, Some(&upgrading.metrics)).await);
        }
        // Bans, by name and by who it is: refused before the upgrade too.
        let subject = subject(&request.who, client);
        let restriction = match restriction(&upgrading.hub, &request, &subject).await {
            Ok(restriction) => restriction,
            Err(answer) => return Err(refuse(&mut stream, answer, Some(&upgrading.metrics)).await),
        };
        let websockets = match request.protocol {
            Protocol::Text => &upgrading.websockets,
            Protocol::Json => &upgrading.websockets_json,
        };
        let (_, ws) = websockets.accept(Wire::new(read, stream)).await.map_err(|error| {
            // tokio-websockets has answered 400 (bad upgrade headers).
            upgrading.metrics.refuse("bad_request");
            HandshakeError::Refused { status: 400, reason: error.to_string() }
        })?;
        // Boxed once here: not in the connection's future as well as in the
        // split halves' allocation (see `connection_futures_stay_small`).
        let joining = (request, subject, restriction);
        Ok::<_, HandshakeError>(Some(Upgraded::Chat((joining, Box::new(ws), slot, address_slot))))
    };
    let upgraded = tokio::select! {
        () = shutdown.cancelled() => return,
        upgraded = timeout_at(deadline, upgrade) => upgraded,
    };
    drop(handshake);
    let ((request, subject, restriction), mut ws, slot, address_slot) = match upgraded {
        Ok(Ok(Some(Upgraded::Chat(joining)))) => joining,
        Ok(Ok(Some(Upgraded::Api(handover)))) => {
            tracker.spawn(api::serve(*handover, context, shutdown).in_current_span());
            return;
        }
        // Answered already: nothing to join.
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            debug!(%error, "handshake failed");
            return;
        }
        Err(_) => {
            debug!("handshake timed out");
            context.metrics.refuse("handshake_timeout");
            return;
        }
    };

    let span = tracing::Span::current();
    span.record("room", request.room.as_str());
    let joined = match context.hub.join(&request, &peer.to_string(), &subject).await {
        Ok(joined) => joined,
        Err(error) => {
            // With --redis, 1013: the client retries, here or on another node.
            // 1008: a look-alike came in since the check before the upgrade.
            let (code, reason, text) = match &error {
                JoinError::Backend(_) => (1013, "cluster_down", "cluster link down".into()),
                JoinError::NameHeld { .. } => (1008, "name_held", error.to_string()),
            };
            warn!(%error, code, "cannot join");
            context.metrics.refuse(reason);
            let close = Message::close(CloseCode::try_from(code).ok(), &text);
            let _ = timeout(CLOSE_TIMEOUT, ws.send(close)).await;
            return;
        }
    };
    span.record("name", joined.member.name());
    restriction.apply(&joined.member, &request).await;
    info!("joined");
    // Its own task: this one's state (the handshake's, the request) would
    // otherwise stay in memory for as long as the client does.
    // A token's connection lasts until its `exp` (plus the leeway).
    let expires = context.access.jwt.as_ref().zip(request.who.identity());
    let setup = Setup {
        expires: expires
            .and_then(|(jwt, identity)| jwt.lifetime(identity))
            .and_then(|d| Instant::now().checked_add(d)),
        protocol: request.protocol,
        limits: context.limits,
        metrics: context.metrics.clone(),
        shutdown,
        slot,
    };
    let serve = async move {
        connection::serve(ws, joined, setup).await;
        drop(address_slot);
    };
    tracker.spawn(serve.instrument(span));
}
