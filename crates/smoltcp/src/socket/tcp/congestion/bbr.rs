//! A model-based congestion controller after BBR (version 1): it estimates the path's bottleneck
//! rate (the largest delivery rate of the last ten round trips) and its round-trip propagation
//! time (the smallest round trip of the last ten seconds), paces at that rate and keeps twice their
//! product in flight. Unlike loss-based controllers it does not take a loss for congestion, so a
//! path that loses packets at random (a radio link) is still used at its rate; a queue that
//! overflows shows as a delivery rate that stops growing, and as rounds that lose more than 2%,
//! which end Startup and, later, cut the flight until the next probe (as BBRv2 does). A probe
//! that finds room starts Startup over.
//!
//! The socket feeds it delivery-rate samples (`on_rate_sample`): the data delivered, cumulatively
//! acknowledged or SACKed, between the moment a timed segment was sent and the moment it was
//! acknowledged, over that time.

use crate::time::{Duration, Instant};

use super::Controller;

const DEFAULT_MSS: usize = 1024;
/// Startup doubles the sending rate every round trip: 2/ln(2).
const HIGH_GAIN: f64 = 2.885;
/// ProbeBW's pacing gains, a phase of a round trip each: probe for more, drain what that queued,
/// then cruise.
const PACING_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
const CWND_GAIN: f64 = 2.0;
/// Pacing 1% below the estimate (as Linux's BBR does): the estimate is the largest of noisy
/// samples, and pacing at it puts a little more into a bottleneck than leaves it, a queue that
/// grows all the while the rate cruises.
const PACING_MARGIN: f64 = 0.99;
/// Rounds over which the bottleneck rate is the largest sample.
const BW_ROUNDS: usize = 10;
/// How long the round-trip propagation time lasts without a new minimum, and then how long
/// ProbeRTT keeps `PROBE_RTT_CWND` segments in flight to measure it again.
const MIN_RTT_LIFETIME: Duration = Duration::from_secs(10);
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
const PROBE_RTT_CWND: usize = 4;
/// Startup ends when the bottleneck rate grew by less than a quarter for three rounds.
const FULL_BW_GROWTH: f64 = 1.25;
const FULL_BW_ROUNDS: u32 = 3;
/// A round that resent more than this share of what it delivered overflowed a queue (BBRv2's
/// 2%): random loss (a radio link) stays below it.
const LOSS_THRESH: f64 = 0.02;
/// ...and resent at least this many segments: a round of a few segments says little.
const LOSS_EVENTS: u64 = 8;
/// Outside Startup, a round that lost more than `LOSS_THRESH` (and at least this many segments)
/// found a queue that overflows: the flight is cut to `LOSS_BETA` of itself (BBRv2's), not below
/// the path's product, until the next probe. Without it, flows that each overestimate their
/// share a little keep a shared bottleneck's queue full and lose a tenth of what they send.
const LOSS_EVENTS_CRUISING: u64 = 3;
const LOSS_BETA: f64 = 0.7;
/// A probe that raised the bottleneck rate by this much found room: another flow ended, the
/// path got faster, or this flow left Startup with a small share, on a loss in a queue that
/// flows started just before it had filled. Startup again takes that room in a few round
/// trips, doubling the rate in each, where probes of a quarter more take seconds. A full
/// bottleneck answers a probe with the rate it had, give or take its noise.
const ROOM_GROWTH: f64 = 1.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum Mode {
    Startup,
    Drain,
    ProbeBw { phase: usize, since: Instant },
    ProbeRtt { until: Option<Instant> },
}

#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Bbr {
    mode: Mode,
    mss: usize,
    /// Largest delivery rate of each of the last rounds (bytes per second), the current one at
    /// `round % BW_ROUNDS`.
    bw_rounds: [u64; BW_ROUNDS],
    round: u64,
    /// Bytes delivered so far, and the count at which the current round ends.
    delivered: u64,
    round_end: u64,
    /// The round-trip propagation time, and when it was last measured or confirmed.
    min_rtt: Option<(Duration, Instant)>,
    /// Startup's plateau detection: the rate to beat and for how many rounds it was not.
    full_bw: u64,
    full_bw_rounds: u32,
    in_flight: usize,
    /// Bytes resent so far; where the current round started: delivered, resent.
    lost: u64,
    round_start: (u64, u64),
    /// The bottleneck rate when the last probe began, until its samples are in.
    probed_from: Option<u64>,
    /// The flight's bound after a lossy round, until the next probe.
    inflight_lo: Option<usize>,
}

