//! `GET /api/v1/events`: the event log as Server-Sent Events.

use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::connection::fail;
use super::encode::ascii_json;
use super::server::Shared;
use crate::events::EventLog;

/// How long an event-stream connection may stay silent before a keep-alive comment, which
/// also finds clients that went away.
const STREAM_KEEPALIVE: Duration = Duration::from_secs(10);
/// How long a write to an event-stream client may block: a client that reads nothing for
/// this long is dropped (it can come back with `since`).
const STREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves `GET /api/v1/events` as Server-Sent Events until the client goes, the server stops
/// or the VMM ends. The VMM never waits for this connection: a client too slow for the event
/// log's capacity gets a `dropped` event saying how many it missed.
pub(super) fn stream_events(shared: &Shared, writer: &mut UnixStream, from: Option<u64>) {
    let Some(log) = shared.events.get().cloned() else {
        let gone = super::RequestError::VmmUnavailable("The event stream is not available.".into());
        return fail(writer, &gone);
    };
    let _ = writer.set_write_timeout(Some(STREAM_WRITE_TIMEOUT));
    // Counted as an answer in progress, so that a stop lets the last events out.
    shared.answering.fetch_add(1, Ordering::SeqCst);
    write_events(shared, writer, &log, from);
    shared.answering.fetch_sub(1, Ordering::SeqCst);
}

fn write_events(shared: &Shared, writer: &mut UnixStream, log: &EventLog, from: Option<u64>) {
    use std::io::Write;
    let head = "HTTP/1.1 200 \r\nServer: plugvm\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    if writer.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut next = from.unwrap_or_else(|| log.next_id());
    loop {
        // A stopping server still lets out what the log holds: the VMM publishes its last
        // events (its shutdown) and closes the log before it stops the server, and a reader
        // that was still writing the previous batch must not lose them. It waits for nothing
        // more, though.
        let stopping = shared.stopping.load(Ordering::SeqCst);
        let wait = if stopping {
            Duration::ZERO
        } else {
            STREAM_KEEPALIVE
        };
        let Some(batch) = log.read_from(next, wait) else {
            return;
        };
        if stopping && batch.events.is_empty() && batch.missed == 0 {
            return;
        }
        let mut text = String::new();
        if batch.missed > 0 {
            text.push_str(&format!(
                "event: dropped\ndata: {}\n\n",
                serde_json::json!({ "missed": batch.missed, "resumed_at": batch.events.first().map_or(batch.next, |e| e.id) })
            ));
        }
        for event in &batch.events {
            let data = serde_json::to_vec(event.as_ref())
                .map(ascii_json)
                .unwrap_or_default();
            text.push_str(&format!(
                "id: {}\nevent: {}\ndata: {}\n\n",
                event.id,
                event.event,
                String::from_utf8_lossy(&data)
            ));
        }
        if text.is_empty() {
            text.push_str(": keep-alive\n\n");
        }
        next = batch.next;
        if writer.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}
