//! End-to-end tests of request handling over a real Unix socket.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use plugvm_remote::client::{self, read_response};
use serde_json::{json, Value};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::test_util::{assert_error, fixture, get, head_of, quick_config, Behavior, TempDir};
use super::*;

#[test]
fn api_server_answers_metrics_as_text_with_its_content_type() {
    let f = fixture(Behavior::Normal, quick_config());
    let raw = f.raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 \r\n"), "{raw}");
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{raw}"
    );
    // The text goes as it is: not JSON, and not escaped to ASCII as JSON bodies are.
    assert_eq!(
        body,
        "# HELP up_total Ü.\n# TYPE up_total counter\nup_total 1\n"
    );
    assert!(
        head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
        "{raw}"
    );
    assert_eq!(f.seen.lock().unwrap().as_slice(), [ApiRequest::Metrics]);
    // Under the API prefix there is nothing.
    assert_error(f.call("GET", "/api/v1/metrics", None), 404, "No endpoint");
}

#[test]
fn api_server_serves_each_route() {
    let f = fixture(Behavior::Normal, quick_config());
    let (status, ping) = f.call("GET", "/api/v1/vmm.ping", None);
    assert_eq!(status, 200);
    assert_eq!(ping["pid"], json!(std::process::id()));
    assert_eq!(ping["version"], json!(env!("CARGO_PKG_VERSION")));
    assert_eq!(
        f.call("GET", "/api/v1/vm.info", None),
        (200, json!({"state": "running"}))
    );
    assert_eq!(
        f.call("PUT", "/api/v1/vm.shutdown", None),
        (204, Value::Null)
    );
    let pending = [
        (
            "PUT",
            "/api/v1/vm.add-vcpu",
            Some(r#"{"id": 1}"#),
            "vm.add-vcpu",
        ),
        (
            "PUT",
            "/api/v1/vm.remove-vcpu?wait=false",
            Some(r#"{"id": 1}"#),
            "vm.remove-vcpu",
        ),
        (
            "PUT",
            "/api/v1/vm.resize",
            Some(r#"{"desired_vcpus": 2}"#),
            "vm.resize",
        ),
        (
            "PUT",
            "/api/v1/vm.add-memory",
            Some(r#"{"size": 134217728}"#),
            "vm.add-memory",
        ),
        (
            "PUT",
            "/api/v1/vm.remove-memory",
            Some(r#"{"slot": 0}"#),
            "vm.remove-memory",
        ),
        (
            "GET",
            "/api/v1/hotplug/transactions",
            None,
            "hotplug/transactions",
        ),
        (
            "GET",
            "/api/v1/hotplug/transactions/3",
            None,
            "hotplug/transactions/{id}",
        ),
    ];
    for (method, target, body, endpoint) in pending {
        assert_error(
            f.call(method, target, body),
            501,
            &format!("{endpoint} is not implemented"),
        );
    }
    let seen = f.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 9);
    assert_eq!(seen[3], ApiRequest::RemoveVcpu { id: 1, wait: false });
    assert_eq!(seen[8], ApiRequest::Transaction(3));
    // The VMM may answer (it writes to the socket itself) before the connection's thread has
    // written the wake-up that follows its message: wait for the last one.
    let mut wakes = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while wakes < 9 && Instant::now() < deadline {
        wakes += f.wake.read().unwrap_or(0);
        thread::sleep(Duration::from_millis(1));
    }
    assert!(
        wakes >= 9,
        "the server wakes the VMM on each request: {wakes}"
    );
}

#[test]
fn api_server_rejects_hostile_requests_with_json_errors() {
    let f = fixture(Behavior::Normal, quick_config());
    assert_error(
        f.call("PUT", "/api/v1/vm.resize", Some("{\"desired_vcpus\": ")),
        400,
        "EOF while parsing",
    );
    assert_error(
        f.call("PUT", "/api/v1/vm.resize", Some(r#"{"vcpus": 2}"#)),
        400,
        "unknown field `vcpus`",
    );
    assert_error(
        f.call("PUT", "/api/v1/vm.resize", Some(r#"{"desired_ram": "1G"}"#)),
        400,
        "invalid type: string",
    );
    assert_error(
        f.call("PUT", "/api/v1/vm.remove-memory", Some("{}")),
        400,
        "missing field `slot`",
    );
    assert_error(
        f.call("PUT", "/api/v1/vm.remove-vcpu", None),
        400,
        "empty body",
    );
    assert_error(
        f.call("GET", "/api/v1/vm.nothing", None),
        404,
        "No endpoint at /api/v1/vm.nothing",
    );
    assert_error(
        f.call("GET", "/api/v1/vm.add-vcpu?wait=no", None),
        405,
        "use PUT",
    );
    assert_error(
        f.call("PUT", "/api/v1/vm.add-vcpu?wait=no", None),
        400,
        "true or false",
    );
    assert_error(
        f.call("GET", "/api/v1/vm.info?x=1", None),
        400,
        "no query parameters",
    );
    assert_error(
        f.call("GET", "/api/v1/hotplug/transactions/abc", None),
        400,
        "`abc`",
    );
    assert_error(
        f.call("GET", "/api/v1/hotplug/transactions/-1", None),
        400,
        "`-1`",
    );
    let text = f.raw(b"DELETE /api/v1/vm.info HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(
        text.starts_with("HTTP/1.1 405 \r\n") && text.contains("\r\nAllow: GET\r\n"),
        "{text}"
    );
    for garbage in [
        &b"\x00\x01\x02\r\n\r\n"[..],
        b"GET /api/v1/vmm.ping HTTP/9\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
    ] {
        let text = f.raw(garbage);
        assert!(
            text.starts_with("HTTP/1.1 400 \r\n") && text.contains("{\"error\":"),
            "{text}"
        );
    }
    let text =
        f.raw(b"PUT /api/v1/vm.resize HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 501 "), "{text}");
    // Nothing above hurt the server.
    assert_eq!(f.call("GET", "/api/v1/vmm.ping", None).0, 200);
}

#[test]
fn api_server_refuses_oversized_bodies_without_reading_them() {
    let f = fixture(Behavior::Normal, quick_config());
    // Declares 1 MiB but sends none of it: the answer must not wait for it.
    let started = Instant::now();
    let text = f.raw(b"PUT /api/v1/vm.resize HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.contains("exceeds the 16384-byte limit"), "{text}");
    // Exactly at the limit is fine.
    let mut body = br#"{"id": 1}"#.to_vec();
    body.resize(MAX_BODY_BYTES, b' ');
    let body = String::from_utf8(body).unwrap();
    assert_eq!(f.call("PUT", "/api/v1/vm.remove-vcpu", Some(&body)).0, 501);
    body.clone().push(' ');
    let over = format!("{body} ");
    assert_eq!(f.call("PUT", "/api/v1/vm.remove-vcpu", Some(&over)).0, 413);
}

#[test]
fn api_server_times_out_slow_and_idle_clients() {
    let f = fixture(Behavior::Normal, quick_config());
    // Half a request line, then silence: 408.
    let mut slow = UnixStream::connect(&f.path).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(b"GET /api/v1/vmm.ping HT").unwrap();
    let mut text = String::new();
    let _ = slow.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    // A body that never arrives: 408.
    let text = f.raw(b"PUT /api/v1/vm.resize HTTP/1.1\r\nContent-Length: 20\r\n\r\n{");
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    // A silent connection is closed without an answer.
    let mut idle = UnixStream::connect(&f.path).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    assert_eq!(idle.read_to_end(&mut buf).unwrap(), 0);
}

#[test]
fn api_server_keeps_connections_alive_and_honors_expect() {
    let f = fixture(Behavior::Normal, quick_config());
    let stream = UnixStream::connect(&f.path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    for _ in 0..3 {
        writer
            .write_all(b"GET /api/v1/vm.info HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut reader).unwrap().status, 200);
    }
    writer
        .write_all(b"PUT /api/v1/vm.remove-vcpu HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 8\r\n\r\n")
        .unwrap();
    let mut interim = [0u8; 25];
    reader.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    writer.write_all(br#"{"id":1}"#).unwrap();
    assert_eq!(read_response(&mut reader).unwrap().status, 501);
}

#[test]
fn api_server_answers_503_when_the_vmm_is_slow_or_gone() {
    let config = ApiConfig {
        vmm_timeout: Duration::from_millis(300),
        ..quick_config()
    };
    let f = fixture(Behavior::Hold, config.clone());
    assert_error(
        f.call("GET", "/api/v1/vm.info", None),
        503,
        "did not answer vm.info within 0.3 s",
    );
    let f = fixture(Behavior::Drop, config.clone());
    assert_error(
        f.call("PUT", "/api/v1/vm.shutdown", None),
        503,
        "dropped the vm.shutdown request",
    );
    // A VMM that has exited: its receiver is gone.
    let dir = TempDir::new();
    let path = dir.0.join("gone.sock");
    let (to_vmm, from_api) = mpsc::channel();
    drop(from_api);
    let wake = EventFd::new(EFD_NONBLOCK).unwrap();
    let _server = start_with_config(&path, to_vmm, wake, config).unwrap();
    let response = get(&path, "/api/v1/vm.info");
    assert_eq!(response.status, 503);
    assert_eq!(response.body, br#"{"error":"The VMM is not running."}"#);
    // Ping needs no VMM.
    assert_eq!(get(&path, "/api/v1/vmm.ping").status, 200);
}

#[test]
fn api_server_pings_while_a_request_is_pending() {
    let config = ApiConfig {
        vmm_timeout: Duration::from_secs(2),
        ..quick_config()
    };
    let f = Arc::new(fixture(Behavior::Hold, config));
    let pending = {
        let f = Arc::clone(&f);
        thread::spawn(move || f.call("PUT", "/api/v1/vm.add-vcpu", None).0)
    };
    while f.seen.lock().unwrap().is_empty() {
        thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(f.call("GET", "/api/v1/vmm.ping", None).0, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(!pending.is_finished());
    assert_eq!(pending.join().unwrap(), 503);
}

/// Splits a whole answer into its status and its JSON body.
fn status_and_body(answer: &str) -> (u16, Value) {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer}"));
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    (status, body)
}

/// A `Connection: close` ping whose head is `len` bytes in all, blank line included.
fn ping_of(len: usize) -> String {
    head_of(
        "GET /api/v1/vmm.ping HTTP/1.1\r\nConnection: close\r\n",
        len,
    )
}

#[test]
fn api_server_answers_heads_over_the_limit_before_it_closes() {
    let f = fixture(Behavior::Normal, quick_config());
    let limit = http::MAX_HEAD_BYTES as usize;
    assert_eq!(
        status_and_body(&f.exchange(ping_of(limit).as_bytes())).0,
        200
    );
    // One byte over; the headers ending exactly at the limit (the blank line beyond it: once
    // dropped unanswered); far over, in the request line; too many fields. Each one's answer
    // is read whole, and the connection then ends cleanly, not with a reset.
    for head in [
        ping_of(limit + 1),
        ping_of(limit + 2),
        format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000)),
        format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(http::MAX_HEADERS + 1)
        ),
    ] {
        assert_error(status_and_body(&f.exchange(head.as_bytes())), 431, "header");
    }
    assert_eq!(f.call("GET", "/api/v1/vmm.ping", None).0, 200);
}

#[test]
fn api_server_ignores_a_few_empty_lines_and_refuses_a_flood_of_them() {
    let f = fixture(Behavior::Normal, quick_config());
    let few = format!(
        "{}GET /api/v1/vmm.ping HTTP/1.1\r\nConnection: close\r\n\r\n",
        "\r\n".repeat(http::MAX_LEADING_EMPTY_LINES)
    );
    assert_eq!(status_and_body(&f.exchange(few.as_bytes())).0, 200);
    for count in [http::MAX_LEADING_EMPTY_LINES + 1, 5000, 50_000] {
        let flood = format!(
            "{}GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n",
            "\r\n".repeat(count)
        );
        assert_error(
            status_and_body(&f.exchange(flood.as_bytes())),
            400,
            "empty lines before the request line",
        );
    }
}

/// Connects and sends nothing: an idle connection, as a flood of them would hold.
fn idle_connection(f: &super::test_util::Fixture) -> UnixStream {
    let stream = UnixStream::connect(&f.path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Whether the server ended `stream` without a word (it was evicted).
fn was_closed(stream: &mut UnixStream) -> bool {
    let mut rest = Vec::new();
    matches!(stream.read_to_end(&mut rest), Ok(0))
}

/// [`quick_config`] with room for `max_connections`, kept open up to 5 s when idle.
fn limited(max_connections: usize) -> ApiConfig {
    ApiConfig {
        max_connections,
        request_timeout: Duration::from_secs(5),
        ..quick_config()
    }
}

#[test]
fn api_server_evicts_the_longest_idle_connection_for_a_new_one() {
    let f = fixture(Behavior::Normal, limited(4));
    // A flood of idle connections, far more than the limit, each one held open.
    let mut held: Vec<UnixStream> = (0..40)
        .map(|_| {
            let stream = idle_connection(&f);
            thread::sleep(Duration::from_millis(2));
            stream
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    // Everyone else still gets in: the operator's request, and the client's.
    assert_eq!(
        f.call("GET", "/api/v1/vm.info", None),
        (200, json!({"state": "running"}))
    );
    let text = f.raw(b"GET /api/v1/vmm.ping HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    // The oldest gave way; the newest kept their place and are served.
    assert!(was_closed(&mut held[0]));
    let mut newest = held.pop().unwrap();
    newest
        .write_all(b"GET /api/v1/vm.info HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    newest.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

#[test]
fn api_server_keeps_kept_alive_connections_until_their_place_is_needed() {
    let f = fixture(Behavior::Normal, limited(2));
    let stream = idle_connection(&f);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    writer
        .write_all(b"GET /api/v1/vm.info HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader).unwrap().status, 200);
    // Kept alive, and idle since its answer: a newer idle connection outlives it.
    thread::sleep(Duration::from_millis(20));
    let _newer = idle_connection(&f);
    thread::sleep(Duration::from_millis(20));
    assert_eq!(f.call("GET", "/api/v1/vmm.ping", None).0, 200);
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn api_server_never_evicts_requests_in_progress_nor_event_streams() {
    use crate::events::EventLog;
    use client::{Next, Opened};
    let config = ApiConfig {
        vmm_timeout: Duration::from_secs(2),
        ..limited(4)
    };
    let f = Arc::new(fixture(Behavior::Hold, config));
    let log = Arc::new(EventLog::with_capacity(
        Arc::new(hotplug::FakeClock::new()),
        64,
    ));
    f.server.as_ref().unwrap().attach_events(log.clone());
    let open_stream = || match client::open_events(&f.path, None, Duration::from_secs(5)) {
        Ok(Opened::Stream(stream)) => stream,
        other => panic!("{other:?}"),
    };
    // Two streams: their share of the four places. A third is refused.
    let mut streams = [open_stream(), open_stream()];
    match client::open_events(&f.path, None, Duration::from_secs(5)) {
        Ok(Opened::Refused(response)) => {
            assert_eq!(response.status, 503);
            let text = String::from_utf8_lossy(&response.body);
            assert!(
                text.contains("Too many open event streams (at most 2)"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Two requests the VMM works on (it holds them): every place is taken.
    let pending: Vec<_> = (0..2)
        .map(|_| {
            let f = Arc::clone(&f);
            thread::spawn(move || f.call("PUT", "/api/v1/vm.add-vcpu", None))
        })
        .collect();
    while f.seen.lock().unwrap().len() < 2 {
        thread::sleep(Duration::from_millis(5));
    }
    // No one gives way to a newcomer, which is refused at once, its answer still read.
    let text = f.raw(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(
        text.contains(plugvm_remote::wire::TOO_MANY_CONNECTIONS),
        "{text}"
    );
    // The requests in progress get the VMM's answer (here: its silence), not a closed
    // connection; the streams still stream.
    for request in pending {
        assert_error(request.join().unwrap(), 503, "did not answer vm.add-vcpu");
    }
    log.publish("vm", "paused", None, json!({}));
    for stream in &mut streams {
        match stream.next_event().unwrap() {
            Next::Event(event) => assert_eq!(event.event, "paused"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn the_event_stream_lets_the_last_events_out_when_the_server_stops() {
    use crate::events::EventLog;
    use client::{Next, Opened};
    let mut f = fixture(Behavior::Normal, quick_config());
    let log = Arc::new(EventLog::with_capacity(
        Arc::new(hotplug::FakeClock::new()),
        4096,
    ));
    f.server.as_ref().unwrap().attach_events(log.clone());
    let Opened::Stream(mut stream) =
        client::open_events(&f.path, Some(0), Duration::from_secs(10)).unwrap()
    else {
        panic!("no event stream");
    };
    // Megabytes of events the client does not read yet: the server's writer blocks in the
    // middle of that batch, and the VMM's last event comes while it does.
    let filler = "x".repeat(1000);
    for _ in 0..2000 {
        log.publish("vm", "paused", None, json!({ "filler": filler }));
    }
    thread::sleep(Duration::from_millis(100));
    log.publish("vmm", "shutdown", None, json!({}));
    log.close();
    let server = f.server.take().unwrap();
    let stopper = thread::spawn(move || server.shutdown());
    let mut events = Vec::new();
    loop {
        match stream.next_event().unwrap() {
            Next::Event(e) => events.push(e),
            Next::TimedOut => panic!("the stream stalled after {} events", events.len()),
            Next::End => break,
        }
    }
    stopper.join().unwrap();
    assert_eq!(events.len(), 2001);
    assert_eq!(events[2000].event, "shutdown");
    assert_eq!(events[2000].id.as_deref(), Some("2001"));
}

/// A server whose VMM is the test itself (it takes each message from the returned channel and
/// answers, or not, by hand), with `vmm_timeout`, and a client connected to it. The folder of
/// the socket lives as long as the server.
fn hand_driven_vmm(
    vmm_timeout: Duration,
) -> (
    (ApiServerHandle, TempDir),
    mpsc::Receiver<ApiMessage>,
    UnixStream,
) {
    let dir = TempDir::new();
    let path = dir.0.join("api.sock");
    let (to_vmm, from_api) = mpsc::channel::<ApiMessage>();
    let wake = EventFd::new(EFD_NONBLOCK).unwrap();
    let config = ApiConfig {
        vmm_timeout,
        ..quick_config()
    };
    let server = start_with_config(&path, to_vmm, wake, config).unwrap();
    let client = UnixStream::connect(&path).unwrap();
    // The server first: it removes its socket before the folder goes.
    ((server, dir), from_api, client)
}

/// The VMM's answer is on the client's socket when the VMM's `send` returns: the loop writes
/// it, not the connection's thread after a wake-up. The connection then serves the next
/// request (keep-alive), and the answer of a VMM too late is the server's 503 alone.
#[test]
fn api_server_lets_the_vmm_write_its_answer_to_the_client() {
    let (_server, from_api, mut client) = hand_driven_vmm(Duration::from_millis(300));
    let request =
        b"PUT /api/v1/vm.add-vcpu HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n{\"id\":1}";
    for round in 0..2 {
        client.write_all(request).unwrap();
        let message = from_api.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            message.request,
            ApiRequest::AddVcpu {
                id: Some(1),
                wait: true
            }
        );
        assert!(message
            .respond
            .send(ApiResponse::ok(json!({ "round": round }))));
        // Read without waiting: the whole answer is there already.
        client.set_nonblocking(true).unwrap();
        let mut got = vec![0u8; 4096];
        let n = client.read(&mut got).expect("the answer, at once");
        client.set_nonblocking(false).unwrap();
        let text = String::from_utf8_lossy(&got[..n]).into_owned();
        assert!(text.starts_with("HTTP/1.1 200 \r\n"), "{text}");
        assert!(text.ends_with(&format!("{{\"round\":{round}}}")), "{text}");
        assert!(!text.contains("Connection: close"), "{text}");
    }
    // Too late: the server has answered 503 and the VMM's answer goes nowhere.
    client.write_all(request).unwrap();
    let message = from_api.recv_timeout(Duration::from_secs(5)).unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let late = read_response(&mut reader).unwrap();
    assert_eq!(late.status, 503);
    assert!(!message.respond.send(ApiResponse::ok(json!({"late": true}))));
    // And the connection still serves requests, with nothing of the late answer in between.
    client
        .write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let ping = read_response(&mut reader).unwrap();
    assert_eq!(ping.status, 200);
}

/// A client that reads to the end of the stream gets it after the server's 503, although the
/// VMM still holds the request (and a copy of the socket) unanswered.
#[test]
fn api_server_ends_a_closing_connection_after_its_503_while_the_vmm_holds_the_request() {
    let (_server, from_api, mut client) = hand_driven_vmm(Duration::from_millis(200));
    client
        .write_all(b"GET /api/v1/vm.info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let held = from_api.recv_timeout(Duration::from_secs(5)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut all = String::new();
    client
        .read_to_string(&mut all)
        .expect("the end of the stream");
    assert!(all.starts_with("HTTP/1.1 503 \r\n"), "{all}");
    assert!(all.contains("Connection: close"), "{all}");
    drop(held);
}
