//! vCPU hotplug on the host side: the vCPU threads of every CPU that exists, and the two
//! hotplug participants that add and remove them.
//!
//! * [`VcpuParticipant`] owns host resources. A hot-add only tells a thread that is already
//!   there to run: up to [`SPARE_VCPUS`] CPUs get their KVM vCPU and thread at start, and a
//!   removed CPU's thread stays, parked (KVM cannot destroy a vCPU). A hot-remove hands the stop to the vCPU's own thread as
//!   soon as the guest ejects the CPU ([`VcpuSet::begin_park`]); Commit then only checks the
//!   acknowledgement, within a bound.
//! * [`CpuControllerParticipant`] publishes the change to the guest: it sets the CPU
//!   hotplug controller's bits and raises the GED interrupt, and withdraws them on rollback.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::{CpuHotplugController, CpuLayout, ExitSignal, Ged, GedEvent};
use hotplug::{
    CpuKind, DeviceId, DeviceParticipant, Direction, Engine, GuestEjectPolicy, KindOp, Orders,
    Origin, ParticipantError, Role,
};
use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuFd, VmFd};
use vm_device::device_manager::IoManager;

use crate::arch::CpuTopology;
use crate::host_faults::{HostCall, HostFaults};
use crate::slot_publisher::SlotPublisher;
use crate::vcpu::{self, VcpuCommand, VcpuHandle, VcpuState, VcpuWaitError};

/// How long a vCPU may take to acknowledge a park, pause or exit. A halted vCPU answers in
/// microseconds; one that does not answer within this is stuck (in a device access, say).
pub const VCPU_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything needed to create and run vCPUs, and the threads of the vCPUs that exist.
pub struct VcpuSet {
    vm: Arc<VmFd>,
    io: Arc<IoManager>,
    exit: Arc<ExitSignal>,
    supported_cpuid: CpuId,
    topology: CpuTopology,
    vcpus: BTreeMap<u32, VcpuHandle>,
    closed: bool,
    /// vCPUs KVM made whose thread did not start: KVM cannot destroy a vCPU, so the next
    /// start of the same id reuses it rather than failing to create it again.
    unstarted: BTreeMap<u32, VcpuFd>,
    faults: Arc<HostFaults>,
}

