//! The in-process backend's rules, which the hub applies under each room's
//! lock: how a name falls back, what a joining client is replayed, and when
//! presence is announced one by one or summarized. The Redis backend's
//! scripts take the fallback names from here too; its own presence rule is
//! the same one, counted atomically in Redis (`presence` in `common.lua`).

use crate::protocol::{ClientError, Event, Resume, name_key};

/// Fallback names a shared join offers the backend (`ADDR`, `ADDR~2`, …):
/// more are needed only if that many people took look-alikes of one address
/// as names.
pub(crate) const FALLBACK_CANDIDATES: usize = 8;

/// The names a client without a free name of its own gets, in order of
/// preference, each with its key: `fallback` (its address), then
/// `fallback~2`, `~3`… (someone may have taken an address as a name).
pub(crate) fn fallback_names(fallback: &str) -> impl Iterator<Item = (String, String)> + '_ {
    (1..).map(move |n| {
        let name = if n == 1 { fallback.to_owned() } else { format!("{fallback}~{n}") };
        let key = name_key(&name);
        (name, key)
    })
}

/// Whether a join or leave in a room of `online` names is announced on its
/// own; past `limit` (`--presence-limit`) it is counted for the next
/// [`Presence`] summary instead.
pub(crate) fn announces_each(online: usize, limit: usize) -> bool {
    online <= limit
}

/// Arrivals and departures not announced yet, in a large room.
#[derive(Debug, Default)]
pub(crate) struct Presence {
    joined: u64,
    left: u64,
}

impl Presence {
    /// Counts an arrival.
    pub(crate) fn joined(&mut self) {
        self.joined += 1;
    }

    /// Counts a departure.
    pub(crate) fn left(&mut self) {
        self.left += 1;
    }

    /// The summary of what was counted since the last one, if anything was,
    /// for a room of `online` names; the counts start again.
    pub(crate) fn summary(&mut self, room: &str, online: usize) -> Option<Event<'static>> {
        if self.joined == 0 && self.left == 0 {
            return None;
        }
        let (joined, left) = (std::mem::take(&mut self.joined), std::mem::take(&mut self.left));
        Some(Event::Presence { room: room.to_owned().into(), joined, left, online })
    }
}

/// How many of the held messages a joining client skips (those it already
/// has), and what it is told it missed. `first_held` is the seq of the first
/// of the `held` messages, `seq` the room's last.
pub(crate) fn replay_skip(
    first_held: u64,
    held: usize,
    seq: u64,
    epoch: &str,
    resume: Option<&Resume>,
) -> (usize, Option<Event<'static>>) {
    match resume {
        // A newcomer gets all that is held.
        None => (0, None),
        Some(Resume { epoch: theirs, .. }) if theirs != epoch => {
            (0, Some(Event::Missed { count: None, epoch: Some(epoch.to_owned().into()) }))
        }
        Some(Resume { since, .. }) if *since > seq => {
            (held, Some(Event::from(ClientError::ResumeAhead { since: *since, seq })))
        }
        Some(Resume { since, .. }) => {
            let missed = first_held.saturating_sub(since + 1);
            let skip =
                usize::try_from((since + 1).saturating_sub(first_held)).unwrap_or(usize::MAX);
            let missed = (missed > 0).then_some(Event::Missed { count: Some(missed), epoch: None });
            (skip.min(held), missed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resume(epoch: &str, since: u64) -> Resume {
        Resume { epoch: epoch.to_owned(), since }
    }

    #[test]
    fn fallback_names_count_up_from_the_address_with_their_keys() {
        let names: Vec<_> = fallback_names("10.0.0.1").take(3).collect();
        let expected = ["10.0.0.1", "10.0.0.1~2", "10.0.0.1~3"];
        assert_eq!(names.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), expected);
        for (name, key) in &names {
            assert_eq!(key, &name_key(name));
        }
    }

    #[test]
    fn a_newcomer_is_replayed_everything_held() {
        assert!(matches!(replay_skip(5, 10, 14, "e", None), (0, None)));
    }

    #[test]
    fn a_resume_skips_what_it_has_and_is_told_what_fell_out() {
        // Held 5..=14; it has up to 9: skip 5 (5..=9), nothing missed.
        assert!(matches!(replay_skip(5, 10, 14, "e", Some(&resume("e", 9))), (5, None)));
        // It has up to 2: 3 and 4 are gone.
        let (skip, missed) = replay_skip(5, 10, 14, "e", Some(&resume("e", 2)));
        assert_eq!(skip, 0);
        assert!(matches!(missed, Some(Event::Missed { count: Some(2), epoch: None })));
        // Up to date: skip all.
        assert!(matches!(replay_skip(5, 10, 14, "e", Some(&resume("e", 14))), (10, None)));
    }

    #[test]
    fn a_resume_in_another_epoch_gets_everything_and_the_new_epoch() {
        let (skip, missed) = replay_skip(5, 10, 14, "new", Some(&resume("old", 9)));
        assert_eq!(skip, 0);
        let Some(Event::Missed { count: None, epoch: Some(epoch) }) = missed else {
            panic!("expected a reset, got {missed:?}");
        };
        assert_eq!(epoch, "new");
    }

    #[test]
    fn a_resume_from_the_future_is_refused_and_replays_nothing() {
        let (skip, missed) = replay_skip(5, 10, 14, "e", Some(&resume("e", 20)));
        assert_eq!(skip, 10);
        assert!(matches!(missed, Some(Event::Error { .. })), "{missed:?}");
    }

    #[test]
    fn presence_is_announced_one_by_one_up_to_the_limit_then_summarized() {
        assert!(announces_each(100, 100));
        assert!(!announces_each(101, 100));
        let mut presence = Presence::default();
        assert!(presence.summary("big", 500).is_none());
        presence.joined();
        presence.joined();
        presence.left();
        let Some(Event::Presence { joined: 2, left: 1, online: 500, .. }) =
            presence.summary("big", 500)
        else {
            panic!("expected a summary of 2 joined, 1 left");
        };
        assert!(presence.summary("big", 500).is_none(), "counts start again");
    }
}