impl Bbr {
    pub fn new() -> Bbr {
        Bbr {
            mode: Mode::Startup,
            mss: DEFAULT_MSS,
            bw_rounds: [0; BW_ROUNDS],
            round: 0,
            delivered: 0,
            round_end: 0,
            min_rtt: None,
            full_bw: 0,
            full_bw_rounds: 0,
            in_flight: 0,
            lost: 0,
            round_start: (0, 0),
            probed_from: None,
            inflight_lo: None,
        }
    }

    /// The bottleneck rate, in bytes per second (0 before a sample).
    fn bandwidth(&self) -> u64 {
        self.bw_rounds.iter().copied().max().unwrap_or(0)
    }

    /// The path's bandwidth-delay product times `gain`, once both are known.
    fn bdp(&self, gain: f64) -> Option<usize> {
        let (rtt, _) = self.min_rtt?;
        let bw = self.bandwidth();
        if bw == 0 {
            return None;
        }
        Some((bw as f64 * rtt.total_micros() as f64 / 1e6 * gain) as usize)
    }

    fn pacing_gain(&self) -> f64 {
        match self.mode {
            Mode::Startup => HIGH_GAIN,
            Mode::Drain => 1.0 / HIGH_GAIN,
            Mode::ProbeBw { phase, .. } => PACING_GAINS[phase],
            Mode::ProbeRtt { .. } => 1.0,
        }
    }

    /// A new round starts with every sample whose data was sent after the last one began.
    fn next_round(&mut self) {
        self.end_round_losses();
        self.round_start = (self.delivered, self.lost);
        self.round += 1;
        self.round_end = self.delivered + self.in_flight as u64;
        self.bw_rounds[(self.round % BW_ROUNDS as u64) as usize] = 0;
        if self.mode == Mode::Startup {
            let bw = self.bandwidth();
            if bw as f64 >= self.full_bw as f64 * FULL_BW_GROWTH {
                self.full_bw = bw;
                self.full_bw_rounds = 0;
            } else {
                self.full_bw_rounds += 1;
                if self.full_bw_rounds >= FULL_BW_ROUNDS {
                    self.mode = Mode::Drain;
                }
            }
        }
    }

    /// Startup ends in a round that resent more than `LOSS_THRESH` of what it delivered (as in
    /// BBRv2): it overflowed a queue, the path is full.
    fn end_round_losses(&mut self) {
        let (delivered, lost) = self.round_start;
        let delivered = self.delivered - delivered;
        let lost = self.lost.saturating_sub(lost);
        let segments = lost / self.mss.max(1) as u64;
        if lost as f64 <= delivered as f64 * LOSS_THRESH {
            return;
        }
        match self.mode {
            Mode::Startup if segments >= LOSS_EVENTS => self.mode = Mode::Drain,
            Mode::ProbeBw { .. } if segments >= LOSS_EVENTS_CRUISING => {
                let from = self.inflight_lo.unwrap_or(self.in_flight);
                let floor = self.bdp(1.0).unwrap_or(0);
                self.inflight_lo = Some(((from as f64 * LOSS_BETA) as usize).max(floor));
            }
            _ => {}
        }
    }

    /// The window of the model: twice the path's product in flight (Startup: its gain).
    fn model_window(&self) -> usize {
        let gain = match self.mode {
            Mode::Startup | Mode::Drain => HIGH_GAIN,
            _ => CWND_GAIN,
        };
        match self.bdp(gain) {
            Some(bdp) => bdp + 3 * self.mss,
            // Before the first sample: the initial window of RFC 6928.
            None => 10 * self.mss,
        }
    }

