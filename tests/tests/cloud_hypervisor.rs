//! Cloud Hypervisor's own clients drive plugvm unchanged, against a real Debian guest.
//!
//! The requests are `ch-remote`'s and Kata Containers' exact bytes and sequences, and every
//! answer is parsed the strict way those clients parse it ([`plugvm_tests::ch_clients`]):
//! the status line, the headers they look for, the body shapes, the required fields and the
//! enum spellings of Cloud Hypervisor's schemas.
//!
//! * `ch_remote_drives_an_api_first_launch`: `plugvm --api-socket` alone; `create` (a JSON
//!   `VmConfig` file), `boot`, `info`, `resize --cpus` up and down, `resize --memory`,
//!   `counters`, `pause`/`resume`, `shutdown` (the VMM stays; `boot` boots again) and
//!   `power-button` (the guest's acpid powers it off and plugvm ends with it); bad input on
//!   the way, each a 4xx that leaves the state as it was.
//! * `kata_launches_resizes_and_stops_a_sandbox`: Kata's launch (ping, create, info `Created`,
//!   boot, info `Running`), its vCPU and memory resize (reading `vm.info` the way it does,
//!   within its 1 s deadline), a sandbox configuration plugvm cannot run refused by name, and
//!   its stop (`vmm.shutdown`, the process gone within its 3 s).

use std::path::Path;
use std::time::{Duration, Instant};

use plugvm_tests::ch_clients::{
    assert_refused, ch_remote, ch_resize_body, check_vm_info, ChAnswer, KataClient,
};
use plugvm_tests::kvm_guest_test;
use plugvm_tests::session::{session_payload, GuestSession};
use serde_json::{json, Value};

const READY_TIMEOUT: Duration = Duration::from_secs(240);
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;
/// Kata's deadline for a resize (`clhAPITimeout`).
const KATA_API_TIMEOUT: Duration = Duration::from_secs(1);
/// Kata's deadline for create plus boot.
const KATA_BOOT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Kata waits for the VMM to exit after `vmm.shutdown` before SIGKILL.
const KATA_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// One `ch-remote` command, noted in the session's log; a transport or parse failure (one
/// that would make `ch-remote` itself fail) fails the test.
fn ch(s: &GuestSession, method: &str, command: &str, body: Option<&str>) -> ChAnswer {
    let answer = ch_remote(s.socket(), method, command, body)
        .unwrap_or_else(|e| panic!("ch-remote {command}: {e} (session report below)"));
    s.note(format!(
        "ch-remote {method} {command} -> {} {:?}",
        answer.status, answer.body
    ));
    answer
}

/// `ch-remote info`: a success whose body is a `VmInfo` Cloud Hypervisor's clients accept.
fn ch_info(s: &GuestSession) -> Value {
    let answer = ch(s, "GET", "vm.info", None);
    assert!(answer.success, "info: {answer:?}");
    let info: Value = serde_json::from_str(answer.body.as_deref().unwrap_or_default())
        .unwrap_or_else(|e| panic!("info is not JSON: {e}: {answer:?}"));
    if let Err(e) = check_vm_info(&info) {
        panic!("{e}: {info}");
    }
    info
}

/// The `VmConfig` the tests create: the session guest, `max` vCPUs, 512 MiB plus a 512 MiB
/// ACPI hotplug region, serial on plugvm's stdout (`Tty`), no virtio console.
fn vm_config(kernel: &Path, initramfs: &Path, cmdline: &str, max: u32) -> Value {
    json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": max},
        "memory": {"size": 512 * MIB, "hotplug_size": 512 * MIB, "hotplug_method": "Acpi"},
        "payload": {"kernel": kernel, "initramfs": initramfs, "cmdline": cmdline},
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"}
    })
}

fn online_cpus(s: &GuestSession, want: &str) {
    s.poll_exec(
        "cat /sys/devices/system/cpu/online",
        |out| out == want,
        CMD_TIMEOUT,
    );
}

