//! Single-use tickets: a browser cannot put `Authorization` on a WebSocket,
//! so the page exchanges its token for a ticket (`POST /api/ticket`, with
//! the token in `Authorization`) and connects with `?ticket=`. The token is
//! checked at the exchange, as an upgrade checks it; the ticket then stands
//! for what it proved, once, for [`TICKET_LIFETIME`].
//!
//! A ticket is 128 random bits in hex: it is looked up by its value, which
//! nobody can guess, so the lookup's timing tells nothing useful.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::protocol::Who;
use crate::server::config::{MAX_TICKETS, TICKET_LIFETIME};
use crate::util::lock;

/// Why no ticket was issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// [`MAX_TICKETS`] are waiting to be used, none of them expired.
    #[error("too many tickets waiting to be used: try again later")]
    Full,
    /// The system gave no random numbers.
    #[error("no random numbers for a ticket: {0}")]
    Random(#[from] getrandom::Error),
}

/// The tickets issued and not used yet.
#[derive(Debug, Default)]
pub struct Tickets {
    waiting: Mutex<HashMap<String, (Who, Instant)>>,
}

impl Tickets {
    /// A new ticket standing for `who` until [`TICKET_LIFETIME`] from now.
    pub fn issue(&self, who: Who) -> Result<String, TicketError> {
        self.issue_at(who, Instant::now())
    }

    /// Who `ticket` stands for, if it was issued, is not used yet and has
    /// not expired; it is used up either way.
    pub fn redeem(&self, ticket: &str) -> Option<Who> {
        self.redeem_at(ticket, Instant::now())
    }

    fn issue_at(&self, who: Who, now: Instant) -> Result<String, TicketError> {
        let mut random = [0; 16];
        getrandom::fill(&mut random)?;
        let ticket = random.iter().fold(String::with_capacity(32), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        });
        let mut waiting = lock(&self.waiting);
        if waiting.len() >= MAX_TICKETS {
            waiting.retain(|_, (_, expires)| *expires > now);
            if waiting.len() >= MAX_TICKETS {
                return Err(TicketError::Full);
            }
        }
        waiting.insert(ticket.clone(), (who, now + TICKET_LIFETIME));
        Ok(ticket)
    }

    fn redeem_at(&self, ticket: &str, now: Instant) -> Option<Who> {
        let (who, expires) = lock(&self.waiting).remove(ticket)?;
        (now < expires).then_some(who)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_good_once_and_only_for_its_lifetime() {
        let (tickets, now) = (Tickets::default(), Instant::now());
        let ticket = tickets.issue_at(Who::Anyone, now).expect("a ticket");
        assert_eq!(ticket.len(), 32);
        assert_eq!(tickets.redeem_at(&ticket, now), Some(Who::Anyone));
        assert_eq!(tickets.redeem_at(&ticket, now), None, "used");
        let late = tickets.issue_at(Who::Anyone, now).expect("a ticket");
        assert_eq!(tickets.redeem_at(&late, now + TICKET_LIFETIME), None, "expired");
        assert_eq!(tickets.redeem_at("00", now), None, "unknown");
    }

    #[test]
    fn a_full_table_makes_room_from_the_expired_only() {
        let (tickets, now) = (Tickets::default(), Instant::now());
        for _ in 0..MAX_TICKETS {
            tickets.issue_at(Who::Anyone, now).expect("a ticket");
        }
        assert!(matches!(tickets.issue_at(Who::Anyone, now), Err(TicketError::Full)));
        let later = now + TICKET_LIFETIME;
        tickets.issue_at(Who::Anyone, later).expect("room once the others expired");
    }
}
