//! Running real Linux guests under plugvm for integration tests.
//!
//! A guest test needs a KVM that can run Linux. Where the host has none (PVM, see
//! `resources/kvm-host.sh`), [`kvm_guest_test!`](crate::kvm_guest_test) re-runs the one test
//! inside the nested-KVM test bed: the test binary itself, with `--exact NAME`, so everything
//! the test looks at (plugvm's exit code, timing, its `/proc` entries) is observed where
//! plugvm runs. The guest image and the plugvm binary are prepared outside first (the test
//! bed has no network and is slow at building).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{plugvm_binary, workspace_root};

/// Set inside the test bed by `kvm-host.sh`.
const INSIDE_VAR: &str = "PLUGVM_KVMHOST_INSIDE";
/// The plugvm binary built outside, passed to the test bed.
const BIN_VAR: &str = "PLUGVM_TEST_BINARY";
/// Ready line the guest's `/init` prints.
pub const READY_LINE: &str = "PLUGVM-GUEST-READY";

/// The kernel command line every test guest boots with (its script and extras follow).
///
/// `no-kvmapf`: the guest does not take KVM's asynchronous page faults. In the nested test bed
/// (QEMU's TCG emulating SVM, see `resources/kvm-host.sh`) an async page fault that the bed's
/// KVM injects into the guest now and then leaves the guest's vCPU in an endless loop of nested
/// page faults at an address of the bed's own (its `VMRUN` instruction's RIP, a page-fault
/// delivery in `exit_int_info`), or locks up the bed's kernel: measured on 30 November 2026, 3
/// stalled boots, 1 early reset and 2 hung beds in 33 boots with async page faults, none in 30
/// without (QEMU as the inner VMM was seen stalling too). Hotplug does not depend on it.
///
/// `loglevel=4` (what `quiet` sets, without silencing a bzImage's decompressor): the kernel
/// prints only its errors on the console. Each byte of console output is a port write that
/// exits to plugvm, which the bed emulates slowly: its boots reached the ready line in 5.0-8.5 s
/// instead of 10-12 s, and none of 30 stalled (30 November 2026; with the kernel's whole log, 2
/// of 5 boots in the same hour stalled or reset). Tests that want the kernel's messages read
/// them with `dmesg` in the guest (every level is there).
pub const GUEST_CMDLINE: &str = "console=ttyS0 panic=-1 pci=off no-kvmapf loglevel=4";

/// The kernel and initramfs from `resources/guest-image.sh`.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// Debian's bzImage.
    pub kernel: PathBuf,
    /// The busybox initramfs.
    pub initramfs: PathBuf,
    /// The ELF vmlinux extracted from the bzImage, if the script made one.
    pub vmlinux: Option<PathBuf>,
    /// A `--kernel-cache` folder that already holds that vmlinux under plugvm's name for it.
    pub kernel_cache: Option<PathBuf>,
}

impl GuestImage {
    /// The kernel most tests boot: the ELF vmlinux when there is one, else the bzImage. The
    /// bzImage's XZ decompression runs in the guest, seconds per boot in the nested test bed,
    /// and says nothing about hotplug; the tests in `boot.rs` boot the bzImage itself.
    pub fn test_kernel(&self) -> &Path {
        self.vmlinux.as_deref().unwrap_or(&self.kernel)
    }
}

/// Prepares (or finds cached) the guest image. Panics with the script's output on failure.
pub fn guest_image() -> GuestImage {
    static IMAGE: OnceLock<Result<GuestImage, String>> = OnceLock::new();
    let result = IMAGE.get_or_init(|| {
        let stdout = crate::resource_script_output("guest-image.sh")?;
        let get = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key).map(PathBuf::from))
        };
        Ok(GuestImage {
            kernel: get("kernel=").ok_or("guest-image.sh printed no kernel=")?,
            initramfs: get("initramfs=").ok_or("guest-image.sh printed no initramfs=")?,
            vmlinux: get("vmlinux="),
            kernel_cache: get("kernel_cache="),
        })
    });
    match result {
        Ok(img) => img.clone(),
        Err(msg) => panic!("{msg}"),
    }
}

/// Whether this host's KVM runs Linux guests directly (VT-x/AMD-V).
pub fn host_has_hardware_virtualization() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The plugvm binary: built here, or the one built outside when inside the test bed.
pub fn guest_test_binary() -> PathBuf {
    match std::env::var_os(BIN_VAR) {
        Some(p) if std::env::var_os(INSIDE_VAR).is_some() => PathBuf::from(p),
        _ => plugvm_binary(),
    }
}

