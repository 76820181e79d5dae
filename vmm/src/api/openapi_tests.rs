//! Keeps `resources/openapi.yaml` and the route table in step.
//!
//! No YAML crate is needed: the document follows a fixed indentation
//! (paths at 2, methods at 4, schema names at 4 under `components/schemas`,
//! property names at 8), which a line scanner reads.

use std::collections::{BTreeMap, BTreeSet};

use super::routing::ROUTES;
use super::API_PREFIX;

#[derive(Debug, Default)]
struct Operation {
    schema: Option<String>,
    body_required: Option<bool>,
    wait: bool,
}

#[derive(Debug, Default)]
struct Document {
    server_url: Option<String>,
    operations: BTreeMap<(String, String), Operation>,
    properties: BTreeMap<String, BTreeSet<String>>,
}

fn scan(text: &str) -> Document {
    let mut doc = Document::default();
    let (mut section, mut sub) = ("", "");
    let mut path = String::new();
    let mut key: Option<(String, String)> = None;
    let (mut in_body, mut in_props) = (false, false);
    let mut schema = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            section = trimmed;
            continue;
        }
        match section {
            "servers:" => {
                if let Some(url) = trimmed.strip_prefix("- url:") {
                    doc.server_url = Some(url.trim().to_string());
                }
            }
            "paths:" => match indent {
                2 => path = trimmed.trim_end_matches(':').to_string(),
                4 => {
                    let method = trimmed.trim_end_matches(':').to_ascii_uppercase();
                    let k = (method, path.clone());
                    doc.operations.insert(k.clone(), Operation::default());
                    key = Some(k);
                    in_body = false;
                }
                _ => {
                    let Some(op) = key.as_ref().and_then(|k| doc.operations.get_mut(k)) else {
                        continue;
                    };
                    if indent == 6 {
                        in_body = trimmed == "requestBody:";
                    }
                    if trimmed == "- $ref: '#/components/parameters/Wait'" {
                        op.wait = true;
                    }
                    if in_body && indent == 8 {
                        if let Some(v) = trimmed.strip_prefix("required:") {
                            op.body_required = Some(v.trim() == "true");
                        }
                    }
                    if let Some(name) = trimmed.strip_prefix("$ref: '#/components/schemas/") {
                        if in_body {
                            op.schema = Some(name.trim_end_matches('\'').to_string());
                        }
                    }
                }
            },
            "components:" => match indent {
                2 => sub = trimmed,
                4 if sub == "schemas:" => {
                    schema = trimmed.trim_end_matches(':').to_string();
                    doc.properties.insert(schema.clone(), BTreeSet::new());
                    in_props = false;
                }
                6 if sub == "schemas:" => in_props = trimmed == "properties:",
                8 if sub == "schemas:" && in_props => {
                    if let Some(props) = doc.properties.get_mut(&schema) {
                        props.insert(trimmed.trim_end_matches(':').to_string());
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    doc
}

fn document() -> Document {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../resources/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    scan(&text)
}

#[test]
fn api_openapi_lists_the_same_routes() {
    let doc = document();
    let server = doc.server_url.as_deref().unwrap_or_default();
    assert!(server.ends_with(API_PREFIX), "server url {server:?}");
    let documented: BTreeSet<_> = doc.operations.keys().cloned().collect();
    let served: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| (r.method.as_str().to_string(), r.path.to_string()))
        .collect();
    assert_eq!(
        documented, served,
        "openapi.yaml (left) and ROUTES (right) differ"
    );
}

#[test]
fn api_openapi_bodies_and_queries_match_the_code() {
    let doc = document();
    for route in ROUTES {
        let key = (route.method.as_str().to_string(), route.path.to_string());
        let Some(op) = doc.operations.get(&key) else {
            panic!("{key:?} is not documented");
        };
        assert_eq!(op.wait, route.wait, "{key:?}: ?wait parameter");
        match route.body {
            None => assert!(
                op.schema.is_none(),
                "{key:?} documents a body it does not take"
            ),
            Some(body) => {
                assert_eq!(
                    op.schema.as_deref(),
                    Some(body.name),
                    "{key:?}: body schema"
                );
                assert_eq!(
                    op.body_required,
                    Some(body.required),
                    "{key:?}: requestBody.required"
                );
                let documented = doc.properties.get(body.name).cloned().unwrap_or_default();
                let served: BTreeSet<String> =
                    (body.fields)().iter().map(|f| f.to_string()).collect();
                assert_eq!(documented, served, "{}: properties", body.name);
            }
        }
    }
}

#[test]
fn api_openapi_scanner_reads_the_layout() {
    let doc = scan(
        "paths:\n  /a:\n    put:\n      parameters:\n        - $ref: '#/components/parameters/Wait'\n      requestBody:\n        required: true\n        content:\n          application/json:\n            schema:\n              $ref: '#/components/schemas/A'\n      responses:\n        '200':\n          $ref: '#/components/schemas/B'\ncomponents:\n  schemas:\n    A:\n      properties:\n        x:\n          type: integer\n",
    );
    let op = &doc.operations[&("PUT".to_string(), "/a".to_string())];
    assert_eq!(
        (op.schema.as_deref(), op.body_required, op.wait),
        (Some("A"), Some(true), true)
    );
    assert_eq!(doc.properties["A"], BTreeSet::from(["x".to_string()]));
}
