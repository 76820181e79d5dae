//! The register model shared by the CPU and memory hotplug controllers: a selector, a
//! per-slot status byte with acknowledge and eject bits, `_OST` event/status registers and a
//! next-event register. Each controller maps its own offsets (from [`acpi::layout`]) onto it.

/// What the controller knows of one hotpluggable slot (a CPU or a memory slot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotplugSlotState {
    /// Present: `_STA` reports it enabled.
    pub enabled: bool,
    /// An insert was published and the guest has not acknowledged it.
    pub inserting: bool,
    /// A removal was requested and the guest has not acknowledged it.
    pub removing: bool,
    /// A removal was requested and the guest may eject the slot.
    pub eject_allowed: bool,
}

/// Something the guest did that the hotplug framework needs to hear about. `uid` is the
/// ACPI UID of the device (CPU id or memory slot id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HotplugObservation {
    /// The guest read the status of `uid` (it looked at the device).
    StatusRead {
        /// Device UID.
        uid: u32,
    },
    /// The guest evaluated `_OST(event, status)` for `uid`.
    Ost {
        /// Device UID.
        uid: u32,
        /// `_OST` source event.
        event: u32,
        /// `_OST` status code.
        status: u32,
    },
    /// The guest ejected `uid` (`_EJ0`); it is no longer enabled.
    Ejected {
        /// Device UID.
        uid: u32,
    },
    /// The guest ejected `uid` although nobody asked it to leave (or the request was
    /// withdrawn meanwhile): the device stays, and is marked for re-insertion so that the
    /// guest's next scan adds back what it just removed on its side. The VMM should raise
    /// the GED event.
    EjectRefused {
        /// Device UID.
        uid: u32,
    },
}

/// A guest access the slot registers refuse; the controller logs it and ignores the access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegisterError {
    /// The guest selected, or acted on, a UID that is not one of this controller's slots.
    #[error("selector {uid} is not a hotplug slot")]
    UnknownSlot {
        /// The UID the guest gave.
        uid: u32,
    },
    /// The guest ejected a slot that is not present.
    #[error("eject of {uid}, which is not present")]
    EjectAbsent {
        /// The slot's UID.
        uid: u32,
    },
}

/// The status register's bits of one layout.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StatusBits {
    pub enabled: u8,
    pub inserting: u8,
    pub removing: u8,
    pub eject: u8,
}

/// Registers over slots with UIDs `first_uid..first_uid + len`.
#[derive(Debug)]
pub(crate) struct SlotRegisters {
    first_uid: u32,
    selector: u32,
    ost_event: u32,
    slots: Vec<HotplugSlotState>,
    bits: StatusBits,
    /// The engine's guest-eject policy, projected: a guest may eject a device nobody asked
    /// to leave.
    guest_eject: bool,
}

impl SlotRegisters {
    pub(crate) fn new(first_uid: u32, slots: Vec<HotplugSlotState>, bits: StatusBits) -> Self {
        SlotRegisters {
            first_uid,
            selector: first_uid,
            ost_event: 0,
            slots,
            bits,
            guest_eject: false,
        }
    }

    pub(crate) fn set_guest_eject(&mut self, allowed: bool) {
        self.guest_eject = allowed;
    }

    fn index(&self, uid: u32) -> Option<usize> {
        let i = usize::try_from(uid.checked_sub(self.first_uid)?).ok()?;
        (i < self.slots.len()).then_some(i)
    }

    pub(crate) fn slot(&self, uid: u32) -> Option<HotplugSlotState> {
        self.index(uid).map(|i| self.slots[i])
    }

    pub(crate) fn slot_mut(&mut self, uid: u32) -> Option<&mut HotplugSlotState> {
        self.index(uid).map(|i| &mut self.slots[i])
    }

    pub(crate) fn selector(&self) -> u32 {
        self.selector
    }

    pub(crate) fn select(&mut self, uid: u32) -> Result<(), RegisterError> {
        if self.index(uid).is_none() {
            return Err(RegisterError::UnknownSlot { uid });
        }
        self.selector = uid;
        Ok(())
    }

    pub(crate) fn read_status(&self) -> Option<(u8, HotplugObservation)> {
        let slot = self.slot(self.selector)?;
        let b = self.bits;
        let mut s = 0;
        if slot.enabled {
            s |= b.enabled;
        }
        if slot.inserting {
            s |= b.inserting;
        }
        if slot.removing {
            s |= b.removing;
        }
        Some((s, HotplugObservation::StatusRead { uid: self.selector }))
    }

    pub(crate) fn write_status(
        &mut self,
        value: u8,
    ) -> Result<Option<HotplugObservation>, RegisterError> {
        let uid = self.selector;
        let b = self.bits;
        let guest_eject = self.guest_eject;
        let slot = self
            .slot_mut(uid)
            .ok_or(RegisterError::UnknownSlot { uid })?;
        if value & b.inserting != 0 {
            slot.inserting = false;
        }
        if value & b.removing != 0 {
            slot.removing = false;
        }
        if value & b.eject != 0 {
            if !slot.enabled {
                return Err(RegisterError::EjectAbsent { uid });
            }
            if !slot.eject_allowed && !guest_eject {
                // The guest has already let the device go on its side: offer it again.
                slot.inserting = true;
                return Ok(Some(HotplugObservation::EjectRefused { uid }));
            }
            *slot = HotplugSlotState::default();
            return Ok(Some(HotplugObservation::Ejected { uid }));
        }
        Ok(None)
    }

    pub(crate) fn set_ost_event(&mut self, event: u32) {
        self.ost_event = event;
    }

    pub(crate) fn ost(&self, status: u32) -> HotplugObservation {
        HotplugObservation::Ost {
            uid: self.selector,
            event: self.ost_event,
            status,
        }
    }

    /// Selects the next slot after the selector (cyclic) with an event pending and returns
    /// its UID, or `None`.
    pub(crate) fn next_event(&mut self) -> Option<u32> {
        let n = self.slots.len();
        let start = self.index(self.selector).unwrap_or(0);
        let i = (1..=n)
            .map(|k| (start + k) % n)
            .find(|&i| self.slots[i].inserting || self.slots[i].removing)?;
        let uid = self.first_uid + u32::try_from(i).ok()?;
        self.selector = uid;
        Some(uid)
    }
}
