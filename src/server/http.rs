//! The HTTP side of a connection: reads the request head (bounded in size),
//! answers what is not a chat upgrade with a proper status, and hands the rest
//! to tokio-websockets, which checks the upgrade headers and answers `101`.
//!
//! We read the head ourselves, rather than letting tokio-websockets do it, so
//! that we can bound its size and refuse a bad path before upgrading; the bytes
//! read are then replayed to tokio-websockets through [`crate::server::wire::Wire`].

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::{
    ChatRequest, JSON_PROTOCOL, Protocol, Resume, TOKEN_PROTOCOL_PREFIX, Who, name_from_query,
    query_param, room_from_path,
};
use crate::server::address::{AddressKey, Addresses, client_address};
use crate::server::config::MAX_REQUEST_HEAD_BYTES;
use crate::server::identity::{TokenError, Verifier};
use crate::server::metrics::Metrics;
use crate::server::origin::OwnOrigins;
use crate::server::ticket::Tickets;

/// Why a request was refused before the upgrade.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or closed before a whole request head arrived.
    #[error("connection ended during the handshake: {0}")]
    Io(#[from] io::Error),
    /// The request was refused with an HTTP status instead of an upgrade.
    #[error("answered with HTTP {status}: {reason}")]
    Refused {
        /// The status sent.
        status: u16,
        /// Why, as sent in the body.
        reason: String,
    },
}

/// A chat upgrade, as read: the request, the bytes read so far (to replay),
/// and the address the per-address rules count it against.
pub type Upgrade = (ChatRequest, BytesMut, AddressKey);

/// A request for the HTTP API (`/api/`): the bytes read so far (to replay
/// to hyper, which reads the request again), and the address it counts
/// against.
pub type ApiRequest = (BytesMut, AddressKey);

/// What a request head came to, when it was not refused.
#[derive(Debug)]
pub enum Handshake {
    /// A chat upgrade, for tokio-websockets to finish.
    Upgrade(Upgrade),
    /// A request under `/api/`, for [`crate::server::api`] to serve.
    Api(ApiRequest),
    /// Served here and closed: the page, a health check or `/metrics`.
    Served {
        /// The status sent.
        status: u16,
    },
}

/// What an address past `--auth-failures-per-ip` is told, here and by the API.
pub(super) const AUTH_THROTTLED: &str =
    "too many failed authentications from your address: try again later";

/// Reads one request head from `peer` and decides: a chat upgrade
/// (returned), an answer served here, or a refusal (the error). Either
/// answer is sent already.
pub async fn read_request<S>(
    stream: &mut S,
    peer: IpAddr,
    access: &Access,
    metrics: &Metrics,
) -> Result<Handshake, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        match parse(&buf, peer, access, metrics) {
            None if buf.len() < MAX_REQUEST_HEAD_BYTES => {
                let room = MAX_REQUEST_HEAD_BYTES - buf.len();
                buf.reserve(room.min(4096));
            }
            None => {
                let reason = format!("request head over {MAX_REQUEST_HEAD_BYTES} bytes");
                return Err(refuse(stream, Answer::text(431, reason), Some(metrics)).await);
            }
            Some(Ok((Route::Upgrade(chat), client))) => {
                return Ok(Handshake::Upgrade((chat, buf, client)));
            }
            Some(Ok((Route::Api, client))) => return Ok(Handshake::Api((buf, client))),
            Some(Ok((Route::Serve(answer), _))) => {
                let status = answer.status;
                respond(stream, answer, Some(metrics)).await;
                return Ok(Handshake::Served { status });
            }
            Some(Err(answer)) => return Err(refuse(stream, answer, Some(metrics)).await),
        }
    }
}

