//! `GET /metrics` with a real Linux guest (Debian's 6.1 kernel): after a vCPU add, a memory
//! add, a vCPU removal and a refused request, the Prometheus metrics count exactly those
//! transactions, the guest's `_OST` verdicts and register accesses, and show what is present.
//! The same metrics without a guest (before and after boot, across a second boot) are checked
//! by `api_first.rs`, and their exact values after a synthetic sequence by the vmm crate's
//! unit tests (`metrics_tests.rs`).

use std::time::Duration;

use plugvm_tests::kvm_guest_test;
use plugvm_tests::metrics::{metric, series, Scrape};
use plugvm_tests::session::{ConsoleKind, GuestSession};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
/// Boot to the session's command loop (the test bed is slow).
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// The uevent handler onlines a hot-added CPU asynchronously.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(20);
const CPU_ONLINE: &str = "cat /sys/devices/system/cpu/online";

/// `GET /metrics`: 200 and text that parses; returns the text and the parsed samples.
fn scrape(s: &GuestSession) -> (String, Scrape) {
    let (status, body) = s.api("GET", "/metrics", None);
    assert_eq!(status, 200, "/metrics: {body}");
    let text = match body {
        Value::String(text) => text,
        other => panic!("/metrics is not text: {other}"),
    };
    let parsed = plugvm_tests::metrics::parse(&text);
    (text, parsed)
}

/// Sends a hotplug request that must commit; returns its journal record (from the answer).
fn hotplug_ok(s: &GuestSession, path: &str, body: Value) -> Value {
    let (status, answer) = s.api("PUT", path, Some(&body));
    assert_eq!(status, 200, "{path} {body}: {answer}");
    assert_eq!(answer["transaction"]["status"], "committed", "{answer}");
    answer["transaction"].clone()
}

kvm_guest_test! {
    /// `--cpus boot=1,max=2 --memory size=512M,hotplug_size=512M`: add a vCPU, add 128 MiB,
    /// remove the vCPU again, and ask for something refused (vCPU 0's removal, 422); the
    /// metrics then count three committed transactions of three kinds, with the journal's
    /// durations, a refused request, at least one successful `_OST` per committed device, no
    /// rollback, accesses to both hotplug controllers, and 1 vCPU of 2 and 640 MiB present.
    fn metrics_count_a_guests_hotplug_transactions() {
        let memory = "size=512M,hotplug_size=512M,hotplug_slots=4";
        let (s, ready) = GuestSession::boot("boot=1,max=2", memory, "", ConsoleKind::Stdio, &[], READY_TIMEOUT);
        eprintln!("guest ready after {ready:?}");
        let (_, booted) = scrape(&s);
        assert_eq!(metric(&booted, "plugvm_vm_state", &[("state", "running")]), 1.0);
        assert!(series(&booted, "plugvm_hotplug_transaction_duration_seconds", &["kind"]).is_empty());

        let add_cpu = hotplug_ok(&s, "vm.add-vcpu", json!({}));
        s.poll_exec(CPU_ONLINE, |o| o == "0-1", ONLINE_TIMEOUT);
        let add_memory = hotplug_ok(&s, "vm.add-memory", json!({ "size": 128 * MIB }));
        let remove_cpu = hotplug_ok(&s, "vm.remove-vcpu", json!({ "id": 1 }));
        let (status, refused) = s.api("PUT", "vm.remove-vcpu", Some(&json!({ "id": 0 })));
        assert_eq!(status, 422, "{refused}");
        assert!(refused.get("transaction").is_none(), "{refused}");

        let (status, counters) = s.api("GET", "vm.counters", None);
        assert_eq!(status, 200, "{counters}");
        let (text, m) = scrape(&s);
        eprintln!("{text}");

        // Three transactions, each of its kind, all committed, each with the journal's time.
        let tx = "plugvm_hotplug_transaction_duration_seconds";
        assert_eq!(
            series(&m, tx, &["kind", "outcome"]),
            [["add_cpu", "committed"], ["add_memory", "committed"], ["remove_cpu", "committed"]]
        );
        let records = [("add_cpu", &add_cpu), ("add_memory", &add_memory), ("remove_cpu", &remove_cpu)];
        for (kind, record) in records {
            let labels = [("kind", kind), ("outcome", "committed")];
            assert_eq!(metric(&m, &format!("{tx}_count"), &labels), 1.0, "{kind}");
            let journaled = record["duration_us"].as_u64().unwrap_or_else(|| panic!("{record}"));
            let sum = metric(&m, &format!("{tx}_sum"), &labels);
            assert!((sum - journaled as f64 / 1e6).abs() < 1e-9, "{kind}: {sum} s vs {journaled} us");
        }
        let phase = |p: &str| {
            metric(&m, "plugvm_hotplug_phase_duration_seconds_count", &[("phase", p)])
        };
        for p in ["validate", "prepare", "publish", "await_guest", "commit"] {
            assert_eq!(phase(p), 3.0, "{p}");
        }
        assert!(series(&m, "plugvm_hotplug_phase_duration_seconds", &["phase"])
            .iter()
            .all(|p| p[0] != "rollback"));
        let refused_labels = [("kind", "remove_cpu"), ("reason", "invalid")];
        assert_eq!(metric(&m, "plugvm_hotplug_requests_refused_total", &refused_labels), 1.0);
        assert_eq!(series(&m, "plugvm_hotplug_requests_refused_total", &["kind"]).len(), 1);

        // The guest: a successful _OST for each committed device (`_OST(1,0)` twice,
        // `_OST(3,0)`), the removal's pending one, and nothing rolled back.
        let ost = |status: &str| metric(&m, "plugvm_guest_ost_total", &[("status", status)]);
        assert!(ost("success") >= 3.0, "{text}");
        assert_eq!(ost("eject_in_progress"), 1.0);
        for cause in ["timeout", "guest_refused", "batch_aborted", "invalid"] {
            let rolled_back = metric(&m, "plugvm_hotplug_rollbacks_total", &[("cause", cause)]);
            assert_eq!(rolled_back, 0.0, "{cause}");
        }

        // Register accesses: both controllers were read by the guest, and the counters
        // never go below what vm.counters showed a moment before.
        let accesses = |c: &str| metric(&m, "plugvm_register_accesses_total", &[("controller", c)]);
        let controllers = [
            ("cpu_hotplug", "cpu_hotplug_controller"),
            ("memory_hotplug", "memory_hotplug_controller"),
        ];
        for (controller, device) in controllers {
            let seen = counters[device]["register_accesses"]
                .as_u64()
                .unwrap_or_else(|| panic!("{counters}"));
            assert!(accesses(controller) > 0.0, "{controller}");
            assert!(accesses(controller) >= seen as f64, "{controller}: {counters}");
        }
        assert_eq!(metric(&m, "plugvm_guest_observations_dropped_total", &[]), 0.0);

        // What is present: vCPU 0 of 2, boot RAM and the 128 MiB slot.
        assert_eq!(metric(&m, "plugvm_vcpus_present", &[]), 1.0);
        assert_eq!(metric(&m, "plugvm_vcpus_max", &[]), 2.0);
        assert_eq!(metric(&m, "plugvm_memory_present_bytes", &[]), (640 * MIB) as f64);
        assert_eq!(metric(&m, "plugvm_vm_state", &[("state", "running")]), 1.0);

        assert_eq!(s.shutdown(), Some(0));
        eprintln!("session lasted {:?}", s.elapsed());
    }
}
