//! The VM's life on a real guest: hotplug while the console's reader has stopped reading,
//! pause and resume, and ending plugvm in every state (a transaction waiting for the guest,
//! `--serial stdio` on a terminal, each termination signal) within a bounded time, with
//! waiting clients answered, the terminal restored and the API socket removed.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plugvm_tests::guest::{base64, guest_image, guest_test_binary, GUEST_CMDLINE};
use plugvm_tests::session::{ConsoleKind, GuestSession};
use plugvm_tests::{kvm_guest_test, ScratchDir};
use serde_json::{json, Value};

const READY_TIMEOUT: Duration = Duration::from_secs(240);
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long plugvm may take to end once asked, in any state.
const EXIT_BOUND: Duration = Duration::from_secs(10);

fn hotplug(s: &GuestSession, endpoint: &str, body: Value) -> (u16, Value) {
    s.api("PUT", endpoint, Some(&body))
}

kvm_guest_test! {
    /// The socket console's client stops reading while the guest floods its console, until
    /// plugvm's output queue is full and drops output (counted). With the client still not
    /// reading, vCPU hot-add and remove commit: the guest's console writes during them (the
    /// uevent helper's lines) are dropped, and no vCPU waits for the reader. Once the client
    /// reads again, the console works.
    fn hotplug_while_the_console_reader_is_stopped() {
        let (s, _) = GuestSession::boot("boot=1,max=2", "size=512M", "", ConsoleKind::Socket, &[], READY_TIMEOUT);
        // A flood that ends by itself: the reader stays stalled after it, and a guest busy
        // printing forever could not take part in a hotplug within its deadline.
        s.exec("(end=$(($(date +%s)+20)); while [ $(date +%s) -lt $end ]; do echo flood-flood-flood-flood-flood-flood-flood-flood; done) >/dev/console 2>&1 & echo flooding", CMD_TIMEOUT);
        let flood_started = Instant::now();
        s.stall_console(true);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, info) = s.api("GET", "vm.info", None);
            if info["plugvm"]["dropped"]["console_bytes"].as_u64().unwrap_or(0) > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the console queue never filled: {info}");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(22).saturating_sub(flood_started.elapsed()));
        let (_, before) = s.api("GET", "vm.info", None);

        let dropped = |info: &Value| info["plugvm"]["dropped"]["console_bytes"].as_u64().unwrap_or(0);
        let started = Instant::now();
        let (status, add) = hotplug(&s, "vm.add-vcpu", json!({"id": 1}));
        assert_eq!(status, 200, "{add}");
        // The guest's uevent helper reports the new CPU on the console: that line is dropped
        // too, and the vCPU that wrote it goes on.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, info) = s.api("GET", "vm.info", None);
            if dropped(&info) > dropped(&before) {
                break;
            }
            assert!(Instant::now() < deadline, "the guest wrote nothing to the console: {info}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (status, remove) = hotplug(&s, "vm.remove-vcpu", json!({"id": 1}));
        assert_eq!(status, 200, "{remove}");
        eprintln!("add and remove with a stalled console took {:?}", started.elapsed());

        let (_, info) = s.api("GET", "vm.info", None);
        assert_eq!(info["plugvm"]["cpus"]["threads_running"], json!([0]), "{info}");
        assert_eq!(info["plugvm"]["cpus"]["parked"], json!([1]), "{info}");

        s.stall_console(false);
        s.poll_exec("echo console-back", |o| o.ends_with("console-back"), Duration::from_secs(60));
        assert_eq!(s.shutdown(), Some(0));
    }
}

kvm_guest_test! {
    /// `vm.pause` takes every vCPU out of `KVM_RUN`; hotplug is refused (409) until
    /// `vm.resume`, after which the guest runs and hotplug works again.
    fn pause_refuses_hotplug_until_resume() {
        let (s, _) = GuestSession::boot("boot=2,max=3", "size=512M", "", ConsoleKind::Stdio, &[], READY_TIMEOUT);
        let (status, body) = s.api("PUT", "vm.resume", None);
        assert_eq!(status, 409, "resume of a running VM: {body}");

        let (status, body) = s.api("PUT", "vm.pause", None);
        assert_eq!(status, 204, "{body}");
        let (_, info) = s.api("GET", "vm.info", None);
        assert_eq!(info["state"], "Paused", "{info}");
        assert_eq!(info["plugvm"]["cpus"]["paused"], json!([0, 1]), "{info}");
        assert_eq!(info["plugvm"]["cpus"]["threads_running"], json!([]), "{info}");
        let (status, body) = s.api("PUT", "vm.pause", None);
        assert_eq!(status, 409, "pause twice: {body}");

        let (status, body) = hotplug(&s, "vm.add-vcpu", json!({}));
        assert_eq!(status, 409, "{body}");
        assert!(body["error"].as_str().unwrap_or("").contains("paused"), "{body}");

        let (status, body) = s.api("PUT", "vm.resume", None);
        assert_eq!(status, 204, "{body}");
        let (_, info) = s.api("GET", "vm.info", None);
        assert_eq!(info["state"], "Running", "{info}");
        assert_eq!(info["plugvm"]["cpus"]["threads_running"], json!([0, 1]), "{info}");
        assert_eq!(s.exec("echo alive", CMD_TIMEOUT), "alive");

        let (status, body) = hotplug(&s, "vm.add-vcpu", json!({}));
        assert_eq!(status, 200, "{body}");
        s.poll_exec("cat /sys/devices/system/cpu/online", |o| o == "0-2", Duration::from_secs(20));
        assert_eq!(s.shutdown(), Some(0));
    }
}

