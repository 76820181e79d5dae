//! The `plugvm` binary's command line, run for real: exit codes and error messages.
//!
//! Exit codes: 0 for `--help`, `--version` and a successful `--dump-acpi-tables`; 2 for
//! command-line errors; 1 for runtime/host errors. Every error is one `plugvm: ` line on
//! stderr naming the flag or file and the bad value, and never a panic. No test boots Linux:
//! where a kernel must pass loading, [`write_tiny_elf_kernel`] stands in for one.

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use plugvm_remote::client;
use plugvm_tests::guest::guest_image;
use plugvm_tests::{
    assert_cli_error, corrupt_bzimage, kill_bounded, plugvm_api_first, plugvm_binary, run_plugvm,
    run_plugvm_with_timeout, run_with_timeout, write_tiny_elf_kernel, ScratchDir,
};

/// Runs plugvm and checks it failed with `code` and one line containing `needles`.
///
/// Scratch paths never contain the word "kernel", so a needle "kernel" must come from the
/// message itself.
fn fails(args: &[&str], code: i32, needles: &[&str]) -> String {
    assert_cli_error(&run_plugvm(args), code, needles)
}

/// [`fails`] for runs given a [`write_tiny_elf_kernel`] image, which a plugvm that misses the
/// expected error would start: a shorter timeout bounds that.
fn fails_with_tiny_kernel(args: &[&str], code: i32, needles: &[&str]) -> String {
    assert_cli_error(
        &run_plugvm_with_timeout(args, Duration::from_secs(10)),
        code,
        needles,
    )
}

fn text(path: &std::path::Path) -> &str {
    path.to_str().expect("scratch paths are UTF-8")
}

// --- informational -------------------------------------------------------------------------

