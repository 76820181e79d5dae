//! What the CPU and memory controller participants share: changing a slot's bits in its
//! hotplug controller, raising the GED event of that device kind, and withdrawing a removal
//! (plugging the device back in when the guest already ejected it).

use std::sync::Arc;

use devices::{ControllerLayout, Ged, GedEvent, HotplugController, HotplugSlotState};
use hotplug::{DeviceId, ParticipantError};

/// A hotplug controller and the GED event that tells the guest to scan it.
pub struct SlotPublisher<L: ControllerLayout> {
    controller: Arc<HotplugController<L>>,
    ged: Arc<Ged>,
    event: GedEvent,
    device: fn(u32) -> DeviceId,
}

impl<L: ControllerLayout> std::fmt::Debug for SlotPublisher<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotPublisher")
            .field("controller", &self.controller)
            .field("event", &self.event)
            .finish_non_exhaustive()
    }
}

impl<L: ControllerLayout> SlotPublisher<L> {
    /// Publishes through `controller`, raising `event` on `ged`; `device` names a slot by UID.
    pub fn new(
        controller: Arc<HotplugController<L>>,
        ged: Arc<Ged>,
        event: GedEvent,
        device: fn(u32) -> DeviceId,
    ) -> Self {
        SlotPublisher {
            controller,
            ged,
            event,
            device,
        }
    }

    /// The controller.
    pub fn controller(&self) -> &HotplugController<L> {
        &self.controller
    }

    /// Applies `f` to the state of slot `uid`.
    pub fn update(
        &self,
        uid: u32,
        f: impl FnOnce(&mut HotplugSlotState),
    ) -> Result<(), ParticipantError> {
        if self.controller.update(uid, f) {
            Ok(())
        } else {
            Err(ParticipantError::new(format!(
                "{} is beyond the controller's range",
                (self.device)(uid)
            )))
        }
    }

    /// Raises the GED event so that the guest scans the controller.
    pub fn notify(&self) -> Result<(), ParticipantError> {
        self.ged
            .notify(self.event)
            .map_err(|e| ParticipantError::with_source("cannot raise the GED interrupt", e))
    }

    /// Withdraws a removal request from slot `uid`; if the guest already ejected the device,
    /// it is plugged back in and the guest is told to scan.
    pub fn withdraw_removal(&self, uid: u32) -> Result<(), ParticipantError> {
        match self.controller.withdraw_removal(uid) {
            Some(true) => {
                tracing::info!(device = %(self.device)(uid), "guest had ejected the device: plugging it back in");
                self.notify()
            }
            Some(false) => Ok(()),
            None => Err(ParticipantError::new(format!("no {}", (self.device)(uid)))),
        }
    }
}