/// Reads a request head without looking at it (up to the blank line, or
/// [`MAX_REQUEST_HEAD_BYTES`]), so that an answer is not sent into unread
/// input, which would reset the connection before the client reads it.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(1024);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST_HEAD_BYTES {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Parses what has arrived of a request head: `None` while it is incomplete,
/// else where it goes, or the refusal. Kept out of the async function: the
/// header array stays out of every handshake's future.
fn parse(
    buf: &[u8],
    peer: IpAddr,
    access: &Access,
    metrics: &Metrics,
) -> Option<Result<(Route, AddressKey), Answer>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_REQUEST_HEAD_BYTES => {
            let head = request.method == Some("HEAD");
            let client = access.client(peer, &request);
            // HEAD gets whichever answer without its body.
            let routed = match route(&request, client, access, metrics) {
                Ok(Route::Serve(answer)) => Ok(Route::Serve(Answer { head, ..answer })),
                Ok(upgrade) => Ok(upgrade),
                Err(answer) => Err(Answer { head, ..answer }),
            };
            Some(routed.map(|route| (route, client)))
        }
        Ok(httparse::Status::Complete(_)) => Some(Err(Answer::text(
            431,
            format!("request head over {MAX_REQUEST_HEAD_BYTES} bytes"),
        ))),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => {
            Some(Err(Answer::text(431, "more than 64 headers".into())))
        }
        Err(error) => Some(Err(Answer::text(400, format!("malformed HTTP request: {error}")))),
    }
}

/// Where a request goes that is not refused.
#[derive(Debug)]
enum Route {
    /// A chat upgrade.
    Upgrade(ChatRequest),
    /// The HTTP API, which hyper serves.
    Api,
    /// Answered here: the page, a health check or `/metrics`.
    Serve(Answer),
}

/// Decides what to do with a complete request head: where it goes, or the
/// refusal (the error).
fn route(
    request: &httparse::Request<'_, '_>,
    client: AddressKey,
    access: &Access,
    metrics: &Metrics,
) -> Result<Route, Answer> {
    let target = origin_form(request.path.unwrap_or("/"));
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (&*target, None),
    };
    let upgrade = request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("upgrade")
            && std::str::from_utf8(h.value)
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
    });
    // HEAD is answered as GET is, without the body; an upgrade is a GET.
    let readable =
        matches!(request.method, Some("GET")) || !upgrade && request.method == Some("HEAD");
    // For supervisors: the process serves. For load balancers: new clients
    // are taken (not while the Redis link is down, when they get 1013).
    if path == "/livez" && readable && !upgrade {
        return Ok(Route::Serve(Answer::text(200, "ok".into())));
    }
    if matches!(path, "/readyz" | "/healthz") && readable && !upgrade {
        return Ok(Route::Serve(if metrics.ready() {
            Answer::text(200, "ok".into())
        } else {
            // Counted apart from refused clients: a probe is not one.
            let wait = Duration::from_secs(1);
            Answer::busy(503, "not_ready", wait, "the link to the other nodes is down".into())
        }));
    }
    // A browser's request names the server as the page's address bar does:
    // on loopback, a name that is not the server's own is a DNS-rebinding
    // page's. Tools send what they like, and are not browsers.
    let host = header(request, "host");
    if is_from_browser(request) && !access.own.is_own_host(host) {
        return Err(Answer::text(
            403,
            format!("host {:?} is not this server's name (see --public-url)", host.unwrap_or("")),
        ));
    }
    // Bodies and keep-alive: hyper's (see `server::api`).
    if path.starts_with("/api/") && !upgrade {
        return Ok(Route::Api);
    }
    let now = tokio::time::Instant::now();
    let room = if path == "/metrics" && !upgrade {
        None
    } else {
        let room = room_from_path(path)
            .map_err(|error| Answer::text(404, format!("no such room {path:?}: {error}")))?;
        Some(room)
    };
    if !readable {
        return Err(Answer::text(405, "only GET is served here".into()));
    }
    // RFC 6455 asks for HTTP/1.1 at least.
    if upgrade && request.version == Some(0) {
        return Err(Answer::text(400, "a WebSocket upgrade needs HTTP/1.1".into()));
    }
    let who = authenticate(request, query, (path, room, upgrade), client, access)?;
    // For Prometheus; behind the token when there is one.
    let Some(room) = room else {
        return Ok(Route::Serve(Answer::new(200, OPENMETRICS, metrics.encode().into())));
    };
    if let Some(origin) = header(request, "origin")
        && !access.allows(origin, host)
    {
        return Err(Answer::text(
            403,
            format!("origin {origin:?} is not allowed (see --allow-origin)"),
        ));
    }
    // A browser visiting a room: the web page, which then connects to it.
    if !upgrade {
        return Ok(Route::Serve(Answer::new(200, HTML, PAGE.into())));
    }
    // Each join replays up to --history-bytes: paced per address.
    if let Err(wait) = access.addresses.join(client, now) {
        return Err(Answer::busy(
            429,
            "join_rate",
            wait,
            "too many joins from your address: try again later".into(),
        ));
    }
    // Any of the offered subprotocols, comma-separated, may be ours.
    let json = request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("sec-websocket-protocol")
            && std::str::from_utf8(h.value)
                .is_ok_and(|v| v.split(',').any(|p| p.trim() == JSON_PROTOCOL))
    });
    Ok(Route::Upgrade(ChatRequest {
        room: room.to_owned(),
        name: name_from_query(query),
        resume: resume(query)?,
        protocol: if json { Protocol::Json } else { Protocol::Text },
        session: query_param(query, "session"),
        who,
    }))
}

