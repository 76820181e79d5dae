//! A guest that gives a CPU back by itself (an OSPM-initiated eject: `echo 1 > .../eject` in
//! sysfs) under each `--guest-eject` policy. The engine alone decides: with `deny` (the
//! default) the CPU stays, the refusal is journaled and the guest gets the CPU back; with
//! `allow` the VMM releases it (its vCPU thread parks) and journals a committed removal.

use std::time::Duration;

use plugvm_tests::kvm_guest_test;
use plugvm_tests::session::{ConsoleKind, GuestSession};
use serde_json::{json, Value};

const READY_TIMEOUT: Duration = Duration::from_secs(240);
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(30);

/// Ejects CPU 1 from inside the guest (its ACPI device is the ACPI0007 with `_UID` 1).
const EJECT_CPU1: &str = "for d in /sys/bus/acpi/devices/ACPI0007:*; do \
     [ \"$(cat $d/uid)\" = 1 ] && echo 1 > $d/eject && echo ejecting $d; done";

fn start(policy: &str) -> GuestSession {
    let (s, _) = GuestSession::boot(
        "boot=2,max=2",
        "size=512M",
        "",
        ConsoleKind::Stdio,
        &["--guest-eject", policy],
        READY_TIMEOUT,
    );
    assert_eq!(
        s.exec("cat /sys/devices/system/cpu/online", CMD_TIMEOUT),
        "0-1"
    );
    s
}

/// The guest-initiated records of the journal.
fn guest_records(s: &GuestSession) -> Vec<Value> {
    let (status, list) = s.api("GET", "hotplug/transactions", None);
    assert_eq!(status, 200, "{list}");
    list["transactions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["origin"] == "guest")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn info(s: &GuestSession) -> Value {
    let (status, info) = s.api("GET", "vm.info", None);
    assert_eq!(status, 200, "{info}");
    info
}

kvm_guest_test! {
    /// `--guest-eject deny`: the guest's eject of CPU 1 is refused and journaled; the VMM
    /// keeps the CPU (present, its thread running) and the guest brings it back online.
    fn guest_eject_denied_keeps_the_cpu() {
        let s = start("deny");
        let out = s.exec(EJECT_CPU1, CMD_TIMEOUT);
        assert!(out.contains("ejecting"), "{out}");
        // The guest's eject runs in its ACPI hotplug work queue, after the sysfs write: wait
        // for the engine's verdict, then for the guest to take the CPU back.
        let deadline = std::time::Instant::now() + SETTLE;
        let records = loop {
            let records = guest_records(&s);
            // The refusal is journaled at the guest's `_OST(0x103, 0x84)`; wait for its `_EJ0`
            // too, after which the guest gets the CPU back.
            let ejected = records.iter().any(|r| {
                r["guest_events"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["kind"] == "eject"))
            });
            if ejected {
                break records;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no guest-initiated record with the guest's _EJ0: {records:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        // The guest offlines the CPU, its _EJ0 is refused, and the next scan re-adds it.
        s.poll_exec("cat /sys/devices/system/cpu/online", |o| o == "0-1", SETTLE);
        for r in &records {
            assert_eq!(r["status"], "rejected", "{r}");
            let reason = &r["outcome"]["devices"][0]["reason"]["kind"];
            assert_eq!(reason, "guest_eject_denied", "{r}");
        }
        let info = info(&s);
        assert_eq!(info["plugvm"]["cpus"]["vcpus"][1]["state"], "present", "{info}");
        assert_eq!(info["plugvm"]["cpus"]["threads_running"], json!([0, 1]), "{info}");
        s.exec("taskset -c 1 true", CMD_TIMEOUT);
        assert_eq!(s.shutdown(), Some(0));
    }
}

kvm_guest_test! {
    /// `--guest-eject allow`: the guest's eject of CPU 1 commits as a guest-initiated removal;
    /// the VMM releases the CPU (absent, its vCPU thread parked), and the host can add it back.
    fn guest_eject_allowed_releases_the_cpu() {
        let s = start("allow");
        let out = s.exec(EJECT_CPU1, CMD_TIMEOUT);
        assert!(out.contains("ejecting"), "{out}");
        let deadline = std::time::Instant::now() + SETTLE;
        let record = loop {
            if let Some(r) = guest_records(&s).into_iter().find(|r| r["status"] != "in_progress") {
                break r;
            }
            assert!(std::time::Instant::now() < deadline, "no finished guest-initiated record");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(record["status"], "committed", "{record}");
        assert_eq!(record["request"], json!({"kind": "remove_cpu", "id": 1}), "{record}");
        let info = info(&s);
        assert_eq!(info["plugvm"]["cpus"]["vcpus"][1]["state"], "absent", "{info}");
        assert_eq!(info["plugvm"]["cpus"]["threads_running"], json!([0]), "{info}");
        assert_eq!(info["plugvm"]["cpus"]["parked"], json!([1]), "{info}");
        assert_eq!(s.exec("cat /sys/devices/system/cpu/online", CMD_TIMEOUT), "0");

        // The host may plug it in again.
        let (status, body) = s.api("PUT", "vm.add-vcpu", Some(&json!({"id": 1})));
        assert_eq!(status, 200, "{body}");
        s.poll_exec("cat /sys/devices/system/cpu/online", |o| o == "0-1", SETTLE);
        assert_eq!(s.shutdown(), Some(0));
    }
}
