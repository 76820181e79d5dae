//! Participants: the subsystems that carry a hotplug (vCPU manager, memory manager, ACPI
//! hotplug controllers, the VM's published state), their per-phase order numbers, and the
//! registry that calls them in order.

use std::error::Error as StdError;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::ops::{DeviceOp, Direction};

/// A participant's failure: a message and, optionally, the error that caused it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ParticipantError {
    message: String,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl ParticipantError {
    /// A failure with a message.
    pub fn new(message: impl Into<String>) -> Self {
        ParticipantError {
            message: message.into(),
            source: None,
        }
    }

    /// A failure with a message, caused by `source`.
    pub fn with_source(
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        ParticipantError {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The error and its causes, outermost first.
    pub fn chain(&self) -> Vec<String> {
        let mut out = vec![self.message.clone()];
        let mut cur: Option<&(dyn StdError + 'static)> = self.source.as_deref().map(|e| e as _);
        while let Some(e) = cur {
            out.push(e.to_string());
            cur = e.source();
        }
        out
    }
}

/// A subsystem taking part in hotplug transactions. Every method has a no-op default, so a
/// participant implements only the phases it cares about. Methods are called once per device
/// of a transaction, in the participant's order for that phase and direction.
///
/// The engine guarantees: `rollback_prepare` is called only after a successful `prepare` of
/// the same operation, `rollback_publish` only after a successful `publish`, each at most
/// once, in the reverse order of the forward steps; a step that failed is never undone;
/// after `commit` nothing of the operation is undone.
pub trait HotplugParticipant: Send {
    /// Phase 1: may veto. Must not change anything.
    fn validate(&self, _op: &DeviceOp) -> Result<(), ParticipantError> {
        Ok(())
    }

    /// Phase 2: allocate host resources (vCPU, memory mapping, memslot).
    fn prepare(&mut self, _op: &DeviceOp) -> Result<(), ParticipantError> {
        Ok(())
    }

    /// Undoes a successful [`prepare`](Self::prepare).
    fn rollback_prepare(&mut self, _op: &DeviceOp) -> Result<(), ParticipantError> {
        Ok(())
    }

    /// Phase 3: make the change visible to the guest (controller bits, GED interrupt).
    fn publish(&mut self, _op: &DeviceOp) -> Result<(), ParticipantError> {
        Ok(())
    }

    /// Undoes a successful [`publish`](Self::publish): the change is withdrawn from the guest.
    fn rollback_publish(&mut self, _op: &DeviceOp) -> Result<(), ParticipantError> {
        Ok(())
    }

    /// Phase 5: finalize. A failure is logged and recorded; nothing is rolled back.
    fn commit(&mut self, _op: &DeviceOp) -> Result<(), ParticipantError> {
        Ok(())
    }
}

impl<T: HotplugParticipant + ?Sized> HotplugParticipant for Box<T> {
    fn validate(&self, op: &DeviceOp) -> Result<(), ParticipantError> {
        (**self).validate(op)
    }
    fn prepare(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        (**self).prepare(op)
    }
    fn rollback_prepare(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        (**self).rollback_prepare(op)
    }
    fn publish(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        (**self).publish(op)
    }
    fn rollback_publish(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        (**self).rollback_publish(op)
    }
    fn commit(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        (**self).commit(op)
    }
}

/// Runs `f` on the participant behind `m`; a poisoned lock is the participant's failure.
pub(crate) fn locked<T: ?Sized, R>(
    m: &Mutex<T>,
    f: impl FnOnce(&mut T) -> Result<R, ParticipantError>,
) -> Result<R, ParticipantError> {
    let mut guard = m
        .lock()
        .map_err(|_| ParticipantError::new("participant lock poisoned"))?;
    f(&mut guard)
}

/// A participant shared with the rest of the VMM (e.g. the vCPU manager that also serves
/// vCPU exits) is registered as an `Arc<Mutex<T>>`.
impl<T: HotplugParticipant + ?Sized> HotplugParticipant for Arc<Mutex<T>> {
    fn validate(&self, op: &DeviceOp) -> Result<(), ParticipantError> {
        locked(self, |p| p.validate(op))
    }
    fn prepare(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        locked(self, |p| p.prepare(op))
    }
    fn rollback_prepare(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        locked(self, |p| p.rollback_prepare(op))
    }
    fn publish(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        locked(self, |p| p.publish(op))
    }
    fn rollback_publish(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        locked(self, |p| p.rollback_publish(op))
    }
    fn commit(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        locked(self, |p| p.commit(op))
    }
}

/// The forward phases that call participants in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderedPhase {
    /// Phase 1.
    Validate,
    /// Phase 2.
    Prepare,
    /// Phase 3.
    Publish,
    /// Phase 5.
    Commit,
}

/// Order numbers of one direction, per phase: lower runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhaseOrders {
    /// Validate order.
    pub validate: u32,
    /// Prepare order.
    pub prepare: u32,
    /// Publish order.
    pub publish: u32,
    /// Commit order.
    pub commit: u32,
}

impl PhaseOrders {
    /// The same order in every phase.
    pub fn uniform(order: u32) -> Self {
        PhaseOrders {
            validate: order,
            prepare: order,
            publish: order,
            commit: order,
        }
    }

    fn get(&self, phase: OrderedPhase) -> u32 {
        match phase {
            OrderedPhase::Validate => self.validate,
            OrderedPhase::Prepare => self.prepare,
            OrderedPhase::Publish => self.publish,
            OrderedPhase::Commit => self.commit,
        }
    }
}

/// A participant's order numbers for additions and for removals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Orders {
    /// Orders used when a device is added.
    pub add: PhaseOrders,
    /// Orders used when a device is removed.
    pub remove: PhaseOrders,
}