impl std::fmt::Debug for VcpuSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuSet")
            .field("states", &self.states())
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
            vcpus: BTreeMap::new(),
            closed: false,
            unstarted: BTreeMap::new(),
            faults: Arc::default(),
        }
    }

    /// Host faults to inject from now on (tests; see [`HostFaults`]).
    pub fn set_faults(&mut self, faults: Arc<HostFaults>) {
        self.faults = faults;
    }

    /// Creates vCPU `id` with CPUID, MSRs, FPU and LAPIC set up, without a thread (the boot
    /// path sets the first vCPU's registers before [`Self::spawn`]).
    pub fn create(&self, id: u32) -> Result<VcpuFd, vcpu::VcpuError> {
        self.faults
            .check(HostCall::KvmCreateVcpu)
            .map_err(|source| vcpu::VcpuError::CreateInjected { id, source })?;
        vcpu::create_vcpu(&self.vm, id, &self.supported_cpuid, self.topology)
    }

    /// Starts the thread of vCPU `id` (in [`VcpuState::Created`]).
    pub fn spawn(&mut self, id: u32, fd: VcpuFd) -> Result<(), vcpu::VcpuError> {
        if let Err(source) = self.faults.check(HostCall::VcpuThreadSpawn) {
            self.unstarted.insert(id, fd);
            return Err(vcpu::VcpuError::Thread { id, source });
        }
        match vcpu::spawn_vcpu(id, fd, self.io.clone(), self.exit.clone()) {
            Ok(handle) => {
                self.vcpus.insert(id, handle);
                Ok(())
            }
            Err((e, fd)) => {
                if let Some(fd) = fd {
                    self.unstarted.insert(id, fd);
                }
                Err(e)
            }
        }
    }

    /// Makes sure vCPU `id` has a thread, creating both if needed.
    pub fn ensure(&mut self, id: u32) -> Result<(), vcpu::VcpuError> {
        if self.closed {
            return Err(vcpu::VcpuError::Closed { id });
        }
        if !self.vcpus.contains_key(&id) {
            let fd = match self.unstarted.remove(&id) {
                Some(fd) => fd,
                None => self.create(id)?,
            };
            self.spawn(id, fd)?;
        }
        Ok(())
    }

    /// Lets vCPU `id` run (creating it if no spare was made ready). Does not wait: the
    /// thread enters `KVM_RUN` on its own, where the vCPU waits for the guest's INIT/SIPI.
    pub fn start(&mut self, id: u32) -> Result<(), vcpu::VcpuError> {
        self.ensure(id)?;
        if let Some(handle) = self.vcpus.get(&id) {
            handle.send(VcpuCommand::Run);
        }
        Ok(())
    }

    /// Asks vCPU `id` to leave `KVM_RUN` and park, without waiting.
    pub fn begin_park(&self, id: u32) {
        if let Some(handle) = self.vcpus.get(&id) {
            handle.send(VcpuCommand::Park);
        }
    }

    /// Parks vCPU `id`, waiting at most `timeout` for the acknowledgement.
    pub fn park(&self, id: u32, timeout: Duration) -> Result<(), VcpuWaitError> {
        match self.vcpus.get(&id) {
            Some(handle) => handle.request(VcpuCommand::Park, timeout),
            None => Ok(()),
        }
    }

    /// Pauses every running vCPU, waiting at most `timeout` in all. On expiry every vCPU is
    /// told to run again and the error names one that did not pause.
    pub fn pause_all(&self, timeout: Duration) -> Result<(), VcpuWaitError> {
        let running: Vec<&VcpuHandle> = self
            .vcpus
            .values()
            .filter(|h| h.state() == VcpuState::Running)
            .collect();
        for handle in &running {
            handle.send(VcpuCommand::Pause);
        }
        let deadline = Instant::now() + timeout;
        for handle in &running {
            if let Err(e) = handle.wait_for(
                VcpuState::Paused,
                deadline.saturating_duration_since(Instant::now()),
            ) {
                // Paused in part: run them all again. A Run replaces a Pause a stuck vCPU
                // has not taken yet, so none stays paused behind the caller's back.
                for h in &running {
                    h.send(VcpuCommand::Run);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Lets every paused vCPU run again, waiting at most `timeout` in all for them to
    /// acknowledge.
    pub fn resume_all(&self, timeout: Duration) -> Result<(), VcpuWaitError> {
        let paused: Vec<&VcpuHandle> = self
            .vcpus
            .values()
            .filter(|h| h.state() == VcpuState::Paused)
            .collect();
        for handle in &paused {
            handle.send(VcpuCommand::Run);
        }
        let deadline = Instant::now() + timeout;
        for handle in paused {
            handle.wait_for(
                VcpuState::Running,
                deadline.saturating_duration_since(Instant::now()),
            )?;
        }
        Ok(())
    }

    /// Ends every thread (the VM is ending), waiting at most `timeout` in all. Threads that
    /// do not end in time are left behind and named in the log.
    pub fn shutdown(&mut self, timeout: Duration) {
        self.closed = true;
        let handles = std::mem::take(&mut self.vcpus);
        for handle in handles.values() {
            handle.send(VcpuCommand::Exit);
        }
        let deadline = Instant::now() + timeout;
        for (id, handle) in handles {
            if let Err(e) = handle.exit(deadline.saturating_duration_since(Instant::now())) {
                tracing::error!(vcpu = id, "vCPU thread left behind: {e}");
            }
        }
    }

    /// The state of every vCPU that has a thread.
    pub fn states(&self) -> BTreeMap<u32, VcpuState> {
        self.vcpus.iter().map(|(&id, h)| (id, h.state())).collect()
    }
}

impl Drop for VcpuSet {
    /// A set dropped without [`VcpuSet::shutdown`] (a VM whose building failed half-way)
    /// still ends its threads, within the usual bound.
    fn drop(&mut self) {
        if !self.closed {
            self.shutdown(VCPU_ACK_TIMEOUT);
        }
    }
}

/// How many vCPUs beyond the boot ones get their KVM vCPU and thread at start, ready for a
/// hot-add. Made before the boot vCPUs run: creating a vCPU while the guest boots moves
/// KVM's TSC and clock bookkeeping under it (in the nested test bed, boots then stalled or
/// reset during TSC calibration). A hot-add beyond the spares creates its vCPU itself, as
/// a hot-add did before spares existed, at about half a millisecond more.
pub const SPARE_VCPUS: u32 = 8;

/// A CPU's part of a transaction.
type CpuOp = KindOp<CpuKind>;

fn locked<R>(
    set: &Mutex<VcpuSet>,
    f: impl FnOnce(&mut VcpuSet) -> Result<R, ParticipantError>,
) -> Result<R, ParticipantError> {
    let mut guard = set
        .lock()
        .map_err(|_| ParticipantError::new("vCPU set lock poisoned"))?;
    f(&mut guard)
}

/// What the CPU participants work on, for [`register`].
pub struct CpuParts {
    /// The CPU hotplug controller the guest's AML reads.
    pub controller: Arc<CpuHotplugController>,
    /// The GED whose CPU event tells the guest to scan the controller.
    pub ged: Arc<Ged>,
    /// The vCPU threads; `None` where there is no KVM (the fuzz rig), which leaves the
    /// controller alone to carry CPU hotplugs.
    pub vcpus: Option<Arc<Mutex<VcpuSet>>>,
}

/// Registers the CPU participants with `engine`: `cpu-controller` (ACPI bus order) and,
/// given vCPUs, `vcpus` (CPU order). The controller carries out the engine's guest-eject
/// policy at the guest's `_EJ0`.
pub fn register(engine: &mut Engine, parts: CpuParts) -> Result<(), hotplug::Error> {
    let guest_eject = engine.config().guest_eject;
    engine.register_for::<CpuKind>(
        "cpu-controller",
        Orders::standard(Role::AcpiBus),
        CpuControllerParticipant::new(parts.controller, parts.ged, guest_eject),
    )?;
    if let Some(vcpus) = parts.vcpus {
        engine.register_for::<CpuKind>(
            "vcpus",
            Orders::standard(Role::Cpu),
            VcpuParticipant::new(vcpus),
        )?;
    }
    Ok(())
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

impl DeviceParticipant<CpuKind> for VcpuParticipant {
    fn prepare(&mut self, op: &CpuOp) -> Result<(), ParticipantError> {
        if op.direction != Direction::Add {
            return Ok(());
        }
        let id = op.id.0;
        locked(&self.set, |set| {
            match set.states().get(&id) {
                Some(VcpuState::Running | VcpuState::Paused) => {
                    return Err(ParticipantError::new(format!(
                        "vCPU {id} is already running"
                    )))
                }
                // A park the guest asked for must have ended before the vCPU runs again.
                Some(VcpuState::Parked | VcpuState::Created | VcpuState::Exited) | None => {}
            }
            set.start(id)
                .map_err(|e| ParticipantError::with_source(format!("cannot start vCPU {id}"), e))
        })
    }

    fn rollback_prepare(&mut self, op: &CpuOp) -> Result<(), ParticipantError> {
        let id = op.id.0;
        locked(&self.set, |set| match op.direction {
            Direction::Add => set
                .park(id, VCPU_ACK_TIMEOUT)
                .map_err(|e| ParticipantError::with_source(format!("cannot park vCPU {id}"), e)),
            // The guest may have ejected the CPU (and its thread begun parking) before the
            // removal was rolled back: the controller offers the CPU again, so it must run.
            Direction::Remove => {
                if matches!(
                    set.states().get(&id),
                    Some(VcpuState::Parked | VcpuState::Running)
                ) {
                    set.start(id).map_err(|e| {
                        ParticipantError::with_source(format!("cannot restart vCPU {id}"), e)
                    })?;
                }
                Ok(())
            }
        })
    }

    fn commit(&mut self, op: &CpuOp) -> Result<(), ParticipantError> {
        if op.direction != Direction::Remove {
            return Ok(());
        }
        let id = op.id.0;
        locked(&self.set, |set| {
            // Usually acknowledged long ago: the park began at the guest's _EJ0.
            set.park(id, VCPU_ACK_TIMEOUT)
                .map_err(|e| ParticipantError::with_source(format!("vCPU {id} did not park"), e))?;
            tracing::info!(vcpu = id, "vCPU parked");
            Ok(())
        })
    }
}

/// What the guest sees of a CPU: the controller's bits and the GED interrupt.
#[derive(Debug)]
pub struct CpuControllerParticipant {
    slots: SlotPublisher<CpuLayout>,
}

impl CpuControllerParticipant {
    /// A participant publishing through `controller` and `ged`, which carries out the
    /// engine's `guest_eject` policy at the guest's `_EJ0`.
    pub fn new(
        controller: Arc<CpuHotplugController>,
        ged: Arc<Ged>,
        guest_eject: GuestEjectPolicy,
    ) -> Self {
        controller.set_guest_eject(guest_eject == GuestEjectPolicy::Allow);
        CpuControllerParticipant {
            slots: SlotPublisher::new(controller, ged, GedEvent::Cpu, DeviceId::cpu),
        }
    }
}

impl DeviceParticipant<CpuKind> for CpuControllerParticipant {
    fn validate(&self, op: &CpuOp) -> Result<(), ParticipantError> {
        let id = op.id.0;
        let slot = self
            .slots
            .controller()
            .slot(id)
            .ok_or_else(|| ParticipantError::new(format!("CPU {id} is beyond max")))?;
        match op.direction {
            Direction::Add if slot.enabled => Err(ParticipantError::new(format!(
                "CPU {id} is still present in the controller"
            ))),
            Direction::Remove if !slot.enabled && op.origin == Origin::Host => Err(
                ParticipantError::new(format!("CPU {id} is not present in the controller")),
            ),
            _ => Ok(()),
        }
    }

    fn publish(&mut self, op: &CpuOp) -> Result<(), ParticipantError> {
        // A guest-initiated eject has nothing to tell the guest.
        if op.origin == Origin::Guest {
            return Ok(());
        }
        let id = op.id.0;
        match op.direction {
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

    fn rollback_publish(&mut self, op: &CpuOp) -> Result<(), ParticipantError> {
        if op.origin == Origin::Guest {
            return Ok(());
        }
        let id = op.id.0;
        match op.direction {
            // Withdrawn: the CPU reads absent again; a guest that scans later finds nothing.
            Direction::Add => self
                .slots
                .update(id, |s| *s = devices::HotplugSlotState::default()),
            Direction::Remove => self.slots.withdraw_removal(id),
        }
    }

    fn commit(&mut self, op: &CpuOp) -> Result<(), ParticipantError> {
        let id = op.id.0;
        match op.direction {
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
    use hotplug::{Clock, CpuId as HpCpu, TxId};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn op(direction: Direction, id: u32) -> CpuOp {
        KindOp {
            tx: TxId(1),
            id: HpCpu(id),
            direction,
            origin: Origin::Host,
            detail: (),
        }
    }

    #[test]
    fn controller_participant_publishes_and_withdraws() {
        let ctl = Arc::new(CpuHotplugController::for_cpus(1, 4));
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let ged = Arc::new(Ged::new(irq.try_clone().unwrap()));
        let mut p = CpuControllerParticipant::new(ctl.clone(), ged.clone(), GuestEjectPolicy::Deny);

        let add = op(Direction::Add, 2);
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

        let remove = op(Direction::Remove, 0);
        p.publish(&remove).unwrap();
        assert!(ctl.slot(0).unwrap().removing && ctl.slot(0).unwrap().eject_allowed);
        p.rollback_publish(&remove).unwrap();
        let s = ctl.slot(0).unwrap();
        assert!(s.enabled && !s.removing && !s.eject_allowed);

        assert!(p.validate(&op(Direction::Add, 9)).is_err());
        let _ = hotplug::MonotonicClock::new().now();
    }
}
