//! The VM's life through the API, with Cloud Hypervisor's clients (ch-remote's and Kata's
//! exact requests, parsed their strict way), on any KVM host: `plugvm --api-socket` alone,
//! then create, boot, pause, resume, shutdown (the VMM stays), boot again, delete and
//! vmm.shutdown. The guest is [`idle_elf_kernel`], which halts until stopped; the real-guest
//! version of these sequences is `cloud_hypervisor.rs`. The same life, watched: the event
//! stream through `plugvm-remote watch`, and the VMM's log in a file, as JSON.

use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use plugvm_remote::client;
use plugvm_tests::ch_clients::{
    assert_refused, ch_remote, ch_resize_body, check_vm_info, ChAnswer, KataClient,
};
use plugvm_tests::metrics::{metric, Scrape};
use plugvm_tests::{
    corrupt_bzimage, idle_elf_kernel, kill_bounded, plugvm_remote_binary, run_with_timeout,
    spawn_api_first, ScratchDir,
};
use serde_json::{json, Value};

struct Vmm {
    child: Child,
    socket: std::path::PathBuf,
    dir: ScratchDir,
}

impl Vmm {
    fn start() -> Vmm {
        Self::start_with(|_, _| {})
    }

    /// Starts `plugvm --api-socket` with what `setup` adds to the command (given the
    /// scratch directory).
    fn start_with(setup: impl FnOnce(&mut Command, &ScratchDir)) -> Vmm {
        let (child, socket, dir) = spawn_api_first("api-first", setup);
        Vmm { child, socket, dir }
    }

    fn ch(&self, method: &str, command: &str, body: Option<&str>) -> ChAnswer {
        ch_remote(&self.socket, method, command, body)
            .unwrap_or_else(|e| panic!("ch-remote {command}: {e}"))
    }

    fn info(&self) -> Value {
        let answer = self.ch("GET", "vm.info", None);
        assert!(answer.success, "{answer:?}");
        let info: Value =
            serde_json::from_str(answer.body.as_deref().unwrap_or_default()).unwrap_or(Value::Null);
        if let Err(e) = check_vm_info(&info) {
            panic!("{e}: {info}");
        }
        info
    }

    /// `GET /metrics`: 200, Prometheus' text format (checked with its content type on the
    /// wire), parsed.
    fn metrics(&self) -> Scrape {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap_or_else(|e| panic!("send: {e}"));
        let mut raw = String::new();
        stream
            .read_to_string(&mut raw)
            .unwrap_or_else(|e| panic!("the metrics are not UTF-8 text: {e}"));
        let (head, text) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        plugvm_tests::openapi::assert_documented("GET", "/metrics", status);
        assert_eq!(status, 200, "{raw}");
        assert!(
            head.contains("\r\nContent-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(text.is_ascii() && text.ends_with('\n'), "{text}");
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP plugvm_")
                    || line.starts_with("# TYPE plugvm_")
                    || line.starts_with("plugvm_"),
                "{line}"
            );
        }
        plugvm_tests::metrics::parse(text)
    }

    /// A request through plugvm-remote's client: its status and JSON body (`null` if none).
    fn api(&self, method: &str, target: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let target = format!("{}/{target}", plugvm_remote::wire::API_PREFIX);
        let response = client::request(
            &self.socket,
            method,
            &target,
            body.as_deref().map(str::as_bytes),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
        let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        (response.status, json)
    }

    /// `plugvm-remote --api-socket S watch ARGS...`, run on a thread of its own (bounded at
    /// 30 s); joining gives its output.
    fn watch(&self, args: &[&str]) -> JoinHandle<Output> {
        let mut command = Command::new(plugvm_remote_binary());
        command.arg("--api-socket").arg(&self.socket).args(args);
        std::thread::spawn(move || {
            run_with_timeout(&mut command, Duration::from_secs(30))
                .unwrap_or_else(|t| panic!("watch still running after 30 s: {:?}", t.0))
        })
    }

    fn wait_exit(&mut self, bound: Duration) -> Option<i32> {
        let deadline = Instant::now() + bound;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill_bounded(&mut self.child, Duration::from_secs(5));
        }
    }
}

fn config(kernel: &std::path::Path) -> Value {
    json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 2},
        "memory": {"size": 256u64 << 20, "hotplug_size": 256u64 << 20, "hotplug_method": "Acpi"},
        "payload": {"kernel": kernel, "cmdline": "console=ttyS0"},
        "serial": {"mode": "Null"},
        "console": {"mode": "Off"}
    })
}