/// How long one attempt of a guest test may take in the test bed, in seconds. A test takes
/// 15 s to 1 min there, plus about 25 s for each boot that stalled and was booted again
/// (`session::BOOT_ATTEMPTS`); an attempt that hangs (the bed's own kernel stalled: its tests'
/// timeouts cannot fire) is cut here, so that a retry still fits the run's 30 minutes.
const ATTEMPT_TIMEOUT_S: &str = "180";

/// How long a batch (every test of a binary in one test bed, see [`run_batch`]) may go without
/// a test finishing before it counts as hung and is cut: the longest test takes about 1 min,
/// plus its boots that stalled.
const BATCH_PROGRESS_TIMEOUT: Duration = Duration::from_secs(150);
/// The bound of a whole batch, in seconds.
const BATCH_TIMEOUT_S: &str = "1500";

/// Returns `true` when the caller should run its test body here. Otherwise runs test
/// `name` of this binary inside the nested-KVM test bed, panics if it failed there, and
/// returns `false`.
///
/// The first guest test of a binary to get here runs every test of the binary in one test bed
/// (a bed costs about 8 s to start and stop); each test then takes its result from that batch,
/// and one that failed there, or did not run, is run again alone.
pub fn run_here_or_in_kvm_host(name: &str) -> bool {
    if std::env::var_os(INSIDE_VAR).is_some() || host_has_hardware_virtualization() {
        return true;
    }
    let binary = plugvm_binary();
    let _ = guest_image();
    static BATCH: OnceLock<BTreeMap<String, bool>> = OnceLock::new();
    let batch = BATCH.get_or_init(|| {
        if batch_wanted() {
            run_batch(&binary)
        } else {
            BTreeMap::new()
        }
    });
    let first_attempt = match batch.get(name) {
        Some(true) => return false,
        Some(false) => {
            eprintln!("{name} failed in its binary's batch; running it alone");
            2
        }
        None => 1,
    };
    // One nested host at a time: each is a TCG VM that wants both cores and gigabytes of
    // memory, so guest tests of parallel test threads (or binaries) take turns.
    let _turn = test_bed_lock();
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let kvm_host = workspace_root().join("resources/kvm-host.sh");
    let attempts: u32 = std::env::var("PLUGVM_TEST_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(4);
    let mut last = None;
    for attempt in first_attempt..=attempts.max(first_attempt) {
        eprintln!("running {name} inside the nested KVM host (attempt {attempt} of {attempts})");
        // PLUGVM_TEST_ATTEMPT_TIMEOUT_S: for the long runs that are not CI tests (the soak).
        let timeout = std::env::var("PLUGVM_TEST_ATTEMPT_TIMEOUT_S")
            .unwrap_or_else(|_| ATTEMPT_TIMEOUT_S.to_string());
        let status = Command::new(&kvm_host)
            .args(["--timeout", &timeout, "--"])
            .arg(&exe)
            // --include-ignored: an #[ignore]d test (the soak) was asked for by name here.
            .args([
                "--exact",
                name,
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(BIN_VAR, &binary)
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", kvm_host.display()));
        if status.success() {
            if attempt > 1 {
                // Straight to the process's stderr: the test harness keeps a passing test's
                // eprintln! to itself, and every retry must show in the run's output.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "WARNING: test-bed retry: {name} passed only on attempt {attempt} of {attempts}"
                );
            }
            return false;
        }
        eprintln!("{name} failed inside the nested KVM host on attempt {attempt} ({status})");
        last = Some(status);
    }
    panic!("{name} failed inside the nested KVM host in all {attempts} attempts ({last:?})");
}

/// Whether to run the binary's tests as one batch: not when the run was narrowed to some
/// tests (a name filter, `--exact`, `--ignored`: the batch would run the others too), nor with
/// `PLUGVM_TEST_BATCH=0`.
fn batch_wanted() -> bool {
    if std::env::var("PLUGVM_TEST_BATCH").is_ok_and(|v| v == "0") {
        return false;
    }
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // Options of libtest that take a value.
            "--test-threads" | "--color" | "--format" | "--logfile" | "--skip" | "-Z" => {
                let _ = args.next();
            }
            "--exact" | "--ignored" | "--include-ignored" => return false,
            a if a.starts_with('-') => {}
            _ => return false,
        }
    }
    true
}

