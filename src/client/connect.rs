//! Connecting: the upgrade, and one-line descriptions of what went wrong.

use std::io;
use std::time::Duration;

use http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio::time::timeout;
use tokio_websockets::{ClientBuilder, Connector};

use super::{Error, Session, Socket, chat_uri};
use crate::config::ClientConfig;
use crate::protocol::JSON_PROTOCOL;

/// How long connecting and upgrading may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects and upgrades, asking to resume where `session` left.
pub(super) async fn connect(
    config: &ClientConfig,
    tls: &Connector,
    session: &Session,
) -> Result<Socket, Error> {
    let url = config.url.clone();
    let resume = session.epoch.as_deref().map(|epoch| (session.seq.unwrap_or(0), epoch));
    let secret = session.secret.as_deref();
    let uri = chat_uri(&url, session.name.as_deref(), resume, secret)?;
    let failed = |cause, temporary| Error::Connect { url: url.clone(), cause, temporary };
    let mut builder = ClientBuilder::from_uri(uri)
        .connector(tls)
        .add_header(SEC_WEBSOCKET_PROTOCOL, http::HeaderValue::from_static(JSON_PROTOCOL))
        .map_err(|error| failed(error.to_string(), false))?;
    if let Some(token) = &config.token {
        let bearer = http::HeaderValue::from_str(&format!("Bearer {token}"));
        builder = bearer
            .ok()
            .and_then(|value| builder.add_header(http::header::AUTHORIZATION, value).ok())
            .ok_or_else(|| failed("the token is not a valid header value".into(), false))?;
    }
    let (ws, response) = match timeout(CONNECT_TIMEOUT, builder.connect()).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(error)) => return Err(failed(describe(&error), is_temporary(&error))),
        Err(_) => return Err(failed("timed out".into(), true)),
    };
    let protocol = response.headers().get(SEC_WEBSOCKET_PROTOCOL);
    if protocol.is_none_or(|p| p != JSON_PROTOCOL) {
        return Err(failed(format!("the server does not speak {JSON_PROTOCOL}"), false));
    }
    Ok(ws)
}

/// Whether a failed connection attempt may work later.
fn is_temporary(error: &tokio_websockets::Error) -> bool {
    use tokio_websockets::Error as E;
    use tokio_websockets::upgrade::Error as U;
    match error {
        E::Upgrade(U::DidNotSwitchProtocols(status)) => *status == 503,
        E::Upgrade(_) | E::CannotResolveHost => false,
        // A certificate that fails verification will fail again.
        E::Io(error) if error.kind() == io::ErrorKind::InvalidData => false,
        _ => true,
    }
}

/// One line for a connection error, without Debug noise.
pub(super) fn describe(error: &tokio_websockets::Error) -> String {
    use tokio_websockets::Error as E;
    match error {
        E::Io(error) => match error.kind() {
            io::ErrorKind::ConnectionRefused => "connection refused".into(),
            io::ErrorKind::ConnectionReset => "connection reset".into(),
            io::ErrorKind::UnexpectedEof => "the server closed the connection".into(),
            _ => error.to_string(),
        },
        E::Upgrade(tokio_websockets::upgrade::Error::DidNotSwitchProtocols(status)) => {
            format!("the server refused the upgrade with HTTP {status}")
        }
        E::CannotResolveHost => "cannot resolve the host".into(),
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
