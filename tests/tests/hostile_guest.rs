//! A hostile guest can hurt only itself. While the host adds vCPUs and memory and reads its
//! state, the guest writes random values of every width (8 to 64 bits) to every offset of the
//! GED and both hotplug controllers with busybox `devmem` (3,000 accesses, a fixed seed: the
//! acknowledge, `_EJ0` and `_OST` writes of the AML with made-up values, and worse), and
//! asks its own ACPI to eject every CPU and memory device now and then (`_EJ0` through sysfs).
//!
//! Every API call is answered within its deadline and none with a server error of the host's
//! own. The guest may well wreck itself: its acknowledgements swallow its own hotplug events,
//! its reads of the GED its own notifications, and in the runs seen so far it usually ended by
//! resetting itself. Then plugvm must end as it does for any guest reset (exit code 3, said on
//! stderr, no panic). If the guest survives, no transaction is left in flight, the engine, the
//! vCPU threads and the guest agree on the CPUs present, the host still removes what it added
//! with the guest's answers, and plugvm's file descriptors are where they started.
//!
//! Not a CI test in the nested test bed (`resources/bench/hostile-guest.sh` runs it): there it
//! takes down the bed itself in about two runs of five (the outer VM's kernel dies, or hangs
//! until the attempt's 300 s are up), which no VMM inside it can prevent and which would cost
//! a CI run minutes or its result. With 64-bit accesses it did so 3 runs of 3, so those are
//! left out (all registers but `_OST` are 32-bit; the rig of `vmm/src/fuzzing.rs` and the
//! `hotplug_registers` fuzz target feed them every width). On a host with VT-x/AMD-V, where
//! guest tests run directly, drop the `#[ignore]`.

use std::time::{Duration, Instant};

use plugvm_tests::kvm_guest_test;
use plugvm_tests::session::{ConsoleKind, GuestSession};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const READY_TIMEOUT: Duration = Duration::from_secs(240);
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest hotplug deadline is 30 s (a memory removal); its answer may take a little
/// longer to arrive.
const ANSWER_BOUND: Duration = Duration::from_secs(40);

/// The guest's hostile writer: 3,000 random `devmem` accesses over the three register blocks
/// (0xfe000000, where the GED's register was and nothing is now, 4 bytes; CPU controller at
/// 0xfe001000 and memory controller at 0xfe002000, 0x18 each), a third of them reads, and
/// every 250 an eject, through sysfs, of every ejectable ACPI device (CPUs, memory) or of none. One line of shell (the session runs single
/// lines); busybox awk prints no hex above 2^31, hence the addresses and values in pieces.
const HOSTILE: &str = "awk -v seed=20261129 -v n=3000 'BEGIN { srand(seed); \
    size[0] = 4; size[1] = 24; size[2] = 24; w[0] = 8; w[1] = 16; w[2] = 32; w[3] = 32; \
    for (i = 0; i < n; i++) { b = int(rand() * 3); off = int(rand() * size[b]); \
    wd = w[int(rand() * 4)]; \
    if (rand() < 0.33) printf \"devmem 0xfe00%d0%02x %d\\n\", b, off, wd; \
    else printf \"devmem 0xfe00%d0%02x %d 0x%04x%04x\\n\", b, off, wd, int(rand() * 65536), int(rand() * 65536); \
    if (i % 250 == 0) printf \"for d in /sys/bus/acpi/devices/*/eject; do [ $((%d %% 3)) = 0 ] && echo 1 > $d; done 2>/dev/null\\n\", int(rand() * 1000) } }' \
    > /tmp/hostile.sh";

/// One API call; `None` if plugvm ended before answering (the guest reset itself).
fn call(s: &GuestSession, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
    let started = Instant::now();
    let target = format!("{}/{path}", plugvm_remote::wire::API_PREFIX);
    let raw = body.map(Value::to_string);
    let answer = plugvm_remote::client::request(
        s.socket(),
        method,
        &target,
        raw.as_deref().map(str::as_bytes),
        ANSWER_BOUND,
    );
    let took = started.elapsed();
    match answer {
        Ok(response) => {
            assert!(took < ANSWER_BOUND, "{path} took {took:?}");
            let value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            s.note(format!("{method} {path}: {} in {took:?}", response.status));
            Some((response.status, value))
        }
        Err(e) => {
            // Only an ended plugvm excuses a missing answer.
            std::thread::sleep(Duration::from_secs(2));
            assert!(
                s.try_exit_status().is_some(),
                "{method} {path}: {e} after {took:?}"
            );
            None
        }
    }
}

fn put(s: &GuestSession, path: &str, body: Value) -> u16 {
    let Some((status, answer)) = call(s, "PUT", path, Some(&body)) else {
        return 0;
    };
    // 500 is the host failing itself; 503 answers a caller whose VM is going away (the guest
    // reset itself meanwhile). Everything else names the guest or the request.
    assert_ne!(status, 500, "{path} {body}: {answer}");
    assert!(
        matches!(status, 200 | 400 | 404 | 409 | 422 | 429 | 502 | 503 | 504),
        "{path} {body}: {status} {answer}"
    );
    status
}

fn get(s: &GuestSession, path: &str) {
    if let Some((status, body)) = call(s, "GET", path, None) {
        if status == 503 {
            // "The VMM is ending": the guest reset itself meanwhile.
            std::thread::sleep(Duration::from_secs(5));
            assert!(s.try_exit_status().is_some(), "{path}: {body}");
            return;
        }
        assert_eq!(status, 200, "{path}: {body}");
    }
}

