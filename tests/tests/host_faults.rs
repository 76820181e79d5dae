//! The host fails a hotplug, not the guest: each host call a CPU or memory hotplug makes
//! (mapping memory, KVM's memory-slot and vCPU calls, starting a vCPU thread) is made to fail
//! once with `--inject-fault`, on a real Debian guest. A failure before the guest hears of the
//! device rolls the transaction back and answers 500 naming the call; the next request works.
//! A failure after the guest let the device go (the KVM slot deletion at a removal's Commit)
//! cannot be rolled back: the removal stands, the error is journaled, and the slot's leftover
//! is deleted before the slot is used again.

use std::time::Duration;

use plugvm_tests::kvm_guest_test;
use plugvm_tests::session::{ConsoleKind, GuestSession};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const READY_TIMEOUT: Duration = Duration::from_secs(240);
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
const ONLINE_TIMEOUT: Duration = Duration::from_secs(60);

fn put(s: &GuestSession, path: &str, body: Value) -> (u16, Value) {
    let (status, answer) = s.api("PUT", path, Some(&body));
    eprintln!("{path} {body}: {status} {}", answer["error"]);
    (status, answer)
}

/// A request the host fails: 500, the injected call named, the transaction rolled back.
fn assert_host_failure(s: &GuestSession, path: &str, body: Value, call: &str) {
    let (status, answer) = put(s, path, body);
    assert_eq!(status, 500, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("injected fault: {call}")),
        "{error}"
    );
    assert_eq!(answer["transaction"]["status"], "rolled_back", "{answer}");
}

fn mem_total_kib(s: &GuestSession) -> u64 {
    s.exec("awk '/^MemTotal:/ {print $2}' /proc/meminfo", CMD_TIMEOUT)
        .parse()
        .unwrap_or(0)
}

fn wait_mem_total_above(s: &GuestSession, kib: u64) -> u64 {
    let out = s.poll_exec(
        "awk '/^MemTotal:/ {print $2}' /proc/meminfo",
        |v| v.parse::<u64>().is_ok_and(|v| v > kib),
        ONLINE_TIMEOUT,
    );
    out.parse().unwrap_or(0)
}

kvm_guest_test! {
    /// Every injected host fault of a CPU and a memory hotplug, on one guest.
    fn host_faults_roll_back_and_the_next_request_works() {
        let faults = [
            "mmap",
            "kvm-memory-slot-add",
            "kvm-memory-slot-delete",
            "kvm-create-vcpu",
            "vcpu-thread-spawn",
        ];
        let mut args = Vec::new();
        for f in faults {
            args.extend(["--inject-fault", f]);
        }
        // CPUs 1..=8 get a spare vCPU at start; CPU 9 is created by its hotplug.
        let (s, _) = GuestSession::boot(
            "boot=1,max=10",
            "size=512M,hotplug_size=1G,hotplug_slots=4",
            "",
            ConsoleKind::Stdio,
            &args,
            READY_TIMEOUT,
        );
        let total0 = mem_total_kib(&s);

        // Memory: the mapping fails, then KVM's slot; the third add works.
        let add = json!({ "size": 128 * MIB });
        assert_host_failure(&s, "vm.add-memory", add.clone(), "mmap");
        assert_host_failure(&s, "vm.add-memory", add.clone(), "kvm-memory-slot-add");
        let (_, info) = s.api("GET", "vm.info", None);
        assert_eq!(info["config"]["memory"]["size"], json!(512 * MIB), "{info}");
        let (status, answer) = put(&s, "vm.add-memory", add.clone());
        assert_eq!(status, 200, "{answer}");
        let total1 = wait_mem_total_above(&s, total0);
        assert!(total1 >= total0 + 120 * 1024, "{total0} -> {total1} KiB");

        // The removal's KVM slot deletion fails after the guest let the memory go: the
        // removal stands, with the error journaled.
        let (status, answer) = put(&s, "vm.remove-memory", json!({ "slot": 1 }));
        assert_eq!(status, 200, "{answer}");
        let outcome = &answer["transaction"]["outcome"]["devices"][0];
        assert!(
            outcome["step_errors"].to_string().contains("injected fault: kvm-memory-slot-delete"),
            "{answer}"
        );
        // The slot is used again: its leftover KVM slot is deleted first, no collision.
        let (status, answer) = put(&s, "vm.add-memory", add);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["transaction"]["targets"][0]["device"], json!({"memory_slot": 1}));
        wait_mem_total_above(&s, total0);

        // CPU 9 has no spare: KVM's vCPU creation fails, then the thread; the third add works
        // (with the vCPU KVM made on the second try: KVM cannot destroy one).
        assert_host_failure(&s, "vm.add-vcpu", json!({ "id": 9 }), "kvm-create-vcpu");
        assert_host_failure(&s, "vm.add-vcpu", json!({ "id": 9 }), "vcpu-thread-spawn");
        let (status, answer) = put(&s, "vm.add-vcpu", json!({ "id": 9 }));
        assert_eq!(status, 200, "{answer}");
        // (Linux numbers CPUs in the order they come: APIC id 9 is its CPU 1.)
        s.poll_exec(
            "cat /sys/devices/system/cpu/online",
            |v| v == "0-1",
            ONLINE_TIMEOUT,
        );
        let (_, info) = s.api("GET", "vm.info", None);
        assert_eq!(info["config"]["cpus"]["boot_vcpus"], 2, "{info}");
        assert_eq!(s.shutdown(), Some(0), "{}", s.report());
    }
}
