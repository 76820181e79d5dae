//! Tests of `watch`: the renderer on canned events (as the VMM serializes them), and the
//! whole command against a fake server on a Unix socket.

use super::*;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::thread::JoinHandle;

fn sse(event: &str, data: &str) -> SseEvent {
    SseEvent {
        id: None,
        event: event.to_string(),
        data: data.to_string(),
    }
}

/// Renders the data lines of an SSE text, one event per `data:` line, as the VMM sends them.
fn render_all(renderer: &mut Renderer, datas: &[&str]) -> Vec<String> {
    datas
        .iter()
        .map(|d| {
            let name = serde_json::from_str::<Value>(d)
                .ok()
                .and_then(|v| v["event"].as_str().map(str::to_string))
                .unwrap_or_default();
            renderer.render(&sse(&name, d))
        })
        .collect()
}

/// A resize adding cpu 2 and memory slot 1, as the VMM streams it (the add is accepted by
/// the guest 23.1 ms in).
const RESIZE: &[&str] = &[
    r#"{"at_us":12345000,"data":{"mode":"all_or_nothing","origin":"host","request":{"kind":"resize","vcpus":3,"memory":805306368,"best_effort":false},"started_us":12345000,"targets":[{"deadline_us":17345000,"device":{"cpu":2},"memory":null,"operation":"add_cpu"},{"deadline_us":17345000,"device":{"memory_slot":1},"memory":{"offset":0,"size":268435456},"operation":"add_memory"}]},"event":"started","id":41,"source":"hotplug","tx":7}"#,
    r#"{"at_us":12345600,"data":{"devices":[{"cpu":2},{"memory_slot":1}],"duration_us":100,"ended_us":12345100,"ok":true,"phase":"validate","started_us":12345000},"event":"phase","id":42,"source":"hotplug","tx":7}"#,
    r#"{"at_us":12345600,"data":{"devices":[{"cpu":2},{"memory_slot":1}],"duration_us":400,"ended_us":12345500,"ok":true,"phase":"prepare","started_us":12345100},"event":"phase","id":43,"source":"hotplug","tx":7}"#,
    r#"{"at_us":12345600,"data":{"devices":[{"cpu":2},{"memory_slot":1}],"duration_us":100,"ended_us":12345600,"ok":true,"phase":"publish","started_us":12345500},"event":"phase","id":44,"source":"hotplug","tx":7}"#,
    r#"{"at_us":12349000,"data":{"at_us":12349000,"device":{"cpu":2},"kind":"status_read"},"event":"status_read","id":45,"source":"guest","tx":7}"#,
    r#"{"at_us":12368100,"data":{"at_us":12368100,"device":{"cpu":2},"event":{"code":1,"name":"device_check"},"kind":"ost","status":{"code":0,"name":"success"}},"event":"ost","id":46,"source":"guest","tx":7}"#,
    r#"{"at_us":12368100,"data":{"devices":[{"cpu":2}],"duration_us":22500,"ended_us":12368100,"ok":true,"phase":"await_guest","started_us":12345600},"event":"phase","id":47,"source":"hotplug","tx":7}"#,
    r#"{"at_us":12376000,"data":{"at_us":12376000,"device":{"memory_slot":1},"event":{"code":1,"name":"device_check"},"kind":"ost","status":{"code":0,"name":"success"}},"event":"ost","id":48,"source":"guest","tx":7}"#,
    r#"{"at_us":12376000,"data":{"devices":[{"memory_slot":1}],"duration_us":30400,"ended_us":12376000,"ok":true,"phase":"await_guest","started_us":12345600},"event":"phase","id":49,"source":"hotplug","tx":7}"#,
    r#"{"at_us":12376200,"data":{"devices":[{"cpu":2},{"memory_slot":1}],"duration_us":200,"ended_us":12376200,"ok":true,"phase":"commit","started_us":12376000},"event":"phase","id":50,"source":"hotplug","tx":7}"#,
    r#"{"at_us":12376200,"data":{"duration_us":31200,"outcome":{"devices":[],"status":"committed"},"status":"committed"},"event":"ended","id":51,"source":"hotplug","tx":7}"#,
];

