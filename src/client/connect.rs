//! Connecting: the upgrade, and one-line descriptions of what went wrong.
//!
//! The client writes the upgrade request and reads the response head itself,
//! then hands the stream to tokio-websockets: its own connect reports only
//! the status of a refusal, while the server's body says why, and
//! `Retry-After` says when to come back.

use std::io;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::Uri;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, lookup_host};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, WebSocketStream};

use super::{Error, Session, chat_uri, sanitize};
use crate::client::config::ClientConfig;
use crate::protocol::JSON_PROTOCOL;

/// How long connecting and upgrading may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest upgrade response head the client reads.
const MAX_HEAD_BYTES: u64 = 16 * 1024;

/// The most of a refusal's body read for its explanation.
const MAX_BODY_BYTES: u64 = 4 * 1024;

/// How long a refusal's body may take after its head: a server that neither
/// sends a length nor closes must not turn a refusal into a timeout.
const BODY_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest explanation quoted from a refusal's body, in characters.
const MAX_EXPLANATION_CHARS: usize = 200;

/// Appended to the key to make the expected `Sec-WebSocket-Accept` (RFC 6455).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A connected WebSocket. The reader holds what the server sent right after
/// its upgrade response (the welcome), so nothing is lost in the hand-over.
pub(super) type Socket = WebSocketStream<BufReader<MaybeTlsStream<TcpStream>>>;

/// The client's TLS: the system's roots and `--ca-cert`, or any certificate
/// with `--insecure`, which then warns on stderr once.
pub(super) fn tls_connector(config: &ClientConfig) -> Result<TlsConnector, Error> {
    if !config.insecure {
        return Ok(crate::tls::connector(config.ca_cert.as_deref())?);
    }
    if config.url.parse::<Uri>().is_ok_and(|uri| uri.scheme_str() == Some("wss")) {
        eprintln!("warning: --insecure: the server's certificate is not checked");
    }
    Ok(crate::tls::insecure_connector()?)
}

/// Connects and upgrades, asking to resume where `session` left.
pub(super) async fn connect(
    config: &ClientConfig,
    tls: &TlsConnector,
    session: &Session,
) -> Result<Socket, Error> {
    let resume = session.epoch.as_deref().map(|epoch| (session.seq.unwrap_or(0), epoch));
    let secret = session.secret.as_deref();
    let uri = chat_uri(&config.url, session.name.as_deref(), resume, secret)?;
    let failure = match timeout(CONNECT_TIMEOUT, upgrade(&uri, config.token.as_deref(), tls)).await
    {
        Ok(Ok(ws)) => return Ok(ws),
        Ok(Err(failure)) => failure,
        Err(_) => Failure::TimedOut,
    };
    let retry_after = match failure {
        Failure::Refused { retry_after, .. } => retry_after,
        _ => None,
    };
    Err(Error::Connect {
        url: config.url.clone(),
        temporary: failure.is_temporary(),
        retry_after,
        cause: failure.to_string(),
    })
}

/// Why one attempt failed; its text becomes the cause of [`Error::Connect`].
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("the token is not a valid header value")]
    BadToken,
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{}", describe_io(.0))]
    Io(#[from] io::Error),
    #[error("timed out")]
    TimedOut,
    #[error("{host:?} is not a valid TLS server name")]
    BadServerName { host: String },
    #[error(
        "the server's certificate is not trusted ({reason}): \
         pass its CA with --ca-cert, or -k to skip the check"
    )]
    Untrusted { reason: String },
    #[error("the server's certificate is refused ({reason}); -k skips the check")]
    BadCertificate { reason: String },
    #[error("the server does not speak TLS: try ws://")]
    NotTls,
    #[error("TLS failed: {0}")]
    Tls(String),
    #[error("the server speaks TLS: try wss://")]
    SpeaksTls,
    #[error("the server's answer is not HTTP: {0}")]
    NotHttp(String),
    #[error("the server's response head is over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// `detail` is empty or starts with ": ".
    #[error("the server refused the upgrade with HTTP {status}{detail}")]
    Refused { status: u16, detail: String, retry_after: Option<Duration> },
    #[error("the server's upgrade response is invalid: {0}")]
    BadUpgrade(&'static str),
    #[error("the server does not speak {JSON_PROTOCOL}")]
    NoProtocol,
}