#[test]
fn help_prints_usage_and_exits_0() {
    let out = run_plugvm(["--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    for needle in [
        "Usage: plugvm",
        "--kernel",
        "--initramfs",
        "--cmdline",
        "--cpus",
        "--memory",
        "--serial",
        "--api-socket",
        "--dump-acpi-tables",
        "--log-file",
        "--log-format",
    ] {
        assert!(stdout.contains(needle), "help lacks {needle}:\n{stdout}");
    }
}

#[test]
fn version_prints_one_line_and_exits_0() {
    let out = run_plugvm(["--version"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("plugvm {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert!(out.stderr.is_empty(), "{out:?}");
}

// --- command-line errors: exit code 2 --------------------------------------------------------

#[test]
fn no_kernel_is_a_usage_error() {
    fails(&[], 2, &["--kernel"]);
    fails(&["--cpus", "boot=2"], 2, &["--kernel"]);
}

#[test]
fn boot_above_max() {
    fails(
        &["--kernel", "k", "--cpus", "boot=4,max=2"],
        2,
        &["--cpus", "boot=4", "max=2"],
    );
}

#[test]
fn zero_cpus() {
    fails(
        &["--kernel", "k", "--cpus", "boot=0"],
        2,
        &["--cpus", "boot=0"],
    );
    fails(
        &["--kernel", "k", "--cpus", "max=0"],
        2,
        &["--cpus", "max=0"],
    );
}

#[test]
fn malformed_cpus() {
    fails(
        &["--kernel", "k", "--cpus", "boot=two"],
        2,
        &["--cpus", "two"],
    );
    fails(&["--kernel", "k", "--cpus", "4"], 2, &["--cpus", "'4'"]);
    fails(
        &["--kernel", "k", "--cpus", "boot=1,boot=2"],
        2,
        &["--cpus", "boot"],
    );
    fails(&["--kernel", "k", "--cpus", ""], 2, &["--cpus"]);
}

#[test]
fn memory_below_minimum() {
    fails(
        &["--kernel", "k", "--memory", "size=32M"],
        2,
        &["--memory", "size=32", "64 MiB"],
    );
}

#[test]
fn memory_not_aligned() {
    fails(
        &["--kernel", "k", "--memory", "size=100000K"],
        2,
        &["--memory", "1 MiB"],
    );
    fails(
        &["--kernel", "k", "--memory", "size=1G,hotplug_size=100M"],
        2,
        &["--memory", "hotplug_size", "128 MiB"],
    );
    fails(
        &["--kernel", "k", "--memory", "size=1G,hotplug_slots=4"],
        2,
        &["--memory", "hotplug_slots"],
    );
}

#[test]
fn malformed_sizes() {
    for value in [
        "size=12Q",
        "size=",
        "size=-1",
        "size=1.5G",
        "size=99999999999999T",
    ] {
        fails(
            &["--kernel", "k", "--memory", value],
            2,
            &["--memory", value],
        );
    }
}

#[test]
fn unknown_flags() {
    fails(&["--kernel", "k", "--frobnicate"], 2, &["--frobnicate"]);
    fails(&["--kernal", "k"], 2, &["--kernal", "--kernel"]);
    fails(&["--kernel", "k", "stray"], 2, &["stray"]);
    fails(&["--kernel", "k", "-x"], 2, &["-x"]);
}

#[test]
fn unknown_keys() {
    fails(
        &["--kernel", "k", "--cpus", "boot=1,sockets=2"],
        2,
        &["--cpus", "sockets"],
    );
    fails(
        &["--kernel", "k", "--memory", "size=1G,numa=1"],
        2,
        &["--memory", "numa"],
    );
}

#[test]
fn bad_serial() {
    fails(
        &["--kernel", "k", "--serial", "tty"],
        2,
        &["--serial", "tty"],
    );
    fails(
        &["--kernel", "k", "--serial", "file="],
        2,
        &["--serial", "file="],
    );
}

#[test]
fn repeated_and_valueless_flags() {
    fails(&["--kernel", "a", "--kernel", "b"], 2, &["--kernel"]);
    fails(&["--kernel"], 2, &["--kernel"]);
    fails(&["--kernel", "k", "--cmdline", "a\nb"], 2, &["--cmdline"]);
}

#[test]
fn bad_log_options() {
    let dir = ScratchDir::new("log-usage");
    let socket = dir.join("api.sock");
    let socket = text(&socket);
    fails(
        &["--api-socket", socket, "--log-format", "xml"],
        2,
        &["--log-format", "xml"],
    );
    fails(
        &["--api-socket", socket, "--log-format"],
        2,
        &["--log-format"],
    );
    fails(&["--api-socket", socket, "--log-file"], 2, &["--log-file"]);
    fails(
        &["--api-socket", socket, "--log-file", ""],
        2,
        &["--log-file", "none was supplied"],
    );
    fails(
        &["--kernel", "k", "--log-file", "a", "--log-file", "b"],
        2,
        &["--log-file"],
    );
    // A usage error creates no log file.
    let log = dir.join("vmm.log");
    fails(
        &["--log-file", text(&log), "--frobnicate"],
        2,
        &["--frobnicate"],
    );
    assert!(!log.exists());
}

// --- runtime and host errors: exit code 1 ----------------------------------------------------

#[test]
fn unopenable_log_file() {
    let dir = ScratchDir::new("log-open");
    let socket = dir.join("api.sock");
    let missing = dir.join("no-such-dir").join("vmm.log");
    fails(
        &["--api-socket", text(&socket), "--log-file", text(&missing)],
        1,
        &["--log-file", text(&missing), "No such file or directory"],
    );
    fails(
        &[
            "--api-socket",
            text(&socket),
            "--log-file",
            text(dir.path()),
        ],
        1,
        &["--log-file", text(dir.path()), "Is a directory"],
    );
    assert!(!socket.exists(), "the API was started before the log");
}

#[test]
fn missing_kernel_file() {
    let dir = ScratchDir::new("missing-image");
    let path = dir.join("no-such-image");
    fails(&["--kernel", text(&path)], 1, &["kernel", text(&path)]);
}

/// Tests run as root, so a mode-000 file is still readable: a directory and a dangling
/// symlink are what cannot be read as a kernel.
#[test]
fn unreadable_kernel_directory() {
    let dir = ScratchDir::new("dir-image");
    fails(
        &["--kernel", text(dir.path())],
        1,
        &["kernel", text(dir.path())],
    );
}

#[test]
fn unreadable_kernel_dangling_symlink() {
    let dir = ScratchDir::new("link-image");
    let link = dir.join("image-link");
    std::os::unix::fs::symlink(dir.join("gone"), &link).expect("symlink");
    fails(&["--kernel", text(&link)], 1, &["kernel", text(&link)]);
}

#[test]
fn kernel_that_is_not_a_kernel() {
    let dir = ScratchDir::new("text-image");
    let path = dir.write("notes.txt", "this is not a kernel image\n");
    fails(
        &["--kernel", text(&path), "--serial", "null"],
        1,
        &["kernel", text(&path)],
    );
}

#[test]
fn initramfs_larger_than_memory() {
    let dir = ScratchDir::new("big-initrd");
    let kernel = write_tiny_elf_kernel(&dir, "image");
    // Sparse: 256 MiB that take no disk space, for a 64 MiB guest.
    let initrd = dir.sparse_file("initrd", 256 << 20);
    fails_with_tiny_kernel(
        &[
            "--kernel",
            text(&kernel),
            "--initramfs",
            text(&initrd),
            "--memory",
            "size=64M",
            "--serial",
            "null",
        ],
        1,
        &["initramfs", text(&initrd), "does not fit"],
    );
}

#[test]
fn max_cpus_above_kvm_limit() {
    let dir = ScratchDir::new("many-cpus");
    let kernel = write_tiny_elf_kernel(&dir, "image");
    fails_with_tiny_kernel(
        &[
            "--kernel",
            text(&kernel),
            "--cpus",
            "boot=1,max=100000",
            "--serial",
            "null",
        ],
        1,
        &["--cpus", "max=100000", "254"],
    );
    // Above plugvm's own limit, even where KVM would allow it.
    fails_with_tiny_kernel(
        &[
            "--kernel",
            text(&kernel),
            "--cpus",
            "boot=1,max=255",
            "--serial",
            "null",
        ],
        1,
        &["--cpus", "max=255", "254"],
    );
}

#[test]
fn memory_above_host() {
    let dir = ScratchDir::new("huge-memory");
    let kernel = write_tiny_elf_kernel(&dir, "image");
    fails_with_tiny_kernel(
        &[
            "--kernel",
            text(&kernel),
            "--memory",
            "size=100000G",
            "--serial",
            "null",
        ],
        1,
        &["--memory", "100000 GiB", "host"],
    );
}

/// `hugepages=on` on a host whose pool cannot hold the boot RAM: exit 1, saying how many pages
/// it needs and has. (Skipped where the host's pool is large enough to boot.)
#[test]
fn memory_on_too_few_huge_pages() {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let free: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("HugePages_Free:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    if free >= 32 {
        eprintln!("this host has {free} free huge pages: nothing to refuse");
        return;
    }
    let dir = ScratchDir::new("huge-pages");
    let kernel = write_tiny_elf_kernel(&dir, "image");
    let args = [
        "--kernel",
        text(&kernel),
        "--memory",
        "size=64M,hugepages=on",
        "--serial",
        "null",
    ];
    fails_with_tiny_kernel(&args, 1, &["--memory", "hugepages=on", "huge pages"]);
    let bad = ["--kernel", text(&kernel), "--memory", "size=64M,thp=maybe"];
    fails(&bad, 2, &["--memory", "thp=\"maybe\" is not a switch"]);
}

#[test]
fn api_socket_in_use() {
    let dir = ScratchDir::new("api-busy");
    let kernel = write_tiny_elf_kernel(&dir, "image");
    let socket = dir.join("api.sock");
    let _listener = UnixListener::bind(&socket).expect("bind test listener");
    fails_with_tiny_kernel(
        &[
            "--kernel",
            text(&kernel),
            "--api-socket",
            text(&socket),
            "--serial",
            "null",
        ],
        1,
        &["--api-socket", text(&socket), "in use"],
    );
}

/// Kills what is still running of its processes when dropped (a failed test leaves none).
struct Racers(Vec<std::process::Child>);

impl Drop for Racers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                kill_bounded(child, Duration::from_secs(5));
            }
        }
    }
}

