//! How many handshake messages may reach a Diffie-Hellman: a token bucket per source address, and one over all
//! sources.
//!
//! boringtun's `RateLimiter` answers with cookie replies past its limit, and from then on lets through every
//! message with a valid MAC2, without limit. A MAC2 proves only that the sender can receive at its address: one
//! initiation with a valid MAC2, replayed, costs a Diffie-Hellman per copy for the two minutes the cookie is
//! valid. So, as the kernel module and wireguard-go do, each source gets a bucket of its own; and since many
//! sources together still could take the whole engine, one bucket over all of them bounds the work per second.
//!
//! No I/O, no clock: the caller passes the time in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Handshake messages a second from one source once its burst is used up (as the kernel module and
/// wireguard-go).
pub const PER_SOURCE_RATE: u64 = 20;

/// Handshake messages one source may send at once.
pub const PER_SOURCE_BURST: u64 = 5;

/// Handshake messages a second, from all sources together, that may reach a Diffie-Hellman.
///
/// Measured in a release build (`handshake_cost` in `tests.rs`, best of 10 rounds on a 2-core machine shared
/// with other work): a handshake initiation for a known peer costs the server 279 µs (its lookup by static key,
/// then the whole handshake and the response: some five scalar multiplications), one from an unknown key 65 µs.
/// 400 a second of the dearer kind take 112 ms a second, about a tenth of the thread that carries every peer's
/// traffic. A peer handshakes once every two minutes: 400 a second is room for tens of thousands of peers.
pub const GLOBAL_RATE: u64 = 400;

/// Handshake messages from all sources that may reach a Diffie-Hellman at once: a quarter of a second's worth,
/// for many peers that start together (e.g. after a restart of the server).
pub const GLOBAL_BURST: u64 = GLOBAL_RATE / 4;

/// Sources tracked at once. An entry is some 64 bytes with the table's overhead: half a megabyte at most.
/// Only sources whose message passed the MAC checks get one, so filling it takes that many addresses that
/// receive cookies (or, below the cookie threshold, more seconds than the pruning leaves them).
pub const MAX_SOURCES: usize = 8192;

/// Why a handshake message may not go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source used up its bucket.
    Source,
    /// All sources together used up the global bucket.
    Global,
}

/// A token bucket, in nanoseconds of credit: one message costs `cost`, credit grows with time up to `max`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    credit: u64,
    last: Instant,
}

impl Bucket {
    fn full(now: Instant, max: u64) -> Self {
        Bucket {
            credit: max,
            last: now,
        }
    }

    /// Takes one message's cost if there is credit for it.
    fn take(&mut self, now: Instant, cost: u64, max: u64) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.credit = (u128::from(self.credit) + elapsed).min(u128::from(max)) as u64;
        self.last = now;
        if self.credit >= cost {
            self.credit -= cost;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full by `now`: then it is no different from one that was never used.
    fn is_full(&self, now: Instant, max: u64) -> bool {
        u128::from(self.credit) + now.saturating_duration_since(self.last).as_nanos() >= u128::from(max)
    }
}

/// Nanoseconds of credit one message costs at `rate` a second.
const fn cost(rate: u64) -> u64 {
    1_000_000_000 / rate
}

/// What a source is known by: an IPv4 address, or an IPv6 address's /64 (one subscriber commonly has a /64, so
/// its addresses are one source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Source {
    fn from(addr: IpAddr) -> Self {
        // An IPv4 client of the dual-stack socket arrives as an IPv4-mapped IPv6 address.
        match addr.to_canonical() {
            IpAddr::V4(a) => Source::V4(a.into()),
            IpAddr::V6(a) => Source::V6((u128::from(a) >> 64) as u64),
        }
    }
}

/// The buckets. Applied to every handshake message that passed the MAC checks, whether or not the server is
/// under load: the cookie threshold counts per second and starts again each second, so without a bucket one
/// source could take the first messages of every second (those need no cookie) all to itself; and a peer
/// handshakes once every few seconds at most (every 5 s while it gets no answer), far below its bucket, so it
/// never notices.
pub struct HandshakeLimit {
    sources: HashMap<Source, Bucket>,
    global: Bucket,
    /// The global bucket's cost of one message and its size, in nanoseconds.
    global_cost: u64,
    global_max: u64,
}

impl HandshakeLimit {
    pub fn new(now: Instant) -> Self {
        Self::with_global(now, GLOBAL_RATE, GLOBAL_BURST)
    }

    /// With a global bucket of another size: a test in a debug build cannot make the server reach the real one.
    pub fn with_global(now: Instant, rate: u64, burst: u64) -> Self {
        HandshakeLimit {
            sources: HashMap::new(),
            global: Bucket::full(now, burst * cost(rate)),
            global_cost: cost(rate),
            global_max: burst * cost(rate),
        }
    }