/// Who a request for `room` (none: `/metrics`) proves to be, or its
/// refusal: 429 past the address's failures, 401 (counted as a failure),
/// 403 for a room its token does not name.
fn authenticate(
    request: &httparse::Request<'_, '_>,
    query: Option<&str>,
    (path, room, upgrade): (&str, Option<&str>, bool),
    client: AddressKey,
    access: &Access,
) -> Result<Who, Answer> {
    let now = tokio::time::Instant::now();
    // Past its failures, an address is not heard: no token is checked, so a
    // guesser learns nothing, however fast it asks.
    if (access.token.is_some() || access.jwt.is_some())
        && let Err(wait) = access.addresses.may_authenticate(client, now)
    {
        return Err(Answer::busy(429, "auth_throttled", wait, AUTH_THROTTLED.into()));
    }
    let who = match access.admits(request, query) {
        // Prometheus is not for guests.
        Ok(Who::Guest) if room.is_none() => Err(TokenError::Missing),
        admitted => admitted,
    };
    let who = match who {
        Ok(who) => who,
        // With a JWT key, the page holds no secret: it is served without a
        // token, and takes one from its URL fragment (`#token=`).
        Err(TokenError::Missing) if !upgrade && room.is_some() => Who::Anyone,
        Err(error) => {
            access.addresses.authentication_failed(client, now);
            // A browser visiting a room is asked for the token by a form.
            if !upgrade && path != "/metrics" {
                return Err(Answer::new(401, HTML, TOKEN_PAGE.into()));
            }
            return Err(Answer::text(401, error.to_string()));
        }
    };
    if let (Some(room), Some(identity)) = (room, who.identity())
        && !identity.rooms.allows(room)
    {
        let text = format!("your token does not let you into room {room:?}");
        return Err(Answer { reason: Some("room_forbidden"), ..Answer::text(403, text) });
    }
    Ok(who)
}

/// A request target in origin form (`/room?x`): an absolute-form target
/// (`http://host:port/room?x`, which proxies send) loses its scheme and
/// authority.
fn origin_form(target: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = target.split_once("://") else { return target.into() };
    if !["http", "https", "ws", "wss"].iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return target.into();
    }
    match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => rest[at..].into(),
        // `http://host?x` has the empty path, which is `/`.
        Some(at) => format!("/{}", &rest[at..]).into(),
        None => "/".into(),
    }
}

/// `?since=SEQ&epoch=E`: both or neither.
fn resume(query: Option<&str>) -> Result<Option<Resume>, Answer> {
    match (query_param(query, "since"), query_param(query, "epoch")) {
        (None, None) => Ok(None),
        (Some(since), Some(epoch)) => match since.parse() {
            Ok(since) => Ok(Some(Resume { since, epoch })),
            Err(_) => Err(Answer::text(400, format!("since={since:?} is not a message number"))),
        },
        _ => Err(Answer::text(400, "since= and epoch= go together".into())),
    }
}

/// The web chat page, served for a plain GET of a room's path.
const PAGE: &str = include_str!("page.html");

/// Asks a browser for the `--token`, then reloads the room with `?token=`.
const TOKEN_PAGE: &str = include_str!("token.html");

/// The content type of [`PAGE`].
const HTML: &str = "text/html; charset=utf-8";

/// Who may connect.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Origins allowed besides the server's own (`--allow-origin`).
    pub allowed_origins: Vec<String>,
    /// The shared secret clients must present (`--token`), if any.
    pub token: Option<String>,
    /// What identity tokens are checked with (`--jwt-secret`,
    /// `--jwt-public-key`), if any.
    pub jwt: Option<Arc<Verifier>>,
    /// `--guests`: with a JWT key, requests without a token come in as guests.
    pub guests: bool,
    /// Tickets from `POST /api/ticket`, not used yet.
    pub tickets: Arc<Tickets>,
    /// The server's own origins and names.
    pub own: OwnOrigins,
    /// `--trusted-proxy`.
    pub proxies: Vec<ipnet::IpNet>,
    /// What each address holds and has spent.
    pub addresses: Arc<Addresses>,
}

