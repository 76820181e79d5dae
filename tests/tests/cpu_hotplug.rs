//! CPU hotplug end to end: a real Linux guest (Debian's 6.1 kernel) driven through plugvm's
//! API, with the guest's view (sysfs), plugvm's view (`vm.info`, its vCPU threads) and the
//! hotplug journal checked after every step.
//!
//! Each test is one guest boot (through the nested-KVM test bed where needed) covering several
//! steps; the boots are slow (15-25 s in the test bed), so the scenarios are grouped:
//!
//! * `session_runs_guest_commands_and_answers_the_api`: the [`GuestSession`] harness itself.
//! * `cpu_add_resize_remove_and_readd`: add, resize up, remove, add the same id again.
//! * `cpu_bad_requests_and_guest_refused_removal`: validation errors change nothing; a
//!   removal the guest refuses (`_OST(3, 0x80)`) is rolled back with the guest's reason.
//! * `cpu_hotplug_without_guest_answer`: a guest whose GED driver never binds: deadlines (504),
//!   consistent state afterwards, 429 while a device is in flight.

use std::time::{Duration, Instant};

use plugvm_tests::kvm_guest_test;
use plugvm_tests::session::{ConsoleKind, GuestSession};
use serde_json::{json, Value};

/// Boot to the session's command loop (the test bed is slow).
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// One guest command.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// The uevent handler onlines a hot-added CPU asynchronously.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(20);
/// plugvm joins a removed vCPU's thread around the commit.
const THREAD_TIMEOUT: Duration = Duration::from_secs(5);

const CPU_ONLINE: &str = "cat /sys/devices/system/cpu/online";
const CPU_PRESENT: &str = "cat /sys/devices/system/cpu/present";

fn start(cpus: &str, extra_cmdline: &str) -> GuestSession {
    let (s, ready) = GuestSession::boot(
        cpus,
        "size=512M",
        extra_cmdline,
        ConsoleKind::Stdio,
        &[],
        READY_TIMEOUT,
    );
    eprintln!("[{cpus} {extra_cmdline}] guest ready after {ready:?}");
    s
}

/// Waits until the guest's online CPU list is `want`.
fn wait_online(s: &GuestSession, want: &str) {
    s.poll_exec(CPU_ONLINE, |o| o == want, ONLINE_TIMEOUT);
}

/// The CPU hotplug controller's register accesses so far (VM exits), from `vm.info`.
fn cpu_register_accesses(s: &GuestSession) -> u64 {
    let (status, info) = s.api("GET", "vm.info", None);
    assert_eq!(status, 200, "vm.info: {info}");
    info["plugvm"]["register_accesses"]["cpu_hotplug"]
        .as_u64()
        .unwrap_or_else(|| panic!("vm.info has no register_accesses.cpu_hotplug: {info}"))
}

/// The vCPU states from `vm.info`, indexed by id.
fn vcpu_states(s: &GuestSession) -> Vec<String> {
    let (status, info) = s.api("GET", "vm.info", None);
    assert_eq!(status, 200, "vm.info: {info}");
    let vcpus = info["plugvm"]["cpus"]["vcpus"]
        .as_array()
        .unwrap_or_else(|| panic!("vm.info has no cpus.vcpus: {info}"));
    vcpus
        .iter()
        .enumerate()
        .map(|(i, v)| {
            assert_eq!(v["id"], json!(i), "vm.info vcpus out of order: {info}");
            v["state"].as_str().unwrap_or("?").to_string()
        })
        .collect()
}

fn assert_vcpu_states(s: &GuestSession, want: &[&str]) {
    assert_eq!(vcpu_states(s), want, "vm.info vCPU states");
}

