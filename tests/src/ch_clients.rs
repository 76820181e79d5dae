//! Cloud Hypervisor's API clients as they behave on the wire, for the compatibility tests:
//! [`ch_remote`] writes and reads exactly as `ch-remote` v54 (its `api_client` crate) does,
//! and [`KataClient`] as Kata Containers' generated Go client over `net/http` does. Both are
//! written from those clients' published sources; each check a client makes that would
//! fail against a server is an error here.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// What `ch-remote` got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChAnswer {
    /// The status code as `ch-remote` parsed it.
    pub status: usize,
    /// Whether `ch-remote` counts it a success (100, 200 and 204 only).
    pub success: bool,
    /// The body: `None` without a `Content-Length` header, as `ch-remote` reads it.
    pub body: Option<String>,
}

/// One `ch-remote` command: `method /api/v1/command`, with `body` (a file's text for
/// `create`, the serialized `VmResizeData` for `resize`). The request goes out in the same
/// separate writes; the answer is read in 256-byte reads, each of which must be UTF-8 on its
/// own, and parsed with `ch-remote`'s rules (status = everything between `HTTP/1.1 ` and the
/// CR; body length only from an exact-case `Content-Length: ` header).
pub fn ch_remote(
    socket: &Path,
    method: &str,
    command: &str,
    body: Option<&str>,
) -> Result<ChAnswer, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let write = |s: &mut UnixStream, bytes: &[u8]| s.write_all(bytes).map_err(|e| e.to_string());
    write(
        &mut s,
        format!("{method} /api/v1/{command} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n")
            .as_bytes(),
    )?;
    if let Some(body) = body {
        write(
            &mut s,
            format!("Content-Length: {}\r\n", body.len()).as_bytes(),
        )?;
    }
    write(&mut s, b"\r\n")?;
    if let Some(body) = body {
        write(&mut s, body.as_bytes())?;
    }
    let mut res = String::new();
    let mut body_offset = None;
    let mut content_length: Option<usize> = None;
    loop {
        let mut bytes = [0u8; 256];
        let count = s.read(&mut bytes).map_err(|e| format!("read: {e}"))?;
        if count == 0 {
            break;
        }
        let chunk = std::str::from_utf8(&bytes[..count]).map_err(|e| {
            format!("a 256-byte read is not UTF-8 on its own (ch-remote panics): {e}")
        })?;
        res.push_str(chunk);
        if let Some(o) = res.find("\r\n\r\n") {
            body_offset = Some(o + 4);
            content_length = match header(&res, "Content-Length") {
                Some(v) => Some(
                    v.trim()
                        .parse()
                        .map_err(|e| format!("Error parsing HTTP Content-Length field: {e}"))?,
                ),
                None => None,
            };
            if content_length.is_none() {
                break;
            }
        }
        if let (Some(o), Some(len)) = (body_offset, content_length) {
            if res.len() >= len + o {
                break;
            }
        }
    }
    let body = content_length.and(body_offset.map(|o| res[o..].to_string()));
    let Some(o) = res.find("HTTP/1.1") else {
        return Err("HTTP output is missing protocol statement".into());
    };
    let end = res[o..].find('\r').ok_or("no CR after the status line")? + o;
    let code = res
        .get(o + "HTTP/1.1 ".len()..end)
        .ok_or("status line too short")?;
    let status: usize = code
        .trim()
        .parse()
        .map_err(|e| format!("Error parsing HTTP status code from {code:?}: {e}"))?;
    crate::openapi::assert_documented(
        method,
        &format!("/api/v1/{command}"),
        u16::try_from(status).unwrap_or(0),
    );
    Ok(ChAnswer {
        status,
        success: matches!(status, 100 | 200 | 204),
        body,
    })
}

fn header<'a>(res: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!("{name}: ");
    let o = res.find(&needle)?;
    let end = res[o..].find('\r')? + o;
    res.get(o + needle.len()..end)
}

