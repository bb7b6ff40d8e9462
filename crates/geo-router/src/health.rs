//! Each node's health as the router sees it (pure: time is an argument, so tests drive it with
//! a manual clock).
//!
//! Two kinds of evidence, combined:
//! - **active**: the node's `grpc.health.v1` Watch stream (and HTTP/2 keepalive under it). A
//!   `NOT_SERVING`, or a stream that breaks, takes the node out at once. Coming back needs
//!   `SERVING` held without a break for the rise time: hysteresis, so a flapping link moves a
//!   route at most once per flap window rather than on every flap.
//! - **passive**: calls that fail in transport, with `UNAVAILABLE` or past their deadline.
//!   `fall` of them in a row eject the node for a while that doubles on repeat (capped) and
//!   shrinks again with every success, so a node that recovers is not punished for long.
//!
//! The router never ejects every node of a shard: see `route`, which falls back to all of them
//! (panic mode) when none is usable.

use std::time::{Duration, Instant};

/// How health behaves. Defaults suit a cluster whose nodes answer within milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    /// Consecutive failed calls that eject a node.
    pub fall: u32,
    /// How long `SERVING` must hold, unbroken, before a node that was out is used again.
    pub rise: Duration,
    /// The first ejection's length; each further one doubles it.
    pub eject_base: Duration,
    /// The longest ejection.
    pub eject_max: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            fall: 3,
            rise: Duration::from_millis(1_000),
            eject_base: Duration::from_millis(500),
            eject_max: Duration::from_millis(8_000),
        }
    }
}

/// What the node's health Watch stream says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Active {
    /// No stream yet, or it broke: unknown, treated as down.
    Unknown,
    /// `SERVING` since this instant.
    Serving(Instant),
    /// `NOT_SERVING` (or the service is unknown to the node).
    NotServing,
}

/// One node's health.
#[derive(Debug, Clone)]
pub struct NodeHealth {
    active: Active,
    failures_in_row: u32,
    /// Ejections that have not been earned back by successes: sets the next ejection's length.
    strikes: u32,
    ejected_until: Option<Instant>,
    /// Whether the node is in rotation. Leaving is immediate; coming back waits for `rise`.
    in_rotation: bool,
    /// Why the node last left rotation, for operators.
    pub last_reason: Option<String>,
    /// Times ejected by passive checks, for operators.
    pub ejections: u64,
}

impl Default for NodeHealth {
    fn default() -> Self {
        Self {
            active: Active::Unknown,
            failures_in_row: 0,
            strikes: 0,
            ejected_until: None,
            in_rotation: false,
            last_reason: Some("no health report yet".into()),
            ejections: 0,
        }
    }
}

/// A change in whether a node is used, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The node left rotation, and why.
    Out(String),
    /// The node is back in rotation.
    In,
}

impl NodeHealth {
    /// Whether calls may go to the node now.
    pub fn usable(&self, now: Instant) -> bool {
        self.in_rotation && self.ejected_until.is_none_or(|t| now >= t)
    }

    /// The active state.
    pub fn active(&self) -> Active {
        self.active
    }

