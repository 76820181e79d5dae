//! Time, injected: the engine reads a [`Clock`] at every phase boundary and guest event, so
//! tests drive it with a [`FakeClock`] and never sleep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Microseconds since the VMM's epoch (the moment its clock was created).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Microseconds since the epoch.
    pub fn as_micros(&self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn saturating_add(&self, d: Duration) -> Timestamp {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(us))
    }

    /// Microseconds from `earlier` to `self`, 0 if `earlier` is later.
    pub fn micros_since(&self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A source of [`Timestamp`]s.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The real clock: a monotonic [`Instant`] taken when the clock is created is the epoch.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    epoch: Instant,
}

impl MonotonicClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self::with_epoch(Instant::now())
    }

    /// A clock with the VMM's own epoch.
    pub fn with_epoch(epoch: Instant) -> Self {
        MonotonicClock { epoch }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Timestamp {
        let us = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        Timestamp(us)
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    now_us: Arc<AtomicU64>,
}

impl FakeClock {
    /// A fake clock at time 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.now_us.fetch_add(us, Ordering::SeqCst);
    }

    /// Sets the time.
    pub fn set(&self, t: Timestamp) {
        self.now_us.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now_us.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_is_shared_and_moves_only_when_told() {
        let c = FakeClock::new();
        let c2 = c.clone();
        assert_eq!(c.now(), Timestamp(0));
        c.advance(Duration::from_millis(3));
        assert_eq!(c2.now(), Timestamp(3000));
        c2.set(Timestamp(10));
        assert_eq!(c.now().micros_since(Timestamp(4)), 6);
        assert_eq!(Timestamp(4).micros_since(c.now()), 0);
        assert_eq!(
            Timestamp(1).saturating_add(Duration::from_micros(2)),
            Timestamp(3)
        );
    }

    #[test]
    fn monotonic_clock_does_not_go_back() {
        let c = MonotonicClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
    }
}
