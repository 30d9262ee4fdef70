//! Per-address bounds: who a connection comes from (its peer, or the client a
//! trusted proxy names in `X-Forwarded-For`), and what each address holds or
//! has spent: handshake slots, chat connections, joins and failed
//! authentications.
//!
//! IPv6 addresses are grouped by /64, since anyone who has one address of a
//! /64 usually has all of them. The table is bounded by
//! [`MAX_TRACKED_ADDRESSES`], and an address is forgotten as soon as it holds
//! nothing and its budgets are whole again.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::time::Instant;

use crate::util::lock;

/// Addresses tracked at once (each holding connections, or with a budget not
/// yet refilled). When the table is full, addresses holding no connection are
/// forgotten first; when all hold some, a new address is refused with 503.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// How often addresses that hold nothing and owe nothing are forgotten
/// (those holding slots are forgotten as soon as they give them back).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// An address as the per-address rules see it: an IPv4 address, or the /64 an
/// IPv6 address is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    /// The key of `ip` (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => Self(v6.to_ipv4_mapped().map_or_else(
                || IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
                IpAddr::V4,
            )),
        }
    }
}

impl fmt::Display for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => v4.fmt(f),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// The client's address: `peer` itself, unless `peer` is one of `proxies`;
/// then the rightmost address of `forwarded` (the `X-Forwarded-For` values in
/// order) that is not itself a trusted proxy. An entry that is not an address
/// stops the walk at the proxy that added it.
pub fn client_address<'a>(
    peer: IpAddr,
    proxies: &[IpNet],
    forwarded: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> IpAddr {
    let trusted = |ip: &IpAddr| proxies.iter().any(|net| net.contains(&normalize(*ip)));
    if !trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in forwarded.rev() {
        let Ok(value) = std::str::from_utf8(value) else { return client };
        for entry in value.rsplit(',') {
            match parse_forwarded(entry.trim()) {
                Some(ip) if trusted(&ip) => client = ip,
                Some(ip) => return ip,
                None => return client,
            }
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, maybe in brackets, maybe with a
/// port (some proxies add one).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse().ok();
    }
    let (ip, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse().ok()
}

/// `--trusted-proxy`: a network (`10.0.0.0/8`) or one address (`::1`).
pub fn parse_proxy(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is neither an address nor a network (10.0.0.0/8)"))
}

/// An IPv4-mapped IPv6 address as IPv4, so that `--trusted-proxy 10.0.0.0/8`
/// matches on a dual-stack socket too.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The per-address settings; 0 turns each off.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddressLimits {
    /// `--max-handshakes-per-ip`.
    pub handshakes: usize,
    /// `--max-connections-per-ip`.
    pub connections: usize,
    /// `--joins-per-ip`: joins and resumes per second, in bursts of as many.
    pub joins_per_second: u32,
    /// `--auth-failures-per-ip`: failed authentications per minute, in
    /// bursts of as many.
    pub auth_failures_per_minute: u32,
}

/// Why a slot was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The address holds all the slots it may.
    Address,
    /// [`MAX_TRACKED_ADDRESSES`] addresses hold connections already.
    Table,
}

/// What every address holds and has spent.
#[derive(Debug, Default)]
pub struct Addresses {
    limits: AddressLimits,
    table: Mutex<HashMap<AddressKey, Entry>>,
}

#[derive(Debug, Default)]
struct Entry {
    handshakes: usize,
    connections: usize,
    joins: Spent,
    auth_failures: Spent,
}

/// What a budget has spent, refilled at a steady rate: a token bucket
/// counted from empty, so that a fresh entry needs no settings.
#[derive(Debug, Default, Clone, Copy)]
struct Spent {
    amount: f64,
    at: Option<Instant>,
}

impl Spent {
    /// Brings the amount up to `now`, refilling `per_second`.
    fn refill(&mut self, per_second: f64, now: Instant) -> f64 {
        if let Some(at) = self.at {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.amount = (self.amount - elapsed * per_second).max(0.0);
        }
        self.at = Some(now);
        self.amount
    }

