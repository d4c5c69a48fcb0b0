//! Rate limits: token buckets per caller (`[rate_limit] per_caller`) and per route (a route's
//! `rate_limit`), checked by the server's `exchange::admit` for every call about to be forwarded,
//! so every data plane shares them.
//!
//! Each bucket is kept as a single number, the time its next token is due (GCRA, the
//! "generic cell rate algorithm"): a call is admitted when that time, advanced by one
//! interval (`1 / rate`), is at most `burst` intervals ahead of now. A bucket whose time is
//! past is full again, exactly like a caller never seen: such buckets are the first evicted.
//!
//! - A route's bucket is one atomic (compare-and-swap, no lock).
//! - Callers are kept in 64 shards, each a small map under its own mutex, keyed by a keyed
//!   hash of the caller (no allocation per call); at most `rate_limit.max_callers` in all.
//!   A full shard drops its full buckets first, then the one closest to full.
//! - A call over a limit does not take a token (its retry is judged as if it never came).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// One token bucket's settings.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Calls per second, sustained.
    pub rate: f64,
    /// Calls at once.
    pub burst: u32,
    /// Count and log calls over the limit, but forward them.
    pub shadow: bool,
    /// Nanoseconds per token.
    interval: u64,
}

impl Limit {
    pub fn new(rate: f64, burst: u32, shadow: bool) -> Self {
        Limit {
            rate,
            burst,
            shadow,
            interval: ((1e9 / rate) as u64).max(1),
        }
    }

    /// The next due time if a call at `now` is admitted, or the whole seconds to wait.
    fn take(&self, due: u64, now: u64) -> Result<u64, u32> {
        let next = due.max(now).saturating_add(self.interval);
        let ahead = next - now;
        let room = self.interval.saturating_mul(u64::from(self.burst));
        if ahead <= room {
            Ok(next)
        } else {
            // Rounded up: retrying after that many seconds is admitted.
            Err(u32::try_from((ahead - room).div_ceil(1_000_000_000)).unwrap_or(u32::MAX))
        }
    }
}

/// The verdict on one call: admitted, or over the limit (then the seconds to wait).
pub type Verdict = Result<(), u32>;

/// A route's bucket (every caller together).
#[derive(Debug)]
pub struct RouteBucket {
    pub limit: Limit,
    /// When the next token is due, in nanoseconds since [`Clock`]'s start.
    due: AtomicU64,
}

impl RouteBucket {
    pub fn new(limit: Limit) -> Self {
        RouteBucket {
            limit,
            due: AtomicU64::new(0),
        }
    }

    pub fn check(&self, now: u64) -> Verdict {
        let mut due = self.due.load(Ordering::Relaxed);
        loop {
            let next = self.limit.take(due, now)?;
            match self
                .due
                .compare_exchange_weak(due, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => due = current,
            }
        }
    }
}

/// Nanoseconds since a fixed start (the buckets' time base).
#[derive(Debug)]
pub struct Clock(Instant);

impl Default for Clock {
    fn default() -> Self {
        Clock(Instant::now())
    }
}

impl Clock {
    pub fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.0).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Who a caller is for its bucket.
#[derive(Debug, Clone, Copy)]
pub enum CallerKey<'a> {
    /// An identified caller: its user id.
    User(&'a str),
    /// An anonymous caller: its address (IPv6: its /64, what one host usually holds).
    Ip(IpAddr),
}

const SHARDS: usize = 64;

/// A key that is already a keyed hash: used as is.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, u64, BuildHasherDefault<Prehashed>>;

