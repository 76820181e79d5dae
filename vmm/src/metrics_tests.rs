//! The exposition text after a known sequence of transactions, checked two ways: exact values
//! read back with a Prometheus text parser (`prometheus-parse`), and the format's rules (which
//! that lenient parser does not enforce) line by line. (`tests/tests/api_first.rs` also runs
//! `promtool check metrics`, Prometheus' own parser and linter, on a live VMM's text where
//! promtool is installed.)

use std::collections::BTreeMap;
use std::sync::mpsc::channel;
use std::time::Duration;

use hotplug::{
    CpuId, DeviceId, FailureReason, GuestEvent, Ost, OstStatus, Phase, Request, TxStatus,
    ValidationError,
};
use prometheus_parse::{Scrape, Value};

use super::*;
use crate::hotplug_service::{test_service, GuestObservation, HotplugService};

const MS: Duration = Duration::from_millis(1);

fn cpu(id: u32) -> DeviceId {
    DeviceId::Cpu(CpuId(id))
}

/// Sends `events` for `device` from the guest, then lets the service take them.
fn guest(
    s: &mut HotplugService,
    tx: &crate::hotplug_service::ObservationSender,
    device: DeviceId,
    events: &[GuestEvent],
) {
    for event in events {
        tx.send(GuestObservation::new(device, *event));
    }
    s.step();
}

/// Starts `request` (waiting for its outcome) and returns where its answer arrives.
fn ask(
    s: &mut HotplugService,
    request: Request,
) -> std::sync::mpsc::Receiver<crate::api::ApiResponse> {
    let (respond, answer) = channel();
    s.request(request, true, respond);
    answer
}

/// The registry after this sequence on a 2-of-4-vCPU test service:
///
/// 1. add a vCPU (2): the guest answers `_OST(1,0)` after 20 ms: committed;
/// 2. remove vCPU 1: `_OST(3,0x84)`, `_EJ0`, `_OST(3,0)` after 3 ms: committed;
/// 3. add vCPU 3: no answer: rolled back at its deadline (5 s) + 1 ms (`timeout`);
/// 4. remove vCPU 0: refused at once (`invalid`), no transaction;
/// 5. remove vCPU 2: the guest refuses with `_OST(3,0x82)` after 1 ms (`guest_refused`);
/// 6. paused: an add is refused (`paused`);
/// 7. resize to 4 vCPUs (adds 1 and 3): the guest answers for 1 only; at the deadline 3
///    times out and 1 is undone with it (`timeout`, `batch_aborted`), while a removal of 3
///    in the meantime is refused (`conflict`).
fn sequence() -> Metrics {
    let (mut s, tx, clock) = test_service();
    let metrics = Metrics::shared();
    s.record_metrics(metrics.clone());

    let a = ask(&mut s, Request::AddCpu { id: None });
    clock.advance(20 * MS);
    guest(
        &mut s,
        &tx,
        cpu(2),
        &[GuestEvent::StatusRead, GuestEvent::ost(1, 0)],
    );
    assert_eq!(a.try_recv().map(|r| r.status), Ok(200));

    let a = ask(&mut s, Request::RemoveCpu { id: 1 });
    clock.advance(3 * MS);
    guest(
        &mut s,
        &tx,
        cpu(1),
        &[
            GuestEvent::ost(3, 0x84),
            GuestEvent::Eject,
            GuestEvent::ost(3, 0),
        ],
    );
    assert_eq!(a.try_recv().map(|r| r.status), Ok(200));

    let a = ask(&mut s, Request::AddCpu { id: Some(3) });
    clock.advance(s.time_to_deadline().expect("a deadline") + MS);
    s.step();
    assert_eq!(a.try_recv().map(|r| r.status), Ok(504));

    let a = ask(&mut s, Request::RemoveCpu { id: 0 });
    assert_eq!(a.try_recv().map(|r| r.status), Ok(422));

    let a = ask(&mut s, Request::RemoveCpu { id: 2 });
    clock.advance(MS);
    guest(&mut s, &tx, cpu(2), &[GuestEvent::ost(3, 0x82)]);
    assert_eq!(a.try_recv().map(|r| r.status), Ok(502));

    s.set_paused(true);
    let a = ask(&mut s, Request::AddCpu { id: None });
    assert_eq!(a.try_recv().map(|r| r.status), Ok(409));
    s.set_paused(false);

    let a = ask(
        &mut s,
        Request::Resize {
            vcpus: Some(4),
            memory: None,
            best_effort: false,
        },
    );
    guest(&mut s, &tx, cpu(1), &[GuestEvent::ost(1, 0)]);
    let busy = ask(&mut s, Request::RemoveCpu { id: 3 });
    assert_eq!(busy.try_recv().map(|r| r.status), Ok(429));
    clock.advance(s.time_to_deadline().expect("a deadline") + MS);
    s.step();
    assert_eq!(a.try_recv().map(|r| r.status), Ok(504));
    assert!(!s.in_flight());
    let m = lock(&metrics).clone();
    m
}

