//! The route table: method + path pattern -> body check -> [`ApiRequest`].
//!
//! Adding an endpoint is adding one [`Route`] to [`ROUTES`] (and its path to
//! `resources/openapi.yaml`; a test keeps both in step).

use super::bodies::{self, field_names};
use super::vm_create;
use super::{ping_body, ApiRequest, ApiResponse, RequestError, API_PREFIX, METRICS_PATH};
use super::{AddMemoryBody, AddVcpuBody, RemoveMemoryBody, RemoveVcpuBody, ResizeBody};

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Method {
    Get,
    Put,
}

impl Method {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }
}

/// The JSON body a route takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodySchema {
    /// Schema name in `resources/openapi.yaml` (`#/components/schemas/NAME`).
    #[cfg_attr(not(test), allow(dead_code))]
    pub name: &'static str,
    /// Field names, read from the serde type.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fields: fn() -> &'static [&'static str],
    /// Whether an empty body is refused.
    pub required: bool,
}

/// What the route's parser got from the request.
pub(crate) struct RouteInput<'a> {
    /// The `{id}` path segment, for routes that have one.
    pub param: Option<&'a str>,
    /// The raw request body (possibly empty).
    pub body: &'a [u8],
    /// `?wait=` (true when absent).
    pub wait: bool,
}

/// What to do with a routed request.
#[derive(Debug, PartialEq)]
pub(crate) enum Action {
    /// Answer without the VMM.
    Reply(ApiResponse),
    /// Forward to the VMM and relay its answer.
    Forward(ApiRequest),
    /// Stream events from this id on (`None`: from the next one).
    Stream(Option<u64>),
}

/// One endpoint.
pub(crate) struct Route {
    pub method: Method,
    /// Path after [`API_PREFIX`] (after the socket's root if `root`); a `{name}` segment
    /// matches any one segment.
    pub path: &'static str,
    /// Whether the path is at the socket's root rather than under [`API_PREFIX`]: `/metrics`,
    /// where Prometheus looks by default.
    pub root: bool,
    pub body: Option<BodySchema>,
    /// Whether `?wait=true|false` is accepted.
    pub wait: bool,
    /// Every status the route itself can answer; `resources/openapi.yaml` lists exactly these
    /// (plus its `default` answer for [`TRANSPORT_STATUSES`]).
    #[cfg_attr(not(test), allow(dead_code))]
    pub statuses: &'static [u16],
    parse: fn(&RouteInput<'_>) -> Result<Action, String>,
}

/// Statuses any request can get before or around its route: a malformed request (400), too
/// slow (408), too large (413, 431), the VMM unavailable or gone (503), an HTTP version other
/// than 1.x (505), Transfer-Encoding (501), an `Expect` other than `100-continue` (417).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const TRANSPORT_STATUSES: &[u16] = &[400, 408, 413, 417, 431, 501, 503, 505];

/// What a hotplug request can answer: done (200), started (202, `?wait=false`), refused
/// (409 no VM running, paused or batch aborted; 422 invalid; 429 a device busy), failed on the
/// host (500), refused by the guest (502), no answer from the guest (504).
const HOTPLUG: &[u16] = &[200, 202, 400, 409, 422, 429, 500, 502, 504];

const fn schema(
    name: &'static str,
    fields: fn() -> &'static [&'static str],
    required: bool,
) -> Option<BodySchema> {
    Some(BodySchema {
        name,
        fields,
        required,
    })
}

