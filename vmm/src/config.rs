//! plugvm's configuration: the command line, parsed into a [`Command`], and its checks.
//!
//! Two kinds of errors, two exit codes:
//!
//! * [`UsageError`] (exit code 2, or 0 for `--help`/`--version`): the command line itself is
//!   wrong. Found by [`parse_args`] without touching the host.
//! * [`ConfigError`] (exit code 1): the command line is well formed, but this host cannot
//!   run it. Found by [`VmConfig::validate_host`] (pure, against [`HostLimits`]) and
//!   [`VmConfig::validate_files`] (kernel, initramfs, serial file, sockets).
//!
//! ```
//! use vmm::config::{parse_args, Command, HostLimits};
//!
//! let cmd = parse_args(["plugvm", "--kernel", "/boot/vmlinuz", "--cpus", "boot=2,max=4"]).unwrap();
//! let Command::Run(config) = cmd else { unreachable!() };
//! assert_eq!((config.cpus.boot, config.cpus.max), (2, 4));
//! assert_eq!(config.memory.size, 512 << 20);
//! let host = HostLimits { max_vcpus: 1024, host_memory: 8 << 30, huge_pages: Default::default() };
//! assert!(config.validate_host(&host).is_ok());
//!
//! let err = parse_args(["plugvm", "--kernel", "k", "--cpus", "boot=4,max=2"]).unwrap_err();
//! assert_eq!(err.to_string(), "plugvm: --cpus: boot=4 exceeds max=2");
//! assert_eq!(err.exit_code(), 2);
//! ```
//!
//! Each option has its own module (`cpus`, `memory`, `serial`), with its own error type
//! and tests; `size` and `options` hold the shared syntax; `host` the host checks.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::Parser;

mod cpus;
mod event_monitor;
mod host;
mod kernel_cache;
mod memory;
mod options;
mod serial;

pub use cpus::{CpusConfig, CpusError, PLUGVM_MAX_VCPUS};
pub use event_monitor::{EventMonitorConfig, EventMonitorError};
pub use host::{ConfigError, FileRole, HostLimits, HugePages};
pub use kernel_cache::KernelCacheConfig;
pub use memory::{
    MemoryConfig, MemoryError, DEFAULT_HOTPLUG_SLOTS, DEFAULT_MEMORY_SIZE, HOTPLUG_BLOCK_SIZE,
    MAX_HOTPLUG_SLOTS, MEMORY_ALIGNMENT, MIN_MEMORY,
};
pub use options::OptionsError;
pub(crate) use serial::check_socket_path;
pub use serial::{SerialConfig, SerialError, SocketPathError, MAX_SOCKET_PATH_LEN};
// The size syntax is shared with `plugvm-remote`, whose crate defines it.
pub use plugvm_remote::size::{parse_size, ApproxSize, ByteSize, SizeError, GIB, KIB, MIB, TIB};

/// The kernel command line when `--cmdline` is not given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1 pci=off";

/// The longest kernel command line accepted: x86's `COMMAND_LINE_SIZE` (2048) less the NUL.
/// The loader may find the kernel's own `cmdline_size` smaller.
pub const MAX_CMDLINE_LEN: usize = 2047;

/// The kernel to boot and what to pass it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PayloadConfig {
    /// `--kernel`: a bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// `--initramfs`.
    pub initramfs: Option<PathBuf>,
    /// `--cmdline`: printable ASCII, at most [`MAX_CMDLINE_LEN`] bytes.
    pub cmdline: String,
}

