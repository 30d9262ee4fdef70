//! Per-connection flood control: a token bucket, and how long a client has
//! been over it.

use std::time::Duration;

use tokio::time::Instant;

/// `--rate-limit`, `--burst` and `--flood-grace`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Messages per second a client may send on average; 0 turns limiting off.
    pub per_second: u32,
    /// Messages a client may send at once after being quiet.
    pub burst: u32,
    /// How long a client may keep sending over the limit before it is closed.
    pub grace: Duration,
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit.
    Allow,
    /// Over the limit: drop it and say so.
    Drop,
    /// Over the limit for longer than the grace: close the connection.
    Close,
}

/// One client's bucket.
#[derive(Debug)]
pub struct Bucket {
    limit: RateLimit,
    tokens: f64,
    refilled: Instant,
    /// Since when the client has been over the limit: from its first dropped
    /// message until it is quiet long enough for the bucket to fill again.
    flooding_since: Option<Instant>,
}

impl Bucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        Self { limit, tokens: f64::from(limit.burst), refilled: now, flooding_since: None }
    }

    /// The limit this bucket enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token for a message arriving at `now`, if there is one.
    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.limit.per_second == 0 {
            return Verdict::Allow;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(self.limit.per_second))
            .min(f64::from(self.limit.burst));
        self.refilled = now;
        if self.tokens >= f64::from(self.limit.burst) {
            // Quiet long enough to refill: whatever flood there was is over.
            self.flooding_since = None;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        let since = *self.flooding_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.limit.grace {
            Verdict::Close
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit { per_second: 10, burst: 3, grace: Duration::from_secs(5) };

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(LIMIT, start);
        for _ in 0..3 {
            assert_eq!(bucket.check(start), Verdict::Allow);
        }
        assert_eq!(bucket.check(start), Verdict::Drop);
        // One token every 100 ms.
        assert_eq!(bucket.check(start + Duration::from_millis(50)), Verdict::Drop);
        assert_eq!(bucket.check(start + Duration::from_millis(110)), Verdict::Allow);
        assert_eq!(bucket.check(start + Duration::from_millis(120)), Verdict::Drop);
        assert_eq!(bucket.check(start + Duration::from_millis(220)), Verdict::Allow);
        // Quiet for long: the bucket is full again, never more than the burst.
        let later = start + Duration::from_mins(1);
        for _ in 0..3 {
            assert_eq!(bucket.check(later), Verdict::Allow);
        }
        assert_eq!(bucket.check(later), Verdict::Drop);
    }

    /// Sends at 100 messages a second from `from` for `length`; returns the
    /// verdicts and when the last one was given.
    fn flood(bucket: &mut Bucket, from: Instant, length: Duration) -> (Vec<Verdict>, Instant) {
        let mut verdicts = Vec::new();
        let mut t = from;
        while t < from + length {
            t += Duration::from_millis(10);
            let verdict = bucket.check(t);
            verdicts.push(verdict);
            if verdict == Verdict::Close {
                break;
            }
        }
        (verdicts, t)
    }

    #[test]
    fn flooding_past_the_grace_closes() {
        let start = Instant::now();
        let mut bucket = Bucket::new(LIMIT, start);
        let (verdicts, closed_at) = flood(&mut bucket, start, Duration::from_secs(10));
        assert_eq!(verdicts.last(), Some(&Verdict::Close));
        // The first drop comes after the burst; the grace runs from there.
        let waited = closed_at - start;
        assert!(
            waited >= LIMIT.grace && waited < LIMIT.grace + Duration::from_millis(100),
            "{waited:?}"
        );
        // Meanwhile the rate was still served: about 10 a second.
        let allowed = verdicts.iter().filter(|v| **v == Verdict::Allow).count();
        assert!((50..=55).contains(&allowed), "{allowed}");
    }

    #[test]
    fn a_pause_that_refills_the_bucket_forgives_a_flood() {
        let start = Instant::now();
        let mut bucket = Bucket::new(LIMIT, start);
        let (verdicts, t) = flood(&mut bucket, start, Duration::from_secs(4));
        assert!(verdicts.contains(&Verdict::Drop) && !verdicts.contains(&Verdict::Close));
        // One second of quiet refills 3 tokens: forgiven, so 4 more seconds of
        // flood stay under the 5 s grace.
        let (verdicts, _) = flood(&mut bucket, t + Duration::from_secs(1), Duration::from_secs(4));
        assert!(verdicts.contains(&Verdict::Drop) && !verdicts.contains(&Verdict::Close));
    }

    #[test]
    fn zero_turns_it_off() {
        let start = Instant::now();
        let mut bucket = Bucket::new(RateLimit { per_second: 0, ..LIMIT }, start);
        for _ in 0..1000 {
            assert_eq!(bucket.check(start), Verdict::Allow);
        }
    }
}