/// Runs every (not ignored) test of this binary inside one test bed and returns which passed
/// (`true`) and failed (`false`); a test missing from the map did not run (the bed failed or
/// hung, or the test is not a guest test). The bed's output is shown as it comes.
fn run_batch(binary: &Path) -> BTreeMap<String, bool> {
    use std::os::unix::process::CommandExt;
    let _turn = test_bed_lock();
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let kvm_host = workspace_root().join("resources/kvm-host.sh");
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    eprintln!("running every test of {name} in one nested KVM host");
    let mut child = match Command::new(&kvm_host)
        .args(["--timeout", BATCH_TIMEOUT_S, "--"])
        .arg(&exe)
        .arg("--test-threads=1")
        .env(BIN_VAR, binary)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its own process group: a hung batch is killed with the bed's QEMU.
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("cannot run {}: {e}", kvm_host.display());
            return BTreeMap::new();
        }
    };
    let Some(stdout) = child.stdout.take() else {
        return BTreeMap::new();
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut results = BTreeMap::new();
    let mut last_progress = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => {
                // Straight to the process's stderr, past the harness's capture: a failure in
                // the batch must show in the run's output even when the retry passes.
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "[batch] {line}");
                if let Some((test, ok)) = parse_result(&line) {
                    results.insert(test, ok);
                    last_progress = Instant::now();
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if last_progress.elapsed() > BATCH_PROGRESS_TIMEOUT {
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "the batch of {name} finished no test in {BATCH_PROGRESS_TIMEOUT:?}: cut"
                    );
                    if let Ok(pgid) = i32::try_from(child.id()) {
                        // SAFETY: kill(2) with a process group id and a signal number; no
                        // memory is involved.
                        unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    }
                    break;
                }
            }
        }
    }
    let status = child.wait();
    let failed: Vec<&String> = results
        .iter()
        .filter(|(_, ok)| !**ok)
        .map(|(t, _)| t)
        .collect();
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "the batch of {name} ended ({status:?}): {} passed, failed: {failed:?}",
        results.values().filter(|ok| **ok).count()
    );
    results
}

/// A libtest result line, `test NAME ... ok` or `test NAME ... FAILED`.
fn parse_result(line: &str) -> Option<(String, bool)> {
    let rest = line.strip_prefix("test ")?;
    let (test, verdict) = rest.rsplit_once(" ... ")?;
    match verdict.trim_end() {
        "ok" => Some((test.to_string(), true)),
        "FAILED" => Some((test.to_string(), false)),
        _ => None,
    }
}

/// Holds an exclusive lock on a file under the target directory while alive.
fn test_bed_lock() -> std::fs::File {
    let dir = crate::target_dir().join("kvm-host");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("guest-tests.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
    file
}

/// Declares a test that boots real guests: it runs inside the nested-KVM test bed when the
/// host cannot run Linux guests itself.
#[macro_export]
macro_rules! kvm_guest_test {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            let full = concat!(module_path!(), "::", stringify!($name));
            // The harness names tests without the crate prefix.
            let name = full.split_once("::").map_or(full, |(_, rest)| rest);
            if $crate::guest::run_here_or_in_kvm_host(name) {
                $body
            }
        }
    };
}

/// Base64 (standard alphabet, padded) for `plugvm.run=`.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What a guest run produced.
#[derive(Debug)]
pub struct GuestRun {
    /// plugvm's exit code (`None` if it was killed).
    pub exit_code: Option<i32>,
    /// The serial console (plugvm's stdout).
    pub console: String,
    /// plugvm's stderr.
    pub stderr: String,
    /// Output of the `plugvm.run` script, between its markers.
    pub script_output: Option<String>,
    /// The script's exit code from `PLUGVM-RUN-END rc=N`.
    pub script_rc: Option<i32>,
    /// Time from plugvm's start to the ready line.
    pub ready_after: Option<Duration>,
    /// Time from the `PLUGVM-RUN-END` line to plugvm's exit.
    pub end_to_exit: Option<Duration>,
    /// Whether plugvm had to be killed at the timeout.
    pub timed_out: bool,
}

impl GuestRun {
    /// Lines of the console that report ACPI problems.
    pub fn acpi_problems(&self) -> Vec<&str> {
        self.console
            .lines()
            .filter(|l| {
                l.contains("ACPI Error")
                    || l.contains("ACPI BIOS Error")
                    || l.contains("ACPI Warning")
            })
            .collect()
    }

    /// The value printed by the script as `key=value`.
    pub fn value(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.script_output
            .as_deref()?
            .lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
    }
}

/// Options of a guest boot.
#[derive(Clone, Debug)]
pub struct GuestBoot<'a> {
    /// `--cpus`.
    pub cpus: &'a str,
    /// `--memory`.
    pub memory: &'a str,
    /// Shell script run by the guest's `/init` (then it powers off).
    pub script: &'a str,
    /// Appended to the kernel command line.
    pub extra_cmdline: &'a str,
    /// Kernel to boot (defaults to [`GuestImage::test_kernel`]).
    pub kernel: Option<&'a Path>,
    /// `--kernel-cache` (plugvm's default when `None`).
    pub kernel_cache: Option<&'a Path>,
    /// plugvm's `RUST_LOG` (the caller's environment when `None`).
    pub rust_log: Option<&'a str>,
    /// Kill plugvm after this long.
    pub timeout: Duration,
}

