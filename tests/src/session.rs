//! A running guest that a test drives step by step: shell commands on its serial console and
//! requests on plugvm's API socket, for as long as the test needs.
//!
//! [`GuestSession::start`] starts plugvm with `--api-socket` (in a [`ScratchDir`]),
//! `--serial stdio` and a `plugvm.run` script that turns the guest's `/init` into a command
//! server: it reads one line at a time from the console (plugvm's stdin, through the UART) and
//! `eval`s it. [`GuestSession::exec`] wraps a command between two markers and returns what it
//! printed; [`GuestSession::api`] sends one HTTP request and returns the status and JSON body.
//!
//! ```no_run
//! use std::time::Duration;
//! use plugvm_tests::session::GuestSession;
//!
//! let s = GuestSession::start("boot=1,max=4", "size=512M", "");
//! s.wait_ready(Duration::from_secs(120));
//! assert_eq!(s.exec("cat /sys/devices/system/cpu/online", Duration::from_secs(10)), "0");
//! let (status, body) = s.api("PUT", "vm.add-vcpu", Some(&serde_json::json!({})));
//! assert_eq!(status, 200, "{body}"); // a failure prints the session's report (on drop)
//! ```
//!
//! Console lines (and plugvm's stderr, and every command and API exchange) are kept with their
//! time since plugvm started; [`GuestSession::report`] shows the last ones. Dropping a session
//! while the test panics (a failed assertion, or a session method's own panic) prints that
//! report (plus the guest's `dmesg` tail when the guest still answers), then kills plugvm.
//! With `PLUGVM_TEST_SESSION_LOG=1` in the environment every session prints its whole log when
//! dropped.
//!
//! The guest's console tty echoes input in canonical mode and turns `\n` into `\r\n` on
//! output. The session script switches echo off (`stty -echo`), and the markers are written
//! as two quoted halves (`echo "__PVM""_B_7__"`), so an echo of the typed line can never look
//! like a marker. It also lowers the console log level (`dmesg -n 1`) so that kernel messages
//! cannot land in the middle of a command's output (run `dmesg` to see them).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::guest::{base64, guest_image, guest_test_binary, GUEST_CMDLINE, READY_LINE};
use crate::ScratchDir;

/// Printed by the session script once the command loop is about to start.
pub const SESSION_READY_LINE: &str = "PLUGVM-SESSION-READY";

/// The `plugvm.run` script: quiet console, no echo, then a read-eval loop on the console.
const SESSION_SCRIPT: &str = "stty -echo 2>/dev/null\n\
dmesg -n 1 2>/dev/null\n\
echo PLUGVM-SESSION-READY\n\
while read -r line; do eval \"$line\"; done\n";

/// The longest a booting guest's console may stay silent: the test bed's slowest quiet stretch
/// is the bzImage's decompression, about 5 s, and a whole boot to the ready line takes at most
/// about 15 s there. A stalled boot is booted again ([`GuestSession::boot`]), so waiting less
/// for it saves the run's time.
pub const BOOT_SILENCE: Duration = Duration::from_secs(20);

/// How many times [`GuestSession::boot`] boots a guest whose boot fails in the test bed's way
/// (a stall, or a reset before the ready line) before the test fails.
pub const BOOT_ATTEMPTS: u32 = 3;

/// plugvm's exit code when the guest resets the machine.
pub(crate) const EXIT_GUEST_RESET: i32 = 3;

/// Why a boot did not reach the ready line.
enum BootFailure {
    /// The test bed's way (see [`GuestSession::boot`]): worth another boot.
    TestBed(String),
    /// Anything else: the test fails.
    Other(String),
}

impl std::fmt::Display for BootFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootFailure::TestBed(why) | BootFailure::Other(why) => f.write_str(why),
        }
    }
}

/// How long one API request may take (hotplug requests wait for the guest, up to the
/// transaction's deadline).
pub const API_TIMEOUT: Duration = Duration::from_secs(60);

/// Set (to anything) to print a session's whole log when it is dropped, failure or not.
/// `kvm-host.sh` passes `PLUGVM_*` variables into the test bed.
pub const LOG_VAR: &str = "PLUGVM_TEST_SESSION_LOG";

