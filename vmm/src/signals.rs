//! Termination signals: SIGTERM, SIGINT and SIGHUP end the VM the way `vm.shutdown` does, so
//! that waiting API clients get an answer, the API socket is removed and the terminal is
//! restored, as QEMU and Cloud Hypervisor do.

use std::sync::Arc;

use devices::{ExitReason, ExitSignal};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Starts the thread that turns a termination signal into a VM exit request.
pub fn watch_termination(exit: Arc<ExitSignal>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = match signal {
                    SIGTERM => "SIGTERM",
                    SIGINT => "SIGINT",
                    _ => "SIGHUP",
                };
                tracing::info!(signal = name, "terminating on signal");
                exit.request(ExitReason::Signal(signal));
            }
        })?;
    Ok(())
}
