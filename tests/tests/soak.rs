//! The soak (not a CI test: `resources/bench/soak.sh` runs it, about 10 minutes in the test
//! bed): 1,000 vCPU and 200 memory add/remove cycles on one guest. Every 50 cycles it samples
//! plugvm's file descriptors, threads, mappings, memory slots and RSS, and the cycles' latency
//! (p50/p95); it prints the table and fails on any growth of what must not grow (descriptors,
//! threads, mappings, slots), RSS growing by more than 8 MiB (the allocator's slack), or the
//! latency of the last 50 cycles more than doubling against the first 50.
//! `PLUGVM_SOAK_CPU_CYCLES` and `PLUGVM_SOAK_MEMORY_CYCLES` change the counts.

use std::time::{Duration, Instant};

use plugvm_tests::kvm_guest_test;
use plugvm_tests::session::{ConsoleKind, GuestSession};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const SAMPLE_EVERY: usize = 50;

fn cycles(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    cycle: usize,
    fds: usize,
    threads: usize,
    maps: usize,
    slots: usize,
    rss_kib: u64,
    p50_ms: f64,
    p95_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sample(s: &GuestSession, cycle: usize, window: &mut Vec<f64>) -> Sample {
    window.sort_by(|a, b| a.total_cmp(b));
    let (_, info) = s.api_quiet("GET", "vm.info", None);
    let slots = info["plugvm"]["memory"]["hotplug_slots"]
        .as_array()
        .map(|a| a.iter().filter(|x| x["state"] == "present").count())
        .unwrap_or(0);
    // An API connection's thread (with its descriptors and stack) outlives the answer by a
    // moment: the least of a few looks over half a second is what stays.
    let (mut fds, mut threads, mut maps) = (usize::MAX, usize::MAX, usize::MAX);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        fds = fds.min(s.proc_fds().len());
        threads = threads.min(
            std::fs::read_dir(format!("/proc/{}/task", s.pid()))
                .map(|d| d.count())
                .unwrap_or(0),
        );
        maps = maps.min(s.proc_maps().len());
    }
    let sample = Sample {
        cycle,
        fds,
        threads,
        maps,
        slots,
        rss_kib: s.proc_status_kib("VmRSS"),
        p50_ms: percentile(window, 0.5),
        p95_ms: percentile(window, 0.95),
    };
    window.clear();
    sample
}

fn ok(s: &GuestSession, path: &str, body: Value) -> f64 {
    let started = Instant::now();
    let (status, answer) = s.api_quiet("PUT", path, Some(&body));
    assert_eq!(status, 200, "{path} {body}: {answer}");
    started.elapsed().as_secs_f64() * 1000.0
}

fn print_table(kind: &str, samples: &[Sample]) {
    println!("soak: {kind}");
    println!("  cycle   fds threads  maps slots   rss_kib  p50_ms  p95_ms");
    for x in samples {
        println!(
            "  {:5} {:5} {:7} {:5} {:5} {:9} {:7.1} {:7.1}",
            x.cycle, x.fds, x.threads, x.maps, x.slots, x.rss_kib, x.p50_ms, x.p95_ms
        );
    }
}

fn check(kind: &str, samples: &[Sample]) {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return;
    };
    for x in samples {
        assert_eq!(x.fds, first.fds, "{kind}: descriptors drift: {samples:?}");
        assert_eq!(
            x.threads, first.threads,
            "{kind}: threads drift: {samples:?}"
        );
        assert!(
            x.maps <= first.maps + 2,
            "{kind}: mappings grow: {samples:?}"
        );
        assert_eq!(
            x.slots, first.slots,
            "{kind}: memory slots left: {samples:?}"
        );
    }
    assert!(
        last.rss_kib <= first.rss_kib + 8 * 1024,
        "{kind}: RSS grew {} KiB: {samples:?}",
        last.rss_kib.saturating_sub(first.rss_kib)
    );
    assert!(
        last.p50_ms <= 2.0 * first.p50_ms.max(1.0),
        "{kind}: latency drifts: {samples:?}"
    );
}

kvm_guest_test! {
    #[ignore = "a soak of about 10 minutes: resources/bench/soak.sh"]
    fn soak_vcpu_and_memory_cycles() {
        let (s, _) = GuestSession::boot(
            "boot=1,max=2",
            "size=512M,hotplug_size=1G,hotplug_slots=4",
            "",
            ConsoleKind::Stdio,
            &[],
            Duration::from_secs(240),
        );

        let mut window = Vec::new();
        let mut samples = vec![sample(&s, 0, &mut window)];
        for cycle in 1..=cycles("PLUGVM_SOAK_CPU_CYCLES", 1000) {
            window.push(ok(&s, "vm.add-vcpu", json!({ "id": 1 })));
            window.push(ok(&s, "vm.remove-vcpu", json!({ "id": 1 })));
            if cycle % SAMPLE_EVERY == 0 {
                samples.push(sample(&s, cycle, &mut window));
            }
        }
        print_table("vCPU add/remove", &samples);
        // The first sample is before any hotplug; growth counts from the first window on.
        check("vCPU", &samples[1..]);

        let mut samples = vec![sample(&s, 0, &mut window)];
        for cycle in 1..=cycles("PLUGVM_SOAK_MEMORY_CYCLES", 200) {
            window.push(ok(&s, "vm.add-memory", json!({ "size": 128 * MIB })));
            window.push(ok(&s, "vm.remove-memory", json!({ "slot": 1 })));
            if cycle % SAMPLE_EVERY == 0 {
                samples.push(sample(&s, cycle, &mut window));
            }
        }
        print_table("memory add/remove (128 MiB)", &samples);
        check("memory", &samples[1..]);
        assert_eq!(s.shutdown(), Some(0), "{}", s.report());
    }
}