/// The vCPUs whose threads run (`vm.info` `cpus.threads_running`). Every possible vCPU has a
/// thread (spares wait for a hot-add, removed ones are parked); this is the set in `KVM_RUN`.
fn running_vcpus(s: &GuestSession) -> Vec<u64> {
    let (status, info) = s.api("GET", "vm.info", None);
    assert_eq!(status, 200, "vm.info: {info}");
    let threads = s.vcpu_threads();
    let max = info["plugvm"]["cpus"]["max"].as_u64().unwrap_or(0) as usize;
    assert!(
        threads.len() <= max,
        "more vCPU threads than possible CPUs: {threads:?}"
    );
    info["plugvm"]["cpus"]["threads_running"]
        .as_array()
        .unwrap_or_else(|| panic!("vm.info has no cpus.threads_running: {info}"))
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

fn assert_running(s: &GuestSession, want: &[u64]) {
    assert_eq!(running_vcpus(s), want, "running vCPU threads");
}

/// Waits until exactly the vCPUs `want` run.
fn wait_running(s: &GuestSession, want: &[u64]) {
    let deadline = Instant::now() + THREAD_TIMEOUT;
    loop {
        let running = running_vcpus(s);
        if running == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "plugvm's running vCPUs are {running:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The guest events of `record` for `cpu`, status reads left out, as `ost(0x1,0x0)` or
/// `eject`.
fn guest_events(record: &Value, cpu: u32) -> Vec<String> {
    record["guest_events"]
        .as_array()
        .unwrap_or_else(|| panic!("record without guest_events: {record}"))
        .iter()
        .filter(|e| e["device"] == json!({ "cpu": cpu }))
        .filter_map(|e| match e["kind"].as_str() {
            Some("ost") => Some(format!(
                "ost({:#x},{:#x})",
                e["event"]["code"].as_u64().unwrap_or(u64::MAX),
                e["status"]["code"].as_u64().unwrap_or(u64::MAX)
            )),
            Some("status_read") => None,
            other => Some(other.unwrap_or("?").to_string()),
        })
        .collect()
}

/// Guest event times must not go backwards.
fn assert_event_times_ordered(record: &Value) {
    let times: Vec<u64> = record["guest_events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["at_us"].as_u64()).collect())
        .unwrap_or_default();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "guest event times out of order: {record}"
    );
}

fn phase_names(record: &Value) -> Vec<String> {
    record["phases"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["phase"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The target devices of a record, as CPU ids.
fn target_cpus(record: &Value) -> Vec<u64> {
    record["targets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["device"]["cpu"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// A committed record: status, outcome per device, the five phases all ok, times set.
fn assert_committed(record: &Value, cpus: &[u64], operation: &str) {
    assert_eq!(record["status"], "committed", "record: {record}");
    assert_eq!(record["outcome"]["status"], "committed", "record: {record}");
    assert_eq!(target_cpus(record), cpus, "targets: {record}");
    let devices = record["outcome"]["devices"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(devices.len(), cpus.len(), "outcome devices: {record}");
    for d in &devices {
        assert_eq!(d["result"], "committed", "device outcome: {record}");
        assert_eq!(d["operation"], operation, "device outcome: {record}");
        assert_eq!(d["guest_touched"], true, "device outcome: {record}");
    }
    let phases = phase_names(record);
    for want in ["validate", "prepare", "publish", "await_guest", "commit"] {
        assert!(
            phases.iter().any(|p| p == want),
            "no {want} phase: {record}"
        );
    }
    assert!(
        !phases.iter().any(|p| p == "rollback"),
        "rollback in a commit: {record}"
    );
    let all_ok = record["phases"]
        .as_array()
        .is_some_and(|a| a.iter().all(|p| p["ok"] == true));
    assert!(all_ok, "a phase failed: {record}");
    assert!(
        record["errors"].as_array().is_some_and(Vec::is_empty),
        "errors: {record}"
    );
    assert!(
        record["ended_us"].as_u64().is_some(),
        "no ended_us: {record}"
    );
    assert_event_times_ordered(record);
}

/// A rolled-back record of one CPU whose device outcome has `reason.kind == reason`.
fn assert_rolled_back(record: &Value, cpu: u64, operation: &str, reason: &str) {
    assert_eq!(record["status"], "rolled_back", "record: {record}");
    assert_eq!(
        record["outcome"]["status"], "rolled_back",
        "record: {record}"
    );
    assert_eq!(target_cpus(record), [cpu], "targets: {record}");
    let device = &record["outcome"]["devices"][0];
    assert_eq!(device["device"], json!({ "cpu": cpu }), "record: {record}");
    assert_eq!(device["operation"], operation, "record: {record}");
    assert_eq!(device["result"], "rolled_back", "record: {record}");
    assert_eq!(device["reason"]["kind"], reason, "record: {record}");
    assert!(
        phase_names(record).iter().any(|p| p == "rollback"),
        "no rollback phase: {record}"
    );
    assert!(
        !phase_names(record).iter().any(|p| p == "commit"),
        "a commit phase in a rollback: {record}"
    );
}

/// The journal's copy of transaction `id` (`GET hotplug/transactions/{id}`).
fn journal_record(s: &GuestSession, id: &Value) -> Value {
    let id = id
        .as_u64()
        .unwrap_or_else(|| panic!("transaction id {id} is not a number"));
    let (status, body) = s.api("GET", &format!("hotplug/transactions/{id}"), None);
    assert_eq!(status, 200, "transactions/{id}: {body}");
    assert_eq!(
        body["transaction"]["id"],
        json!(id),
        "transactions/{id}: {body}"
    );
    body["transaction"].clone()
}

/// Sends a hotplug request that must commit; returns the journal's record of it.
fn hotplug_ok(s: &GuestSession, path: &str, body: Value) -> Value {
    let started = Instant::now();
    let (status, answer) = s.api("PUT", path, Some(&body));
    eprintln!("{path} {body}: {status} in {:?}", started.elapsed());
    assert_eq!(status, 200, "{path} {body}: {answer}");
    let record = &answer["transaction"];
    assert!(record.is_object(), "{path}: no transaction in {answer}");
    let journaled = journal_record(s, &record["id"]);
    assert_eq!(journaled["status"], record["status"], "journal vs answer");
    journaled
}

fn error_message(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

kvm_guest_test! {
    /// The session harness on today's plugvm: guest commands with their output and exit
    /// code (a 300-byte one exercises the UART's input backpressure), `vmm.ping` and `vm.info`
    /// on the API socket, and `vm.shutdown` ending plugvm with 0.
    fn session_runs_guest_commands_and_answers_the_api() {
        let s = start("boot=1,max=2", "");
        assert_eq!(s.exec(CPU_ONLINE, CMD_TIMEOUT), "0");
        assert_eq!(s.exec("echo a; echo b", CMD_TIMEOUT), "a\nb");
        assert_eq!(s.exec("printf no-newline", CMD_TIMEOUT), "no-newline");
        assert_eq!(s.exec_status("false", CMD_TIMEOUT).0, 1);
        assert_eq!(s.exec_status("exit_is_not_a_command_here 2>/dev/null", CMD_TIMEOUT).0, 127);
        let long = "x".repeat(300);
        assert_eq!(s.exec(&format!("echo {long}"), CMD_TIMEOUT), long);
        // The console echo is off, and nothing of the typed line leaks into the output.
        assert_eq!(s.exec("echo \"__PVM\"\"_quoted\"", CMD_TIMEOUT), "__PVM_quoted");
        assert!(s.exec("stty -a", CMD_TIMEOUT).contains("-echo "), "tty echo is on");
        // With the tty's echo on, the echoed line (markers included) is not taken for output.
        s.exec("stty echo", CMD_TIMEOUT);
        assert_eq!(s.exec("echo echoed", CMD_TIMEOUT), "echoed");
        assert_eq!(s.exec_status("false", CMD_TIMEOUT).0, 1);
        s.exec("stty -echo", CMD_TIMEOUT);

        let (status, ping) = s.api("GET", "vmm.ping", None);
        assert_eq!(status, 200, "{ping}");
        assert_eq!(ping["pid"], json!(s.pid()), "the socket belongs to another plugvm: {ping}");

        let (status, info) = s.api("GET", "vm.info", None);
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["plugvm"]["cpus"]["boot"], 1, "{info}");
        assert_eq!(info["plugvm"]["cpus"]["max"], 2, "{info}");
        assert_vcpu_states(&s, &["present", "absent"]);
        assert_running(&s, &[0]);

        let (status, body) = s.api("GET", "no.such-endpoint", None);
        assert_eq!(status, 404, "{body}");

        let asked = Instant::now();
        assert_eq!(s.shutdown(), Some(0), "vm.shutdown must end plugvm with 0");
        eprintln!("shutdown took {:?}; session lasted {:?}", asked.elapsed(), s.elapsed());
    }
}

kvm_guest_test! {
    /// `--cpus boot=1,max=4`: add-vcpu without an id plugs CPU 1 (`_OST(1,0)` journaled, the
    /// guest onlines it, plugvm runs its thread); resize to 4 plugs 2 and 3; removing 2 goes
    /// `_OST(3,0x84)`, `_EJ0`, `_OST(3,0)` and the guest and plugvm both let it go; adding 2
    /// again brings it back.
    fn cpu_add_resize_remove_and_readd() {
        let s = start("boot=1,max=4", "");
        assert_eq!(s.exec(CPU_ONLINE, CMD_TIMEOUT), "0");
        assert_eq!(s.exec("cat /sys/devices/system/cpu/possible", CMD_TIMEOUT), "0-3");
        // The guest's GED driver is bound (the no-answer test relies on the opposite).
        s.exec("test -e /sys/bus/platform/drivers/acpi-ged", CMD_TIMEOUT);
        assert_vcpu_states(&s, &["present", "absent", "absent", "absent"]);
        assert_running(&s, &[0]);

        // Add without an id: the lowest absent one, 1.
        let mark = s.console_mark();
        let exits = cpu_register_accesses(&s);
        let add1 = hotplug_ok(&s, "vm.add-vcpu", json!({}));
        assert_committed(&add1, &[1], "add_cpu");
        assert_eq!(add1["request"], json!({"kind": "add_cpu", "id": null}), "{add1}");
        assert_eq!(guest_events(&add1, 1), ["ost(0x1,0x0)"], "{add1}");
        wait_online(&s, "0-1");
        s.wait_for_console_since(mark, |l| l.contains("PLUGVM-HOTPLUG cpu1 online"), ONLINE_TIMEOUT);
        // The guest reads `_STA` and the pending event from the status page in its RAM: the
        // whole add, onlining included, cost it two VM exits on the controller (its scan's
        // acknowledgement and `_OST`), however often Linux evaluated `_STA`.
        assert_eq!(cpu_register_accesses(&s) - exits, 2);
        assert_vcpu_states(&s, &["present", "present", "absent", "absent"]);
        assert_running(&s, &[0, 1]);

        // Resize to 4: CPUs 2 and 3 in one transaction.
        let resize = hotplug_ok(&s, "vm.resize", json!({"desired_vcpus": 4}));
        assert_committed(&resize, &[2, 3], "add_cpu");
        assert_eq!(guest_events(&resize, 2), ["ost(0x1,0x0)"], "{resize}");
        assert_eq!(guest_events(&resize, 3), ["ost(0x1,0x0)"], "{resize}");
        wait_online(&s, "0-3");
        assert_vcpu_states(&s, &["present"; 4]);
        assert_running(&s, &[0, 1, 2, 3]);
        // The new CPUs run guest code.
        s.exec("taskset -c 2 true && taskset -c 3 true", CMD_TIMEOUT);

        // Remove 2: the guest offlines it, ejects it and reports success.
        let exits = cpu_register_accesses(&s);
        let remove = hotplug_ok(&s, "vm.remove-vcpu", json!({"id": 2}));
        assert_committed(&remove, &[2], "remove_cpu");
        assert_eq!(
            guest_events(&remove, 2),
            ["ost(0x3,0x84)", "eject", "ost(0x3,0x0)"],
            "{remove}"
        );
        assert_eq!(s.exec(CPU_ONLINE, CMD_TIMEOUT), "0-1,3");
        assert_eq!(s.exec(CPU_PRESENT, CMD_TIMEOUT), "0-1,3");
        s.exec("test ! -e /sys/devices/system/cpu/cpu2/online", CMD_TIMEOUT);
        // Four exits: the acknowledgement, `_OST(3, 0x84)`, `_EJ0`, `_OST(3, 0)`.
        assert_eq!(cpu_register_accesses(&s) - exits, 4);
        assert_vcpu_states(&s, &["present", "present", "absent", "present"]);
        assert_running(&s, &[0, 1, 3]);

        // The same id again.
        let readd = hotplug_ok(&s, "vm.add-vcpu", json!({"id": 2}));
        assert_committed(&readd, &[2], "add_cpu");
        assert_eq!(guest_events(&readd, 2), ["ost(0x1,0x0)"], "{readd}");
        wait_online(&s, "0-3");
        assert_vcpu_states(&s, &["present"; 4]);
        assert_running(&s, &[0, 1, 2, 3]);
        s.exec("taskset -c 2 true", CMD_TIMEOUT);

        // The journal lists the four transactions in order.
        let (status, list) = s.api("GET", "hotplug/transactions", None);
        assert_eq!(status, 200, "{list}");
        let ids: Vec<&Value> = list["transactions"]
            .as_array()
            .map(|a| a.iter().map(|r| &r["id"]).collect())
            .unwrap_or_default();
        assert_eq!(ids, [&add1["id"], &resize["id"], &remove["id"], &readd["id"]], "{list}");
        let all_committed = list["transactions"]
            .as_array()
            .is_some_and(|a| a.iter().all(|r| r["status"] == "committed"));
        assert!(all_committed, "{list}");

        let problems = s.exec("dmesg | grep -E 'ACPI (BIOS )?(Error|Warning)' || true", CMD_TIMEOUT);
        assert!(problems.is_empty(), "ACPI problems in the guest:\n{problems}");
        assert_eq!(s.shutdown(), Some(0));
        eprintln!("session lasted {:?}", s.elapsed());
    }
}

kvm_guest_test! {
    /// `--cpus boot=2,max=4`. Requests that fail validation answer 422 (or 400 for malformed
    /// bodies) and change nothing. Then the guest refuses an eject (ACPI processor hotplug
    /// disabled in sysfs: `_OST(3, 0x80)`): 502, rolled back with the guest's reason, the CPU
    /// still present and online; once re-enabled, the same removal commits.
    fn cpu_bad_requests_and_guest_refused_removal() {
        let s = start("boot=2,max=4", "");
        assert_eq!(s.exec(CPU_ONLINE, CMD_TIMEOUT), "0-1");

        let cases: &[(&str, &str, u16)] = &[
            ("vm.add-vcpu", r#"{"id": 4}"#, 422),        // beyond max (ids 0-3)
            ("vm.add-vcpu", r#"{"id": 100}"#, 422),      // far beyond max
            ("vm.add-vcpu", r#"{"id": 1}"#, 422),        // present
            ("vm.add-vcpu", r#"{"id": 0}"#, 422),        // present (the boot CPU)
            ("vm.remove-vcpu", r#"{"id": 0}"#, 422),     // CPU 0 stays
            ("vm.remove-vcpu", r#"{"id": 3}"#, 422),     // absent
            ("vm.remove-vcpu", r#"{"id": 4}"#, 422),     // beyond max
            ("vm.resize", r#"{"desired_vcpus": 5}"#, 422), // beyond max
            ("vm.add-vcpu", r#"{"id": 2, "bogus": 1}"#, 400), // unknown field
            ("vm.remove-vcpu", r#"{"cpu": 1}"#, 400),    // unknown field
            ("vm.resize", r#"{"vcpus": 3}"#, 400),       // unknown field
            ("vm.remove-vcpu", r#"{}"#, 400),            // id missing
            ("vm.add-vcpu", r#"{"id": -1}"#, 400),       // not a u32
            ("vm.add-vcpu", "not json", 400),
        ];
        for (path, body, want) in cases {
            let (status, answer) = s.api_raw("PUT", path, Some(body.as_bytes()));
            assert_eq!(status, *want, "{path} {body}: {answer}");
            assert!(!error_message(&answer).is_empty(), "{path} {body}: no error sentence in {answer}");
            assert!(answer.get("transaction").is_none(), "{path} {body}: a transaction started: {answer}");
        }
        // Resizing to 0 vCPUs is refused (400 by the body check, or 422).
        let (status, answer) = s.api("PUT", "vm.resize", Some(&json!({"desired_vcpus": 0})));
        assert!(status == 400 || status == 422, "resize to 0: {status} {answer}");
        assert!(!error_message(&answer).is_empty(), "{answer}");

        // Nothing changed, nothing was journaled.
        assert_vcpu_states(&s, &["present", "present", "absent", "absent"]);
        assert_running(&s, &[0, 1]);
        let (status, list) = s.api("GET", "hotplug/transactions", None);
        assert_eq!(status, 200, "{list}");
        assert_eq!(list["transactions"], json!([]), "{list}");
        let (status, body) = s.api("GET", "hotplug/transactions/999", None);
        assert_eq!(status, 404, "{body}");
        assert_eq!(s.exec(CPU_ONLINE, CMD_TIMEOUT), "0-1");

        // The guest refuses to eject CPU 1.
        s.exec("echo 0 > /sys/firmware/acpi/hotplug/processor/enabled", CMD_TIMEOUT);
        let started = Instant::now();
        let (status, answer) = s.api("PUT", "vm.remove-vcpu", Some(&json!({"id": 1})));
        eprintln!("refused removal: {status} in {:?}", started.elapsed());
        assert_eq!(status, 502, "{answer}");
        assert!(!error_message(&answer).is_empty(), "{answer}");
        let record = journal_record(&s, &answer["transaction"]["id"]);
        assert_eq!(answer["transaction"]["status"], record["status"], "answer vs journal");
        assert_rolled_back(&record, 1, "remove_cpu", "guest_refused");
        let ost = &record["outcome"]["devices"][0]["reason"]["ost"];
        assert_eq!(ost["event"]["code"], 3, "{record}");
        assert_eq!(ost["status"]["code"], 0x80, "{record}");
        assert_eq!(ost["status"]["name"], "eject_not_supported", "{record}");
        assert_eq!(guest_events(&record, 1), ["ost(0x3,0x80)"], "{record}");
        assert_eq!(record["outcome"]["devices"][0]["guest_touched"], true, "{record}");

        // CPU 1 is still there, for plugvm and for the guest.
        assert_vcpu_states(&s, &["present", "present", "absent", "absent"]);
        assert_running(&s, &[0, 1]);
        assert_eq!(s.exec(CPU_ONLINE, CMD_TIMEOUT), "0-1");
        s.exec("taskset -c 1 true", CMD_TIMEOUT);

        // The rollback left a clean state: with ejects enabled again, the removal commits.
        s.exec("echo 1 > /sys/firmware/acpi/hotplug/processor/enabled", CMD_TIMEOUT);
        let remove = hotplug_ok(&s, "vm.remove-vcpu", json!({"id": 1}));
        assert_committed(&remove, &[1], "remove_cpu");
        assert_eq!(
            guest_events(&remove, 1),
            ["ost(0x3,0x84)", "eject", "ost(0x3,0x0)"],
            "{remove}"
        );
        assert_eq!(s.exec(CPU_ONLINE, CMD_TIMEOUT), "0");
        assert_vcpu_states(&s, &["present", "absent", "absent", "absent"]);
        wait_running(&s, &[0]);

        assert_eq!(s.shutdown(), Some(0));
        eprintln!("session lasted {:?}", s.elapsed());
    }
}

kvm_guest_test! {
    /// `--cpus boot=2,max=4` and `initcall_blacklist=ged_driver_init`: the guest never sees a
    /// hotplug notification. add-vcpu ends at its 5 s deadline with 504 and the CPU absent
    /// again; the next add is handled (504 again, not 409); a second request for a device in
    /// flight (`?wait=false`) gets 429; remove-vcpu ends at its 10 s deadline with the CPU
    /// still present; the API keeps answering.
    fn cpu_hotplug_without_guest_answer() {
        let s = start("boot=2,max=4", "initcall_blacklist=ged_driver_init");
        // Precondition: the GED driver really is not there.
        s.exec("test ! -e /sys/bus/platform/drivers/acpi-ged", CMD_TIMEOUT);
        assert_eq!(s.exec(CPU_ONLINE, CMD_TIMEOUT), "0-1");

        // Add: no answer, withdrawn at the 5 s deadline.
        let started = Instant::now();
        let (status, answer) = s.api("PUT", "vm.add-vcpu", Some(&json!({})));
        let took = started.elapsed();
        eprintln!("unanswered add: {status} in {took:?}");
        assert_eq!(status, 504, "{answer}");
        assert!(!error_message(&answer).is_empty(), "{answer}");
        assert!(
            took >= Duration::from_millis(4900) && took < Duration::from_secs(15),
            "the add-CPU deadline is 5 s; the answer took {took:?}"
        );
        let record = journal_record(&s, &answer["transaction"]["id"]);
        assert_rolled_back(&record, 2, "add_cpu", "timeout");
        let reason = &record["outcome"]["devices"][0]["reason"];
        assert_eq!(reason["guest_touched"], false, "{record}");
        assert_eq!(reason["last_ost"], Value::Null, "{record}");
        assert_eq!(guest_events(&record, 2), Vec::<String>::new(), "{record}");
        assert_vcpu_states(&s, &["present", "present", "absent", "absent"]);
        wait_running(&s, &[0, 1]);

        // The next request is accepted (and times out the same way).
        let (status, answer) = s.api("PUT", "vm.add-vcpu", Some(&json!({"id": 3})));
        assert_eq!(status, 504, "{answer}");
        let record = journal_record(&s, &answer["transaction"]["id"]);
        assert_rolled_back(&record, 3, "add_cpu", "timeout");
        assert_vcpu_states(&s, &["present", "present", "absent", "absent"]);

        // In flight: a second request for the same device is refused with 429 (Cloud
        // Hypervisor's "Too Many Requests": retry later).
        let (status, answer) = s.api("PUT", "vm.add-vcpu?wait=false", Some(&json!({"id": 2})));
        assert_eq!(status, 202, "{answer}");
        let id = answer["id"].clone();
        assert!(id.is_u64(), "{answer}");
        assert_eq!(answer["transaction"]["id"], id, "{answer}");
        assert_eq!(answer["transaction"]["status"], "in_progress", "{answer}");
        assert_eq!(vcpu_states(&s)[2], "adding");
        let (status, conflict) = s.api("PUT", "vm.add-vcpu", Some(&json!({"id": 2})));
        assert_eq!(status, 429, "{conflict}");
        assert!(!error_message(&conflict).is_empty(), "{conflict}");
        let (status, ping) = s.api("GET", "vmm.ping", None);
        assert_eq!(status, 200, "{ping}");
        // ... until its deadline passes.
        let deadline = Instant::now() + Duration::from_secs(15);
        let record = loop {
            let record = journal_record(&s, &id);
            if record["status"] != "in_progress" {
                break record;
            }
            assert!(Instant::now() < deadline, "still in progress: {record}");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_rolled_back(&record, 2, "add_cpu", "timeout");
        assert_vcpu_states(&s, &["present", "present", "absent", "absent"]);

        // Remove: no answer, withdrawn at the 10 s deadline; CPU 1 stays.
        let started = Instant::now();
        let (status, answer) = s.api("PUT", "vm.remove-vcpu", Some(&json!({"id": 1})));
        let took = started.elapsed();
        eprintln!("unanswered remove: {status} in {took:?}");
        assert_eq!(status, 504, "{answer}");
        assert!(
            took >= Duration::from_millis(9900) && took < Duration::from_secs(25),
            "the remove-CPU deadline is 10 s; the answer took {took:?}"
        );
        let record = journal_record(&s, &answer["transaction"]["id"]);
        assert_rolled_back(&record, 1, "remove_cpu", "timeout");
        assert_eq!(record["outcome"]["devices"][0]["reason"]["guest_touched"], false, "{record}");
        assert_vcpu_states(&s, &["present", "present", "absent", "absent"]);
        assert_running(&s, &[0, 1]);
        assert_eq!(s.exec(CPU_ONLINE, CMD_TIMEOUT), "0-1");
        s.exec("taskset -c 1 true", CMD_TIMEOUT);

        let (status, list) = s.api("GET", "hotplug/transactions", None);
        assert_eq!(status, 200, "{list}");
        let statuses: Vec<&Value> = list["transactions"]
            .as_array()
            .map(|a| a.iter().map(|r| &r["status"]).collect())
            .unwrap_or_default();
        assert_eq!(statuses, [&json!("rolled_back"); 4], "{list}");
        let (status, ping) = s.api("GET", "vmm.ping", None);
        assert_eq!(status, 200, "{ping}");
        assert_eq!(s.shutdown(), Some(0));
        eprintln!("session lasted {:?}", s.elapsed());
    }
}