/// How many lines [`GuestSession::report`] shows.
const REPORT_LINES: usize = 120;

/// Where a logged line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The serial console (plugvm's stdout).
    Console,
    /// plugvm's stderr.
    Stderr,
    /// A command sent to the guest, or an API exchange (written by the session itself).
    Test,
}

/// One logged line.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// Time since plugvm was started.
    pub at: Duration,
    /// Where it came from.
    pub source: Source,
    /// The line, without its line ending.
    pub text: String,
}

#[derive(Default)]
struct LogState {
    lines: Vec<LogLine>,
    /// plugvm closed its stdout (it exited).
    console_closed: bool,
}

struct Log {
    start: Instant,
    state: Mutex<LogState>,
    changed: Condvar,
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, source: Source, text: String) {
        let at = self.start.elapsed();
        self.lock().lines.push(LogLine { at, source, text });
        self.changed.notify_all();
    }

    fn close_console(&self) {
        self.lock().console_closed = true;
        self.changed.notify_all();
    }
}

/// Lets a test stop reading the console, as a client that stopped reading would.
#[derive(Default)]
struct Gate {
    stalled: Mutex<bool>,
    changed: Condvar,
}

/// A reader that waits while its gate is stalled.
struct GatedRead<R> {
    inner: R,
    gate: Arc<Gate>,
}

impl<R: Read> Read for GatedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let stalled = self.gate.stalled.lock().unwrap_or_else(|e| e.into_inner());
        drop(
            self.gate
                .changed
                .wait_while(stalled, |s| *s)
                .unwrap_or_else(|e| e.into_inner()),
        );
        self.inner.read(buf)
    }
}

/// The kernel, initramfs and command line that boot the test guest as the session's command
/// server, with `extra_cmdline` appended.
pub fn session_payload(extra_cmdline: &str) -> (PathBuf, PathBuf, String) {
    let img = guest_image();
    let cmdline = format!(
        "{GUEST_CMDLINE} plugvm.run={} {extra_cmdline}",
        base64(SESSION_SCRIPT.as_bytes())
    );
    (
        img.test_kernel().to_path_buf(),
        img.initramfs.clone(),
        cmdline.trim_end().to_string(),
    )
}

/// Where the session's guest console is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleKind {
    /// `--serial stdio`: plugvm's stdin and stdout.
    Stdio,
    /// `--serial socket=PATH`: the session is the socket's client.
    Socket,
}

fn spawn_reader<R: Read + Send + 'static>(
    pipe: R,
    log: Arc<Log>,
    source: Source,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            log.push(source, text);
        }
        if source == Source::Console {
            log.close_console();
        }
    })
}

/// A plugvm process running the test guest as a command server. See the module docs.
pub struct GuestSession {
    child: Mutex<Child>,
    stdin: Mutex<Option<Box<dyn Write + Send>>>,
    console_gate: Arc<Gate>,
    exit_status: Mutex<Option<ExitStatus>>,
    log: Arc<Log>,
    readers: Vec<JoinHandle<()>>,
    socket: PathBuf,
    pid: u32,
    next_marker: AtomicU32,
    /// A command did not finish in time: the guest's shell may still be busy with it.
    stuck: AtomicBool,
    /// One guest command at a time (the guest's shell reads them one by one).
    exec_lock: Mutex<()>,
    _dir: ScratchDir,
}

impl GuestSession {
    /// Starts plugvm with the guest image, `--cpus cpus --memory memory`, the API socket and
    /// the session script; `extra_cmdline` is appended to the kernel command line. Returns
    /// once the API socket exists (not when the guest is up: see [`Self::wait_ready`]).
    /// Panics if plugvm cannot be started or exits before creating its socket.
    pub fn start(cpus: &str, memory: &str, extra_cmdline: &str) -> GuestSession {
        Self::start_with(cpus, memory, extra_cmdline, ConsoleKind::Stdio)
    }

    /// [`Self::start`] with the console on `console`.
    pub fn start_with(
        cpus: &str,
        memory: &str,
        extra_cmdline: &str,
        console: ConsoleKind,
    ) -> GuestSession {
        Self::start_with_args(cpus, memory, extra_cmdline, console, &[])
    }