/// Every endpoint of the API.
#[rustfmt::skip]
pub(crate) static ROUTES: &[Route] = &[
    Route { method: Method::Get, path: "/vmm.ping", root: false, body: None, wait: false, statuses: &[200], parse: |_| Ok(Action::Reply(ApiResponse::ok(ping_body()))) },
    Route { method: Method::Put, path: "/vmm.shutdown", root: false, body: None, wait: false, statuses: &[204, 500], parse: |_| Ok(Action::Forward(ApiRequest::VmmShutdown)) },
    Route { method: Method::Put, path: "/vm.create", root: false, body: Some(BodySchema { name: "VmConfig", fields: vm_create::field_names, required: true }), wait: false, statuses: &[204, 400, 409], parse: create },
    Route { method: Method::Put, path: "/vm.boot", root: false, body: None, wait: false, statuses: &[204, 400, 404, 409, 500], parse: |_| Ok(Action::Forward(ApiRequest::Boot)) },
    Route { method: Method::Put, path: "/vm.delete", root: false, body: None, wait: false, statuses: &[204, 500], parse: |_| Ok(Action::Forward(ApiRequest::Delete)) },
    Route { method: Method::Put, path: "/vm.shutdown", root: false, body: None, wait: false, statuses: &[204, 409, 500], parse: |_| Ok(Action::Forward(ApiRequest::Shutdown)) },
    Route { method: Method::Put, path: "/vm.power-button", root: false, body: None, wait: false, statuses: &[204, 409, 500], parse: |_| Ok(Action::Forward(ApiRequest::PowerButton)) },
    Route { method: Method::Get, path: "/vm.counters", root: false, body: None, wait: false, statuses: &[200, 409], parse: |_| Ok(Action::Forward(ApiRequest::Counters)) },
    Route { method: Method::Put, path: "/vm.pause", root: false, body: None, wait: false, statuses: &[204, 409, 429, 500], parse: |_| Ok(Action::Forward(ApiRequest::Pause)) },
    Route { method: Method::Put, path: "/vm.resume", root: false, body: None, wait: false, statuses: &[204, 409, 500], parse: |_| Ok(Action::Forward(ApiRequest::Resume)) },
    Route { method: Method::Get, path: "/vm.info", root: false, body: None, wait: false, statuses: &[200, 404], parse: |_| Ok(Action::Forward(ApiRequest::VmInfo)) },
    Route { method: Method::Put, path: "/vm.add-vcpu", root: false, body: schema("VmAddVcpu", field_names::<AddVcpuBody>, false), wait: true, statuses: HOTPLUG, parse: add_vcpu },
    Route { method: Method::Put, path: "/vm.remove-vcpu", root: false, body: schema("VmRemoveVcpu", field_names::<RemoveVcpuBody>, true), wait: true, statuses: HOTPLUG, parse: remove_vcpu },
    Route { method: Method::Put, path: "/vm.resize", root: false, body: schema("VmResize", field_names::<ResizeBody>, true), wait: true, statuses: HOTPLUG, parse: resize },
    Route { method: Method::Put, path: "/vm.add-memory", root: false, body: schema("VmAddMemory", field_names::<AddMemoryBody>, true), wait: true, statuses: HOTPLUG, parse: add_memory },
    Route { method: Method::Put, path: "/vm.remove-memory", root: false, body: schema("VmRemoveMemory", field_names::<RemoveMemoryBody>, true), wait: true, statuses: HOTPLUG, parse: remove_memory },
    Route { method: Method::Get, path: "/events", root: false, body: None, wait: false, statuses: &[200, 503], parse: |_| Ok(Action::Stream(None)) },
    Route { method: Method::Get, path: "/hotplug/transactions", root: false, body: None, wait: false, statuses: &[200, 409], parse: |_| Ok(Action::Forward(ApiRequest::Transactions)) },
    Route { method: Method::Get, path: "/hotplug/transactions/{id}", root: false, body: None, wait: false, statuses: &[200, 400, 404, 409], parse: transaction },
    Route { method: Method::Get, path: METRICS_PATH, root: true, body: None, wait: false, statuses: &[200], parse: |_| Ok(Action::Forward(ApiRequest::Metrics)) },
];

fn create(input: &RouteInput<'_>) -> Result<Action, String> {
    let config = vm_create::parse(input.body)?;
    Ok(Action::Forward(ApiRequest::Create(Box::new(config))))
}

fn add_vcpu(input: &RouteInput<'_>) -> Result<Action, String> {
    let body: AddVcpuBody = bodies::parse_optional("vm.add-vcpu", input.body)?;
    Ok(Action::Forward(ApiRequest::AddVcpu {
        id: body.id,
        wait: input.wait,
    }))
}

fn remove_vcpu(input: &RouteInput<'_>) -> Result<Action, String> {
    let body: RemoveVcpuBody = bodies::parse("vm.remove-vcpu", input.body)?;
    Ok(Action::Forward(ApiRequest::RemoveVcpu {
        id: body.id,
        wait: input.wait,
    }))
}

