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