/// Browsers mark their requests: `Origin` (always on an upgrade), or the
/// `Sec-Fetch-*` headers of every current browser's other requests.
fn is_from_browser(request: &httparse::Request<'_, '_>) -> bool {
    request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("origin")
            || h.name.len() > 10 && h.name.as_bytes()[..10].eq_ignore_ascii_case(b"sec-fetch-")
    })
}

impl Access {
    /// Whom the request counts against: the peer, or the client a trusted
    /// proxy names in `X-Forwarded-For`.
    fn client(&self, peer: IpAddr, request: &httparse::Request<'_, '_>) -> AddressKey {
        let forwarded = request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|h| h.value);
        AddressKey::of(client_address(peer, &self.proxies, forwarded))
    }

    /// Who the request proves to be, if it is let in: with `--token`, it
    /// must present it; with a JWT key, a valid token (or none, as a guest,
    /// with `--guests`). Either travels as `Authorization: Bearer TOKEN` or,
    /// for browsers, `?token=TOKEN`.
    fn admits(
        &self,
        request: &httparse::Request<'_, '_>,
        query: Option<&str>,
    ) -> Result<Who, TokenError> {
        if self.token.is_none() && self.jwt.is_none() {
            return Ok(Who::Anyone);
        }
        let authorization = header(request, "authorization");
        let bearer = authorization.and_then(bearer_token).map(str::to_owned);
        // A ticket from `POST /api/ticket` stands for the token it was
        // exchanged for, once.
        if let Some(ticket) = query_param(query, "ticket") {
            return self.tickets.redeem(&ticket).ok_or(TokenError::Ticket);
        }
        let presented =
            bearer.or_else(|| offered_token(request)).or_else(|| query_param(query, "token"));
        self.check(presented, authorization.is_some())
    }

    /// Who the token `presented` proves to be (see [`Access::admits`]);
    /// `other_credentials`: an `Authorization` header came without a bearer
    /// token. Only with `--token` or a JWT key.
    pub fn check(
        &self,
        presented: Option<String>,
        other_credentials: bool,
    ) -> Result<Who, TokenError> {
        use subtle::ConstantTimeEq as _;
        if let Some(jwt) = &self.jwt {
            // A bad token is refused even with --guests: its holder learns
            // it is bad rather than coming in as a guest.
            return match presented {
                Some(token) => Ok(Who::User(Arc::new(jwt.verify(&token)?))),
                // Credentials of another kind are not a guest's absence of them.
                None if other_credentials => Err(TokenError::NotBearer),
                None if self.guests => Ok(Who::Guest),
                None => Err(TokenError::Missing),
            };
        }
        let token = self.token.as_deref().unwrap_or_default();
        // Compared in constant time, so timing does not reveal how much matched.
        match presented {
            Some(presented) if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) => {
                Ok(Who::Anyone)
            }
            _ => Err(TokenError::NotTheSharedToken),
        }
    }

    /// Browsers send `Origin`; a page from another site must not be able to
    /// open a chat connection with its visitors' access (cross-site WebSocket
    /// hijacking). Terminal tools send no Origin and are not affected.
    fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        self.own.is_own_origin(origin, host)
            || self.allowed_origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme is
/// case-insensitive (RFC 9110, section 11.1).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A token offered as a subprotocol (`chat.token.TOKEN`), as the web page
/// sends it.
fn offered_token(request: &httparse::Request<'_, '_>) -> Option<String> {
    request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|value| value.split(','))
        .find_map(|p| p.trim().strip_prefix(TOKEN_PROTOCOL_PREFIX).map(str::to_owned))
}

/// A header's value, if present and text.
fn header<'a>(request: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a str> {
    let header = request.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
    std::str::from_utf8(header.value).ok().map(str::trim)
}

