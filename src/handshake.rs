//! The HTTP side of a connection: reads the request head (bounded in size),
//! answers what is not a chat upgrade with a proper status, and hands the rest
//! to tokio-websockets, which checks the upgrade headers and answers `101`.
//!
//! We read the head ourselves, rather than letting tokio-websockets do it, so
//! that we can bound its size and refuse a bad path before upgrading; the bytes
//! read are then replayed to tokio-websockets through [`crate::wire::Wire`].

use std::borrow::Cow;
use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::MAX_REQUEST_HEAD_BYTES;
use crate::metrics::Metrics;
use crate::protocol::{
    ChatRequest, JSON_PROTOCOL, Protocol, Resume, name_from_query, query_param, room_from_path,
};

/// Why a request was refused before the upgrade.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or closed before a whole request head arrived.
    #[error("connection ended during the handshake: {0}")]
    Io(#[from] io::Error),
    /// The request was answered with an HTTP status instead of an upgrade.
    #[error("answered with HTTP {status}: {reason}")]
    Refused {
        /// The status sent.
        status: u16,
        /// Why, as sent in the body.
        reason: String,
    },
}

/// Reads one request head and decides: a chat upgrade (returned, with the
/// bytes read so far to replay) or a refusal (already answered).
pub async fn read_request<S>(
    stream: &mut S,
    access: &Access,
    metrics: &Metrics,
) -> Result<(ChatRequest, BytesMut), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        match parse(&buf, access, metrics) {
            None if buf.len() < MAX_REQUEST_HEAD_BYTES => {
                let room = MAX_REQUEST_HEAD_BYTES - buf.len();
                buf.reserve(room.min(4096));
            }
            None => {
                let reason = format!("request head over {MAX_REQUEST_HEAD_BYTES} bytes");
                return Err(refuse(stream, Answer::text(431, reason), Some(metrics)).await);
            }
            Some(Ok(chat)) => return Ok((chat, buf)),
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
/// else the decision. Kept out of the async function so that the header array
/// is not part of every connection's future.
fn parse(buf: &[u8], access: &Access, metrics: &Metrics) -> Option<Result<ChatRequest, Answer>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_REQUEST_HEAD_BYTES => {
            let head = request.method == Some("HEAD");
            Some(route(&request, access, metrics).map_err(|answer| Answer { head, ..answer }))
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

/// Decides what to do with a complete request head.
fn route(
    request: &httparse::Request<'_, '_>,
    access: &Access,
    metrics: &Metrics,
) -> Result<ChatRequest, Answer> {
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
        return Err(Answer::text(200, "ok".into()));
    }
    if matches!(path, "/readyz" | "/healthz") && readable && !upgrade {
        return Err(if metrics.ready() {
            Answer::text(200, "ok".into())
        } else {
            Answer::text(503, "the link to the other nodes is down".into())
        });
    }
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
    if !access.admits(request, query) {
        // A browser visiting a room is asked for the token by a form.
        if !upgrade && path != "/metrics" {
            return Err(Answer::new(401, HTML, TOKEN_PAGE.into()));
        }
        return Err(Answer::text(
            401,
            "a valid token is required: Authorization: Bearer TOKEN, or ?token=".into(),
        ));
    }
    // For Prometheus; behind the token when there is one.
    let Some(room) = room else {
        return Err(Answer::new(200, OPENMETRICS, metrics.encode().into()));
    };
    if let Some(origin) = header(request, "origin")
        && !access.allows(origin, header(request, "host"))
    {
        return Err(Answer::text(
            403,
            format!("origin {origin:?} is not allowed (see --allow-origin)"),
        ));
    }
    // A browser visiting a room: the web page, which then connects to it.
    if !upgrade {
        return Err(Answer::new(200, HTML, PAGE.into()));
    }
    // Any of the offered subprotocols, comma-separated, may be ours.
    let json = request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("sec-websocket-protocol")
            && std::str::from_utf8(h.value)
                .is_ok_and(|v| v.split(',').any(|p| p.trim() == JSON_PROTOCOL))
    });
    Ok(ChatRequest {
        room: room.to_owned(),
        name: name_from_query(query),
        resume: resume(query)?,
        protocol: if json { Protocol::Json } else { Protocol::Text },
        session: query_param(query, "session"),
    })
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
}

