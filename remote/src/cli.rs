//! `plugvm-remote`: command line, request building and output.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};
use serde_json::Value;

use crate::client;
use crate::watch::{device_name, watch, WatchOptions};
use crate::wire::{
    reason, AddMemoryBody, AddVcpuBody, RemoveMemoryBody, RemoveVcpuBody, ResizeBody, API_PREFIX,
    METRICS_PATH,
};

/// Control a running plugvm through its API socket.
#[derive(Debug, Parser)]
#[command(name = "plugvm-remote", version)]
pub struct Cli {
    /// Path of the VMM's API socket.
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// Print the server's raw JSON instead of readable text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the server's answer (for `watch`: for any sign of life, which a
    /// running VMM gives every 10 s).
    #[arg(long, value_name = "SECONDS", default_value_t = 150, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands, one per endpoint.
#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Check that the VMM answers.
    Ping,
    /// Shut the VM down; the VMM stays, and `boot` boots it again.
    Shutdown,
    /// Shut the VM down, if it runs, and end the VMM.
    ShutdownVmm,
    /// Create the VM from a Cloud Hypervisor `VmConfig` JSON file (a VMM started with only
    /// `--api-socket`).
    Create {
        /// The JSON file.
        config: PathBuf,
    },
    /// Boot the created VM.
    Boot,
    /// Shut the VM down, if it runs, and forget its configuration.
    Delete,
    /// Pause every vCPU.
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Press the VM's ACPI power button.
    PowerButton,
    /// Show hotplug counters per device.
    Counters,
    /// Show the VM's state.
    Info,
    /// Plug a vCPU (the lowest free id unless ID is given).
    AddVcpu {
        /// The vCPU id.
        id: Option<u32>,
        /// `--no-wait`.
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Unplug a vCPU.
    RemoveVcpu {
        /// The vCPU id.
        id: u32,
        /// `--no-wait`.
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Change the vCPU count and/or the RAM size in one transaction.
    Resize(ResizeArgs),
    /// Plug a memory region of SIZE (bytes, or with a K/M/G/T or KiB/MiB/GiB/TiB suffix).
    AddMemory {
        /// Region size, e.g. 512M.
        #[arg(value_parser = parse_size)]
        size: u64,
        /// `--no-wait`.
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Unplug the memory region in SLOT.
    RemoveMemory {
        /// The memory slot.
        slot: u32,
        /// `--no-wait`.
        #[command(flatten)]
        wait: WaitArg,
    },
    /// List hotplug transactions, or show the one with ID.
    Transactions {
        /// The transaction id.
        id: Option<u64>,
    },
    /// Print the VMM's metrics in Prometheus' text format (`GET /metrics`), as they come.
    Metrics,
    /// Follow the VMM's events live: every hotplug transaction step by step (phases, the
    /// guest's answers, how it ended and how long it took), the VM's lifecycle. Runs until the
    /// VMM ends (exit 0) or Ctrl-C; with --json, one event object per line.
    Watch(WatchArgs),
}

/// Arguments of `watch`.
#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct WatchArgs {
    /// Start after event ID (0: every event the VMM still keeps) instead of from now on.
    #[arg(long, value_name = "ID")]
    pub since: Option<u64>,
    /// Stop after N events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop once SECONDS pass without an event.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub until_idle: Option<Duration>,
}

/// Parses a positive number of seconds, decimals allowed (`0.5`, `10`).
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "expected a number of seconds above 0 and at most 86400, got {text:?}"
        )),
    }
}

/// `--no-wait`, for the hotplug subcommands.
#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct WaitArg {
    /// Answer once the operation has started, without waiting for the guest.
    #[arg(long)]
    pub no_wait: bool,
}

/// Arguments of `resize`: `--cpus`, `--memory` or both.
#[derive(Debug, PartialEq, Eq, Args)]
#[command(group(ArgGroup::new("target").required(true).multiple(true).args(["cpus", "memory"])))]
pub struct ResizeArgs {
    /// Wanted number of vCPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus: Option<u32>,
    /// Wanted RAM size (bytes, or with a K/M/G/T or KiB/MiB/GiB/TiB suffix).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Keep what succeeded instead of rolling everything back.
    #[arg(long)]
    pub best_effort: bool,
    /// `--no-wait`.
    #[command(flatten)]
    pub wait: WaitArg,
}

/// Parses a size with plugvm's syntax ([`crate::size::parse_size`]:
/// `4096`, `512M`, `2GiB`...); zero is refused.
pub fn parse_size(text: &str) -> Result<u64, String> {
    match crate::size::parse_size(text) {
        Ok(0) => Err("the size must be at least 1 byte".to_string()),
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(e.to_string()),
    }
}

fn wait_query(wait: &WaitArg) -> &'static str {
    if wait.no_wait {
        "?wait=false"
    } else {
        ""
    }
}

fn json_body<T: serde::Serialize>(body: &T) -> Option<Vec<u8>> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(body).ok()
}

