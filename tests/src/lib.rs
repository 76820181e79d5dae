//! Shared helpers for plugvm's integration tests (`tests/tests/*.rs`).
//!
//! * [`plugvm_binary`] builds the `plugvm` binary once per test process and returns its path;
//!   [`plugvm_remote_binary`] does the same for `plugvm-remote`.
//! * [`run_plugvm`] runs it with a timeout, so a hang fails the test instead of the CI run.
//! * [`ScratchDir`] is a temporary directory removed on drop; [`write_tiny_elf_kernel`]
//!   writes a kernel image that the loader accepts without being Linux.
//! * [`assert_cli_error`] checks the shape of plugvm's error output: the exit code and one
//!   `plugvm: ` line on stderr, no panic.
//!
//! ```no_run
//! use plugvm_tests::{assert_cli_error, run_plugvm};
//!
//! let out = run_plugvm(["--kernel", "/nonexistent"]);
//! assert_cli_error(&out, 1, &["/nonexistent"]);
//! ```

pub mod ch_clients;
pub mod event_stream;
pub mod guest;
pub mod metrics;
pub mod openapi;
pub mod session;

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long [`run_plugvm`] lets plugvm run before killing it. Every CLI case exits long before
/// this; it only bounds a hang.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo target directory: `$CARGO_TARGET_DIR` (relative to the workspace root if
/// relative), else `<workspace>/target`. [`plugvm_binary`] asks cargo itself and only falls
/// back to this.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// Builds `plugvm` (`cargo build -q -p vmm --bins`, with `$CARGO` if set) the first time it
/// is called in this process, and returns the path of the binary (`target/debug/plugvm`).
///
/// The path comes from cargo's own build messages, so `CARGO_TARGET_DIR` and
/// `build.target-dir` are honoured. Panics with cargo's diagnostics if the build fails, in
/// every test that asks (not only the first).
pub fn plugvm_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(|| build_binary("vmm", "plugvm")) {
        Ok(path) => path.clone(),
        Err(msg) => panic!("{msg}"),
    }
}

/// Like [`plugvm_binary`], for the `plugvm-remote` client (`cargo build -p plugvm-remote`).
pub fn plugvm_remote_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(|| build_binary("plugvm-remote", "plugvm-remote")) {
        Ok(path) => path.clone(),
        Err(msg) => panic!("{msg}"),
    }
}

/// Builds the binaries of `package` and returns the path of the one called `name`.
fn build_binary(package: &str, name: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args([
            "build",
            "-q",
            "-p",
            package,
            "--bins",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        return Err(format!(
            "building {name} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let from_messages = stdout.lines().find_map(|line| {
        let msg: serde_json::Value = serde_json::from_str(line).ok()?;
        if msg["reason"] != "compiler-artifact" || msg["target"]["name"] != name {
            return None;
        }
        msg["executable"].as_str().map(PathBuf::from)
    });
    let path = from_messages.unwrap_or_else(|| target_dir().join("debug").join(name));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "cargo built {name} but {} does not exist",
            path.display()
        ))
    }
}