/// Asserts a refusal as `ch-remote` sees it: not a success, `status`, and a body that says
/// `words`.
pub fn assert_refused(answer: &ChAnswer, status: usize, words: &str) {
    assert!(!answer.success, "{answer:?}");
    assert_eq!(answer.status, status, "{answer:?}");
    let body = answer.body.as_deref().unwrap_or_default();
    assert!(
        body.contains(words),
        "the error should say {words:?}: {answer:?}"
    );
}

/// `ch-remote resize`'s body: `VmResizeData` serialized, unset fields as `null`.
pub fn ch_resize_body(vcpus: Option<u32>, ram: Option<u64>) -> String {
    let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
    format!(
        "{{\"desired_vcpus\":{},\"desired_ram\":{},\"desired_balloon\":null}}",
        opt(vcpus.map(u64::from)),
        opt(ram)
    )
}

/// What Kata's client got: the status and, for a 2xx with a JSON body, the decoded value.
#[derive(Debug, Clone, PartialEq)]
pub struct KataAnswer {
    /// The status code.
    pub status: u16,
    /// The body as bytes.
    pub body: Vec<u8>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
}

impl KataAnswer {
    /// Decodes the body as the generated client does after a 2xx: an empty body is the zero
    /// value; otherwise the content type must be JSON.
    pub fn decode(&self) -> Result<Value, String> {
        if self.status >= 300 {
            return Err(format!(
                "{} (body {})",
                self.status,
                String::from_utf8_lossy(&self.body)
            ));
        }
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        let json = self.content_type.as_deref().is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            t.starts_with("application/json") || t.starts_with("text/json")
        });
        if !json {
            return Err(format!("undefined response type {:?}", self.content_type));
        }
        serde_json::from_slice(&self.body).map_err(|e| e.to_string())
    }
}

