//! The live API driven from its own OpenAPI document (`resources/openapi.yaml`) by
//! Schemathesis, a schema-based fuzzer from PyPI (installed by `resources/schemathesis.sh`):
//! for every operation it sends the document's examples, boundary values and made-up requests,
//! valid and invalid, and checks that no answer is a server error, that each status, content
//! type, header and body is one the document declares, and that invalid requests are refused.
//! It runs against a VMM with no VM and against one with a VM created (not booted), on any
//! host: no guest runs.
//!
//! Left out, and why: `vmm.shutdown` (it ends the VMM under test), `GET /events` (a stream that
//! never ends; `tests/tests/events.rs` reads it), `vm.boot` with a VM (a booted VM's hotplugs
//! wait for a guest: `cloud_hypervisor.rs` and the hotplug tests cover them), and the
//! `positive_data_acceptance` check (a valid hotplug request gets 409 without a running VM).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use plugvm_tests::{
    idle_elf_kernel, kill_bounded, resource_script_output, run_with_timeout, spawn_api_first,
    workspace_root, ScratchDir,
};

/// Fixed, so that a run is repeatable; a longer run with other seeds is in docs/fuzzing.md.
const SEED: &str = "20261129";
/// Bounds one Schemathesis run (it takes about 15 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Schemathesis' command, installed once per process (the tests run in parallel threads).
fn schemathesis() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        resource_script_output("schemathesis.sh").map(|out| PathBuf::from(out.trim()))
    });
    match result {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A TCP port on loopback forwarding each connection to the API's Unix socket (Schemathesis
/// speaks HTTP over TCP only). The threads end with the test process.
fn tcp_bridge(socket: &Path) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"))
        .port();
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let Ok(unix) = UnixStream::connect(&socket) else {
                continue;
            };
            let (Ok(tcp2), Ok(unix2)) = (tcp.try_clone(), unix.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || copy(tcp, unix));
            std::thread::spawn(move || copy_back(unix2, tcp2));
        }
    });
    port
}

fn copy(mut from: TcpStream, mut to: UnixStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn copy_back(mut from: UnixStream, mut to: TcpStream) {
    let mut buf = [0u8; 16384];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

struct Vmm {
    child: Child,
    socket: PathBuf,
    _dir: ScratchDir,
}

impl Vmm {
    fn start(label: &str) -> Vmm {
        let (child, socket, dir) = spawn_api_first(label, |_, _| {});
        let kernel = dir.write("idle.elf", idle_elf_kernel());
        let vmm = Vmm {
            child,
            socket,
            _dir: dir,
        };
        if label.ends_with("created") {
            let body = format!(
                r#"{{"payload":{{"kernel":"{}"}},"cpus":{{"boot_vcpus":1,"max_vcpus":4}},"memory":{{"size":268435456,"hotplug_method":"Acpi","hotplug_size":1073741824}}}}"#,
                kernel.display()
            );
            let (status, answer) = vmm.request("PUT", "/api/v1/vm.create", &body);
            assert_eq!(status, 204, "vm.create: {answer}");
        }
        vmm
    }

    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut stream =
            UnixStream::connect(&self.socket).unwrap_or_else(|e| panic!("connect: {e}"));
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("send: {e}"));
        let mut raw = String::new();
        let _ = stream.read_to_string(&mut raw);
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, raw)
    }

    /// Runs Schemathesis against `base` (a path under the socket) with `filters`; panics with
    /// its report unless every check passed.
    fn fuzz(&self, base: &str, filters: &[&str]) {
        let port = tcp_bridge(&self.socket);
        let mut cmd = Command::new(schemathesis());
        cmd.arg("run")
            .arg(workspace_root().join("resources/openapi.yaml"))
            .args(["--url", &format!("http://127.0.0.1:{port}{base}")])
            .args(["--seed", SEED, "--workers", "1", "--no-color"])
            .args(["--exclude-checks", "positive_data_acceptance"])
            .args(filters)
            .stdin(Stdio::null());
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT)
            .unwrap_or_else(|_| panic!("schemathesis ran over {RUN_TIMEOUT:?}"));
        let report = String::from_utf8_lossy(&out.stdout);
        eprintln!("{report}");
        assert!(
            out.status.success(),
            "schemathesis found problems ({}):\n{report}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let (status, _) = self.request("GET", "/api/v1/vmm.ping", "");
        assert_eq!(status, 200, "the VMM stopped answering after the run");
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        kill_bounded(&mut self.child, Duration::from_secs(5));
    }
}

const EVERYWHERE_BUT: [&str; 6] = [
    "--exclude-path",
    "/vmm.shutdown",
    "--exclude-path",
    "/events",
    "--exclude-path",
    "/metrics",
];

#[test]
fn schemathesis_finds_nothing_on_a_vmm_without_a_vm() {
    let vmm = Vmm::start("schema-empty");
    vmm.fuzz("/api/v1", &EVERYWHERE_BUT);
    // `/metrics` is at the socket's root, not under /api/v1.
    vmm.fuzz("", &["--include-path", "/metrics"]);
}

#[test]
fn schemathesis_finds_nothing_on_a_vmm_with_a_vm_created() {
    let vmm = Vmm::start("schema-created");
    let mut filters = EVERYWHERE_BUT.to_vec();
    filters.extend(["--exclude-path", "/vm.boot"]);
    vmm.fuzz("/api/v1", &filters);
}