/// The HTTP method, target and body for a command.
pub fn to_request(command: &Command) -> (&'static str, String, Option<Vec<u8>>) {
    let put = |endpoint: &str, wait: &WaitArg, body| {
        (
            "PUT",
            format!("{API_PREFIX}/{endpoint}{}", wait_query(wait)),
            body,
        )
    };
    match command {
        Command::Ping => ("GET", format!("{API_PREFIX}/vmm.ping"), None),
        Command::Shutdown => ("PUT", format!("{API_PREFIX}/vm.shutdown"), None),
        Command::ShutdownVmm => ("PUT", format!("{API_PREFIX}/vmm.shutdown"), None),
        // The file is read by `execute`, which can report an error.
        Command::Create { .. } => ("PUT", format!("{API_PREFIX}/vm.create"), None),
        Command::Boot => ("PUT", format!("{API_PREFIX}/vm.boot"), None),
        Command::Delete => ("PUT", format!("{API_PREFIX}/vm.delete"), None),
        Command::Pause => ("PUT", format!("{API_PREFIX}/vm.pause"), None),
        Command::Resume => ("PUT", format!("{API_PREFIX}/vm.resume"), None),
        Command::PowerButton => ("PUT", format!("{API_PREFIX}/vm.power-button"), None),
        Command::Counters => ("GET", format!("{API_PREFIX}/vm.counters"), None),
        Command::Info => ("GET", format!("{API_PREFIX}/vm.info"), None),
        Command::AddVcpu { id, wait } => {
            put("vm.add-vcpu", wait, json_body(&AddVcpuBody { id: *id }))
        }
        Command::RemoveVcpu { id, wait } => put(
            "vm.remove-vcpu",
            wait,
            json_body(&RemoveVcpuBody { id: *id }),
        ),
        Command::Resize(args) => {
            let body = ResizeBody {
                desired_vcpus: args.cpus,
                desired_ram: args.memory,
                best_effort: args.best_effort.then_some(true),
                desired_balloon: None,
            };
            put("vm.resize", &args.wait, json_body(&body))
        }
        Command::AddMemory { size, wait } => put(
            "vm.add-memory",
            wait,
            json_body(&AddMemoryBody { size: *size }),
        ),
        Command::RemoveMemory { slot, wait } => put(
            "vm.remove-memory",
            wait,
            json_body(&RemoveMemoryBody { slot: *slot }),
        ),
        Command::Transactions { id: None } => {
            ("GET", format!("{API_PREFIX}/hotplug/transactions"), None)
        }
        Command::Transactions { id: Some(id) } => (
            "GET",
            format!("{API_PREFIX}/hotplug/transactions/{id}"),
            None,
        ),
        Command::Metrics => ("GET", METRICS_PATH.to_string(), None),
        // The stream is read by `watch::watch`, not as one answer.
        Command::Watch(args) => (
            "GET",
            format!(
                "{API_PREFIX}/events{}",
                args.since
                    .map(|id| format!("?since={id}"))
                    .unwrap_or_default()
            ),
            None,
        ),
    }
}

/// Renders a JSON value as `key: value` lines, nested keys joined by dots.
pub fn render(value: &Value, prefix: &str, out: &mut String) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            map.iter().for_each(|(k, v)| render(v, &key(k), out))
        }
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| render(v, &key(&i.to_string()), out)),
        scalar => {
            let text = match scalar {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if prefix.is_empty() {
                out.push_str(&format!("{text}\n"));
            } else {
                out.push_str(&format!("{prefix}: {text}\n"));
            }
        }
    }
}