#[test]
fn ch_remote_drives_the_vm_lifecycle_of_an_api_first_launch() {
    let mut vmm = Vmm::start();
    let kernel = vmm.dir.write("idle", idle_elf_kernel());
    let not_kernel = vmm.dir.write("text", b"not a kernel");

    assert!(vmm.ch("GET", "vmm.ping", None).success);
    assert_refused(&vmm.ch("GET", "vm.info", None), 404, "no VM is created");
    assert_refused(&vmm.ch("PUT", "vm.boot", None), 404, "no VM is created");
    assert_refused(&vmm.ch("PUT", "vm.shutdown", None), 409, "not running");
    let deleted = vmm.ch("PUT", "vm.delete", None);
    assert!(
        deleted.success,
        "vm.delete without a VM is a no-op: {deleted:?}"
    );

    // A kernel that does not load: the boot fails with the reason, the VM stays created.
    let bad = config(&not_kernel).to_string();
    assert_eq!(vmm.ch("PUT", "vm.create", Some(&bad)).status, 204);
    assert_refused(&vmm.ch("PUT", "vm.boot", None), 400, "not a Linux kernel");
    assert_eq!(vmm.info()["state"], "Created");
    assert!(vmm.ch("PUT", "vm.delete", None).success);

    let good = config(&kernel).to_string();
    let created = vmm.ch("PUT", "vm.create", Some(&good));
    assert_eq!(
        (created.status, created.body.clone()),
        (204, None),
        "{created:?}"
    );
    let info = vmm.info();
    assert_eq!(info["state"], "Created", "{info}");
    assert_eq!(info["config"]["serial"]["mode"], "Null", "{info}");
    assert_refused(
        &vmm.ch("PUT", "vm.create", Some(&good)),
        409,
        "already created",
    );
    assert_refused(
        &vmm.ch("PUT", "vm.resize", Some(&ch_resize_body(Some(2), None))),
        409,
        "not booted",
    );

    let booted = vmm.ch("PUT", "vm.boot", None);
    assert_eq!((booted.status, booted.success), (204, true), "{booted:?}");
    assert_eq!(vmm.info()["state"], "Running");
    assert_refused(&vmm.ch("PUT", "vm.boot", None), 409, "already booted");
    assert_refused(
        &vmm.ch("PUT", "vm.create", Some(&good)),
        409,
        "already exists",
    );

    assert!(vmm.ch("PUT", "vm.pause", None).success);
    assert_eq!(vmm.info()["state"], "Paused");
    assert_refused(&vmm.ch("PUT", "vm.pause", None), 409, "already paused");
    assert!(vmm.ch("PUT", "vm.resume", None).success);
    assert_eq!(vmm.info()["state"], "Running");

    let counters = vmm.ch("GET", "vm.counters", None);
    assert!(counters.success, "{counters:?}");
    let counters: Value =
        serde_json::from_str(counters.body.as_deref().unwrap_or_default()).unwrap_or_default();
    assert!(
        counters["cpu_hotplug_controller"]["register_accesses"].is_u64(),
        "{counters}"
    );
    // The idle guest does not react to the button; the press itself is accepted.
    assert!(vmm.ch("PUT", "vm.power-button", None).success);

    // shutdown: the VM ends, the VMM and the configuration stay; boot boots it again.
    let shut = vmm.ch("PUT", "vm.shutdown", None);
    assert_eq!((shut.status, shut.success), (204, true), "{shut:?}");
    assert_eq!(vmm.info()["state"], "Created");
    assert!(
        vmm.child.try_wait().ok().flatten().is_none(),
        "plugvm ended"
    );
    assert!(vmm.ch("PUT", "vm.boot", None).success);
    assert_eq!(vmm.info()["state"], "Running");

    // delete while running: the VM ends and is forgotten.
    assert!(vmm.ch("PUT", "vm.delete", None).success);
    assert_refused(&vmm.ch("GET", "vm.info", None), 404, "no VM is created");

    let stop = vmm.ch("PUT", "vmm.shutdown", None);
    assert!(stop.success, "{stop:?}");
    assert_eq!(vmm.wait_exit(Duration::from_secs(3)), Some(0));
    assert!(!vmm.socket.exists(), "the API socket was left behind");
}