    /// [`Self::start_with`], with more plugvm options (`extra_args`).
    pub fn start_with_args(
        cpus: &str,
        memory: &str,
        extra_cmdline: &str,
        console: ConsoleKind,
        extra_args: &[&str],
    ) -> GuestSession {
        let img = guest_image();
        let dir = ScratchDir::new("session");
        let socket = dir.join("api.sock");
        let console_socket = dir.join("console.sock");
        let serial = match console {
            ConsoleKind::Stdio => "stdio".to_string(),
            ConsoleKind::Socket => format!("socket={}", console_socket.display()),
        };
        let (_, _, cmdline) = session_payload(extra_cmdline);
        let mut cmd = Command::new(guest_test_binary());
        cmd.arg("--kernel")
            .arg(img.test_kernel())
            .arg("--initramfs")
            .arg(&img.initramfs)
            .args(["--cpus", cpus, "--memory", memory, "--serial", &serial])
            .args(extra_args)
            .arg("--api-socket")
            .arg(&socket)
            .args(["--cmdline", &cmdline]);
        Self::spawn(cmd, dir, socket, console, console_socket)
    }

    /// [`Self::start_with_args`] and [`Self::wait_ready`] in one: returns the session once its
    /// guest is up, and the time that took.
    ///
    /// A boot that fails the way the nested test bed's boots do now and then, whatever the VMM
    /// (its console silent for [`BOOT_SILENCE`] before the ready line, or the guest resetting
    /// itself before it), is abandoned and started again, up to [`BOOT_ATTEMPTS`] boots: the
    /// test has done nothing yet, so nothing is lost but the time, and the test bed does not
    /// have to start again for a retry of the whole test. Each retry prints a
    /// `WARNING: test-bed retry` line (with what the stalled vCPU threads were doing) past the
    /// harness's capture, which `run-tests.sh` counts. Any other failure panics at once.
    pub fn boot(
        cpus: &str,
        memory: &str,
        extra_cmdline: &str,
        console: ConsoleKind,
        extra_args: &[&str],
        timeout: Duration,
    ) -> (GuestSession, Duration) {
        for attempt in 1..=BOOT_ATTEMPTS {
            let s = Self::start_with_args(cpus, memory, extra_cmdline, console, extra_args);
            let failure = match s.try_wait_ready(timeout) {
                Ok(ready) => return (s, ready),
                Err(BootFailure::Other(why)) => why,
                Err(BootFailure::TestBed(why)) if attempt < BOOT_ATTEMPTS => {
                    let threads = s.thread_activity();
                    let last = s.last_console_line();
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "WARNING: test-bed retry: boot {attempt} of {BOOT_ATTEMPTS} of a guest \
                         ({cpus} {memory}) failed: {why}; last console line {last:?}; {threads}"
                    );
                    // Dropped while not panicking: plugvm is killed without a report.
                    drop(s);
                    continue;
                }
                Err(BootFailure::TestBed(why)) => why,
            };
            panic!("guest not ready: {failure} (session report below)");
        }
        unreachable!("the last attempt returns or panics")
    }

    /// plugvm started with `--api-socket` alone (Cloud Hypervisor's API-first launch): no VM
    /// until `vm.create` and `vm.boot`. With `serial` `Tty` in `vm.create`, the guest's
    /// console is plugvm's stdout, which the session reads as usual; [`session_payload`] gives
    /// the payload that makes the guest a command server.
    pub fn start_api_first() -> GuestSession {
        let dir = ScratchDir::new("session");
        let socket = dir.join("api.sock");
        let console_socket = dir.join("console.sock");
        let mut cmd = Command::new(guest_test_binary());
        cmd.arg("--api-socket").arg(&socket);
        Self::spawn(cmd, dir, socket, ConsoleKind::Stdio, console_socket)
    }

    fn spawn(
        mut cmd: Command,
        dir: ScratchDir,
        socket: PathBuf,
        console: ConsoleKind,
        console_socket: PathBuf,
    ) -> GuestSession {
        cmd.env_remove("RUST_BACKTRACE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("{cmd:?}");
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
        let log = Arc::new(Log {
            start,
            state: Mutex::new(LogState::default()),
            changed: Condvar::new(),
        });
        log.push(Source::Test, format!("started {shown}"));
        let mut readers = Vec::new();
        let console_gate = Arc::new(Gate::default());
        if let Some(out) = child.stdout.take() {
            let source = match console {
                ConsoleKind::Stdio => Source::Console,
                ConsoleKind::Socket => Source::Stderr,
            };
            let gated = GatedRead {
                inner: out,
                gate: console_gate.clone(),
            };
            readers.push(spawn_reader(gated, Arc::clone(&log), source));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(spawn_reader(err, Arc::clone(&log), Source::Stderr));
        }
        let pid = child.id();
        let stdin = child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn Write + Send>);
        let mut session = GuestSession {
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
            console_gate,
            exit_status: Mutex::new(None),
            log,
            readers,
            socket,
            pid,
            next_marker: AtomicU32::new(1),
            stuck: AtomicBool::new(false),
            exec_lock: Mutex::new(()),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !session.socket.exists() {
            if session.try_exit_status().is_some() {
                panic!("plugvm exited before creating its API socket (session report below)");
            }
            if Instant::now() > deadline {
                panic!(
                    "plugvm created no API socket at {} within 30 s (session report below)",
                    session.socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if console == ConsoleKind::Socket {
            session.attach_console_socket(&console_socket);
        }
        session
    }

    /// Connects to the console socket; its output becomes the console log, commands go to it.
    fn attach_console_socket(&mut self, path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline && self.try_exit_status().is_none(),
                        "cannot connect to the console socket {}: {e}",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let reader = stream
            .try_clone()
            .unwrap_or_else(|e| panic!("console socket: {e}"));
        let gated = GatedRead {
            inner: reader,
            gate: self.console_gate.clone(),
        };
        self.readers
            .push(spawn_reader(gated, Arc::clone(&self.log), Source::Console));
        *self.stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(stream));
    }

    /// Stops (`true`) or resumes reading the guest's console, as a client that stopped
    /// reading would: plugvm's console output backs up while stalled.
    pub fn stall_console(&self, stalled: bool) {
        *self
            .console_gate
            .stalled
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = stalled;
        self.console_gate.changed.notify_all();
        self.note(format!("console reader stalled: {stalled}"));
    }

    /// plugvm's process id (for `/proc/<pid>/...`).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The API socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Time since plugvm was started.
    pub fn elapsed(&self) -> Duration {
        self.log.start.elapsed()
    }

    /// Adds a line to the session's log (shown by [`Self::report`]).
    pub fn note(&self, text: impl Into<String>) {
        self.log.push(Source::Test, text.into());
    }

    /// Waits until the guest is up and its command loop runs; returns the time from plugvm's
    /// start to the guest's ready line. Panics on timeout or plugvm's exit.
    /// A boot whose console stays silent for [`BOOT_SILENCE`] has stalled: it fails then.
    pub fn wait_ready(&self, timeout: Duration) -> Duration {
        self.wait_ready_since(0, timeout)
    }

    /// [`Self::wait_ready`] for a boot whose console lines start at `mark` (a VM booted
    /// again after `vm.shutdown`): earlier ready lines do not count.
    pub fn wait_ready_since(&self, mark: usize, timeout: Duration) -> Duration {
        self.try_wait_ready_since(mark, timeout)
            .unwrap_or_else(|why| panic!("guest not ready: {why} (session report below)"))
    }

    fn try_wait_ready(&self, timeout: Duration) -> Result<Duration, BootFailure> {
        self.try_wait_ready_since(0, timeout)
    }

    fn try_wait_ready_since(
        &self,
        mark: usize,
        timeout: Duration,
    ) -> Result<Duration, BootFailure> {
        let deadline = Instant::now() + timeout;
        let ready = self.try_wait_for_line_or_silence(
            mark,
            |l| l.contains(READY_LINE),
            timeout,
            Some(BOOT_SILENCE),
        );
        let classify = |why: String| {
            let reset = why.contains("exited")
                && self
                    .exit_status_soon()
                    .is_some_and(|s| s.code() == Some(EXIT_GUEST_RESET));
            if why.contains("stalled") || reset {
                BootFailure::TestBed(why)
            } else {
                BootFailure::Other(why)
            }
        };
        let (_, ready) = ready.map_err(classify)?;
        let left = deadline.saturating_duration_since(Instant::now());
        // The bed's guests also reset now and then between the two lines.
        self.try_wait_for_line_or_silence(
            mark,
            |l| l.contains(SESSION_READY_LINE),
            left.max(Duration::from_secs(10)),
            None,
        )
        .map_err(|why| classify(format!("no session script start: {why}")))?;
        self.note(format!("guest ready after {:?}", ready.at));
        Ok(ready.at)
    }

    /// The exit status, waiting up to 2 s for it: the console closes a moment before the
    /// process can be reaped.
    fn exit_status_soon(&self) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let status = self.try_exit_status();
            if status.is_some() || Instant::now() >= deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn last_console_line(&self) -> String {
        let state = self.log.lock();
        state
            .lines
            .iter()
            .rev()
            .find(|l| l.source == Source::Console)
            .map(|l| format!("[{:.3}] {}", l.at.as_secs_f64(), truncate(&l.text, 100)))
            .unwrap_or_default()
    }

    /// What plugvm's threads do: state and CPU time (ticks) of each, and how much CPU each
    /// used in the next second. A stalled guest whose vCPU thread runs flat out is looping in
    /// KVM (the test bed's nested page fault loops were such); one whose vCPU threads sleep
    /// waits for an interrupt.
    fn thread_activity(&self) -> String {
        // (thread id, name, state, CPU ticks); the id tells apart threads of the same name.
        let sample = || -> Vec<(u64, String, char, u64)> {
            let dir = format!("/proc/{}/task", self.pid);
            let mut threads: Vec<_> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter_map(|t| {
                    let tid = t.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
                    // The name is in parentheses and may hold spaces; the fields follow.
                    let (head, rest) = stat.rsplit_once(')')?;
                    let name = head.split_once('(')?.1.to_string();
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    let state = fields.first()?.chars().next()?;
                    let ticks = fields.get(11)?.parse::<u64>().ok()?
                        + fields.get(12)?.parse::<u64>().ok()?;
                    Some((tid, name, state, ticks))
                })
                .collect();
            threads.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
            threads
        };
        let before = sample();
        std::thread::sleep(Duration::from_secs(1));
        let after = sample();
        let threads: Vec<String> = after
            .iter()
            .map(|(tid, name, state, ticks)| {
                let was = before.iter().find(|b| b.0 == *tid).map_or(*ticks, |b| b.3);
                format!("{name} {state} +{}", ticks.saturating_sub(was))
            })
            .collect();
        format!(
            "plugvm's threads (state, CPU ticks in 1 s): {}",
            threads.join(", ")
        )
    }

    /// Index of the next console line to arrive: pass it to [`Self::wait_for_console_since`]
    /// to look only at what comes after now.
    pub fn console_mark(&self) -> usize {
        self.log.lock().lines.len()
    }

    /// Waits for a console line (any since plugvm started) that satisfies `pred` and returns
    /// it. Panics on timeout or plugvm's exit.
    pub fn wait_for_console(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        self.wait_for_console_since(0, pred, timeout)
    }

    /// Like [`Self::wait_for_console`], looking only at lines from index `mark` on (see
    /// [`Self::console_mark`]).
    pub fn wait_for_console_since(
        &self,
        mark: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        self.wait_for_line(mark, pred, timeout, "console line")
            .1
            .text
    }

    /// The console lines that satisfy `pred`, so far.
    pub fn console_lines(&self, pred: impl Fn(&str) -> bool) -> Vec<LogLine> {
        self.log
            .lock()
            .lines
            .iter()
            .filter(|l| l.source == Source::Console && pred(&l.text))
            .cloned()
            .collect()
    }

    /// Waits for a console line from index `mark` on that satisfies `pred`; returns its index
    /// and the line.
    fn wait_for_line(
        &self,
        mark: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
        what: &str,
    ) -> (usize, LogLine) {
        match self.try_wait_for_line(mark, pred, timeout) {
            Ok(found) => found,
            Err(why) => panic!("no {what}: {why} (session report below)"),
        }
    }

    fn try_wait_for_line(
        &self,
        mark: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<(usize, LogLine), String> {
        self.try_wait_for_line_or_silence(mark, pred, timeout, None)
    }

    /// [`Self::try_wait_for_line`] that also gives up when the console has printed nothing
    /// for `silence` (a booting guest prints all the time; one that stops has stalled, and
    /// waiting out the whole timeout would only make the test slower to retry).
    fn try_wait_for_line_or_silence(
        &self,
        mark: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
        silence: Option<Duration>,
    ) -> Result<(usize, LogLine), String> {
        let deadline = Instant::now() + timeout;
        let mut next = mark;
        let mut state = self.log.lock();
        loop {
            while next < state.lines.len() {
                let line = &state.lines[next];
                if line.source == Source::Console && pred(&line.text) {
                    return Ok((next, line.clone()));
                }
                next += 1;
            }
            if state.console_closed {
                return Err("plugvm closed its console (it exited)".to_string());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("timed out after {timeout:?}"));
            }
            if let Some(silence) = silence {
                let last = state
                    .lines
                    .iter()
                    .rev()
                    .find(|l| l.source == Source::Console)
                    .map_or(Duration::ZERO, |l| l.at);
                let quiet = self.log.start.elapsed().saturating_sub(last);
                if quiet >= silence {
                    return Err(format!(
                        "the guest's console has been silent for {quiet:?}: its boot stalled"
                    ));
                }
            }
            // Wake up now and then even without output, to notice plugvm's exit.
            let wait = (deadline - now).min(Duration::from_millis(500));
            state = self
                .log
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            drop(state);
            if self.try_exit_status().is_some() {
                // Let the reader thread deliver the last lines first.
                std::thread::sleep(Duration::from_millis(100));
            }
            state = self.log.lock();
        }
    }

    /// Runs `cmd` (one line of shell, no trailing `&`) in the guest and returns its output
    /// (lines joined with `\n`, trimmed; `PLUGVM-HOTPLUG` lines of the uevent handler left
    /// out). Panics if it exits non-zero or does not finish in `timeout`.
    pub fn exec(&self, cmd: &str, timeout: Duration) -> String {
        let (rc, out) = self.exec_status(cmd, timeout);
        if rc != 0 {
            panic!("guest command {cmd:?} exited with {rc}; output:\n{out}");
        }
        out
    }

    /// Like [`Self::exec`], but returns the exit code with the output instead of panicking on
    /// a non-zero one.
    pub fn exec_status(&self, cmd: &str, timeout: Duration) -> (i32, String) {
        match self.try_exec(cmd, timeout) {
            Ok(r) => r,
            Err(why) => panic!("guest command {cmd:?}: {why} (session report below)"),
        }
    }

    fn try_exec(&self, cmd: &str, timeout: Duration) -> Result<(i32, String), String> {
        let cmd = cmd.trim().trim_end_matches(';');
        if cmd.contains('\n') {
            return Err("commands must be one line".to_string());
        }
        let _one_at_a_time = self.exec_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.stuck.load(Ordering::Relaxed) {
            return Err("an earlier command never finished".to_string());
        }
        let n = self.next_marker.fetch_add(1, Ordering::Relaxed);
        let begin = format!("__PVM_B_{n}__");
        let end = format!("__PVM_E_{n}__");
        // Quoted halves: neither the tty's echo of this line nor `set -x` output can match.
        let line = format!("echo \"__PVM\"\"_B_{n}__\"; {cmd} ; echo \"__PVM\"\"_E_{n}__ $?\"\n");
        let mark = self.console_mark();
        self.note(format!("exec #{n}: {cmd}"));
        {
            let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
            let pipe = stdin.as_mut().ok_or("plugvm's stdin is closed")?;
            pipe.write_all(line.as_bytes())
                .and_then(|()| pipe.flush())
                .map_err(|e| format!("cannot write to plugvm's stdin: {e}"))?;
        }
        let deadline = Instant::now() + timeout;
        let left = |d: Instant| d.saturating_duration_since(Instant::now());
        let found = self
            .try_wait_for_line(mark, |l| l.contains(&begin), left(deadline))
            .and_then(|(b, _)| {
                self.try_wait_for_line(b + 1, |l| l.contains(&end), left(deadline))
                    .map(|(e, line)| (b, e, line))
            });
        let (b, e, end_line) = match found {
            Ok(f) => f,
            Err(why) => {
                self.stuck.store(true, Ordering::Relaxed);
                return Err(why);
            }
        };
        let (before_end, after_end) = end_line
            .text
            .split_once(&end)
            .unwrap_or(("", end_line.text.as_str()));
        let rc: i32 = after_end
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("cannot read the exit code in {:?}", end_line.text))?;
        let state = self.log.lock();
        let mut out: Vec<&str> = state.lines[b + 1..e]
            .iter()
            .filter(|l| l.source == Source::Console && !l.text.starts_with("PLUGVM-HOTPLUG "))
            .map(|l| l.text.as_str())
            .collect();
        if !before_end.is_empty() {
            // Output without a final newline shares the end marker's line.
            out.push(before_end);
        }
        let out = out.join("\n").trim().to_string();
        drop(state);
        self.note(format!("exec #{n} rc={rc}"));
        Ok((rc, out))
    }

    /// Runs `cmd` in the guest every 200 ms until its output satisfies `pred` and returns that
    /// output. Panics (with the last output) after `timeout`.
    pub fn poll_exec(&self, cmd: &str, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, out) = self.exec_status(cmd, Duration::from_secs(30));
            if pred(&out) {
                return out;
            }
            if Instant::now() >= deadline {
                panic!("guest command {cmd:?} still printed {out:?} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends `method path` with `body` (JSON) to the API and returns the status and the body
    /// (`Value::Null` if empty, a `Value::String` if it is not JSON). `path` is either a full
    /// target (`/api/v1/vm.info`) or relative to `/api/v1/` (`vm.info`). Panics if the request
    /// cannot be made.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let raw = body.map(Value::to_string);
        self.api_raw(method, path, raw.as_deref().map(str::as_bytes))
    }

    /// Like [`Self::api`] with a raw body (for malformed JSON).
    pub fn api_raw(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Value) {
        let target = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{path}", plugvm_remote::wire::API_PREFIX)
        };
        let shown_body = body.map(String::from_utf8_lossy).unwrap_or_default();
        self.note(format!("API {method} {target} {shown_body}"));
        let started = Instant::now();
        let result =
            plugvm_remote::client::request(&self.socket, method, &target, body, API_TIMEOUT);
        let response = match result {
            Ok(r) => r,
            Err(e) => panic!("API {method} {target}: {e} (session report below)"),
        };
        let text = String::from_utf8_lossy(&response.body).to_string();
        crate::openapi::assert_documented(method, &target, response.status);
        self.note(format!(
            "API {method} {target} -> {} in {:?}: {}",
            response.status,
            started.elapsed(),
            truncate(&text, 4000)
        ));
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (response.status, value)
    }

    /// Like [`Self::api`], without noting the exchange in the session's log (for floods of
    /// requests); the status is still checked against the OpenAPI document.
    pub fn api_quiet(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let target = format!("{}/{path}", plugvm_remote::wire::API_PREFIX);
        let raw = body.map(Value::to_string);
        let response = plugvm_remote::client::request(
            &self.socket,
            method,
            &target,
            raw.as_deref().map(str::as_bytes),
            API_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("API {method} {target}: {e} (session report below)"));
        crate::openapi::assert_documented(method, &target, response.status);
        let value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        (response.status, value)
    }

    /// The names of plugvm's threads that are vCPU threads (`vcpuN`), sorted.
    pub fn vcpu_threads(&self) -> Vec<String> {
        let dir = format!("/proc/{}/task", self.pid);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                    .map(|s| s.trim().to_string())
                    .filter(|s| s.starts_with("vcpu"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// A field of plugvm's `/proc/<pid>/status` given in kB (`VmRSS`, `VmSize`, ...), in KiB.
    /// Panics if the file or the field cannot be read.
    pub fn proc_status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid);
        let status =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {path}:\n{status}"))
    }

    /// The lines of plugvm's `/proc/<pid>/maps`. Panics if it cannot be read.
    pub fn proc_maps(&self) -> Vec<String> {
        let path = format!("/proc/{}/maps", self.pid);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The targets of plugvm's open file descriptors (`/proc/<pid>/fd/N` -> target), sorted
    /// by fd number. Panics if the directory cannot be read.
    pub fn proc_fds(&self) -> Vec<(u32, String)> {
        let dir = format!("/proc/{}/fd", self.pid);
        let mut fds: Vec<(u32, String)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {dir}: {e}"))
            .filter_map(Result::ok)
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.parse().ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some((fd, target.display().to_string()))
            })
            .collect();
        fds.sort();
        fds
    }

    /// plugvm's exit status if it has exited (reaps it).
    pub fn try_exit_status(&self) -> Option<ExitStatus> {
        let mut status = self.exit_status.lock().unwrap_or_else(|e| e.into_inner());
        if status.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(Some(s)) = child.try_wait() {
                *status = Some(s);
            }
        }
        *status
    }

    /// Waits up to `timeout` for plugvm to exit; returns its exit code (`None`: killed by a
    /// signal). Panics if it is still running then.
    pub fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit_status() {
                self.note(format!("plugvm exited: {s}"));
                return s.code();
            }
            if Instant::now() >= deadline {
                panic!("plugvm still running after {timeout:?} (session report below)");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the VM (`PUT vm.shutdown`), then plugvm (`PUT vmm.shutdown`), each of which must
    /// answer 2xx, and returns plugvm's exit code. Panics if it does not exit within 30 s.
    pub fn shutdown(&self) -> Option<i32> {
        for endpoint in ["vm.shutdown", "vmm.shutdown"] {
            let (status, body) = self.api("PUT", endpoint, None);
            assert!(
                (200..300).contains(&status),
                "{endpoint} answered {status} {body}"
            );
        }
        self.wait_exit(Duration::from_secs(30))
    }

    /// The last logged lines (console, stderr, commands and API exchanges) with their times,
    /// and plugvm's state.
    pub fn report(&self) -> String {
        self.render_log(REPORT_LINES)
    }

    /// Every logged line, formatted like [`Self::report`].
    pub fn full_log(&self) -> String {
        self.render_log(usize::MAX)
    }

    fn render_log(&self, last: usize) -> String {
        let state = self.log.lock();
        let skip = state.lines.len().saturating_sub(last);
        let mut out = format!(
            "--- plugvm (pid {}) {}; last {} of {} log lines ---\n",
            self.pid,
            match *self.exit_status.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(s) => format!("exited: {s}"),
                None => "running".to_string(),
            },
            state.lines.len() - skip,
            state.lines.len()
        );
        for line in &state.lines[skip..] {
            let tag = match line.source {
                Source::Console => "con",
                Source::Stderr => "err",
                Source::Test => "TEST",
            };
            out.push_str(&format!(
                "[{:>8.3}] {tag} {}\n",
                line.at.as_secs_f64(),
                line.text
            ));
        }
        out.push_str("--- end ---");
        out
    }
}

impl Drop for GuestSession {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Diagnostics: the kernel's view, if the guest still answers.
            if self.try_exit_status().is_none() && !self.stuck.load(Ordering::Relaxed) {
                // Its output lands in the log as console lines.
                let _ = self.try_exec("dmesg | tail -n 30", Duration::from_secs(15));
            }
            eprintln!("{}", self.report());
        } else if std::env::var_os(LOG_VAR).is_some() {
            eprintln!("{}", self.full_log());
        }
        drop(self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.stall_console(false);
        let gone = self.try_exit_status().is_some() || {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            crate::kill_bounded(&mut child, Duration::from_secs(5)).is_some()
        };
        // The readers end when plugvm's pipes close, which a process that cannot die never
        // does: leave them then.
        if gone {
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_script_fits_the_command_line() {
        // x86 kernel command lines are limited to 2048 bytes.
        assert!(base64(SESSION_SCRIPT.as_bytes()).len() < 300);
        assert!(SESSION_SCRIPT.contains(SESSION_READY_LINE));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