    /// ProbeBW's first phase: a quarter more for a round trip, and the rate it starts from.
    fn start_probe(&mut self, now: Instant) {
        self.mode = Mode::ProbeBw {
            phase: 0,
            since: now,
        };
        self.probed_from = Some(self.bandwidth());
        self.inflight_lo = None;
    }

    fn advance_mode(&mut self, now: Instant) {
        let min_rtt = self.min_rtt.map(|(rtt, _)| rtt);
        match self.mode {
            // Drain ends in a probe: the share of the path that Startup ended with may be
            // small (see `ROOM_GROWTH`), and cruising at it for six round trips first is slow.
            Mode::Drain if self.bdp(1.0).is_some_and(|bdp| self.in_flight <= bdp) => {
                self.start_probe(now);
            }
            Mode::ProbeBw { phase, since } => {
                let rtt = min_rtt.unwrap_or(Duration::from_millis(100));
                let next = match phase {
                    // Probing ends once a round trip passed; draining also as soon as the
                    // queue the probe built is gone.
                    0 => now >= since + rtt,
                    1 => {
                        now >= since + rtt || self.bdp(1.0).is_some_and(|bdp| self.in_flight <= bdp)
                    }
                    _ => now >= since + rtt,
                };
                let bw = self.bandwidth();
                let room = phase != 0
                    && self
                        .probed_from
                        .is_some_and(|from| bw as f64 >= from as f64 * ROOM_GROWTH);
                if room {
                    self.mode = Mode::Startup;
                    self.full_bw = bw;
                    self.full_bw_rounds = 0;
                    self.probed_from = None;
                    self.inflight_lo = None;
                } else if next {
                    match (phase + 1) % PACING_GAINS.len() {
                        0 => self.start_probe(now),
                        phase => {
                            self.mode = Mode::ProbeBw { phase, since: now };
                            // The probe's samples came in during the two round trips after it.
                            if phase == 3 {
                                self.probed_from = None;
                            }
                        }
                    }
                }
            }
            Mode::ProbeRtt { until: None } if self.in_flight <= PROBE_RTT_CWND * self.mss => {
                self.mode = Mode::ProbeRtt {
                    until: Some(now + PROBE_RTT_TIME),
                };
            }
            Mode::ProbeRtt { until: Some(until) } if now >= until => {
                self.min_rtt = self.min_rtt.map(|(rtt, _)| (rtt, now));
                self.probed_from = None;
                self.mode = Mode::ProbeBw {
                    phase: 2,
                    since: now,
                };
            }
            _ => {}
        }
        let stale = self
            .min_rtt
            .is_some_and(|(_, at)| now >= at + MIN_RTT_LIFETIME);
        if stale && !matches!(self.mode, Mode::ProbeRtt { .. } | Mode::Startup) {
            self.mode = Mode::ProbeRtt { until: None };
        }
    }
}

impl Default for Bbr {
    fn default() -> Self {
        Self::new()
    }
}

impl Controller for Bbr {
    fn window(&self) -> usize {
        let floor = PROBE_RTT_CWND * self.mss;
        if let Mode::ProbeRtt { .. } = self.mode {
            return floor;
        }
        let bound = self.inflight_lo.unwrap_or(usize::MAX);
        self.model_window().min(bound).max(floor)
    }

    fn pacing_rate(&self) -> Option<u64> {
        match self.bandwidth() {
            0 => None,
            bw => Some((bw as f64 * self.pacing_gain() * PACING_MARGIN) as u64),
        }
    }

    fn wants_rate_samples(&self) -> bool {
        true
    }

    fn on_rate_sample(
        &mut self,
        now: Instant,
        delivered: u64,
        rate: Option<u64>,
        rtt: Duration,
        in_flight: usize,
    ) {
        self.delivered = self.delivered.max(delivered);
        self.in_flight = in_flight;
        if self.delivered >= self.round_end {
            self.next_round();
        }
        // Data cannot arrive faster than it was sent, at most the bottleneck rate times the
        // highest gain in use: a faster sample is an artifact (ACKs that came in a bunch, or
        // SACKed data the scoreboard forgot, counted when acknowledged).
        let bw = self.bandwidth();
        let most = bw as f64 * self.pacing_gain().max(PACING_GAINS[0]);
        let rate = rate.map(|rate| if bw == 0 { rate } else { rate.min(most as u64) });
        if let Some(rate) = rate {
            let slot = &mut self.bw_rounds[(self.round % BW_ROUNDS as u64) as usize];
            *slot = (*slot).max(rate);
        }
        match self.min_rtt {
            Some((min, _)) if rtt > min => {}
            _ => self.min_rtt = Some((rtt, now)),
        }
        self.advance_mode(now);
    }

