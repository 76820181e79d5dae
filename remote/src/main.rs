//! `plugvm-remote`: control a running plugvm through its API socket.
//!
//! `plugvm-remote --api-socket PATH [--json] <COMMAND>`; see `--help`.
//! Exit codes: 0 on success, 1 when the server refuses or cannot be
//! reached (the reason goes to stderr), 2 for usage errors.

fn main() {
    std::process::exit(plugvm_remote::cli::run(std::env::args_os()));
}