impl Access {
    /// Whether the request presents the token, when one is required: as
    /// `Authorization: Bearer TOKEN` or, for browsers, `?token=TOKEN`.
    fn admits(&self, request: &httparse::Request<'_, '_>, query: Option<&str>) -> bool {
        use subtle::ConstantTimeEq as _;
        let Some(token) = &self.token else { return true };
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        let bearer = header(request, "authorization")
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, value)| value.trim().to_owned());
        let presented = bearer.or_else(|| query_param(query, "token"));
        // Compared in constant time, so timing does not reveal how much matched.
        presented.is_some_and(|presented| bool::from(presented.as_bytes().ct_eq(token.as_bytes())))
    }

    /// Browsers send `Origin`; a page from another site must not be able to
    /// open a chat connection with its visitors' access (cross-site WebSocket
    /// hijacking). Terminal tools send no Origin and are not affected.
    fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        // Compared as bytes: a split inside a multi-byte character must not
        // panic (`Origin: http:/éab` once did).
        let own = host.is_some_and(|host| {
            let (origin, host) = (origin.as_bytes(), host.as_bytes());
            ["http://", "https://"].iter().any(|scheme| {
                let scheme = scheme.as_bytes();
                origin.len() == scheme.len() + host.len()
                    && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
                    && origin[scheme.len()..].eq_ignore_ascii_case(host)
            })
        });
        own || self.allowed_origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }
}

/// A header's value, if present and text.
fn header<'a>(request: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a str> {
    let header = request.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
    std::str::from_utf8(header.value).ok().map(str::trim)
}

/// The content type of `/metrics`.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An HTTP response given instead of an upgrade.
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
}

impl Answer {
    /// An answer with a body.
    pub fn new(status: u16, content_type: &'static str, body: Cow<'static, str>) -> Self {
        Self { status, content_type, body, head: false }
    }

    /// A plain-text answer; a trailing newline is added.
    pub fn text(status: u16, reason: String) -> Self {
        Self::new(status, "text/plain; charset=utf-8", (reason + "\n").into())
    }
}

/// Answers instead of upgrading, counts the refusal by its status in
/// `metrics` if given, and closes; returns the matching error.
pub async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    answer: Answer,
    metrics: Option<&Metrics>,
) -> HandshakeError {
    let Answer { status, content_type, body, head } = answer;
    let reason = match status {
        200 => None,
        400 => Some("bad_request"),
        401 => Some("unauthorized"),
        403 => Some("origin"),
        404 => Some("not_found"),
        405 => Some("method"),
        431 => Some("too_large"),
        503 => Some("full"),
        _ => Some("other"),
    };
    if let (Some(reason), Some(metrics)) = (reason, metrics) {
        metrics.refuse(reason);
    }
    let phrase = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Error");
    let extra = match status {
        401 => "WWW-Authenticate: Bearer\r\n",
        405 => "Allow: GET\r\n",
        _ => "",
    };
    let response = format!(
        "HTTP/1.1 {status} {phrase}\r\n{extra}Content-Type: {content_type}\r\n\
         Content-Length: {}\r\nX-Content-Type-Options: nosniff\r\n\
         Connection: close\r\n\r\n{}",
        body.len(),
        if head { "" } else { &*body },
    );
    // The peer may already be gone; the refusal stands either way.
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    HandshakeError::Refused { status, reason: body.trim_end().to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Whatever arrives, the parser decides or waits for more; it never panics.
        #[test]
        fn any_bytes_are_decided_or_awaited(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse(&bytes, &Access::default(), &Metrics::default());
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
            match parse(head.as_bytes(), &Access::default(), &Metrics::default()) {
                Some(Ok(chat)) => {
                    let path = target.split('?').next().unwrap_or_default();
                    prop_assert_eq!(room_from_path(path), Ok(chat.room.as_str()));
                }
                Some(Err(answer)) => prop_assert!((200..600).contains(&answer.status)),
                None => prop_assert!(false, "a complete head must be decided"),
            }
        }
    }
}
