//! Per-client token buckets: `rate` tokens per second up to `burst`, one token per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets idle this long are forgotten (they would be full again anyway).
const IDLE_FORGET: Duration = Duration::from_secs(60);
/// Past this many clients, idle buckets are swept on insert.
const SWEEP_ABOVE: usize = 10_000;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate_per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: rate_per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `client`; on refusal, returns the whole seconds until one is due.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, b| now.saturating_duration_since(b.last) < IDLE_FORGET);
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(2.0, 3);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check(ip, t0).is_ok());
        }
        assert_eq!(rl.check(ip, t0), Err(1));
        assert!(rl.check(other, t0).is_ok(), "buckets are per client");
        assert!(rl.check(ip, t0 + Duration::from_millis(500)).is_ok());
        assert!(rl.check(ip, t0 + Duration::from_millis(500)).is_err());
    }
}
