//! One connection's thread: reads each request (bounded in size and time), routes it, gets
//! the answer (the server's own, or the VMM's through the channel and the wake eventfd) and
//! writes it, until the client closes, a limit is hit or the server stops.

use std::io::{self, BufReader, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use super::encode::{encode_body, error_body};
use super::event_stream::stream_events;
use super::http::{self, DeadlineReader, HeadError};
use super::routing::{self, Action};
use super::server::{max_streams, Activity, Shared, LINGER_BYTES, LINGER_TIMEOUT};
use super::{ApiMessage, ApiRequest, ApiResponse, RequestError, MAX_BODY_BYTES};
use plugvm_remote::wire::TOO_MANY_CONNECTIONS;

/// Serves requests on connection `id` until it closes, fails, times out or is evicted.
pub(super) fn serve_connection(shared: &Shared, id: u64, stream: UnixStream) {
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    let mut reader = BufReader::new(DeadlineReader::new(stream));
    let timeout = shared.config.request_timeout;
    while !shared.stopping.load(Ordering::SeqCst) {
        reader.get_mut().set_budget(timeout);
        if http::await_request(&mut reader).is_err() {
            return;
        }
        if !shared.set_activity(id, Activity::Busy) {
            // Evicted as idle while this request was on its way: its place is gone.
            let full = RequestError::VmmUnavailable(TOO_MANY_CONNECTIONS.to_string());
            return refuse(&mut reader, &mut writer, &full);
        }
        let head = match http::read_head(&mut reader) {
            Ok(head) => head,
            Err(HeadError::Idle | HeadError::Broken) => return,
            Err(HeadError::Timeout) => {
                let late =
                    RequestError::RequestTimeout("The request was not received in time.".into());
                return refuse(&mut reader, &mut writer, &late);
            }
            Err(HeadError::Reject(e)) => return refuse(&mut reader, &mut writer, &e),
        };
        let len = match usize::try_from(head.content_length) {
            Ok(len) if len <= MAX_BODY_BYTES => len,
            _ => {
                let message = format!(
                    "Request body of {} bytes exceeds the {MAX_BODY_BYTES}-byte limit.",
                    head.content_length
                );
                return refuse(
                    &mut reader,
                    &mut writer,
                    &RequestError::BodyTooLarge(message),
                );
            }
        };
        let body = {
            if head.expect_continue && len > 0 {
                use std::io::Write;
                if writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                    return;
                }
            }
            match http::read_body(&mut reader, len) {
                Ok(body) => body,
                Err(HeadError::Timeout) => {
                    let late = RequestError::RequestTimeout(
                        "The request body was not received in time.".into(),
                    );
                    return refuse(&mut reader, &mut writer, &late);
                }
                Err(_) => return,
            }
        };
        // The request is in: the VMM's time for it runs from here to the answer's last byte.
        let received = std::time::Instant::now();
        let action = routing::route(&head.method, &head.target, &body);
        if let Ok(Action::Stream(from)) = action {
            if !shared.start_stream(id) {
                let message = format!(
                    "Too many open event streams (at most {}); retry later.",
                    max_streams(shared.config.max_connections)
                );
                return refuse(
                    &mut reader,
                    &mut writer,
                    &RequestError::VmmUnavailable(message),
                );
            }
            let from = from.or(head.last_event_id.map(|id| id.saturating_add(1)));
            return stream_events(shared, &mut writer, from);
        }
        shared.answering.fetch_add(1, Ordering::SeqCst);
        let (response, allow) = handle(shared, action);
        let body = encode_body(&response);
        let written = http::write_response(
            &mut writer,
            response.status,
            body.as_ref().map(|(kind, bytes)| (*kind, bytes.as_slice())),
            allow.as_deref(),
            head.keep_alive,
        );
        shared.answering.fetch_sub(1, Ordering::SeqCst);
        // Benchmarks subtract the guest's share (the journal's await_guest) from this.
        tracing::info!(
            method = %head.method,
            target = %head.target,
            status = response.status,
            served_us = u64::try_from(received.elapsed().as_micros()).unwrap_or(u64::MAX),
            "API request served"
        );
        if written.is_err() || !head.keep_alive {
            return;
        }
        // Kept alive: idle again, and so the first to give way when the server is full.
        shared.set_activity(id, Activity::Waiting(Instant::now()));
    }
}

/// Answers `error` (the connection then closes).
pub(super) fn fail(writer: &mut UnixStream, error: &RequestError) {
    let body = error_body(&error.to_string());
    let _ = http::write_response(
        writer,
        error.status(),
        Some((http::JSON, &body)),
        None,
        false,
    );
}

/// [`fail`], then [`linger`]: for an answer given before the whole request was read.
fn refuse(reader: &mut BufReader<DeadlineReader>, writer: &mut UnixStream, error: &RequestError) {
    fail(writer, error);
    linger(reader, writer);
}

/// Ends a connection whose client may still be sending, so that the client reads the answer.
///
/// A Unix socket closed with unread input resets the connection (the peer's next read fails
/// with `ECONNRESET`, as after a TCP reset), and many clients then report the reset rather
/// than the answer: a head over the size limit or a flood of empty lines got "connection
/// reset" instead of its 431 or 400. So the write side is shut first (the client reads the
/// answer, then its end), and what the client still sends is read and dropped until it
/// closes, for at most [`LINGER_TIMEOUT`] and [`LINGER_BYTES`].
fn linger(reader: &mut BufReader<DeadlineReader>, writer: &UnixStream) {
    let _ = writer.shutdown(Shutdown::Write);
    reader.get_mut().set_budget(LINGER_TIMEOUT);
    let _ = io::copy(&mut reader.by_ref().take(LINGER_BYTES), &mut io::sink());
}

/// Gets the answer to a routed request: the server's own, or the VMM's.
fn handle(shared: &Shared, action: Result<Action, RequestError>) -> (ApiResponse, Option<String>) {
    match action {
        Ok(Action::Reply(response)) => (response, None),
        Ok(Action::Forward(request)) => (ask_vmm(shared, request), None),
        Ok(Action::Stream(_)) => (
            RequestError::HostFailure("The event stream cannot be answered here.".into()).into(),
            None,
        ),
        Err(e) => {
            let allow = e.allow().map(str::to_string);
            (e.into(), allow)
        }
    }
}

/// Sends `request` to the VMM, wakes it, and waits for the answer.
fn ask_vmm(shared: &Shared, request: ApiRequest) -> ApiResponse {
    let endpoint = request.endpoint();
    let (respond, answer) = mpsc::channel();
    if shared.to_vmm.send(ApiMessage { request, respond }).is_err() {
        return RequestError::VmmUnavailable("The VMM is not running.".into()).into();
    }
    if let Err(e) = shared.wake.write(1) {
        return RequestError::VmmUnavailable(format!("Cannot wake the VMM: {e}.")).into();
    }
    let timeout = shared.config.vmm_timeout;
    match answer.recv_timeout(timeout) {
        Ok(response) if (200..=599).contains(&response.status) => response,
        Ok(response) => RequestError::HostFailure(format!(
            "The VMM answered {endpoint} with invalid status {}.",
            response.status
        ))
        .into(),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            tracing::warn!("the VMM did not answer {endpoint} within {timeout:?}");
            RequestError::VmmUnavailable(format!(
                "The VMM did not answer {endpoint} within {} s.",
                timeout.as_secs_f64()
            ))
            .into()
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => RequestError::VmmUnavailable(format!(
            "The VMM dropped the {endpoint} request unanswered."
        ))
        .into(),
    }
}