    /// Whether a handshake message from `src` may go on to its Diffie-Hellman. One refused by its source's bucket
    /// takes nothing from the global one. With the table full, a source not in it is bounded by the global bucket
    /// only: a lot of addresses at once is beyond what one source's bucket protects against, and refusing them
    /// would lock out every new peer as long as the table stays full.
    pub fn allow(&mut self, now: Instant, src: IpAddr) -> Result<(), Refused> {
        const COST: u64 = cost(PER_SOURCE_RATE);
        const MAX: u64 = PER_SOURCE_BURST * COST;
        let key = Source::from(src);
        let len = self.sources.len();
        let allowed = match self.sources.get_mut(&key) {
            Some(bucket) => bucket.take(now, COST, MAX),
            None if len < MAX_SOURCES => {
                let mut bucket = Bucket::full(now, MAX);
                let allowed = bucket.take(now, COST, MAX);
                self.sources.insert(key, bucket);
                allowed
            }
            None => true,
        };
        if !allowed {
            return Err(Refused::Source);
        }
        if self.global.take(now, self.global_cost, self.global_max) {
            Ok(())
        } else {
            Err(Refused::Global)
        }
    }

    /// Forgets the sources whose bucket is full again (a quarter of a second after their last message): they
    /// would be allowed just as if they were new. Call once a second; the walk over the table is its only cost
    /// that grows with it.
    pub fn prune(&mut self, now: Instant) {
        const MAX: u64 = PER_SOURCE_BURST * cost(PER_SOURCE_RATE);
        self.sources.retain(|_, bucket| !bucket.is_full(now, MAX));
    }

    /// Sources tracked now.
    #[cfg(test)]
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The time an empty per-source bucket takes to fill.
    const PER_SOURCE_REFILL: Duration = Duration::from_nanos(PER_SOURCE_BURST * cost(PER_SOURCE_RATE));

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// How many of `n` messages from `src` at `now` are allowed.
    fn allowed(limit: &mut HandshakeLimit, now: Instant, src: IpAddr, n: usize) -> usize {
        (0..n).filter(|_| limit.allow(now, src).is_ok()).count()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let t = Instant::now();
        let mut limit = HandshakeLimit::new(t);
        let a = v4("192.0.2.1");
        assert_eq!(allowed(&mut limit, t, a, 100), PER_SOURCE_BURST as usize);
        assert_eq!(limit.allow(t, a), Err(Refused::Source));
        // A second later: 20 more, not more.
        let t1 = t + Duration::from_secs(1);
        assert_eq!(allowed(&mut limit, t1, a, 100), PER_SOURCE_BURST as usize);
        let mut n = 0;
        for ms in 0..1000 {
            n += allowed(&mut limit, t1 + Duration::from_millis(ms), a, 10);
        }
        assert_eq!(
            n as u64,
            PER_SOURCE_RATE - 1,
            "the last token comes at the end of the second"
        );
        // Another source is not affected.
        assert_eq!(
            allowed(&mut limit, t1, v4("192.0.2.2"), 100),
            PER_SOURCE_BURST as usize
        );
    }

    #[test]
    fn ipv6_sources_are_their_64_and_mapped_ipv4_is_ipv4() {
        let t = Instant::now();
        let mut limit = HandshakeLimit::new(t);
        let n: usize = (0..100)
            .map(|i| {
                let addr: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
                allowed(&mut limit, t, addr, 1)
            })
            .sum();
        assert_eq!(n, PER_SOURCE_BURST as usize, "one /64, one bucket");
        assert_eq!(allowed(&mut limit, t, "2001:db8:1:3::1".parse().unwrap(), 1), 1);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(allowed(&mut limit, t, mapped, 100), PER_SOURCE_BURST as usize);
        assert_eq!(allowed(&mut limit, t, v4("192.0.2.7"), 1), 0, "the same source");
        // Other IPv4 clients of the dual-stack socket are not in the mapped address's /64.
        assert_eq!(allowed(&mut limit, t, "::ffff:192.0.2.8".parse().unwrap(), 1), 1);
    }

    #[test]
    fn many_sources_together_are_bounded() {
        let t = Instant::now();
        let mut limit = HandshakeLimit::new(t);
        let mut n = 0;
        let mut global = 0;
        for i in 0..4000u32 {
            match limit.allow(t, IpAddr::from((0x0a00_0000 + i).to_be_bytes())) {
                Ok(()) => n += 1,
                Err(Refused::Global) => global += 1,
                Err(Refused::Source) => panic!("one message per source"),
            }
        }
        assert_eq!(n, GLOBAL_BURST);
        assert_eq!(global, 4000 - GLOBAL_BURST);
        // Over a second, at most the rate more.
        let mut n = 0;
        for ms in 1..=1000u32 {
            for i in 0..10u32 {
                let src = IpAddr::from((0x0b00_0000 + ms * 16 + i).to_be_bytes());
                n += u64::from(limit.allow(t + Duration::from_millis(ms.into()), src).is_ok());
            }
        }
        assert_eq!(n, GLOBAL_RATE);
    }

    #[test]
    fn the_table_is_bounded_and_pruned_without_changing_a_decision() {
        let t = Instant::now();
        let mut limit = HandshakeLimit::new(t);
        for i in 0..(MAX_SOURCES as u32 + 1000) {
            let _ = limit.allow(t, IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
        }
        assert_eq!(limit.sources(), MAX_SOURCES);
        // A source that used up its burst is kept until its bucket is full again.
        let a = v4("192.0.2.1");
        let mut limit = HandshakeLimit::new(t);
        assert_eq!(allowed(&mut limit, t, a, 10), PER_SOURCE_BURST as usize);
        let almost = t + PER_SOURCE_REFILL - Duration::from_millis(1);
        limit.prune(almost);
        assert_eq!(limit.sources(), 1);
        limit.prune(t + PER_SOURCE_REFILL);
        assert_eq!(limit.sources(), 0);
    }
}
