//! Device kinds and participants typed by kind.
//!
//! A [`HotplugParticipant`] is called with every [`DeviceOp`] of a transaction, whatever the
//! device. Most participants serve one kind of device (the vCPU manager, the memory
//! controller), so each would have to skip the others and dig its id and details out of the
//! op. A [`DeviceParticipant<K>`] is written for one [`DeviceKind`] instead: registered with
//! [`Engine::register_for`](crate::Engine::register_for), it is called only for ops on
//! devices of kind `K`, with a [`KindOp<K>`] that already carries the kind's id and detail.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use crate::device::{CpuId, DeviceId, MemoryPlacement, SlotId};
use crate::ops::{DeviceOp, Direction, Origin, TxId};
use crate::participant::{locked, HotplugParticipant, ParticipantError};

/// A kind of hotpluggable device: how to recognize its ops and what they carry.
///
/// Implemented by marker types ([`CpuKind`], [`MemoryKind`]); a participant names the kind
/// it serves as `impl DeviceParticipant<CpuKind> for ...`.
pub trait DeviceKind: Copy + Eq + fmt::Debug + Send + Sync + 'static {
    /// The id of a device of this kind.
    type Id: Copy + fmt::Debug + fmt::Display + Eq + Send + Sync + 'static;

    /// What an op on a device of this kind carries besides the id (`()` when nothing).
    type Detail: Copy + fmt::Debug + Eq + Send + Sync + 'static;

    /// The device's id if it is of this kind, `None` otherwise.
    fn id_of(device: DeviceId) -> Option<Self::Id>;

    /// The device of this kind with `id`.
    fn device(id: Self::Id) -> DeviceId;

    /// The detail of `op`, an op on device `id` of this kind. An op that lacks what the kind
    /// needs is an error: the engine records it as the participant's failure.
    fn detail_of(op: &DeviceOp, id: Self::Id) -> Result<Self::Detail, ParticipantError>;
}

/// vCPUs: an op names the CPU and carries nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuKind;

impl DeviceKind for CpuKind {
    type Id = CpuId;
    type Detail = ();

    fn id_of(device: DeviceId) -> Option<CpuId> {
        match device {
            DeviceId::Cpu(id) => Some(id),
            DeviceId::MemorySlot(_) => None,
        }
    }

    fn device(id: CpuId) -> DeviceId {
        DeviceId::Cpu(id)
    }

    fn detail_of(_op: &DeviceOp, _id: CpuId) -> Result<(), ParticipantError> {
        Ok(())
    }
}

/// Memory slots of the hotplug region: an op names the slot and carries its placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryKind;

impl DeviceKind for MemoryKind {
    type Id = SlotId;
    type Detail = MemoryPlacement;

    fn id_of(device: DeviceId) -> Option<SlotId> {
        match device {
            DeviceId::MemorySlot(slot) => Some(slot),
            DeviceId::Cpu(_) => None,
        }
    }

    fn device(id: SlotId) -> DeviceId {
        DeviceId::MemorySlot(id)
    }

    fn detail_of(op: &DeviceOp, id: SlotId) -> Result<MemoryPlacement, ParticipantError> {
        // The engine places every memory op it plans; an op without a placement is a bug
        // upstream, reported as a failed step rather than a panic in the VMM.
        op.memory
            .ok_or_else(|| ParticipantError::new(format!("{id} has no placement")))
    }
}

/// One device's part of a transaction, for a participant of kind `K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindOp<K: DeviceKind> {
    /// The transaction.
    pub tx: TxId,
    /// The device.
    pub id: K::Id,
    /// Add or remove.
    pub direction: Direction,
    /// Who asked.
    pub origin: Origin,
    /// What the op carries for this kind (for memory, the slot's placement).
    pub detail: K::Detail,
}

impl<K: DeviceKind> KindOp<K> {
    /// The typed view of `op`: `Ok(None)` if its device is not of kind `K`, an error if it
    /// is but lacks the kind's detail.
    pub fn from_op(op: &DeviceOp) -> Result<Option<Self>, ParticipantError> {
        let Some(id) = K::id_of(op.device) else {
            return Ok(None);
        };
        Ok(Some(KindOp {
            tx: op.tx,
            id,
            direction: op.direction(),
            origin: op.origin,
            detail: K::detail_of(op, id)?,
        }))
    }

    /// The device, as the engine names it.
    pub fn device(&self) -> DeviceId {
        K::device(self.id)
    }
}

/// A subsystem taking part in the hotplug transactions of devices of kind `K`. Register it
/// with [`Engine::register_for`](crate::Engine::register_for): it is called only for ops on
/// devices of kind `K`, never for the others.
///
/// Every method has a no-op default, so a participant implements only the phases it cares
/// about. Methods are called once per device of kind `K` of a transaction, in the
/// participant's order for that phase and direction.
///
/// The engine guarantees, as for [`HotplugParticipant`]: `rollback_prepare` is called only
/// after a successful `prepare` of the same operation, `rollback_publish` only after a
/// successful `publish`, each at most once, in the reverse order of the forward steps; a
/// step that failed is never undone; after `commit` nothing of the operation is undone.
pub trait DeviceParticipant<K: DeviceKind>: Send {
    /// Phase 1: may veto. Must not change anything.
    fn validate(&self, _op: &KindOp<K>) -> Result<(), ParticipantError> {
        Ok(())
    }