/// Several plugvm started at the same moment on one `--api-socket` path (API-first: nothing
/// else is needed): exactly one serves it, the others end at once, each with one line. Once
/// two of them could both stay, the later one's socket replacing the earlier one's.
#[test]
fn api_socket_race_has_one_winner() {
    use std::process::Stdio;
    use std::sync::Barrier;
    const RACERS: usize = 6;
    for round in 0..10 {
        let dir = ScratchDir::new("api-race");
        let socket = dir.join("api.sock");
        let barrier = Barrier::new(RACERS);
        let mut racers = Racers(std::thread::scope(|scope| {
            let spawns: Vec<_> = (0..RACERS)
                .map(|_| {
                    scope.spawn(|| {
                        let mut command = plugvm_api_first(&socket);
                        command.stdout(Stdio::piped()).stderr(Stdio::piped());
                        barrier.wait();
                        command.spawn().expect("start plugvm")
                    })
                })
                .collect();
            spawns.into_iter().map(|s| s.join().unwrap()).collect()
        }));
        let deadline = Instant::now() + Duration::from_secs(20);
        let ended = |racers: &mut Racers| {
            racers
                .0
                .iter_mut()
                .map(|c| c.try_wait())
                .filter(|status| matches!(status, Ok(Some(_))))
                .count()
        };
        while ended(&mut racers) < RACERS - 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The winner keeps running (a moment more shows it was not just slow to fail).
        std::thread::sleep(Duration::from_millis(300));
        let (running, ended): (Vec<_>, Vec<_>) = std::mem::take(&mut racers.0)
            .into_iter()
            .map(|mut c| (matches!(c.try_wait(), Ok(None)), c))
            .partition(|(runs, _)| *runs);
        racers.0 = running.into_iter().map(|(_, c)| c).collect();
        assert_eq!(
            racers.0.len(),
            1,
            "round {round}: not exactly one plugvm runs"
        );
        for (_, loser) in ended {
            let output = loser.wait_with_output().expect("collect a loser's output");
            assert_cli_error(&output, 1, &[text(&socket), "in use"]);
        }
        // The socket is the winner's, and answers.
        let call = |method, target| {
            client::request(&socket, method, target, None, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
        };
        let ping = call("GET", "/api/v1/vmm.ping");
        assert_eq!(ping.status, 200);
        let ping: serde_json::Value = serde_json::from_slice(&ping.body).expect("JSON");
        assert_eq!(ping["pid"], racers.0[0].id());
        assert_eq!(call("PUT", "/api/v1/vmm.shutdown").status, 204);
        let deadline = Instant::now() + Duration::from_secs(10);
        let winner = &mut racers.0[0];
        let status = loop {
            match winner.try_wait() {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                other => break other.ok().flatten(),
            }
        };
        assert_eq!(status.and_then(|s| s.code()), Some(0), "the winner's end");
        let lock = dir.join("api.sock.lock");
        assert!(!socket.exists() && !lock.exists(), "left behind");
    }
}

// --- --dump-acpi-tables ----------------------------------------------------------------------

/// Checks an ACPI table file: signature, length field, checksum.
fn check_table(dir: &ScratchDir, file: &str, signature: &[u8; 4]) {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() >= 36,
        "{file}: {} bytes, shorter than a header",
        bytes.len()
    );
    assert_eq!(&bytes[..4], signature, "{file}: signature");
    let length = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    assert_eq!(length as usize, bytes.len(), "{file}: length field");
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    assert_eq!(sum, 0, "{file}: checksum");
}