/// The standard roles, with the 2012 system-device hotplug framework's ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The ACPI hotplug controllers and GED ("ACPI bus").
    AcpiBus,
    /// ACPI resources (e.g. the memory controller's address/size registers).
    AcpiResources,
    /// The memory manager.
    Memory,
    /// The vCPU manager.
    Cpu,
    /// The VM's published state (what the API reports): last, so it reports what is true.
    PublishedState,
}

impl Orders {
    /// The same order in every phase and direction.
    pub fn uniform(order: u32) -> Self {
        Orders {
            add: PhaseOrders::uniform(order),
            remove: PhaseOrders::uniform(order),
        }
    }

    /// The standard orders for `role`. Add: ACPI bus 10, ACPI resources 20, memory 30, CPU 40
    /// in every phase. Remove: validate keeps the add order (the bus vetoes first); prepare,
    /// publish and commit run CPU 10, memory 20, ACPI resources 30, ACPI bus 40. The
    /// published state is 50 everywhere.
    pub fn standard(role: Role) -> Self {
        let (add, remove) = match role {
            Role::AcpiBus => (10, 40),
            Role::AcpiResources => (20, 30),
            Role::Memory => (30, 20),
            Role::Cpu => (40, 10),
            Role::PublishedState => (50, 50),
        };
        Orders {
            add: PhaseOrders::uniform(add),
            remove: PhaseOrders {
                validate: add,
                prepare: remove,
                publish: remove,
                commit: remove,
            },
        }
    }

    /// The order for a phase of a direction.
    pub fn get(&self, direction: Direction, phase: OrderedPhase) -> u32 {
        match direction {
            Direction::Add => self.add.get(phase),
            Direction::Remove => self.remove.get(phase),
        }
    }
}

/// Index of a registered participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub usize);

struct Entry {
    name: String,
    orders: Orders,
    participant: Box<dyn HotplugParticipant>,
}

/// The registered participants and their call orders.
#[derive(Default)]
pub(crate) struct Registry {
    entries: Vec<Entry>,
}

#[cfg(test)]
const PHASES: [OrderedPhase; 4] = [
    OrderedPhase::Validate,
    OrderedPhase::Prepare,
    OrderedPhase::Publish,
    OrderedPhase::Commit,
];

impl Registry {
    pub(crate) fn register(
        &mut self,
        name: String,
        orders: Orders,
        participant: Box<dyn HotplugParticipant>,
    ) -> ParticipantId {
        self.entries.push(Entry {
            name,
            orders,
            participant,
        });
        ParticipantId(self.entries.len() - 1)
    }

