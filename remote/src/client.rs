//! A tiny blocking HTTP/1.1 client over a Unix socket (used by `plugvm-remote`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::wire::TOO_MANY_CONNECTIONS;

/// Largest response head the client reads, in bytes.
const MAX_HEAD_BYTES: u64 = 16 * 1024;
/// Largest response body the client reads, in bytes.
const MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;
/// How often [`request`] sends a request again that the server refused for want of a free
/// connection, and how long it waits before the first retry (doubled after each).
const BUSY_RETRIES: u32 = 5;
const BUSY_BACKOFF: Duration = Duration::from_millis(50);

/// A response: status code and raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body bytes (empty if none).
    pub body: Vec<u8>,
}

/// Errors of [`request`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {}: {message}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS's description of the failure.
        message: String,
    },
    /// Writing the request failed.
    #[error("cannot send the request: {0}")]
    Send(String),
    /// Reading the response failed or timed out.
    #[error("cannot read the response: {0}")]
    Receive(String),
    /// The server's answer is not valid HTTP.
    #[error("malformed response from the server: {0}")]
    Malformed(&'static str),
}

/// Describes an I/O error without Rust's " (os error N)" suffix.
pub fn describe(e: &io::Error) -> String {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        return "timed out".to_string();
    }
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// A fresh connection to `socket`, each read and write bounded by `timeout`.
fn connect(socket: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|e| ClientError::Connect {
        path: socket.to_path_buf(),
        message: describe(&e),
    })?;
    let timeouts = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)));
    timeouts.map_err(|e| ClientError::Send(describe(&e)))?;
    Ok(stream)
}

/// Sends one request on a fresh connection and reads the response.
///
/// `timeout` bounds each read and write. A 503 that refuses the connection because the
/// server has no free one ([`TOO_MANY_CONNECTIONS`]: the request was not taken) is retried a
/// few times, 50 ms after the first, then twice as long each time (1.55 s in all at the
/// most), while that stays within `timeout`; the last answer is returned.
pub fn request(
    socket: &Path,
    method: &str,
    target: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let started = Instant::now();
    let mut backoff = BUSY_BACKOFF;
    let mut retries = 0;
    loop {
        let response = request_once(socket, method, target, body, timeout)?;
        if retries == BUSY_RETRIES || !is_busy(&response) || started.elapsed() + backoff > timeout {
            return Ok(response);
        }
        std::thread::sleep(backoff);
        backoff *= 2;
        retries += 1;
    }
}

/// Whether `response` refuses the connection for want of a free one: nothing was done.
fn is_busy(response: &Response) -> bool {
    response.status == 503
        && serde_json::from_slice::<serde_json::Value>(&response.body)
            .is_ok_and(|body| body["error"] == TOO_MANY_CONNECTIONS)
}

fn request_once(
    socket: &Path,
    method: &str,
    target: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let stream = connect(socket, timeout)?;
    let mut message = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if let Some(body) = body {
        message.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    message.push_str("\r\n");
    let mut bytes = message.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    match (&stream).write_all(&bytes) {
        Ok(()) => read_response(&mut BufReader::new(stream)),
        // A server that refuses the connection at once answers and closes it, maybe before
        // the request is written: its answer is still there to read.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            read_response(&mut BufReader::new(stream)).map_err(|_| ClientError::Send(describe(&e)))
        }
        Err(e) => Err(ClientError::Send(describe(&e))),
    }
}