/// The content type of `/metrics`.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An HTTP response given instead of an upgrade: an answer served here, or
/// a refusal.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// Its body's type.
    pub content_type: &'static str,
    /// The body: for an error, why, in one line.
    pub body: Cow<'static, str>,
    /// Answering HEAD: the headers only.
    pub head: bool,
    /// `Retry-After`, for "try later" answers.
    pub retry_after: Option<Duration>,
    /// The `refused` metric's reason, when the status alone does not say.
    pub reason: Option<&'static str>,
}

impl Answer {
    /// An answer with a body.
    pub fn new(status: u16, content_type: &'static str, body: Cow<'static, str>) -> Self {
        Self { status, content_type, body, head: false, retry_after: None, reason: None }
    }

    /// A "try later" answer (429, 503): counted as `reason`, with
    /// `Retry-After: wait`.
    pub fn busy(status: u16, reason: &'static str, wait: Duration, text: String) -> Self {
        Self { retry_after: Some(wait), reason: Some(reason), ..Self::text(status, text) }
    }

    /// A plain-text answer; a trailing newline is added.
    pub fn text(status: u16, text: String) -> Self {
        Self::new(status, "text/plain; charset=utf-8", (text + "\n").into())
    }
}

/// Refuses the upgrade with `answer` (see [`respond`]); returns the
/// matching error.
pub async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    answer: Answer,
    metrics: Option<&Metrics>,
) -> HandshakeError {
    let error = HandshakeError::Refused {
        status: answer.status,
        reason: answer.body.trim_end().to_owned(),
    };
    respond(stream, answer, metrics).await;
    error
}

