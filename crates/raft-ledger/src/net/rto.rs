//! How long a leader waits for a follower's answer to an AppendEntries: TCP's retransmission
//! timeout (RFC 6298) applied to one peer link.
//!
//! openraft gives every replication call a deadline of one heartbeat interval, which this
//! cluster derives from the configured round trip (twice it, at least 100 ms). A link that is
//! slower than configured (a congested path, a node whose round trips double) then answers
//! after the deadline every time: the call fails, the entries are sent again, the answer comes
//! late again, and the shard commits only when jitter happens to be kind. A leader in a region
//! that turned 40 ms slower committed in 0.5 to 2 s instead of 110 ms (the chaos scenario
//! `latency-50ms.toml`). So the deadline follows what the link really takes: the smoothed round
//! trip plus four times its variation, never below openraft's deadline; and after a timeout it
//! doubles (Karn's backoff), so a link slower than the current estimate still gets an answer
//! through and is measured, instead of timing out forever. It is capped, so that a peer that
//! stopped answering (a paused process, a dropped route) is given up on within a bounded time.
//!
//! Pure arithmetic on durations the caller measures with the runtime's clock (turmoil's in the
//! simulator), so it is deterministic.

use std::time::Duration;

/// The longest deadline, as a multiple of openraft's: a peer silent for this long is given up
/// on and retried, however slow it used to be.
const CEILING_FACTOR: u32 = 8;
/// The most doublings after timeouts in a row (enough to reach the ceiling from any floor).
const BACKOFF_MAX: u32 = 3;
/// The least variation term (RFC 6298's clock granularity G): round trips measured as all the
/// same would otherwise leave no room at all above the mean.
const VARIATION_MIN: Duration = Duration::from_millis(5);

/// One peer link's round-trip estimate and timeout backoff.
#[derive(Debug, Default, Clone)]
pub(crate) struct Rto {
    /// Smoothed round trip and its mean deviation, in microseconds; none before the first answer.
    smoothed: Option<(u64, u64)>,
    /// Timeouts in a row since the last answer (each doubles the deadline).
    backoff: u32,
}

impl Rto {
    /// The deadline for the next call: at least `floor` (openraft's), at most
    /// `CEILING_FACTOR` times it.
    pub(crate) fn deadline(&self, floor: Duration) -> Duration {
        let estimate = match self.smoothed {
            None => floor,
            Some((srtt, rttvar)) => {
                let variation = Duration::from_micros(rttvar.saturating_mul(4)).max(VARIATION_MIN);
                Duration::from_micros(srtt).saturating_add(variation).max(floor)
            }
        };
        let ceiling = floor.saturating_mul(CEILING_FACTOR);
        estimate.saturating_mul(1 << self.backoff).min(ceiling).max(floor)
    }

    /// A call was answered after `rtt`: fold it into the estimate and end any backoff.
    pub(crate) fn answered(&mut self, rtt: Duration) {
        let r = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.smoothed = Some(match self.smoothed {
            None => (r, r / 2),
            Some((srtt, rttvar)) => {
                // RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|, then SRTT = 7/8 SRTT + 1/8 R.
                let rttvar = (rttvar.saturating_mul(3) / 4).saturating_add(srtt.abs_diff(r) / 4);
                let srtt = (srtt.saturating_mul(7) / 8).saturating_add(r / 8);
                (srtt, rttvar)
            }
        });
        self.backoff = 0;
    }

    /// A call ran out of its deadline: the next one waits twice as long (up to the ceiling).
    pub(crate) fn timed_out(&mut self) {
        self.backoff = (self.backoff + 1).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FLOOR: Duration = Duration::from_millis(100);

    #[test]
    fn before_any_answer_the_deadline_is_openrafts() {
        assert_eq!(Rto::default().deadline(FLOOR), FLOOR);
    }

    #[test]
    fn a_fast_link_keeps_openrafts_deadline() {
        let mut rto = Rto::default();
        for _ in 0..50 {
            rto.answered(Duration::from_millis(2));
        }
        assert_eq!(rto.deadline(FLOOR), FLOOR);
    }

    #[test]
    fn a_link_slower_than_the_deadline_is_measured_after_one_timeout_and_then_waited_for() {
        // Every answer takes 110 ms against a 100 ms deadline: the first call times out.
        let mut rto = Rto::default();
        rto.timed_out();
        assert_eq!(rto.deadline(FLOOR), 2 * FLOOR, "one timeout doubles the deadline");
        rto.answered(Duration::from_millis(110));
        for _ in 0..50 {
            rto.answered(Duration::from_millis(110));
            assert!(rto.deadline(FLOOR) > Duration::from_millis(110), "{:?}", rto.deadline(FLOOR));
        }
        // Settled: the mean plus the least variation term.
        assert_eq!(rto.deadline(FLOOR), Duration::from_millis(115));
    }

    #[test]
    fn a_silent_peer_is_given_up_on_within_the_ceiling() {
        let mut rto = Rto::default();
        rto.answered(Duration::from_millis(300));
        for _ in 0..10 {
            rto.timed_out();
        }
        assert_eq!(rto.deadline(FLOOR), CEILING_FACTOR * FLOOR);
        // And one answer ends the backoff.
        rto.answered(Duration::from_millis(300));
        assert!(rto.deadline(FLOOR) < CEILING_FACTOR * FLOOR);
    }

    proptest! {
        #[test]
        fn the_deadline_stays_between_floor_and_ceiling(
            events in proptest::collection::vec(proptest::option::of(0u64..10_000_000), 0..64),
            floor_ms in 1u64..1_000,
        ) {
            let floor = Duration::from_millis(floor_ms);
            let mut rto = Rto::default();
            for e in events {
                match e {
                    Some(us) => rto.answered(Duration::from_micros(us)),
                    None => rto.timed_out(),
                }
                let d = rto.deadline(floor);
                prop_assert!(d >= floor && d <= floor * CEILING_FACTOR, "{d:?}");
            }
        }
    }
}