fn read_line<R: BufRead>(reader: &mut R, budget: &mut u64) -> Result<String, ClientError> {
    let mut line = Vec::new();
    let mut limited = reader.by_ref().take(*budget);
    limited
        .read_until(b'\n', &mut line)
        .map_err(|e| ClientError::Receive(describe(&e)))?;
    *budget = limited.limit();
    if line.last() != Some(&b'\n') {
        return Err(if *budget == 0 {
            ClientError::Malformed("the response head is too long")
        } else {
            ClientError::Receive("the server closed the connection".to_string())
        });
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// A response's status line and the headers the client acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Length`, if given.
    pub length: Option<u64>,
    /// `Content-Type`, if given (as sent, parameters included).
    pub content_type: Option<String>,
}

/// Reads a response head, skipping interim 1xx responses: the status line and the headers,
/// up to the blank line, at most `MAX_HEAD_BYTES` in all.
pub fn read_head<R: BufRead>(reader: &mut R) -> Result<Head, ClientError> {
    let mut budget = MAX_HEAD_BYTES;
    loop {
        let status_line = read_line(reader, &mut budget)?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status = parts.next().and_then(|s| s.parse::<u16>().ok());
        let Some(status) =
            status.filter(|s| (100..=599).contains(s) && version.starts_with("HTTP/1."))
        else {
            return Err(ClientError::Malformed("bad status line"));
        };
        let mut head = Head {
            status,
            length: None,
            content_type: None,
        };
        loop {
            let line = read_line(reader, &mut budget)?;
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    let parsed = value.trim().parse::<u64>();
                    head.length =
                        Some(parsed.map_err(|_| ClientError::Malformed("bad Content-Length"))?);
                } else if name.eq_ignore_ascii_case("content-type") {
                    head.content_type = Some(value.trim().to_string());
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(ClientError::Malformed("unsupported Transfer-Encoding"));
                }
            }
        }
        if status >= 200 {
            return Ok(head);
        }
    }
}

/// Reads the body that follows `head`: `Content-Length` bytes, or everything up to the
/// close when there is no length; at most `MAX_BODY_BYTES` either way.
pub fn read_body<R: BufRead>(reader: &mut R, head: &Head) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    match head.length {
        _ if head.status == 204 || head.status == 304 => {}
        Some(len) if len > MAX_BODY_BYTES => {
            return Err(ClientError::Malformed("the body is too large"))
        }
        Some(len) => {
            reader
                .take(len)
                .read_to_end(&mut body)
                .map_err(|e| ClientError::Receive(describe(&e)))?;
            if body.len() as u64 != len {
                return Err(ClientError::Receive("the body was cut short".to_string()));
            }
        }
        None => {
            reader
                .take(MAX_BODY_BYTES + 1)
                .read_to_end(&mut body)
                .map_err(|e| ClientError::Receive(describe(&e)))?;
            if body.len() as u64 > MAX_BODY_BYTES {
                return Err(ClientError::Malformed("the body is too large"));
            }
        }
    }
    Ok(body)
}

/// Reads one response, skipping interim 1xx responses.
///
/// Public for callers that drive a connection themselves, such as the
/// server's tests of keep-alive and `Expect: 100-continue`.
pub fn read_response<R: BufRead>(reader: &mut R) -> Result<Response, ClientError> {
    let head = read_head(reader)?;
    let body = read_body(reader, &head)?;
    Ok(Response {
        status: head.status,
        body,
    })
}

/// Longest line of an event stream the client accepts, in bytes. The VMM's longest events
/// (a transaction's `ended`, with every device's outcome) are a few kilobytes; the bound only
/// keeps a broken or hostile server from growing the client's memory without limit.
pub const MAX_EVENT_LINE_BYTES: usize = 1024 * 1024;

/// One Server-Sent Event, as dispatched by a blank line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event's own `id:` line, if it had one.
    pub id: Option<String>,
    /// The `event:` line, `message` when there is none (the SSE default).
    pub event: String,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

