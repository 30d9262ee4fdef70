//! The server's own origins and names, from its configuration rather than
//! from the request: the loopback names on its port when it listens on
//! loopback, and the `--public-url`s it is reached by behind a proxy.
//!
//! A page from another site must not reach the chat with its visitors'
//! access (cross-site WebSocket hijacking), and a DNS-rebinding page, whose
//! name points at 127.0.0.1, must not pass for the server's own.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::Uri;
use http::uri::Authority;

/// A public origin of the server (`--public-url`): scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    secure: bool,
    /// Lower case; an IPv6 address in brackets.
    host: String,
    port: u16,
}

impl FromStr for PublicUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let uri: Uri = text.trim().parse().map_err(|error| format!("{text:?}: {error}"))?;
        let secure = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http" | "ws") => false,
            Some("https" | "wss") => true,
            _ => return Err(format!("{text:?} is not an http:// or https:// URL")),
        };
        let authority = uri.authority().ok_or_else(|| format!("{text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{text:?}: a public URL has no user name"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!("{text:?}: a public URL is an origin, without a path"));
        }
        let port = authority.port_u16().unwrap_or(if secure { 443 } else { 80 });
        Ok(Self { secure, host: authority.host().to_ascii_lowercase(), port })
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// Which origins and `Host` values are the server's own.
#[derive(Debug, Clone, Default)]
pub struct OwnOrigins {
    /// Whether pages are served over TLS (`https://`).
    secure: bool,
    /// The port loopback names are own on, when listening on loopback or on
    /// every address (an admin on the machine itself opens `localhost`).
    loopback_port: Option<u16>,
    /// Whether the `Host` of a browser's request must be own too: on a
    /// loopback bind, where no other name can be meant (DNS rebinding).
    host_checked: bool,
    /// `--public-url`.
    public: Vec<PublicUrl>,
}

impl OwnOrigins {
    /// The own origins of a server listening on `bound`.
    pub fn new(bound: SocketAddr, secure: bool, public: Vec<PublicUrl>) -> Self {
        let loopback = bound.ip().is_loopback()
            || matches!(bound.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
        let port = (loopback || bound.ip().is_unspecified()).then_some(bound.port());
        Self { secure, loopback_port: port, host_checked: loopback, public }
    }

    /// Whether `origin` (an `Origin` header) is the server's own. Without a
    /// loopback bind or public URLs, the server cannot know its names, and
    /// takes the request's `Host` for its own (README says to configure them).
    pub fn is_own_origin(&self, origin: &str, host: Option<&str>) -> bool {
        if !self.host_checked && self.public.is_empty() {
            return matches_host(origin, host);
        }
        let Some((secure, authority)) = parse_origin(origin) else { return false };
        let port = authority.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let host = authority.host();
        self.loopback_port
            .is_some_and(|own| secure == self.secure && port == own && is_loopback(host))
            || self.public.iter().any(|public| {
                public.secure == secure
                    && public.port == port
                    && public.host.eq_ignore_ascii_case(host)
            })
    }

    /// Whether a browser's request with this `Host` may be served: always,
    /// unless the server listens on loopback, where only its loopback names
    /// and public URLs on its port are (DNS rebinding).
    pub fn is_own_host(&self, host: Option<&str>) -> bool {
        let Some(own_port) = self.loopback_port.filter(|_| self.host_checked) else {
            return true;
        };
        let Some(authority) = host.and_then(|host| host.parse::<Authority>().ok()) else {
            return false;
        };
        if authority.as_str().contains('@') {
            return false;
        }
        let default = if self.secure { 443 } else { 80 };
        let port = authority.port_u16();
        let name = authority.host();
        (port.unwrap_or(default) == own_port && is_loopback(name))
            || self.public.iter().any(|public| {
                port.unwrap_or(if public.secure { 443 } else { 80 }) == public.port
                    && public.host.eq_ignore_ascii_case(name)
            })
    }
}

/// `scheme://host[:port]`, nothing more, of http or https.
fn parse_origin(origin: &str) -> Option<(bool, Authority)> {
    let uri: Uri = origin.parse().ok()?;
    let secure = match uri.scheme_str()? {
        scheme if scheme.eq_ignore_ascii_case("http") => false,
        scheme if scheme.eq_ignore_ascii_case("https") => true,
        _ => return None,
    };
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return None;
    }
    let authority = uri.authority()?.clone();
    (!authority.as_str().contains('@')).then_some((secure, authority))
}

