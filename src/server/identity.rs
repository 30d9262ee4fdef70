//! Signed identity: checks a JWT against the one configured key
//! (`--jwt-secret` for HS256, `--jwt-public-key` for RS256 or ES256) and
//! turns its claims into an [`Identity`]. The accepted algorithm is pinned
//! to the key, so `alg: none` and an HS256 token signed with the public key
//! are refused.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::protocol::{ClaimError, Claims, Identity};

/// Largest `--jwt-public-key` file read.
pub const MAX_PUBLIC_KEY_BYTES: u64 = 64 * 1024;

/// A public key read from a PEM file (`--jwt-public-key`), with the one
/// algorithm it verifies: RS256 for an RSA key, ES256 for an EC (P-256) key.
#[derive(Clone)]
pub struct PublicKey {
    algorithm: Algorithm,
    key: Arc<DecodingKey>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({:?})", self.algorithm)
    }
}

/// Reads `--jwt-public-key`: the algorithm is chosen by the key's type.
pub fn parse_public_key(path: &str) -> Result<PublicKey, String> {
    let len = std::fs::metadata(path).map_err(|error| format!("cannot read {path:?}: {error}"))?;
    if len.len() > MAX_PUBLIC_KEY_BYTES {
        return Err(format!("{path:?} is over {MAX_PUBLIC_KEY_BYTES} bytes: not a public key"));
    }
    let pem =
        std::fs::read(Path::new(path)).map_err(|error| format!("cannot read {path:?}: {error}"))?;
    let (algorithm, key) = if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        (Algorithm::ES256, key)
    } else if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        (Algorithm::RS256, key)
    } else {
        return Err(format!("{path:?} holds no RSA or EC public key in PEM"));
    };
    Ok(PublicKey { algorithm, key: Arc::new(key) })
}

/// Why a token is refused: each is the one line a 401 carries.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// None was presented, and guests are not let in.
    #[error("a token is required: Authorization: Bearer TOKEN, or ?token=")]
    Missing,
    /// An `Authorization` header that does not carry a bearer token (a
    /// bare `Bearer`, another scheme): refused, not taken for a guest.
    #[error("Authorization carries no bearer token: Authorization: Bearer TOKEN")]
    NotBearer,
    /// Not `--token`, or none (with `--token`, not a JWT key).
    #[error("a valid token is required: Authorization: Bearer TOKEN, or ?token=")]
    NotTheSharedToken,
    /// `exp`, plus the leeway, is past.
    #[error("the token has expired")]
    Expired,
    /// The signature does not match the configured key.
    #[error("the token's signature is not valid")]
    BadSignature,
    /// Signed with another algorithm than the configured key's (`none`
    /// included).
    #[error("the token's algorithm is not the configured key's ({expected:?})")]
    Algorithm {
        /// The configured key's.
        expected: Algorithm,
    },
    /// Not a token, or its claims are not the expected shape (`sub`
    /// missing, say).
    #[error("the token is not valid: {0}")]
    Malformed(String),
    /// A `?ticket=` that was never issued, is used already, or expired.
    #[error("ticket unknown or used")]
    Ticket,
    /// Signed correctly, with claims that cannot be used.
    #[error(transparent)]
    Claims(#[from] ClaimError),
}

/// Checks tokens against the configured key.
pub struct Verifier {
    key: Arc<DecodingKey>,
    validation: Validation,
    leeway: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({:?})", self.validation.algorithms)
    }
}

impl Verifier {
    /// The verifier of `--jwt-secret` or `--jwt-public-key`, if one is set
    /// (both together are refused at start, see
    /// [`ServerConfig::check_identity`](crate::server::config::ServerConfig::check_identity);
    /// the public key wins here).
    ///
    /// # Panics
    ///
    /// With an empty `--jwt-secret`, if the system has no random numbers.
    pub fn from_config(config: &crate::server::config::ServerConfig) -> Option<Self> {
        let (algorithm, key) = match (&config.jwt_public_key, &config.jwt_secret) {
            (Some(public), _) => (public.algorithm, public.key.clone()),
            (None, Some(secret)) => {
                // An empty secret (refused by the flag; a configuration
                // built in code may hold one) admits nobody: a random one
                // stands in, rather than no check at all.
                let key = DecodingKey::from_secret(secret.as_bytes()).or_else(|_| {
                    let mut random = [0; 32];
                    getrandom::fill(&mut random).expect("the system's random numbers");
                    DecodingKey::from_secret(&random)
                });
                (Algorithm::HS256, Arc::new(key.expect("a non-empty secret is a key")))
            }
            (None, None) => return None,
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.jwt_leeway.as_secs();
        validation.set_required_spec_claims(&["sub"]);
        // Audiences are not configured: a token's `aud` is not checked.
        validation.validate_aud = false;
        validation.validate_nbf = true;
        Some(Verifier { key, validation, leeway: config.jwt_leeway })
    }

    /// The identity `token` proves.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let expected = self.validation.algorithms[0];
        // Said plainly, rather than as what the decoder tripped on.
        if token.split('.').count() != 3 {
            return Err(TokenError::Malformed(
                "a JWT is three base64url parts separated by dots".into(),
            ));
        }
        // Read first, so that an algorithm the crate does not know (`none`)
        // is told as such, not as malformed JSON.
        if header_alg(token).is_some_and(|alg| alg != format!("{expected:?}")) {
            return Err(TokenError::Algorithm { expected });
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::Algorithm { expected }
                }
                _ => TokenError::Malformed(error.to_string()),
            },
        )?;
        Ok(Identity::try_from(data.claims)?)
    }

    /// How long from now until a connection made with `identity` is closed:
    /// its `exp` plus the leeway; `None` without `exp`, or with one past
    /// what the clock can count (which is never, then).
    pub fn lifetime(&self, identity: &Identity) -> Option<Duration> {
        let expires = UNIX_EPOCH
            .checked_add(Duration::from_secs(identity.expires?))?
            .checked_add(self.leeway)?;
        Some(expires.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
    }
}

/// The `alg` a token's header names, if it has a readable one.
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    header.get("alg")?.as_str().map(str::to_owned)
}
