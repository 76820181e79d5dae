//! Where the VMM's answer to one request goes.
//!
//! A request read by a connection's thread reaches the event loop with a [`Responder`] that
//! holds the client's socket: the loop writes the answer itself, the moment it has it, instead
//! of handing it back to the connection's thread and waking that thread first. Under a
//! nested, emulated host a thread wake-up costs about as much as all of the VMM's own work
//! for a vCPU hot-add, and the answer's hop was one of the two the request made.
//!
//! The loop must never block, so it writes without waiting (`MSG_DONTWAIT`): an answer the
//! socket cannot take whole (a client that does not read, a full buffer) goes back, the part
//! not sent, to the connection's thread, which writes it within the connection's write
//! timeout. The connection's thread and the loop race for one claim, so that exactly one of
//! them answers:
//! the loop with the VMM's answer, or the thread with 503 when the VMM does not answer in
//! time or drops the request.

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use super::encode::write_answer;
use super::{ApiResponse, RequestError};

/// Where the VMM sends its answer to one request: [`Responder::send`] takes it, so a request
/// is answered once. Dropping it unanswered makes the client get 503.
#[derive(Debug)]
pub struct Responder(Route);

#[derive(Debug)]
enum Route {
    /// An in-process channel (tests, the fuzz rig, embedders).
    Channel(mpsc::Sender<ApiResponse>),
    /// The client's socket, written by whoever holds the responder.
    Socket(SocketAnswer),
}

/// What became of an answer written to the client's socket, for the connection's thread.
#[derive(Debug)]
pub(super) struct Written {
    /// The answer's HTTP status.
    pub status: u16,
    /// When the event loop took the request from the channel, if it said so.
    pub taken: Option<Instant>,
    /// How far the answer got.
    pub delivery: Delivery,
}

/// How far an answer written by the event loop got.
#[derive(Debug)]
pub(super) enum Delivery {
    /// All of it went out; the last byte at this instant.
    Sent(Instant),
    /// The socket took only part of it: these bytes are for the connection's thread to send.
    Rest(Vec<u8>),
    /// Writing failed (the client has gone): the connection ends.
    Failed,
}

#[derive(Debug)]
struct SocketAnswer {
    writer: UnixStream,
    keep_alive: bool,
    endpoint: &'static str,
    claim: Arc<AtomicBool>,
    written: mpsc::Sender<Written>,
    taken: Option<Instant>,
}

impl Responder {
    /// A responder for a request read from `writer`'s connection. `claim` is shared with the
    /// connection's thread (whoever sets it first answers); `written` tells that thread what
    /// became of the answer.
    pub(super) fn socket(
        writer: UnixStream,
        keep_alive: bool,
        endpoint: &'static str,
        claim: Arc<AtomicBool>,
        written: mpsc::Sender<Written>,
    ) -> Self {
        Responder(Route::Socket(SocketAnswer {
            writer,
            keep_alive,
            endpoint,
            claim,
            written,
            taken: None,
        }))
    }

    /// The event loop has taken the request from the channel: the time from the request's
    /// arrival to this is the wait for the loop, logged with the answer (`queued_us`).
    pub fn note_taken(&mut self) {
        if let Route::Socket(answer) = &mut self.0 {
            answer.taken = Some(Instant::now());
        }
    }

    /// Answers the request. `false` when the answer could not be given: the client has gone,
    /// or the server answered before (503, the VMM being too late).
    pub fn send(self, response: ApiResponse) -> bool {
        match &self.0 {
            Route::Channel(sender) => sender.send(response).is_ok(),
            Route::Socket(answer) => answer.send(response),
        }
    }
}

impl From<mpsc::Sender<ApiResponse>> for Responder {
    fn from(sender: mpsc::Sender<ApiResponse>) -> Self {
        Responder(Route::Channel(sender))
    }
}

impl SocketAnswer {
    fn send(&self, response: ApiResponse) -> bool {
        if self.claim.swap(true, Ordering::SeqCst) {
            return false;
        }
        let response = if (200..=599).contains(&response.status) {
            response
        } else {
            RequestError::HostFailure(format!(
                "The VMM answered {} with invalid status {}.",
                self.endpoint, response.status
            ))
            .into()
        };
        let status = response.status;
        let mut message = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = write_answer(&mut message, &response, None, self.keep_alive);
        let delivery = match write_without_waiting(&self.writer, &message) {
            Ok(sent) if sent == message.len() => Delivery::Sent(Instant::now()),
            Ok(sent) => Delivery::Rest(message.get(sent..).unwrap_or_default().to_vec()),
            Err(e) => {
                tracing::debug!("the answer to {} could not be written: {e}", self.endpoint);
                Delivery::Failed
            }
        };
        let delivered = !matches!(delivery, Delivery::Failed);
        // The connection's thread waits for this; if it has gone, so has the connection.
        let _ = self.written.send(Written {
            status,
            taken: self.taken,
            delivery,
        });
        delivered
    }
}

