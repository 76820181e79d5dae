//! `plugvm-remote watch`: the VMM's event stream (`GET /api/v1/events`), printed as it comes,
//! one line per event: transactions as they run (each phase, each answer of the guest, how
//! they end and how long they took), the VM's lifecycle, and the events a slow reader missed.
//!
//! [`Renderer`] turns events into lines and keeps what it needs across them (each
//! transaction's kind, devices and start); [`watch`] drives the connection.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{self, Next, Opened, SseEvent};
use crate::size::ByteSize;

/// Transactions the renderer remembers at most: past that, the oldest are forgotten (a
/// transaction that never ends, its `ended` lost to a drop, must not grow the watcher).
const MAX_TRACKED_TX: usize = 1024;

/// What the renderer remembers of a transaction it saw start.
#[derive(Debug, Clone)]
struct TxInfo {
    kind: String,
    /// Its targets as shown: `+cpu 2, -memory slot 1 (256 MiB)`.
    targets: String,
    /// Its devices as a phase lists them: `cpu 2, memory slot 1`.
    devices: String,
    started_us: u64,
}

/// Turns events into readable lines. Times are the VMM's (seconds since it started, from each
/// event's `at_us`); a transaction's steps are indented under it and say how long after its
/// start they happened.
#[derive(Debug, Default)]
pub struct Renderer {
    txs: HashMap<u64, TxInfo>,
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}