#[test]
fn dump_acpi_tables_without_kernel() {
    let dir = ScratchDir::new("acpi-dump");
    let out = run_plugvm([
        "--dump-acpi-tables",
        text(dir.path()),
        "--cpus",
        "boot=2,max=4",
        "--memory",
        "size=1G,hotplug_size=1G",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    check_table(&dir, "DSDT.dat", b"DSDT");
    check_table(&dir, "APIC.dat", b"APIC");
    check_table(&dir, "FACP.dat", b"FACP");
}

#[test]
fn dump_acpi_tables_still_checks_the_command_line() {
    let dir = ScratchDir::new("acpi-dump-bad");
    fails(
        &[
            "--dump-acpi-tables",
            text(dir.path()),
            "--cpus",
            "boot=3,max=2",
        ],
        2,
        &["--cpus", "boot=3"],
    );
    fails(
        &["--dump-acpi-tables", text(dir.path()), "--initramfs", "i"],
        2,
        &["--initramfs", "--kernel"],
    );
}

// --- the kernel cache ----------------------------------------------------------------------

#[test]
fn corrupt_bzimage_is_a_clear_error() {
    let dir = ScratchDir::new("corrupt-bz");
    let image = dir.write("bz", corrupt_bzimage());
    let cache = dir.join("cache");
    fails(
        &[
            "--kernel",
            text(&image),
            "--kernel-cache",
            text(&cache),
            "--serial",
            "null",
        ],
        1,
        &[text(&image), "bzImage", "XZ payload does not decompress"],
    );
    // Nothing was cached.
    let cached = std::fs::read_dir(&cache).map_or(0, |d| d.count());
    assert_eq!(cached, 0);
}

/// Runs plugvm on Debian's bzImage with `cache` and an initramfs too large to fit beside the
/// kernel: plugvm cannot boot Linux on this host's KVM, and that error stops it right after
/// the kernel is loaded (so after the vmlinux is extracted). Returns stderr, with the log of
/// the kernel cache.
fn load_debian_kernel(cache: &std::path::Path, dir: &ScratchDir) -> String {
    let img = guest_image();
    let initrd = dir.sparse_file("initrd", 250 << 20);
    let mut cmd = std::process::Command::new(plugvm_binary());
    cmd.arg("--kernel")
        .arg(&img.kernel)
        .arg("--kernel-cache")
        .arg(cache)
        .arg("--initramfs")
        .arg(&initrd)
        .args(["--memory", "size=256M", "--serial", "null"])
        .env("RUST_LOG", "warn,vmm::kernel_cache=debug,vmm::boot=info")
        .env_remove("RUST_BACKTRACE");
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120))
        .unwrap_or_else(|t| panic!("plugvm still running after 120 s: {:?}", t.0));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not fit in guest RAM"), "{stderr}");
    assert!(
        stderr.contains("booting the vmlinux extracted from bzImage"),
        "{stderr}"
    );
    stderr
}

