//! Small helpers both binaries use.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Locks a mutex, ignoring poisoning: every critical section in this crate
/// leaves its state consistent, and no lock is held across an `.await`.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The wait before retry `n` (from 1): doubling from `first` up to `most`,
/// drawn between half and all of that, so that many clients (or nodes)
/// cut off at once do not all come back at once.
pub(crate) fn backoff(n: u32, first: Duration, most: Duration) -> Duration {
    let full = first.saturating_mul(1 << n.saturating_sub(1).min(16)).min(most);
    full.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// A flag's number of seconds, fractions allowed (`0.5`).
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is not a usable duration"))
}

/// `bytes` in lower-case hex, as session secrets and tickets are shown.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut hex, byte| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}