/// Writes as much of `bytes` as the socket takes now; how much that was.
///
/// `send(2)` with `MSG_DONTWAIT`: the socket itself stays blocking for the connection's thread,
/// which shares it (no flag to turn on and off: two system calls fewer on the loop, and no
/// window in which the thread could see a non-blocking socket), and `MSG_NOSIGNAL`: a client
/// that has gone is an `EPIPE` here, whatever the process does with `SIGPIPE`.
fn write_without_waiting(writer: &UnixStream, bytes: &[u8]) -> std::io::Result<usize> {
    let socket = socket2::SockRef::from(writer);
    let mut sent = 0;
    while sent < bytes.len() {
        match socket.send_with_flags(
            bytes.get(sent..).unwrap_or_default(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        ) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().expect("socketpair")
    }

    fn responder(
        server: &UnixStream,
        keep_alive: bool,
    ) -> (Responder, Arc<AtomicBool>, mpsc::Receiver<Written>) {
        let claim = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let r = Responder::socket(
            server.try_clone().expect("clone"),
            keep_alive,
            "vm.add-vcpu",
            Arc::clone(&claim),
            tx,
        );
        (r, claim, rx)
    }

    fn read_available(client: &UnixStream) -> Vec<u8> {
        client.set_nonblocking(true).expect("nonblocking");
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match (&*client).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        out
    }

    #[test]
    fn the_answer_is_on_the_socket_when_send_returns() {
        let (server, client) = pair();
        let (r, claim, written) = responder(&server, true);
        assert!(r.send(ApiResponse::ok(serde_json::json!({"id": 7}))));
        // Nobody else wrote: the bytes were on the client's side before send returned.
        let text = String::from_utf8(read_available(&client)).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 200 \r\n"), "{text}");
        assert!(!text.contains("Connection: close"), "{text}");
        assert!(text.ends_with("{\"id\":7}"), "{text}");
        assert!(claim.load(Ordering::SeqCst));
        match written.try_recv() {
            Ok(Written {
                status: 200,
                delivery: Delivery::Sent(_),
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // Still blocking for the connection's thread.
        server
            .set_read_timeout(Some(Duration::from_millis(10)))
            .expect("timeout");
        let e = (&server).read(&mut [0u8; 1]).expect_err("nothing to read");
        assert!(matches!(
            e.kind(),
            ErrorKind::WouldBlock | ErrorKind::TimedOut
        ));
    }

    #[test]
    fn a_closing_answer_says_so_and_reports_when_the_loop_took_it() {
        let (server, client) = pair();
        let (mut r, _claim, written) = responder(&server, false);
        r.note_taken();
        assert!(r.send(ApiResponse::no_content()));
        let text = String::from_utf8(read_available(&client)).expect("utf-8");
        assert_eq!(
            text,
            "HTTP/1.1 204 \r\nServer: plugvm\r\nConnection: close\r\n\r\n"
        );
        match written.try_recv() {
            Ok(Written {
                status: 204,
                taken: Some(taken),
                delivery: Delivery::Sent(at),
            }) => assert!(taken <= at),
            other => panic!("{other:?}"),
        }
        assert!(written.try_recv().is_err());
    }

    #[test]
    fn an_answer_claimed_by_the_server_is_not_written() {
        let (server, client) = pair();
        let (r, claim, written) = responder(&server, true);
        claim.store(true, Ordering::SeqCst);
        assert!(!r.send(ApiResponse::no_content()));
        assert!(read_available(&client).is_empty());
        assert!(written.try_recv().is_err());
    }

    #[test]
    fn a_full_socket_hands_the_rest_back_without_waiting() {
        let (server, client) = pair();
        // Fill the socket's buffer: the client reads nothing.
        server.set_nonblocking(true).expect("nonblocking");
        let junk = vec![b'x'; 65536];
        let mut filled = 0usize;
        while let Ok(n) = (&server).write(&junk) {
            filled += n;
        }
        server.set_nonblocking(false).expect("blocking");
        let (r, _claim, written) = responder(&server, true);
        let big = "y".repeat(4096);
        assert!(r.send(ApiResponse::ok(serde_json::json!({ "big": big }))));
        let rest = match written.try_recv() {
            Ok(Written {
                status: 200,
                delivery: Delivery::Rest(rest),
                ..
            }) => rest,
            other => panic!("{other:?}"),
        };
        assert!(rest.ends_with(format!("{big}\"}}").as_bytes()));
        // The junk and whatever part of the answer went out, then the rest, make one answer.
        let mut got = read_available(&client);
        assert!(got.len() >= filled);
        got.drain(..filled);
        got.extend_from_slice(&rest);
        let text = String::from_utf8(got).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 200 \r\n"), "{}", &text[..40]);
        drop(client);
    }

    #[test]
    fn a_closed_client_is_a_failed_answer() {
        let (server, client) = pair();
        drop(client);
        let (r, _claim, written) = responder(&server, true);
        assert!(!r.send(ApiResponse::no_content()));
        assert!(matches!(
            written.try_recv(),
            Ok(Written {
                status: 204,
                delivery: Delivery::Failed,
                ..
            })
        ));
    }

    #[test]
    fn an_invalid_status_is_answered_as_the_hosts_failure() {
        let (server, client) = pair();
        let (r, _claim, _written) = responder(&server, false);
        let mut bad = ApiResponse::no_content();
        bad.status = 99;
        assert!(r.send(bad));
        let text = String::from_utf8(read_available(&client)).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 500 \r\n"), "{text}");
        assert!(text.contains("invalid status 99"), "{text}");
    }

    #[test]
    fn a_channel_responder_sends_on_its_channel() {
        let (tx, rx) = mpsc::channel();
        assert!(Responder::from(tx.clone()).send(ApiResponse::no_content()));
        assert_eq!(rx.try_recv().ok(), Some(ApiResponse::no_content()));
        drop(rx);
        assert!(!Responder::from(tx).send(ApiResponse::no_content()));
    }
}
