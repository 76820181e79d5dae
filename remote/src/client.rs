//! A tiny blocking HTTP/1.1 client over a Unix socket (used by `plugvm-remote`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest response head the client reads, in bytes.
const MAX_HEAD_BYTES: u64 = 16 * 1024;
/// Largest response body the client reads, in bytes.
const MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;

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

/// Sends one request on a fresh connection and reads the response.
///
/// `timeout` bounds each read and write.
pub fn request(
    socket: &Path,
    method: &str,
    target: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|e| ClientError::Connect {
        path: socket.to_path_buf(),
        message: describe(&e),
    })?;
    let timeouts = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)));
    timeouts.map_err(|e| ClientError::Send(describe(&e)))?;
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
    (&stream)
        .write_all(&bytes)
        .map_err(|e| ClientError::Send(describe(&e)))?;
    read_response(&mut BufReader::new(stream))
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

/// Reads one response, skipping interim 1xx responses.
///
/// Public for callers that drive a connection themselves, such as the
/// server's tests of keep-alive and `Expect: 100-continue`.
pub fn read_response<R: BufRead>(reader: &mut R) -> Result<Response, ClientError> {
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
        let mut length: Option<u64> = None;
        loop {
            let line = read_line(reader, &mut budget)?;
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    let parsed = value.trim().parse::<u64>();
                    length =
                        Some(parsed.map_err(|_| ClientError::Malformed("bad Content-Length"))?);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(ClientError::Malformed("unsupported Transfer-Encoding"));
                }
            }
        }
        if status < 200 {
            continue;
        }
        let mut body = Vec::new();
        match length {
            _ if status == 204 || status == 304 => {}
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
        return Ok(Response { status, body });
    }
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