fn sample() -> VmSample {
    VmSample {
        state: VmState::Running,
        vcpus_present: 2,
        vcpus_max: 4,
        memory_present_bytes: 512 << 20,
        counters: VmCounters {
            cpu_register_accesses: 11,
            memory_register_accesses: 0,
            console_dropped_bytes: 5,
            guest_observations_dropped: 1,
        },
    }
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("a parsable exposition")
}

/// Whether `labels` has exactly `want`.
fn has_labels(labels: &prometheus_parse::Labels, want: &[(&str, &str)]) -> bool {
    labels.len() == want.len() && want.iter().all(|(k, v)| labels.get(k) == Some(*v))
}

/// The value of the counter or gauge `name` with exactly `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && has_labels(&s.labels, labels))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{name}: not a single value: {other:?}"),
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0]
}

/// The buckets (upper bound, cumulative count) of histogram `name` with `labels`.
fn buckets(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let found: Vec<Vec<(f64, f64)>> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && has_labels(&s.labels, labels))
        .filter_map(|s| match &s.value {
            Value::Histogram(h) => Some(h.iter().map(|b| (b.less_than, b.count)).collect()),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}");
    found[0].clone()
}

/// The cumulative count of the smallest bucket bound `le` ≥ `seconds`.
fn count_le(buckets: &[(f64, f64)], seconds: f64) -> f64 {
    buckets
        .iter()
        .find(|(le, _)| *le >= seconds)
        .map_or(f64::NAN, |(_, n)| *n)
}