fn u64_of(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// `+12.345s`, right-aligned so that lines line up for the first 10^5 seconds.
fn clock(at_us: u64) -> String {
    let stamp = format!("+{}.{:03}s", at_us / 1_000_000, at_us % 1_000_000 / 1000);
    format!("{stamp:>10}")
}

/// Milliseconds, one decimal: `0.4 ms`, `5001.2 ms`.
fn millis(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// `{"cpu": 2}` as `cpu 2`, `{"memory_slot": 1}` as `memory slot 1`.
pub fn device_name(device: &Value) -> String {
    match device.as_object().and_then(|m| m.iter().next()) {
        Some((kind, id)) => format!("{} {id}", kind.replace('_', " ")),
        None => device.to_string(),
    }
}

fn device_list(devices: &Value) -> String {
    devices
        .as_array()
        .map(|d| d.iter().map(device_name).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// A transaction's targets: `cpu 2, memory slot 1 (256 MiB)`; with `signed` (a resize, which
/// may add and remove at once) each with `+` or `-`.
fn targets(targets: &Value, signed: bool) -> String {
    let Some(targets) = targets.as_array() else {
        return String::new();
    };
    targets
        .iter()
        .map(|t| {
            let sign = match t.get("operation").and_then(Value::as_str) {
                Some(op) if signed && op.starts_with("add") => "+",
                Some(op) if signed && op.starts_with("remove") => "-",
                _ => "",
            };
            let size = t
                .get("memory")
                .and_then(|m| u64_of(m, "size"))
                .map(|s| format!(" ({})", ByteSize(s)))
                .unwrap_or_default();
            format!(
                "{sign}{}{size}",
                device_name(t.get("device").unwrap_or(&Value::Null))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A request as the command that asks for it would say it: `resize (vcpus 4, memory 1 GiB)`.
fn request(r: &Value) -> String {
    let kind = str_of(r, "kind");
    let mut args = Vec::new();
    for (key, name) in [
        ("id", "id"),
        ("slot", "slot"),
        ("vcpus", "vcpus"),
        ("size", "size"),
        ("memory", "memory"),
    ] {
        match (key, r.get(key).and_then(Value::as_u64)) {
            ("size" | "memory", Some(bytes)) => args.push(format!("{name} {}", ByteSize(bytes))),
            (_, Some(n)) => args.push(format!("{name} {n}")),
            _ => {}
        }
    }
    if r.get("best_effort").and_then(Value::as_bool) == Some(true) {
        args.push("best effort".to_string());
    }
    if args.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} ({})", args.join(", "))
    }
}

/// An `_OST` code as journaled (`{"code": 3, "name": "eject_request"}`): its name, or the
/// raw code for one without.
fn code_name(v: Option<&Value>) -> String {
    let Some(v) = v else {
        return "?".to_string();
    };
    match (v.get("name").and_then(Value::as_str), u64_of(v, "code")) {
        (Some(name), _) if name != "other" => name.to_string(),
        (_, Some(code)) => format!("{code:#x}"),
        _ => "?".to_string(),
    }
}

/// Why a transaction did not commit, from its outcome, for a VMM whose `ended` event has no
/// `reason`: the device to blame (not one aborted only because of another) and the kind of
/// its failure.
fn reason_from_outcome(outcome: &Value) -> Option<String> {
    let devices = outcome.get("devices")?.as_array()?;
    let failed: Vec<&Value> = devices
        .iter()
        .filter(|d| d.get("result").and_then(Value::as_str) != Some("committed"))
        .collect();
    let blamed = failed
        .iter()
        .find(|d| str_of(d.get("reason").unwrap_or(&Value::Null), "kind") != "batch_aborted")
        .or(failed.first())?;
    let kind = blamed
        .get("reason")
        .map(|r| str_of(r, "kind").replace('_', " "))
        .unwrap_or_else(|| "failed".to_string());
    Some(format!(
        "{}: {kind}",
        device_name(blamed.get("device").unwrap_or(&Value::Null))
    ))
}

impl Renderer {
    /// A renderer that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The line for one event of the stream (without its newline).
    pub fn render(&mut self, sse: &SseEvent) -> String {
        if sse.event == "dropped" {
            let data: Value = serde_json::from_str(&sse.data).unwrap_or(Value::Null);
            let missed = u64_of(&data, "missed").map_or("some".to_string(), |n| n.to_string());
            let resumed = u64_of(&data, "resumed_at")
                .map(|id| format!("; resuming at event {id}"))
                .unwrap_or_default();
            return format!(
                "{:>10} !! missed {missed} events: this watcher fell behind{resumed}",
                ""
            );
        }
        let Ok(event) = serde_json::from_str::<Value>(&sse.data) else {
            return format!("{:>10} ?? {}: {}", "", sse.event, sse.data);
        };
        let at = u64_of(&event, "at_us").unwrap_or(0);
        let source = str_of(&event, "source");
        let name = str_of(&event, "event");
        let data = event.get("data").cloned().unwrap_or(Value::Null);
        match (source, event.get("tx").and_then(Value::as_u64)) {
            ("hotplug" | "guest", Some(tx)) => self.tx_line(tx, name, at, &data),
            _ => format!("{} {}", clock(at), lifecycle(source, name, &data)),
        }
    }

    /// A transaction's event: its start and end unindented, the steps between indented.
    fn tx_line(&mut self, tx: u64, name: &str, at: u64, data: &Value) -> String {
        let info = self.txs.get(&tx).cloned();
        // How far into the transaction `us` is, when its start is known.
        let since_start = |us: u64| {
            info.as_ref()
                .map(|i| format!(" after {}", millis(us.saturating_sub(i.started_us))))
                .unwrap_or_default()
        };
        let step = |at: u64, text: String| format!("{}   tx {tx} {text}", clock(at));
        match name {
            "started" => {
                let request = data.get("request").unwrap_or(&Value::Null);
                let kind = str_of(request, "kind").to_string();
                let all = data.get("targets").unwrap_or(&Value::Null);
                let shown = targets(all, kind == "resize");
                let devices = device_list(&Value::Array(
                    all.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t.get("device"))
                        .cloned()
                        .collect(),
                ));
                let started_us = u64_of(data, "started_us").unwrap_or(at);
                let mut extra = Vec::new();
                if str_of(data, "origin") == "guest" {
                    extra.push("asked by the guest");
                }
                if str_of(data, "mode") == "best_effort" {
                    extra.push("best effort");
                }
                let extra = if extra.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", extra.join(", "))
                };
                let line = format!(
                    "{} tx {tx} {kind} [{shown}] started{extra}",
                    clock(started_us)
                );
                if self.txs.len() >= MAX_TRACKED_TX {
                    if let Some(&oldest) = self.txs.keys().min() {
                        self.txs.remove(&oldest);
                    }
                }
                self.txs.insert(
                    tx,
                    TxInfo {
                        kind,
                        targets: shown,
                        devices,
                        started_us,
                    },
                );
                line
            }
            "phase" => {
                let phase = str_of(data, "phase");
                let ended = u64_of(data, "ended_us").unwrap_or(at);
                let took = millis(u64_of(data, "duration_us").unwrap_or(0));
                let listed = device_list(data.get("devices").unwrap_or(&Value::Null));
                // Name the devices only when the phase covers some of the transaction's.
                let devices = match &info {
                    Some(i) if i.devices == listed => String::new(),
                    _ => format!(" [{listed}]"),
                };
                let ok = data.get("ok").and_then(Value::as_bool) != Some(false);
                let text = match (phase, ok) {
                    // One episode per device: its wait ended with the guest's verdict.
                    ("await_guest", true) => format!("guest accepted {listed} after {took}"),
                    ("await_guest", false) => {
                        format!("guest did not accept {listed} after {took}")
                    }
                    ("publish", true) => format!("publish{devices} {took}; waiting for the guest"),
                    (phase, true) => format!("{phase}{devices} {took}"),
                    (phase, false) => format!("{phase}{devices} failed after {took}"),
                };
                step(ended, text)
            }
            "ost" | "eject" | "status_read" => {
                let when = u64_of(data, "at_us").unwrap_or(at);
                let device = device_name(data.get("device").unwrap_or(&Value::Null));
                let text = match name {
                    "ost" => format!(
                        "guest: _OST({device}) {}: {}",
                        code_name(data.get("event")),
                        code_name(data.get("status"))
                    ),
                    "eject" => format!("guest: _EJ0({device})"),
                    _ => format!("guest: read the status of {device}"),
                };
                step(when, format!("{text}{}", since_start(when)))
            }
            "error" => {
                let when = u64_of(data, "at_us").unwrap_or(at);
                let mut context = vec![str_of(data, "step").to_string()];
                if let Some(device) = data.get("device").filter(|d| !d.is_null()) {
                    context.push(device_name(device));
                }
                if let Some(p) = data.get("participant").and_then(Value::as_str) {
                    context.push(p.to_string());
                }
                let chain: Vec<&str> = data
                    .get("error")
                    .and_then(Value::as_array)
                    .map(|e| e.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                step(
                    when,
                    format!("error in {}: {}", context.join(", "), chain.join(": ")),
                )
            }
            "ended" => {
                self.txs.remove(&tx);
                let status = str_of(data, "status");
                let took = u64_of(data, "duration_us")
                    .or_else(|| info.as_ref().map(|i| at.saturating_sub(i.started_us)))
                    .map(|us| format!(" in {}", millis(us)))
                    .unwrap_or_default();
                let reason = data
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| {
                        data.get("outcome")
                            .filter(|_| status != "committed")
                            .and_then(reason_from_outcome)
                    })
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                let what = info
                    .as_ref()
                    .map(|i| format!(" {} [{}]", i.kind, i.targets))
                    .unwrap_or_default();
                format!(
                    "{} tx {tx}{what} {}{took}{reason}",
                    clock(at),
                    status.replace('_', " ")
                )
            }
            other => step(at, format!("{other} {data}")),
        }
    }
}

/// A VMM, VM or refused-request event.
fn lifecycle(source: &str, name: &str, data: &Value) -> String {
    match (source, name) {
        ("vm", "booted") => {
            let vcpus = match u64_of(data, "vcpus") {
                Some(1) => "1 vCPU".to_string(),
                Some(n) => format!("{n} vCPUs"),
                None => "? vCPUs".to_string(),
            };
            let max = u64_of(data, "max_vcpus").map_or("?".to_string(), |n| n.to_string());
            let memory = u64_of(data, "memory")
                .map(|m| ByteSize(m).to_string())
                .unwrap_or_else(|| "?".to_string());
            format!("vm booted: {vcpus} (max {max}), {memory}")
        }
        ("vm" | "vmm", _) => {
            let detail = ["reason", "error", "exit_code"]
                .iter()
                .find_map(|k| {
                    data.get(*k).map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => format!("{} {other}", k.replace('_', " ")),
                    })
                })
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            format!("{source} {}{detail}", name.replace('_', " "))
        }
        ("hotplug", "refused") => format!(
            "hotplug {} refused: {}",
            request(data.get("request").unwrap_or(&Value::Null)),
            str_of(data, "error")
        ),
        _ => format!("{source} {name} {data}"),
    }
}

/// What `watch` does besides printing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Start after this event id (`None`: from the next event).
    pub since: Option<u64>,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Stop once no event came for this long.
    pub until_idle: Option<Duration>,
    /// Print each event's JSON data line as is instead of a readable line.
    pub json: bool,
    /// Give up when the VMM sends nothing at all (not even its keep-alive comment, every
    /// 10 s) for this long.
    pub timeout: Duration,
}

/// How often the watcher wakes to check `until_idle` and the silence timeout.
const POLL: Duration = Duration::from_millis(200);

/// Watches the event stream of the VMM at `socket` until it ends (exit code 0), `count`
/// events were printed or the stream stayed idle `until_idle` (0 too), or something failed
/// (1, with one line on `err`). A closed `out` (a pager that quit) ends it quietly.
pub fn watch(
    socket: &Path,
    options: &WatchOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let poll = options
        .until_idle
        .map_or(POLL, |idle| idle.min(POLL))
        .min(options.timeout)
        .max(Duration::from_millis(1));
    let mut stream = match client::open_events(socket, options.since, options.timeout) {
        Ok(Opened::Stream(stream)) => stream,
        Ok(Opened::Refused(response)) => {
            let message = serde_json::from_slice::<Value>(&response.body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| crate::wire::reason(response.status).to_string());
            let _ = writeln!(err, "plugvm-remote: {message} (HTTP {})", response.status);
            return 1;
        }
        Err(e) => {
            let _ = writeln!(err, "plugvm-remote: {e}");
            return 1;
        }
    };
    // From here on reads time out every `poll`, so that the watcher can notice idleness and
    // a silent VMM; the stream resumes where the timed-out read stopped.
    if let Err(e) = stream.set_read_timeout(poll) {
        let _ = writeln!(err, "plugvm-remote: {}", client::describe(&e));
        return 1;
    }
    let mut renderer = Renderer::new();
    let mut printed = 0u64;
    let mut last_event = Instant::now();
    loop {
        if options.count.is_some_and(|n| printed >= n) {
            return 0;
        }
        let event = match stream.next_event() {
            Ok(Next::Event(event)) => event,
            Ok(Next::End) => return 0,
            Ok(Next::TimedOut) => {
                if options
                    .until_idle
                    .is_some_and(|idle| last_event.elapsed() >= idle)
                {
                    return 0;
                }
                if stream.silent_for() >= options.timeout {
                    let _ = writeln!(
                        err,
                        "plugvm-remote: the VMM sent nothing for {} s",
                        options.timeout.as_secs()
                    );
                    return 1;
                }
                continue;
            }
            Err(e) => {
                let _ = writeln!(err, "plugvm-remote: {e}");
                return 1;
            }
        };
        last_event = Instant::now();
        printed += 1;
        let line = if options.json {
            event.data.clone()
        } else {
            renderer.render(&event)
        };
        // Flushed per event: the point is to see it now, also through a pipe.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return 0;
        }
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
