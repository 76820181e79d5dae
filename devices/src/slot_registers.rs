//! The register model shared by the CPU and memory hotplug controllers
//! ([`acpi::layout::hotplug_registers`]): per-slot state, the guest's four writes (acknowledge
//! an insert, acknowledge a remove, eject, `_OST`), each naming its slot, and the event word
//! the VMM publishes in the status page ([`acpi::layout::status_page`]).

use acpi::layout::{hotplug_registers as regs, status_page as page};

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

impl HotplugSlotState {
    /// The slot's `_STA` byte in the status page.
    pub(crate) fn sta(self) -> u8 {
        if self.enabled {
            page::STA_PRESENT
        } else {
            page::STA_ABSENT
        }
    }
}

/// Something the guest did that the hotplug framework needs to hear about. `uid` is the
/// ACPI UID of the device (CPU id or memory slot id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HotplugObservation {
    /// The guest's scan saw the pending event of `uid` and acknowledged it (it looked at the
    /// device). Only an acknowledgement that clears a pending event counts (a refused eject
    /// raises one, so a guest can make more of these by ejecting and acknowledging again;
    /// the engine journals the first per device and transaction).
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
    /// The guest acted on a UID that is not one of this controller's slots.
    #[error("UID {uid} is not a hotplug slot")]
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

/// The slots with UIDs `first_uid..first_uid + len`, and what the guest does to them.
#[derive(Debug)]
pub(crate) struct SlotRegisters {
    first_uid: u32,
    /// Index of the slot whose event the guest acknowledged last: the event word offers the
    /// slots after it first, so a slot whose events keep coming cannot starve the others.
    cursor: usize,
    slots: Vec<HotplugSlotState>,
    /// The engine's guest-eject policy, projected: a guest may eject a device nobody asked
    /// to leave.
    guest_eject: bool,
}

impl SlotRegisters {
    pub(crate) fn new(first_uid: u32, slots: Vec<HotplugSlotState>) -> Self {
        let last = slots.len().saturating_sub(1);
        SlotRegisters {
            first_uid,
            cursor: last,
            slots,
            guest_eject: false,
        }
    }

    pub(crate) fn set_guest_eject(&mut self, allowed: bool) {
        self.guest_eject = allowed;
    }

    /// The slot index of `uid`, if it is one of these slots.
    pub(crate) fn index(&self, uid: u32) -> Option<usize> {
        let i = usize::try_from(uid.checked_sub(self.first_uid)?).ok()?;
        (i < self.slots.len()).then_some(i)
    }

    /// Every slot with its UID.
    pub(crate) fn slots(&self) -> impl Iterator<Item = (u32, HotplugSlotState)> + '_ {
        (self.first_uid..).zip(self.slots.iter().copied())
    }

    pub(crate) fn slot(&self, uid: u32) -> Option<HotplugSlotState> {
        self.index(uid).map(|i| self.slots[i])
    }

    pub(crate) fn slot_mut(&mut self, uid: u32) -> Option<&mut HotplugSlotState> {
        self.index(uid).map(|i| &mut self.slots[i])
    }

    fn known(&mut self, uid: u32) -> Result<(usize, &mut HotplugSlotState), RegisterError> {
        let i = self.index(uid).ok_or(RegisterError::UnknownSlot { uid })?;
        Ok((i, &mut self.slots[i]))
    }

    /// The guest acknowledged the insert (`remove` false) or remove event of `uid`.
    pub(crate) fn acknowledge(
        &mut self,
        uid: u32,
        remove: bool,
    ) -> Result<Option<HotplugObservation>, RegisterError> {
        let (i, slot) = self.known(uid)?;
        let pending = if remove {
            &mut slot.removing
        } else {
            &mut slot.inserting
        };
        let was = std::mem::take(pending);
        self.cursor = i;
        Ok(was.then_some(HotplugObservation::StatusRead { uid }))
    }

    /// The guest ejected `uid` (`_EJ0`).
    pub(crate) fn eject(&mut self, uid: u32) -> Result<HotplugObservation, RegisterError> {
        let guest_eject = self.guest_eject;
        let (_, slot) = self.known(uid)?;
        if !slot.enabled {
            return Err(RegisterError::EjectAbsent { uid });
        }
        if !slot.eject_allowed && !guest_eject {
            // The guest has already let the device go on its side: offer it again.
            slot.inserting = true;
            return Ok(HotplugObservation::EjectRefused { uid });
        }
        *slot = HotplugSlotState::default();
        Ok(HotplugObservation::Ejected { uid })
    }

    /// The guest evaluated `_OST`: `value` as written to the 64-bit register.
    pub(crate) fn ost(&self, value: u64) -> Result<HotplugObservation, RegisterError> {
        // Truncations are the register's layout: 16 bits of UID and of source event, 32 of
        // status.
        let low = value as u32;
        let uid = low & regs::UID_MASK;
        let event = (low >> regs::OST_EVENT_SHIFT) & regs::UID_MASK;
        let status = (value >> regs::OST_STATUS_SHIFT) as u32;
        if self.index(uid).is_none() {
            return Err(RegisterError::UnknownSlot { uid });
        }
        Ok(HotplugObservation::Ost { uid, event, status })
    }

    /// The event word: the first slot after the cursor (cyclic) with an event pending, its
    /// UID and insert/remove bits, or [`page::NO_EVENT`].
    pub(crate) fn event_word(&self) -> u32 {
        let n = self.slots.len();
        let found = (1..=n)
            .map(|k| (self.cursor + k) % n)
            .find(|&i| self.slots[i].inserting || self.slots[i].removing);
        let Some(i) = found else {
            return page::NO_EVENT;
        };
        let Some(uid) = u32::try_from(i)
            .ok()
            .and_then(|i| self.first_uid.checked_add(i))
            .filter(|&uid| uid <= regs::UID_MASK)
        else {
            return page::NO_EVENT;
        };
        let slot = self.slots[i];
        let mut word = uid;
        if slot.inserting {
            word |= page::EVENT_INSERT;
        }
        if slot.removing {
            word |= page::EVENT_REMOVE;
        }
        word
    }
}