/// The rules of the text format 0.0.4 that `prometheus-parse` lets pass: every line a
/// comment or a sample; `# HELP` then `# TYPE` once per family, before its samples, the
/// families contiguous; names and label names valid, label values quoted and escaped;
/// values floats; histograms with ascending `le` ending in `+Inf`, cumulative counts, and
/// `_count` equal to the `+Inf` bucket; no sample repeated.
fn check_format(text: &str) -> Result<(), String> {
    fn name_ok(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    fn float_ok(v: &str) -> bool {
        matches!(v, "+Inf" | "-Inf" | "NaN") || v.parse::<f64>().is_ok_and(f64::is_finite)
    }
    /// `a="x",b="y"` -> [(a, x), (b, y)].
    fn labels(text: &str) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (name, after) = rest
                .split_once("=\"")
                .ok_or(format!("label without =\": {rest}"))?;
            if !name_ok(name) || name.contains(':') || name.starts_with("__") {
                return Err(format!("bad label name {name:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        other => return Err(format!("bad escape {other:?} in {text}")),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated label value in {text}")),
                }
            };
            out.push((name.to_string(), value));
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        Ok(out)
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut seen = std::collections::BTreeSet::new();
    // Histogram series (family, labels without le) -> [(le, count)], and their _count.
    type Series = (String, Vec<(String, String)>);
    let mut series: BTreeMap<Series, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<Series, f64> = BTreeMap::new();
    if !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name, tail) = (parts.next(), parts.next(), parts.next());
            let name = name
                .ok_or(format!("comment without a name: {line}"))?
                .to_string();
            if !name_ok(&name) {
                return Err(format!("bad metric name in {line}"));
            }
            match keyword {
                Some("HELP") => {
                    if helped.contains(&name) {
                        return Err(format!("second HELP for {name}"));
                    }
                    helped.push(name.clone());
                }
                Some("TYPE") => {
                    let kind = tail.unwrap_or_default();
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(format!("bad type in {line}"));
                    }
                    if types.insert(name.clone(), kind.to_string()).is_some() {
                        return Err(format!("second TYPE for {name}"));
                    }
                    if kind == "counter" && !name.ends_with("_total") {
                        return Err(format!("counter {name} does not end in _total"));
                    }
                }
                _ => return Err(format!("unknown comment {line}")),
            }
            if current.as_deref() != Some(&name)
                && seen.iter().any(|(f, _): &(String, String)| *f == name)
            {
                return Err(format!("family {name} is not contiguous"));
            }
            current = Some(name);
            continue;
        }
        let (head, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
        if !float_ok(value) {
            return Err(format!("bad value in {line}"));
        }
        let (name, label_text) = match head.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix('}')
                    .ok_or(format!("unclosed labels: {line}"))?,
            ),
            None => (head, ""),
        };
        let mut labels = labels(label_text)?;
        let family = types
            .keys()
            .find(|f| {
                name == f.as_str()
                    || (types[*f] == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(f.as_str())))
            })
            .cloned()
            .ok_or(format!("sample of an undeclared family: {line}"))?;
        if current.as_deref() != Some(family.as_str()) {
            return Err(format!("sample outside its family's block: {line}"));
        }
        if !helped.contains(&family) {
            return Err(format!("no HELP for {family}"));
        }
        if !seen.insert((family.clone(), head.to_string())) {
            return Err(format!("sample repeated: {line}"));
        }
        let v: f64 = value
            .replace("Inf", "inf")
            .parse()
            .map_err(|_| line.to_string())?;
        if types[&family] == "histogram" {
            if name.ends_with("_bucket") {
                let at = labels
                    .iter()
                    .position(|(k, _)| k == "le")
                    .ok_or(format!("bucket without le: {line}"))?;
                let (_, le) = labels.remove(at);
                let le: f64 = le
                    .replace("Inf", "inf")
                    .parse()
                    .map_err(|_| format!("bad le: {line}"))?;
                series.entry((family, labels)).or_default().push((le, v));
            } else if name.ends_with("_count") {
                counts.insert((family, labels), v);
            }
        }
    }
    for (key, buckets) in &series {
        if buckets
            .windows(2)
            .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
        {
            return Err(format!("{key:?}: buckets not ascending or not cumulative"));
        }
        let last = buckets.last().copied().unwrap_or_default();
        if last.0 != f64::INFINITY || counts.get(key) != Some(&last.1) {
            return Err(format!("{key:?}: no +Inf bucket equal to _count"));
        }
    }
    Ok(())
}

