//! Single-use tickets: a browser cannot put `Authorization` on a WebSocket,
//! so the page exchanges its token for a ticket (`POST /api/ticket`, with
//! the token in `Authorization`) and connects with `?ticket=`. The token is
//! checked at the exchange, as an upgrade checks it; the ticket then stands
//! for what it proved, once, for [`TICKET_LIFETIME`].
//!
//! A ticket is 128 random bits in hex: it is looked up by its value, which
//! nobody can guess, so the lookup's timing tells nothing useful.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::protocol::Who;
use crate::server::address::AddressKey;
use crate::server::config::{MAX_TICKETS, MAX_TICKETS_EACH, TICKET_LIFETIME};
use crate::util::lock;

/// Why no ticket was issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// [`MAX_TICKETS`] are waiting to be used, or [`MAX_TICKETS_EACH`] of
    /// this address or `sub`, none of them expired.
    #[error("too many tickets waiting to be used: try again later")]
    Full,
    /// The system gave no random numbers.
    #[error("no random numbers for a ticket: {0}")]
    Random(#[from] getrandom::Error),
}

/// The tickets issued and not used yet: who each stands for, the address
/// it was issued to, and when it expires.
#[derive(Default)]
pub struct Tickets {
    waiting: Mutex<HashMap<String, (Who, AddressKey, Instant)>>,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A ticket stands for a token: never in a log.
        write!(f, "Tickets({} waiting)", lock(&self.waiting).len())
    }
}

impl Tickets {
    /// A new ticket standing for `who` until [`TICKET_LIFETIME`] from now,
    /// for a client at `address`: an address, and a token's `sub`, may
    /// have at most [`MAX_TICKETS_EACH`] waiting.
    pub fn issue(&self, who: Who, address: AddressKey) -> Result<String, TicketError> {
        self.issue_at(who, address, Instant::now())
    }

    /// Who `ticket` stands for, if it was issued, is not used yet and has
    /// not expired; it is used up either way.
    pub fn redeem(&self, ticket: &str) -> Option<Who> {
        self.redeem_at(ticket, Instant::now())
    }

    fn issue_at(&self, who: Who, address: AddressKey, now: Instant) -> Result<String, TicketError> {
        let mut random = [0; 16];
        getrandom::fill(&mut random)?;
        let ticket = crate::util::hex(&random);
        let mut waiting = lock(&self.waiting);
        waiting.retain(|_, (_, _, expires)| *expires > now);
        // Neither one address nor one person may take every place: a page
        // needs one at a time.
        let sub = who.identity().map(|identity| &identity.sub);
        let (mut from_address, mut of_sub) = (0, 0);
        for (other, from, _) in waiting.values() {
            from_address += usize::from(*from == address);
            of_sub += usize::from(sub.is_some() && other.identity().map(|i| &i.sub) == sub);
        }
        if from_address >= MAX_TICKETS_EACH
            || of_sub >= MAX_TICKETS_EACH
            || waiting.len() >= MAX_TICKETS
        {
            return Err(TicketError::Full);
        }
        waiting.insert(ticket.clone(), (who, address, now + TICKET_LIFETIME));
        Ok(ticket)
    }

    fn redeem_at(&self, ticket: &str, now: Instant) -> Option<Who> {
        let (who, _, expires) = lock(&self.waiting).remove(ticket)?;
        (now < expires).then_some(who)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_good_once_and_only_for_its_lifetime() {
        let (tickets, now) = (Tickets::default(), Instant::now());
        let ticket = tickets.issue_at(Who::Anyone, here(), now).expect("a ticket");
        assert_eq!(ticket.len(), 32);
        assert_eq!(tickets.redeem_at(&ticket, now), Some(Who::Anyone));
        assert_eq!(tickets.redeem_at(&ticket, now), None, "used");
        let late = tickets.issue_at(Who::Anyone, here(), now).expect("a ticket");
        assert_eq!(tickets.redeem_at(&late, now + TICKET_LIFETIME), None, "expired");
        assert_eq!(tickets.redeem_at("00", now), None, "unknown");
    }

    fn here() -> AddressKey {
        AddressKey::of([127, 0, 0, 1].into())
    }

    #[test]
    fn one_address_cannot_take_every_place() {
        let (tickets, now) = (Tickets::default(), Instant::now());
        for _ in 0..MAX_TICKETS_EACH {
            tickets.issue_at(Who::Anyone, here(), now).expect("a ticket");
        }
        assert!(matches!(tickets.issue_at(Who::Anyone, here(), now), Err(TicketError::Full)));
        let elsewhere = AddressKey::of([127, 0, 0, 2].into());
        tickets.issue_at(Who::Anyone, elsewhere, now).expect("another address's");
    }

    #[test]
    fn one_person_cannot_take_every_place_from_many_addresses() {
        let (tickets, now) = (Tickets::default(), Instant::now());
        let person = |sub: &str| {
            Who::User(std::sync::Arc::new(crate::protocol::Identity {
                sub: sub.into(),
                name: sub.into(),
                expires: None,
                rooms: crate::protocol::Scope::All,
                moderates: crate::protocol::Scope::Only(Vec::new()),
            }))
        };
        for n in 0..u32::try_from(MAX_TICKETS_EACH).expect("small") {
            let address = AddressKey::of(std::net::Ipv4Addr::from_bits(n).into());
            tickets.issue_at(person("bob"), address, now).expect("a ticket");
        }
        let fresh = AddressKey::of([10, 9, 9, 9].into());
        assert!(matches!(tickets.issue_at(person("bob"), fresh, now), Err(TicketError::Full)));
        tickets.issue_at(person("carol"), fresh, now).expect("another person's");
    }

    #[test]
    fn a_full_table_makes_room_from_the_expired_only() {
        let (tickets, now) = (Tickets::default(), Instant::now());
        for n in 0..u32::try_from(MAX_TICKETS).expect("small") {
            let address = AddressKey::of(std::net::Ipv4Addr::from_bits(n).into());
            tickets.issue_at(Who::Anyone, address, now).expect("a ticket");
        }
        assert!(matches!(tickets.issue_at(Who::Anyone, here(), now), Err(TicketError::Full)));
        let later = now + TICKET_LIFETIME;
        tickets.issue_at(Who::Anyone, here(), later).expect("room once the others expired");
    }
}
