//! The HTTP API for programs (`/api/`, with `--api-key`), and the page's
//! ticket exchange (`POST /api/ticket`, with `--token` or a JWT key).
//!
//! Requests with bodies and keep-alive are hyper's: the hand-written parser
//! in `http` reads the first request head, sees `/api/`, and hands the
//! connection here with the bytes it read replayed first (a [`Wire`], as
//! the WebSocket path does, with no frames queued).
//! Such a connection holds a chat connection's slots (overall and of its
//! address) until it closes, and serves only `/api/`: other paths get 404.
//! Everything here is JSON, errors too: `{"error": "..."}`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::protocol::{
    Action, ClientError, HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MESSAGES, Moderation, Who, query_param,
    room_from_path,
};
use crate::server::address::{AddressKey, Slot};
use crate::server::config::{
    API_BODY_TIMEOUT, API_CONNECTION_LIFETIME, API_IDLE_TIMEOUT, API_PUBLISH_BURST,
    API_PUBLISHES_PER_SECOND, API_RETRY_AFTER, API_ROOMS_LISTED, ApiKey, CLOSE_TIMEOUT,
    FRAME_OVERHEAD, MAX_API_BODY_BYTES, MAX_REQUEST_HEAD_BYTES, TICKET_LIFETIME,
};
use crate::server::http::{AUTH_THROTTLED, bearer_token};
use crate::server::hub::api::PublishError;
use crate::server::hub::ring::Charge;
use crate::server::identity::TokenError;
use crate::server::limit::{Bucket, RateLimit, Verdict};
use crate::server::ticket::TicketError;
use crate::server::wire::Wire;
use crate::util::lock;

/// What the API needs beyond what every connection shares.
#[derive(Debug)]
pub(super) struct Api {
    /// `--api-key`; without it only the ticket exchange is served.
    key: Option<ApiKey>,
    /// Publishes, all API connections together.
    publishes: Mutex<Bucket>,
}

impl Api {
    pub(super) fn new(key: Option<ApiKey>) -> Self {
        let limit = RateLimit {
            per_second: API_PUBLISHES_PER_SECOND,
            burst: API_PUBLISH_BURST,
            grace: Duration::MAX,
        };
        Self { key, publishes: Mutex::new(Bucket::new(limit, Instant::now())) }
    }
}

/// A connection handed over from the hand-written parser: its stream, the
/// bytes read from it so far, whom it counts against, and the slots it
/// holds until it closes.
pub(super) struct Handover<S> {
    pub stream: S,
    pub read: BytesMut,
    pub client: AddressKey,
    pub slots: (tokio::sync::OwnedSemaphorePermit, Slot),
}

