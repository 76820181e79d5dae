//! A deliberately small HTTP/1.1 reader and writer with hard limits.
//!
//! Only what a local JSON API needs: origin-form targets, `Content-Length`
//! bodies (no transfer codings), `Expect: 100-continue`, keep-alive. Every
//! read is bounded in size; the caller bounds it in time with [`DeadlineReader`].

use std::io::{self, BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::RequestError;

/// Largest request line plus headers, in bytes; more gets 431.
pub(crate) const MAX_HEAD_BYTES: u64 = 8 * 1024;
/// Most header fields in one request; more gets 431.
pub(crate) const MAX_HEADERS: usize = 64;
/// Most empty lines ignored before a request line (RFC 9112 2.2 asks for at least one, for
/// clients that end a body with a stray CRLF); more gets 400. They count against
/// [`MAX_HEAD_BYTES`] too.
pub(crate) const MAX_LEADING_EMPTY_LINES: usize = 8;

/// The parsed request line and the headers that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestHead {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Declared body length (0 without `Content-Length`).
    pub content_length: u64,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The connection may serve another request after this one.
    pub keep_alive: bool,
    /// `Last-Event-ID`: where an event-stream client resumes.
    pub last_event_id: Option<u64>,
}

/// Why a request head could not be read. Each one ends the connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// The client closed the connection (or went silent) before sending a byte.
    Idle,
    /// The connection failed or closed mid-request: nothing can be answered.
    Broken,
    /// The request timed out after it began: 408.
    Timeout,
    /// An answerable protocol error.
    Reject(RequestError),
}

fn reject(cause: fn(String) -> RequestError, message: impl Into<String>) -> HeadError {
    HeadError::Reject(cause(message.into()))
}

/// Maps an I/O error while reading a started request.
fn started_error(e: &io::Error) -> HeadError {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => HeadError::Timeout,
        _ => HeadError::Broken,
    }
}

/// A `Read` over a Unix stream that fails with `TimedOut` once `deadline` passes.
pub(crate) struct DeadlineReader {
    stream: UnixStream,
    deadline: Instant,
}

impl DeadlineReader {
    pub(crate) fn new(stream: UnixStream) -> Self {
        DeadlineReader {
            stream,
            deadline: Instant::now(),
        }
    }

    /// Gives the next reads `timeout` from now, in total.
    pub(crate) fn set_budget(&mut self, timeout: Duration) {
        self.deadline = Instant::now() + timeout;
    }
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        match self.stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::ErrorKind::TimedOut.into()),
            other => other,
        }
    }
}

fn head_too_large() -> HeadError {
    reject(
        RequestError::HeadTooLarge,
        format!("Request line and headers exceed {MAX_HEAD_BYTES} bytes."),
    )
}