impl Failure {
    /// Whether trying again later may work: the server is down, restarting
    /// or full. A proxy in front of a restarting server answers 502 or 504.
    fn is_temporary(&self) -> bool {
        match self {
            Self::Io(error) => error.kind() != io::ErrorKind::InvalidData,
            Self::TimedOut => true,
            Self::Refused { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            _ => false,
        }
    }
}

/// Opens the connection, upgrades it and hands it to tokio-websockets.
async fn upgrade(uri: &Uri, token: Option<&str>, tls: &TlsConnector) -> Result<Socket, Failure> {
    let mut nonce = [0; 16];
    fastrand::fill(&mut nonce);
    let key = BASE64.encode(nonce);
    let request = request(uri, &key, token)?;
    let mut stream = BufReader::new(open(uri, tls).await?);
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;

    let head = read_head(&mut stream).await?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Failure::NotHttp("a partial head".into())),
        Err(error) => return Err(Failure::NotHttp(error.to_string())),
    }
    let headers = response.headers;
    let status = response.code.unwrap_or_default();
    if status != 101 {
        return Err(refusal(status, headers, &mut stream).await);
    }
    if !header(headers, "upgrade").is_some_and(|value| value.eq_ignore_ascii_case(b"websocket")) {
        return Err(Failure::BadUpgrade("no Upgrade: websocket"));
    }
    let connection = header(headers, "connection").unwrap_or_default();
    if !connection
        .split(|&b| b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    {
        return Err(Failure::BadUpgrade("no Connection: Upgrade"));
    }
    if header(headers, "sec-websocket-accept") != Some(accept(&key).as_bytes()) {
        return Err(Failure::BadUpgrade("the wrong Sec-WebSocket-Accept"));
    }
    if header(headers, "sec-websocket-protocol") != Some(JSON_PROTOCOL.as_bytes()) {
        return Err(Failure::NoProtocol);
    }
    // The same default limits and settings as tokio-websockets' own connect.
    Ok(ClientBuilder::new().take_over(stream))
}

/// The upgrade request for `uri`.
fn request(uri: &Uri, key: &str, token: Option<&str>) -> Result<String, Failure> {
    let target = match uri.path_and_query().map(http::uri::PathAndQuery::as_str) {
        Some(target) if target.starts_with('/') => target.to_owned(),
        Some(target) => format!("/{target}"),
        None => "/".to_owned(),
    };
    let host = uri.host().unwrap_or_default();
    let host = match uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let authorization = match token {
        Some(token) => {
            // A line break in the token would end the header early.
            if http::HeaderValue::from_str(token).is_err() {
                return Err(Failure::BadToken);
            }
            format!("Authorization: Bearer {token}\r\n")
        }
        None => String::new(),
    };
    Ok(format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {JSON_PROTOCOL}\r\n{authorization}\r\n"
    ))
}

/// A TCP connection to the URL's host, by name or address, then TLS for
/// `wss://` with the host as the server name.
async fn open(uri: &Uri, tls: &TlsConnector) -> Result<MaybeTlsStream<TcpStream>, Failure> {
    let secure = uri.scheme_str() == Some("wss");
    // An IPv6 host comes in brackets, which neither lookup nor TLS wants.
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let addresses = lookup_host((host, port))
        .await
        .map_err(|error| Failure::Resolve { host: host.to_owned(), reason: error.to_string() })?;
    let mut last = None;
    let mut tcp = None;
    // `localhost` may name ::1 first while the server listens on 127.0.0.1.
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(error) => last = Some(error),
        }
    }
    let tcp = match (tcp, last) {
        (Some(tcp), _) => tcp,
        (None, Some(error)) => return Err(Failure::Io(error)),
        (None, None) => {
            let reason = "no address".to_owned();
            return Err(Failure::Resolve { host: host.to_owned(), reason });
        }
    };
    if !secure {
        return Ok(MaybeTlsStream::Plain(tcp));
    }
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| Failure::BadServerName { host: host.to_owned() })?;
    match tls.connect(name, tcp).await {
        Ok(stream) => Ok(MaybeTlsStream::Rustls(stream)),
        Err(error) => Err(tls_failure(error)),
    }
}

/// What a failed TLS handshake means for the user.
fn tls_failure(error: io::Error) -> Failure {
    let Some(tls) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return Failure::Io(error);
    };
    match tls {
        rustls::Error::InvalidCertificate(certificate) => {
            // The variant's name is short and searchable; its Debug context
            // (times, names) would make the line long.
            let debug = format!("{certificate:?}");
            let name = debug.split(['(', ' ', '{']).next().unwrap_or_default();
            let reason = name.strip_suffix("Context").unwrap_or(name).to_owned();
            // Only an unknown issuer is cured by trusting a CA.
            if matches!(certificate, rustls::CertificateError::UnknownIssuer) {
                Failure::Untrusted { reason }
            } else {
                Failure::BadCertificate { reason }
            }
        }
        // Bytes that are not TLS records: most likely an HTTP answer.
        rustls::Error::InvalidMessage(_) => Failure::NotTls,
        other => Failure::Tls(other.to_string()),
    }
}