/// Everything needed to build the VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct VmConfig {
    /// `--cpus`.
    pub cpus: CpusConfig,
    /// `--memory`.
    pub memory: MemoryConfig,
    /// `--kernel`, `--initramfs`, `--cmdline`; `None` for [`Command::DumpAcpiTables`] without
    /// `--kernel`, and for an API-first launch (`--api-socket` alone: `vm.create` brings the
    /// VM's configuration).
    pub payload: Option<PayloadConfig>,
    /// `--serial`.
    pub serial: SerialConfig,
    /// `--api-socket`: where to serve the HTTP API, if anywhere.
    pub api_socket: Option<PathBuf>,
    /// `--guest-eject`: whether the guest may give a device back by itself.
    pub guest_eject: hotplug::GuestEjectPolicy,
    /// `--event-monitor`: where events go in Cloud Hypervisor's format, if anywhere.
    pub event_monitor: Option<EventMonitorConfig>,
    /// `--kernel-cache`: where a bzImage's extracted vmlinux is kept, or `off`. The VMM's
    /// setting, applied to `vm.create` too.
    pub kernel_cache: KernelCacheConfig,
    /// `--inject-fault` (for tests): host calls of hotplugs that fail, once each.
    #[serde(skip)]
    pub inject_faults: Vec<crate::host_faults::HostCall>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Boot and run the VM when `payload` is `Some`; with `payload` `None` (an API-first
    /// launch, `api_socket` is then `Some`), serve the API and wait for `vm.create`.
    Run(VmConfig),
    /// Write the ACPI tables the VM would get (DSDT.dat, APIC.dat, FACP.dat...) into `dir`,
    /// then exit. `config.payload` is `None` unless `--kernel` was given too.
    DumpAcpiTables {
        /// The VM the tables describe.
        config: VmConfig,
        /// `--dump-acpi-tables DIR`.
        dir: PathBuf,
    },
}

/// A command line: what to do, and where the VMM's own log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// What to do.
    pub command: Command,
    /// `--log-file`, `--log-format`: the VMM's options, whatever the command.
    pub log: crate::logging::LogConfig,
}