#[test]
fn a_committed_transaction_reads_step_by_step() {
    let lines = render_all(&mut Renderer::new(), RESIZE);
    assert_eq!(
        lines,
        [
            "  +12.345s tx 7 resize [+cpu 2, +memory slot 1 (256 MiB)] started",
            "  +12.345s   tx 7 validate 0.1 ms",
            "  +12.345s   tx 7 prepare 0.4 ms",
            "  +12.345s   tx 7 publish 0.1 ms; waiting for the guest",
            "  +12.349s   tx 7 guest: read the status of cpu 2 after 4.0 ms",
            "  +12.368s   tx 7 guest: _OST(cpu 2) device_check: success after 23.1 ms",
            "  +12.368s   tx 7 guest accepted cpu 2 after 22.5 ms",
            "  +12.376s   tx 7 guest: _OST(memory slot 1) device_check: success after 31.0 ms",
            "  +12.376s   tx 7 guest accepted memory slot 1 after 30.4 ms",
            "  +12.376s   tx 7 commit 0.2 ms",
            "  +12.376s tx 7 resize [+cpu 2, +memory slot 1 (256 MiB)] committed in 31.2 ms",
        ]
    );
}

/// A removal the guest refuses, as the VMM streams it (see the VMM's hotplug_service tests).
const REFUSED: &[&str] = &[
    r#"{"at_us":3000,"data":{"mode":"all_or_nothing","origin":"host","request":{"id":1,"kind":"remove_cpu"},"started_us":3000,"targets":[{"deadline_us":10003000,"device":{"cpu":1},"memory":null,"operation":"remove_cpu"}]},"event":"started","id":10,"source":"hotplug","tx":2}"#,
    r#"{"at_us":8000,"data":{"at_us":8000,"device":{"cpu":1},"event":{"code":3,"name":"eject_request"},"kind":"ost","status":{"code":130,"name":"device_busy"}},"event":"ost","id":14,"source":"guest","tx":2}"#,
    r#"{"at_us":8000,"data":{"at_us":8000,"device":{"cpu":1},"error":["guest refused: _OST(0x3 eject_request, 0x82 device_busy)"],"participant":null,"step":"await_guest"},"event":"error","id":15,"source":"hotplug","tx":2}"#,
    r#"{"at_us":8000,"data":{"devices":[{"cpu":1}],"duration_us":5000,"ended_us":8000,"ok":false,"phase":"await_guest","started_us":3000},"event":"phase","id":16,"source":"hotplug","tx":2}"#,
    r#"{"at_us":8000,"data":{"devices":[{"cpu":1}],"duration_us":0,"ended_us":8000,"ok":true,"phase":"rollback","started_us":8000},"event":"phase","id":17,"source":"hotplug","tx":2}"#,
    r#"{"at_us":8000,"data":{"duration_us":5000,"outcome":{"devices":[{"device":{"cpu":1},"dropped_notes":0,"guest_touched":true,"notes":[],"operation":"remove_cpu","reason":{"kind":"guest_refused","ost":{"event":{"code":3,"name":"eject_request"},"status":{"code":130,"name":"device_busy"}}},"result":"rolled_back","step_errors":[]}],"status":"rolled_back"},"reason":"cpu 1: guest refused: _OST(0x3 eject_request, 0x82 device_busy)","status":"rolled_back"},"event":"ended","id":18,"source":"hotplug","tx":2}"#,
    r#"{"at_us":8000,"data":{"error":"vCPU 0 cannot be removed","request":{"id":0,"kind":"remove_cpu"}},"event":"refused","id":19,"source":"hotplug"}"#,
];