#[test]
fn vm_create_boots_through_the_launchs_kernel_cache() {
    // The launch's --kernel-cache applies to a VM created through the API: with a cache,
    // vm.boot extracts the bzImage's vmlinux (and finds this one corrupt); with `off`, the
    // bzImage goes to the loader as it is.
    for (off, words) in [
        (false, "cannot extract the vmlinux from bzImage"),
        (true, "cannot load kernel"),
    ] {
        let vmm = Vmm::start_with(|command, dir| {
            command.arg("--kernel-cache");
            if off {
                command.arg("off");
            } else {
                command.arg(dir.join("cache"));
            }
        });
        let image = vmm.dir.write("bz", corrupt_bzimage());
        let create = vmm.ch("PUT", "vm.create", Some(&config(&image).to_string()));
        assert_eq!(create.status, 204, "{create:?}");
        assert_refused(&vmm.ch("PUT", "vm.boot", None), 400, words);
    }
}

#[test]
fn kata_creates_boots_and_stops_with_its_own_requests() {
    let mut vmm = Vmm::start();
    let kernel = vmm.dir.write("idle", idle_elf_kernel());
    let mut k = KataClient::connect(&vmm.socket).unwrap_or_else(|e| panic!("{e}"));
    let second = Duration::from_secs(1);
    let ping = k
        .call("GET", "vmm.ping", None, second)
        .and_then(|a| a.decode());
    assert!(ping.is_ok_and(|p| p["version"].is_string()));

    let mut sandbox = config(&kernel);
    sandbox["vsock"] = json!({"cid": 3, "iommu": false, "socket": "/run/clh.sock"});
    let refused = k
        .call("PUT", "vm.create", Some(&sandbox), second)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.body).contains("vsock"),
        "{refused:?}"
    );

    let mut kata = config(&kernel);
    kata["cpus"]["topology"] =
        json!({"cores_per_die": 2, "dies_per_package": 1, "packages": 1, "threads_per_core": 1});
    kata["rng"] = json!({"iommu": false, "src": "/dev/urandom"});
    kata["memory"]["thp"] = json!(true);
    kata["watchdog"] = json!(false);
    let created = k
        .call("PUT", "vm.create", Some(&kata), second)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.status, 204, "{created:?}");
    let info = k
        .call("GET", "vm.info", None, second)
        .and_then(|a| a.decode())
        .unwrap_or_default();
    assert_eq!(info["state"], "Created", "{info}");
    assert_eq!(check_vm_info(&info), Ok(()));
    let booted = k
        .call("PUT", "vm.boot", None, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(booted.status, 204, "{booted:?}");
    let info = k
        .call("GET", "vm.info", None, second)
        .and_then(|a| a.decode())
        .unwrap_or_default();
    assert_eq!(info["state"], "Running", "{info}");

    let asked = Instant::now();
    let stop = k
        .call("PUT", "vmm.shutdown", None, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(stop.status < 300, "{stop:?}");
    assert_eq!(vmm.wait_exit(Duration::from_secs(3)), Some(0));
    assert!(asked.elapsed() < Duration::from_secs(3));
    assert!(!vmm.socket.exists());
}

#[test]
fn the_event_stream_follows_the_vm_lifecycle_and_ends_with_the_vmm() {
    use plugvm_tests::event_stream::EventStream;
    let mut vmm = Vmm::start();
    let kernel = vmm.dir.write("idle", idle_elf_kernel());
    let mut stream = EventStream::open(&vmm.socket, Some(0)).unwrap_or_else(|e| panic!("{e}"));
    let good = config(&kernel).to_string();
    for (method, command, body) in [
        ("PUT", "vm.create", Some(good.as_str())),
        ("PUT", "vm.boot", None),
        ("PUT", "vm.pause", None),
        ("PUT", "vm.resume", None),
        ("PUT", "vm.resize", Some(r#"{"desired_vcpus":5}"#)),
        ("PUT", "vm.shutdown", None),
        ("PUT", "vmm.shutdown", None),
    ] {
        let answer = vmm.ch(method, command, body);
        assert!(
            answer.success || command == "vm.resize",
            "{command}: {answer:?}"
        );
    }
    let mut seen = Vec::new();
    let mut ids = Vec::new();
    while let Some(event) = stream
        .next(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}: after {seen:?}"))
    {
        seen.push(format!(
            "{}:{}",
            event.data["source"].as_str().unwrap_or("?"),
            event.event
        ));
        ids.extend(event.id);
        assert!(event.data["at_us"].is_u64(), "{event:?}");
    }
    assert_eq!(
        seen,
        [
            "vmm:starting",
            "vm:created",
            "vm:booting",
            "vm:booted",
            "vm:paused",
            "vm:resumed",
            "hotplug:refused",
            "vm:shutdown",
            "vmm:shutdown"
        ]
    );
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids have gaps: {ids:?}"
    );
    assert_eq!(vmm.wait_exit(Duration::from_secs(3)), Some(0));
}

fn vm_state(scrape: &Scrape) -> Vec<String> {
    ["not_created", "created", "running", "paused"]
        .into_iter()
        .filter(|s| metric(scrape, "plugvm_vm_state", &[("state", s)]) == 1.0)
        .map(str::to_string)
        .collect()
}

/// A hotplug request through plugvm's own client; returns the status.
fn hotplug(vmm: &Vmm, endpoint: &str, body: &str) -> u16 {
    let target = format!("/api/v1/{endpoint}");
    let response = plugvm_remote::client::request(
        &vmm.socket,
        "PUT",
        &target,
        Some(body.as_bytes()),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    plugvm_tests::openapi::assert_documented("PUT", &target, response.status);
    response.status
}

#[test]
fn metrics_answer_with_and_without_a_vm_and_keep_counting() {
    let vmm = Vmm::start();
    let kernel = vmm.dir.write("idle", idle_elf_kernel());
    let gauges = |s: &Scrape| {
        [
            "plugvm_vcpus_present",
            "plugvm_vcpus_max",
            "plugvm_memory_present_bytes",
        ]
        .map(|g| metric(s, g, &[]))
    };
    let refused = |s: &Scrape| {
        metric(
            s,
            "plugvm_hotplug_requests_refused_total",
            &[("kind", "remove_cpu"), ("reason", "invalid")],
        )
    };

    let before = vmm.metrics();
    assert_eq!(vm_state(&before), ["not_created"]);
    assert_eq!(gauges(&before), [0.0; 3]);
    assert_eq!(
        metric(&before, "plugvm_guest_ost_total", &[("status", "success")]),
        0.0
    );
    assert_eq!(
        metric(
            &before,
            "plugvm_register_accesses_total",
            &[("controller", "cpu_hotplug")]
        ),
        0.0
    );

    assert_eq!(
        vmm.ch("PUT", "vm.create", Some(&config(&kernel).to_string()))
            .status,
        204
    );
    assert_eq!(vm_state(&vmm.metrics()), ["created"]);
    assert!(vmm.ch("PUT", "vm.boot", None).success);
    let running = vmm.metrics();
    assert_eq!(vm_state(&running), ["running"]);
    assert_eq!(gauges(&running), [1.0, 2.0, (256u64 << 20) as f64]);

    // Refused before any transaction: counted by kind and reason.
    assert_eq!(hotplug(&vmm, "vm.remove-vcpu", r#"{"id":0}"#), 422);
    // The idle guest never answers: the add is rolled back at its deadline (5 s).
    assert_eq!(hotplug(&vmm, "vm.add-vcpu", "{}"), 504);
    let after = vmm.metrics();
    assert_eq!(refused(&after), 1.0);
    let tx = [("kind", "add_cpu"), ("outcome", "rolled_back")];
    let count = |s: &Scrape| metric(s, "plugvm_hotplug_transaction_duration_seconds_count", &tx);
    assert_eq!(count(&after), 1.0);
    let took = metric(
        &after,
        "plugvm_hotplug_transaction_duration_seconds_sum",
        &tx,
    );
    assert!((5.0..15.0).contains(&took), "{took}");
    assert_eq!(
        metric(
            &after,
            "plugvm_hotplug_rollbacks_total",
            &[("cause", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "plugvm_hotplug_phase_duration_seconds_count",
            &[("phase", "await_guest")]
        ),
        1.0
    );
    assert!(vmm.ch("PUT", "vm.pause", None).success);
    assert_eq!(vm_state(&vmm.metrics()), ["paused"]);
    assert!(vmm.ch("PUT", "vm.resume", None).success);

    // After vm.shutdown the counters stay and the gauges go to 0; a new boot counts on.
    assert!(vmm.ch("PUT", "vm.shutdown", None).success);
    let down = vmm.metrics();
    assert_eq!(vm_state(&down), ["created"]);
    assert_eq!(gauges(&down), [0.0; 3]);
    assert_eq!((count(&down), refused(&down)), (1.0, 1.0));
    assert!(vmm.ch("PUT", "vm.boot", None).success);
    assert_eq!(hotplug(&vmm, "vm.remove-vcpu", r#"{"id":0}"#), 422);
    let again = vmm.metrics();
    assert_eq!(vm_state(&again), ["running"]);
    assert_eq!((count(&again), refused(&again)), (1.0, 2.0));

    // plugvm-remote metrics prints the same text.
    let cli = plugvm_remote::cli::Cli {
        api_socket: vmm.socket.clone(),
        json: false,
        timeout: 10,
        command: plugvm_remote::cli::Command::Metrics,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(
        plugvm_remote::cli::execute(&cli, &mut out, &mut err),
        0,
        "{err:?}"
    );
    let text = String::from_utf8(out).unwrap_or_default();
    assert!(
        text.contains(
            "plugvm_hotplug_requests_refused_total{kind=\"remove_cpu\",reason=\"invalid\"} 2\n"
        ),
        "{text}"
    );
    assert!(vmm.ch("PUT", "vmm.shutdown", None).success);
}

/// What `watch --json` printed: one event object per line, as `source event` pairs.
fn watched(output: &Output) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(output.stderr.is_empty(), "{output:?}");
    stdout
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let phase = event["data"]["phase"].as_str().map(|p| format!(" {p}"));
            format!(
                "{} {}{}",
                event["source"].as_str().unwrap_or("?"),
                event["event"].as_str().unwrap_or("?"),
                phase.unwrap_or_default()
            )
        })
        .collect()
}

/// Creates and boots the idle VM (1 vCPU of 2), pauses and resumes it, starts a vCPU
/// hot-add that the idle guest never answers, and ends the VMM with `vmm.shutdown`.
fn life_with_a_transaction(vmm: &mut Vmm) {
    let kernel = vmm.dir.write("idle", idle_elf_kernel());
    assert_eq!(vmm.api("PUT", "vm.create", Some(config(&kernel))).0, 204);
    assert_eq!(vmm.api("PUT", "vm.boot", None).0, 204);
    assert_eq!(vmm.api("PUT", "vm.pause", None).0, 204);
    assert_eq!(vmm.api("PUT", "vm.resume", None).0, 204);
    let (status, body) = vmm.api("PUT", "vm.add-vcpu?wait=false", Some(json!({})));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["id"], 1, "{body}");
    // The transaction's first phases are streamed as it starts; give the watchers a moment
    // to read them before the VMM ends.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(vmm.api("PUT", "vmm.shutdown", None).0, 204);
    assert_eq!(vmm.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn plugvm_remote_watch_follows_the_vm_life_and_its_transactions() {
    let mut vmm = Vmm::start();
    // From event 1 on (`--since 0`): the watchers see everything, however late they connect.
    let first_six = vmm.watch(&["--json", "watch", "--since", "0", "--count", "6"]);
    let everything = vmm.watch(&["--json", "watch", "--since", "0"]);
    let readable = vmm.watch(&["watch", "--since", "0"]);
    life_with_a_transaction(&mut vmm);

    let first_six = first_six.join().unwrap();
    assert_eq!(
        watched(&first_six),
        [
            "vmm starting",
            "vm created",
            "vm booting",
            "vm booted",
            "vm paused",
            "vm resumed"
        ]
    );
    // Without --count, the watch ends with the stream when the VMM goes: exit 0.
    let everything = everything.join().unwrap();
    assert_eq!(
        watched(&everything),
        [
            "vmm starting",
            "vm created",
            "vm booting",
            "vm booted",
            "vm paused",
            "vm resumed",
            "hotplug started",
            "hotplug phase validate",
            "hotplug phase prepare",
            "hotplug phase publish",
            "vm shutdown",
            "vmm shutdown",
        ]
    );
    let text = String::from_utf8_lossy(&everything.stdout);
    let started: Value = serde_json::from_str(text.lines().nth(6).unwrap()).unwrap();
    assert_eq!(started["tx"], 1, "{started}");
    assert_eq!(started["data"]["request"]["kind"], "add_cpu", "{started}");
    assert_eq!(started["data"]["targets"][0]["device"], json!({"cpu": 1}));

    let readable = readable.join().unwrap();
    assert_eq!(readable.status.code(), Some(0), "{readable:?}");
    let text = String::from_utf8_lossy(&readable.stdout);
    let lines: Vec<&str> = text.lines().map(str::trim_start).collect();
    assert_eq!(lines.len(), 12, "{text}");
    for (line, want) in lines.iter().zip([
        "vmm starting",
        "vm created",
        "vm booting",
        "vm booted: 1 vCPU (max 2), 256 MiB",
        "vm paused",
        "vm resumed",
        "tx 1 add_cpu [cpu 1] started",
        "tx 1 validate",
        "tx 1 prepare",
        "tx 1 publish",
        "vm shutdown (vmm.shutdown)",
        "vmm shutdown (exit code 0)",
    ]) {
        // Each line: `+S.mmms`, then what happened.
        let (time, what) = line.split_once(' ').unwrap_or_default();
        assert!(
            time.starts_with('+') && time.ends_with('s'),
            "{line:?}\n{text}"
        );
        assert!(what.trim_start().starts_with(want), "{line:?}\n{text}");
    }
    assert!(lines[9].ends_with("; waiting for the guest"), "{text}");
}

#[test]
fn the_log_goes_to_the_log_file_as_json_with_each_transaction_in_its_span() {
    let mut vmm = Vmm::start_with(|command, dir| {
        command
            .arg("--log-file")
            .arg(dir.join("vmm.log"))
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped());
    });
    life_with_a_transaction(&mut vmm);
    let mut stderr = String::new();
    if let Some(mut pipe) = vmm.child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
    }
    assert_eq!(stderr, "", "the log went to stderr too");
    let log = std::fs::read_to_string(vmm.dir.join("vmm.log")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let message = |l: &Value| {
        l["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        lines.iter().any(|l| message(l) == "API server listening"),
        "{log}"
    );
    let in_tx: Vec<&Value> = lines.iter().filter(|l| l["span"]["name"] == "tx").collect();
    assert!(
        in_tx
            .iter()
            .any(|l| message(l) == "hotplug transaction started"),
        "{log}"
    );
    for line in &in_tx {
        assert_eq!(line["span"]["id"], 1, "{line}");
        assert_eq!(line["span"]["kind"], "add_cpu", "{line}");
    }

    // Again, appending to the same file, as text: the JSON lines stay, text lines follow.
    let before = log.lines().count();
    let scratch = ScratchDir::new("log-append");
    let path = scratch.write("vmm.log", &log);
    let mut again = Vmm::start_with(|command, _| {
        command.arg("--log-file").arg(&path).env("RUST_LOG", "info");
    });
    assert_eq!(again.api("PUT", "vmm.shutdown", None).0, 204);
    assert_eq!(again.wait_exit(Duration::from_secs(5)), Some(0));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(&log), "the log file was not appended to");
    let added: Vec<&str> = text.lines().skip(before).collect();
    assert!(
        added.iter().any(|l| l.contains("API server listening")),
        "{text}"
    );
    assert!(added.iter().all(|l| !l.starts_with('{')), "{text}");
}

#[test]
fn the_event_monitor_file_has_cloud_hypervisors_format() {
    let mut vmm = Vmm::start_with(|command, dir| {
        command
            .arg("--event-monitor")
            .arg(format!("path={}", dir.join("events.json").display()));
    });
    let kernel = vmm.dir.write("idle", idle_elf_kernel());
    let good = config(&kernel).to_string();
    for (command, body) in [
        ("vm.create", Some(good.as_str())),
        ("vm.boot", None),
        ("vmm.shutdown", None),
    ] {
        assert!(vmm.ch("PUT", command, body).success, "{command}");
    }
    assert_eq!(vmm.wait_exit(Duration::from_secs(3)), Some(0));
    let text = std::fs::read_to_string(vmm.dir.join("events.json")).unwrap_or_default();
    // Cloud Hypervisor writes each event as pretty JSON followed by a blank line.
    let events: Vec<Value> = text
        .split("\n\n")
        .filter(|chunk| !chunk.trim().is_empty())
        .map(|chunk| serde_json::from_str(chunk).unwrap_or_else(|e| panic!("{e}: {chunk}")))
        .collect();
    let names: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["source"].as_str().unwrap_or("?"),
                e["event"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "vmm:starting",
            "vm:created",
            "vm:booting",
            "vm:booted",
            "vm:shutdown",
            "vmm:shutdown"
        ],
        "{text}"
    );
    for e in &events {
        assert!(
            e["timestamp"]["secs"].is_u64() && e["timestamp"]["nanos"].is_u64(),
            "{e}"
        );
        let properties = e["properties"].as_object().unwrap_or_else(|| panic!("{e}"));
        assert!(properties.values().all(Value::is_string), "{e}");
        assert!(properties.contains_key("id"), "{e}");
    }
}