    /// When the current ejection ends, if one is running.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    fn leave(&mut self, why: String) -> Option<Transition> {
        let was = self.in_rotation;
        self.in_rotation = false;
        self.last_reason = Some(why.clone());
        was.then_some(Transition::Out(why))
    }

    /// The health stream said `SERVING`.
    pub fn serving(&mut self, now: Instant, policy: &HealthPolicy) -> Option<Transition> {
        if !matches!(self.active, Active::Serving(_)) {
            self.active = Active::Serving(now);
        }
        self.tick(now, policy)
    }

    /// The health stream said `NOT_SERVING`.
    pub fn not_serving(&mut self) -> Option<Transition> {
        self.active = Active::NotServing;
        self.leave("the node reports NOT_SERVING".into())
    }

    /// The health stream broke or could not be opened (`why` says how).
    pub fn lost(&mut self, why: &str) -> Option<Transition> {
        self.active = Active::Unknown;
        self.leave(format!("health stream lost: {why}"))
    }

    /// Re-evaluates rotation: a node out of rotation comes back once `SERVING` has held for
    /// the rise time and no ejection runs.
    pub fn tick(&mut self, now: Instant, policy: &HealthPolicy) -> Option<Transition> {
        if self.in_rotation {
            return None;
        }
        let Active::Serving(since) = self.active else { return None };
        let ejected = self.ejected_until.is_some_and(|t| now < t);
        if now.saturating_duration_since(since) >= policy.rise && !ejected {
            self.in_rotation = true;
            self.ejected_until = None;
            self.last_reason = None;
            return Some(Transition::In);
        }
        None
    }

    /// A call to the node succeeded: forget the failures and earn back one strike.
    pub fn success(&mut self) {
        self.failures_in_row = 0;
        self.strikes = self.strikes.saturating_sub(1);
    }

    /// A call to the node failed in a way that blames the node (transport error, `UNAVAILABLE`,
    /// deadline). After `fall` in a row the node is ejected; the ejection doubles per strike.
    pub fn failure(&mut self, now: Instant, policy: &HealthPolicy, why: &str) -> Option<Transition> {
        self.failures_in_row += 1;
        if self.failures_in_row < policy.fall {
            return None;
        }
        self.failures_in_row = 0;
        let length = policy.eject_base.saturating_mul(1u32 << self.strikes.min(16)).min(policy.eject_max);
        self.strikes = self.strikes.saturating_add(1);
        self.ejections += 1;
        self.ejected_until = Some(now + length);
        // Coming back needs a fresh run of SERVING after the ejection, not one from before it.
        if let Active::Serving(_) = self.active {
            self.active = Active::Serving(now + length);
        }
        self.leave(format!("ejected for {} ms after {} failed calls in a row: {why}", length.as_millis(), policy.fall))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_node_enters_rotation_only_after_serving_holds_for_the_rise_time() {
        let p = HealthPolicy::default();
        let t0 = Instant::now();
        let mut h = NodeHealth::default();
        assert!(!h.usable(t0), "unknown is not usable");
        assert_eq!(h.serving(t0, &p), None);
        assert_eq!(h.tick(t0 + ms(999), &p), None);
        assert_eq!(h.tick(t0 + p.rise, &p), Some(Transition::In));
        assert!(h.usable(t0 + p.rise));
    }

    #[test]
    fn not_serving_takes_a_node_out_at_once_and_a_flapping_link_does_not_bring_it_back() {
        let p = HealthPolicy::default();
        let t0 = Instant::now();
        let mut h = NodeHealth::default();
        h.serving(t0, &p);
        h.tick(t0 + p.rise, &p);
        assert!(matches!(h.not_serving(), Some(Transition::Out(_))));
        assert!(!h.usable(t0 + p.rise));
        // The link flaps every 300 ms for five seconds: the node stays out, one route change.
        let mut changes = 0;
        let mut t = t0 + p.rise;
        for i in 0..16 {
            t += ms(300);
            let change = if i % 2 == 0 { h.serving(t, &p) } else { h.lost("reset") };
            changes += usize::from(change.is_some());
            changes += usize::from(h.tick(t, &p).is_some());
        }
        assert_eq!(changes, 0, "no flap shorter than the rise time moves the route");
        // Once it holds, it comes back, once.
        h.serving(t + ms(300), &p);
        assert_eq!(h.tick(t + ms(300) + p.rise, &p), Some(Transition::In));
    }

    #[test]
    fn failures_in_a_row_eject_for_a_time_that_doubles_and_successes_shrink_it() {
        let p = HealthPolicy::default();
        let t0 = Instant::now();
        let mut h = NodeHealth::default();
        h.serving(t0, &p);
        h.tick(t0 + p.rise, &p);
        let t1 = t0 + p.rise;
        assert_eq!(h.failure(t1, &p, "unavailable"), None);
        h.success();
        assert_eq!(h.failure(t1, &p, "unavailable"), None, "a success resets the run");
        assert_eq!(h.failure(t1, &p, "unavailable"), None);
        assert!(matches!(h.failure(t1, &p, "unavailable"), Some(Transition::Out(_))));
        assert_eq!(h.ejected_until(), Some(t1 + p.eject_base));
        // Back after the ejection plus the rise time of SERVING.
        assert_eq!(h.tick(t1 + p.eject_base, &p), None);
        assert_eq!(h.tick(t1 + p.eject_base + p.rise, &p), Some(Transition::In));
        // Ejected again at once: twice as long.
        let t2 = t1 + p.eject_base + p.rise;
        for _ in 0..p.fall {
            h.failure(t2, &p, "deadline");
        }
        assert_eq!(h.ejected_until(), Some(t2 + p.eject_base * 2));
        // Successes earn strikes back: the next ejection is short again.
        let t3 = t2 + p.eject_base * 2 + p.rise;
        h.tick(t3, &p);
        h.success();
        h.success();
        for _ in 0..p.fall {
            h.failure(t3, &p, "deadline");
        }
        assert_eq!(h.ejected_until(), Some(t3 + p.eject_base));
    }

    #[test]
    fn ejections_are_capped() {
        let p = HealthPolicy::default();
        let t0 = Instant::now();
        let mut h = NodeHealth::default();
        for _ in 0..40 * p.fall {
            h.failure(t0, &p, "reset");
        }
        assert_eq!(h.ejected_until(), Some(t0 + p.eject_max));
    }
}
