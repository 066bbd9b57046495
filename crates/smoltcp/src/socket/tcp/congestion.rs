use core::fmt;

use crate::time::{Duration, Instant};

use super::RttEstimator;

pub(super) mod no_control;

#[cfg(feature = "socket-tcp-cubic")]
pub(super) mod cubic;

#[cfg(feature = "socket-tcp-reno")]
pub(super) mod reno;

#[cfg(feature = "socket-tcp-bbr")]
pub(super) mod bbr;

/// A congestion control algorithm: how much a socket may have in flight, and how fast it sends.
///
/// The socket calls it as segments leave and ACKs arrive; it does no I/O and reads no clock
/// (each call carries the time). The crate's own ([`super::CongestionControl`]) implement it,
/// and an application can give a socket one of its own with
/// [`super::Socket::set_congestion_controller`]. Every method but `window` has a default that
/// does nothing.
#[allow(unused_variables)]
pub trait Controller: fmt::Debug {
    /// Returns the number of bytes that can be sent.
    fn window(&self) -> usize;

    /// Whether the window is in slow start, growing by a segment for each one acknowledged.
    fn in_slow_start(&self) -> bool {
        false
    }

    /// Set the remote window size.
    fn set_remote_window(&mut self, remote_window: usize) {}

    /// An ACK acknowledged `len` new octets; `in_flight` octets are left in flight, and `rtt`
    /// holds the socket's round-trip estimate.
    fn on_ack(&mut self, now: Instant, len: usize, in_flight: usize, rtt: &RttEstimator) {}

    /// Fired on each duplicate ack received, after `on_loss` has been called.
    fn on_dup_ack(&mut self, now: Instant, len: usize, in_flight: usize) {}

    /// Ends slow start without a loss: the path's queue starts to fill (RFC 9406).
    fn exit_slow_start(&mut self) {}

    /// The rate to pace at, in bytes per second, where the controller sets one; otherwise a
    /// socket with pacing paces by the window per round trip.
    fn pacing_rate(&self) -> Option<u64> {
        None
    }

    /// A segment of `len` octets was sent again: it or its acknowledgement was lost.
    fn on_retransmit(&mut self, now: Instant, len: usize) {}

    /// The peer reported `len` octets received twice (a D-SACK): a retransmission of them was
    /// not needed, they were not lost.
    fn on_spurious_retransmit(&mut self, now: Instant, len: usize) {}

    /// Whether the socket should measure delivery rates for `on_rate_sample`.
    fn wants_rate_samples(&self) -> bool {
        false
    }

    /// A delivery-rate sample: `delivered` bytes were delivered (acknowledged or SACKed) so far,
    /// at `rate` bytes per second since the timed segment that this ACK covers was sent, which
    /// took `rtt` to be acknowledged; `in_flight` bytes are still in the network.
    fn on_rate_sample(
        &mut self,
        now: Instant,
        delivered: u64,
        rate: Option<u64>,
        rtt: Duration,
        in_flight: usize,
    ) {
    }

    /// Fired on a retransmission timeout.
    fn on_rto(&mut self, now: Instant, in_flight: usize) {}

    /// Fired after an inferred loss via three duplicate acks.
    fn on_loss(&mut self, now: Instant, in_flight: usize) {}

    /// Called before the socket sends.
    fn pre_transmit(&mut self, now: Instant) {}

    /// A segment of `len` octets of sequence space left.
    fn post_transmit(&mut self, now: Instant, len: usize) {}

    /// Set the maximum segment size.
    fn set_mss(&mut self, mss: usize) {}
}

#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) enum AnyController {
    None(no_control::NoControl),

    #[cfg(feature = "socket-tcp-reno")]
    Reno(reno::Reno),

    #[cfg(feature = "socket-tcp-cubic")]
    Cubic(cubic::Cubic),

    #[cfg(feature = "socket-tcp-bbr")]
    Bbr(bbr::Bbr),

    #[cfg(feature = "alloc")]
    Custom(Custom),
}

/// A controller of the application's own (`Socket::set_congestion_controller`).
#[cfg(feature = "alloc")]
pub(super) struct Custom(pub(super) alloc::boxed::Box<dyn Controller + Send>);

#[cfg(feature = "alloc")]
impl fmt::Debug for Custom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(all(feature = "alloc", feature = "defmt"))]
impl defmt::Format for Custom {
    fn format(&self, f: defmt::Formatter) {
        defmt::write!(f, "Custom")
    }
}

impl AnyController {
    /// Create a new congestion controller.
    /// `AnyController::new()` selects the best congestion controller based on the features.
    ///
    /// - If `socket-tcp-cubic` feature is enabled, it will use `Cubic`.
    /// - If `socket-tcp-reno` feature is enabled, it will use `Reno`.
    /// - If both `socket-tcp-cubic` and `socket-tcp-reno` features are enabled, it will use `Cubic`.
    ///    - `Cubic` is more efficient regarding throughput.
    ///    - `Reno` is more conservative and is suitable for low-power devices.
    /// - If no congestion controller is available, it will use `NoControl`.
    ///
    /// Users can also select a congestion controller manually by [`super::Socket::set_congestion_control()`]
    /// method at run-time.
    #[allow(unreachable_code)]
    #[inline]
    pub fn new() -> Self {
        #[cfg(feature = "socket-tcp-cubic")]
        {
            return AnyController::Cubic(cubic::Cubic::new());
        }

        #[cfg(feature = "socket-tcp-reno")]
        {
            return AnyController::Reno(reno::Reno::new());
        }

        AnyController::None(no_control::NoControl)
    }

    #[inline]
    pub fn inner_mut(&mut self) -> &mut dyn Controller {
        match self {
            AnyController::None(n) => n,

            #[cfg(feature = "socket-tcp-reno")]
            AnyController::Reno(r) => r,

            #[cfg(feature = "socket-tcp-cubic")]
            AnyController::Cubic(c) => c,

            #[cfg(feature = "socket-tcp-bbr")]
            AnyController::Bbr(b) => b,

            #[cfg(feature = "alloc")]
            AnyController::Custom(c) => &mut *c.0,
        }
    }

    #[inline]
    pub fn inner(&self) -> &dyn Controller {
        match self {
            AnyController::None(n) => n,

            #[cfg(feature = "socket-tcp-reno")]
            AnyController::Reno(r) => r,

            #[cfg(feature = "socket-tcp-cubic")]
            AnyController::Cubic(c) => c,

            #[cfg(feature = "socket-tcp-bbr")]
            AnyController::Bbr(b) => b,

            #[cfg(feature = "alloc")]
            AnyController::Custom(c) => &*c.0,
        }
    }
}