kvm_guest_test! {
    /// A guest whose GED driver never binds leaves an add waiting for its `_OST`. Pausing
    /// then is refused (429: the guest could not answer); `vm.shutdown` ends the VM at once, the
    /// waiting client gets 503 with the transaction's record, and `vmm.shutdown` ends plugvm.
    fn shutdown_with_a_transaction_waiting_for_the_guest() {
        let (s, _) = GuestSession::boot("boot=1,max=2", "size=512M", "initcall_blacklist=ged_driver_init", ConsoleKind::Stdio, &[], READY_TIMEOUT);
        let socket = s.socket().to_path_buf();
        let waiting = std::thread::spawn(move || {
            plugvm_remote::client::request(
                &socket,
                "PUT",
                "/api/v1/vm.add-vcpu",
                Some(b"{}"),
                Duration::from_secs(60),
            )
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, info) = s.api("GET", "vm.info", None);
            if info["plugvm"]["cpus"]["vcpus"][1]["state"] == "adding" {
                break;
            }
            assert!(Instant::now() < deadline, "the add never started: {info}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (status, body) = s.api("PUT", "vm.pause", None);
        assert_eq!(status, 429, "pause with a transaction in flight: {body}");

        // vm.shutdown ends the VM at once; the VMM stays, with the VM created again.
        let asked = Instant::now();
        let (status, body) = s.api("PUT", "vm.shutdown", None);
        assert!((200..300).contains(&status), "{status} {body}");
        assert!(asked.elapsed() < EXIT_BOUND, "vm.shutdown took {:?}", asked.elapsed());
        let answer = waiting
            .join()
            .expect("client thread")
            .expect("the waiting client got no answer");
        assert_eq!(answer.status, 503, "{}", String::from_utf8_lossy(&answer.body));
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        assert!(body["transaction"]["id"].is_u64(), "{body}");
        let (status, info) = s.api("GET", "vm.info", None);
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["state"], "Created", "{info}");
        assert!(s.try_exit_status().is_none(), "plugvm ended on vm.shutdown");

        // vmm.shutdown ends the process and removes the socket.
        let asked = Instant::now();
        let (status, body) = s.api("PUT", "vmm.shutdown", None);
        assert!((200..300).contains(&status), "{status} {body}");
        assert_eq!(s.wait_exit(EXIT_BOUND), Some(0));
        assert!(asked.elapsed() < EXIT_BOUND, "shutdown took {:?}", asked.elapsed());
        assert!(!s.socket().exists(), "the API socket was left behind");
    }
}

/// A pseudo-terminal pair; plugvm gets the slave as stdin, stdout and stderr.
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

fn openpty() -> Pty {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the integers it is given; the name,
    // termios and window size pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
    unsafe {
        Pty {
            master: OwnedFd::from_raw_fd(master),
            slave: OwnedFd::from_raw_fd(slave),
        }
    }
}

/// The slave's `c_lflag` (canonical mode and echo are what raw mode turns off).
fn lflag(fd: &OwnedFd) -> libc::tcflag_t {
    // SAFETY: termios is plain data; tcgetattr fills it for a valid terminal descriptor.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open terminal and `t` a valid termios to write.
    let rc = unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) };
    assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
    t.c_lflag
}

