//! Token buckets: a per-user send rate shared by all of a user's sockets
//! and REST calls on this node, and a per-socket frame rate.

use std::time::Instant;

use dashmap::DashMap;

use crate::model::UserId;

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Clone, Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(burst: u32) -> Self {
        Bucket {
            tokens: burst as f64,
            at: Instant::now(),
        }
    }

    /// Takes a token, or says in how many milliseconds one will be there.
    pub fn take(&mut self, rate: f64, burst: u32) -> Result<(), u64> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst as f64);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate <= 0.0 {
            Err(u64::MAX)
        } else {
            Err((((1.0 - self.tokens) / rate) * 1000.0).ceil() as u64)
        }
    }

    fn is_full(&self, rate: f64, burst: u32) -> bool {
        self.tokens + self.at.elapsed().as_secs_f64() * rate >= burst as f64
    }
}

/// Per-user buckets, pruned of idle users.
pub struct UserRateLimiter {
    rate: f64,
    burst: u32,
    buckets: DashMap<UserId, Bucket>,
}

impl UserRateLimiter {
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst,
            buckets: DashMap::new(),
        }
    }

    /// Ok, or the milliseconds until the user may send again.
    pub fn check(&self, user: &UserId) -> Result<(), u64> {
        if self.buckets.len() > 10_000 {
            self.prune();
        }
        self.buckets
            .entry(user.clone())
            .or_insert_with(|| Bucket::full(self.burst))
            .take(self.rate, self.burst)
    }

    /// Drops the buckets that have refilled: they hold no information.
    pub fn prune(&self) {
        self.buckets
            .retain(|_, b| !b.is_full(self.rate, self.burst));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UserId;

    #[test]
    fn bucket_allows_burst_then_limits() {
        let mut b = Bucket::full(3);
        for _ in 0..3 {
            assert!(b.take(1.0, 3).is_ok());
        }
        let wait = b.take(1.0, 3).unwrap_err();
        assert!(wait > 0 && wait <= 1000, "{wait}");
    }

    #[test]
    fn users_have_separate_buckets() {
        let l = UserRateLimiter::new(0.001, 1);
        assert!(l.check(&UserId::parse("a").unwrap()).is_ok());
        assert!(l.check(&UserId::parse("a").unwrap()).is_err());
        assert!(l.check(&UserId::parse("b").unwrap()).is_ok());
    }
}