#[test]
fn metrics_after_a_known_sequence() {
    let mut m = sequence();
    m.retire(&VmCounters {
        cpu_register_accesses: 100,
        memory_register_accesses: 20,
        console_dropped_bytes: 3,
        guest_observations_dropped: 2,
    });
    let text = m.render(Some(VmState::Running), Some(&sample()), 7);
    if let Err(e) = check_format(&text) {
        panic!("{e}\n{text}");
    }
    let scrape = parse(&text);

    // Transactions, by kind and outcome: exactly these series, each with its duration.
    let tx = "plugvm_hotplug_transaction_duration_seconds";
    let mut series: Vec<(String, String)> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == tx)
        .map(|s| {
            let l = |k| s.labels.get(k).unwrap_or_default().to_string();
            (l("kind"), l("outcome"))
        })
        .collect();
    series.sort();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        series,
        pairs(&[
            ("add_cpu", "committed"),
            ("add_cpu", "rolled_back"),
            ("remove_cpu", "committed"),
            ("remove_cpu", "rolled_back"),
            ("resize", "rolled_back"),
        ])
    );
    let add = buckets(
        &scrape,
        tx,
        &[("kind", "add_cpu"), ("outcome", "committed")],
    );
    assert_eq!(add.len(), TRANSACTION_BUCKETS.len() + 1);
    assert_eq!(
        (count_le(&add, 0.01), count_le(&add, 0.025)),
        (0.0, 1.0),
        "20 ms: {add:?}"
    );
    let remove = buckets(
        &scrape,
        tx,
        &[("kind", "remove_cpu"), ("outcome", "committed")],
    );
    assert_eq!(
        (count_le(&remove, 0.0025), count_le(&remove, 0.005)),
        (0.0, 1.0)
    );
    let timeout = buckets(
        &scrape,
        tx,
        &[("kind", "add_cpu"), ("outcome", "rolled_back")],
    );
    assert_eq!(
        (count_le(&timeout, 5.0), count_le(&timeout, 10.0)),
        (0.0, 1.0)
    );
    let v = |name: &str, labels: &[(&str, &str)]| value(&scrape, name, labels);
    assert_eq!(
        v(
            &format!("{tx}_sum"),
            &[("kind", "add_cpu"), ("outcome", "committed")]
        ),
        0.02
    );
    assert_eq!(
        v(
            &format!("{tx}_sum"),
            &[("kind", "add_cpu"), ("outcome", "rolled_back")]
        ),
        5.001
    );
    assert_eq!(
        v(
            &format!("{tx}_count"),
            &[("kind", "resize"), ("outcome", "rolled_back")]
        ),
        1.0
    );
    assert!(
        text.contains(&format!(
            "{tx}_sum{{kind=\"remove_cpu\",outcome=\"committed\"}} 0.003000\n"
        )),
        "{text}"
    );

    // Phases: one Validate, Prepare and Publish per transaction (5); AwaitGuest per device
    // and episode; Rollback for each of the three rolled back.
    let phase = "plugvm_hotplug_phase_duration_seconds";
    let count = |p: &str| v(&format!("{phase}_count"), &[("phase", p)]);
    for p in ["validate", "prepare", "publish"] {
        assert_eq!(count(p), 5.0, "{p}");
    }
    assert_eq!(count("commit"), 2.0);
    assert_eq!(count("rollback"), 3.0);
    assert_eq!(count("await_guest"), 6.0, "one per device and episode");
    // The guest's 20 + 3 + 1 ms, and two deadlines of 5 s and 1 ms each.
    let awaited = v(&format!("{phase}_sum"), &[("phase", "await_guest")]);
    assert!((10.026..10.03).contains(&awaited), "{awaited}");
    let validate = buckets(&scrape, phase, &[("phase", "validate")]);
    assert_eq!(
        validate.first(),
        Some(&(0.0001, 5.0)),
        "instant on the fake clock"
    );

    // _OST verdicts by status; every status has its counter.
    let ost = |status: &str| v("plugvm_guest_ost_total", &[("status", status)]);
    assert_eq!(ost("success"), 3.0);
    assert_eq!(ost("eject_in_progress"), 1.0);
    assert_eq!(ost("device_busy"), 1.0);
    assert_eq!(ost("failure"), 0.0);
    assert_eq!(ost("other"), 0.0);

    // Devices rolled back by cause.
    let cause = |c: &str| v("plugvm_hotplug_rollbacks_total", &[("cause", c)]);
    assert_eq!(cause("timeout"), 2.0);
    assert_eq!(cause("guest_refused"), 1.0);
    assert_eq!(cause("batch_aborted"), 1.0);
    assert_eq!(cause("vetoed"), 0.0);

    let refused = |kind: &str, reason: &str| {
        v(
            "plugvm_hotplug_requests_refused_total",
            &[("kind", kind), ("reason", reason)],
        )
    };
    assert_eq!(refused("remove_cpu", "invalid"), 1.0);
    assert_eq!(refused("add_cpu", "paused"), 1.0);
    assert_eq!(refused("remove_cpu", "conflict"), 1.0);

    // The VM's own counters add to those of the VMs that ended.
    let accesses = |c: &str| v("plugvm_register_accesses_total", &[("controller", c)]);
    assert_eq!(
        (accesses("cpu_hotplug"), accesses("memory_hotplug")),
        (111.0, 20.0)
    );
    assert_eq!(v("plugvm_console_dropped_bytes_total", &[]), 8.0);
    assert_eq!(v("plugvm_guest_observations_dropped_total", &[]), 3.0);
    assert_eq!(v("plugvm_events_dropped_total", &[]), 7.0);

    assert_eq!(v("plugvm_vcpus_present", &[]), 2.0);
    assert_eq!(v("plugvm_vcpus_max", &[]), 4.0);
    assert_eq!(v("plugvm_memory_present_bytes", &[]), 536_870_912.0);
    let state = |s: &str| v("plugvm_vm_state", &[("state", s)]);
    assert_eq!(
        ["not_created", "created", "running", "paused"].map(state),
        [0.0, 0.0, 1.0, 0.0]
    );
    for family in [tx, phase, "plugvm_guest_ost_total", "plugvm_vm_state"] {
        assert!(scrape.docs.contains_key(family), "no HELP for {family}");
    }
}