/// A command line that cannot be run as given: print it and exit with [`exit_code`].
///
/// `Display` is one line starting with `plugvm: ` for real errors, naming the flag and the
/// value; for [`Help`](UsageError::Help) and [`Version`](UsageError::Version) it is the
/// text to print on stdout. [`report`](UsageError::report) prints either to the right stream.
///
/// [`exit_code`]: UsageError::exit_code
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// `--help`: the help text (exit code 0).
    #[error("{0}")]
    Help(String),
    /// `--version`: the version line (exit code 0).
    #[error("{0}")]
    Version(String),
    /// Rejected by the argument parser itself: an unknown flag, a missing or repeated value,
    /// a value that is not UTF-8 where text is needed...
    #[error("plugvm: {}", clap_one_line(.0))]
    Syntax(clap::Error),
    /// None of `--kernel`, `--api-socket` and `--dump-acpi-tables`.
    #[error("plugvm: --kernel PATH is required (unless --api-socket PATH is given, to create the VM through the API, or --dump-acpi-tables DIR)")]
    MissingKernel,
    /// A VM option (`--initramfs`, `--cmdline`, `--cpus`, `--memory`, `--serial`) without
    /// `--kernel`.
    #[error("plugvm: {0} needs --kernel")]
    RequiresKernel(&'static str),
    /// A bad `--cpus`.
    #[error("plugvm: --cpus: {}", one_line(.0))]
    Cpus(#[from] CpusError),
    /// A bad `--memory`.
    #[error("plugvm: --memory: {}", one_line(.0))]
    Memory(#[from] MemoryError),
    /// A bad `--serial`.
    #[error("plugvm: --serial: {}", one_line(.0))]
    Serial(#[from] SerialError),
    /// A bad `--event-monitor`.
    #[error("plugvm: --event-monitor: {}", one_line(.0))]
    EventMonitor(#[from] EventMonitorError),
    /// An `--api-socket` path too long for a Unix socket.
    #[error("plugvm: --api-socket: {}", one_line(.0))]
    ApiSocket(#[source] SocketPathError),
    /// A text option (`--cpus`, `--memory`, `--cmdline`) that is not valid UTF-8.
    #[error("plugvm: {flag}: {} is not valid UTF-8", one_line(format_args!("{value:?}")))]
    NotUtf8 {
        /// The option.
        flag: &'static str,
        /// Its value, with invalid bytes replaced by U+FFFD.
        value: String,
    },
    /// A `--cmdline` longer than [`MAX_CMDLINE_LEN`].
    #[error("plugvm: --cmdline: {len} bytes long; the limit is {MAX_CMDLINE_LEN}")]
    CmdlineTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A `--cmdline` with a character other than printable ASCII (the boot protocol's
    /// command line is ASCII; control characters such as newlines would split it).
    #[error("plugvm: --cmdline: invalid character {ch:?} at byte {index} (only printable ASCII is allowed)")]
    CmdlineInvalidChar {
        /// The character.
        ch: char,
        /// Its byte offset.
        index: usize,
    },
}

impl UsageError {
    /// 0 for `--help` and `--version`, 2 for every real usage error.
    pub fn exit_code(&self) -> i32 {
        if self.is_informational() {
            0
        } else {
            2
        }
    }

    /// Whether this is `--help`/`--version` output rather than an error.
    pub fn is_informational(&self) -> bool {
        matches!(self, UsageError::Help(_) | UsageError::Version(_))
    }

    /// Prints the message where it belongs: stdout for help and version, stderr (one line)
    /// for errors. The caller then exits with [`exit_code`](Self::exit_code).
    pub fn report(&self) {
        if self.is_informational() {
            let text = self.to_string();
            if text.ends_with('\n') {
                print!("{text}");
            } else {
                println!("{text}");
            }
        } else {
            eprintln!("{self}");
        }
    }
}

/// `text` with control characters (newlines, NULs, escapes) shown escaped, so that a message
/// quoting user input stays on one line and cannot drive the terminal.
pub(crate) fn one_line(text: impl std::fmt::Display) -> String {
    let text = text.to_string();
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One line for a clap error: clap's own message without its `error: ` prefix, tips and
/// usage (clap's rendering spans several lines), plus the argument it suggests, if any.
fn clap_one_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let message = rendered.split("\n\n").next().unwrap_or_default().trim();
    let message = message.strip_prefix("error: ").unwrap_or(message);
    let message = if message.is_empty() {
        "invalid arguments"
    } else {
        message
    };
    let mut line = match (err.kind(), err.get(ContextKind::InvalidArg)) {
        // The one message quoting raw user input, which may contain blank lines itself.
        (ErrorKind::UnknownArgument, Some(ContextValue::String(arg))) => {
            format!("unexpected argument '{}' found", one_line(arg))
        }
        _ => one_line(message.replace("\n  ", " ")),
    };
    if let Some(ContextValue::String(arg)) = err.get(ContextKind::SuggestedArg) {
        line.push_str(&format!(" (did you mean '{arg}'?)"));
    }
    if err.kind() == ErrorKind::UnknownArgument {
        line.push_str("; see 'plugvm --help'");
    }
    line
}

/// The command line as clap sees it. Option values are checked after clap, in
/// [`parse_args`], so that each error has its own [`UsageError`] variant.
#[derive(Debug, Parser)]
#[command(
    name = "plugvm",
    bin_name = "plugvm",
    version,
    about = "A KVM microVM monitor with CPU and memory hotplug",
    override_usage = "plugvm --kernel PATH [OPTIONS]\n       plugvm --api-socket PATH [--guest-eject deny|allow] [--kernel-cache DIR|off] [--log-file FILE] [--log-format text|json]\n       plugvm --dump-acpi-tables DIR [OPTIONS]"
)]
struct Cli {
    /// Linux kernel image (bzImage or ELF vmlinux). Required unless --dump-acpi-tables is given
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,

    /// Initial ramdisk loaded for the kernel
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,

    /// Kernel command line [default: "console=ttyS0 panic=-1 pci=off"]
    #[arg(long, value_name = "STR")]
    cmdline: Option<OsString>,

    /// vCPUs at boot and the most that can be hotplugged (max defaults to boot) [default: boot=1]
    #[arg(long, value_name = "boot=N[,max=M]")]
    cpus: Option<OsString>,

    /// Boot RAM (a multiple of 1M, at least 64M) and hotplug area (a multiple of 128M; 8 slots
    /// by default). SIZE: bytes, or a K/M/G/T suffix (powers of 1024; KiB... also accepted) [default: size=512M]
    #[arg(
        long,
        value_name = "size=SIZE[,hotplug_size=SIZE][,hotplug_slots=N][,thp=on|off][,hugepages=on|off]"
    )]
    memory: Option<OsString>,

    /// Where the guest's serial console (ttyS0) goes [default: stdio]
    #[arg(long, value_name = "stdio|file=PATH|socket=PATH|null")]
    serial: Option<OsString>,

    /// Serve the HTTP API on this Unix socket (`path=PATH`, Cloud Hypervisor's form, also works).
    /// Alone, without --kernel, plugvm waits for vm.create and vm.boot
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,

    /// Whether the guest may give a CPU or memory slot back by itself (an OSPM-initiated
    /// eject): deny keeps the device and offers it again; allow releases its host resources
    #[arg(long, value_enum, value_name = "deny|allow", default_value = "deny")]
    guest_eject: GuestEject,

    /// Write every event (hotplug phases, the guest's answers, the VM's lifecycle) in Cloud
    /// Hypervisor's event-monitor format to a file or an inherited descriptor
    #[arg(long, value_name = "path=FILE|fd=N")]
    event_monitor: Option<OsString>,

    /// Extract the ELF vmlinux from a bzImage once on the host and keep it in DIR, keyed by the
    /// bzImage's SHA-256, so that the guest does not decompress itself at every boot; off boots
    /// the bzImage as it is [default: $XDG_CACHE_HOME/plugvm/kernels or
    /// $HOME/.cache/plugvm/kernels]
    #[arg(long, value_name = "DIR|off")]
    kernel_cache: Option<PathBuf>,

    /// Write the VM's ACPI tables (DSDT.dat, APIC.dat, FACP.dat, ...) into DIR and exit
    /// without booting
    #[arg(long, value_name = "DIR")]
    dump_acpi_tables: Option<PathBuf>,

    /// Append the VMM's log to FILE (created if need be) instead of standard error. RUST_LOG
    /// filters it (default: warn)
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,

    /// The log's format: text lines, or one JSON object per line (a hotplug transaction's
    /// lines carry its span, tx{id, kind})
    #[arg(long, value_enum, value_name = "text|json", default_value = "text")]
    log_format: crate::logging::LogFormat,

    /// For tests: make this host call of a hotplug fail the first time it is made (repeatable)
    #[arg(long, value_enum, value_name = "CALL", hide = true)]
    inject_fault: Vec<crate::host_faults::HostCall>,
}

/// `--guest-eject` as clap sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum GuestEject {
    Deny,
    Allow,
}

impl From<GuestEject> for hotplug::GuestEjectPolicy {
    fn from(g: GuestEject) -> Self {
        match g {
            GuestEject::Deny => hotplug::GuestEjectPolicy::Deny,
            GuestEject::Allow => hotplug::GuestEjectPolicy::Allow,
        }
    }
}

/// Parses the command line (`args` includes argv\[0\], which is ignored) into what to do;
/// [`parse_invocation`] also gives the log's options.
///
/// Everything that can be checked without the host is checked here; see the module docs for
/// what comes later. Never panics, whatever the input.
pub fn parse_args<I, T>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    parse_invocation(args).map(|i| i.command)
}

