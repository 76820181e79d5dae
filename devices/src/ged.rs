//! Generic Event Device (ACPI0013): one edge-triggered interrupt that tells the guest to run
//! its hotplug scans and look at the power button (see [`acpi::layout::ged`]). It has no
//! registers: what the guest's `_EVT` needs is in the status page (the hotplug controllers'
//! event words, the power button's press counter in the GED's own window).

use std::sync::Mutex;

use acpi::layout::ged as layout;
use vmm_sys_util::eventfd::EventFd;

use crate::StatusWindow;

/// An event class the GED can signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GedEvent {
    /// The CPU hotplug controller published an event (its scan will find it).
    Cpu,
    /// The memory hotplug controller published an event.
    Memory,
    /// The power button was pressed: the guest's `_EVT` notifies the PNP0C0C device, which
    /// Linux reports as a `KEY_POWER` input event (an orderly shutdown, if the guest's
    /// userspace acts on it).
    PowerButton,
}

/// The GED: its interrupt, and the power button's press counter.
pub struct Ged {
    irq: EventFd,
    /// Presses so far (wrapping), held while it is published so that two presses cannot
    /// publish their counts out of order.
    presses: Mutex<u32>,
    window: Option<Box<dyn StatusWindow>>,
}

impl std::fmt::Debug for Ged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ged")
            .field("presses", &self.presses)
            .finish_non_exhaustive()
    }
}

impl Ged {
    /// A GED that raises `irq` (an irqfd on [`acpi::layout::ged::IRQ`]).
    pub fn new(irq: EventFd) -> Self {
        Ged {
            irq,
            presses: Mutex::new(0),
            window: None,
        }
    }

    /// Publishes the press counter in `window` (the GED's window of the status page) from
    /// now on, starting with the current count.
    pub fn set_window(&mut self, window: Box<dyn StatusWindow>) {
        let presses = *self.presses.lock().unwrap_or_else(|e| e.into_inner());
        window.write(layout::POWER_BUTTON_PRESSES, &presses.to_le_bytes());
        self.window = Some(window);
    }

    /// Signals `event`: a power button press is counted in the status page first; then the
    /// interrupt is raised. (A hotplug controller publishes its own event before this.)
    pub fn notify(&self, event: GedEvent) -> std::io::Result<()> {
        if event == GedEvent::PowerButton {
            let mut presses = self.presses.lock().unwrap_or_else(|e| e.into_inner());
            *presses = presses.wrapping_add(1);
            if let Some(window) = &self.window {
                window.write(layout::POWER_BUTTON_PRESSES, &presses.to_le_bytes());
            }
        }
        self.irq.write(1)
    }

    /// Power button presses so far (wrapping).
    pub fn presses(&self) -> u32 {
        *self.presses.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// The GED's window as the guest's memory holds it.
    struct TestWindow(Arc<Mutex<Vec<u8>>>);

    impl StatusWindow for TestWindow {
        fn write(&self, offset: u64, bytes: &[u8]) {
            let at = offset as usize;
            self.0.lock().unwrap()[at..at + bytes.len()].copy_from_slice(bytes);
        }
    }

    fn counter(page: &Arc<Mutex<Vec<u8>>>) -> u32 {
        let p = page.lock().unwrap();
        let at = layout::POWER_BUTTON_PRESSES as usize;
        u32::from_le_bytes(p[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn hotplug_events_only_raise_the_interrupt() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut ged = Ged::new(irq.try_clone().unwrap());
        let page = Arc::new(Mutex::new(vec![0xa5; layout::WINDOW_SIZE as usize]));
        ged.set_window(Box::new(TestWindow(page.clone())));
        assert_eq!(counter(&page), 0, "the window starts with the count");
        ged.notify(GedEvent::Cpu).unwrap();
        ged.notify(GedEvent::Memory).unwrap();
        assert_eq!(irq.read().unwrap(), 2);
        assert_eq!(counter(&page), 0);
        assert_eq!(ged.presses(), 0);
    }

    #[test]
    fn power_button_presses_are_counted_in_the_page_before_the_interrupt() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut ged = Ged::new(irq.try_clone().unwrap());
        let page = Arc::new(Mutex::new(vec![0; layout::WINDOW_SIZE as usize]));
        ged.set_window(Box::new(TestWindow(page.clone())));
        ged.notify(GedEvent::PowerButton).unwrap();
        assert_eq!(counter(&page), 1);
        assert_eq!(irq.read().unwrap(), 1);
        // A press that races a hotplug event is seen by the same `_EVT`.
        ged.notify(GedEvent::PowerButton).unwrap();
        ged.notify(GedEvent::Cpu).unwrap();
        assert_eq!(counter(&page), 2);
        assert_eq!(ged.presses(), 2);
        assert_eq!(irq.read().unwrap(), 2);
    }

    #[test]
    fn a_ged_without_a_window_still_counts() {
        let ged = Ged::new(EventFd::new(EFD_NONBLOCK).unwrap());
        ged.notify(GedEvent::PowerButton).unwrap();
        assert_eq!(ged.presses(), 1);
    }
}