#[test]
fn a_rolled_back_transaction_says_why() {
    let lines = render_all(&mut Renderer::new(), REFUSED);
    assert_eq!(
        lines,
        [
            "   +0.003s tx 2 remove_cpu [cpu 1] started",
            "   +0.008s   tx 2 guest: _OST(cpu 1) eject_request: device_busy after 5.0 ms",
            "   +0.008s   tx 2 error in await_guest, cpu 1: guest refused: _OST(0x3 eject_request, 0x82 device_busy)",
            "   +0.008s   tx 2 guest did not accept cpu 1 after 5.0 ms",
            "   +0.008s   tx 2 rollback 0.0 ms",
            "   +0.008s tx 2 remove_cpu [cpu 1] rolled back in 5.0 ms: cpu 1: guest refused: _OST(0x3 eject_request, 0x82 device_busy)",
            "   +0.008s hotplug remove_cpu (id 0) refused: vCPU 0 cannot be removed",
        ]
    );
}

#[test]
fn a_transaction_joined_midway_or_without_a_reason_still_reads() {
    let mut r = Renderer::new();
    // The watcher missed the start: no kind, no "after"; the outcome gives the reason.
    let lines = render_all(
        &mut r,
        &[
            r#"{"at_us":2000000,"data":{"at_us":2000000,"device":{"cpu":3},"kind":"eject"},"event":"eject","id":5,"source":"guest","tx":4}"#,
            r#"{"at_us":2000100,"data":{"devices":[{"cpu":3}],"duration_us":300,"ended_us":2000100,"ok":false,"phase":"prepare","started_us":1999800},"event":"phase","id":6,"source":"hotplug","tx":4}"#,
            r#"{"at_us":2500000,"data":{"duration_us":null,"outcome":{"devices":[{"device":{"cpu":3},"result":"rolled_back","reason":{"kind":"batch_aborted","cause":{"cpu":4}}},{"device":{"cpu":4},"result":"rolled_back","reason":{"kind":"timeout","guest_touched":false}}],"status":"rolled_back"},"status":"rolled_back"},"event":"ended","id":7,"source":"hotplug","tx":4}"#,
        ],
    );
    assert_eq!(
        lines,
        [
            "   +2.000s   tx 4 guest: _EJ0(cpu 3)",
            "   +2.000s   tx 4 prepare [cpu 3] failed after 0.3 ms",
            "   +2.500s tx 4 rolled back: cpu 4: timeout",
        ]
    );
}

#[test]
fn best_effort_removals_from_the_guest_and_odd_codes_are_named() {
    let lines = render_all(
        &mut Renderer::new(),
        &[
            r#"{"at_us":1000,"data":{"mode":"best_effort","origin":"guest","request":{"kind":"resize","vcpus":1,"memory":null,"best_effort":true},"started_us":1000,"targets":[{"device":{"cpu":1},"memory":null,"operation":"remove_cpu"},{"device":{"memory_slot":0},"memory":{"offset":0,"size":134217728},"operation":"remove_memory"}]},"event":"started","id":1,"source":"hotplug","tx":1}"#,
            r#"{"at_us":2000,"data":{"at_us":2000,"device":{"cpu":1},"event":{"code":259,"name":"ospm_eject"},"kind":"ost","status":{"code":143,"name":"other"}},"event":"ost","id":2,"source":"guest","tx":1}"#,
            r#"{"at_us":3000,"data":{"devices":[{"cpu":1}],"duration_us":10,"ended_us":3000,"ok":true,"phase":"commit","started_us":2990},"event":"phase","id":3,"source":"hotplug","tx":1}"#,
            r#"{"at_us":4000,"data":{"duration_us":3000,"outcome":null,"reason":"memory slot 0: vetoed by memory: in use","status":"partially_committed"},"event":"ended","id":4,"source":"hotplug","tx":1}"#,
        ],
    );
    assert_eq!(
        lines,
        [
            "   +0.001s tx 1 resize [-cpu 1, -memory slot 0 (128 MiB)] started (asked by the guest, best effort)",
            "   +0.002s   tx 1 guest: _OST(cpu 1) ospm_eject: 0x8f after 1.0 ms",
            "   +0.003s   tx 1 commit [cpu 1] 0.0 ms",
            "   +0.004s tx 1 resize [-cpu 1, -memory slot 0 (128 MiB)] partially committed in 3.0 ms: memory slot 0: vetoed by memory: in use",
        ]
    );
}