/// `plugvm --api-socket SOCKET` (an API-first launch: the VM is created through the API),
/// with no `RUST_LOG` and no standard input; the caller decides where its output goes.
pub fn plugvm_api_first(socket: &Path) -> Command {
    let mut command = Command::new(plugvm_binary());
    command
        .arg("--api-socket")
        .arg(socket)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

/// Runs `resources/NAME` with no input and returns what it printed on stdout, or an error
/// naming the script with what it printed on stderr.
pub fn resource_script_output(name: &str) -> Result<String, String> {
    let script = workspace_root().join("resources").join(name);
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts [`plugvm_api_first`] on `api.sock` in a new scratch directory (`label` names it),
/// output to /dev/null and stderr, with what `setup` adds to the command; waits (10 s at
/// most) for the socket. Returns the process, the socket and the directory (keep it alive).
pub fn spawn_api_first(
    label: &str,
    setup: impl FnOnce(&mut Command, &ScratchDir),
) -> (std::process::Child, PathBuf, ScratchDir) {
    let dir = ScratchDir::new(label);
    let socket = dir.join("api.sock");
    let mut command = plugvm_api_first(&socket);
    command.stdout(Stdio::null()).stderr(Stdio::inherit());
    setup(&mut command, &dir);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start plugvm: {e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no API socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, socket, dir)
}

/// Runs plugvm with `args` (without argv\[0\]) and [`DEFAULT_TIMEOUT`]. See
/// [`run_plugvm_with_timeout`].
pub fn run_plugvm<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_plugvm_with_timeout(args, DEFAULT_TIMEOUT)
}

/// Runs plugvm with `args`, stdin from `/dev/null`, stdout and stderr captured, and
/// `RUST_LOG`/`RUST_BACKTRACE` unset so output does not depend on the caller's environment.
///
/// Panics (failing the test) if plugvm is still running after `timeout`; it is killed first,
/// and the panic message shows what it printed so far.
pub fn run_plugvm_with_timeout<I, S>(args: I, timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(plugvm_binary());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE");
    let shown = format!("{cmd:?}");
    match run_with_timeout(&mut cmd, timeout) {
        Ok(output) => output,
        Err(TimedOut(output)) => panic!(
            "{shown} still running after {timeout:?}; killed.\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// A command killed for running past its timeout, with what it printed until then.
#[derive(Debug)]
pub struct TimedOut(pub Output);

/// Runs `cmd` (stdin null, stdout/stderr captured) and waits at most `timeout` for it,
/// killing it (SIGKILL) past that. Panics only if the command cannot be started.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, TimedOut> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let (status, timed_out) = wait_until(&mut child, Instant::now() + timeout);
    let output = Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    };
    if timed_out {
        Err(TimedOut(output))
    } else {
        Ok(output)
    }
}

/// Waits for `child` until `deadline`, then kills it. Returns its status and whether it had
/// to be killed.
fn wait_until(child: &mut Child, deadline: Instant) -> (ExitStatus, bool) {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (status, false),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            // Past the deadline, or try_wait failed: kill and reap.
            _ => {
                let _ = child.kill();
                let status = child
                    .wait()
                    .unwrap_or_else(|e| panic!("cannot reap child {}: {e}", child.id()));
                return (status, true);
            }
        }
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    pipe.map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    })
}