#[test]
fn without_a_vm_the_counters_stay_and_the_gauges_are_zero() {
    let mut m = sequence();
    m.retire(&sample().counters);
    for (state, name) in [(None, "not_created"), (Some(VmState::Created), "created")] {
        let text = m.render(state, None, 0);
        check_format(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let scrape = parse(&text);
        let v = |n: &str, labels: &[(&str, &str)]| value(&scrape, n, labels);
        assert_eq!(v("plugvm_vm_state", &[("state", name)]), 1.0);
        assert_eq!(v("plugvm_vm_state", &[("state", "running")]), 0.0);
        for gauge in [
            "plugvm_vcpus_present",
            "plugvm_vcpus_max",
            "plugvm_memory_present_bytes",
        ] {
            assert_eq!(v(gauge, &[]), 0.0, "{gauge}");
        }
        assert_eq!(
            v(
                "plugvm_register_accesses_total",
                &[("controller", "cpu_hotplug")]
            ),
            11.0
        );
        assert_eq!(v("plugvm_guest_ost_total", &[("status", "success")]), 3.0);
    }
    // An empty registry renders every family, and a valid text.
    let empty = Metrics::new().render(None, None, 0);
    check_format(&empty).unwrap_or_else(|e| panic!("{e}\n{empty}"));
    assert_eq!(empty.matches("# TYPE ").count(), 13, "{empty}");
}

#[test]
fn a_second_vm_keeps_counting() {
    let metrics = Metrics::shared();
    let first = sequence();
    let (mut s, tx, clock) = test_service();
    s.record_metrics(metrics.clone());
    let a = ask(&mut s, Request::AddCpu { id: None });
    clock.advance(MS);
    guest(&mut s, &tx, cpu(2), &[GuestEvent::ost(1, 0)]);
    assert_eq!(a.try_recv().map(|r| r.status), Ok(200));
    lock(&metrics).retire(&sample().counters);
    // A VM running after one that ended: its counters add to the first one's.
    let text = lock(&metrics).render(Some(VmState::Running), Some(&sample()), 0);
    let scrape = parse(&text);
    let v = |n: &str, labels: &[(&str, &str)]| value(&scrape, n, labels);
    assert_eq!(
        v(
            "plugvm_register_accesses_total",
            &[("controller", "cpu_hotplug")]
        ),
        22.0
    );
    assert_eq!(v("plugvm_guest_ost_total", &[("status", "success")]), 1.0);
    assert_eq!(
        v(
            "plugvm_hotplug_transaction_duration_seconds_count",
            &[("kind", "add_cpu"), ("outcome", "committed")]
        ),
        1.0
    );
    // (`first` is another registry: nothing of it shows here.)
    assert!(first
        .render(None, None, 0)
        .contains("status=\"success\"} 3\n"));
}

#[test]
fn histogram_buckets_include_their_upper_bound() {
    let mut h = Histogram::new(TRANSACTION_BUCKETS);
    for us in [0, 1_000, 1_001, 30_000_000, 30_000_001] {
        h.observe_us(us);
    }
    // 0 and 1 ms in le=0.001, 1.001 ms in le=0.0025, 30 s in le=30, beyond in +Inf.
    assert_eq!(h.counts[0], 2);
    assert_eq!(h.counts[1], 1);
    assert_eq!(h.counts[TRANSACTION_BUCKETS.len() - 1], 1);
    assert_eq!(h.counts[TRANSACTION_BUCKETS.len()], 1);
    assert_eq!((h.count, h.sum_us), (5, 60_002_002));
    let mut out = Exposition::default();
    out.family("x_seconds", "histogram", "Help with a \\ and\na newline.");
    out.histogram("x_seconds", &[("a", "q\"b\\c\nd")], &h);
    let text = out.0;
    assert!(
        text.starts_with("# HELP x_seconds Help with a \\\\ and\\na newline.\n"),
        "{text}"
    );
    assert!(
        text.contains("x_seconds_bucket{a=\"q\\\"b\\\\c\\nd\",le=\"0.001\"} 2\n"),
        "{text}"
    );
    assert!(text.contains("le=\"+Inf\"} 5\n"), "{text}");
    assert!(
        text.contains("x_seconds_sum{a=\"q\\\"b\\\\c\\nd\"} 60.002002\n"),
        "{text}"
    );
    check_format(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
}

#[test]
fn the_checker_refuses_what_the_format_forbids() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n";
    assert_eq!(check_format(ok), Ok(()));
    for bad in [
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1} 1\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total one\n",
        "# TYPE a_total counter\na_total 1\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total 1\na_total 2\n",
        "# HELP a A.\n# TYPE a counter\na 1\n",
        "# HELP a_total A.\n# TYPE a_total counter\nb_total 1\n",
        "# HELP h A.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n",
        "# HELP h A.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 0\nh_count 1\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total 1",
    ] {
        assert!(check_format(bad).is_err(), "{bad}");
    }
}