    /// Takes one from a budget of `burst` refilled at `per_second`, or says
    /// how long until one is there.
    fn take(&mut self, burst: u32, per_second: f64, now: Instant) -> Result<(), Duration> {
        let spent = self.refill(per_second, now);
        if spent + 1.0 <= f64::from(burst) {
            self.amount += 1.0;
            return Ok(());
        }
        Err(wait(spent + 1.0 - f64::from(burst), per_second))
    }

    /// Whether the budget is whole at `now`.
    fn is_whole(&self, per_second: f64, now: Instant) -> bool {
        let mut copy = *self;
        copy.refill(per_second, now) == 0.0
    }
}

/// Whole seconds (at least 1) for `missing` to be refilled at `per_second`:
/// what `Retry-After` says.
fn wait(missing: f64, per_second: f64) -> Duration {
    let seconds = (missing / per_second).ceil().clamp(1.0, 3600.0);
    Duration::from_secs_f64(seconds)
}

impl Addresses {
    /// An empty table enforcing `limits`.
    pub fn new(limits: AddressLimits) -> Arc<Self> {
        Arc::new(Self { limits, table: Mutex::new(HashMap::new()) })
    }

    fn join_rate(&self) -> f64 {
        f64::from(self.limits.joins_per_second)
    }

    fn auth_rate(&self) -> f64 {
        f64::from(self.limits.auth_failures_per_minute) / 60.0
    }

    /// Addresses tracked now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.table).len()
    }

    /// Whether no address is tracked.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A handshake slot for `key`; `exempt` (a trusted proxy) is not held to
    /// the per-address cap.
    pub fn handshake(self: &Arc<Self>, key: AddressKey, exempt: bool) -> Result<Slot, Full> {
        let cap = if exempt { 0 } else { self.limits.handshakes };
        self.take_slot(key, Kind::Handshake, cap)
    }

    /// A chat connection slot for `key`.
    pub fn connection(self: &Arc<Self>, key: AddressKey) -> Result<Slot, Full> {
        self.take_slot(key, Kind::Connection, self.limits.connections)
    }

    fn take_slot(self: &Arc<Self>, key: AddressKey, kind: Kind, cap: usize) -> Result<Slot, Full> {
        let mut table = lock(&self.table);
        let entry = self.entry(&mut table, key).ok_or(Full::Table)?;
        let held = match kind {
            Kind::Handshake => &mut entry.handshakes,
            Kind::Connection => &mut entry.connections,
        };
        if cap != 0 && *held >= cap {
            return Err(Full::Address);
        }
        *held += 1;
        Ok(Slot { addresses: self.clone(), key, kind })
    }

    /// Counts a join or resume from `key`; past `--joins-per-ip`, how long
    /// to wait.
    pub fn join(&self, key: AddressKey, now: Instant) -> Result<(), Duration> {
        let burst = self.limits.joins_per_second;
        if burst == 0 {
            return Ok(());
        }
        let rate = self.join_rate();
        let mut table = lock(&self.table);
        let Some(entry) = self.entry(&mut table, key) else { return Err(Duration::from_secs(1)) };
        entry.joins.take(burst, rate, now)
    }

    /// Whether `key` may try to authenticate now; else how long to wait.
    pub fn may_authenticate(&self, key: AddressKey, now: Instant) -> Result<(), Duration> {
        let burst = self.limits.auth_failures_per_minute;
        if burst == 0 {
            return Ok(());
        }
        let rate = self.auth_rate();
        let mut table = lock(&self.table);
        let Some(entry) = table.get_mut(&key) else { return Ok(()) };
        let spent = entry.auth_failures.refill(rate, now);
        if spent + 1.0 <= f64::from(burst) {
            Ok(())
        } else {
            Err(wait(spent + 1.0 - f64::from(burst), rate))
        }
    }

    /// Counts a failed authentication from `key`.
    pub fn authentication_failed(&self, key: AddressKey, now: Instant) {
        let burst = self.limits.auth_failures_per_minute;
        if burst == 0 {
            return;
        }
        let rate = self.auth_rate();
        let mut table = lock(&self.table);
        if let Some(entry) = self.entry(&mut table, key) {
            let _ = entry.auth_failures.take(burst, rate, now);
        }
    }

    /// `key`'s entry, made if need be; `None` when the table is full of
    /// addresses holding connections.
    fn entry<'t>(
        &self,
        table: &'t mut HashMap<AddressKey, Entry>,
        key: AddressKey,
    ) -> Option<&'t mut Entry> {
        if !table.contains_key(&key) && table.len() >= MAX_TRACKED_ADDRESSES {
            // Forget the idle first, then whoever holds no connection (their
            // budgets are lost: it takes this many addresses to do that).
            let now = Instant::now();
            let (joins, auth) = (self.join_rate(), self.auth_rate());
            table.retain(|_, e| !e.is_idle(joins, auth, now));
            if table.len() >= MAX_TRACKED_ADDRESSES {
                table.retain(|_, e| e.handshakes + e.connections > 0);
            }
            if table.len() >= MAX_TRACKED_ADDRESSES {
                return None;
            }
        }
        Some(table.entry(key).or_default())
    }

    /// Forgets the addresses that hold nothing and whose budgets are whole
    /// again (those holding slots are forgotten when they give them back).
    pub fn forget_idle(&self) {
        let now = Instant::now();
        let (joins, auth) = (self.join_rate(), self.auth_rate());
        lock(&self.table).retain(|_, e| !e.is_idle(joins, auth, now));
    }

    fn release(&self, key: AddressKey, kind: Kind) {
        let mut table = lock(&self.table);
        let Some(entry) = table.get_mut(&key) else { return };
        match kind {
            Kind::Handshake => entry.handshakes = entry.handshakes.saturating_sub(1),
            Kind::Connection => entry.connections = entry.connections.saturating_sub(1),
        }
        if entry.is_idle(self.join_rate(), self.auth_rate(), Instant::now()) {
            table.remove(&key);
        }
    }
}