fn memtotal_kib(s: &GuestSession) -> u64 {
    s.exec("awk '/^MemTotal:/ {print $2}' /proc/meminfo", CMD_TIMEOUT)
        .trim()
        .parse()
        .unwrap_or(0)
}

kvm_guest_test! {
    fn ch_remote_drives_an_api_first_launch() {
        let s = GuestSession::start_api_first();
        let ping = ch(&s, "GET", "vmm.ping", None);
        assert!(ping.success, "{ping:?}");
        let ping: Value = serde_json::from_str(ping.body.as_deref().unwrap_or_default()).unwrap_or(Value::Null);
        assert!(ping["version"].is_string(), "{ping}");

        // Nothing exists yet: every VM command is refused with its reason.
        assert_refused(&ch(&s, "GET", "vm.info", None), 404, "no VM is created");
        assert_refused(&ch(&s, "PUT", "vm.boot", None), 404, "no VM is created");
        assert_refused(&ch(&s, "PUT", "vm.resize", Some(&ch_resize_body(Some(2), None))), 409, "not running");
        assert_refused(&ch(&s, "GET", "vm.counters", None), 409, "not running");

        let (kernel, initramfs, cmdline) = session_payload("");
        let config = vm_config(&kernel, &initramfs, &cmdline, 2);
        // ch-remote sends the file's text as it is.
        let file = format!("{}\n", serde_json::to_string_pretty(&config).unwrap_or_default());
        let created = ch(&s, "PUT", "vm.create", Some(&file));
        assert_eq!((created.status, created.success, &created.body), (204, true, &None));
        let info = ch_info(&s);
        assert_eq!(info["state"], "Created", "{info}");
        assert_eq!(info["config"]["cpus"], json!({"boot_vcpus": 1, "max_vcpus": 2}), "{info}");
        assert_eq!(info["config"]["memory"]["size"], 512 * MIB, "{info}");
        assert_eq!(info["config"]["memory"]["hotplug_size"], 512 * MIB, "{info}");
        assert_eq!(info["config"]["memory"]["hotplug_method"], "Acpi", "{info}");
        assert_eq!(info["config"]["serial"]["mode"], "Tty", "{info}");
        assert_eq!(info["memory_actual_size"], 512 * MIB, "{info}");

        // Bad input before boot leaves the created VM as it was.
        assert_refused(&ch(&s, "PUT", "vm.create", Some(&file)), 409, "already created");
        assert_refused(&ch(&s, "PUT", "vm.resize", Some(&ch_resize_body(Some(2), None))), 409, "not booted");
        assert_refused(&ch(&s, "PUT", "vm.pause", None), 409, "not booted");
        assert_eq!(ch_info(&s), info, "a refused request changed vm.info");

        let booted = ch(&s, "PUT", "vm.boot", None);
        assert_eq!((booted.status, booted.success), (204, true), "{booted:?}");
        s.wait_ready(READY_TIMEOUT);
        assert_eq!(ch_info(&s)["state"], "Running");
        assert_refused(&ch(&s, "PUT", "vm.boot", None), 409, "already booted");

        // resize --cpus 2: the guest has both vCPUs when the answer comes.
        let resized = ch(&s, "PUT", "vm.resize", Some(&ch_resize_body(Some(2), None)));
        assert_eq!((resized.status, resized.success), (200, true), "{resized:?}");
        online_cpus(&s, "0-1");
        assert_eq!(ch_info(&s)["config"]["cpus"]["boot_vcpus"], 2);

        // resize --memory 640M: 128 MiB more, in vm.info as Cloud Hypervisor reports it.
        let before_kib = memtotal_kib(&s);
        let resized = ch(&s, "PUT", "vm.resize", Some(&ch_resize_body(None, Some(640 * MIB))));
        assert!(resized.success, "{resized:?}");
        let info = ch_info(&s);
        assert_eq!(info["config"]["memory"]["size"], 640 * MIB, "{info}");
        assert_eq!(info["memory_actual_size"], 640 * MIB, "{info}");
        let grown = s.poll_exec(
            "awk '/^MemTotal:/ {print $2}' /proc/meminfo",
            |out| out.trim().parse::<u64>().unwrap_or(0) >= before_kib + 120 * 1024,
            CMD_TIMEOUT,
        );
        s.note(format!("MemTotal {before_kib} -> {grown} KiB"));

        // Bad resizes: each refused with its reason, nothing changed.
        assert_refused(&ch(&s, "PUT", "vm.resize", Some(&ch_resize_body(Some(0), None))), 400, "at least 1");
        assert_refused(&ch(&s, "PUT", "vm.resize", Some(&ch_resize_body(None, Some(256 * MIB)))), 422, "");
        assert_refused(&ch(&s, "PUT", "vm.resize", Some(&ch_resize_body(Some(3), None))), 422, "");
        assert_eq!(ch_info(&s)["memory_actual_size"], 640 * MIB);

        // counters: per device, what the sequence implies.
        let counters = ch(&s, "GET", "vm.counters", None);
        assert!(counters.success, "{counters:?}");
        let counters: Value = serde_json::from_str(counters.body.as_deref().unwrap_or_default()).unwrap_or(Value::Null);
        assert_eq!(counters["cpu1"]["committed"], 1, "{counters}");
        assert_eq!(counters["memory_slot1"]["committed"], 1, "{counters}");
        assert!(counters["cpu1"]["ost_success"].as_u64().unwrap_or(0) >= 1, "{counters}");
        assert!(counters["cpu_hotplug_controller"]["register_accesses"].as_u64().unwrap_or(0) > 0, "{counters}");
        assert!(counters.as_object().is_some_and(|m| m.values().all(|d| d.as_object().is_some_and(|c| c.values().all(Value::is_u64)))), "{counters}");

        // pause/resume: a hotplug request while paused is refused.
        let paused = ch(&s, "PUT", "vm.pause", None);
        assert_eq!((paused.status, paused.success), (204, true), "{paused:?}");
        assert_eq!(ch_info(&s)["state"], "Paused");
        assert_refused(&ch(&s, "PUT", "vm.resize", Some(&ch_resize_body(Some(1), None))), 409, "paused");
        assert_refused(&ch(&s, "PUT", "vm.power-button", None), 409, "paused");
        let resumed = ch(&s, "PUT", "vm.resume", None);
        assert_eq!((resumed.status, resumed.success), (204, true), "{resumed:?}");

        // resize --cpus 1: the guest gives vCPU 1 back.
        let resized = ch(&s, "PUT", "vm.resize", Some(&ch_resize_body(Some(1), None)));
        assert!(resized.success, "{resized:?}");
        online_cpus(&s, "0");

        // shutdown: the guest stops, the VMM stays with the VM created; boot boots it again.
        let shut = ch(&s, "PUT", "vm.shutdown", None);
        assert_eq!((shut.status, shut.success), (204, true), "{shut:?}");
        let info = ch_info(&s);
        assert_eq!(info["state"], "Created", "{info}");
        assert_eq!(info["memory_actual_size"], 512 * MIB, "{info}");
        assert!(s.try_exit_status().is_none(), "plugvm ended on vm.shutdown");
        assert_refused(&ch(&s, "PUT", "vm.shutdown", None), 409, "not running");
        let mark = s.console_mark();
        let booted = ch(&s, "PUT", "vm.boot", None);
        assert!(booted.success, "{booted:?}");
        s.wait_ready_since(mark, READY_TIMEOUT);
        online_cpus(&s, "0");

        // power-button: the guest's acpid powers it off; plugvm ends with the guest (exit 0),
        // as Cloud Hypervisor does.
        let pressed = ch(&s, "PUT", "vm.power-button", None);
        assert_eq!((pressed.status, pressed.success), (204, true), "{pressed:?}");
        s.wait_for_console_since(mark, |l| l.contains("power button pressed"), CMD_TIMEOUT);
        assert_eq!(s.wait_exit(Duration::from_secs(60)), Some(0));
        assert!(!s.socket().exists(), "the API socket was left behind");
    }
}

