//! vCPU hotplug on the host side: the set of vCPU threads, the parked vCPU fds of removed
//! CPUs, and the two hotplug participants that add and remove them.
//!
//! * [`VcpuParticipant`] owns host resources: Prepare of an add creates (or unparks) the
//!   vCPU and starts its thread, which waits for the guest's INIT/SIPI; Commit of a remove
//!   stops the thread and parks the fd (KVM cannot destroy a vCPU, so the same id reuses it).
//! * [`CpuControllerParticipant`] publishes the change to the guest: it sets the CPU
//!   hotplug controller's bits and raises the GED interrupt, and withdraws them on rollback.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::{CpuHotplugController, CpuLayout, ExitSignal, Ged, GedEvent};
use hotplug::{DeviceId, DeviceOp, Direction, HotplugParticipant, ParticipantError};
use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuFd, VmFd};
use vm_device::device_manager::IoManager;

use crate::arch::CpuTopology;
use crate::slot_publisher::SlotPublisher;
use crate::vcpu::{self, VcpuHandle};

/// Everything needed to create and run vCPUs, and the vCPUs themselves.
pub struct VcpuSet {
    vm: Arc<VmFd>,
    io: Arc<IoManager>,
    exit: Arc<ExitSignal>,
    supported_cpuid: CpuId,
    topology: CpuTopology,
    running: BTreeMap<u32, VcpuHandle>,
    parked: BTreeMap<u32, VcpuFd>,
}