    /// Phase 2: allocate host resources (vCPU, memory mapping, memslot).
    fn prepare(&mut self, _op: &KindOp<K>) -> Result<(), ParticipantError> {
        Ok(())
    }

    /// Undoes a successful [`prepare`](Self::prepare).
    fn rollback_prepare(&mut self, _op: &KindOp<K>) -> Result<(), ParticipantError> {
        Ok(())
    }

    /// Phase 3: make the change visible to the guest (controller bits, GED interrupt).
    fn publish(&mut self, _op: &KindOp<K>) -> Result<(), ParticipantError> {
        Ok(())
    }

    /// Undoes a successful [`publish`](Self::publish): the change is withdrawn from the guest.
    fn rollback_publish(&mut self, _op: &KindOp<K>) -> Result<(), ParticipantError> {
        Ok(())
    }

    /// Phase 5: finalize. A failure is logged and recorded; nothing is rolled back.
    fn commit(&mut self, _op: &KindOp<K>) -> Result<(), ParticipantError> {
        Ok(())
    }
}

/// A typed participant shared with the rest of the VMM is registered as an `Arc<Mutex<T>>`;
/// a poisoned lock is the participant's failure.
impl<K: DeviceKind, T: DeviceParticipant<K> + ?Sized> DeviceParticipant<K> for Arc<Mutex<T>> {
    fn validate(&self, op: &KindOp<K>) -> Result<(), ParticipantError> {
        locked(self, |p| p.validate(op))
    }
    fn prepare(&mut self, op: &KindOp<K>) -> Result<(), ParticipantError> {
        locked(self, |p| p.prepare(op))
    }
    fn rollback_prepare(&mut self, op: &KindOp<K>) -> Result<(), ParticipantError> {
        locked(self, |p| p.rollback_prepare(op))
    }
    fn publish(&mut self, op: &KindOp<K>) -> Result<(), ParticipantError> {
        locked(self, |p| p.publish(op))
    }
    fn rollback_publish(&mut self, op: &KindOp<K>) -> Result<(), ParticipantError> {
        locked(self, |p| p.rollback_publish(op))
    }
    fn commit(&mut self, op: &KindOp<K>) -> Result<(), ParticipantError> {
        locked(self, |p| p.commit(op))
    }
}

/// Carries a [`DeviceParticipant<K>`] into the engine's registry of [`HotplugParticipant`]s:
/// ops on other kinds pass it by, ops of kind `K` reach it typed.
pub(crate) struct ForKind<K, P> {
    participant: P,
    // `fn() -> K`: the adapter holds no `K`, so it is `Send` whatever `K` is.
    kind: PhantomData<fn() -> K>,
}

impl<K: DeviceKind, P: DeviceParticipant<K>> ForKind<K, P> {
    pub(crate) fn new(participant: P) -> Self {
        ForKind {
            participant,
            kind: PhantomData,
        }
    }
}

/// Calls `f` with the typed view of `op` if it is of kind `K`.
fn typed<K: DeviceKind>(
    op: &DeviceOp,
    f: impl FnOnce(&KindOp<K>) -> Result<(), ParticipantError>,
) -> Result<(), ParticipantError> {
    match KindOp::<K>::from_op(op)? {
        Some(op) => f(&op),
        None => Ok(()),
    }
}

impl<K: DeviceKind, P: DeviceParticipant<K>> HotplugParticipant for ForKind<K, P> {
    fn validate(&self, op: &DeviceOp) -> Result<(), ParticipantError> {
        typed(op, |op| self.participant.validate(op))
    }
    fn prepare(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        typed(op, |op| self.participant.prepare(op))
    }
    fn rollback_prepare(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        typed(op, |op| self.participant.rollback_prepare(op))
    }
    fn publish(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        typed(op, |op| self.participant.publish(op))
    }
    fn rollback_publish(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        typed(op, |op| self.participant.rollback_publish(op))
    }
    fn commit(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        typed(op, |op| self.participant.commit(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::OpKind;

    /// Counts the calls that reach it.
    #[derive(Default)]
    struct Count(u32);
    impl DeviceParticipant<MemoryKind> for Count {
        fn prepare(&mut self, _op: &KindOp<MemoryKind>) -> Result<(), ParticipantError> {
            self.0 += 1;
            Ok(())
        }
    }

    fn op(device: DeviceId, memory: Option<MemoryPlacement>) -> DeviceOp {
        DeviceOp {
            tx: TxId(1),
            kind: OpKind::AddMemory,
            device,
            memory,
            origin: Origin::Host,
        }
    }

    #[test]
    fn the_adapter_passes_other_kinds_by_and_refuses_an_unplaced_memory_op() {
        let shared = Arc::new(Mutex::new(Count::default()));
        let mut adapter = ForKind::<MemoryKind, _>::new(shared.clone());
        let placement = MemoryPlacement {
            offset: 0,
            size: 1 << 27,
        };
        adapter
            .prepare(&op(DeviceId::memory_slot(1), Some(placement)))
            .unwrap();
        // Not a memory slot: not called, and no error.
        adapter
            .prepare(&op(DeviceId::cpu(1), Some(placement)))
            .unwrap();
        let e = adapter
            .prepare(&op(DeviceId::memory_slot(1), None))
            .unwrap_err();
        assert_eq!(e.to_string(), "memory slot 1 has no placement");
        assert_eq!(shared.lock().unwrap().0, 1);
    }
}