/// The Server-Sent Events line grammar (the WHATWG HTML standard's "event stream
/// interpretation"): fed one line at a time (without its end of line), it gives an event at
/// each blank line that ends one with data. Comments (`:` lines) and unknown fields are
/// ignored, as are `retry:` lines (the client does not reconnect).
#[derive(Debug, Default)]
pub struct SseParser {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// A parser between events.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one line; returns the event it completes, if any.
    pub fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let id = self.id.take();
            let event = self.event.take();
            // An event without data is not dispatched (the standard's rule).
            let data = self.data.take()?;
            return Some(SseEvent {
                id,
                event: event.unwrap_or_else(|| "message".to_string()),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event = Some(value.to_string()),
            // An id with a NUL is ignored (the standard's rule).
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

/// What [`EventStream::next_event`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// An event.
    Event(SseEvent),
    /// A read timed out before an event was complete; what was read so far is kept, and the
    /// next call goes on from there. [`EventStream::silent_for`] says how long nothing came.
    TimedOut,
    /// The server closed the stream.
    End,
}

/// The client's end of `GET /api/v1/events`: reads the stream line by line as it arrives,
/// each line bounded by [`MAX_EVENT_LINE_BYTES`], and gives its events one at a time.
#[derive(Debug)]
pub struct EventStream<R> {
    reader: R,
    line: Vec<u8>,
    parser: SseParser,
    last_byte: std::time::Instant,
}

impl<R: BufRead> EventStream<R> {
    /// Reads the stream from `reader`, positioned after the response head.
    pub fn new(reader: R) -> Self {
        EventStream {
            reader,
            line: Vec::new(),
            parser: SseParser::new(),
            last_byte: std::time::Instant::now(),
        }
    }

    /// How long since the server last sent anything (an event or a keep-alive comment).
    pub fn silent_for(&self) -> Duration {
        self.last_byte.elapsed()
    }

    /// The next event, [`Next::TimedOut`] when a read timed out first, or [`Next::End`] once
    /// the server closed the connection (a last event without its blank line is dropped, as
    /// the standard says).
    pub fn next_event(&mut self) -> Result<Next, ClientError> {
        loop {
            let room = MAX_EVENT_LINE_BYTES.saturating_sub(self.line.len()) as u64 + 1;
            let before = self.line.len();
            // `read_until` keeps what it read before an error in `line`: a timeout loses
            // nothing, and the next call completes the line.
            let result = self
                .reader
                .by_ref()
                .take(room)
                .read_until(b'\n', &mut self.line);
            if self.line.len() > before {
                self.last_byte = std::time::Instant::now();
            }
            match result {
                Ok(0) => return Ok(Next::End),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Next::TimedOut)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::Receive(describe(&e))),
            }
            if self.line.last() != Some(&b'\n') {
                if self.line.len() > MAX_EVENT_LINE_BYTES {
                    return Err(ClientError::Malformed("an event line is too long"));
                }
                // The server closed the connection in the middle of a line.
                return Ok(Next::End);
            }
            self.line.pop();
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let text = String::from_utf8_lossy(&self.line).into_owned();
            self.line.clear();
            if let Some(event) = self.parser.line(&text) {
                return Ok(Next::Event(event));
            }
        }
    }
}

impl EventStream<BufReader<UnixStream>> {
    /// Changes how long a read waits on the connection before [`Next::TimedOut`].
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.reader.get_ref().set_read_timeout(Some(timeout))
    }
}

/// How `GET /api/v1/events` was answered: the stream, or an error response (the VMM refused
/// it: no event stream, a bad `since`).
#[derive(Debug)]
pub enum Opened {
    /// A 200 `text/event-stream` answer: read events from it.
    Stream(EventStream<BufReader<UnixStream>>),
    /// Any other answer, read whole.
    Refused(Response),
}