impl Default for GuestBoot<'_> {
    fn default() -> Self {
        GuestBoot {
            cpus: "boot=1",
            memory: "size=512M",
            script: "true",
            extra_cmdline: "",
            kernel: None,
            kernel_cache: None,
            rust_log: None,
            timeout: Duration::from_secs(240),
        }
    }
}

/// Boots the guest image under plugvm with `opts` and waits for plugvm to end.
///
/// A boot that fails the test bed's way before the guest's ready line (its console silent for
/// [`BOOT_SILENCE`](crate::session::BOOT_SILENCE), or the guest resetting itself) is run again,
/// up to [`BOOT_ATTEMPTS`](crate::session::BOOT_ATTEMPTS) boots, as
/// [`GuestSession::boot`](crate::session::GuestSession::boot) does.
pub fn boot_guest(opts: &GuestBoot<'_>) -> GuestRun {
    use crate::session::BOOT_ATTEMPTS;
    for attempt in 1..BOOT_ATTEMPTS {
        let run = boot_guest_once(opts);
        let reset = run.exit_code == Some(crate::session::EXIT_GUEST_RESET);
        if run.ready_after.is_some() || !(run.timed_out || reset) {
            return run;
        }
        let last = run.console.lines().last().unwrap_or_default().to_string();
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "WARNING: test-bed retry: boot {attempt} of {BOOT_ATTEMPTS} of a guest ({} {}) \
             failed before its ready line ({}); last console line {last:?}",
            opts.cpus,
            opts.memory,
            if reset { "it reset" } else { "it stalled" },
        );
    }
    boot_guest_once(opts)
}

fn boot_guest_once(opts: &GuestBoot<'_>) -> GuestRun {
    let img = guest_image();
    let cmdline = format!(
        "{GUEST_CMDLINE} plugvm.run={} {}",
        base64(opts.script.as_bytes()),
        opts.extra_cmdline
    );
    let mut command = Command::new(guest_test_binary());
    if let Some(dir) = opts.kernel_cache {
        command.arg("--kernel-cache").arg(dir);
    }
    if let Some(filter) = opts.rust_log {
        command.env("RUST_LOG", filter);
    }
    let mut child = command
        .arg("--kernel")
        .arg(opts.kernel.unwrap_or(img.test_kernel()))
        .arg("--initramfs")
        .arg(&img.initramfs)
        .args([
            "--cpus",
            opts.cpus,
            "--memory",
            opts.memory,
            "--serial",
            "stdio",
        ])
        .args(["--cmdline", &cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start plugvm: {e}"));
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let stdout = child.stdout.take();
    let last_output = std::sync::Arc::new(std::sync::Mutex::new(start));
    let reader_last = last_output.clone();
    let reader = std::thread::spawn(move || {
        if let Some(out) = stdout {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                if let Ok(mut last) = reader_last.lock() {
                    *last = Instant::now();
                }
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        }
    });
    let silent_for = || {
        last_output
            .lock()
            .map_or(Duration::ZERO, |last| last.elapsed())
    };
    let mut stderr_pipe = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr_pipe.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });

    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            // A guest whose console stays silent this long has stalled (see BOOT_SILENCE).
            Ok(None)
                if start.elapsed() > opts.timeout
                    || silent_for() > crate::session::BOOT_SILENCE =>
            {
                timed_out = true;
                break crate::kill_bounded(&mut child, Duration::from_secs(5));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    let exited = Instant::now();
    // A plugvm that could not be killed keeps its pipes open: do not wait for the readers.
    let stderr = if status.is_some() {
        let _ = reader.join();
        err_reader.join().unwrap_or_default()
    } else {
        String::from("(plugvm could not be killed; its stderr was not collected)")
    };

    let mut console = String::new();
    let mut ready_after = None;
    let mut end_at = None;
    let mut script_output: Option<String> = None;
    let mut in_script = false;
    let mut script_rc = None;
    for (at, line) in rx.try_iter() {
        if line.contains(READY_LINE) && ready_after.is_none() {
            ready_after = Some(at.duration_since(start));
        }
        if line.starts_with("PLUGVM-RUN-BEGIN") {
            in_script = true;
            script_output = Some(String::new());
        } else if let Some(rc) = line.strip_prefix("PLUGVM-RUN-END rc=") {
            in_script = false;
            script_rc = rc.trim().parse().ok();
            end_at = Some(at);
        } else if in_script {
            if let Some(s) = script_output.as_mut() {
                s.push_str(&line);
                s.push('\n');
            }
        }
        console.push_str(&line);
        console.push('\n');
    }
    GuestRun {
        exit_code: status.and_then(|s| s.code()),
        console,
        stderr,
        script_output,
        script_rc,
        ready_after,
        end_to_exit: end_at.map(|t| exited.saturating_duration_since(t)),
        timed_out,
    }
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