/// Parses the command line like [`parse_args`], with the VMM's own options (the log's).
pub fn parse_invocation<I, T>(args: I) -> Result<Invocation, UsageError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|err| match err.kind() {
        ErrorKind::DisplayHelp => UsageError::Help(err.render().to_string()),
        ErrorKind::DisplayVersion => UsageError::Version(err.render().to_string()),
        _ => UsageError::Syntax(err),
    })?;

    // Without --kernel there is no VM to describe (API-first launch): VM options given then
    // would be ignored, so they are refused instead.
    let vm_options_need_kernel = cli.kernel.is_none() && cli.dump_acpi_tables.is_none();
    for (flag, given) in [
        ("--cpus", cli.cpus.is_some()),
        ("--memory", cli.memory.is_some()),
        ("--serial", cli.serial.is_some()),
    ] {
        if given && vm_options_need_kernel {
            return Err(UsageError::RequiresKernel(flag));
        }
    }
    let cpus = CpusConfig::parse(&utf8(
        "--cpus",
        cli.cpus.unwrap_or_else(|| "boot=1".into()),
    )?)?;
    let memory = MemoryConfig::parse(&utf8(
        "--memory",
        cli.memory.unwrap_or_else(|| "size=512M".into()),
    )?)?;
    let serial = SerialConfig::parse(&cli.serial.unwrap_or_else(|| "stdio".into()))?;
    // Cloud Hypervisor's own syntax, `--api-socket path=PATH`, means the same.
    let api_socket = cli.api_socket.map(|p| {
        use std::os::unix::ffi::OsStrExt;
        match p.as_os_str().as_bytes().strip_prefix(b"path=") {
            Some(rest) => PathBuf::from(std::ffi::OsStr::from_bytes(rest)),
            None => p,
        }
    });
    if let Some(path) = &api_socket {
        serial::check_socket_path(path).map_err(UsageError::ApiSocket)?;
    }
    let cmdline = cli.cmdline.map(|c| utf8("--cmdline", c)).transpose()?;
    if let Some(cmdline) = &cmdline {
        check_cmdline(cmdline)?;
    }

    let payload = match cli.kernel {
        Some(kernel) => Some(PayloadConfig {
            kernel,
            initramfs: cli.initramfs,
            cmdline: cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_owned()),
        }),
        None if cli.initramfs.is_some() => return Err(UsageError::RequiresKernel("--initramfs")),
        None if cmdline.is_some() => return Err(UsageError::RequiresKernel("--cmdline")),
        None if cli.dump_acpi_tables.is_none() && api_socket.is_none() => {
            return Err(UsageError::MissingKernel)
        }
        None => None,
    };

    // (clap refuses an empty --log-file.)
    let log = crate::logging::LogConfig {
        file: cli.log_file,
        format: cli.log_format,
    };

    let config = VmConfig {
        cpus,
        memory,
        payload,
        serial,
        api_socket,
        guest_eject: cli.guest_eject.into(),
        event_monitor: cli
            .event_monitor
            .map(|v| EventMonitorConfig::parse(&v))
            .transpose()?,
        kernel_cache: cli
            .kernel_cache
            .map_or_else(KernelCacheConfig::default, KernelCacheConfig::from_arg),
        inject_faults: cli.inject_fault,
    };
    let command = match cli.dump_acpi_tables {
        Some(dir) => Command::DumpAcpiTables { config, dir },
        None => Command::Run(config),
    };
    Ok(Invocation { command, log })
}

fn utf8(flag: &'static str, value: OsString) -> Result<String, UsageError> {
    value.into_string().map_err(|value| UsageError::NotUtf8 {
        flag,
        value: value.to_string_lossy().into_owned(),
    })
}

pub(crate) fn check_cmdline(cmdline: &str) -> Result<(), UsageError> {
    if let Some((index, ch)) = cmdline
        .char_indices()
        .find(|&(_, c)| !(' '..='~').contains(&c))
    {
        return Err(UsageError::CmdlineInvalidChar { ch, index });
    }
    if cmdline.len() > MAX_CMDLINE_LEN {
        return Err(UsageError::CmdlineTooLong { len: cmdline.len() });
    }
    Ok(())
}

impl Command {
    /// The VM configuration, whichever the command.
    pub fn config(&self) -> &VmConfig {
        match self {
            Command::Run(config) | Command::DumpAcpiTables { config, .. } => config,
        }
    }
}

#[cfg(test)]
mod tests;
