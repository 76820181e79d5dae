//! Response bodies as they go on the wire: JSON escaped to ASCII.

use std::io::{self, Write};

use super::http;
use super::ApiResponse;

/// Writes `response` to `out` as it goes on the wire: its body ([`encode_body`]), an `Allow`
/// header if given, and whether the connection stays open.
pub(crate) fn write_answer<W: Write>(
    out: &mut W,
    response: &ApiResponse,
    allow: Option<&str>,
    keep_alive: bool,
) -> io::Result<()> {
    let body = encode_body(response);
    http::write_response(
        out,
        response.status,
        body.as_ref().map(|(kind, bytes)| (*kind, bytes.as_slice())),
        allow,
        keep_alive,
    )
}

/// `{"error": message}`, as sent.
pub(super) fn error_body(message: &str) -> Vec<u8> {
    ascii_json(
        serde_json::json!({ "error": message })
            .to_string()
            .into_bytes(),
    )
}

/// The wire body of a response and its content type: none for 204 or a null body.
pub(crate) fn encode_body(response: &ApiResponse) -> Option<(&'static str, Vec<u8>)> {
    if response.status == 204 {
        return None;
    }
    if let Some(text) = &response.text {
        return Some((text.content_type, text.text.clone().into_bytes()));
    }
    if response.body.is_null() {
        return None;
    }
    Some((
        http::JSON,
        ascii_json(
            serde_json::to_vec(&response.body)
                .unwrap_or_else(|_| error_body("The response could not be encoded.")),
        ),
    ))
}

/// `json` with every non-ASCII character escaped (`\uXXXX`): Cloud Hypervisor's client
/// decodes each 256-byte read as UTF-8 on its own and fails on a character split between
/// two reads. Outside strings JSON is ASCII already, so only string contents change.
pub(crate) fn ascii_json(json: Vec<u8>) -> Vec<u8> {
    if json.is_ascii() {
        return json;
    }
    let text = String::from_utf8_lossy(&json);
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Record<'a> {
        id: u64,
        reason: &'a str,
    }

    #[test]
    fn a_body_serialized_once_goes_out_as_the_same_ascii_json() {
        let record = Record {
            id: 7,
            reason: "gerät",
        };
        let direct = ApiResponse::json_of(200, &record);
        assert_eq!(direct.status, 200);
        let (kind, bytes) = encode_body(&direct).expect("a body");
        assert_eq!(kind, http::JSON);
        assert_eq!(bytes, br#"{"id":7,"reason":"ger\u00e4t"}"#);
        // The same bytes as the tree would have given, and the same value read back.
        let tree = ApiResponse::ok(serde_json::json!({"id": 7, "reason": "gerät"}));
        assert_eq!(encode_body(&tree).map(|(_, b)| b), Some(bytes));
        assert_eq!(direct.json(), tree.json());
        assert_eq!(direct.json()["reason"], "gerät");
    }
}