/// Reads one CRLF- (or LF-) terminated line within `budget` bytes.
/// `Ok(None)` means a clean end of stream before any byte.
fn read_line<R: BufRead>(reader: &mut R, budget: &mut u64) -> Result<Option<String>, HeadError> {
    // A head still wanting a line with nothing left of the budget is over the limit. Reading
    // on would read nothing, which looks like the end of the stream: a head that fills the
    // budget exactly at a line's end was once dropped unanswered.
    if *budget == 0 {
        return Err(head_too_large());
    }
    let mut line = Vec::new();
    let mut limited = reader.by_ref().take(*budget);
    let read = limited.read_until(b'\n', &mut line);
    *budget = limited.limit();
    match read {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(started_error(&e)),
    }
    if line.last() != Some(&b'\n') {
        return Err(if *budget == 0 {
            head_too_large()
        } else {
            HeadError::Broken
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if !line.is_ascii() {
        return Err(reject(
            RequestError::MalformedRequest,
            "Request line and headers must be ASCII text.",
        ));
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Waits for the first byte of a request: silence there is not an error. A timeout or close
/// before it is [`HeadError::Idle`], so idle kept-alive connections end quietly.
pub(crate) fn await_request<R: BufRead>(reader: &mut R) -> Result<(), HeadError> {
    match reader.fill_buf() {
        Ok([]) => Err(HeadError::Idle),
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            Err(HeadError::Idle)
        }
        Err(_) => Err(HeadError::Broken),
    }
}

/// Reads a request line and headers, after [`await_request`] (which it calls: a buffered
/// first byte makes that call return at once).
pub(crate) fn read_head<R: BufRead>(reader: &mut R) -> Result<RequestHead, HeadError> {
    let mut budget = MAX_HEAD_BYTES;
    await_request(reader)?;
    // RFC 9112 2.2: ignore a few empty lines before the request line.
    let mut empty_lines = 0;
    let request_line = loop {
        match read_line(reader, &mut budget)? {
            None => return Err(HeadError::Broken),
            Some(line) if line.is_empty() => {
                empty_lines += 1;
                if empty_lines > MAX_LEADING_EMPTY_LINES {
                    return Err(reject(RequestError::MalformedRequest,
                        format!(
                            "More than {MAX_LEADING_EMPTY_LINES} empty lines before the request line."
                        ),
                    ));
                }
            }
            Some(line) => break line,
        }
    };
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(reject(
            RequestError::MalformedRequest,
            "Malformed request line; expected `METHOD /path HTTP/1.1`.",
        ));
    };
    if !is_token(method) || !target.starts_with('/') {
        return Err(reject(
            RequestError::MalformedRequest,
            "Malformed request line; expected `METHOD /path HTTP/1.1`.",
        ));
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if matches!(v.as_bytes(), [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit()) =>
        {
            return Err(reject(
                RequestError::UnsupportedHttpVersion,
                "Only HTTP/1.0 and HTTP/1.1 are supported.",
            ))
        }
        _ => {
            return Err(reject(
                RequestError::MalformedRequest,
                "Malformed request line; expected `METHOD /path HTTP/1.1`.",
            ))
        }
    };
    let mut head = RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        content_length: 0,
        expect_continue: false,
        keep_alive: http11,
        last_event_id: None,
    };
    let mut content_length: Option<u64> = None;
    let mut count = 0;
    loop {
        let Some(line) = read_line(reader, &mut budget)? else {
            return Err(HeadError::Broken);
        };
        if line.is_empty() {
            break;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(reject(
                RequestError::HeadTooLarge,
                format!("More than {MAX_HEADERS} header fields."),
            ));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(reject(
                RequestError::MalformedRequest,
                "Malformed header line; expected `Name: value`.",
            ));
        };
        if !is_token(name) {
            return Err(reject(
                RequestError::MalformedRequest,
                "Malformed header name.",
            ));
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let parsed = value
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| value.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| {
                        reject(
                            RequestError::MalformedRequest,
                            "Content-Length must be a non-negative integer.",
                        )
                    })?;
                if content_length.is_some_and(|old| old != parsed) {
                    return Err(reject(
                        RequestError::MalformedRequest,
                        "Conflicting Content-Length headers.",
                    ));
                }
                content_length = Some(parsed);
            }
            "transfer-encoding" => {
                return Err(reject(
                    RequestError::UnsupportedTransferCoding,
                    "Transfer-Encoding is not supported; send Content-Length.",
                ))
            }
            "last-event-id" => head.last_event_id = value.trim().parse().ok(),
            "connection" => {
                for option in value.split(',').map(|o| o.trim().to_ascii_lowercase()) {
                    match option.as_str() {
                        "close" => head.keep_alive = false,
                        "keep-alive" => head.keep_alive = true,
                        _ => {}
                    }
                }
            }
            "expect" if value.eq_ignore_ascii_case("100-continue") => head.expect_continue = true,
            "expect" => {
                return Err(reject(
                    RequestError::UnsupportedExpectation,
                    "Only `Expect: 100-continue` is supported.",
                ))
            }
            _ => {}
        }
    }
    head.content_length = content_length.unwrap_or(0);
    Ok(head)
}

/// Reads exactly `len` body bytes (the caller has checked `len` against its limit).
pub(crate) fn read_body<R: Read>(reader: &mut R, len: usize) -> Result<Vec<u8>, HeadError> {
    let mut body = vec![0; len];
    reader
        .read_exact(&mut body)
        .map_err(|e| started_error(&e))?;
    Ok(body)
}

/// Writes a whole response. `body` is JSON; `None` writes no body (204).
/// The JSON content type, of every body but `GET /metrics`'.
pub(crate) const JSON: &str = "application/json";

/// Writes one response; `body` is the content type and the bytes.
pub(crate) fn write_response<W: Write>(
    out: &mut W,
    status: u16,
    body: Option<(&str, &[u8])>,
    allow: Option<&str>,
    keep_alive: bool,
) -> io::Result<()> {
    // An empty reason phrase, as Cloud Hypervisor writes it: its client (ch-remote) takes
    // everything between "HTTP/1.1 " and the CR as the status code.
    let mut head = format!("HTTP/1.1 {status} \r\nServer: plugvm\r\n");
    if let Some(allow) = allow {
        head.push_str(&format!("Allow: {allow}\r\n"));
    }
    if let Some((content_type, body)) = body {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    } else if status != 204 {
        head.push_str("Content-Length: 0\r\n");
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(body.map(|(_, bytes)| bytes).unwrap_or_default());
    out.write_all(&message)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<RequestHead, HeadError> {
        read_head(&mut io::Cursor::new(raw.as_bytes().to_vec()))
    }

    fn status(raw: &str) -> u16 {
        match head(raw) {
            Err(HeadError::Reject(e)) => e.status(),
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn api_http_parses_a_request_head() {
        let h = head("\r\nPUT /api/v1/vm.resize?wait=false HTTP/1.1\r\nHost: x\r\ncontent-length:  12 \r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str()),
            ("PUT", "/api/v1/vm.resize?wait=false")
        );
        assert_eq!(
            (h.content_length, h.expect_continue, h.keep_alive),
            (12, true, true)
        );
        let h = head("GET / HTTP/1.0\n\n").unwrap();
        assert!(!h.keep_alive);
        let h = head("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn api_http_rejects_bad_heads() {
        assert_eq!(head(""), Err(HeadError::Idle));
        assert_eq!(
            head("GET / HTTP/1.1\r\nHost: x\r\n"),
            Err(HeadError::Broken)
        );
        assert_eq!(status("GET /\r\n\r\n"), 400);
        assert_eq!(status("GET  / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET http://x/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("G(T / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status("GET / HTTP/2\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nNoColon\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\n Folded: x\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n"), 400);
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
        assert_eq!(status("GET / HTTP/1.1\r\nExpect: magic\r\n\r\n"), 417);
        assert_eq!(status("GET /\u{e9} HTTP/1.1\r\n\r\n"), 400);
    }

    #[test]
    fn api_http_limits_head_size() {
        let long = format!(
            "GET /{} HTTP/1.1\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES as usize)
        );
        assert_eq!(status(&long), 431);
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(status(&many), 431);
    }

    /// A ping whose head is `len` bytes in all.
    fn head_of(len: usize) -> String {
        crate::api::test_util::head_of("GET /api/v1/vmm.ping HTTP/1.1\r\n", len)
    }

    #[test]
    fn api_http_takes_a_head_of_exactly_the_limit_and_refuses_one_byte_more() {
        let limit = MAX_HEAD_BYTES as usize;
        assert_eq!(head(&head_of(limit)).unwrap().target, "/api/v1/vmm.ping");
        assert_eq!(status(&head_of(limit + 1)), 431);
        // The headers end exactly at the limit and the blank line is beyond it: this head was
        // once taken for a connection that closed, and dropped unanswered.
        assert_eq!(status(&head_of(limit + 2)), 431);
        assert_eq!(status(&head_of(limit + 100)), 431);
    }

    #[test]
    fn api_http_ignores_a_few_empty_lines_before_the_request_line() {
        let few = format!(
            "{}GET / HTTP/1.1\r\n\r\n",
            "\r\n".repeat(MAX_LEADING_EMPTY_LINES)
        );
        assert_eq!(head(&few).unwrap().target, "/");
        let more = format!(
            "{}GET / HTTP/1.1\r\n\r\n",
            "\r\n".repeat(MAX_LEADING_EMPTY_LINES + 1)
        );
        assert_eq!(status(&more), 400);
        // Enough to run out of the head's budget: still an answer, not a dropped connection.
        let flood = format!("{}GET / HTTP/1.1\r\n\r\n", "\r\n".repeat(5000));
        assert_eq!(status(&flood), 400);
        assert_eq!(status(&"\n".repeat(MAX_HEAD_BYTES as usize + 1)), 400);
    }

    #[test]
    fn api_http_writes_responses() {
        let mut out = Vec::new();
        write_response(&mut out, 405, Some((JSON, b"{}")), Some("GET"), false).unwrap();
        let text = String::from_utf8(out).unwrap();
        // Cloud Hypervisor's client parses the whole rest of the status line as the code.
        assert!(text.starts_with("HTTP/1.1 405 \r\n"));
        assert!(text.contains("Allow: GET\r\n") && text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Connection: close\r\n") && text.ends_with("\r\n\r\n{}"));
        let mut out = Vec::new();
        write_response(&mut out, 204, None, None, true).unwrap();
        assert_eq!(out, b"HTTP/1.1 204 \r\nServer: plugvm\r\n\r\n");
    }
}
