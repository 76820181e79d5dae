//! Tests of [`parse_args`]: defaults, every flag, every usage error, and a small fuzz loop.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use super::*;

fn parse(args: &[&str]) -> Result<Command, UsageError> {
    parse_args(std::iter::once("plugvm").chain(args.iter().copied()))
}

fn run_config(args: &[&str]) -> VmConfig {
    match parse(args) {
        Ok(Command::Run(config)) => config,
        other => panic!("{args:?}: {other:?}"),
    }
}

fn usage_error(args: &[&str]) -> UsageError {
    match parse(args) {
        Err(err) => err,
        Ok(cmd) => panic!("{args:?} parsed: {cmd:?}"),
    }
}

/// Every real usage error is one line, starts with `plugvm: ` and exits with 2.
fn assert_one_line(err: &UsageError) {
    let text = err.to_string();
    assert!(text.starts_with("plugvm: "), "{text:?}");
    assert!(!text.contains('\n'), "{text:?}");
    assert_eq!(err.exit_code(), 2, "{text}");
    assert!(!err.is_informational());
}

#[test]
fn defaults() {
    let config = run_config(&["--kernel", "/k"]);
    assert_eq!(
        config,
        VmConfig {
            cpus: CpusConfig { boot: 1, max: 1 },
            memory: MemoryConfig {
                size: 512 * MIB,
                hotplug_size: 0,
                hotplug_slots: 0,
                ..MemoryConfig::default()
            },
            payload: Some(PayloadConfig {
                kernel: "/k".into(),
                initramfs: None,
                cmdline: "console=ttyS0 panic=-1 pci=off".into(),
            }),
            serial: SerialConfig::Stdio,
            api_socket: None,
            guest_eject: hotplug::GuestEjectPolicy::Deny,
            event_monitor: None,
            kernel_cache: KernelCacheConfig::Default,
            inject_faults: Vec::new(),
        }
    );
    // The defaults of the command line and of the types agree.
    assert_eq!(config.cpus, CpusConfig::default());
    assert_eq!(config.memory, MemoryConfig::default());
    assert_eq!(config.serial, SerialConfig::default());
}

#[test]
fn every_flag() {
    let config = run_config(&[
        "--kernel",
        "/boot/vmlinuz",
        "--initramfs",
        "/boot/initrd.img",
        "--cmdline",
        "console=ttyS0 quiet",
        "--cpus",
        "max=8,boot=2",
        "--memory",
        "size=1G,hotplug_size=2G,hotplug_slots=4",
        "--serial",
        "file=/tmp/console.log",
        "--api-socket",
        "/run/plugvm.sock",
        "--kernel-cache",
        "/var/cache/k",
    ]);
    assert_eq!(
        config,
        VmConfig {
            cpus: CpusConfig { boot: 2, max: 8 },
            memory: MemoryConfig {
                size: GIB,
                hotplug_size: 2 * GIB,
                hotplug_slots: 4,
                ..MemoryConfig::default()
            },
            payload: Some(PayloadConfig {
                kernel: "/boot/vmlinuz".into(),
                initramfs: Some("/boot/initrd.img".into()),
                cmdline: "console=ttyS0 quiet".into(),
            }),
            serial: SerialConfig::File("/tmp/console.log".into()),
            api_socket: Some("/run/plugvm.sock".into()),
            guest_eject: hotplug::GuestEjectPolicy::Deny,
            event_monitor: None,
            kernel_cache: KernelCacheConfig::Dir("/var/cache/k".into()),
            inject_faults: Vec::new(),
        }
    );
    // `--flag=value` works as well as `--flag value`; order does not matter.
    let same = run_config(&[
        "--api-socket=/run/plugvm.sock",
        "--serial=file=/tmp/console.log",
        "--memory=hotplug_slots=4,hotplug_size=2G,size=1G",
        "--cpus=boot=2,max=8",
        "--cmdline=console=ttyS0 quiet",
        "--initramfs=/boot/initrd.img",
        "--kernel=/boot/vmlinuz",
        "--kernel-cache=/var/cache/k",
    ]);
    assert_eq!(same, config);
    // `off` turns extraction off; `./off` is a directory.
    let off = |v: &str| run_config(&["--kernel", "k", "--kernel-cache", v]).kernel_cache;
    assert_eq!(off("off"), KernelCacheConfig::Off);
    assert_eq!(off("./off"), KernelCacheConfig::Dir("./off".into()));
}

#[test]
fn empty_cmdline_is_allowed() {
    let config = run_config(&["--kernel", "k", "--cmdline", ""]);
    assert_eq!(config.payload.map(|p| p.cmdline), Some(String::new()));
}

