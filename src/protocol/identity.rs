//! Who a connection is: anyone (no JWT key configured), a guest, or the
//! holder of a signed token, with the claims of that token. The claims are
//! a wire format (tokens are minted by other programs), so they are here;
//! checking signatures is the server's (`server::identity`).

use std::sync::Arc;

use serde::Deserialize;

use crate::protocol::names::{NameError, validate_name};

/// The mark every guest's name starts with. No name may hold it, nor
/// anything that looks like it ([`validate_name`]), so a guest's name can
/// never equal or look like a token holder's, nor like a fallback name
/// (`IP:PORT~2`) given without the mark.
pub const GUEST_MARK: char = '~';

/// Longest `sub` claim, in bytes: it is kept with every connection.
pub const MAX_SUB_BYTES: usize = 256;

/// Most rooms a `rooms` or `mod` claim may list.
pub const MAX_CLAIM_ROOMS: usize = 256;

/// Who a connection is, as its upgrade request proved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Who {
    /// No JWT key is configured: anyone picks a name, as always.
    #[default]
    Anyone,
    /// A JWT key is configured and `--guests` let in a request without a
    /// token: its names carry [`GUEST_MARK`].
    Guest,
    /// The holder of a valid token.
    User(Arc<Identity>),
}

impl Who {
    /// Whether it moderates `room`: a token holder whose `mod` claim names it.
    pub fn moderates(&self, room: &str) -> bool {
        self.identity().is_some_and(|identity| identity.moderates.allows(room))
    }

    /// The identity, for a token holder.
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        match self {
            Who::User(identity) => Some(identity),
            Who::Anyone | Who::Guest => None,
        }
    }
}

/// What a valid token says of its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim: who the holder is. The same `sub` may be connected
    /// several times, and is one person in a room however many.
    pub sub: Arc<str>,
    /// The name shown: the `name` claim, else `sub`; it follows the name rules.
    pub name: String,
    /// The `exp` claim (seconds since the Unix epoch), if any.
    pub expires: Option<u64>,
    /// The rooms the holder may join.
    pub rooms: Scope,
    /// The rooms the holder moderates: `/kick`, `/ban` and the like.
    pub moderates: Scope,
}

/// A set of rooms a claim names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `"*"`: every room.
    All,
    /// These rooms only (none, if empty).
    Only(Vec<String>),
}

impl Scope {
    /// Whether `room` is in the set.
    pub fn allows(&self, room: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(rooms) => rooms.iter().any(|r| r == room),
        }
    }
}

/// The claims a token carries, as sent; checked into an [`Identity`].
#[derive(Debug, Deserialize)]
pub struct Claims {
    /// Who the holder is.
    pub sub: String,
    /// The name shown, for when `sub` is not a usable name.
    #[serde(default)]
    pub name: Option<String>,
    /// When the token expires, in seconds since the Unix epoch.
    #[serde(default)]
    pub exp: Option<u64>,
    /// The rooms the holder may join: `"*"` (or a list holding it) for all.
    /// Absent: all.
    #[serde(default)]
    pub rooms: Option<RoomList>,
    /// The rooms the holder moderates: `"*"` for all. Absent: none.
    #[serde(default, rename = "mod")]
    pub moderates: Option<RoomList>,
}

/// A claim naming rooms: one string, or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RoomList {
    /// One room, or `"*"`.
    One(String),
    /// Several rooms, `"*"` among them meaning all.
    Many(Vec<String>),
}

impl RoomList {
    fn scope(self) -> Result<Scope, ClaimError> {
        let rooms = match self {
            RoomList::One(room) => vec![room],
            RoomList::Many(rooms) => rooms,
        };
        if rooms.len() > MAX_CLAIM_ROOMS {
            return Err(ClaimError::TooManyRooms { max: MAX_CLAIM_ROOMS });
        }
        Ok(if rooms.iter().any(|room| room == "*") { Scope::All } else { Scope::Only(rooms) })
    }
}

/// Why the claims of a correctly signed token are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// `sub` is empty.
    #[error("the token's sub is empty")]
    EmptySub,
    /// `sub` is over [`MAX_SUB_BYTES`].
    #[error("the token's sub is longer than {max} bytes")]
    LongSub {
        /// The limit.
        max: usize,
    },
    /// The name (`name`, else `sub`) breaks the name rules.
    #[error("the token's name {name:?} is not usable: {reason}")]
    Name {
        /// The refused name.
        name: String,
        /// Why.
        reason: NameError,
    },
    /// `rooms` or `mod` lists over [`MAX_CLAIM_ROOMS`].
    #[error("the token lists more than {max} rooms")]
    TooManyRooms {
        /// The limit.
        max: usize,
    },
}

impl TryFrom<Claims> for Identity {
    type Error = ClaimError;

    fn try_from(claims: Claims) -> Result<Self, ClaimError> {
        if claims.sub.is_empty() {
            return Err(ClaimError::EmptySub);
        }
        if claims.sub.len() > MAX_SUB_BYTES {
            return Err(ClaimError::LongSub { max: MAX_SUB_BYTES });
        }
        let name = claims.name.unwrap_or_else(|| claims.sub.clone());
        validate_name(&name).map_err(|reason| ClaimError::Name { name: name.clone(), reason })?;
        Ok(Identity {
            sub: claims.sub.into(),
            name,
            expires: claims.exp,
            rooms: claims.rooms.map_or(Ok(Scope::All), RoomList::scope)?,
            moderates: claims.moderates.map_or(Ok(Scope::Only(Vec::new())), RoomList::scope)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(json: &str) -> Result<Identity, ClaimError> {
        Identity::try_from(serde_json::from_str::<Claims>(json).expect("claims"))
    }

    #[test]
    fn name_defaults_to_sub_and_rooms_to_all() {
        let id = identity(r#"{"sub":"alice"}"#).unwrap();
        assert_eq!((id.name.as_str(), &id.rooms), ("alice", &Scope::All));
        assert_eq!(id.moderates, Scope::Only(Vec::new()));
    }

    #[test]
    fn rooms_take_a_string_a_list_or_a_star() {
        let id = identity(r#"{"sub":"a","rooms":["x","y"],"mod":"*"}"#).unwrap();
        assert!(id.rooms.allows("x") && !id.rooms.allows("z"));
        assert_eq!(id.moderates, Scope::All);
        assert_eq!(identity(r#"{"sub":"a","rooms":["x","*"]}"#).unwrap().rooms, Scope::All);
    }

    #[test]
    fn unusable_names_and_subs_are_refused() {
        assert_eq!(identity(r#"{"sub":""}"#), Err(ClaimError::EmptySub));
        assert!(matches!(identity(r#"{"sub":"a b"}"#), Err(ClaimError::Name { .. })));
        assert!(matches!(identity(r#"{"sub":"u","name":"~bob"}"#), Err(ClaimError::Name { .. })));
    }
}