    fn on_ack(&mut self, now: Instant, _len: usize, in_flight: usize, _rtt: &super::RttEstimator) {
        self.in_flight = in_flight;
        self.advance_mode(now);
    }

    fn on_retransmit(&mut self, _now: Instant, len: usize) {
        self.lost += len as u64;
    }

    /// Octets resent for nothing (the original was late) count as lost no more.
    fn on_spurious_retransmit(&mut self, _now: Instant, len: usize) {
        self.lost = self.lost.saturating_sub(len as u64);
    }

    fn set_mss(&mut self, mss: usize) {
        self.mss = mss;
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const MSS: usize = 1000;

    /// Feeds `bbr` a path of `rate` bytes per second and `rtt`: a sample every millisecond
    /// for `ms` milliseconds, with what the window keeps in flight (at most the path's capacity
    /// plus what queues), from `start`. Returns the time after.
    fn run(bbr: &mut Bbr, start: Instant, ms: i64, rate: u64, rtt: Duration) -> Instant {
        let bdp = (rate as f64 * rtt.total_micros() as f64 / 1e6) as usize;
        let mut now = start;
        for _ in 0..ms {
            now += Duration::from_millis(1);
            // The rate the sender reaches: its pacing rate, at most the path's; what it keeps in
            // flight: its pacing rate over the round trip, at most its window.
            let pacing = bbr.pacing_rate().unwrap_or(rate);
            let sent_rate = pacing.min(rate);
            let paced = (pacing as f64 * rtt.total_micros() as f64 / 1e6) as usize;
            let in_flight = bbr.window().min(paced).min(2 * bdp);
            bbr.delivered += sent_rate / 1000;
            let delivered = bbr.delivered;
            bbr.on_rate_sample(now, delivered, Some(sent_rate), rtt, in_flight);
        }
        now
    }

    /// Feeds `bbr` a path of `rate` bytes per second for `ms` milliseconds from `now`, with
    /// each millisecond's sample telling the rate the flow sent a round trip before, at most the
    /// path's (in the round trip before `now`, it sent at `before`). Returns the time after, how
    /// long the bottleneck rate took to reach 95% of the path's (in steps of 50 ms), and the
    /// rate at the end of each 50 ms, in units of 100 kB/s.
    fn run_late(
        bbr: &mut Bbr,
        mut now: Instant,
        before: u64,
        ms: usize,
        rate: u64,
        rtt: Duration,
    ) -> (Instant, Option<usize>, Vec<u64>) {
        let rtt_ms = rtt.total_millis() as usize;
        let mut sent = std::collections::VecDeque::from(vec![before; rtt_ms]);
        let (mut within, mut rates) = (None, vec![]);
        for ms in 0..ms {
            now += Duration::from_millis(1);
            sent.push_back(bbr.pacing_rate().unwrap().min(rate));
            let sample = sent.pop_front().unwrap();
            bbr.delivered += sample / 1000;
            // In flight: what was sent in the last round trip.
            let in_flight = (sent.iter().sum::<u64>() / 1000) as usize;
            let delivered = bbr.delivered;
            bbr.on_rate_sample(now, delivered, Some(sample), rtt, in_flight);
            if ms % 50 == 49 {
                rates.push(bbr.bandwidth() / 100_000);
                if within.is_none() && bbr.bandwidth() >= rate / 100 * 95 {
                    within = Some(ms + 1);
                }
            }
        }
        (now, within, rates)
    }

    #[test]
    fn test_startup_finds_the_bottleneck_rate_then_cruises() {
        let mut bbr = Bbr::new();
        bbr.set_mss(MSS);
        assert_eq!(bbr.window(), 10 * MSS);
        assert_eq!(bbr.pacing_rate(), None);
        let rtt = Duration::from_millis(50);
        // 10 MB/s over 50 ms: a bandwidth-delay product of 500,000 bytes.
        let now = run(&mut bbr, Instant::from_millis(0), 2000, 10_000_000, rtt);
        assert!(matches!(bbr.mode, Mode::ProbeBw { .. }), "{:?}", bbr.mode);
        assert_eq!(bbr.bandwidth(), 10_000_000);
        // Twice the product in flight, plus three segments.
        assert_eq!(bbr.window(), 2 * 500_000 + 3 * MSS);
        // The pacing rate cycles around the bottleneck rate: probing above it, draining below.
        let mut rates = std::collections::BTreeSet::new();
        let mut now = now;
        for _ in 0..8 {
            now = run(&mut bbr, now, 50, 10_000_000, rtt);
            rates.insert(bbr.pacing_rate().unwrap());
        }
        assert!(rates.contains(&12_375_000), "{rates:?}");
        assert!(rates.contains(&9_900_000), "{rates:?}");
    }

    #[test]
    fn test_room_found_by_a_probe_is_taken_in_a_few_round_trips() {
        let mut bbr = Bbr::new();
        bbr.set_mss(MSS);
        let rtt = Duration::from_millis(50);
        // A flow with a share of 2 MB/s of a path that others fill...
        let now = run(&mut bbr, Instant::from_millis(0), 2000, 2_000_000, rtt);
        assert_eq!(bbr.bandwidth(), 2_000_000);
        // ...that they leave: the path has 10 MB/s, with samples a round trip late.
        let (mut now, within, rates) = run_late(&mut bbr, now, 2_000_000, 3000, 10_000_000, rtt);
        // Probing once every eight round trips, a quarter more each time, takes seven probes
        // (2.8 s) to get there, probing again while the probes find room 450 ms; Startup again
        // after the first probe that finds room, 250 ms.
        assert!(
            within.is_some_and(|ms| ms <= 350),
            "{within:?} ms: {rates:?}"
        );
        // Then a probe finds none, and the flow cruises.
        let mut phases = std::collections::BTreeSet::new();
        for _ in 0..10 {
            now = run(&mut bbr, now, 50, 10_000_000, rtt);
            if let Mode::ProbeBw { phase, .. } = bbr.mode {
                phases.insert(phase);
            }
        }
        assert!(phases.len() >= 6, "{phases:?}");
        assert_eq!(bbr.bandwidth(), 10_000_000);
    }

    #[test]
    fn test_a_flow_that_left_startup_with_a_small_share_takes_the_room_at_once() {
        let mut bbr = Bbr::new();
        bbr.set_mss(MSS);
        let rtt = Duration::from_millis(50);
        // A flow started after others, with a share of 1 MB/s of a path of 10 MB/s when the
        // queue they share overflows: a round that resends a fifth of what it delivers ends
        // its Startup.
        let mut now = run(&mut bbr, Instant::from_millis(0), 100, 1_000_000, rtt);
        assert_eq!(bbr.mode, Mode::Startup);
        bbr.on_retransmit(now, 20 * MSS);
        while bbr.mode == Mode::Startup {
            now = run(&mut bbr, now, 1, 1_000_000, rtt);
        }
        assert_eq!(bbr.bandwidth(), 1_000_000);
        // The others slow down to their shares, and this flow's share is 5 MB/s. Cruising for
        // six round trips first, then probing a quarter more at a time, the flow takes 750 ms
        // to get there; probing at once after Drain, and Startup again when the probe finds
        // room, 200 ms.
        let (_, within, rates) = run_late(&mut bbr, now, 1_000_000, 2000, 5_000_000, rtt);
        assert!(
            within.is_some_and(|ms| ms <= 400),
            "{within:?} ms: {rates:?}"
        );
        assert_eq!(bbr.bandwidth(), 5_000_000);
    }

    #[test]
    fn test_a_round_that_overflows_a_queue_cuts_the_flight_until_the_next_probe() {
        let mut bbr = Bbr::new();
        bbr.set_mss(MSS);
        let rtt = Duration::from_millis(50);
        let (rate, bdp) = (10_000_000, 500_000);
        let mut now = run(&mut bbr, Instant::from_millis(0), 2000, rate, rtt);
        while !matches!(bbr.mode, Mode::ProbeBw { phase: 2, .. }) {
            now = run(&mut bbr, now, 1, rate, rtt);
        }
        let window = bbr.window();
        assert_eq!(window, 2 * bdp + 3 * MSS);
        // A round that resends 1% of what it delivers (a lossy link) changes nothing...
        bbr.on_retransmit(now, 5 * MSS);
        now = run(&mut bbr, now, 60, rate, rtt);
        assert_eq!(bbr.window(), window);
        // ...one that resends 10% (a queue overflowed) keeps no more than the path's
        // product in flight...
        bbr.on_retransmit(now, 50 * MSS);
        now = run(&mut bbr, now, 60, rate, rtt);
        assert_eq!(bbr.window(), bdp);
        // ...until the next probe.
        while !matches!(bbr.mode, Mode::ProbeBw { phase: 0, .. }) {
            now = run(&mut bbr, now, 1, rate, rtt);
        }
        assert_eq!(bbr.window(), window);
    }

    #[test]
    fn test_noisy_samples_do_not_pace_above_the_bottleneck() {
        let mut bbr = Bbr::new();
        bbr.set_mss(MSS);
        let rtt = Duration::from_millis(50);
        let rate = 10_000_000;
        let mut now = run(&mut bbr, Instant::from_millis(0), 2000, rate, rtt);
        // Samples of a full bottleneck scatter by 1% around its rate: the estimate is the
        // largest, but cruising paces at most at the rate itself.
        for i in 0..2000u64 {
            now += Duration::from_millis(1);
            let sample = if i % 2 == 0 {
                rate + rate / 100
            } else {
                rate - rate / 100
            };
            bbr.delivered += sample / 1000;
            let (delivered, in_flight) = (bbr.delivered, bbr.window() / 2);
            bbr.on_rate_sample(now, delivered, Some(sample), rtt, in_flight);
            if let Mode::ProbeBw { phase, .. } = bbr.mode
                && PACING_GAINS[phase] == 1.0
            {
                assert!(
                    bbr.pacing_rate().unwrap() <= rate,
                    "{:?}",
                    bbr.pacing_rate()
                );
            }
        }
        assert_eq!(bbr.bandwidth(), rate + rate / 100);
    }

    #[test]
    fn test_a_loss_is_not_taken_for_congestion() {
        let mut bbr = Bbr::new();
        bbr.set_mss(MSS);
        let rtt = Duration::from_millis(50);
        let now = run(&mut bbr, Instant::from_millis(0), 2000, 10_000_000, rtt);
        let window = bbr.window();
        bbr.on_loss(now, window);
        bbr.on_dup_ack(now, MSS, window);
        assert_eq!(bbr.window(), window);
        assert_eq!(bbr.bandwidth(), 10_000_000);
    }

    #[test]
    fn test_the_round_trip_is_probed_again_after_ten_seconds() {
        let mut bbr = Bbr::new();
        bbr.set_mss(MSS);
        let rtt = Duration::from_millis(50);
        let mut now = run(&mut bbr, Instant::from_millis(0), 2000, 10_000_000, rtt);
        // Longer round trips (a queue) do not replace the minimum...
        now = run(&mut bbr, now, 8500, 10_000_000, Duration::from_millis(80));
        assert_eq!(bbr.min_rtt.unwrap().0, rtt);
        // ...until it is ten seconds old: ProbeRTT keeps four segments in flight for 200 ms.
        now = run(&mut bbr, now, 1600, 10_000_000, Duration::from_millis(80));
        assert!(matches!(bbr.mode, Mode::ProbeRtt { .. }), "{:?}", bbr.mode);
        assert_eq!(bbr.window(), 4 * MSS);
        run(&mut bbr, now, 300, 10_000_000, Duration::from_millis(80));
        assert!(matches!(bbr.mode, Mode::ProbeBw { .. }), "{:?}", bbr.mode);
        assert!(bbr.window() > 4 * MSS);
    }
}
