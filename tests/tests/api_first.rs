//! The VM's life through the API, with Cloud Hypervisor's clients (ch-remote's and Kata's
//! exact requests, parsed their strict way), on any KVM host: `plugvm --api-socket` alone,
//! then create, boot, pause, resume, shutdown (the VMM stays), boot again, delete and
//! vmm.shutdown. The guest is [`idle_elf_kernel`], which halts until stopped; the real-guest
//! version of these sequences is `cloud_hypervisor.rs`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plugvm_tests::ch_clients::{ch_remote, ch_resize_body, check_vm_info, ChAnswer, KataClient};
use plugvm_tests::metrics::{metric, Scrape};
use plugvm_tests::{idle_elf_kernel, kill_bounded, plugvm_binary, ScratchDir};
use serde_json::{json, Value};

struct Vmm {
    child: Child,
    socket: std::path::PathBuf,
    dir: ScratchDir,
}

impl Vmm {
    fn start() -> Vmm {
        let dir = ScratchDir::new("api-first");
        let socket = dir.join("api.sock");
        let child = Command::new(plugvm_binary())
            .arg("--api-socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start plugvm: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "no API socket");
            std::thread::sleep(Duration::from_millis(10));
        }
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

fn assert_refused(answer: &ChAnswer, status: usize, words: &str) {
    assert!(!answer.success, "{answer:?}");
    assert_eq!(answer.status, status, "{answer:?}");
    let body = answer.body.as_deref().unwrap_or_default();
    assert!(
        body.contains(words),
        "the error should say {words:?}: {answer:?}"
    );
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