fn info(s: &GuestSession) -> Value {
    let (status, info) = s.api_quiet("GET", "vm.info", None);
    assert_eq!(status, 200, "{info}");
    info
}

/// CPUs the engine has present, checked against their vCPU threads.
fn present_cpus(s: &GuestSession) -> usize {
    let info = info(s);
    let vcpus = info["plugvm"]["cpus"]["vcpus"]
        .as_array()
        .unwrap_or_else(|| panic!("no vcpus in {info}"));
    let mut present = 0;
    for v in vcpus {
        match v["state"].as_str() {
            Some("present") => {
                assert_eq!(v["thread"], "running", "a present CPU must run: {v}");
                present += 1;
            }
            Some("absent") => assert_ne!(v["thread"], "running", "an absent CPU runs: {v}"),
            other => panic!("CPU in state {other:?} after everything settled: {v}"),
        }
    }
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], present, "{info}");
    present
}

kvm_guest_test! {
    #[ignore = "takes the nested test bed down in about 2 runs of 5: resources/bench/hostile-guest.sh"]
    fn a_hostile_guest_hurts_only_itself() {
        let (s, _) = GuestSession::boot(
            "boot=2,max=4",
            "size=512M,hotplug_size=1G,hotplug_slots=4",
            // The controllers' MMIO is claimed by ACPI; let /dev/mem reach it anyway.
            "iomem=relaxed",
            ConsoleKind::Stdio,
            &[],
            READY_TIMEOUT,
        );
        let fds_before = s.proc_fds().len();
        s.exec(HOSTILE, CMD_TIMEOUT);
        assert_eq!(s.exec("grep -c devmem /tmp/hostile.sh", CMD_TIMEOUT), "3000");
        s.exec("(sh /tmp/hostile.sh > /tmp/hostile.log 2>&1; echo PLUGVM-HOSTILE-DONE > /dev/ttyS0) & true", CMD_TIMEOUT);

        // The host's own work meanwhile, until the guest's writer is done (or the guest is):
        // adds, and the reads a platform makes. (Removals wait until after: a forged `_EJ0` of
        // a device the host asked back would take memory or a CPU the guest still uses.)
        let started = Instant::now();
        let mut rounds = 0;
        let done = |s: &GuestSession| !s.console_lines(|l| l.contains("PLUGVM-HOSTILE-DONE")).is_empty();
        while !done(&s) {
            if let Some(status) = s.try_exit_status() {
                // The guest ended itself: plugvm ends as for any reset or poweroff.
                let log = s.full_log();
                assert!(!log.contains("panicked"), "plugvm panicked:\n{log}");
                match status.code() {
                    Some(3) => assert!(log.contains("the guest reset the machine"), "{log}"),
                    Some(0) => {}
                    other => panic!("plugvm ended with {other:?} under a hostile guest:\n{log}"),
                }
                eprintln!("the hostile guest ended itself after {rounds} rounds ({status})");
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(600), "the writer never ended");
            put(&s, "vm.add-vcpu", json!({}));
            put(&s, "vm.add-memory", json!({ "size": 128 * MIB }));
            for path in ["vm.info", "vm.counters", "hotplug/transactions"] {
                get(&s, path);
            }
            rounds += 1;
        }
        s.note(format!("{rounds} rounds of host hotplugs during the writer"));
        let accesses = info(&s)["plugvm"]["register_accesses"].clone();
        s.note(format!("register accesses: {accesses}"));

        // Afterwards: alive, nothing in flight, and the VMM, its threads and the guest agree.
        let (status, _) = s.api_quiet("GET", "vmm.ping", None);
        assert_eq!(status, 200);
        let (status, list) = s.api_quiet("GET", "hotplug/transactions", None);
        assert_eq!(status, 200, "{list}");
        let records = list["transactions"].as_array().cloned().unwrap_or_default();
        assert!(
            records.iter().all(|r| r["status"] != "in_flight" && r["ended_us"].is_u64()),
            "a transaction in flight: {list}"
        );
        let present = present_cpus(&s);
        s.note(format!("{present} CPUs present after the writer"));
        let online = s.poll_exec(
            "grep -c ^processor /proc/cpuinfo",
            |v| v.parse() == Ok(present),
            Duration::from_secs(60),
        );
        assert_eq!(online.parse(), Ok(present));
        // And the host still hotplugs, with the guest's answers: everything added goes.
        let info = info(&s);
        for v in info["plugvm"]["cpus"]["vcpus"].as_array().cloned().unwrap_or_default() {
            if v["state"] == "present" && v["id"].as_u64().is_some_and(|id| id >= 2) {
                assert_eq!(put(&s, "vm.remove-vcpu", json!({ "id": v["id"] })), 200, "{}", s.report());
            }
        }
        for slot in info["plugvm"]["memory"]["hotplug_slots"].as_array().cloned().unwrap_or_default() {
            if slot["state"] == "present" {
                assert_eq!(put(&s, "vm.remove-memory", json!({ "slot": slot["slot"] })), 200, "{}", s.report());
            }
        }
        assert_eq!(put(&s, "vm.add-vcpu", json!({})), 200, "{}", s.report());
        // plugvm closes its side of the last API connection when it sees the client's end,
        // a moment after the answer: the count must come back, not be back at once (seen:
        // 4 descriptors of that one connection right after the call returned).
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.proc_fds().len() != fds_before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(s.proc_fds().len(), fds_before, "{:?}", s.proc_fds());
        assert_eq!(s.shutdown(), Some(0), "{}", s.report());
    }
}