fn resize(input: &RouteInput<'_>) -> Result<Action, String> {
    let body: ResizeBody = bodies::parse("vm.resize", input.body)?;
    body.validate()?;
    Ok(Action::Forward(ApiRequest::Resize {
        desired_vcpus: body.desired_vcpus,
        desired_ram: body.desired_ram,
        best_effort: body.best_effort.unwrap_or(false),
        wait: input.wait,
    }))
}

fn add_memory(input: &RouteInput<'_>) -> Result<Action, String> {
    let body: AddMemoryBody = bodies::parse("vm.add-memory", input.body)?;
    body.validate()?;
    Ok(Action::Forward(ApiRequest::AddMemory {
        size: body.size,
        wait: input.wait,
    }))
}

fn remove_memory(input: &RouteInput<'_>) -> Result<Action, String> {
    let body: RemoveMemoryBody = bodies::parse("vm.remove-memory", input.body)?;
    Ok(Action::Forward(ApiRequest::RemoveMemory {
        slot: body.slot,
        wait: input.wait,
    }))
}

fn transaction(input: &RouteInput<'_>) -> Result<Action, String> {
    let raw = input.param.unwrap_or_default();
    // Digits only: u64::from_str would also take a leading '+'.
    match raw.parse::<u64>() {
        Ok(id) if raw.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Action::Forward(ApiRequest::Transaction(id)))
        }
        _ => Err(format!(
            "Transaction id `{}` is not a non-negative integer.",
            printable(raw)
        )),
    }
}

/// Matches `path` against `pattern`; returns the `{..}` segment if any.
fn match_path<'a>(pattern: &str, path: &'a str) -> Option<Option<&'a str>> {
    let mut param = None;
    let mut pattern_segments = pattern.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return Some(param),
            (Some(p), Some(s)) if p.starts_with('{') && !s.is_empty() => param = Some(s),
            (Some(p), Some(s)) if p == s => {}
            _ => return None,
        }
    }
}

/// Shortens and sanitizes client text quoted in an error message.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

/// Parses the event stream's query: `since=ID` (resume after event ID), at most once.
fn parse_since(query: Option<&str>) -> Result<Option<u64>, String> {
    let mut since = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "since" {
            return Err(format!(
                "Unknown query parameter `{}`; events accepts only `since`.",
                printable(key)
            ));
        }
        let id = value
            .parse::<u64>()
            .ok()
            .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("since must be an event id, got `{}`.", printable(value)))?;
        if since.replace(id).is_some() {
            return Err("Query parameter since is given more than once.".to_string());
        }
    }
    Ok(since)
}

/// Parses the query string of a route: only `wait=true|false`, at most once.
fn parse_query(route: &Route, query: Option<&str>) -> Result<bool, String> {
    let mut wait = None;
    let Some(query) = query else { return Ok(true) };
    let name = route.path.trim_start_matches('/');
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "wait" || !route.wait {
            return Err(if route.wait {
                format!(
                    "Unknown query parameter `{}`; {name} accepts only `wait`.",
                    printable(key)
                )
            } else {
                format!(
                    "{name} takes no query parameters, got `{}`.",
                    printable(key)
                )
            });
        }
        let parsed = match value {
            "true" => true,
            "false" => false,
            other => {
                return Err(format!(
                    "Query parameter wait must be true or false, got `{}`.",
                    printable(other)
                ))
            }
        };
        if wait.replace(parsed).is_some() {
            return Err("Query parameter wait is given more than once.".to_string());
        }
    }
    Ok(wait.unwrap_or(true))
}