#[test]
fn dump_acpi_tables() {
    let cmd = parse(&["--dump-acpi-tables", "/tmp/out", "--cpus", "boot=1,max=4"]);
    let Ok(Command::DumpAcpiTables { config, dir }) = cmd else {
        panic!("{cmd:?}");
    };
    assert_eq!(dir, PathBuf::from("/tmp/out"));
    assert_eq!(config.cpus, CpusConfig { boot: 1, max: 4 });
    assert_eq!(config.payload, None);

    // With a kernel too, the payload is kept (the tables do not depend on it).
    let cmd = parse(&["--dump-acpi-tables", "d", "--kernel", "k"]).expect("parses");
    assert!(matches!(&cmd, Command::DumpAcpiTables { .. }));
    assert_eq!(
        cmd.config().payload.as_ref().map(|p| p.kernel.clone()),
        Some("k".into())
    );
}

#[test]
fn help_and_version_exit_zero() {
    let help = usage_error(&["--help"]);
    assert!(matches!(help, UsageError::Help(_)));
    assert_eq!(help.exit_code(), 0);
    assert!(help.is_informational());
    let text = help.to_string();
    for flag in [
        "--kernel",
        "--initramfs",
        "--cmdline",
        "--cpus",
        "--memory",
        "--serial",
        "--api-socket",
        "--dump-acpi-tables",
        "--version",
        "console=ttyS0 panic=-1 pci=off",
        "boot=1",
        "size=512M",
    ] {
        assert!(text.contains(flag), "help lacks {flag}:\n{text}");
    }
    assert!(text.starts_with("A KVM microVM monitor"), "{text}");
    assert!(text.contains("Usage: plugvm"), "{text}");
    // -h too.
    assert!(matches!(usage_error(&["-h"]), UsageError::Help(_)));
    // Help wins over other errors after it.
    assert!(matches!(
        usage_error(&["--cpus", "boot=0", "--help"]),
        UsageError::Help(_)
    ));

    for flag in ["--version", "-V"] {
        let version = usage_error(&[flag]);
        assert!(matches!(version, UsageError::Version(_)));
        assert_eq!(version.exit_code(), 0);
        assert_eq!(
            version.to_string().trim_end(),
            format!("plugvm {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn api_first_launch_needs_only_the_api_socket() {
    let Command::Run(config) = parse_args(["plugvm", "--api-socket", "/tmp/p.sock"]).unwrap()
    else {
        panic!("not a run");
    };
    assert_eq!(config.payload, None);
    assert_eq!(config.api_socket, Some("/tmp/p.sock".into()));
    let Command::Run(config) = parse_args(["plugvm", "--api-socket", "path=/tmp/q.sock"]).unwrap()
    else {
        panic!("not a run");
    };
    assert_eq!(config.api_socket, Some("/tmp/q.sock".into()));
}

#[test]
fn log_options_are_the_vmms_with_or_without_a_kernel() {
    let invocation = |args: &[&str]| {
        parse_invocation(std::iter::once("plugvm").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    assert_eq!(
        invocation(&["--kernel", "/k"]).log,
        crate::logging::LogConfig::default()
    );
    for args in [
        &[
            "--api-socket",
            "/run/p.sock",
            "--log-file",
            "/var/log/p.log",
            "--log-format",
            "json",
        ][..],
        &[
            "--kernel",
            "/k",
            "--log-format=json",
            "--log-file=/var/log/p.log",
        ],
        &[
            "--dump-acpi-tables",
            "/tmp/t",
            "--log-file",
            "/var/log/p.log",
            "--log-format",
            "json",
        ],
    ] {
        let parsed = invocation(args);
        assert_eq!(
            parsed.log,
            crate::logging::LogConfig {
                file: Some("/var/log/p.log".into()),
                format: crate::logging::LogFormat::Json,
            },
            "{args:?}"
        );
        assert_eq!(parse(args).ok(), Some(parsed.command), "{args:?}");
    }
    for args in [
        &["--kernel", "/k", "--log-format", "xml"][..],
        &["--kernel", "/k", "--log-format", "JSON"],
        &["--kernel", "/k", "--log-file", ""],
        &["--kernel", "/k", "--log-file"],
    ] {
        assert_one_line(&usage_error(args));
    }
}

#[test]
fn missing_kernel() {
    let err = usage_error(&[]);
    assert!(matches!(err, UsageError::MissingKernel));
    assert_one_line(&err);
    assert_eq!(
        err.to_string(),
        "plugvm: --kernel PATH is required (unless --api-socket PATH is given, to create the VM through the API, or --dump-acpi-tables DIR)"
    );
    // Without --kernel, VM options would be ignored: they are refused.
    for flag in ["--cpus", "--memory", "--serial"] {
        let err = usage_error(&["--api-socket", "/tmp/p.sock", flag, "x"]);
        assert!(
            matches!(err, UsageError::RequiresKernel(f) if f == flag),
            "{err}"
        );
    }
    let err = usage_error(&["--cpus", "boot=2"]);
    assert!(matches!(err, UsageError::RequiresKernel("--cpus")), "{err}");
    let err = usage_error(&["--dump-acpi-tables", "d", "--initramfs", "i"]);
    assert!(matches!(err, UsageError::RequiresKernel("--initramfs")));
    assert_eq!(err.to_string(), "plugvm: --initramfs needs --kernel");
    let err = usage_error(&["--dump-acpi-tables", "d", "--cmdline", "quiet"]);
    assert!(matches!(err, UsageError::RequiresKernel("--cmdline")));
}

/// (arguments after `--kernel k`, the expected one-line message).
const OPTION_ERRORS: &[(&[&str], &str)] = &[
    (&["--cpus", "boot=4,max=2"], "plugvm: --cpus: boot=4 exceeds max=2"),
    (&["--cpus", "boot=0"], "plugvm: --cpus: boot=0: a VM needs at least one vCPU"),
    (&["--cpus", "max=0"], "plugvm: --cpus: max=0: a VM needs at least one vCPU"),
    (
        &["--cpus", "boot=two"],
        "plugvm: --cpus: boot=\"two\" is not a vCPU count (expected an integer from 1 to 4294967295)",
    ),
    (
        &["--cpus", "boot=1,foo=2"],
        "plugvm: --cpus: unknown key 'foo' (valid keys: boot, max)",
    ),
    (
        &["--cpus", "boot=1,boot=2"],
        "plugvm: --cpus: key 'boot' given more than once",
    ),
    (
        &["--cpus", "4"],
        "plugvm: --cpus: '4' is not of the form key=value (expected boot=N[,max=M])",
    ),
    (
        &["--cpus", ""],
        "plugvm: --cpus: empty value (expected boot=N[,max=M])",
    ),
    (
        &["--memory", "size=12Q"],
        "plugvm: --memory: size=12Q: unknown suffix 'Q' (expected K, M, G or T, optionally followed by iB)",
    ),
    (
        &["--memory", "size="],
        "plugvm: --memory: size=: empty size (expected a number of bytes with an optional K, M, G or T suffix)",
    ),
    (
        &["--memory", "size=-1"],
        "plugvm: --memory: size=-1: not a number (expected a number of bytes with an optional K, M, G or T suffix)",
    ),
    (
        &["--memory", "size=32M"],
        "plugvm: --memory: size=32 MiB is below the minimum of 64 MiB",
    ),
    (
        &["--memory", "size=100000K"],
        "plugvm: --memory: size=100000 KiB is not a multiple of 1 MiB",
    ),
    (
        &["--memory", "size=1G,hotplug_size=100M"],
        "plugvm: --memory: hotplug_size=100 MiB is not a multiple of the guest's memory block size (128 MiB)",
    ),
    (
        &["--memory", "size=1G,hotplug_slots=4"],
        "plugvm: --memory: hotplug_slots=4 needs a non-zero hotplug_size",
    ),
    (
        &["--memory", "hotplug_size=1G,hotplug_slots=65"],
        "plugvm: --memory: hotplug_slots=65 is out of range (expected 1 to 64)",
    ),
    (
        &["--memory", "size=1G,numa=on"],
        "plugvm: --memory: unknown key 'numa' (valid keys: size, hotplug_size, hotplug_slots, thp, hugepages)",
    ),
    (
        &["--serial", "tty"],
        "plugvm: --serial: unknown mode \"tty\" (expected stdio, null, file=PATH or socket=PATH)",
    ),
    (&["--serial", "file="], "plugvm: --serial: file= needs a path"),
    (&["--serial", "socket="], "plugvm: --serial: socket= needs a path"),
    (
        &["--cmdline", "console=ttyS0\nquiet"],
        "plugvm: --cmdline: invalid character '\\n' at byte 13 (only printable ASCII is allowed)",
    ),
    (
        &["--cmdline", "café"],
        "plugvm: --cmdline: invalid character 'é' at byte 3 (only printable ASCII is allowed)",
    ),
];

#[test]
fn option_errors() {
    for (args, want) in OPTION_ERRORS {
        let mut all = vec!["--kernel", "k"];
        all.extend_from_slice(args);
        let err = usage_error(&all);
        assert_one_line(&err);
        assert_eq!(err.to_string(), *want, "{args:?}");
    }
}

#[test]
fn option_error_variants() {
    let err = |args: &[&str]| {
        let mut all = vec!["--kernel", "k"];
        all.extend_from_slice(args);
        usage_error(&all)
    };
    assert!(matches!(
        err(&["--cpus", "boot=4,max=2"]),
        UsageError::Cpus(CpusError::BootExceedsMax { boot: 4, max: 2 })
    ));
    assert!(matches!(
        err(&["--memory", "size=12Q"]),
        UsageError::Memory(MemoryError::InvalidSize { key: "size", .. })
    ));
    assert!(matches!(
        err(&["--serial", "tty"]),
        UsageError::Serial(SerialError::UnknownMode(_))
    ));
    let long = format!("/{}", "s".repeat(MAX_SOCKET_PATH_LEN));
    let e = err(&["--api-socket", &long]);
    assert!(
        matches!(&e, UsageError::ApiSocket(SocketPathError { len, .. }) if *len == MAX_SOCKET_PATH_LEN + 1)
    );
    assert_one_line(&e);
    assert!(e.to_string().contains("at most 107"), "{e}");
    let e = err(&["--serial", &format!("socket={long}")]);
    assert!(matches!(e, UsageError::Serial(SerialError::SocketPath(_))));

    let cmdline = "x".repeat(MAX_CMDLINE_LEN);
    assert!(parse(&["--kernel", "k", "--cmdline", &cmdline]).is_ok());
    let cmdline = "x".repeat(MAX_CMDLINE_LEN + 1);
    let e = err(&["--cmdline", &cmdline]);
    assert!(matches!(e, UsageError::CmdlineTooLong { len: 2048 }));
    assert_eq!(
        e.to_string(),
        "plugvm: --cmdline: 2048 bytes long; the limit is 2047"
    );
}

#[test]
fn clap_errors_are_one_line() {
    let cases: &[(&[&str], ErrorKind, &str)] = &[
        (
            &["--kernel", "k", "--frobnicate"],
            ErrorKind::UnknownArgument,
            "plugvm: unexpected argument '--frobnicate' found; see 'plugvm --help'",
        ),
        (
            &["--kernal", "k"],
            ErrorKind::UnknownArgument,
            "plugvm: unexpected argument '--kernal' found (did you mean '--kernel'?); see 'plugvm --help'",
        ),
        (
            &["--kernel", "k", "extra"],
            ErrorKind::UnknownArgument,
            "plugvm: unexpected argument 'extra' found; see 'plugvm --help'",
        ),
        (
            &["--kernel"],
            ErrorKind::InvalidValue,
            "plugvm: a value is required for '--kernel <PATH>' but none was supplied",
        ),
        (
            &["--kernel", ""],
            ErrorKind::InvalidValue,
            "plugvm: a value is required for '--kernel <PATH>' but none was supplied",
        ),
        (
            &["--kernel", "a", "--kernel", "b"],
            ErrorKind::ArgumentConflict,
            "plugvm: the argument '--kernel <PATH>' cannot be used multiple times",
        ),
        (
            &["--kernel", "k", "--cpus", "boot=1", "--cpus", "boot=2"],
            ErrorKind::ArgumentConflict,
            "plugvm: the argument '--cpus <boot=N[,max=M]>' cannot be used multiple times",
        ),
    ];
    for (args, kind, want) in cases {
        let err = usage_error(args);
        let UsageError::Syntax(clap_err) = &err else {
            panic!("{args:?}: {err:?}");
        };
        assert_eq!(clap_err.kind(), *kind, "{args:?}");
        assert_one_line(&err);
        assert_eq!(err.to_string(), *want, "{args:?}");
    }
}

#[test]
fn control_characters_are_escaped() {
    let err = usage_error(&["--kernel", "k", "--serial", "x\ny"]);
    assert_one_line(&err);
    assert_eq!(
        err.to_string(),
        "plugvm: --serial: unknown mode \"x\\ny\" (expected stdio, null, file=PATH or socket=PATH)"
    );
    let err = usage_error(&["--kernel", "k", "--memory", "size=1\nG"]);
    assert_one_line(&err);
    assert!(err.to_string().contains("unknown suffix '\\nG'"), "{err}");
    let err = usage_error(&["--kernel", "k", "extra\n\nline"]);
    assert_one_line(&err);
    assert!(err.to_string().contains("'extra\\n\\nline'"), "{err}");
    assert_eq!(one_line("a\tb\u{1b}[31m"), "a\\tb\\u{1b}[31m");
}

#[test]
fn non_utf8_arguments() {
    let bad = OsString::from_vec(b"/tmp/\xff".to_vec());
    // Paths may be any bytes.
    let args = [
        OsString::from("plugvm"),
        "--kernel".into(),
        bad.clone(),
        "--serial".into(),
        OsString::from_vec(b"file=/tmp/\xff".to_vec()),
    ];
    let Ok(Command::Run(config)) = parse_args(args) else {
        panic!("non-UTF-8 paths rejected");
    };
    assert_eq!(
        config.payload.map(|p| p.kernel),
        Some(PathBuf::from(bad.clone()))
    );
    // Text options must be UTF-8: a one-line error, not a panic.
    for flag in ["--cpus", "--memory", "--cmdline"] {
        let args = [
            OsString::from("plugvm"),
            "--kernel".into(),
            "k".into(),
            flag.into(),
            bad.clone(),
        ];
        let err = parse_args(args).expect_err(flag);
        assert!(matches!(err, UsageError::NotUtf8 { .. }), "{flag}: {err:?}");
        assert_one_line(&err);
        assert_eq!(
            err.to_string(),
            format!("plugvm: {flag}: \"/tmp/\u{fffd}\" is not valid UTF-8")
        );
    }
}

/// xorshift64*: deterministic, dependency-free randomness for the fuzz loop.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    /// A string of fragments likely to reach every branch of the parsers.
    fn text(&mut self) -> String {
        const PIECES: &[&str] = &[
            "boot",
            "max",
            "size",
            "hotplug_size",
            "hotplug_slots",
            "file",
            "socket",
            "stdio",
            "null",
            "=",
            "=",
            ",",
            ",",
            "0",
            "1",
            "4",
            "64",
            "128",
            "254",
            "255",
            "4294967296",
            "18446744073709551616",
            "K",
            "M",
            "G",
            "T",
            "iB",
            "Q",
            "-",
            "+",
            " ",
            ".",
            "é",
            "\n",
            "\u{0}",
            "/tmp/x",
            "",
        ];
        let n = self.below(8);
        (0..n).map(|_| self.pick(PIECES)).collect()
    }
}

#[test]
fn fuzz_parsers_never_panic_and_keep_invariants() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let text = rng.text();
        let _ = parse_size(&text);
        if let Ok(cpus) = CpusConfig::parse(&text) {
            assert!(1 <= cpus.boot && cpus.boot <= cpus.max, "{text:?}");
            assert_eq!(cpus.to_string().parse(), Ok(cpus));
        }
        if let Ok(mem) = MemoryConfig::parse(&text) {
            assert!(
                mem.size >= MIN_MEMORY && mem.size % MEMORY_ALIGNMENT == 0,
                "{text:?}"
            );
            assert_eq!(mem.hotplug_size % HOTPLUG_BLOCK_SIZE, 0, "{text:?}");
            assert_eq!(mem.hotplug_slots == 0, mem.hotplug_size == 0, "{text:?}");
            assert!(mem.hotplug_slots <= MAX_HOTPLUG_SLOTS);
            assert!(mem.size.checked_add(mem.hotplug_size).is_some());
            assert_eq!(mem.to_string().parse(), Ok(mem));
        }
        let _ = SerialConfig::parse(std::ffi::OsStr::new(&text));
    }
}

#[test]
fn fuzz_parse_args_never_panics_and_errors_are_one_line() {
    const FLAGS: &[&str] = &[
        "--kernel",
        "--initramfs",
        "--cmdline",
        "--cpus",
        "--memory",
        "--serial",
        "--api-socket",
        "--dump-acpi-tables",
        "--bogus",
        "-k",
        "--",
        "k",
    ];
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for _ in 0..3_000 {
        let mut args = vec!["plugvm".to_owned()];
        for _ in 0..rng.below(6) {
            let flag = rng.pick(FLAGS);
            if rng.below(3) == 0 {
                args.push(format!("{flag}={}", rng.text()));
            } else {
                args.push(flag.to_owned());
                args.push(rng.text());
            }
        }
        match parse_args(&args) {
            Ok(cmd) => {
                let config = cmd.config();
                assert!(config.cpus.boot <= config.cpus.max);
                if let Command::Run(config) = &cmd {
                    assert!(
                        config.payload.is_some() || config.api_socket.is_some(),
                        "{args:?}"
                    );
                }
            }
            Err(err) if err.is_informational() => {}
            Err(err) => assert_one_line(&err),
        }
    }
}
