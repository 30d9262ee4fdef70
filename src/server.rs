//! The accept loop: takes connections from a bound listener, runs each in its
//! own task, and shuts everything down gracefully when told to.
//!
//! Like mini-redis, [`run`] takes a listener that is already bound and a
//! shutdown future, so tests bind port 0 and stop the server at will.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::SinkExt;
use http::HeaderValue;
use http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_websockets::{CloseCode, Limits, Message, ServerBuilder};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::cluster::Cluster;
use crate::config::{
    ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_START, CLOSE_TIMEOUT, ConnectionLimits, HANDSHAKE_TIMEOUT,
    MAX_PENDING_REFUSALS, PRESENCE_INTERVAL, SHUTDOWN_TIMEOUT, ServerConfig,
};
use crate::connection::{self, Setup};
use crate::handshake::{Access, Answer, HandshakeError, read_head, read_request, refuse};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{JSON_PROTOCOL, Protocol};
use crate::ring::Budget;
use crate::wire::Wire;

/// Serves chat on `listener` (over TLS when `tls` is given, sharing rooms
/// with other nodes through `cluster` when given) until `shutdown` completes,
/// then closes every connection with code 1001 and returns once they are gone
/// (or after [`SHUTDOWN_TIMEOUT`]).
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    tls: Option<TlsAcceptor>,
    cluster: Option<Arc<Cluster>>,
    shutdown: impl Future<Output = ()>,
) {
    let metrics = Arc::new(Metrics::new(cluster.is_some()));
    metrics.memory_limit_bytes.set(i64::try_from(config.max_memory).unwrap_or(i64::MAX));
    let budget = Arc::new(Budget::new(config.max_memory, metrics.memory_bytes.clone()));
    let hub = Hub::new(&config, budget, cluster.clone());
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(summarize_presence(hub.clone(), metrics.clone(), token.clone()));
    if let Some(cluster) = cluster {
        tracker.spawn(cluster.run(hub.clone(), metrics.clone(), token.clone()));
    }
    let context = Arc::new(Context {
        hub: hub.clone(),
        metrics: metrics.clone(),
        websockets: websockets(&config, Protocol::Text),
        websockets_json: websockets(&config, Protocol::Json),
        limits: config.limits(),
        access: Access {
            allowed_origins: config.allow_origin.clone(),
            token: config.token.clone(),
        },
        tls: tls.clone(),
    });

    // A permit per chat connection; past the limit, a few more connections
    // are read just enough to be told 503, and the rest are closed at once.
    let slots = Arc::new(Semaphore::new(config.max_connections));
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
                let admission = if let Ok(permit) = slots.clone().try_acquire_owned() {
                    Ok(permit)
                } else if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    Err(permit)
                } else {
                    debug!(%peer, "full: closed without an answer");
                    context.metrics.refuse("full_unanswered");
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
                    admission,
                    deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                    context: context.clone(),
                    shutdown: token.clone(),
                    tracker: tracker.clone(),
                };
                // Two kinds of task, so that plain connections do not carry
                // the TLS state.
                match &context.tls {
                    None => tracker.spawn(chat(stream, start).instrument(span)),
                    Some(tls) => tracker.spawn(secure(tls.clone(), stream, start).instrument(span)),
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
        refuse(&mut stream, answer, None).await;
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
}

/// What a connection's task starts with, besides its stream.
struct Start {
    peer: SocketAddr,
    /// A chat slot, or (when all are taken) a slot for telling the client so;
    /// either is released when the connection ends.
    admission: Result<OwnedSemaphorePermit, OwnedSemaphorePermit>,
    /// When TLS and the upgrade must be done.
    deadline: Instant,
    context: Arc<Context>,
    shutdown: CancellationToken,
    /// Where the connection's own task is spawned after the handshake.
    tracker: TaskTracker,
}

/// A TLS connection: the TLS handshake, then [`chat`].
async fn secure(tls: TlsAcceptor, stream: TcpStream, start: Start) {
    let accepted = tokio::select! {
        () = start.shutdown.cancelled() => return,
        accepted = timeout_at(start.deadline, tls.accept(stream)) => accepted,
    };
    match accepted {
        Ok(Ok(stream)) => chat(stream, start).await,
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

/// One connection's HTTP handshake and join; the chat itself is spawned as
/// [`connection::serve`]. Errors end here, logged.
async fn chat<S>(mut stream: S, start: Start)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Start { peer, admission, deadline, context, shutdown, tracker } = start;
    // Held for the whole connection, or until the client is told 503.
    let (slot, admitted) = match admission {
        Ok(slot) => (slot, true),
        Err(refusal) => (refusal, false),
    };
    let upgrading = context.clone();
    let upgrade = async move {
        let (request, read) =
            read_request(&mut stream, &upgrading.access, &upgrading.metrics).await?;
        if !admitted {
            let reason = "the server is full: try again later".to_owned();
            return Err(
                refuse(&mut stream, Answer::text(503, reason), Some(&upgrading.metrics)).await
            );
        }
        let websockets = match request.protocol {
            Protocol::Text => &upgrading.websockets,
            Protocol::Json => &upgrading.websockets_json,
        };
        let (_, ws) = websockets.accept(Wire::new(read, stream)).await.map_err(|error| {
            // tokio-websockets has answered 400 (bad upgrade headers).
            upgrading.metrics.refuse("bad_request");
            HandshakeError::Refused { status: 400, reason: error.to_string() }
        })?;
        // Boxed once here, so that it is not part of the connection future's
        // state (which keeps its arguments) as well as of the split halves'
        // shared allocation.
        Ok::<_, HandshakeError>((request, Box::new(ws)))
    };
    let upgraded = tokio::select! {
        () = shutdown.cancelled() => return,
        upgraded = timeout_at(deadline, upgrade) => upgraded,
    };
    let (request, mut ws) = match upgraded {
        Ok(Ok(upgraded)) => upgraded,
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
    let joined = match context.hub.join(&request, &peer.to_string()).await {
        Ok(joined) => joined,
        Err(error) => {
            // Only with --redis: the client retries, here or on another node.
            warn!(%error, "cannot join: closing with 1013");
            context.metrics.refuse("cluster_down");
            let close = Message::close(Some(CloseCode::SERVICE_OVERLOAD), "cluster link down");
            let _ = timeout(CLOSE_TIMEOUT, ws.send(close)).await;
            return;
        }
    };
    span.record("name", joined.member.name());
    info!("joined");
    // Its own task: this one's state (the handshake's, the request) would
    // otherwise stay in memory for as long as the client does.
    let setup = Setup {
        protocol: request.protocol,
        limits: context.limits,
        metrics: context.metrics.clone(),
        shutdown,
        slot,
    };
    tracker.spawn(connection::serve(ws, joined, setup).instrument(span));
}