/// The label values are the code's own names, as its JSON spells them.
#[test]
fn label_values_are_the_serialized_names() {
    let kind = |v: serde_json::Value| v["kind"].as_str().unwrap_or_default().to_string();
    for request in [
        Request::AddCpu { id: None },
        Request::RemoveCpu { id: 1 },
        Request::AddMemory { size: 1 },
        Request::RemoveMemory { slot: 1 },
        Request::Resize {
            vcpus: None,
            memory: None,
            best_effort: false,
        },
    ] {
        assert_eq!(request_kind(&request), kind(serde_json::json!(request)));
    }
    for status in [
        TxStatus::Committed,
        TxStatus::PartiallyCommitted,
        TxStatus::RolledBack,
        TxStatus::Rejected,
    ] {
        assert_eq!(
            serde_json::json!(outcome_name(status)),
            serde_json::json!(status)
        );
    }
    for phase in [
        Phase::Validate,
        Phase::Prepare,
        Phase::Publish,
        Phase::AwaitGuest,
        Phase::Commit,
        Phase::Rollback,
    ] {
        assert_eq!(serde_json::json!(phase.name()), serde_json::json!(phase));
    }
    let reasons = [
        FailureReason::Invalid {
            error: ValidationError::CpuZeroRemoval,
        },
        FailureReason::Vetoed {
            participant: "p".into(),
            error: Vec::new(),
        },
        FailureReason::PrepareFailed {
            participant: "p".into(),
            error: Vec::new(),
        },
        FailureReason::PublishFailed {
            participant: "p".into(),
            error: Vec::new(),
        },
        FailureReason::GuestRefused {
            ost: Ost::from_raw(3, 1),
        },
        FailureReason::GuestEjectedDuringAdd,
        FailureReason::Timeout {
            guest_touched: false,
            last_ost: None,
        },
        FailureReason::BatchAborted { cause: cpu(1) },
        FailureReason::GuestEjectDenied,
    ];
    let names: Vec<&str> = reasons.iter().map(cause_name).collect();
    assert_eq!(names, CAUSES);
    for reason in &reasons {
        assert_eq!(cause_name(reason), kind(serde_json::json!(reason)));
    }
    let statuses: Vec<&str> = OST_STATUSES.iter().map(OstStatus::name).collect();
    let mut unique = statuses.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), statuses.len());
    assert!(statuses.contains(&OstStatus::Other(0x99).name()));
}

