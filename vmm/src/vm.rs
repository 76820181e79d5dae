//! Running a VM: the event loop that waits for the VM to end, and ending it within a bounded
//! time. [`crate::builder`] makes the [`Vm`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::{ExitReason, ExitSignal};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::epoll::EventSet;

use crate::api::{self, Responder};
use crate::arch;
use crate::boot::BootError;
use crate::config::VmConfig;
use crate::console::{ConsoleError, QueuedOutput, StdinRoute, TerminalGuard};
use crate::control::{ApiEndpoint, VmmLinks};
use crate::cpu_manager::VcpuSet;
use crate::hotplug_service::HotplugService;
use crate::memory::MemoryError;
use crate::memory_manager::{GuestMemoryMap, HotplugMemory};
use crate::request_handler::RequestHandler;
use crate::vcpu::VcpuError;

pub use crate::builder::{dump_acpi_tables, machine_description, memory_layout, open_kvm, Devices};

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm: {0}")]
    Kvm(kvm_ioctls::Error),
    /// A KVM VM-level ioctl failed.
    #[error("{0}: {1}")]
    KvmIoctl(&'static str, kvm_ioctls::Error),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the guest.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// ACPI tables.
    #[error("cannot build the ACPI tables: {0}")]
    Acpi(#[from] acpi::Error),
    /// vCPUs.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The serial console back end.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// An eventfd or the event loop.
    #[error("event loop: {0}")]
    EventLoop(String),
    /// Registering a device on the I/O buses.
    #[error("cannot register device {0}: {1:?}")]
    Bus(&'static str, vm_device::bus::Error),
    /// Boot setup of the first vCPU.
    #[error("cannot set up the boot vCPU: {0}")]
    BootRegs(#[from] arch::RegsError),
    /// The API server.
    #[error(transparent)]
    Api(#[from] api::ApiError),
    /// The hotplug region does not fit the guest's memory layout.
    #[error("hotplug region {base:#x}+{size:#x}: {why}")]
    HotplugRegion {
        /// Region base.
        base: u64,
        /// Region size.
        size: u64,
        /// What is wrong.
        why: String,
    },
    /// The hotplug engine refused its configuration.
    #[error("hotplug engine: {0}")]
    Hotplug(String),
    /// The VM config has no kernel.
    #[error("no kernel given")]
    NoKernel,
}

impl VmError {
    /// Whether the configuration is at fault (the kernel cannot be loaded, the memory layout
    /// does not fit) rather than the host: an API client gets 400 for these.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            VmError::Boot(_) | VmError::HotplugRegion { .. } | VmError::NoKernel
        )
    }
}

/// Wakes the event loop when a device asks the VM to end, or passes the VMM's end (a
/// termination signal) on to the VM.
struct ExitWatcher {
    watched: Arc<ExitSignal>,
    /// The VM's own exit, when `watched` is the VMM's.
    forward_to: Option<Arc<ExitSignal>>,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.watched.event().read();
        if let (Some(vm_exit), Some(reason)) = (&self.forward_to, self.watched.reason()) {
            vm_exit.request(reason);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.watched.event(), EventSet::IN)) {
            tracing::error!("cannot watch the exit event: {e:?}");
        }
    }
}

/// A running VM. Dropping it ends the VM ([`Vm::finish`]) before guest memory is unmapped.
pub struct Vm {
    /// The KVM VM.
    pub fd: Arc<VmFd>,
    /// Guest memory.
    pub memory: GuestMemoryMap,
    /// The hotplug region's memory, when there is one.
    pub hotplug_memory: Option<Arc<Mutex<HotplugMemory>>>,
    /// Devices.
    pub devices: Devices,
    /// vCPU threads.
    pub vcpus: Arc<Mutex<VcpuSet>>,
    pub(crate) hotplug: Arc<Mutex<HotplugService>>,
    pub(crate) requests: Option<Arc<Mutex<RequestHandler>>>,
    pub(crate) console: QueuedOutput,
    /// The VM's end.
    pub exit: Arc<ExitSignal>,
    /// The VMM's end (a termination signal), which ends the VM too.
    pub(crate) terminate: Arc<ExitSignal>,
    /// Standard input's route, when the serial port is `stdio`: cut at the VM's end.
    pub(crate) stdin: Option<StdinRoute>,
    pub(crate) finished: bool,
    pub(crate) terminal: TerminalGuard,
}

/// How long the VM's end may wait for vCPU threads to leave, in all.
const VCPU_EXIT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the VM's end may wait for the console's reader to take the last output.
const CONSOLE_DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

impl Vm {
    /// Builds the VM of `config` and starts its boot vCPUs (see [`crate::builder::build`]).
    pub fn start(
        kvm: &Kvm,
        config: &VmConfig,
        api: &mut Option<ApiEndpoint>,
        links: &VmmLinks,
    ) -> Result<Vm, VmError> {
        crate::builder::build(kvm, config, api, links)
    }

    /// Takes back the API endpoint after the VM has ended, with the answers the VM deferred
    /// to its end (`vm.shutdown`, `vm.delete`, `vmm.shutdown`).
    pub(crate) fn take_api(&mut self) -> Option<(ApiEndpoint, Vec<Responder>)> {
        self.finish();
        let requests = self.requests.take()?;
        let mut handler = requests.lock().ok()?;
        handler.take_endpoint()
    }

    /// Runs the event loop until a device, the API or a signal ends the VM, then ends it:
    /// see [`Self::finish`].
    pub fn run_until_exit(&mut self) -> Result<ExitReason, VmError> {
        let reason = self.run_loop();
        self.finish();
        reason
    }

    fn run_loop(&mut self) -> Result<ExitReason, VmError> {
        let mut em: EventManager<Box<dyn MutEventSubscriber + Send>> =
            EventManager::new().map_err(|e| VmError::EventLoop(format!("{e:?}")))?;
        em.add_subscriber(Box::new(ExitWatcher {
            watched: self.exit.clone(),
            forward_to: None,
        }));
        em.add_subscriber(Box::new(ExitWatcher {
            watched: self.terminate.clone(),
            forward_to: Some(self.exit.clone()),
        }));
        // A signal that came before the loop existed.
        if let Some(reason) = self.terminate.reason() {
            self.exit.request(reason);
        }
        em.add_subscriber(Box::new(self.hotplug.clone()));
        if let Some(requests) = &self.requests {
            em.add_subscriber(Box::new(requests.clone()));
        }
        loop {
            if let Some(reason) = self.exit.reason() {
                return Ok(reason);
            }
            em.run().map_err(|e| VmError::EventLoop(format!("{e:?}")))?;
        }
    }

    /// Ends the VM within a bounded time whatever state it is in: callers waiting for a
    /// transaction get 503, the vCPU threads leave (those that do not within
    /// `VCPU_EXIT_TIMEOUT` are left behind), the console gets its last output and the
    /// terminal is restored. Requests still queued stay queued: the VMM answers them once
    /// the VM has gone ([`crate::control`]). Idempotent.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let why = "the VM is shutting down";
        if let Ok(mut hotplug) = self.hotplug.lock() {
            hotplug.abandon_waiters(why);
        }
        match self.vcpus.lock() {
            Ok(mut set) => set.shutdown(VCPU_EXIT_TIMEOUT),
            Err(_) => tracing::error!("vCPU set lock poisoned; threads left running"),
        }
        if !self.console.drain(CONSOLE_DRAIN_TIMEOUT) {
            tracing::warn!("the console's reader did not take the last output");
        }
        if let Some(stdin) = &self.stdin {
            stdin.disconnect();
        }
        self.terminal.restore();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.finish();
    }
}
