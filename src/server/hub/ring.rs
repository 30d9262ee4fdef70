//! A room's fan-out: every frame broadcast to the room is kept here until
//! each member has taken it, bounded in slots (`--max-lag`) and in bytes
//! (`--max-lag-bytes`). Past either bound the oldest frames go, and members
//! that had not taken them learn how many they missed.
//!
//! tokio's broadcast channel would allocate its whole capacity up front (a
//! room of one client then cost `--max-lag` slots), and one member that does
//! not read would keep that whole capacity full of frames of any size. Here a
//! ring holds only what some member still has to take, and it counts the
//! bytes against the server's [`Budget`]. Each item carries the [`Charge`]
//! for its bytes, so they stay counted while anyone holds a clone of it (a
//! connection's socket queue, after the ring dropped its entry).
//!
//! A receiver that finds nothing to take is put on the ring's list of
//! sleepers (under the same lock, so no frame slips in between), and the
//! next frame wakes it through its own [`Wake`]: the connection's writer
//! waits on one wake-up for its room and its reader alike, and an idle
//! connection holds no future for its room.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::server::config::CONNECTION_SHARE;
use crate::util::lock;
use prometheus_client::metrics::gauge::Gauge;

/// The bytes of frames the whole server holds for clients (rooms'
/// histories, frames not taken yet or not written yet, join replays,
/// `/history` answers), against `--max-memory`. The count is what
/// `/metrics` reports as `chat_memory_bytes`.
#[derive(Debug)]
pub struct Budget {
    used: Gauge,
    limit: usize,
    /// Numbers what is kept in the order it came, server-wide.
    stamps: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes, counted in `used`.
    pub fn new(limit: usize, used: Gauge) -> Self {
        Self { used, limit, stamps: AtomicU64::new(0) }
    }

    /// A number larger than every one handed out before: what is kept
    /// carries one, so that the oldest can go first when memory is short.
    pub fn stamp(&self) -> u64 {
        self.stamps.fetch_add(1, Ordering::Relaxed)
    }

    /// The bytes held now.
    pub fn used(&self) -> usize {
        usize::try_from(self.used.get()).unwrap_or(0)
    }

    /// `--max-memory`.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// What rooms may hold: the limit less the share left to connections
    /// ([`CONNECTION_SHARE`]), so that a join's replay or a `/history`
    /// answer still fits when rooms have filled theirs.
    pub fn rooms_limit(&self) -> usize {
        self.limit - self.limit / CONNECTION_SHARE
    }

    /// Counts `bytes` for rooms if they fit under [`Budget::rooms_limit`];
    /// says whether they did.
    pub fn try_charge(&self, bytes: usize) -> bool {
        self.try_charge_under(bytes, self.rooms_limit())
    }