/// The callers' buckets.
pub struct Callers {
    shards: Box<[Mutex<Shard>]>,
    /// Keyed (random per process): a caller cannot pick names that collide with another's.
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Callers {
    fn default() -> Self {
        Callers {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl Callers {
    fn hash(&self, key: CallerKey<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        match key {
            CallerKey::User(id) => {
                h.write_u8(0);
                h.write(id.as_bytes());
            }
            CallerKey::Ip(IpAddr::V4(a)) => {
                h.write_u8(4);
                h.write(&a.octets());
            }
            CallerKey::Ip(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                Some(v4) => {
                    h.write_u8(4);
                    h.write(&v4.octets());
                }
                None => {
                    h.write_u8(6);
                    h.write(&a.octets()[..8]);
                }
            },
        }
        h.finish()
    }

    /// Take a token from `key`'s bucket at `now`; at most `max_callers` are tracked.
    pub fn check(
        &self,
        key: CallerKey<'_>,
        limit: &Limit,
        now: u64,
        max_callers: usize,
    ) -> Verdict {
        let hash = self.hash(key);
        let shard = &self.shards[(hash % SHARDS as u64) as usize];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        let due = map.get(&hash).copied();
        let next = limit.take(due.unwrap_or(0), now)?;
        if due.is_none() {
            let room = max_callers.div_ceil(SHARDS).max(1);
            if map.len() >= room {
                // Full buckets first (they are the same as no bucket at all) …
                map.retain(|_, due| *due > now);
            }
            // … then the ones closest to full.
            while map.len() >= room {
                match map.iter().min_by_key(|(_, due)| **due).map(|(k, _)| *k) {
                    Some(oldest) => map.remove(&oldest),
                    None => break,
                };
            }
        }
        map.insert(hash, next);
        Ok(())
    }

    /// Callers tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_the_rate_with_the_wait_rounded_up() {
        let limit = Limit::new(0.5, 3, false);
        let b = RouteBucket::new(limit);
        let t0 = 100 * S;
        for _ in 0..3 {
            assert_eq!(b.check(t0), Ok(()));
        }
        // Next token in 2 s.
        assert_eq!(b.check(t0), Err(2));
        assert_eq!(b.check(t0 + S / 2), Err(2));
        assert_eq!(b.check(t0 + 2 * S), Ok(()));
        assert_eq!(b.check(t0 + 2 * S), Err(2));
        // Long idle: full again, no more than the burst.
        let later = t0 + 1000 * S;
        for _ in 0..3 {
            assert_eq!(b.check(later), Ok(()));
        }
        assert!(b.check(later).is_err());
    }

    #[test]
    fn a_call_over_the_limit_takes_no_token() {
        let c = Callers::default();
        let l = Limit::new(1.0, 1, false);
        assert_eq!(c.check(CallerKey::User("u"), &l, S, 10), Ok(()));
        for _ in 0..100 {
            assert_eq!(c.check(CallerKey::User("u"), &l, S, 10), Err(1));
        }
        // One interval later, whatever was refused meanwhile.
        assert_eq!(c.check(CallerKey::User("u"), &l, 2 * S, 10), Ok(()));
    }

    #[test]
    fn callers_are_apart_and_bounded() {
        let c = Callers::default();
        let l = Limit::new(1.0, 2, false);
        let now = 10 * S;
        for _ in 0..2 {
            assert!(c.check(CallerKey::User("a"), &l, now, 1000).is_ok());
        }
        assert!(c.check(CallerKey::User("a"), &l, now, 1000).is_err());
        assert!(c.check(CallerKey::User("b"), &l, now, 1000).is_ok());
        let ip = |s: &str| CallerKey::Ip(s.parse().unwrap());
        assert!(c.check(ip("10.0.0.1"), &l, now, 1000).is_ok());
        assert!(c.check(ip("10.0.0.1"), &l, now, 1000).is_ok());
        assert!(c.check(ip("::ffff:10.0.0.1"), &l, now, 1000).is_err());
        // One IPv6 /64 is one caller.
        assert!(c.check(ip("2001:db8::1"), &l, now, 1000).is_ok());
        assert!(c.check(ip("2001:db8::2"), &l, now, 1000).is_ok());
        assert!(c.check(ip("2001:db8::3"), &l, now, 1000).is_err());
        // Bounded: 64 callers at most here (one per shard), whatever comes.
        for i in 0..10_000 {
            let _ = c.check(CallerKey::User(&format!("u{i}")), &l, now, 64);
        }
        assert!(c.len() <= 64, "{}", c.len());
        // Time passes: everyone is full again; full buckets go first.
        let _ = c.check(CallerKey::User("new"), &l, now + 100 * S, 64);
        assert!(c.len() <= 64);
    }
}