/// Kata Containers' client: one kept-alive connection, Go `net/http`'s request shape, the
/// generated client's headers and its JSON encoding (keys sorted, a trailing newline).
pub struct KataClient {
    socket: std::path::PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl KataClient {
    /// Connects to the API socket.
    pub fn connect(socket: &Path) -> Result<Self, String> {
        let stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        Ok(KataClient {
            socket: socket.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// One request on the kept-alive connection; like Go's transport, a request that found
    /// the idle connection closed by the server is sent again once on a new one.
    pub fn call(
        &mut self,
        method: &str,
        endpoint: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<KataAnswer, String> {
        match self.call_once(method, endpoint, body, timeout) {
            Err(e) if e.contains("closed before the answer") || e.contains("write:") => {
                *self = KataClient::connect(&self.socket.clone())?;
                self.call_once(method, endpoint, body, timeout)
            }
            other => other,
        }
    }

    /// One request, answered within `timeout` (Kata's own: 1 s for a resize, 10 s to create
    /// and boot), or an error as Kata's context deadline would give.
    fn call_once(
        &mut self,
        method: &str,
        endpoint: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<KataAnswer, String> {
        // serde_json's maps are sorted, as Go's encoding of the generated map is; Go's
        // json.Encoder adds the newline.
        let body = body.map(|b| format!("{b}\n"));
        let mut head = format!(
            "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: OpenAPI-Generator/1.0.0/go\r\n"
        );
        match (&body, method) {
            (Some(b), _) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
            // Go sends an explicit zero length on a body-less PUT.
            (None, "PUT") => head.push_str("Content-Length: 0\r\n"),
            (None, _) => {}
        }
        head.push_str("Accept: application/json\r\n");
        if body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str("Accept-Encoding: gzip\r\n\r\n");
        head.push_str(body.as_deref().unwrap_or_default());
        self.writer
            .set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        self.writer
            .write_all(head.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let answer = self
            .read_response()
            .map_err(|e| format!("{method} {endpoint}: {e} (Kata's {timeout:?} deadline)"))?;
        crate::openapi::assert_documented(method, &format!("/api/v1/{endpoint}"), answer.status);
        Ok(answer)
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the connection was closed before the answer".into());
        }
        if !line.ends_with("\r\n") {
            return Err(format!("malformed response line {line:?}"));
        }
        Ok(line.trim_end_matches("\r\n").to_string())
    }

    /// Go's `http.ReadResponse`: `HTTP/1.x NNN[ reason]`, case-insensitive headers, the body
    /// by `Content-Length` (none for 204).
    fn read_response(&mut self) -> Result<KataAnswer, String> {
        let status_line = self.read_line()?;
        let (proto, rest) = status_line
            .split_once(' ')
            .ok_or_else(|| format!("malformed HTTP response {status_line:?}"))?;
        if !proto.starts_with("HTTP/1.") {
            return Err(format!("malformed HTTP version {proto:?}"));
        }
        let code = rest.split(' ').next().unwrap_or_default();
        let status: u16 = code
            .parse()
            .ok()
            .filter(|_| code.len() == 3)
            .ok_or_else(|| format!("malformed HTTP status code {code:?}"))?;
        let mut length = None;
        let mut content_type = None;
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("malformed MIME header line {line:?}"))?;
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    length = Some(
                        value
                            .trim()
                            .parse::<usize>()
                            .map_err(|_| format!("bad Content-Length {value:?}"))?,
                    )
                }
                "content-type" => content_type = Some(value.trim().to_string()),
                _ => {}
            }
        }
        let mut body = vec![
            0;
            if status == 204 {
                0
            } else {
                length.unwrap_or(0)
            }
        ];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("body: {e}"))?;
        Ok(KataAnswer {
            status,
            body,
            content_type,
        })
    }
}

/// Checks `info` the way Cloud Hypervisor's `VmInfo` schema and Kata's decoder read it:
/// `config.cpus` and `config.memory` present (Kata dereferences them), the fields Kata reads
/// present and integers, `state` one of Kata's `VmState` values, console modes spelled as
/// Cloud Hypervisor's `ConsoleMode`. Returns the first violation.
pub fn check_vm_info(info: &Value) -> Result<(), String> {
    let int = |path: &[&str]| -> Result<u64, String> {
        let mut v = info;
        for key in path {
            v = v
                .get(key)
                .ok_or_else(|| format!("vm.info has no {}", path.join(".")))?;
        }
        v.as_u64()
            .ok_or_else(|| format!("vm.info {} is not an integer: {v}", path.join(".")))
    };
    for object in ["config", "config.cpus", "config.memory", "config.payload"] {
        let mut v = info;
        for key in object.split('.') {
            v = &v[key];
        }
        if !v.is_object() {
            return Err(format!("vm.info {object} is not an object: {info}"));
        }
    }
    let boot = int(&["config", "cpus", "boot_vcpus"])?;
    let max = int(&["config", "cpus", "max_vcpus"])?;
    if boot < 1 || boot > max {
        return Err(format!("vm.info boot_vcpus {boot} outside 1..={max}"));
    }
    int(&["config", "memory", "size"])?;
    int(&["memory_actual_size"])?;
    if info["config"]["memory"].get("hotplug_size").is_some() {
        int(&["config", "memory", "hotplug_size"])?;
    }
    match info["state"].as_str() {
        Some("Created" | "Running" | "Shutdown" | "Paused") => {}
        other => return Err(format!("vm.info state {other:?} is not a Kata VmState")),
    }
    for console in ["serial", "console"] {
        if let Some(c) = info["config"].get(console) {
            match c["mode"].as_str() {
                Some("Off" | "Pty" | "Tty" | "File" | "Socket" | "Null") => {}
                other => {
                    return Err(format!(
                        "vm.info {console}.mode {other:?} is not a ConsoleMode"
                    ))
                }
            }
        }
    }
    Ok(())
}
