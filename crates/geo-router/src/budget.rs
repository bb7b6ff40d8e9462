//! The retry budget (pure): retries may add at most a fixed fraction to the calls the router
//! forwards, plus a small floor so a quiet router can still retry. An outage then costs at most
//! that fraction more load on the survivors instead of a retry storm (the rule of gRPC's
//! retry throttling and Finagle's budgets).

/// Tokens, in thousandths: each call earns `ratio_milli`, each retry spends 1000.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    balance_milli: u64,
    cap_milli: u64,
    ratio_milli: u64,
}

impl RetryBudget {
    /// Retries up to `ratio_milli`/1000 of calls, with `floor` retries available at the start
    /// and at most `cap` banked.
    pub fn new(ratio_milli: u64, floor: u64, cap: u64) -> Self {
        Self { balance_milli: floor * 1000, cap_milli: cap.max(floor) * 1000, ratio_milli }
    }

    /// A call arrived: it earns its share of a retry.
    pub fn deposit(&mut self) {
        self.balance_milli = (self.balance_milli + self.ratio_milli).min(self.cap_milli);
    }

    /// Takes one retry if the budget has one.
    pub fn withdraw(&mut self) -> bool {
        match self.balance_milli.checked_sub(1000) {
            Some(b) => {
                self.balance_milli = b;
                true
            }
            None => false,
        }
    }
}

impl Default for RetryBudget {
    /// Retries add at most 20% to the calls, with 10 in hand and at most 1000 banked.
    fn default() -> Self {
        Self::new(200, 10, 1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_bounded_fraction_of_calls() {
        let mut b = RetryBudget::new(200, 2, 100);
        assert!(b.withdraw() && b.withdraw(), "the floor");
        assert!(!b.withdraw(), "then nothing until calls earn it");
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.withdraw(), "ten calls earn two retries");
        assert!(b.withdraw());
        assert!(!b.withdraw());
        for _ in 0..10_000 {
            b.deposit();
        }
        assert_eq!((0..200).filter(|_| b.withdraw()).count(), 100, "at most the cap is banked");
    }
}
