//! vCPUs: creation with their CPUID/MSR/FPU/LAPIC state, and the thread that runs each one,
//! dispatching port and MMIO exits to the devices.
//!
//! A vCPU thread can be stopped (for a hot-remove) and hands its `VcpuFd` back, because KVM
//! cannot destroy a vCPU: a removed vCPU is parked and reused when the same id comes back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::{ExitReason, ExitSignal};
use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::arch::{self, CpuTopology, RegsError};

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Errors creating or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_CREATE_VCPU` failed.
    #[error("cannot create vCPU {id}: {source}")]
    Create {
        /// vCPU id.
        id: u32,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// `KVM_SET_CPUID2` failed.
    #[error("cannot set CPUID of vCPU {id}: {source}")]
    Cpuid {
        /// vCPU id.
        id: u32,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// Architectural setup failed.
    #[error("cannot set up vCPU {id}: {source}")]
    Setup {
        /// vCPU id.
        id: u32,
        /// Cause.
        source: RegsError,
    },
    /// The vCPU thread could not be started.
    #[error("cannot start the thread of vCPU {id}: {source}")]
    Thread {
        /// vCPU id.
        id: u32,
        /// Cause.
        source: std::io::Error,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

/// Installs the (empty) handler of the kick signal, so that it interrupts `KVM_RUN` instead
/// of killing the process. Call once before starting vCPU threads.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    register_signal_handler(kick_signal(), noop).map_err(VcpuError::Signal)
}

/// Creates vCPU `id` and sets up everything but the boot registers.
pub fn create_vcpu(
    vm: &VmFd,
    id: u32,
    supported_cpuid: &CpuId,
    topology: CpuTopology,
) -> Result<VcpuFd, VcpuError> {
    let fd = vm
        .create_vcpu(u64::from(id))
        .map_err(|source| VcpuError::Create { id, source })?;
    configure_vcpu(&fd, id, supported_cpuid, topology)?;
    Ok(fd)
}

/// Sets CPUID, MSRs, FPU and LAPIC of `fd`, which has APIC id `id`.
pub fn configure_vcpu(
    fd: &VcpuFd,
    id: u32,
    supported_cpuid: &CpuId,
    topology: CpuTopology,
) -> Result<(), VcpuError> {
    let cpuid = arch::cpuid_for_vcpu(supported_cpuid, id, topology);
    fd.set_cpuid2(&cpuid)
        .map_err(|source| VcpuError::Cpuid { id, source })?;
    let setup = |source| VcpuError::Setup { id, source };
    arch::setup_msrs(fd).map_err(setup)?;
    arch::setup_fpu(fd).map_err(setup)?;
    arch::setup_lint(fd).map_err(setup)?;
    Ok(())
}

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    id: u32,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<VcpuFd>,
}

impl VcpuHandle {
    /// The vCPU id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Stops the thread and returns the vCPU fd for parking.
    pub fn stop(self) -> Option<VcpuFd> {
        self.stop.store(true, Ordering::SeqCst);
        use std::os::unix::thread::JoinHandleExt;
        let pthread = self.thread.as_pthread_t();
        // Keep kicking until the thread notices: the signal may land just before KVM_RUN.
        // Spin briefly first (a halted vCPU leaves KVM_RUN within microseconds of the
        // signal), then back off so a stuck thread does not burn a core.
        let started = std::time::Instant::now();
        let mut last_kick: Option<std::time::Instant> = None;
        while !self.thread.is_finished() {
            if last_kick.is_none_or(|t| t.elapsed() >= std::time::Duration::from_micros(200)) {
                // SAFETY: the thread is alive (not finished and not joined), so its pthread_t
                // is valid; the kick signal has a no-op handler installed.
                unsafe { libc::pthread_kill(pthread, kick_signal()) };
                last_kick = Some(std::time::Instant::now());
            }
            if started.elapsed() < std::time::Duration::from_millis(5) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        self.thread.join().ok()
    }
}

/// Starts the thread that runs `fd` until the VM ends or [`VcpuHandle::stop`].
pub fn spawn_vcpu(
    id: u32,
    mut fd: VcpuFd,
    io: Arc<IoManager>,
    exit: Arc<ExitSignal>,
) -> Result<VcpuHandle, VcpuError> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            run_vcpu(id, &mut fd, &io, &exit, &thread_stop);
            fd
        })
        .map_err(|source| VcpuError::Thread { id, source })?;
    Ok(VcpuHandle { id, stop, thread })
}

fn run_vcpu(id: u32, fd: &mut VcpuFd, io: &IoManager, exit: &ExitSignal, stop: &AtomicBool) {
    tracing::debug!(vcpu = id, "vCPU thread started");
    while !stop.load(Ordering::SeqCst) {
        match fd.run() {
            // Accesses nothing claims read as zero and are dropped, as on an empty ISA bus.
            Ok(VcpuExit::IoIn(port, data)) => {
                if io.pio_read(PioAddress(port), data).is_err() {
                    tracing::trace!(vcpu = id, port, len = data.len(), "unclaimed port read");
                    data.fill(0);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if io.pio_write(PioAddress(port), data).is_err() {
                    tracing::trace!(vcpu = id, port, ?data, "unclaimed port write");
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if io.mmio_read(MmioAddress(addr), data).is_err() {
                    tracing::trace!(vcpu = id, addr, len = data.len(), "unclaimed MMIO read");
                    data.fill(0);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if io.mmio_write(MmioAddress(addr), data).is_err() {
                    tracing::trace!(vcpu = id, addr, ?data, "unclaimed MMIO write");
                }
            }
            Ok(VcpuExit::Hlt) => {}
            Ok(VcpuExit::Shutdown) => {
                // A triple fault resets a PC.
                tracing::info!(vcpu = id, "vCPU shut down (triple fault): machine reset");
                exit.request(ExitReason::Reset);
                break;
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                let reason = match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    _ => ExitReason::VcpuError,
                };
                tracing::info!(vcpu = id, kind, "system event");
                exit.request(reason);
                break;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                tracing::error!(vcpu = id, reason, cpu, "KVM entry failed");
                exit.request(ExitReason::VcpuError);
                break;
            }
            Ok(VcpuExit::InternalError) => {
                tracing::error!(vcpu = id, "KVM internal error (emulation failure)");
                exit.request(ExitReason::VcpuError);
                break;
            }
            Ok(other) => {
                tracing::warn!(vcpu = id, exit = ?other, "unexpected vCPU exit ignored");
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
            }
            Err(e) => {
                tracing::error!(vcpu = id, "KVM_RUN failed: {e}");
                exit.request(ExitReason::VcpuError);
                break;
            }
        }
    }
    tracing::debug!(vcpu = id, "vCPU thread stopped");
}