/// `localhost`, a name under `.localhost` (which browsers never look up), or
/// a loopback address.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost")
        || host.len() > ".localhost".len()
            && host.is_char_boundary(host.len() - ".localhost".len())
            && host[host.len() - ".localhost".len()..].eq_ignore_ascii_case(".localhost")
    {
        return true;
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    })
}

/// Today's rule without configured names: the origin is `http://` or
/// `https://` and the request's own `Host`. Compared as bytes: a split inside
/// a multi-byte character must not panic (`Origin: http:/éab` once did).
fn matches_host(origin: &str, host: Option<&str>) -> bool {
    host.is_some_and(|host| {
        let (origin, host) = (origin.as_bytes(), host.as_bytes());
        ["http://", "https://"].iter().any(|scheme| {
            let scheme = scheme.as_bytes();
            origin.len() == scheme.len() + host.len()
                && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
                && origin[scheme.len()..].eq_ignore_ascii_case(host)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(port: u16, public: &[&str]) -> OwnOrigins {
        let public = public.iter().map(|url| url.parse().expect("a public URL")).collect();
        OwnOrigins::new(SocketAddr::from(([127, 0, 0, 1], port)), false, public)
    }

    #[test]
    fn on_loopback_only_loopback_names_on_the_port_are_own() {
        let own = loopback(8080, &[]);
        for origin in [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
            "HTTP://LocalHost:8080",
        ] {
            assert!(own.is_own_origin(origin, Some("evil.example")), "{origin}");
        }
        for origin in [
            "http://evil.example:8080",
            "http://127.0.0.1:8081",
            "https://127.0.0.1:8080",
            "http://127.0.0.1",
            "null",
            "http://127.0.0.1:8080/x",
        ] {
            assert!(!own.is_own_origin(origin, Some(origin)), "{origin}");
        }
        assert!(own.is_own_host(Some("127.0.0.1:8080")));
        assert!(own.is_own_host(Some("a.localhost:8080")));
        assert!(!own.is_own_host(Some("evil.example:8080")));
        assert!(!own.is_own_host(Some("127.0.0.1")));
        assert!(!own.is_own_host(None));
        assert!(loopback(80, &[]).is_own_host(Some("localhost")));
    }

    #[test]
    fn public_urls_are_own_and_without_them_a_wildcard_bind_matches_host() {
        let own = loopback(8080, &["https://chat.example.com"]);
        assert!(own.is_own_origin("https://chat.example.com", None));
        assert!(own.is_own_origin("https://chat.example.com:443", None));
        assert!(!own.is_own_origin("http://chat.example.com", None));
        assert!(own.is_own_host(Some("chat.example.com")));
        let wildcard = OwnOrigins::new(SocketAddr::from(([0, 0, 0, 0], 8080)), false, Vec::new());
        assert!(wildcard.is_own_origin("http://box:8080", Some("box:8080")));
        assert!(!wildcard.is_own_origin("http://evil", Some("box:8080")));
        assert!(wildcard.is_own_host(Some("anything")));
        // With public URLs, a wildcard bind still takes loopback names on its
        // port for its own (the machine's admin), and no other name.
        let public = vec!["https://chat.example.com".parse().expect("a public URL")];
        let wildcard = OwnOrigins::new(SocketAddr::from(([0, 0, 0, 0], 8080)), false, public);
        assert!(wildcard.is_own_origin("https://chat.example.com", Some("box:8080")));
        assert!(wildcard.is_own_origin("http://localhost:8080", Some("localhost:8080")));
        assert!(!wildcard.is_own_origin("http://localhost:8081", Some("localhost:8081")));
        assert!(!wildcard.is_own_origin("http://box:8080", Some("box:8080")));
        assert!(wildcard.is_own_host(Some("box:8080")));
        assert!("ftp://x".parse::<PublicUrl>().is_err());
        assert!("https://x/path".parse::<PublicUrl>().is_err());
    }
}