fn guest_event(e: &Value) -> Option<String> {
    match e.get("kind").and_then(Value::as_str)? {
        "ost" => {
            let code = |k: &str| e.get(k).and_then(|v| v.get("code")).and_then(Value::as_u64);
            let name = e
                .get("status")
                .and_then(|s| s.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            Some(format!(
                "_OST({},{:#x}) {name}",
                code("event").unwrap_or(0),
                code("status").unwrap_or(0)
            ))
        }
        "eject" => Some("_EJ0".to_string()),
        _ => None,
    }
}

/// One line per transaction record: what, on which devices, how it ended, how long it took,
/// and what the guest said.
pub fn summarize_transaction(record: &Value) -> String {
    let field = |k: &str| record.get(k).cloned().unwrap_or(Value::Null);
    let kind = record
        .get("request")
        .and_then(|r| r.get("kind"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    let devices: Vec<String> = record
        .get("targets")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(|t| t.get("device"))
                .map(device_name)
                .collect()
        })
        .unwrap_or_default();
    let status = field("status");
    let took = record
        .get("duration_us")
        .and_then(Value::as_u64)
        .map(|us| format!(" in {:.1} ms", us as f64 / 1000.0))
        .unwrap_or_default();
    let events: Vec<String> = record
        .get("guest_events")
        .and_then(Value::as_array)
        .map(|e| e.iter().filter_map(guest_event).collect())
        .unwrap_or_default();
    let guest = if events.is_empty() {
        "guest: no answer".to_string()
    } else {
        format!("guest: {}", events.join(", "))
    };
    format!(
        "tx {} {kind} [{}]: {}{took}; {guest}\n",
        field("id"),
        devices.join(", "),
        status.as_str().unwrap_or("?")
    )
}

fn readable(command: &Command, body: &Value) -> String {
    if let Some(record) = body.get("transaction").filter(|r| r.is_object()) {
        return summarize_transaction(record);
    }
    if let Some(records) = body.get("transactions").and_then(Value::as_array) {
        return records.iter().map(summarize_transaction).collect();
    }
    match (command, body) {
        (Command::Ping, Value::Object(map)) => format!(
            "plugvm {} (build {}), pid {}\n",
            map.get("version").and_then(Value::as_str).unwrap_or("?"),
            map.get("build_version")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            map.get("pid")
                .map(Value::to_string)
                .unwrap_or_else(|| "?".to_string()),
        ),
        (Command::Shutdown, Value::Null) => "The VM is shut down.\n".to_string(),
        (Command::ShutdownVmm, Value::Null) => "The VMM is ending.\n".to_string(),
        (_, Value::Null) => "OK\n".to_string(),
        (_, value) => {
            let mut text = String::new();
            render(value, "", &mut text);
            text
        }
    }
}

/// Runs the parsed command; returns the exit code (0 on 2xx, 1 otherwise; for `watch`, see
/// [`watch`]).
pub fn execute(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    if let Command::Watch(args) = &cli.command {
        let options = WatchOptions {
            since: args.since,
            count: args.count,
            until_idle: args.until_idle,
            json: cli.json,
            timeout: Duration::from_secs(cli.timeout),
        };
        return watch(&cli.api_socket, &options, out, err);
    }
    let (method, target, mut body) = to_request(&cli.command);
    if let Command::Create { config } = &cli.command {
        match std::fs::read(config) {
            Ok(bytes) => body = Some(bytes),
            Err(e) => {
                let _ = writeln!(err, "plugvm-remote: cannot read {}: {e}", config.display());
                return 1;
            }
        }
    }
    let timeout = Duration::from_secs(cli.timeout);
    let response = match client::request(&cli.api_socket, method, &target, body.as_deref(), timeout)
    {
        Ok(response) => response,
        Err(e) => {
            let _ = writeln!(err, "plugvm-remote: {e}");
            return 1;
        }
    };
    if matches!(cli.command, Command::Metrics) && (200..300).contains(&response.status) {
        // Prometheus' text format, not JSON: printed as it is, with or without --json.
        return match out.write_all(&response.body) {
            Ok(()) => 0,
            Err(_) => 1,
        };
    }
    let parsed: Value = if response.body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&response.body) {
            Ok(value) => value,
            Err(_) if (200..300).contains(&response.status) => {
                let _ = writeln!(err, "plugvm-remote: the server's answer is not JSON");
                return 1;
            }
            Err(_) => Value::Null,
        }
    };
    if !(200..300).contains(&response.status) {
        let message = parsed
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| reason(response.status).to_string());
        let _ = writeln!(err, "plugvm-remote: {message} (HTTP {})", response.status);
        if let Some(record) = parsed.get("transaction").filter(|r| r.is_object()) {
            let _ = write!(err, "{}", summarize_transaction(record));
        }
        return 1;
    }
    let text = if cli.json {
        if response.body.is_empty() {
            String::new()
        } else {
            format!("{parsed}\n")
        }
    } else {
        readable(&cli.command, &parsed)
    };
    match out.write_all(text.as_bytes()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

#[cfg(test)]
mod summary_tests {
    use super::summarize_transaction;
    use serde_json::json;

    #[test]
    fn a_committed_removal_reads_as_one_line() {
        let record = json!({
            "id": 3,
            "request": {"kind": "remove_cpu", "id": 2},
            "targets": [{"device": {"cpu": 2}}],
            "status": "committed",
            "duration_us": 115_493,
            "guest_events": [
                {"kind": "status_read"},
                {"kind": "ost", "event": {"code": 3}, "status": {"code": 132, "name": "eject_in_progress"}},
                {"kind": "eject"},
                {"kind": "ost", "event": {"code": 3}, "status": {"code": 0, "name": "success"}}
            ]
        });
        assert_eq!(
            summarize_transaction(&record),
            "tx 3 remove_cpu [cpu 2]: committed in 115.5 ms; guest: _OST(3,0x84) eject_in_progress, _EJ0, _OST(3,0x0) success\n"
        );
    }

    #[test]
    fn a_silent_guest_and_missing_fields_do_not_break_it() {
        let line = summarize_transaction(
            &json!({"id": 9, "status": "rolled_back", "targets": [{"device": {"memory_slot": 1}}]}),
        );
        assert_eq!(
            line,
            "tx 9 ? [memory slot 1]: rolled_back; guest: no answer\n"
        );
        assert!(summarize_transaction(&json!(null)).starts_with("tx null ? []"));
    }
}

/// Parses `args` (including the program name) and runs; returns the exit code
/// (2 for usage errors, 0 for `--help` and `--version`).
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    execute(
        &cli,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
