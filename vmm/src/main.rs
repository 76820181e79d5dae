//! The `plugvm` binary.

use std::process::ExitCode;

use devices::ExitReason;
use vmm::config::{self, Command, HostLimits};
use vmm::control::{Vmm, VmmExit};
use vmm::vm;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only for a person at a terminal: logs kept in files are read by scripts.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("plugvm: {msg}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    init_logging();
    let command = match config::parse_args(std::env::args_os()) {
        Ok(c) => c,
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
    match command {
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
