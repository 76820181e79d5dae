//! A client of plugvm's event stream (`GET /api/v1/events`, Server-Sent Events) for tests:
//! [`EventStream`] reads only when asked (so a test can play a reader that stopped reading),
//! [`EventCollector`] reads all the time on a thread of its own.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One event as received: the SSE `id` (none for `dropped`), `event` name and JSON data.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// The event id.
    pub id: Option<u64>,
    /// The SSE event name (`phase`, `ost`, ..., `dropped`).
    pub event: String,
    /// The data line, parsed.
    pub data: Value,
}

impl SseEvent {
    /// The transaction of a hotplug or guest event.
    pub fn tx(&self) -> Option<u64> {
        self.data["tx"].as_u64()
    }

    /// A short name for sequence checks: `phase:prepare`, `ost:success`, `ended:committed`,
    /// or the event's name.
    pub fn label(&self) -> String {
        let d = &self.data["data"];
        match self.event.as_str() {
            "phase" => format!("phase:{}", d["phase"].as_str().unwrap_or("?")),
            "ost" => format!("ost:{}", d["status"]["name"].as_str().unwrap_or("?")),
            "ended" => format!("ended:{}", d["status"].as_str().unwrap_or("?")),
            other => other.to_string(),
        }
    }
}

/// An open event stream, read on demand.
pub struct EventStream {
    reader: BufReader<UnixStream>,
}

impl EventStream {
    /// Opens the stream; `since` resumes after that event id.
    pub fn open(socket: &Path, since: Option<u64>) -> Result<EventStream, String> {
        let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
        let query = since.map_or(String::new(), |id| format!("?since={id}"));
        write!(
            stream,
            "GET /api/v1/events{query} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
        )
        .map_err(|e| format!("write: {e}"))?;
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .map_err(|e| format!("read: {e}"))?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("the stream answered {status:?}"));
        }
        let mut content_type = None;
        loop {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .map_err(|e| format!("read: {e}"))?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-type") {
                    content_type = Some(value.trim().to_string());
                }
            }
        }
        if content_type.as_deref() != Some("text/event-stream") {
            return Err(format!("content type {content_type:?}"));
        }
        Ok(EventStream { reader })
    }

    /// The next event, waiting up to `timeout`; `Ok(None)` at the stream's end.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<SseEvent>, String> {
        let deadline = Instant::now() + timeout;
        let (mut id, mut event, mut data) = (None, None, None);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no event in time".into());
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if let (Some(event), Some(data)) = (event.take(), data.take()) {
                    return Ok(Some(SseEvent { id, event, data }));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "id" => id = value.parse().ok(),
                "event" => event = Some(value.to_string()),
                "data" => {
                    data = Some(
                        serde_json::from_str(value)
                            .map_err(|e| format!("data is not JSON ({e}): {value}"))?,
                    )
                }
                other => return Err(format!("unknown SSE field {other:?}")),
            }
        }
    }
}

/// An event stream read continuously on a thread, so that it never falls behind.
pub struct EventCollector {
    rx: mpsc::Receiver<SseEvent>,
    seen: Vec<SseEvent>,
}

impl EventCollector {
    /// Opens the stream from now on.
    pub fn start(socket: &Path) -> Result<EventCollector, String> {
        let mut stream = EventStream::open(socket, None)?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(Some(event)) = stream.next(Duration::from_secs(3600)) {
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        Ok(EventCollector {
            rx,
            seen: Vec::new(),
        })
    }

    /// Waits until an event satisfies `pred` and returns the events received so far,
    /// including it. Panics after `timeout`.
    pub fn until(&mut self, pred: impl Fn(&SseEvent) -> bool, timeout: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        if self.seen.iter().any(&pred) {
            return self.seen.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(event) => {
                    let hit = pred(&event);
                    self.seen.push(event);
                    if hit {
                        return self.seen.clone();
                    }
                }
                Err(_) => panic!(
                    "no such event within {timeout:?}; got {:?}",
                    self.seen.iter().map(SseEvent::label).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// The events of transaction `tx` received so far, as labels, status reads left out.
    pub fn labels_of(&self, tx: u64) -> Vec<String> {
        self.seen
            .iter()
            .filter(|e| e.tx() == Some(tx) && e.event != "status_read")
            .map(SseEvent::label)
            .collect()
    }
}
