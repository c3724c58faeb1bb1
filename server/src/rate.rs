//! The page's writes, limited per client address (`WRITE_RATE_PER_IP`): a
//! [`governor`] keyed limiter (GCRA, one bucket per address), asked by the server functions'
//! edge before a write runs.
//!
//! A client address is the request's [`ClientAddr`](crate::client::ClientAddr), counted by
//! [`client_key`]: an IPv6 address by its /64 (one home or one host gets a /64, so its other
//! addresses are not a fresh allowance each), an IPv4-mapped IPv6 address as its IPv4 one.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::client::client_key;
use crate::config::WriteRate;

/// How often addresses whose allowance is whole again are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The write allowance of every client address (cheap to clone: one shared limiter).
///
/// Its memory stays bounded: the limiter keeps a few bytes per address that wrote recently,
/// and a sweep started with [`WriteLimiter::sweep_until`] drops every address whose allowance
/// has filled up again (`retain_recent()`, then `shrink_to_fit()`), every minute until the
/// server shuts down. So it holds at most the addresses that wrote in the last minute plus the
/// time their burst takes to come back.
#[derive(Debug, Clone)]
pub struct WriteLimiter {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl WriteLimiter {
    /// A limiter allowing each address `rate`.
    pub fn new(rate: WriteRate) -> Self {
        let quota = Quota::with_period(rate.interval())
            .unwrap_or_else(|| Quota::per_second(rate.count))
            .allow_burst(rate.burst);
        Self {
            limiter: Arc::new(RateLimiter::keyed(quota)),
        }
    }

    /// Takes one write from `peer`'s allowance; when it has none left, how long until it has
    /// one again (the write must then not run).
    pub fn check(&self, peer: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&client_key(peer))
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Forgets every address whose allowance is whole again and gives the memory back.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Starts a task that [sweeps](Self::sweep) every minute; it ends when `shutdown` is
    /// cancelled.
    pub fn sweep_until(&self, shutdown: CancellationToken) {
        let limiter = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = every.tick() => limiter.sweep(),
                }
            }
        });
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(59)), 59);
    }

    #[test]
    fn a_burst_then_a_refusal_per_address_and_a_sweep_forgets_nobody_recent() {
        let three = NonZeroU32::new(3).expect("3");
        let limiter = WriteLimiter::new(WriteRate {
            count: NonZeroU32::MIN,
            period: Duration::from_secs(60),
            burst: three,
        });
        let one: IpAddr = "127.0.0.1".parse().expect("v4");
        let two: IpAddr = "127.0.0.2".parse().expect("v4");
        for _ in 0..3 {
            assert_eq!(limiter.check(one), Ok(()));
        }
        let wait = limiter.check(one).expect_err("over the burst");
        assert!(wait > Duration::from_secs(50), "{wait:?}");
        assert_eq!(retry_after_secs(wait), 60);
        assert_eq!(limiter.check(two), Ok(()));
        assert_eq!(limiter.limiter.len(), 2);
        limiter.sweep();
        assert_eq!(limiter.limiter.len(), 2, "both still owe writes");
        assert!(limiter.check(one).is_err(), "the sweep kept the debt");
    }
}