/// Routes one request. `target` is the request-target (path and query).
pub(crate) fn route(method: &str, target: &str, body: &[u8]) -> Result<Action, RequestError> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let not_found = || RequestError::NoSuchEndpoint(format!("No endpoint at {}.", printable(path)));
    let (relative, root) = match path.strip_prefix(API_PREFIX) {
        Some(relative) => (relative, false),
        None => (path, true),
    };
    let matching: Vec<(&Route, Option<&str>)> = ROUTES
        .iter()
        .filter(|r| r.root == root)
        .filter_map(|r| match_path(r.path, relative).map(|param| (r, param)))
        .collect();
    if matching.is_empty() {
        return Err(not_found());
    }
    let Some(&(route, param)) = matching.iter().find(|(r, _)| r.method.as_str() == method) else {
        let mut allowed: Vec<Method> = matching.iter().map(|(r, _)| r.method).collect();
        allowed.sort();
        allowed.dedup();
        let allow = allowed
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(RequestError::MethodNotAllowed {
            message: format!(
                "{} does not accept {}; use {allow}.",
                printable(relative.trim_start_matches('/')),
                printable(method)
            ),
            allow,
        });
    };
    if route.path == "/events" {
        let since = parse_since(query).map_err(RequestError::MalformedRequest)?;
        return Ok(Action::Stream(since.map(|id| id.saturating_add(1))));
    }
    let wait = parse_query(route, query).map_err(RequestError::MalformedRequest)?;
    if route.body.is_none() && !body.iter().all(u8::is_ascii_whitespace) {
        return Err(RequestError::MalformedRequest(format!(
            "{} takes no request body.",
            route.path.trim_start_matches('/')
        )));
    }
    let empty = body.iter().all(u8::is_ascii_whitespace);
    if route.body.is_some_and(|schema| schema.required) && empty {
        return Err(RequestError::MalformedRequest(format!(
            "{} needs a JSON object as request body, got an empty body.",
            route.path.trim_start_matches('/')
        )));
    }
    let input = RouteInput { param, body, wait };
    (route.parse)(&input).map_err(RequestError::MalformedRequest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(method: &str, target: &str, body: &str) -> ApiRequest {
        match route(method, target, body.as_bytes()) {
            Ok(Action::Forward(request)) => request,
            other => panic!("{method} {target}: {other:?}"),
        }
    }

    fn bad(method: &str, target: &str, body: &str) -> (u16, String, Option<String>) {
        match route(method, target, body.as_bytes()) {
            Err(e) => (e.status(), e.to_string(), e.allow().map(str::to_string)),
            Ok(a) => panic!("{method} {target} was routed: {a:?}"),
        }
    }

    #[test]
    fn api_routes_map_to_requests() {
        assert_eq!(fwd("PUT", "/api/v1/vm.shutdown", ""), ApiRequest::Shutdown);
        assert_eq!(fwd("PUT", "/api/v1/vm.pause", ""), ApiRequest::Pause);
        assert_eq!(fwd("PUT", "/api/v1/vm.resume", ""), ApiRequest::Resume);
        assert_eq!(fwd("GET", "/api/v1/vm.info", ""), ApiRequest::VmInfo);
        assert_eq!(
            fwd("PUT", "/api/v1/vm.add-vcpu", ""),
            ApiRequest::AddVcpu {
                id: None,
                wait: true
            }
        );
        assert_eq!(
            fwd("PUT", "/api/v1/vm.add-vcpu?wait=false", r#"{"id":3}"#),
            ApiRequest::AddVcpu {
                id: Some(3),
                wait: false
            }
        );
        assert_eq!(
            fwd("PUT", "/api/v1/vm.remove-vcpu", r#"{"id":2}"#),
            ApiRequest::RemoveVcpu { id: 2, wait: true }
        );
        assert_eq!(
            fwd(
                "PUT",
                "/api/v1/vm.resize?wait=true",
                r#"{"desired_ram":1073741824,"best_effort":true}"#
            ),
            ApiRequest::Resize {
                desired_vcpus: None,
                desired_ram: Some(1 << 30),
                best_effort: true,
                wait: true
            }
        );
        assert_eq!(
            fwd("PUT", "/api/v1/vm.add-memory", r#"{"size":4096}"#),
            ApiRequest::AddMemory {
                size: 4096,
                wait: true
            }
        );
        assert_eq!(
            fwd("PUT", "/api/v1/vm.remove-memory", r#"{"slot":1}"#),
            ApiRequest::RemoveMemory {
                slot: 1,
                wait: true
            }
        );
        assert_eq!(
            fwd("GET", "/api/v1/hotplug/transactions", ""),
            ApiRequest::Transactions
        );
        assert_eq!(
            fwd(
                "GET",
                "/api/v1/hotplug/transactions/18446744073709551615",
                ""
            ),
            ApiRequest::Transaction(u64::MAX)
        );
        assert!(
            matches!(route("GET", "/api/v1/vmm.ping", b""), Ok(Action::Reply(r)) if r.status == 200)
        );
        assert_eq!(fwd("GET", "/metrics", ""), ApiRequest::Metrics);
    }

    #[test]
    fn api_metrics_is_at_the_root_only() {
        assert_eq!(bad("GET", "/api/v1/metrics", "").0, 404);
        assert_eq!(bad("GET", "/metrics/", "").0, 404);
        assert_eq!(bad("GET", "/vm.info", "").0, 404);
        let (status, message, allow) = bad("PUT", "/metrics", "");
        assert_eq!((status, allow.as_deref()), (405, Some("GET")));
        assert_eq!(message, "metrics does not accept PUT; use GET.");
        let (status, message, _) = bad("GET", "/metrics?name=x", "");
        assert_eq!(status, 400);
        assert!(
            message.contains("metrics takes no query parameters"),
            "{message}"
        );
    }

    #[test]
    fn api_unknown_paths_are_404() {
        for path in [
            "/",
            "/api/v1",
            "/api/v1/",
            "/api/v1/vm.info/",
            "/api/v2/vm.info",
            "/api/v1/hotplug/transactions/",
            "/api/v1/hotplug/transactions/1/x",
        ] {
            assert_eq!(bad("GET", path, "").0, 404, "{path}");
        }
    }

    #[test]
    fn api_wrong_methods_are_405_with_allow() {
        let (status, message, allow) = bad("POST", "/api/v1/vm.info", "");
        assert_eq!((status, allow.as_deref()), (405, Some("GET")));
        assert_eq!(message, "vm.info does not accept POST; use GET.");
        assert_eq!(
            bad("GET", "/api/v1/vm.resize", "").2.as_deref(),
            Some("PUT")
        );
        assert_eq!(bad("DELETE", "/api/v1/hotplug/transactions/7", "").0, 405);
    }

    #[test]
    fn api_bad_queries_are_400() {
        let cases = [
            (
                "/api/v1/vm.info?wait=false",
                "vm.info takes no query parameters",
            ),
            (
                "/api/v1/vm.add-vcpu?verbose=1",
                "Unknown query parameter `verbose`",
            ),
            ("/api/v1/vm.add-vcpu?wait=maybe", "must be true or false"),
            ("/api/v1/vm.add-vcpu?wait", "must be true or false, got ``"),
            ("/api/v1/vm.add-vcpu?wait=true&wait=false", "more than once"),
        ];
        for (target, expected) in cases {
            let method = if target.contains("info") {
                "GET"
            } else {
                "PUT"
            };
            let (status, message, _) = bad(method, target, "");
            assert_eq!(status, 400, "{target}");
            assert!(message.contains(expected), "{target}: {message}");
        }
    }

    #[test]
    fn api_bad_bodies_are_400() {
        let cases = [
            (
                "/api/v1/vm.resize",
                "{}",
                "needs desired_vcpus, desired_ram or both",
            ),
            (
                "/api/v1/vm.resize",
                r#"{"desired_vcpus":"4"}"#,
                "invalid type: string",
            ),
            (
                "/api/v1/vm.resize",
                r#"{"desired_vcpus":4,"cpus":1}"#,
                "unknown field `cpus`",
            ),
            ("/api/v1/vm.resize", "{", "EOF while parsing"),
            ("/api/v1/vm.resize", "[1]", "expected a JSON object"),
            ("/api/v1/vm.resize", "null", "expected a JSON object"),
            ("/api/v1/vm.remove-vcpu", "", "empty body"),
            (
                "/api/v1/vm.remove-vcpu",
                r#"{"id":4294967296}"#,
                "expected u32",
            ),
            ("/api/v1/vm.add-memory", r#"{"size":0}"#, "at least 1 byte"),
            (
                "/api/v1/vm.add-memory",
                r#"{"size":1} x"#,
                "trailing characters",
            ),
            (
                "/api/v1/vm.shutdown",
                r#"{"now":true}"#,
                "vm.shutdown takes no request body",
            ),
        ];
        for (target, body, expected) in cases {
            let (status, message, _) = bad("PUT", target, body);
            assert_eq!(status, 400, "{target} {body}");
            assert!(message.contains(expected), "{target} {body}: {message}");
        }
        let (_, message, _) = bad("GET", "/api/v1/hotplug/transactions/+1", "");
        assert_eq!(
            message,
            "Transaction id `+1` is not a non-negative integer."
        );
    }

    #[test]
    fn api_route_table_has_no_duplicates() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    a.method != b.method || a.path != b.path || a.root != b.root,
                    "{} {}",
                    a.method.as_str(),
                    a.path
                );
            }
        }
    }
}