#[test]
fn the_vms_life_and_missed_events_read_as_lines() {
    let mut r = Renderer::new();
    let lines = render_all(
        &mut r,
        &[
            r#"{"at_us":0,"data":{},"event":"starting","id":1,"source":"vmm"}"#,
            r#"{"at_us":1500,"data":{},"event":"created","id":2,"source":"vm"}"#,
            r#"{"at_us":2000,"data":{},"event":"booting","id":3,"source":"vm"}"#,
            r#"{"at_us":52000,"data":{"vcpus":1,"max_vcpus":4,"memory":536870912},"event":"booted","id":4,"source":"vm"}"#,
            r#"{"at_us":1000000,"data":{},"event":"power_button","id":5,"source":"vm"}"#,
            r#"{"at_us":2000000,"data":{"error":"not a Linux kernel"},"event":"boot_failed","id":6,"source":"vm"}"#,
            r#"{"at_us":3000000,"data":{"reason":"vmm.shutdown"},"event":"shutdown","id":7,"source":"vm"}"#,
            r#"{"at_us":3000100,"data":{"exit_code":0},"event":"shutdown","id":8,"source":"vmm"}"#,
        ],
    );
    assert_eq!(
        lines,
        [
            "   +0.000s vmm starting",
            "   +0.001s vm created",
            "   +0.002s vm booting",
            "   +0.052s vm booted: 1 vCPU (max 4), 512 MiB",
            "   +1.000s vm power button",
            "   +2.000s vm boot failed (not a Linux kernel)",
            "   +3.000s vm shutdown (vmm.shutdown)",
            "   +3.000s vmm shutdown (exit code 0)",
        ]
    );
    assert_eq!(
        r.render(&sse("dropped", r#"{"missed":12,"resumed_at":345}"#)),
        "           !! missed 12 events: this watcher fell behind; resuming at event 345"
    );
    // Whatever the server sends, a line comes out and nothing panics.
    assert_eq!(
        r.render(&sse("message", "not json")),
        "           ?? message: not json"
    );
    assert_eq!(
        r.render(&sse(
            "x",
            r#"{"source":"hotplug","event":"new_thing","tx":9,"data":{"a":1},"at_us":1}"#
        )),
        "   +0.000s   tx 9 new_thing {\"a\":1}"
    );
    assert!(r.render(&sse("x", "{}")).contains('?'));
    assert!(r
        .render(&sse("dropped", "[]"))
        .contains("missed some events"));
}

#[test]
fn the_renderer_forgets_old_transactions_that_never_ended() {
    let mut r = Renderer::new();
    for tx in 0..(MAX_TRACKED_TX as u64 + 10) {
        let started = format!(
            r#"{{"at_us":0,"data":{{"request":{{"kind":"add_cpu"}},"targets":[],"started_us":0}},"event":"started","id":1,"source":"hotplug","tx":{tx}}}"#
        );
        r.render(&sse("started", &started));
    }
    assert_eq!(r.txs.len(), MAX_TRACKED_TX);
    assert!(!r.txs.contains_key(&0));
}

#[test]
fn seconds_are_parsed_for_until_idle() {
    use crate::cli::parse_seconds;
    assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_seconds("10"), Ok(Duration::from_secs(10)));
    for bad in ["0", "-1", "x", "NaN", "inf", "1e9", ""] {
        assert!(parse_seconds(bad).is_err(), "{bad}");
    }
}

// --- the command, against a fake server ------------------------------------------------------

/// A server on a fresh socket that answers one connection with `response`, then waits
/// `linger` before closing it. Its thread returns the request line it got.
fn fake_server(response: String, linger: Duration) -> (PathBuf, JoinHandle<String>) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("plugvm-watch-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            line.clear();
        }
        let _ = (&stream).write_all(response.as_bytes());
        std::thread::sleep(linger);
        drop(stream);
        let _ = std::fs::remove_dir_all(&dir);
        request_line.trim_end().to_string()
    });
    (path, handle)
}

