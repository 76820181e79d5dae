//! Rate-limited logging of guest misbehaviour: a guest that hammers a register with bad
//! accesses must not flood the host's log.

use std::sync::atomic::{AtomicU64, Ordering};

/// Logs the first few occurrences, then every 1024th.
#[derive(Debug, Default)]
pub(crate) struct GuestLog {
    count: AtomicU64,
}

impl GuestLog {
    pub(crate) const fn new() -> Self {
        GuestLog {
            count: AtomicU64::new(0),
        }
    }

    /// Returns whether this occurrence should be logged, and counts it.
    pub(crate) fn should_log(&self) -> bool {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        n < 16 || n.is_multiple_of(1024)
    }

    /// How many bad accesses were seen.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Logs a guest access that was ignored, rate-limited per device.
macro_rules! guest_warn {
    ($log:expr, $($arg:tt)*) => {
        if $log.should_log() {
            tracing::warn!(target: "guest", $($arg)*);
        }
    };
}
pub(crate) use guest_warn;

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound `docs/` promise: a guest hammering a register gets 16 lines, then one per
    /// 1024 accesses, whatever it does; every access is still counted.
    #[test]
    fn a_flood_logs_sixteen_lines_then_one_per_1024() {
        let log = GuestLog::new();
        let logged = (0..10_000).filter(|_| log.should_log()).count();
        assert_eq!(logged, 16 + 9);
        assert_eq!(log.count(), 10_000);
    }
}