fn join(reader: Option<JoinHandle<Vec<u8>>>) -> Vec<u8> {
    reader.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// Asserts the shape of a plugvm error: exit code `code`, nothing on stdout, and exactly one
/// non-empty line on stderr that starts with `plugvm: `, contains every string of `needles`,
/// and does not mention a panic. Returns that line.
pub fn assert_cli_error(output: &Output, code: i32, needles: &[&str]) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!(
        "status: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(!stderr.contains("panicked"), "plugvm panicked\n{context}");
    assert_eq!(
        output.status.code(),
        Some(code),
        "wrong exit code\n{context}"
    );
    assert!(stdout.is_empty(), "unexpected stdout\n{context}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one stderr line\n{context}");
    let line = lines[0];
    assert!(
        line.starts_with("plugvm: "),
        "no 'plugvm: ' prefix\n{context}"
    );
    for needle in needles {
        assert!(line.contains(needle), "stderr lacks {needle:?}\n{context}");
    }
    line.to_owned()
}

/// A fresh, empty directory under the system temp directory, removed (with its contents) on
/// drop. Names are unique per process and call, so tests can run in parallel.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<tmp>/plugvm-test-<pid>-<n>-<label>`. Panics if it cannot.
    pub fn new(label: &str) -> ScratchDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("plugvm-test-{}-{n}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        ScratchDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory (not created).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Creates a sparse file of `len` bytes (no disk space used) and returns its path.
    pub fn sparse_file(&self, name: &str, len: u64) -> PathBuf {
        let path = self.join(name);
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(len))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A bzImage whose setup header is valid and whose payload claims to be XZ but is garbage:
/// plugvm must refuse it clearly when it extracts the vmlinux (`--kernel-cache`).
pub fn corrupt_bzimage() -> Vec<u8> {
    let setup_sects = 4u8;
    let mut file = vec![0u8; (usize::from(setup_sects) + 1) * 512];
    file[0x1f1] = setup_sects;
    file[0x202..0x206].copy_from_slice(b"HdrS");
    file[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    let mut payload = b"\xfd7zXZ\x00".to_vec();
    payload.resize(4096, 0x5a);
    file[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
    file[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    file.extend_from_slice(&payload);
    file
}

/// The guest-physical address [`tiny_elf_kernel`] loads at and enters (1 MiB, where plugvm
/// loads kernels).
pub const TINY_KERNEL_ADDR: u64 = 0x10_0000;

/// A minimal ELF64 x86-64 executable that plugvm's loader accepts as a vmlinux: one
/// `PT_LOAD` segment at [`TINY_KERNEL_ADDR`], entered in 64-bit mode. Its code asks the
/// i8042 for a reset (`out 0x64, 0xfe`), then halts forever. It lets a test get past kernel
/// loading without a real Linux kernel; a test must not rely on what it does when run.
pub fn tiny_elf_kernel() -> Vec<u8> {
    // mov al, 0xfe; out 0x64, al; hlt; jmp .-3 (back to hlt)
    elf_kernel(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd])
}

/// Like [`tiny_elf_kernel`], but its code only halts, forever: a VM that runs until it is
/// told to stop, for tests of the VM's life through the API on any KVM host.
pub fn idle_elf_kernel() -> Vec<u8> {
    // hlt; jmp .-3 (back to hlt)
    elf_kernel(&[0xf4, 0xeb, 0xfd])
}

fn elf_kernel(code: &[u8]) -> Vec<u8> {
    let code_bytes = code;
    const EHDR_SIZE: u16 = 64;
    const PHDR_SIZE: u16 = 56;
    let code_offset = u64::from(EHDR_SIZE + PHDR_SIZE);
    let code_len = code_bytes.len() as u64;

    let mut elf = Vec::with_capacity(usize::from(EHDR_SIZE + PHDR_SIZE) + code_bytes.len());
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, System V ABI, padding.
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&TINY_KERNEL_ADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&EHDR_SIZE.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&PHDR_SIZE.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
                                                // Program header: PT_LOAD, R+X.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags
    elf.extend_from_slice(&code_offset.to_le_bytes()); // p_offset
    elf.extend_from_slice(&TINY_KERNEL_ADDR.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&TINY_KERNEL_ADDR.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&code_len.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&code_len.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(code_bytes);
    elf
}

/// Writes [`tiny_elf_kernel`] to `name` in `dir` and returns its path.
pub fn write_tiny_elf_kernel(dir: &ScratchDir, name: &str) -> PathBuf {
    dir.write(name, tiny_elf_kernel())
}

/// Kills `child` and waits for it at most `bound`. Returns its status, or `None` when it did
/// not die: in the nested test bed a vCPU thread can hang inside the outer VM's kernel (a
/// soft lockup in `KVM_RUN`), and then nothing ends the process. The caller must not wait for
/// it (or for its pipes) then, or the whole test run waits for the test bed's timeout.
pub fn kill_bounded(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let _ = child.kill();
    let deadline = Instant::now() + bound;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                eprintln!(
                    "WARNING: plugvm (pid {}) did not die within {bound:?} of SIGKILL; left behind",
                    child.id()
                );
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml"))
            .expect("workspace Cargo.toml");
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn run_with_timeout_returns_output() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .expect("finishes");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn run_with_timeout_kills_a_hang() {
        let start = Instant::now();
        let err = run_with_timeout(
            Command::new("sh").args(["-c", "echo started; exec sleep 30"]),
            Duration::from_millis(300),
        )
        .expect_err("must time out");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(err.0.stdout, b"started\n");
        assert_eq!(err.0.status.code(), None, "killed by a signal");
    }

    #[test]
    fn scratch_dir_is_unique_and_removed() {
        let a = ScratchDir::new("x");
        let b = ScratchDir::new("x");
        assert_ne!(a.path(), b.path());
        let file = a.sparse_file("big", 1 << 40);
        assert_eq!(
            std::fs::metadata(&file).map(|m| m.len()).ok(),
            Some(1 << 40)
        );
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists());
    }

    #[test]
    fn tiny_elf_kernel_layout() {
        let elf = tiny_elf_kernel();
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf.len(), 64 + 56 + 7);
        // e_entry and p_paddr.
        assert_eq!(elf[24..32], TINY_KERNEL_ADDR.to_le_bytes());
        assert_eq!(elf[64 + 24..64 + 32], TINY_KERNEL_ADDR.to_le_bytes());
        // e_phentsize, e_phnum.
        assert_eq!(elf[54..56], 56u16.to_le_bytes());
        assert_eq!(elf[56..58], 1u16.to_le_bytes());
    }

    #[test]
    fn assert_cli_error_accepts_one_line() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo 'plugvm: bad --cpus' >&2; exit 2"]),
            Duration::from_secs(10),
        )
        .expect("finishes");
        assert_eq!(assert_cli_error(&out, 2, &["--cpus"]), "plugvm: bad --cpus");
    }

    #[test]
    #[should_panic(expected = "expected one stderr line")]
    fn assert_cli_error_rejects_two_lines() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "printf 'plugvm: a\\nb\\n' >&2; exit 2"]),
            Duration::from_secs(10),
        )
        .expect("finishes");
        assert_cli_error(&out, 2, &[]);
    }
}