const STREAM_HEAD: &str =
    "HTTP/1.1 200 \r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

fn stream_of(datas: &[&str]) -> String {
    let mut text = STREAM_HEAD.to_string();
    text.push_str(": keep-alive\n\n");
    for (i, d) in datas.iter().enumerate() {
        text.push_str(&format!("id: {}\nevent: x\ndata: {d}\n\n", i + 1));
    }
    text
}

fn options() -> WatchOptions {
    WatchOptions {
        timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

fn run(path: &Path, options: &WatchOptions) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = watch(path, options, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn watch_prints_until_the_vmm_goes_and_exits_0() {
    let (path, server) = fake_server(stream_of(REFUSED), Duration::ZERO);
    let (code, out, err) = run(
        &path,
        &WatchOptions {
            since: Some(9),
            ..options()
        },
    );
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out.lines().count(), REFUSED.len(), "{out}");
    assert!(
        out.contains("tx 2 remove_cpu [cpu 1] rolled back in 5.0 ms"),
        "{out}"
    );
    assert_eq!(
        server.join().unwrap(),
        "GET /api/v1/events?since=9 HTTP/1.1"
    );
}

#[test]
fn watch_json_prints_data_lines_as_is_and_count_stops_it() {
    // The server keeps the connection open: only --count ends the watch.
    let (path, server) = fake_server(stream_of(RESIZE), Duration::from_secs(2));
    let started = Instant::now();
    let (code, out, err) = run(
        &path,
        &WatchOptions {
            count: Some(3),
            json: true,
            ..options()
        },
    );
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        format!("{}\n{}\n{}\n", RESIZE[0], RESIZE[1], RESIZE[2])
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(server.join().unwrap(), "GET /api/v1/events HTTP/1.1");
}

#[test]
fn watch_until_idle_stops_after_a_quiet_spell() {
    let (path, server) = fake_server(stream_of(&RESIZE[..2]), Duration::from_secs(5));
    let started = Instant::now();
    let (code, out, _) = run(
        &path,
        &WatchOptions {
            until_idle: Some(Duration::from_millis(300)),
            ..options()
        },
    );
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(started.elapsed() < Duration::from_secs(4));
    drop(server);
}

#[test]
fn watch_gives_up_on_a_silent_vmm() {
    let (path, server) = fake_server(STREAM_HEAD.to_string(), Duration::from_secs(5));
    let (code, out, err) = run(
        &path,
        &WatchOptions {
            timeout: Duration::from_secs(1),
            ..options()
        },
    );
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err, "plugvm-remote: the VMM sent nothing for 1 s\n");
    drop(server);
}

#[test]
fn watch_reports_a_refusal_or_a_missing_socket_in_one_line() {
    let body = r#"{"error":"The event stream is not available."}"#;
    let response = format!(
        "HTTP/1.1 503 \r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (path, server) = fake_server(response, Duration::ZERO);
    let (code, out, err) = run(&path, &options());
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "plugvm-remote: The event stream is not available. (HTTP 503)\n"
    );
    server.join().unwrap();

    let (code, _, err) = run(Path::new("/nonexistent/api.sock"), &options());
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "plugvm-remote: cannot connect to /nonexistent/api.sock: No such file or directory\n"
    );
}

#[test]
fn watch_stops_quietly_when_its_output_closes() {
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (path, server) = fake_server(stream_of(RESIZE), Duration::from_secs(2));
    let mut err = Vec::new();
    assert_eq!(watch(&path, &options(), &mut Closed, &mut err), 0);
    assert!(err.is_empty());
    drop(server);
}
