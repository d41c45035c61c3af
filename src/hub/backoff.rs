//! Delays between attempts of a store read that failed: a room catching up,
//! a replay page. Exists so a node that lost its database keeps trying
//! without hammering it, and nodes that lost it together do not retry in
//! step.

use std::time::Duration;

/// The first delay.
const FIRST: Duration = Duration::from_millis(100);
/// The longest delay: a database that comes back is noticed within it.
const MAX: Duration = Duration::from_secs(5);

/// Exponential back-off with jitter: 100 ms doubling up to 5 s, each delay
/// drawn between half and all of its step.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { step: FIRST }
    }

    /// The delay before the next attempt; the step doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(MAX);
        let half = step / 2;
        // A v7 uuid's last 62 bits are random: jitter without another crate.
        let random = uuid::Uuid::now_v7().as_u128() as u64;
        let nanos = half.as_nanos() as u64;
        half + Duration::from_nanos(if nanos == 0 { 0 } else { random % nanos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_below_each_step() {
        let mut b = Backoff::new();
        let mut step = FIRST;
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} within [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(MAX);
        }
        assert_eq!(step, MAX);
    }
}