/// A typical Kata sandbox's `VmConfig` as Kata's client sends it, without the virtio devices
/// plugvm does not have (rootfs from an initramfs, no shared file system).
fn kata_config(kernel: &Path, initramfs: &Path, cmdline: &str) -> Value {
    json!({
        "console": {"iommu": false, "mode": "Off"},
        "cpus": {"boot_vcpus": 1, "kvm_hyperv": false, "max_vcpus": 2,
                 "topology": {"cores_per_die": 2, "dies_per_package": 1, "packages": 1, "threads_per_core": 1}},
        "iommu": false,
        "landlock_enable": false,
        "memory": {"hotplug_method": "Acpi", "hotplug_size": 512 * MIB, "hugepages": false, "mergeable": false,
                   "prefault": false, "shared": false, "size": 512 * MIB, "thp": true},
        "payload": {"cmdline": cmdline, "initramfs": initramfs, "kernel": kernel},
        "pvpanic": false,
        "rng": {"iommu": false, "src": "/dev/urandom"},
        "serial": {"iommu": false, "mode": "Tty"},
        "watchdog": false
    })
}

fn kata_info(k: &mut KataClient) -> Value {
    let info = k
        .call("GET", "vm.info", None, KATA_API_TIMEOUT)
        .and_then(|a| a.decode())
        .unwrap_or_else(|e| panic!("Kata's vmInfo: {e}"));
    if let Err(e) = check_vm_info(&info) {
        panic!("{e}: {info}");
    }
    info
}