/// Connects to `socket` and asks for the event stream from after event `since` (from the next
/// event when `None`). `timeout` bounds the connection's every read and write, also while
/// streaming: a read that times out gives [`Next::TimedOut`].
pub fn open_events(
    socket: &Path,
    since: Option<u64>,
    timeout: Duration,
) -> Result<Opened, ClientError> {
    let stream = connect(socket, timeout)?;
    let query = since.map(|id| format!("?since={id}")).unwrap_or_default();
    let message = format!(
        "GET {}/events{query} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
        crate::wire::API_PREFIX
    );
    (&stream)
        .write_all(message.as_bytes())
        .map_err(|e| ClientError::Send(describe(&e)))?;
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader)?;
    let is_stream = head
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("text/event-stream"));
    if head.status == 200 && is_stream {
        return Ok(Opened::Stream(EventStream::new(reader)));
    }
    let body = read_body(&mut reader, &head)?;
    Ok(Opened::Refused(Response {
        status: head.status,
        body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Response, ClientError> {
        read_response(&mut io::Cursor::new(raw.as_bytes().to_vec()))
    }

    #[test]
    fn api_client_reads_responses() {
        let r =
            parse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse("HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert!(r.body.is_empty());
        let r = parse("HTTP/1.0 404 Not Found\r\n\r\n{\"error\":\"x\"}").unwrap();
        assert_eq!(r.body, b"{\"error\":\"x\"}");
    }

    #[test]
    fn api_client_rejects_bad_responses() {
        assert!(matches!(
            parse("garbage\r\n\r\n"),
            Err(ClientError::Malformed(_))
        ));
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(ClientError::Malformed(_))
        ));
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}"),
            Err(ClientError::Receive(_))
        ));
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\n"),
            Err(ClientError::Receive(_))
        ));
    }

    fn feed(lines: &[&str]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        lines.iter().filter_map(|l| parser.line(l)).collect()
    }

    #[test]
    fn sse_lines_make_events() {
        let events = feed(&[
            ": keep-alive",
            "",
            "id: 7",
            "event: phase",
            "data: {\"a\":1}",
            "",
            "data:first",
            "data:  second",
            "retry: 10",
            "unknown: x",
            "",
            "event: dropped",
            "",
            "id: 8",
            "data",
            "",
        ]);
        assert_eq!(
            events,
            [
                SseEvent {
                    id: Some("7".into()),
                    event: "phase".into(),
                    data: "{\"a\":1}".into()
                },
                // One space after the colon is the separator; more is the value's.
                SseEvent {
                    id: None,
                    event: "message".into(),
                    data: "first\n second".into()
                },
                // The event without data was not dispatched, and its name did not leak into
                // the next one.
                SseEvent {
                    id: Some("8".into()),
                    event: "message".into(),
                    data: String::new()
                },
            ]
        );
    }

    /// A reader that hands out `chunks` one read at a time, a timeout between each.
    struct Trickle {
        chunks: Vec<&'static [u8]>,
        timeout_next: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if std::mem::replace(&mut self.timeout_next, false) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.timeout_next = true;
            if self.chunks.is_empty() {
                return Ok(0);
            }
            let chunk = self.chunks.remove(0);
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.chunks.insert(0, &chunk[n..]);
            }
            Ok(n)
        }
    }

    #[test]
    fn the_event_stream_survives_timeouts_mid_line_and_crlf() {
        let reader = Trickle {
            chunks: vec![
                b"id: 1\r\nevent: ph",
                b"ase\r\ndata: {}",
                b"\r\n\r\n",
                b"data: cut",
            ],
            timeout_next: false,
        };
        let mut stream = EventStream::new(BufReader::new(reader));
        let mut got = Vec::new();
        loop {
            match stream.next_event().unwrap() {
                Next::Event(e) => got.push(e),
                Next::TimedOut => got.push(SseEvent {
                    id: None,
                    event: "(timeout)".into(),
                    data: String::new(),
                }),
                Next::End => break,
            }
        }
        let names: Vec<&str> = got.iter().map(|e| e.event.as_str()).collect();
        // Each read is followed by a timeout: in "event: ph|ase", in "data: {}|", after the
        // event, in "data: cut" (dropped at the end: no blank line completed it).
        assert_eq!(
            names,
            ["(timeout)", "(timeout)", "phase", "(timeout)", "(timeout)"]
        );
        assert_eq!(got[2].data, "{}");
        assert_eq!(got[2].id.as_deref(), Some("1"));
        assert!(stream.silent_for() < Duration::from_secs(5));
    }

    #[test]
    fn an_endless_event_line_is_refused() {
        let mut text = b"data: ".to_vec();
        text.resize(MAX_EVENT_LINE_BYTES + 10, b'x');
        let mut stream = EventStream::new(io::Cursor::new(text));
        assert!(matches!(
            stream.next_event(),
            Err(ClientError::Malformed("an event line is too long"))
        ));
        // A line of exactly the limit is fine.
        let mut text = b"data: ".to_vec();
        text.resize(MAX_EVENT_LINE_BYTES, b'x');
        text.extend_from_slice(b"\n\n");
        let mut stream = EventStream::new(io::Cursor::new(text));
        assert!(matches!(stream.next_event(), Ok(Next::Event(_))));
        assert!(matches!(stream.next_event(), Ok(Next::End)));
    }

    #[test]
    fn heads_name_their_content_type() {
        let head = read_head(&mut io::Cursor::new(
            b"HTTP/1.1 200 \r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ))
        .unwrap();
        assert_eq!(
            head,
            Head {
                status: 200,
                length: None,
                content_type: Some("text/event-stream".into())
            }
        );
    }

    /// How [`FakeServer`] answers one connection.
    #[derive(Clone, Copy)]
    enum Answer {
        /// Reads the request head, then answers this status and error message.
        After(u16, &'static str),
        /// Answers 503 [`TOO_MANY_CONNECTIONS`] without reading anything, and shuts its
        /// reading side, so that the client's request cannot be written.
        BusyAtOnce,
    }

    /// A server on a fresh socket that answers each connection with the next of its answers
    /// (the last one over and over), and counts the connections.
    struct FakeServer {
        dir: PathBuf,
        path: PathBuf,
        done: std::sync::Arc<std::sync::atomic::AtomicBool>,
        thread: Option<std::thread::JoinHandle<usize>>,
    }

    impl FakeServer {
        fn start(answers: Vec<Answer>) -> FakeServer {
            use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "plugvm-remote-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("api.sock");
            let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
            listener.set_nonblocking(true).unwrap();
            let done = std::sync::Arc::new(AtomicBool::new(false));
            let stop = done.clone();
            let thread = std::thread::spawn(move || {
                let mut served = 0;
                while !stop.load(Ordering::SeqCst) {
                    let Ok((stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    };
                    stream.set_nonblocking(false).unwrap();
                    let answer = answers[served.min(answers.len() - 1)];
                    served += 1;
                    let (status, message) = match answer {
                        Answer::After(status, message) => {
                            let mut reader = BufReader::new(&stream);
                            let mut line = String::new();
                            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                                line.clear();
                            }
                            (status, message)
                        }
                        Answer::BusyAtOnce => {
                            let _ = stream.shutdown(std::net::Shutdown::Read);
                            (503, TOO_MANY_CONNECTIONS)
                        }
                    };
                    let body = serde_json::json!({ "error": message }).to_string();
                    let _ = (&stream).write_all(
                        format!(
                            "HTTP/1.1 {status} \r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                }
                served
            });
            FakeServer {
                dir,
                path,
                done,
                thread: Some(thread),
            }
        }

        /// [`request`] to this server: the status it ends with.
        fn status_of(&self, method: &str, body: Option<&[u8]>, timeout: Duration) -> u16 {
            request(&self.path, method, "/api/v1/x", body, timeout)
                .unwrap()
                .status
        }

        /// Stops the server; returns how many connections it served.
        fn connections(mut self) -> usize {
            self.done.store(true, std::sync::atomic::Ordering::SeqCst);
            self.thread.take().unwrap().join().unwrap()
        }
    }

    impl Drop for FakeServer {
        fn drop(&mut self) {
            self.done.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const BUSY: Answer = Answer::After(503, TOO_MANY_CONNECTIONS);

    #[test]
    fn api_client_retries_a_server_with_no_free_connection() {
        let server = FakeServer::start(vec![BUSY, Answer::BusyAtOnce, Answer::After(200, "")]);
        let started = Instant::now();
        // A body larger than the socket's buffer: the server that refuses at once closes the
        // connection before the request is written.
        let body = vec![b' '; 4 << 20];
        assert_eq!(
            server.status_of("PUT", Some(&body), Duration::from_secs(10)),
            200
        );
        assert!(
            started.elapsed() >= BUSY_BACKOFF * 3,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(server.connections(), 3);
    }

    #[test]
    fn api_client_retries_a_busy_server_a_few_times_within_its_timeout() {
        let server = FakeServer::start(vec![BUSY]);
        let started = Instant::now();
        assert_eq!(server.status_of("GET", None, Duration::from_secs(10)), 503);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(server.connections(), 1 + BUSY_RETRIES as usize);
        // A short timeout leaves room for fewer: 50 ms and 100 ms fit in 300 ms, 200 ms more
        // would not.
        let server = FakeServer::start(vec![BUSY]);
        assert_eq!(
            server.status_of("GET", None, Duration::from_millis(300)),
            503
        );
        assert_eq!(server.connections(), 3);
    }

    #[test]
    fn api_client_does_not_retry_other_503s() {
        // The VMM may still be doing what it did not answer in time: never sent again.
        let server = FakeServer::start(vec![
            Answer::After(503, "The VMM did not answer vm.add-vcpu within 120 s."),
            Answer::After(200, ""),
        ]);
        assert_eq!(server.status_of("PUT", None, Duration::from_secs(10)), 503);
        assert_eq!(server.connections(), 1);
    }

    #[test]
    fn api_client_reports_a_missing_socket_in_one_line() {
        let err = request(
            Path::new("/nonexistent/plugvm.sock"),
            "GET",
            "/",
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot connect to /nonexistent/plugvm.sock: No such file or directory"
        );
    }
}
