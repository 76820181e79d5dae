//! How devices ask the VMM to end the VM: a reason plus an eventfd the event loop watches.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why the VM ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off through the ACPI sleep control register (S5).
    PowerOff,
    /// The guest reset the machine through the ACPI reset register.
    Reset,
    /// The guest reported a kernel panic through pvpanic.
    GuestPanic,
    /// The VM was asked to shut down (API `vm.shutdown`); the VMM stays, with the VM's
    /// configuration, and can boot it again.
    Shutdown,
    /// The VM was asked to go away with its configuration (API `vm.delete`); the VMM stays.
    Delete,
    /// The VMM was asked to end (API `vmm.shutdown`).
    VmmShutdown,
    /// A vCPU stopped with an error (triple fault, KVM internal error, ...).
    VcpuError,
    /// A termination signal (SIGTERM, SIGINT, SIGHUP; the number) asked the VMM to stop.
    Signal(i32),
}

impl ExitReason {
    /// The process exit code plugvm ends with for this reason (documented in the README).
    pub fn exit_code(self) -> i32 {
        match self {
            ExitReason::PowerOff
            | ExitReason::Shutdown
            | ExitReason::Delete
            | ExitReason::VmmShutdown
            | ExitReason::Signal(_) => 0,
            ExitReason::Reset => 3,
            ExitReason::GuestPanic => 4,
            ExitReason::VcpuError => 5,
        }
    }
}

/// Shared by every device that can end the VM. The first reason wins: a panic that resets
/// the machine afterwards still ends as a panic.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    event: EventFd,
}

impl ExitSignal {
    /// Wraps the eventfd the event loop waits on.
    pub fn new(event: EventFd) -> Self {
        ExitSignal {
            reason: Mutex::new(None),
            event,
        }
    }

    /// Records `reason` (unless one is recorded already) and wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        if let Ok(mut r) = self.reason.lock() {
            if r.is_none() {
                *r = Some(reason);
            }
        }
        if let Err(e) = self.event.write(1) {
            tracing::error!("cannot signal the VM exit event: {e}");
        }
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.lock().ok().and_then(|r| *r)
    }

    /// The eventfd the event loop watches.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_event_fires() {
        let s = ExitSignal::new(EventFd::new(libc_nonblock()).unwrap());
        assert_eq!(s.reason(), None);
        s.request(ExitReason::GuestPanic);
        s.request(ExitReason::Reset);
        assert_eq!(s.reason(), Some(ExitReason::GuestPanic));
        assert_eq!(s.event().read().unwrap(), 2);
    }

    #[test]
    fn exit_codes_are_distinct_for_failures() {
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_ne!(ExitReason::GuestPanic.exit_code(), 0);
        assert_ne!(
            ExitReason::Reset.exit_code(),
            ExitReason::GuestPanic.exit_code()
        );
    }

    fn libc_nonblock() -> i32 {
        vmm_sys_util::eventfd::EFD_NONBLOCK
    }
}