impl Entry {
    /// Holds nothing and owes nothing: can be forgotten.
    fn is_idle(&self, join_rate: f64, auth_rate: f64, now: Instant) -> bool {
        self.handshakes == 0
            && self.connections == 0
            && (join_rate == 0.0 || self.joins.is_whole(join_rate, now))
            && (auth_rate == 0.0 || self.auth_failures.is_whole(auth_rate, now))
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Handshake,
    Connection,
}

/// A slot held by an address, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    addresses: Arc<Addresses>,
    key: AddressKey,
    kind: Kind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.addresses.release(self.key, self.kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            AddressKey::of(ip("2001:db8:1:2:3:4:5:6")),
            AddressKey::of(ip("2001:db8:1:2::9"))
        );
        assert_ne!(AddressKey::of(ip("2001:db8:1:2::1")), AddressKey::of(ip("2001:db8:1:3::1")));
        assert_eq!(AddressKey::of(ip("::ffff:10.0.0.1")), AddressKey::of(ip("10.0.0.1")));
        assert_eq!(AddressKey::of(ip("2001:db8::1")).to_string(), "2001:db8::/64");
    }

    #[test]
    fn the_rightmost_untrusted_forwarded_address_is_the_client() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let xff = |values: &[&'static str]| {
            let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
            client_address(ip("10.0.0.1"), &proxies, values.into_iter())
        };
        assert_eq!(xff(&["1.1.1.1, 2.2.2.2"]), ip("2.2.2.2"));
        assert_eq!(xff(&["1.1.1.1, 2.2.2.2, 10.0.0.7"]), ip("2.2.2.2"));
        assert_eq!(xff(&["1.1.1.1", "2.2.2.2:443, 10.1.1.1"]), ip("2.2.2.2"));
        assert_eq!(xff(&["[2001:db8::1]:80"]), ip("2001:db8::1"));
        assert_eq!(xff(&["1.1.1.1, nonsense, 10.0.0.9"]), ip("10.0.0.9"));
        assert_eq!(xff(&[]), ip("10.0.0.1"));
        // An untrusted peer's header is ignored.
        let values: Vec<&[u8]> = vec![b"1.1.1.1"];
        assert_eq!(client_address(ip("8.8.8.8"), &proxies, values.into_iter()), ip("8.8.8.8"));
    }

    #[test]
    fn slots_are_capped_per_address_and_forgotten_when_empty() {
        let limits = AddressLimits { handshakes: 2, ..AddressLimits::default() };
        let addresses = Addresses::new(limits);
        let (a, b) = (AddressKey::of(ip("127.0.0.1")), AddressKey::of(ip("127.0.0.2")));
        let first = addresses.handshake(a, false).expect("a slot");
        let second = addresses.handshake(a, false).expect("a slot");
        assert_eq!(addresses.handshake(a, false).err(), Some(Full::Address));
        let exempt = addresses.handshake(a, true).expect("a proxy is not capped");
        let other = addresses.handshake(b, false).expect("another address");
        drop((first, second, exempt, other));
        assert!(addresses.is_empty());
        // 0 is off.
        let unlimited = Addresses::new(AddressLimits::default());
        let held: Vec<_> = (0..1000).map(|_| unlimited.connection(a).expect("a slot")).collect();
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn the_table_is_bounded() {
        let addresses = Addresses::new(AddressLimits {
            auth_failures_per_minute: 10,
            ..AddressLimits::default()
        });
        let key = |n: usize| AddressKey::of(IpAddr::V4(u32::try_from(n).expect("small").into()));
        let held: Vec<_> = (0..MAX_TRACKED_ADDRESSES)
            .map(|n| addresses.connection(key(n)).expect("room"))
            .collect();
        let newcomer = key(MAX_TRACKED_ADDRESSES);
        assert_eq!(addresses.connection(newcomer).err(), Some(Full::Table));
        assert_eq!(addresses.len(), MAX_TRACKED_ADDRESSES);
        drop(held);
        assert!(addresses.is_empty());
        // Addresses that only owe a budget make way for a new one.
        let now = Instant::now();
        for n in 0..MAX_TRACKED_ADDRESSES {
            addresses.authentication_failed(key(n), now);
        }
        assert_eq!(addresses.len(), MAX_TRACKED_ADDRESSES);
        let _slot = addresses.connection(newcomer).expect("room made");
        assert!(addresses.len() <= MAX_TRACKED_ADDRESSES);
    }

    #[test]
    fn joins_and_failures_are_budgeted() {
        let limits = AddressLimits {
            joins_per_second: 3,
            auth_failures_per_minute: 2,
            ..Default::default()
        };
        let addresses = Addresses::new(limits);
        let key = AddressKey::of(ip("192.0.2.1"));
        let now = Instant::now();
        for _ in 0..3 {
            addresses.join(key, now).expect("within the burst");
        }
        assert_eq!(addresses.join(key, now), Err(Duration::from_secs(1)));
        addresses.join(key, now + Duration::from_millis(400)).expect("refilled");

        addresses.may_authenticate(key, now).expect("no failure yet");
        addresses.authentication_failed(key, now);
        addresses.authentication_failed(key, now);
        assert_eq!(addresses.may_authenticate(key, now), Err(Duration::from_secs(30)));
        addresses.may_authenticate(key, now + Duration::from_secs(30)).expect("refilled");
        // Whole again: forgotten at the next release.
        let later = now + Duration::from_mins(2);
        assert!(lock(&addresses.table)[&key].is_idle(3.0, 2.0 / 60.0, later));
    }
}