kvm_guest_test! {
    fn kata_launches_resizes_and_stops_a_sandbox() {
        let s = GuestSession::start_api_first();
        let mut k = KataClient::connect(s.socket()).unwrap_or_else(|e| panic!("{e}"));
        let ping = k.call("GET", "vmm.ping", None, KATA_API_TIMEOUT).and_then(|a| a.decode());
        assert!(ping.is_ok_and(|p| p["version"].is_string()), "waitVMM's ping");

        let (kernel, initramfs, cmdline) = session_payload("");
        let config = kata_config(&kernel, &initramfs, &cmdline);

        // A full Kata sandbox needs virtio devices plugvm does not have: refused, naming one,
        // and nothing created.
        let mut sandbox = config.clone();
        sandbox["vsock"] = json!({"cid": 3, "iommu": false, "socket": "/run/kata/clh.sock"});
        sandbox["pmem"] = json!([{"discard_writes": true, "file": "/kata.img", "iommu": false}]);
        let refused = k.call("PUT", "vm.create", Some(&sandbox), KATA_BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(refused.status, 400, "{refused:?}");
        let message = String::from_utf8_lossy(&refused.body).to_string();
        assert!(message.contains("pmem") || message.contains("vsock"), "{message}");
        for (field, value, words) in [
            ("bogus", json!(1), "unknown field bogus"),
            ("platform", json!({"num_pci_segments": 2}), "platform"),
        ] {
            let mut bad = config.clone();
            bad[field] = value;
            let refused = k.call("PUT", "vm.create", Some(&bad), KATA_BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(refused.status, 400, "{field}: {refused:?}");
            assert!(String::from_utf8_lossy(&refused.body).contains(words), "{field}: {refused:?}");
        }
        let mut contradictory = config.clone();
        contradictory["cpus"]["boot_vcpus"] = json!(3);
        let refused = k.call("PUT", "vm.create", Some(&contradictory), KATA_BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(refused.status, 400, "{refused:?}");
        let gone = k.call("GET", "vm.info", None, KATA_API_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gone.status, 404, "a refused create left a VM: {gone:?}");

        // Kata's bootVM: create, info Created, boot, info Running, within its deadline.
        let started = Instant::now();
        let created = k.call("PUT", "vm.create", Some(&config), KATA_BOOT_TIMEOUT).and_then(|a| a.decode());
        assert!(created.is_ok(), "{created:?}");
        assert_eq!(kata_info(&mut k)["state"], "Created");
        let booted = k.call("PUT", "vm.boot", None, KATA_BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(booted.status, 204, "{booted:?}");
        assert_eq!(kata_info(&mut k)["state"], "Running");
        assert!(started.elapsed() < KATA_BOOT_TIMEOUT, "create and boot took {:?}", started.elapsed());
        s.wait_ready(READY_TIMEOUT);

        // ResizeVCPUs(2): Kata reads boot_vcpus and max_vcpus, then resizes within 1 s.
        let info = kata_info(&mut k);
        assert_eq!((info["config"]["cpus"]["boot_vcpus"].as_u64(), info["config"]["cpus"]["max_vcpus"].as_u64()), (Some(1), Some(2)));
        let resized = k.call("PUT", "vm.resize", Some(&json!({"desired_vcpus": 2})), KATA_API_TIMEOUT);
        let resized = resized.unwrap_or_else(|e| panic!("Kata's VmResizePut: {e}"));
        assert!(resized.status < 300, "{resized:?}");
        online_cpus(&s, "0-1");
        assert_eq!(kata_info(&mut k)["config"]["cpus"]["boot_vcpus"], 2);

        // ResizeMemory: Kata takes config.memory.size as the current size, asks for the new
        // total, and relies on vm.info showing it afterwards.
        let current = kata_info(&mut k)["config"]["memory"]["size"].as_u64().unwrap_or(0);
        let wanted = current + 128 * MIB;
        let resized = k.call("PUT", "vm.resize", Some(&json!({"desired_ram": wanted})), KATA_API_TIMEOUT);
        let resized = resized.unwrap_or_else(|e| panic!("Kata's VmResizePut: {e}"));
        assert!(resized.status < 300, "{resized:?}");
        let info = kata_info(&mut k);
        assert_eq!(info["config"]["memory"]["size"], wanted, "{info}");
        assert_eq!(info["memory_actual_size"], wanted, "{info}");

        // A second request for a device already in flight is Cloud Hypervisor's 429.
        let first = k.call("PUT", "vm.resize?wait=false", Some(&json!({"desired_vcpus": 1})), KATA_API_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        if first.status == 202 {
            let again = k.call("PUT", "vm.resize", Some(&json!({"desired_vcpus": 1})), KATA_API_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
            // The removal may have ended already; if not, the answer is 429 with its reason.
            assert!(matches!(again.status, 200 | 429), "{again:?}");
            if again.status == 429 {
                assert!(String::from_utf8_lossy(&again.body).contains("busy"), "{again:?}");
            }
        }
        online_cpus(&s, "0");

        // vm.delete stops the guest and forgets the VM; a new one can be created.
        let deleted = ch(&s, "PUT", "vm.delete", None);
        assert_eq!((deleted.status, deleted.success), (204, true), "{deleted:?}");
        assert_refused(&ch(&s, "GET", "vm.info", None), 404, "no VM is created");
        let deleted = ch(&s, "PUT", "vm.delete", None);
        assert!(deleted.success, "vm.delete without a VM: {deleted:?}");
        let created = ch(&s, "PUT", "vm.create", Some(&config.to_string()));
        assert!(created.success, "{created:?}");

        // Kata's stop: vmm.shutdown, then the process must be gone within 3 s.
        let asked = Instant::now();
        let stop = k.call("PUT", "vmm.shutdown", None, KATA_STOP_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert!(stop.status < 300, "{stop:?}");
        assert_eq!(s.wait_exit(KATA_STOP_TIMEOUT), Some(0));
        assert!(asked.elapsed() < KATA_STOP_TIMEOUT, "stop took {:?}", asked.elapsed());
        assert!(!s.socket().exists(), "the API socket was left behind");
    }
}