#[test]
fn debian_bzimage_is_extracted_once_into_the_cache() {
    let img = guest_image();
    let Some(vmlinux) = img.vmlinux.as_deref() else {
        panic!("resources/guest-image.sh did not extract a vmlinux");
    };
    let dir = ScratchDir::new("kcache");
    let cache = dir.join("cache");

    let first = load_debian_kernel(&cache, &dir);
    assert!(first.contains("extracting vmlinux from bzImage"), "{first}");
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .expect("the cache directory was created")
        .map(|e| e.expect("readable cache directory").path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let cached = &entries[0];
    let name = cached.file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert!(
        name.strip_prefix("vmlinux-")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())),
        "{name}"
    );
    // The same XZ stream as the one guest-image.sh decompresses with xz(1).
    let ours = std::fs::read(cached).expect("cached vmlinux");
    let theirs = std::fs::read(vmlinux).expect("guest-image.sh's vmlinux");
    assert!(
        ours == theirs,
        "the cached vmlinux differs from {}",
        vmlinux.display()
    );

    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let before = modified(cached);
    let second = load_debian_kernel(&cache, &dir);
    assert!(second.contains("vmlinux cache hit"), "{second}");
    assert!(!second.contains("extracting vmlinux"), "{second}");
    assert_eq!(modified(cached), before, "a cache hit rewrote the file");
}
