//! vCPUs: creation with their CPUID/MSR/FPU/LAPIC state, and the thread that runs each one,
//! dispatching port and MMIO exits to the devices.
//!
//! A vCPU thread lives as long as the VM: KVM cannot destroy a vCPU, so a removed CPU's thread
//! is parked and runs again when the same id comes back (the `lifecycle` module has the states).

mod lifecycle;

use std::cell::Cell;
use std::sync::Arc;

use devices::{ExitReason, ExitSignal};
use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::arch::{self, CpuTopology, RegsError};

pub use lifecycle::{RunOutcome, VcpuCommand, VcpuHandle, VcpuRun, VcpuState, VcpuWaitError};

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
    /// `KVM_CREATE_VCPU` was made to fail (`--inject-fault kvm-create-vcpu`, tests).
    #[error("cannot create vCPU {id}: {source}")]
    CreateInjected {
        /// vCPU id.
        id: u32,
        /// The injected fault.
        source: std::io::Error,
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
    /// The VM is ending: no new vCPU.
    #[error("vCPU {id}: the VM is shutting down")]
    Closed {
        /// vCPU id.
        id: u32,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
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

/// Starts the thread of vCPU `id`, in [`VcpuState::Created`]: it enters `KVM_RUN` on
/// [`VcpuCommand::Run`]. If the thread cannot start, the vCPU's fd comes back with the error
/// (KVM cannot destroy a vCPU: the next start of `id` must reuse it).
pub fn spawn_vcpu(
    id: u32,
    fd: VcpuFd,
    io: Arc<IoManager>,
    exit: Arc<ExitSignal>,
) -> Result<VcpuHandle, (VcpuError, Option<VcpuFd>)> {
    VcpuHandle::spawn(id, KvmVcpu { id, fd, io, exit }, kick)
        .map_err(|(source, vcpu)| (VcpuError::Thread { id, source }, vcpu.map(|v| v.fd)))
}

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs, for the kick handler. Const-initialized
    /// and destructor-free, so reading it from a signal handler is async-signal-safe.
    static KVM_RUN: Cell<*mut kvm_bindings::kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is set by this thread's `KvmVcpu::attach` to its vCPU's
            // `kvm_run` mapping, which lives as long as the `VcpuFd` the thread owns, and is
            // cleared by `detach` before the fd is dropped. The handler runs on that thread.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the handler of the kick signal, so that it interrupts `KVM_RUN` instead of
/// killing the process. Call once before starting vCPU threads.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal)
}

fn kick(thread: &std::thread::JoinHandle<()>) {
    use std::os::unix::thread::JoinHandleExt;
    // SAFETY: the caller checked that the thread has not finished, and the handle is not
    // joined, so its pthread_t is valid; the kick signal has a handler installed.
    let rc = unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
    if rc != 0 {
        tracing::warn!(rc, "cannot kick a vCPU thread");
    }
}

/// A KVM vCPU and the devices its exits reach.
struct KvmVcpu {
    id: u32,
    fd: VcpuFd,
    io: Arc<IoManager>,
    exit: Arc<ExitSignal>,
}

impl VcpuRun for KvmVcpu {
    fn attach(&mut self) {
        let run: *mut kvm_bindings::kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|p| p.set(run));
    }

    fn run(&mut self) -> RunOutcome {
        run_once(self.id, &mut self.fd, &self.io, &self.exit)
    }

    fn clear_kick(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }

    fn detach(&mut self) {
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    }
}

fn run_once(id: u32, fd: &mut VcpuFd, io: &IoManager, exit: &ExitSignal) -> RunOutcome {
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
            return RunOutcome::Stop;
        }
        Ok(VcpuExit::SystemEvent(kind, _)) => {
            let reason = match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                _ => ExitReason::VcpuError,
            };
            tracing::info!(vcpu = id, kind, "system event");
            exit.request(reason);
            return RunOutcome::Stop;
        }
        Ok(VcpuExit::FailEntry(reason, cpu)) => {
            tracing::error!(vcpu = id, reason, cpu, "KVM entry failed");
            exit.request(ExitReason::VcpuError);
            return RunOutcome::Stop;
        }
        Ok(VcpuExit::InternalError) => {
            tracing::error!(vcpu = id, "KVM internal error (emulation failure)");
            exit.request(ExitReason::VcpuError);
            return RunOutcome::Stop;
        }
        Ok(other) => {
            tracing::warn!(vcpu = id, exit = ?other, "unexpected vCPU exit ignored");
        }
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            return RunOutcome::Kicked;
        }
        Err(e) => {
            tracing::error!(vcpu = id, "KVM_RUN failed: {e}");
            exit.request(ExitReason::VcpuError);
            return RunOutcome::Stop;
        }
    }
    RunOutcome::Continue
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// A real KVM vCPU spinning in `jmp $` (it never exits on its own) is pulled out of
    /// `KVM_RUN` by the kick for a pause and a park, and runs again after each.
    #[test]
    fn kick_pulls_a_spinning_vcpu_out_of_kvm_run() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("no /dev/kvm: skipped");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&[0xeb, 0xfe], GuestAddress(0x1000))
            .unwrap();
        crate::memory::register_memory_slots(&vm, &mem).unwrap();
        let fd = vm.create_vcpu(0).unwrap();
        let mut sregs = fd.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        fd.set_sregs(&sregs).unwrap();
        let regs = kvm_bindings::kvm_regs {
            rip: 0x1000,
            rflags: 2,
            ..Default::default()
        };
        fd.set_regs(&regs).unwrap();
        install_kick_handler().unwrap();
        let exit = Arc::new(ExitSignal::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let h = spawn_vcpu(0, fd, Arc::new(IoManager::new()), exit.clone())
            .map_err(|(e, _)| e)
            .unwrap();
        let ack = Duration::from_secs(5);
        h.request(VcpuCommand::Run, ack).unwrap();
        for command in [VcpuCommand::Pause, VcpuCommand::Park] {
            std::thread::sleep(Duration::from_millis(20));
            h.request(command, ack)
                .unwrap_or_else(|e| panic!("{command:?}: {e}"));
            h.request(VcpuCommand::Run, ack).unwrap();
        }
        assert_eq!(exit.reason(), None, "the guest did not stop the machine");
        h.exit(ack).unwrap();
    }
}