/// Starts plugvm with `--serial stdio` on a pseudo-terminal and the guest `script`; returns
/// the child, the pty, the API socket's path and a thread collecting the terminal's output.
fn spawn_on_pty(
    dir: &ScratchDir,
    script: &str,
) -> (
    std::process::Child,
    Pty,
    std::path::PathBuf,
    std::thread::JoinHandle<String>,
) {
    let img = guest_image();
    let pty = openpty();
    let socket = dir.join("api.sock");
    let stdio = || Stdio::from(pty.slave.try_clone().expect("dup pty slave"));
    let cmdline = format!("{GUEST_CMDLINE} plugvm.run={}", base64(script.as_bytes()));
    let child = Command::new(guest_test_binary())
        .arg("--kernel")
        .arg(img.test_kernel())
        .arg("--initramfs")
        .arg(&img.initramfs)
        .args([
            "--memory",
            "size=256M",
            "--serial",
            "stdio",
            "--cmdline",
            &cmdline,
        ])
        .arg("--api-socket")
        .arg(&socket)
        .env("RUST_LOG", "info")
        .stdin(stdio())
        .stdout(stdio())
        .stderr(stdio())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start plugvm: {e}"));
    let mut master = std::fs::File::from(pty.master.try_clone().expect("dup pty master"));
    let output = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once every slave descriptor is closed: plugvm is gone and the test dropped its own.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).to_string()
    });
    (child, pty, socket, output)
}

fn wait_exit(child: &mut std::process::Child, bound: Duration) -> Option<i32> {
    try_wait_exit(child, bound)
        .unwrap_or_else(|| panic!("plugvm still running {bound:?} after it was asked to end"))
}

/// The exit code, or `None` if plugvm was still running after `bound` (it is killed then).
fn try_wait_exit(child: &mut std::process::Child, bound: Duration) -> Option<Option<i32>> {
    let deadline = Instant::now() + bound;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status.code());
        }
        if Instant::now() > deadline {
            let _ = plugvm_tests::kill_bounded(child, Duration::from_secs(5));
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

kvm_guest_test! {
    /// `--serial stdio` on a terminal: when the guest powers off, plugvm exits with no key
    /// pressed and leaves the terminal as it found it.
    fn stdio_on_a_terminal_exits_after_poweroff() {
        let dir = ScratchDir::new("pty-poweroff");
        // The guest's script ends, and the guest powers off.
        let (mut child, pty, _, output) = spawn_on_pty(&dir, "echo PTY-GUEST-DONE\n");
        let before = lflag(&pty.slave);
        let code = try_wait_exit(&mut child, READY_TIMEOUT);
        let after = lflag(&pty.slave);
        drop(pty);
        let text = output.join().unwrap_or_default();
        // What the terminal showed tells a boot that stalled from a plugvm that did not end.
        let tail: String = text.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
        let code = code.unwrap_or_else(|| panic!("plugvm still running {READY_TIMEOUT:?} after the guest was to power off; the terminal showed:\n{tail}"));
        assert!(text.contains("PTY-GUEST-DONE"), "the guest's output is missing:\n{text}");
        assert_eq!(code, Some(0), "{text}");
        assert_eq!(after, before, "the terminal was left in raw mode");
        assert_ne!(after & libc::ICANON, 0, "canonical mode is off");
    }
}

kvm_guest_test! {
    /// SIGTERM, SIGINT and SIGHUP each end plugvm cleanly while the guest runs (`--serial
    /// stdio` on a terminal): exit code 0 within the bound, the terminal restored, the API
    /// socket removed.
    fn termination_signals_end_plugvm_cleanly() {
        for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT"), (libc::SIGHUP, "SIGHUP")] {
            let dir = ScratchDir::new("pty-signal");
            let (mut child, pty, socket, output) = spawn_on_pty(&dir, "while true; do sleep 1; done\n");
            let before = lflag(&pty.slave);
            let deadline = Instant::now() + READY_TIMEOUT;
            while !socket.exists() {
                assert!(Instant::now() < deadline, "{name}: no API socket");
                std::thread::sleep(Duration::from_millis(20));
            }
            // plugvm sets raw mode when it builds the VM, which may come well after the API
            // socket on a loaded test bed (the kernel is loaded first): wait for it, bounded.
            while lflag(&pty.slave) & libc::ICANON != 0 {
                assert!(Instant::now() < deadline, "{name}: plugvm did not set raw mode");
                std::thread::sleep(Duration::from_millis(20));
            }
            // The guest is booting: vCPUs in KVM_RUN, the console and stdin threads busy.
            std::thread::sleep(Duration::from_secs(2));
            let pid = i32::try_from(child.id()).expect("pid");
            // SAFETY: kill only sends a signal to our own child process.
            assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
            let asked = Instant::now();
            let code = wait_exit(&mut child, EXIT_BOUND);
            let took = asked.elapsed();
            let after = lflag(&pty.slave);
            drop(pty);
            let text = output.join().unwrap_or_default();
            assert_eq!(code, Some(0), "{name}: exit code; output:\n{text}");
            assert!(text.contains("terminating on signal"), "{name}: not logged:\n{text}");
            assert_eq!(after, before, "{name}: the terminal was not restored");
            assert!(!socket.exists(), "{name}: the API socket was left behind");
            eprintln!("{name}: plugvm ended {took:?} after the signal");
        }
    }
}