impl std::fmt::Debug for VcpuSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuSet")
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .field("parked", &self.parked.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl VcpuSet {
    /// An empty set for a VM.
    pub fn new(
        vm: Arc<VmFd>,
        io: Arc<IoManager>,
        exit: Arc<ExitSignal>,
        supported_cpuid: CpuId,
        topology: CpuTopology,
    ) -> Self {
        VcpuSet {
            vm,
            io,
            exit,
            supported_cpuid,
            topology,
            running: BTreeMap::new(),
            parked: BTreeMap::new(),
        }
    }

    /// Creates vCPU `id` (or takes its parked fd) with CPUID, MSRs, FPU and LAPIC set up,
    /// without starting it.
    pub fn create(&mut self, id: u32) -> Result<VcpuFd, vcpu::VcpuError> {
        if let Some(fd) = self.parked.remove(&id) {
            tracing::debug!(vcpu = id, "reusing parked vCPU");
            return Ok(fd);
        }
        vcpu::create_vcpu(&self.vm, id, &self.supported_cpuid, self.topology)
    }

    /// Starts the thread of vCPU `id`.
    pub fn start(&mut self, id: u32, fd: VcpuFd) -> Result<(), vcpu::VcpuError> {
        let handle = vcpu::spawn_vcpu(id, fd, self.io.clone(), self.exit.clone())?;
        self.running.insert(id, handle);
        Ok(())
    }

    /// Stops the thread of vCPU `id` and parks its fd. `false` if it was not running.
    pub fn stop_and_park(&mut self, id: u32) -> bool {
        let Some(handle) = self.running.remove(&id) else {
            return false;
        };
        match handle.stop() {
            Some(fd) => {
                self.parked.insert(id, fd);
                true
            }
            None => {
                tracing::error!(vcpu = id, "vCPU thread ended abnormally; its fd is lost");
                true
            }
        }
    }

    /// Stops every thread (the VM is ending).
    pub fn stop_all(&mut self) {
        let ids: Vec<u32> = self.running.keys().copied().collect();
        for id in ids {
            self.stop_and_park(id);
        }
    }

    /// Ids of running vCPUs.
    pub fn running_ids(&self) -> Vec<u32> {
        self.running.keys().copied().collect()
    }

    /// Ids of parked vCPUs.
    pub fn parked_ids(&self) -> Vec<u32> {
        self.parked.keys().copied().collect()
    }
}

fn cpu_of(op: &DeviceOp) -> Result<u32, ParticipantError> {
    match op.device {
        DeviceId::Cpu(id) => Ok(id.0),
        other => Err(ParticipantError::new(format!("{other} is not a CPU"))),
    }
}

fn locked<R>(
    set: &Mutex<VcpuSet>,
    f: impl FnOnce(&mut VcpuSet) -> Result<R, ParticipantError>,
) -> Result<R, ParticipantError> {
    let mut guard = set
        .lock()
        .map_err(|_| ParticipantError::new("vCPU set lock poisoned"))?;
    f(&mut guard)
}

/// Host resources of a CPU: its KVM vCPU and thread.
#[derive(Debug)]
pub struct VcpuParticipant {
    set: Arc<Mutex<VcpuSet>>,
}

impl VcpuParticipant {
    /// A participant managing `set`.
    pub fn new(set: Arc<Mutex<VcpuSet>>) -> Self {
        VcpuParticipant { set }
    }
}

impl HotplugParticipant for VcpuParticipant {
    fn prepare(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        let DeviceId::Cpu(_) = op.device else {
            return Ok(());
        };
        if op.direction() != Direction::Add {
            return Ok(());
        }
        let id = cpu_of(op)?;
        locked(&self.set, |set| {
            if set.running.contains_key(&id) {
                return Err(ParticipantError::new(format!(
                    "vCPU {id} is already running"
                )));
            }
            let fd = set.create(id).map_err(|e| {
                ParticipantError::with_source(format!("cannot create vCPU {id}"), e)
            })?;
            set.start(id, fd)
                .map_err(|e| ParticipantError::with_source(format!("cannot start vCPU {id}"), e))
        })
    }

    fn rollback_prepare(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        let DeviceId::Cpu(_) = op.device else {
            return Ok(());
        };
        if op.direction() == Direction::Add {
            let id = cpu_of(op)?;
            locked(&self.set, |set| {
                set.stop_and_park(id);
                Ok(())
            })?;
        }
        Ok(())
    }

    fn commit(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        let DeviceId::Cpu(_) = op.device else {
            return Ok(());
        };
        if op.direction() == Direction::Remove {
            let id = cpu_of(op)?;
            locked(&self.set, |set| {
                if set.stop_and_park(id) {
                    tracing::info!(vcpu = id, "vCPU stopped and parked");
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// What the guest sees of a CPU: the controller's bits and the GED interrupt.
#[derive(Debug)]
pub struct CpuControllerParticipant {
    slots: SlotPublisher<CpuLayout>,
}

impl CpuControllerParticipant {
    /// A participant publishing through `controller` and `ged`.
    pub fn new(controller: Arc<CpuHotplugController>, ged: Arc<Ged>) -> Self {
        CpuControllerParticipant {
            slots: SlotPublisher::new(controller, ged, GedEvent::Cpu, DeviceId::cpu),
        }
    }
}

impl HotplugParticipant for CpuControllerParticipant {
    fn validate(&self, op: &DeviceOp) -> Result<(), ParticipantError> {
        let DeviceId::Cpu(_) = op.device else {
            return Ok(());
        };
        let id = cpu_of(op)?;
        let slot = self
            .slots
            .controller()
            .slot(id)
            .ok_or_else(|| ParticipantError::new(format!("CPU {id} is beyond max")))?;
        match op.direction() {
            Direction::Add if slot.enabled => Err(ParticipantError::new(format!(
                "CPU {id} is still present in the controller"
            ))),
            Direction::Remove if !slot.enabled && op.origin == hotplug::Origin::Host => Err(
                ParticipantError::new(format!("CPU {id} is not present in the controller")),
            ),
            _ => Ok(()),
        }
    }

    fn publish(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        let DeviceId::Cpu(_) = op.device else {
            return Ok(());
        };
        let id = cpu_of(op)?;
        match op.direction() {
            Direction::Add => self.slots.update(id, |s| {
                s.enabled = true;
                s.inserting = true;
                s.removing = false;
                s.eject_allowed = false;
            })?,
            Direction::Remove => self.slots.update(id, |s| {
                s.removing = true;
                s.eject_allowed = true;
            })?,
        }
        self.slots.notify()
    }

    fn rollback_publish(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        let DeviceId::Cpu(_) = op.device else {
            return Ok(());
        };
        let id = cpu_of(op)?;
        match op.direction() {
            // Withdrawn: the CPU reads absent again; a guest that scans later finds nothing.
            Direction::Add => self
                .slots
                .update(id, |s| *s = devices::HotplugSlotState::default()),
            Direction::Remove => self.slots.withdraw_removal(id),
        }
    }

    fn commit(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        let DeviceId::Cpu(_) = op.device else {
            return Ok(());
        };
        let id = cpu_of(op)?;
        match op.direction() {
            Direction::Add => self.slots.update(id, |s| s.inserting = false),
            Direction::Remove => self
                .slots
                .update(id, |s| *s = devices::HotplugSlotState::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotplug::{Clock, CpuId as HpCpu, OpKind, Origin, TxId};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn op(kind: OpKind, id: u32) -> DeviceOp {
        DeviceOp {
            tx: TxId(1),
            kind,
            device: DeviceId::Cpu(HpCpu(id)),
            memory: None,
            origin: Origin::Host,
        }
    }

    #[test]
    fn controller_participant_publishes_and_withdraws() {
        let ctl = Arc::new(CpuHotplugController::for_cpus(1, 4));
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let ged = Arc::new(Ged::new(irq.try_clone().unwrap()));
        let mut p = CpuControllerParticipant::new(ctl.clone(), ged.clone());

        let add = op(OpKind::AddCpu, 2);
        p.validate(&add).unwrap();
        p.publish(&add).unwrap();
        assert!(ctl.slot(2).unwrap().enabled && ctl.slot(2).unwrap().inserting);
        assert_eq!(irq.read().unwrap(), 1);
        assert!(
            p.validate(&add).is_err(),
            "a present CPU cannot be added again"
        );
        p.rollback_publish(&add).unwrap();
        assert_eq!(ctl.slot(2), Some(devices::HotplugSlotState::default()));

        let remove = op(OpKind::RemoveCpu, 0);
        p.publish(&remove).unwrap();
        assert!(ctl.slot(0).unwrap().removing && ctl.slot(0).unwrap().eject_allowed);
        p.rollback_publish(&remove).unwrap();
        let s = ctl.slot(0).unwrap();
        assert!(s.enabled && !s.removing && !s.eject_allowed);

        assert!(p.validate(&op(OpKind::AddCpu, 9)).is_err());
        let _ = hotplug::MonotonicClock::new().now();
    }
}
