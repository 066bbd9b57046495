//! Log records that come once a packet, aggregated per second.
//!
//! A peer decides how many packets it sends, and so how many records "dropped a packet from peer 3: ..." the
//! server would write. Each record crosses into Python's logging under the GIL: at `-v`, a peer's junk would
//! throttle the engine. So, as the drop counts of `wireguard::peers::drops`, records of the same kind are
//! aggregated: the first of a kind in a second is written at once (it says what happens), the others of that
//! second are counted, and one record at the end of the second gives their number and the last of them.
//!
//! `RateLog` does no logging itself and reads no clock: the caller passes the time in and writes the lines it
//! returns. `note` and `flush` do that with one shared instance and the real clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::Level;

/// How long records of one kind are counted before their count is written.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Kinds of records tracked at once. Kinds are a fixed set of `&'static str`s in the code, so this is never
/// reached; beyond it, records of a new kind are left out.
const MAX_KINDS: usize = 64;

#[derive(Debug)]
struct Kind {
    kind: &'static str,
    level: Level,
    /// Records of the period after the first.
    more: u64,
    /// The last of them.
    last: String,
}

/// Records of each kind in the current period.
#[derive(Debug, Default)]
pub struct RateLog {
    period_start: Option<Instant>,
    kinds: Vec<Kind>,
}

impl RateLog {
    pub const fn new() -> Self {
        RateLog {
            period_start: None,
            kinds: Vec::new(),
        }
    }

    /// A record of `kind` at `now`: returns the lines to write now, the counts of a period that ended before
    /// `now` first. `detail` is the record's own text, made only when it is needed.
    pub fn record(
        &mut self,
        now: Instant,
        level: Level,
        kind: &'static str,
        detail: impl FnOnce() -> String,
    ) -> Vec<(Level, String)> {
        let mut lines = self.flush(now);
        self.period_start.get_or_insert(now);
        if let Some(seen) = self.kinds.iter_mut().find(|k| k.kind == kind) {
            seen.more += 1;
            seen.last = detail();
        } else if self.kinds.len() < MAX_KINDS {
            self.kinds.push(Kind {
                kind,
                level,
                more: 0,
                last: String::new(),
            });
            lines.push((level, detail()));
        }
        lines
    }

    /// The counts of the period, if it ended by `now`; then a new period starts with the next record.
    pub fn flush(&mut self, now: Instant) -> Vec<(Level, String)> {
        match self.period_start {
            Some(start) if now.saturating_duration_since(start) >= PERIOD => {}
            _ => return Vec::new(),
        }
        self.period_start = None;
        std::mem::take(&mut self.kinds)
            .into_iter()
            .filter(|k| k.more > 0)
            .map(|k| {
                (
                    k.level,
                    format!(
                        "{} more {} in the last second, the last: {}",
                        k.more, k.kind, k.last
                    ),
                )
            })
            .collect()
    }
}

static SHARED: Mutex<RateLog> = Mutex::new(RateLog::new());

/// Logs a record of `kind` (a plural noun phrase: "packets dropped from peers"), aggregated per second with the
/// others of its kind. Costs nothing beyond a check of the level when `level` is not logged.
pub fn note(level: Level, kind: &'static str, detail: impl FnOnce() -> String) {
    if !log::log_enabled!(level) {
        return;
    }
    let lines = match SHARED.lock() {
        Ok(mut shared) => shared.record(Instant::now(), level, kind, detail),
        Err(_) => return,
    };
    write(lines);
}

/// Writes the counts of a period that has ended. Called from a timer, so that the count of the last burst is
/// written even when no record follows it.
pub fn flush() {
    let lines = match SHARED.try_lock() {
        Ok(mut shared) => shared.flush(Instant::now()),
        Err(_) => return,
    };
    write(lines);
}

fn write(lines: Vec<(Level, String)>) {
    for (level, line) in lines {
        log::log!(level, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DROPPED: &str = "packets dropped from peers";
    const SEND: &str = "datagrams that could not be sent";

    #[test]
    fn the_first_record_of_a_kind_is_written_at_once_and_the_rest_counted_for_the_second() {
        let t0 = Instant::now();
        let mut log = RateLog::new();
        let first = log.record(t0, Level::Debug, DROPPED, || {
            "dropped a packet from peer 1: a".into()
        });
        assert_eq!(
            first,
            [(Level::Debug, "dropped a packet from peer 1: a".to_owned())]
        );
        // A flood within the second: nothing is written, and the text of a record is made only to be kept.
        for i in 0..10_000 {
            let at = t0 + PERIOD * i / 10_001;
            assert!(log
                .record(at, Level::Debug, DROPPED, || format!(
                    "dropped a packet from peer 1: {i}"
                ))
                .is_empty());
        }
        // Another kind is a record of its own.
        let other = log.record(t0, Level::Trace, SEND, || "could not send 1 bytes".into());
        assert_eq!(other, [(Level::Trace, "could not send 1 bytes".to_owned())]);
        assert!(log.flush(t0 + PERIOD - Duration::from_millis(1)).is_empty());
        // At the end of the second: the count of those not written, with the last; kinds with no more, nothing.
        assert_eq!(
            log.flush(t0 + PERIOD),
            [(
                Level::Debug,
                "10000 more packets dropped from peers in the last second, the last: dropped a packet from \
                 peer 1: 9999"
                    .to_owned()
            )]
        );
        assert!(log.flush(t0 + PERIOD * 3).is_empty());
        // The next second starts afresh: its first record is written again.
        let again = log.record(t0 + PERIOD * 3, Level::Debug, DROPPED, || "x".into());
        assert_eq!(again, [(Level::Debug, "x".to_owned())]);
    }

    #[test]
    fn a_record_after_the_second_writes_the_count_of_the_second_before_itself() {
        let t0 = Instant::now();
        let mut log = RateLog::new();
        log.record(t0, Level::Debug, DROPPED, || "a".into());
        log.record(t0, Level::Debug, DROPPED, || "b".into());
        let lines = log.record(t0 + PERIOD * 2, Level::Debug, DROPPED, || "c".into());
        assert_eq!(
            lines,
            [
                (
                    Level::Debug,
                    "1 more packets dropped from peers in the last second, the last: b".to_owned()
                ),
                (Level::Debug, "c".to_owned())
            ]
        );
    }

    #[test]
    fn kinds_beyond_the_bound_are_not_written() {
        let t0 = Instant::now();
        let mut log = RateLog::new();
        for i in 0..MAX_KINDS {
            let kind: &'static str = Box::leak(format!("kind {i}").into_boxed_str());
            assert_eq!(log.record(t0, Level::Debug, kind, || "first".into()).len(), 1);
        }
        assert!(log
            .record(t0, Level::Debug, "one more", || "first".into())
            .is_empty());
        assert_eq!(log.kinds.len(), MAX_KINDS);
    }
}