/// Sends `answer` instead of upgrading, counts it as a refusal by its
/// reason or status in `metrics` if given (a 200 is not one), and closes.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    answer: Answer,
    metrics: Option<&Metrics>,
) {
    let Answer { status, content_type, body, head, retry_after, reason } = answer;
    let reason = reason.or(match status {
        200 => None,
        400 => Some("bad_request"),
        401 => Some("unauthorized"),
        403 => Some("origin"),
        404 => Some("not_found"),
        405 => Some("method"),
        431 => Some("too_large"),
        503 => Some("full"),
        _ => Some("other"),
    });
    if let (Some(reason), Some(metrics)) = (reason, metrics) {
        metrics.refuse(reason);
    }
    let phrase = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Error");
    let mut extra = match status {
        401 => "WWW-Authenticate: Bearer\r\n",
        405 => "Allow: GET\r\n",
        _ => "",
    }
    .to_owned();
    if let Some(wait) = retry_after {
        let _ = write!(extra, "Retry-After: {}\r\n", wait.as_secs().max(1));
    }
    let response = format!(
        "HTTP/1.1 {status} {phrase}\r\n{extra}Content-Type: {content_type}\r\n\
         Content-Length: {}\r\nX-Content-Type-Options: nosniff\r\n\
         Connection: close\r\n\r\n{}",
        body.len(),
        if head { "" } else { &*body },
    );
    // The peer may already be gone; the answer stands either way.
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::address::AddressLimits;
    use proptest::prelude::*;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// Every check on: a token, loopback origins, a trusted proxy, and
    /// per-address budgets small enough to be reached.
    fn guarded() -> Access {
        Access {
            allowed_origins: vec!["https://chat.example.org".into()],
            token: Some("s3cret".into()),
            jwt: None,
            guests: false,
            tickets: Arc::default(),
            own: OwnOrigins::new(
                std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
                false,
                vec!["https://chat.example.com".parse().expect("a public URL")],
            ),
            proxies: vec!["127.0.0.0/8".parse().expect("a network")],
            addresses: Addresses::new(AddressLimits {
                handshakes: 64,
                connections: 64,
                joins_per_second: 2,
                auth_failures_per_minute: 2,
            }),
        }
    }

    /// Header values the checks read, with arbitrary bytes in them.
    fn header_value() -> impl Strategy<Value = Vec<u8>> {
        let known = prop::sample::select(vec![
            b"http://127.0.0.1:8080".to_vec(),
            b"http://evil.example".to_vec(),
            b"http:/\xc3\xa9ab".to_vec(),
            b"127.0.0.1:8080".to_vec(),
            b"[::1]:8080".to_vec(),
            b"Bearer s3cret".to_vec(),
            b"bearer \xff".to_vec(),
            b"1.2.3.4, [2001:db8::1]:80, 127.0.0.1".to_vec(),
        ]);
        prop_oneof![
            known,
            proptest::collection::vec(any::<u8>(), 0..80),
            any::<String>().prop_map(String::into_bytes),
        ]
    }

    proptest! {
        // Whatever arrives, the parser decides or waits for more; it never panics.
        #[test]
        fn any_bytes_are_decided_or_awaited(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse(&bytes, PEER, &Access::default(), &Metrics::default());
            let _ = parse(&bytes, PEER, &guarded(), &Metrics::default());
        }

        // Well-formed heads with arbitrary targets and headers: a chat request
        // only for a valid room, with the query decoded.
        #[test]
        fn any_target_and_headers_get_a_decision(
            target in "/[ -~]{0,64}",
            name in "[A-Za-z-]{1,20}",
            value in "[ -~]{0,80}",
            upgrade in any::<bool>(),
        ) {
            let upgrade = if upgrade {
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            } else {
                ""
            };
            let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{name}: {value}\r\n{upgrade}\r\n");
            match parse(head.as_bytes(), PEER, &Access::default(), &Metrics::default()) {
                Some(Ok((Route::Upgrade(chat), _))) => {
                    let path = target.split('?').next().unwrap_or_default();
                    prop_assert_eq!(room_from_path(path), Ok(chat.room.as_str()));
                }
                Some(Ok((Route::Api, _))) => prop_assert!(target.starts_with("/api/")),
                Some(Ok((Route::Serve(answer), _)) | Err(answer)) => prop_assert!((200..600).contains(&answer.status)),
                None => prop_assert!(false, "a complete head must be decided"),
            }
        }

        // Origin, Host, X-Forwarded-For and Authorization with any bytes,
        // non-ASCII included, and any target bytes, through every check at
        // once, repeated so that the budgets run out: each gets a status.
        #[test]
        fn any_checked_header_gets_a_status(
            target in proptest::collection::vec(any::<u8>(), 0..40),
            origin in header_value(),
            host in header_value(),
            forwarded in header_value(),
            authorization in header_value(),
            upgrade in any::<bool>(),
        ) {
            let access = guarded();
            let mut head = b"GET /".to_vec();
            head.extend(target.iter().filter(|b| !b" \r\n".contains(b)));
            head.extend_from_slice(b" HTTP/1.1\r\n");
            for (name, value) in [
                (&b"Origin"[..], &origin),
                (b"Host", &host),
                (b"X-Forwarded-For", &forwarded),
                (b"Authorization", &authorization),
            ] {
                head.extend_from_slice(name);
                head.extend_from_slice(b": ");
                head.extend(value.iter().filter(|b| !b"\r\n".contains(b)));
                head.extend_from_slice(b"\r\n");
            }
            if upgrade {
                head.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
            }
            head.extend_from_slice(b"\r\n");
            for _ in 0..4 {
                match parse(&head, PEER, &access, &Metrics::default()) {
                    Some(Ok((Route::Upgrade(_), _))) => prop_assert!(upgrade),
                    Some(Ok((Route::Api, _))) => prop_assert!(!upgrade),
                    Some(Ok((Route::Serve(answer), _)) | Err(answer)) => prop_assert!((200..600).contains(&answer.status)),
                    None => prop_assert!(false, "a complete head must be decided"),
                }
            }
        }
    }

    #[test]
    fn a_rebinding_page_is_refused_and_a_guesser_is_slowed_down() {
        let access = guarded();
        let decide = |head: &str| match parse(head.as_bytes(), PEER, &access, &Metrics::default()) {
            Some(Ok((Route::Upgrade(_), _))) => 101,
            Some(Ok((Route::Api, _))) => 1,
            Some(Ok((Route::Serve(answer), _)) | Err(answer)) => answer.status,
            None => 0,
        };
        let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
        let evil = format!(
            "GET / HTTP/1.1\r\nHost: evil.example:8080\r\nOrigin: http://evil.example:8080\r\n\
             Authorization: Bearer s3cret\r\n{upgrade}\r\n"
        );
        assert_eq!(decide(&evil), 403);
        let own = evil.replace("evil.example", "localhost");
        assert_eq!(decide(&own), 101);
        let wrong =
            format!("GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer no\r\n{upgrade}\r\n");
        assert_eq!(decide(&wrong), 401);
        assert_eq!(decide(&wrong), 401);
        assert_eq!(decide(&wrong), 429);
        // Not even the right token is checked meanwhile.
        assert_eq!(decide(&own), 429);
    }
}