    /// Participants in call order for a phase: by order number, then registration order.
    pub(crate) fn ordered(&self, direction: Direction, phase: OrderedPhase) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.entries.len()).collect();
        idx.sort_by_key(|&i| {
            self.entries
                .get(i)
                .map(|e| e.orders.get(direction, phase))
                .unwrap_or(u32::MAX)
        });
        idx
    }

    pub(crate) fn name(&self, i: usize) -> &str {
        self.entries.get(i).map(|e| e.name.as_str()).unwrap_or("?")
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut dyn HotplugParticipant> {
        self.entries.get_mut(i).map(|e| &mut *e.participant as _)
    }

    pub(crate) fn get(&self, i: usize) -> Option<&dyn HotplugParticipant> {
        self.entries.get(i).map(|e| &*e.participant as _)
    }

    /// Checks that every phase's order is computable (used by tests).
    #[cfg(test)]
    fn all_orders(&self, direction: Direction) -> Vec<Vec<usize>> {
        PHASES.iter().map(|&p| self.ordered(direction, p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("inner cause")]
    struct Inner;

    struct Nop;
    impl HotplugParticipant for Nop {}

    #[test]
    fn error_chain_walks_sources() {
        let e = ParticipantError::with_source("prepare vcpu 3", Inner);
        assert_eq!(e.chain(), vec!["prepare vcpu 3", "inner cause"]);
        assert_eq!(ParticipantError::new("x").chain(), vec!["x"]);
    }

    #[test]
    fn standard_orders_follow_the_2012_framework() {
        let mut r = Registry::default();
        // Registered in a scrambled order on purpose.
        for role in [
            Role::Cpu,
            Role::PublishedState,
            Role::Memory,
            Role::AcpiBus,
            Role::AcpiResources,
        ] {
            r.register(format!("{role:?}"), Orders::standard(role), Box::new(Nop));
        }
        let names = |v: Vec<usize>| -> Vec<String> {
            v.into_iter().map(|i| r.name(i).to_string()).collect()
        };
        let add = [
            "AcpiBus",
            "AcpiResources",
            "Memory",
            "Cpu",
            "PublishedState",
        ];
        for order in r.all_orders(Direction::Add) {
            assert_eq!(names(order), add);
        }
        let remove = [
            "Cpu",
            "Memory",
            "AcpiResources",
            "AcpiBus",
            "PublishedState",
        ];
        assert_eq!(
            names(r.ordered(Direction::Remove, OrderedPhase::Validate)),
            add
        );
        for phase in [
            OrderedPhase::Prepare,
            OrderedPhase::Publish,
            OrderedPhase::Commit,
        ] {
            assert_eq!(names(r.ordered(Direction::Remove, phase)), remove);
        }
    }

    #[test]
    fn equal_orders_keep_registration_order() {
        let mut r = Registry::default();
        for n in ["a", "b", "c"] {
            r.register(n.into(), Orders::uniform(5), Box::new(Nop));
        }
        assert_eq!(
            r.ordered(Direction::Add, OrderedPhase::Commit),
            vec![0, 1, 2]
        );
        assert_eq!(r.entries.len(), 3);
    }

    #[test]
    fn shared_participant_through_arc_mutex() {
        #[derive(Default)]
        struct Counter(u32);
        impl HotplugParticipant for Counter {
            fn prepare(&mut self, _op: &DeviceOp) -> Result<(), ParticipantError> {
                self.0 += 1;
                Ok(())
            }
        }
        let shared = Arc::new(Mutex::new(Counter::default()));
        let mut r = Registry::default();
        r.register("c".into(), Orders::uniform(1), Box::new(shared.clone()));
        let op = DeviceOp {
            tx: crate::ops::TxId(1),
            kind: crate::ops::OpKind::AddCpu,
            device: crate::DeviceId::cpu(1),
            memory: None,
            origin: crate::ops::Origin::Host,
        };
        r.get_mut(0).unwrap().prepare(&op).unwrap();
        assert!(r.get(0).unwrap().validate(&op).is_ok());
        assert_eq!(shared.lock().unwrap().0, 1);
    }
}