/// Reads the response head, through the blank line and no further.
async fn read_head<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, Failure> {
    let mut head = Vec::new();
    loop {
        let room = MAX_HEAD_BYTES - head.len() as u64;
        let read = (&mut *reader).take(room).read_until(b'\n', &mut head).await?;
        // A TLS record (handshake or alert) where HTTP was expected.
        if head.first().is_some_and(|byte| (0x14..=0x17).contains(byte)) {
            return Err(Failure::SpeaksTls);
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(head);
        }
        if head.len() as u64 >= MAX_HEAD_BYTES {
            return Err(Failure::HeadTooLarge);
        }
        if read == 0 {
            return Err(Failure::Io(io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// A refusal, with the first line of its body (or where it redirects) and,
/// for 429 and 503, how long the server asks the client to wait.
async fn refusal<R: AsyncBufRead + Unpin>(
    status: u16,
    headers: &[httparse::Header<'_>],
    reader: &mut R,
) -> Failure {
    let text = |value: &[u8]| String::from_utf8_lossy(value).into_owned();
    let retry_after = if matches!(status, 429 | 503) {
        header(headers, "retry-after")
            .and_then(|value| std::str::from_utf8(value).ok()?.trim().parse().ok())
            .map(Duration::from_secs)
    } else {
        None
    };
    let explanation = if (300..400).contains(&status) {
        header(headers, "location").map(|location| format!("redirected to {}", text(location)))
    } else if header(headers, "content-type")
        .is_some_and(|kind| kind.len() >= 9 && kind[..9].eq_ignore_ascii_case(b"text/html"))
    {
        // Its first line is markup, not an explanation.
        None
    } else {
        let chunked = header(headers, "transfer-encoding")
            .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"));
        let length = header(headers, "content-length")
            .and_then(|value| std::str::from_utf8(value).ok()?.trim().parse::<u64>().ok());
        let mut body = Vec::new();
        if length != Some(0) && !matches!(status, 204 | 304) {
            let limit = length.unwrap_or(MAX_BODY_BYTES).min(MAX_BODY_BYTES);
            // What arrived in time is kept, so a slow body still explains.
            let _ = timeout(BODY_TIMEOUT, reader.take(limit).read_to_end(&mut body)).await;
        }
        let body = text(&body);
        // A chunked body starts with its first chunk's size in hex.
        let skip = usize::from(chunked);
        body.lines().skip(skip).map(str::trim).find(|line| !line.is_empty()).map(str::to_owned)
    };
    let explanation = explanation.map_or_else(String::new, |explanation| {
        let mut short: String = explanation.chars().take(MAX_EXPLANATION_CHARS).collect();
        if short.len() < explanation.len() {
            short.push('…');
        }
        format!(": {}", sanitize(&short))
    });
    let wait =
        retry_after.map_or_else(String::new, |wait| format!(" (retry after {} s)", wait.as_secs()));
    // The server names its headers; this client's own way is a flag.
    let hint = if status == 401 { " (this client sends one with --token)" } else { "" };
    let detail = format!("{explanation}{wait}{hint}");
    Failure::Refused { status, detail, retry_after }
}

/// The value of the first header named `name`, in any case.
fn header<'h>(headers: &[httparse::Header<'h>], name: &str) -> Option<&'h [u8]> {
    headers.iter().find(|header| header.name.eq_ignore_ascii_case(name)).map(|header| header.value)
}

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
fn accept(key: &str) -> String {
    BASE64.encode(sha1_smol::Sha1::from(format!("{key}{ACCEPT_GUID}")).digest().bytes())
}

/// One line for an I/O error, without Debug noise.
fn describe_io(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::UnexpectedEof => "the server closed the connection".into(),
        _ => error.to_string(),
    }
}

/// One line for a connection error, without Debug noise.
pub(super) fn describe(error: &tokio_websockets::Error) -> String {
    match error {
        tokio_websockets::Error::Io(error) => describe_io(error),
        error => error.to_string(),
    }
}

pub(super) fn describe_code(code: u16) -> String {
    match code {
        1000 => "normal closure".into(),
        1001 => "going away".into(),
        1005 => "no reason given".into(),
        1008 => "policy violation".into(),
        1009 => "message too big".into(),
        1011 => "server error".into(),
        code => format!("code {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_the_rfc_example() {
        assert_eq!(accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[tokio::test]
    async fn the_head_is_read_up_to_the_blank_line_and_no_further() {
        let mut reader = &b"HTTP/1.1 101 Switching Protocols\r\nA: b\r\n\r\n\x81\x02hi"[..];
        let head = read_head(&mut reader).await.unwrap();
        assert!(head.ends_with(b"A: b\r\n\r\n"));
        assert_eq!(reader, b"\x81\x02hi");
    }

    #[tokio::test]
    async fn a_head_without_end_is_bounded() {
        let endless = b"X: y\r\n".repeat(4000);
        let error = read_head(&mut &endless[..]).await.unwrap_err();
        assert!(matches!(error, Failure::HeadTooLarge), "{error}");
    }
}
