//! The `plugvm` binary.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use devices::ExitReason;
use vmm::config::{self, Command, HostLimits};
use vmm::control::{Vmm, VmmExit};
use vmm::logging;
use vmm::vm;

/// Whether the log goes to `--log-file` rather than stderr.
static LOGS_TO_FILE: AtomicBool = AtomicBool::new(false);

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    // Kept in the log file too: whoever reads it learns why the VMM ended. (With the log on
    // stderr, the line below is all there is: errors stay one line.)
    if LOGS_TO_FILE.load(Ordering::Relaxed) {
        tracing::error!("{msg}");
    }
    eprintln!("plugvm: {msg}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let invocation = match config::parse_invocation(std::env::args_os()) {
        Ok(i) => i,
        Err(e) => {
            let code = e.exit_code();
            if code == 0 {
                print!("{e}");
                return ExitCode::SUCCESS;
            }
            eprintln!("{e}");
            return ExitCode::from(u8::try_from(code).unwrap_or(2));
        }
    };
    // After the command line is read: `--help` and usage errors create no log file.
    if let Err(e) = logging::init(&invocation.log) {
        eprintln!("plugvm: {e}");
        return ExitCode::from(1);
    }
    LOGS_TO_FILE.store(invocation.log.file.is_some(), Ordering::Relaxed);
    match invocation.command {
        Command::DumpAcpiTables { config, dir } => match vm::dump_acpi_tables(&config, &dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, e),
        },
        Command::Run(config) => {
            let kvm = match vm::open_kvm() {
                Ok(k) => k,
                Err(e) => return fail(1, e),
            };
            let host = HostLimits::probe(u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX));
            if let Err(e) = config.validate(&host) {
                return fail(1, e);
            }
            let vmm = match Vmm::new(&kvm, host, config) {
                Ok(vmm) => vmm,
                Err(e) => return fail(1, e),
            };
            match vmm.run() {
                Ok(exit) => {
                    let code = exit.exit_code();
                    match exit {
                        VmmExit::Requested => tracing::info!("the VMM was asked to end"),
                        VmmExit::Vm(reason) => report(reason, code),
                    }
                    ExitCode::from(u8::try_from(code).unwrap_or(1))
                }
                Err(e) => fail(1, e),
            }
        }
    }
}

fn report(reason: ExitReason, code: i32) {
    match reason {
        ExitReason::PowerOff
        | ExitReason::Shutdown
        | ExitReason::Delete
        | ExitReason::VmmShutdown
        | ExitReason::Signal(_) => tracing::info!("VM ended: {reason:?}"),
        ExitReason::Reset => eprintln!("plugvm: the guest reset the machine (exit code {code})"),
        ExitReason::GuestPanic => {
            eprintln!("plugvm: the guest kernel panicked (exit code {code})")
        }
        ExitReason::VcpuError => {
            eprintln!("plugvm: a vCPU stopped with an error (exit code {code})")
        }
    }
}
