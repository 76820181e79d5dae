//! The statuses `resources/openapi.yaml` documents per route, so that every answer the tests
//! see can be checked against the document: a status the document does not list for the
//! route fails the test that got it. (The vmm crate's unit tests tie the document to the
//! route table; this ties it to what the running VMM answers.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

/// Statuses any request can get (the document's `TransportError`).
pub const TRANSPORT_STATUSES: &[u16] = &[400, 408, 413, 417, 431, 501, 503, 505];

/// (method, path) -> documented statuses, and the paths at the socket's root (outside
/// `/api/v1`: those with `servers` of their own).
#[derive(Default)]
struct Routes {
    statuses: BTreeMap<(String, String), BTreeSet<u16>>,
    root: BTreeSet<String>,
}

fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let path = crate::workspace_root().join("resources/openapi.yaml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        scan(&text)
    })
}

/// Paths at indent 2 under `paths:`, methods (or the path's own `servers:`) at 4, status keys
/// (`'200':`) at 8.
fn scan(text: &str) -> Routes {
    let mut routes = Routes::default();
    let (mut in_paths, mut path, mut key) = (false, String::new(), None);
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            in_paths = trimmed == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        match indent {
            2 => path = trimmed.trim_end_matches(':').to_string(),
            4 if trimmed == "servers:" => {
                routes.root.insert(path.clone());
                key = None;
            }
            4 => {
                let k = (
                    trimmed.trim_end_matches(':').to_ascii_uppercase(),
                    path.clone(),
                );
                routes.statuses.insert(k.clone(), BTreeSet::new());
                key = Some(k);
            }
            8 => {
                let code = trimmed.trim_end_matches(':').trim_matches('\'');
                if let (Ok(code), Some(k)) = (code.parse::<u16>(), &key) {
                    if let Some(set) = routes.statuses.get_mut(k) {
                        set.insert(code);
                    }
                }
            }
            _ => {}
        }
    }
    routes
}

fn matches(pattern: &str, path: &str) -> bool {
    let (mut p, mut s) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.starts_with('{') && !b.is_empty() => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Panics unless `status` is documented for `method target` (`/api/v1/vm.info?x`, or
/// `/metrics` at the socket's root), or is a transport status; a path the document does not
/// have may only get 404 or 405.
pub fn assert_documented(method: &str, target: &str, status: u16) {
    let path = target.split('?').next().unwrap_or_default();
    let (relative, root) = match path.strip_prefix("/api/v1") {
        Some(relative) => (relative, false),
        None => (path, true),
    };
    let routes = routes();
    let found = routes
        .statuses
        .iter()
        .find(|((m, p), _)| m == method && routes.root.contains(p) == root && matches(p, relative));
    match found {
        Some((_, documented)) => assert!(
            documented.contains(&status) || TRANSPORT_STATUSES.contains(&status),
            "{method} {target} answered {status}, which resources/openapi.yaml does not list for it ({documented:?})"
        ),
        None => assert!(
            matches!(status, 404 | 405) || TRANSPORT_STATUSES.contains(&status),
            "{method} {target} is not in resources/openapi.yaml, yet answered {status}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_document() {
        assert!(routes().statuses[&("GET".to_string(), "/vm.info".to_string())].contains(&200));
        assert_documented("GET", "/metrics", 200);
        assert_documented("GET", "/api/v1/metrics", 404);
        assert_documented("GET", "/vm.info", 404);
        assert!(routes().statuses.keys().all(|(m, _)| m != "SERVERS"));
        assert_documented("GET", "/api/v1/hotplug/transactions/7", 200);
        assert_documented("PUT", "/api/v1/vm.resize?wait=false", 202);
        assert_documented("GET", "/api/v1/nothing", 404);
    }

    #[test]
    #[should_panic(expected = "does not list")]
    fn an_undocumented_status_fails() {
        assert_documented("GET", "/api/v1/vmm.ping", 201);
    }
}