/// Serves API requests on one connection until the client closes it, it
/// is idle for [`API_IDLE_TIMEOUT`], it is [`API_CONNECTION_LIFETIME`] old,
/// or the server shuts down.
pub(super) async fn serve<S>(
    handover: Handover<S>,
    context: Arc<super::Context>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Handover { stream, read, client, slots: _slots } = handover;
    let io = TokioIo::new(Wire::new(read, stream));
    let service = hyper::service::service_fn(move |request| {
        let context = context.clone();
        async move { Ok::<_, Infallible>(answer(request, client, &context).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(API_IDLE_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            timeout(CLOSE_TIMEOUT, connection).await.unwrap_or(Ok(()))
        }
        () = sleep(API_CONNECTION_LIFETIME) => {
            connection.as_mut().graceful_shutdown();
            timeout(API_BODY_TIMEOUT, connection).await.unwrap_or(Ok(()))
        }
    };
    if let Err(error) = ended {
        debug!(%error, "API connection ended");
    }
}

/// An API answer: JSON, errors too.
struct JsonReply {
    status: StatusCode,
    body: Value,
    /// `Retry-After`, in seconds.
    retry_after: Option<Duration>,
    /// `Allow`, for 405.
    allow: Option<&'static str>,
    /// The body encoded already, with its charge against `--max-memory`,
    /// released once it is written (a large history page).
    held: Option<(Vec<u8>, Charge)>,
}

/// A body's bytes with their charge: released when hyper lets them go.
struct Held(Vec<u8>, #[expect(dead_code, reason = "held, never read")] Charge);

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl JsonReply {
    fn ok(body: Value) -> Self {
        Self { status: StatusCode::OK, body, retry_after: None, allow: None, held: None }
    }

    fn error(status: StatusCode, error: impl std::fmt::Display) -> Self {
        let body = json!({ "error": error.to_string() });
        Self { status, body, retry_after: None, allow: None, held: None }
    }

    fn busy(status: StatusCode, wait: Duration, error: impl std::fmt::Display) -> Self {
        Self { retry_after: Some(wait), ..Self::error(status, error) }
    }

    fn method(allow: &'static str) -> Self {
        let text = format!("only {allow} is served here");
        Self { allow: Some(allow), ..Self::error(StatusCode::METHOD_NOT_ALLOWED, text) }
    }

    fn not_found() -> Self {
        Self::error(StatusCode::NOT_FOUND, "no such API path (this connection serves /api/ only)")
    }

    /// A 200 with `body`, counted in `--max-memory` until written (503
    /// when it has no room for it, as for `/history`).
    fn ok_held(body: &Value, hub: &crate::server::hub::Hub) -> Self {
        let mut encoded = body.to_string().into_bytes();
        encoded.push(b'\n');
        if let Some(charge) = hub.hold(encoded.len()) {
            Self { held: Some((encoded, charge)), ..Self::ok(Value::Null) }
        } else {
            let error = ClientError::HistoryUnavailable;
            Self::busy(StatusCode::SERVICE_UNAVAILABLE, API_RETRY_AFTER, error)
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let bytes = match self.held {
            Some((encoded, charge)) => Bytes::from_owner(Held(encoded, charge)),
            None => Bytes::from(self.body.to_string() + "\n"),
        };
        let mut response = Response::new(Full::new(bytes));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
        headers
            .insert("x-content-type-options", hyper::header::HeaderValue::from_static("nosniff"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
        }
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, hyper::header::HeaderValue::from_static(allow));
        }
        if let Some(wait) = self.retry_after {
            headers.insert(RETRY_AFTER, wait.as_secs().max(1).into());
        }
        response
    }
}

/// One request's answer.
async fn answer(
    request: Request<Incoming>,
    client: AddressKey,
    context: &super::Context,
) -> Response<Full<Bytes>> {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    // A browser would send its next request for the page on this
    // connection, which serves only the API: it gets a connection of its
    // own instead.
    let close = path == "/api/ticket" || is_from_browser(request.headers());
    let answer = route(request, client, context).await;
    debug!(%method, path, status = answer.status.as_u16(), "API request");
    let mut response = answer.into_response();
    if close {
        let close = hyper::header::HeaderValue::from_static("close");
        response.headers_mut().insert(hyper::header::CONNECTION, close);
    }
    response
}

/// Browsers mark their requests: `Origin`, or the `Sec-Fetch-*` headers.
fn is_from_browser(headers: &hyper::HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| name == hyper::header::ORIGIN || name.as_str().starts_with("sec-fetch-"))
}

/// Where a request goes: a match on the path's segments, so that new
/// endpoints are one arm each.
async fn route(
    request: Request<Incoming>,
    client: AddressKey,
    context: &super::Context,
) -> JsonReply {
    let path = request.uri().path().to_owned();
    let Some(rest) = path.strip_prefix("/api/") else { return JsonReply::not_found() };
    let segments: Vec<&str> = rest.split('/').collect();
    if segments == ["ticket"] {
        return ticket(&request, client, context);
    }
    let Some(key) = &context.api.key else { return JsonReply::not_found() };
    if let Err(refusal) = authorize(&request, key, client, context) {
        return refusal;
    }
    let method = request.method().clone();
    match (segments.as_slice(), method) {
        (["rooms"], Method::GET) => rooms(context),
        (["rooms"], _) => JsonReply::method("GET"),
        (["rooms", room, "messages"], method) => match (checked_room(room), method) {
            (Err(refusal), _) => refusal,
            (Ok(room), Method::POST) => publish(request, &room, context).await,
            (Ok(room), Method::GET) => history(request.uri().query(), &room, context).await,
            _ => JsonReply::method("GET, POST"),
        },
        (["rooms", room, "members"], method) => match (checked_room(room), method) {
            (Err(refusal), _) => refusal,
            (Ok(room), Method::GET) => members(&room, context).await,
            _ => JsonReply::method("GET"),
        },
        (["rooms", room, action], method) => {
            let Some(action) = Action::from_command(action) else { return JsonReply::not_found() };
            match (checked_room(room), method) {
                (Err(refusal), _) => refusal,
                (Ok(room), Method::POST) => moderate(request, &room, action, context).await,
                _ => JsonReply::method("POST"),
            }
        }
        _ => JsonReply::not_found(),
    }
}

/// A room named in a path, checked with the room rules.
fn checked_room(segment: &str) -> Result<String, JsonReply> {
    let refused = |reason: &dyn std::fmt::Display| {
        JsonReply::error(
            StatusCode::BAD_REQUEST,
            format!("{segment:?} is not a room name: {reason}"),
        )
    };
    if segment.is_empty() {
        return Err(refused(&crate::protocol::NameError::Empty));
    }
    room_from_path(segment).map(str::to_owned).map_err(|reason| refused(&reason))
}

/// Lets in a request that carries `key`; past its address's failures, no
/// key is checked, as with tokens.
fn authorize(
    request: &Request<Incoming>,
    key: &ApiKey,
    client: AddressKey,
    context: &super::Context,
) -> Result<(), JsonReply> {
    let now = Instant::now();
    let addresses = &context.access.addresses;
    if let Err(wait) = addresses.may_authenticate(client, now) {
        let text = AUTH_THROTTLED;
        return Err(JsonReply::busy(StatusCode::TOO_MANY_REQUESTS, wait, text));
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    match presented {
        Some(presented) if key.matches(presented) => Ok(()),
        presented => {
            // Only a wrong key counts: a request with none (which a page
            // elsewhere can make a browser send) must not throttle its address.
            if presented.is_some() {
                addresses.authentication_failed(client, now);
            }
            let text = if presented.is_some() {
                "the API key is not valid"
            } else {
                "the API key is required: Authorization: Bearer KEY"
            };
            Err(JsonReply::error(StatusCode::UNAUTHORIZED, text))
        }
    }
}

/// `POST /api/ticket`: the bearer token, checked as an upgrade checks it,
/// for a ticket that stands for it once (see `server::ticket`).
fn ticket(request: &Request<Incoming>, client: AddressKey, context: &super::Context) -> JsonReply {
    let access = &context.access;
    if access.token.is_none() && access.jwt.is_none() {
        return JsonReply::error(
            StatusCode::NOT_FOUND,
            "this server takes no tokens: no ticket needed",
        );
    }
    if request.method() != Method::POST {
        return JsonReply::method("POST");
    }
    let now = Instant::now();
    if let Err(wait) = access.addresses.may_authenticate(client, now) {
        let text = AUTH_THROTTLED;
        return JsonReply::busy(StatusCode::TOO_MANY_REQUESTS, wait, text);
    }
    let authorization = request.headers().get(AUTHORIZATION);
    let presented = authorization.and_then(|value| value.to_str().ok()).and_then(bearer_token);
    let who = match access.check(presented.map(str::to_owned), authorization.is_some()) {
        // A guest needs no ticket: it connects without one.
        Ok(Who::Guest) => Err(TokenError::Missing),
        checked => checked,
    };
    let who = match who {
        Ok(who) => who,
        Err(error) => {
            if presented.is_some() {
                access.addresses.authentication_failed(client, now);
            }
            return JsonReply::error(StatusCode::UNAUTHORIZED, error);
        }
    };
    let name = who.identity().map(|identity| identity.name.clone());
    match access.tickets.issue(who, client) {
        Ok(ticket) => JsonReply::ok(json!({
            "ticket": ticket,
            "expires_in": TICKET_LIFETIME.as_secs(),
            "name": name,
        })),
        Err(error @ TicketError::Full) => {
            JsonReply::busy(StatusCode::SERVICE_UNAVAILABLE, TICKET_LIFETIME, error)
        }
        Err(error) => JsonReply::error(StatusCode::SERVICE_UNAVAILABLE, error),
    }
}

/// `GET /api/rooms`: this node's rooms with someone in them, with how many.
fn rooms(context: &super::Context) -> JsonReply {
    let (rooms, more) = context.hub.room_counts(API_ROOMS_LISTED);
    let rooms: Vec<Value> =
        rooms.into_iter().map(|(room, online)| json!({ "room": room, "online": online })).collect();
    JsonReply::ok(json!({ "rooms": rooms, "more": more }))
}

/// `GET /api/rooms/{room}/members`: as `/who` answers.
async fn members(room: &str, context: &super::Context) -> JsonReply {
    let listing = context.hub.members(room).await;
    JsonReply::ok(json!({ "room": room, "count": listing.count, "names": listing.names }))
}

/// `GET /api/rooms/{room}/messages?before=SEQ&limit=N`: as `/history`
/// answers.
async fn history(query: Option<&str>, room: &str, context: &super::Context) -> JsonReply {
    let number = |name: &str| -> Result<Option<u64>, JsonReply> {
        query_param(query, name)
            .map(|value| {
                value.parse::<u64>().map_err(|_| {
                    let text = format!("{name}={value:?} is not a number");
                    JsonReply::error(StatusCode::BAD_REQUEST, text)
                })
            })
            .transpose()
    };
    let (before, limit) = match (number("before"), number("limit")) {
        (Ok(before), Ok(limit)) => (before, limit),
        (Err(refusal), _) | (_, Err(refusal)) => return refusal,
    };
    let limit = match limit.map(usize::try_from) {
        None => HISTORY_PAGE_DEFAULT,
        Some(Ok(limit @ 1..=HISTORY_PAGE_MESSAGES)) => limit,
        Some(_) => {
            let text = format!("limit must be 1 to {HISTORY_PAGE_MESSAGES}");
            return JsonReply::error(StatusCode::BAD_REQUEST, text);
        }
    };
    match context.hub.page(room, before, limit).await {
        Ok(page) => {
            let body = json!({ "messages": page.messages, "more": page.more });
            JsonReply::ok_held(&body, &context.hub)
        }
        Err(error) => {
            debug!(%error, "cannot read the room's history");
            JsonReply::error(StatusCode::SERVICE_UNAVAILABLE, ClientError::HistoryUnavailable)
        }
    }
}

/// What `POST /api/rooms/{room}/kick` (and `ban`, `unban`, `mute`,
/// `unmute`) carries: `seconds` for a ban or mute, `reason` for a kick or
/// ban.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Moderate {
    name: String,
    #[serde(default)]
    seconds: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/rooms/{room}/ACTION`: what a moderator's command does, told
/// to the room without a moderator's name.
async fn moderate(
    request: Request<Incoming>,
    room: &str,
    action: Action,
    context: &super::Context,
) -> JsonReply {
    let body = match read_body(request, MAX_API_BODY_BYTES).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let usage = match action {
        Action::Kick => "{\"name\": NAME, \"reason\": optional}",
        Action::Ban => "{\"name\": NAME, \"seconds\": optional, \"reason\": optional}",
        Action::Mute => "{\"name\": NAME, \"seconds\": optional}",
        Action::Unban | Action::Unmute => "{\"name\": NAME}",
    };
    let Ok(Moderate { name, seconds, reason }) = serde_json::from_slice(&body) else {
        return JsonReply::error(StatusCode::BAD_REQUEST, format!("the body is not {usage}"));
    };
    let takes_reason = matches!(action, Action::Kick | Action::Ban);
    if (seconds.is_some() && !action.lasts()) || (reason.is_some() && !takes_reason) {
        return JsonReply::error(StatusCode::BAD_REQUEST, format!("the body is not {usage}"));
    }
    let moderation = Moderation {
        action,
        name: &name,
        duration: seconds.map(Duration::from_secs),
        reason: reason.as_deref(),
    };
    match context.hub.moderate(room, None, &moderation).await {
        Ok(_) => JsonReply::ok(json!({ "room": room, "action": action, "name": name })),
        Err(error @ (ClientError::NotHere { .. } | ClientError::NotSanctioned { .. })) => {
            JsonReply::error(StatusCode::NOT_FOUND, error)
        }
        Err(error @ ClientError::TooManySanctions) => JsonReply::error(StatusCode::CONFLICT, error),
        Err(error @ ClientError::LinkDown) => {
            JsonReply::busy(StatusCode::SERVICE_UNAVAILABLE, API_RETRY_AFTER, error)
        }
        Err(error) => JsonReply::error(StatusCode::BAD_REQUEST, error),
    }
}

/// What `POST /api/rooms/{room}/messages` carries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    from: String,
    text: String,
}

/// `POST /api/rooms/{room}/messages`: publishes like any client's message.
async fn publish(request: Request<Incoming>, room: &str, context: &super::Context) -> JsonReply {
    // A text of --max-message-bytes fits with its JSON escapes, as in a
    // WebSocket frame: three times the text (`\u00e9` for a 2-byte `é`), and 1 KiB.
    let most = MAX_API_BODY_BYTES.max(3 * context.limits.max_message_bytes + FRAME_OVERHEAD);
    let body = match read_body(request, most).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let Publish { from, text } = match serde_json::from_slice(&body) {
        Ok(publish) => publish,
        Err(error) => {
            let text = format!("the body is not {{\"from\": NAME, \"text\": TEXT}}: {error}");
            return JsonReply::error(StatusCode::BAD_REQUEST, text);
        }
    };
    if lock(&context.api.publishes).check(Instant::now()) != Verdict::Allow {
        let wait = API_RETRY_AFTER;
        let text = "too many messages through the API: try again later";
        return JsonReply::busy(StatusCode::TOO_MANY_REQUESTS, wait, text);
    }
    match context.hub.publish(room, &from, &text).await {
        Ok(seq) => JsonReply::ok(json!({ "seq": seq })),
        Err(error @ PublishError::Text(ClientError::TooLong { .. })) => {
            JsonReply::error(StatusCode::PAYLOAD_TOO_LARGE, error)
        }
        Err(error @ PublishError::Text(ClientError::ServerFull | ClientError::LinkDown)) => {
            JsonReply::busy(StatusCode::SERVICE_UNAVAILABLE, API_RETRY_AFTER, error)
        }
        Err(
            error @ (PublishError::Name { .. } | PublishError::Colon(_) | PublishError::Text(_)),
        ) => JsonReply::error(StatusCode::BAD_REQUEST, error),
        Err(error) => JsonReply::busy(StatusCode::SERVICE_UNAVAILABLE, API_RETRY_AFTER, error),
    }
}

/// A request's body: at most `most` bytes (413 past it),
/// arriving within [`API_BODY_TIMEOUT`] (408 otherwise).
async fn read_body(request: Request<Incoming>, most: usize) -> Result<Bytes, JsonReply> {
    let too_large = || {
        let text = format!("the body is over {most} bytes");
        JsonReply::error(StatusCode::PAYLOAD_TOO_LARGE, text)
    };
    // Refused before reading, when the client says so up front.
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    if declared.and_then(|v| v.parse::<usize>().ok()).is_some_and(|n| n > most) {
        return Err(too_large());
    }
    let body = Limited::new(request.into_body(), most);
    match timeout(API_BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(error)) => Err(JsonReply::error(StatusCode::BAD_REQUEST, error)),
        Err(_) => Err(JsonReply::error(StatusCode::REQUEST_TIMEOUT, "the body came too slowly")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn what_was_read_comes_first_then_the_stream() {
        let mut replay = Wire::new(BytesMut::from(&b"GET /api/"[..]), &b"rooms"[..]);
        let mut all = String::new();
        replay.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "GET /api/rooms");
    }
}