    fn try_charge_under(&self, bytes: usize, limit: usize) -> bool {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.used
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    /// Counts `bytes` even past the limit: for the small events (joins,
    /// leaves, notices) that must reach members, whose size is bounded.
    pub fn charge(&self, bytes: usize) {
        self.used.inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Forgets `bytes` freed.
    pub fn release(&self, bytes: usize) {
        self.used.dec_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A charge of `bytes` for what a connection holds for its client
    /// alone, if they fit under the whole limit.
    pub fn try_hold(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        self.try_charge_under(bytes, self.limit).then(|| self.adopt(bytes))
    }

    /// Takes over `bytes` charged already: the charge releases them.
    pub fn adopt(self: &Arc<Self>, bytes: usize) -> Charge {
        Charge { budget: self.clone(), bytes }
    }
}

/// Bytes counted in a [`Budget`] until this is dropped. Tied to the frames
/// they are for, so that every way a frame goes (written, discarded, its
/// connection dropped) releases them exactly once.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// How a receiver is woken when a frame comes.
pub trait Wake: Send + Sync {
    /// Wakes it; must not block.
    fn wake(&self);
}

/// Frames broadcast to one room, each kept until every member subscribed
/// when it was sent has taken it.
#[derive(Debug)]
pub struct Ring<T, W> {
    inner: Mutex<Inner<T, W>>,
    budget: Arc<Budget>,
}

#[derive(Debug)]
struct Inner<T, W> {
    entries: VecDeque<Entry<T>>,
    /// Receivers that found nothing to take: the next frame wakes them.
    sleepers: Vec<Arc<W>>,
    /// Position of `entries[0]`; positions count every frame sent.
    first: u64,
    /// Bytes of `entries`.
    bytes: usize,
    /// Receivers subscribed.
    receivers: usize,
    max_slots: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct Entry<T> {
    item: T,
    bytes: usize,
    /// When it was sent ([`Budget::stamp`]): the oldest go first when the server
    /// is short of memory.
    stamp: u64,
    /// Receivers that have not taken it yet.
    remaining: usize,
}

impl<T, W> Inner<T, W> {
    /// Position of the next frame sent.
    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Drops the first entry (its item releases its charge).
    fn pop(&mut self) {
        let bytes = self.entries.pop_front().map_or(0, |entry| entry.bytes);
        self.first += 1;
        self.bytes -= bytes;
    }

    /// Drops the leading entries every receiver has taken.
    fn pop_taken(&mut self) {
        while self.entries.front().is_some_and(|entry| entry.remaining == 0) {
            self.pop();
        }
    }
}

/// What a receiver gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<T> {
    /// The next frame.
    Item(T),
    /// This many frames went before the receiver took them.
    Missed(u64),
}

impl<T: Clone, W: Wake> Ring<T, W> {
    /// An empty ring keeping at most `max_slots` frames and `max_bytes`
    /// bytes of them (always the newest frame, whatever its size).
    pub fn new(max_slots: usize, max_bytes: usize, budget: Arc<Budget>) -> Self {
        let inner = Inner {
            entries: VecDeque::new(),
            sleepers: Vec::new(),
            first: 0,
            bytes: 0,
            receivers: 0,
            max_slots,
            max_bytes,
        };
        Self { inner: Mutex::new(inner), budget }
    }

    /// A receiver of every frame sent from now on, woken through `waker`.
    pub fn subscribe(self: &Arc<Self>, waker: Arc<W>) -> Receiver<T, W> {
        let mut inner = lock(&self.inner);
        inner.receivers += 1;
        Receiver { ring: self.clone(), next: inner.end(), waker, asleep_at: NOT_ASLEEP }
    }

    /// The budget frames are counted in.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Sends the item `make` makes of its position to every receiver;
    /// returns the position. `bytes` is what it holds, for the ring's own
    /// bounds: the item carries their charge in the budget (`make` too,
    /// until it is called), released once the item and every clone of it
    /// are dropped. Nothing is kept when nobody is subscribed.
    pub fn send(&self, bytes: usize, make: impl FnOnce(u64) -> T) -> u64 {
        let mut inner = lock(&self.inner);
        let pos = inner.end() + 1;
        if inner.receivers == 0 {
            inner.first += 1;
            return pos;
        }
        let (remaining, stamp) = (inner.receivers, self.budget.stamp());
        inner.entries.push_back(Entry { item: make(pos), bytes, stamp, remaining });
        inner.bytes += bytes;
        while inner.entries.len() > inner.max_slots
            || (inner.bytes > inner.max_bytes && inner.entries.len() > 1)
        {
            inner.pop();
        }
        let sleepers = std::mem::take(&mut inner.sleepers);
        drop(inner);
        for sleeper in sleepers {
            sleeper.wake();
        }
        pos
    }

    /// Drops frames not taken yet, oldest first, until `bytes` more fit
    /// the budget or none is left; their receivers miss them (a frame a
    /// connection still has to write stays counted until it is written).
    /// Returns whether `bytes` were charged.
    pub fn make_room(&self, bytes: usize) -> bool {
        let mut inner = lock(&self.inner);
        loop {
            if self.budget.try_charge(bytes) {
                return true;
            }
            if inner.entries.is_empty() {
                return false;
            }
            inner.pop();
        }
    }

    /// The stamp of the oldest frame not taken, if any.
    pub fn oldest(&self) -> Option<u64> {
        lock(&self.inner).entries.front().map(|entry| entry.stamp)
    }

    /// Drops the oldest frame not taken; its receivers miss it.
    pub fn drop_oldest(&self) {
        lock(&self.inner).pop();
    }

    /// Bytes held.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        lock(&self.inner).bytes
    }
}

/// [`Receiver::asleep_at`] of a receiver not on the sleepers' list.
const NOT_ASLEEP: u64 = u64::MAX;

/// One member's place in its room's [`Ring`].
#[derive(Debug)]
pub struct Receiver<T, W> {
    ring: Arc<Ring<T, W>>,
    /// Position of the next frame to take, less one.
    next: u64,
    waker: Arc<W>,
    /// The ring's end when this receiver went on its sleepers' list: it is
    /// still there while no frame was sent since.
    asleep_at: u64,
}

impl<T: Clone, W: Wake> Receiver<T, W> {
    /// Takes what is there, in order, while `take` says to go on (it is
    /// called with the ring locked: it must be quick). Once nothing is left
    /// to take, the next frame sent wakes this receiver's waker.
    pub fn take_while(&mut self, mut take: impl FnMut(Received<T>) -> bool) {
        let ring = &*self.ring;
        let mut inner = lock(&ring.inner);
        loop {
            if self.next < inner.first {
                let missed = inner.first - self.next;
                self.next = inner.first;
                if !take(Received::Missed(missed)) {
                    break;
                }
                continue;
            }
            let at = usize::try_from(self.next - inner.first).unwrap_or(usize::MAX);
            let Some(entry) = inner.entries.get_mut(at) else {
                // Once on the list per frame awaited.
                let end = inner.end();
                if self.asleep_at != end {
                    self.asleep_at = end;
                    inner.sleepers.push(self.waker.clone());
                }
                break;
            };
            entry.remaining -= 1;
            let item = entry.item.clone();
            self.next += 1;
            if at == 0 && entry.remaining == 0 {
                inner.pop_taken();
            }
            if !take(Received::Item(item)) {
                break;
            }
        }
    }
}

impl<T, W> Drop for Receiver<T, W> {
    fn drop(&mut self) {
        let mut inner = lock(&self.ring.inner);
        inner.receivers -= 1;
        if self.asleep_at == inner.end() {
            inner.sleepers.retain(|sleeper| !Arc::ptr_eq(sleeper, &self.waker));
        }
        let from = usize::try_from(self.next.saturating_sub(inner.first)).unwrap_or(usize::MAX);
        for entry in inner.entries.iter_mut().skip(from) {
            entry.remaining -= 1;
        }
        inner.pop_taken();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts its wake-ups.
    #[derive(Debug, Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(Ordering::Relaxed)
        }
    }

    /// A frame's stand-in: a number, and the charge for its bytes (held
    /// only to be dropped with it).
    #[derive(Debug, Clone)]
    struct Item(u32, #[expect(dead_code, reason = "released when dropped")] Arc<Charge>);

    type TestRing = Ring<Item, Count>;

    fn ring(slots: usize, bytes: usize, limit: usize) -> Arc<TestRing> {
        Arc::new(Ring::new(slots, bytes, Arc::new(Budget::new(limit, Gauge::default()))))
    }

    fn subscribe(ring: &Arc<TestRing>) -> Receiver<Item, Count> {
        ring.subscribe(Arc::default())
    }

    fn send(ring: &TestRing, item: u32, bytes: usize) -> u64 {
        let charge = Arc::new(ring.budget.try_hold(bytes).expect("fits"));
        ring.send(bytes, |_| Item(item, charge))
    }

    fn all(rx: &mut Receiver<Item, Count>) -> Vec<Received<u32>> {
        let mut got = Vec::new();
        rx.take_while(|received| {
            got.push(match received {
                Received::Item(Item(item, _)) => Received::Item(item),
                Received::Missed(count) => Received::Missed(count),
            });
            true
        });
        got
    }

    #[test]
    fn frames_are_freed_once_every_receiver_took_them() {
        let ring = ring(10, 1000, 1000);
        let (mut a, mut b) = (subscribe(&ring), subscribe(&ring));
        send(&ring, 1, 100);
        send(&ring, 2, 100);
        assert_eq!(ring.budget.used(), 200);
        assert_eq!(all(&mut a), [Received::Item(1), Received::Item(2)]);
        assert_eq!(ring.budget.used(), 200, "b has not taken them");
        assert_eq!(all(&mut b), [Received::Item(1), Received::Item(2)]);
        assert_eq!((ring.budget.used(), ring.bytes()), (0, 0));
    }

    #[test]
    fn a_receiver_behind_the_byte_bound_misses_frames_and_is_told() {
        let ring = ring(10, 250, 10_000);
        let mut slow = subscribe(&ring);
        for item in 0..5 {
            send(&ring, item, 100);
        }
        // Only the two newest fit in 250 bytes.
        assert_eq!(ring.bytes(), 200);
        assert_eq!(ring.budget.used(), 200);
        assert_eq!(all(&mut slow), [Received::Missed(3), Received::Item(3), Received::Item(4)]);
        assert_eq!(ring.budget.used(), 0);
    }

    #[test]
    fn a_frame_taken_stays_counted_while_its_taker_holds_it() {
        let ring = ring(10, 1000, 1000);
        let mut rx = subscribe(&ring);
        send(&ring, 1, 100);
        let mut held = Vec::new();
        rx.take_while(|received| {
            held.push(received);
            true
        });
        assert_eq!(ring.bytes(), 0, "the ring let it go");
        assert_eq!(ring.budget.used(), 100, "its taker has not written it yet");
        drop(held);
        assert_eq!(ring.budget.used(), 0);
    }

    #[test]
    fn the_slot_bound_holds_too() {
        let ring = ring(2, 10_000, 10_000);
        let mut slow = subscribe(&ring);
        for item in 0..4 {
            send(&ring, item, 1);
        }
        assert_eq!(all(&mut slow), [Received::Missed(2), Received::Item(2), Received::Item(3)]);
    }

    #[test]
    fn a_dropped_receiver_frees_what_it_did_not_take() {
        let ring = ring(10, 1000, 1000);
        let (slow, mut quick) = (subscribe(&ring), subscribe(&ring));
        send(&ring, 1, 300);
        all(&mut quick);
        assert_eq!(ring.budget.used(), 300);
        drop(slow);
        assert_eq!(ring.budget.used(), 0);
    }

    #[test]
    fn nothing_is_kept_without_receivers_and_positions_go_on() {
        let ring = ring(10, 1000, 1000);
        assert_eq!(send(&ring, 1, 100), 1);
        assert_eq!(ring.budget.used(), 0);
        let mut rx = subscribe(&ring);
        assert_eq!(send(&ring, 2, 100), 2);
        assert_eq!(all(&mut rx), [Received::Item(2)]);
    }

    #[test]
    fn make_room_drops_the_oldest_frames_until_the_charge_fits() {
        let ring = ring(10, 1000, 300);
        let mut rx = subscribe(&ring);
        send(&ring, 1, 100);
        send(&ring, 2, 100);
        send(&ring, 3, 100);
        assert!(!ring.budget.try_charge(150));
        assert!(ring.make_room(150));
        assert_eq!(ring.budget.used(), 250);
        let charge = Arc::new(ring.budget.adopt(150));
        ring.send(150, |_| Item(4, charge));
        assert_eq!(all(&mut rx), [Received::Missed(2), Received::Item(3), Received::Item(4)]);
        assert!(!ring.make_room(301), "more than the whole budget never fits");
    }

    #[test]
    fn a_receiver_that_found_nothing_is_woken_once_by_the_next_frame() {
        let ring = ring(10, 1000, 1000);
        let mut rx = subscribe(&ring);
        assert_eq!(all(&mut rx), []);
        // Looking again before anything is sent does not list it twice.
        assert_eq!(all(&mut rx), []);
        send(&ring, 1, 1);
        send(&ring, 2, 1);
        assert_eq!(rx.waker.get(), 1);
        assert_eq!(all(&mut rx), [Received::Item(1), Received::Item(2)]);
        send(&ring, 3, 1);
        assert_eq!(rx.waker.get(), 2);
    }

    #[test]
    fn a_dropped_sleeper_leaves_the_list() {
        let ring = ring(10, 1000, 1000);
        let mut rx = subscribe(&ring);
        all(&mut rx);
        let waker = rx.waker.clone();
        drop(rx);
        assert!(lock(&ring.inner).sleepers.is_empty());
        assert_eq!(Arc::strong_count(&waker), 1);
    }
}