/// Refuses vCPU 3 in Validate and fails vCPU 2's Prepare.
struct Picky;

impl hotplug::HotplugParticipant for Picky {
    fn validate(&self, op: &hotplug::DeviceOp) -> Result<(), hotplug::ParticipantError> {
        if op.device == cpu(3) {
            Err(hotplug::ParticipantError::new("no vCPU 3 here"))
        } else {
            Ok(())
        }
    }

    fn prepare(&mut self, op: &hotplug::DeviceOp) -> Result<(), hotplug::ParticipantError> {
        if op.device == cpu(2) {
            Err(hotplug::ParticipantError::new("no room for vCPU 2"))
        } else {
            Ok(())
        }
    }
}

/// Transactions that end inside the request (a veto, a failed Prepare) count like the others,
/// in the metrics and in `vm.counters`.
#[test]
fn transactions_ending_at_once_are_counted() {
    let machine = crate::hotplug_service::test_machine();
    let clock = std::sync::Arc::new(hotplug::FakeClock::new());
    let mut engine =
        hotplug::Engine::new(machine, hotplug::EngineConfig::default(), clock.clone()).unwrap();
    let orders = hotplug::Orders::standard(hotplug::Role::Cpu);
    engine.register("picky", orders, Box::new(Picky)).unwrap();
    let (_tx, rx) = crate::hotplug_service::observation_queue().unwrap();
    let mut s = HotplugService::new(engine, clock, rx).unwrap();
    let metrics = Metrics::shared();
    s.record_metrics(metrics.clone());

    let vetoed = ask(&mut s, Request::AddCpu { id: Some(3) });
    assert_eq!(vetoed.try_recv().map(|r| r.status), Ok(422));
    let failed = ask(&mut s, Request::AddCpu { id: Some(2) });
    assert_eq!(failed.try_recv().map(|r| r.status), Ok(500));

    let text = lock(&metrics).render(None, None, 0);
    check_format(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let scrape = parse(&text);
    let v = |n: &str, labels: &[(&str, &str)]| value(&scrape, n, labels);
    let count = "plugvm_hotplug_transaction_duration_seconds_count";
    assert_eq!(
        v(count, &[("kind", "add_cpu"), ("outcome", "rejected")]),
        1.0
    );
    assert_eq!(
        v(count, &[("kind", "add_cpu"), ("outcome", "rolled_back")]),
        1.0
    );
    let cause = |c: &str| v("plugvm_hotplug_rollbacks_total", &[("cause", c)]);
    assert_eq!((cause("vetoed"), cause("prepare_failed")), (1.0, 1.0));
    let counters = s.counters().to_json(&[]);
    assert_eq!(counters["cpu3"]["rejected"], 1, "{counters}");
    assert_eq!(counters["cpu2"]["rolled_back"], 1, "{counters}");
}
