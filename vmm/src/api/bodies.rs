//! Reading request bodies: strict JSON parsing and field introspection.
//!
//! The body types themselves, and their checks, are in [`plugvm_remote::wire`],
//! shared with the client.

use serde::de::{self, DeserializeOwned, Visitor};

/// Parses a JSON body for `endpoint`; the error is one sentence for the client.
pub(crate) fn parse<T: DeserializeOwned>(endpoint: &str, body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(format!(
            "{endpoint} needs a JSON object as request body, got an empty body."
        ));
    }
    // Derived structs would also accept a JSON array of the fields in order.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(format!("Invalid {endpoint} body: expected a JSON object."));
    }
    serde_json::from_slice(body).map_err(|e| format!("Invalid {endpoint} body: {e}."))
}

/// Like [`parse`], but an empty body means `T::default()`.
pub(crate) fn parse_optional<T: DeserializeOwned + Default>(
    endpoint: &str,
    body: &[u8],
) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse(endpoint, body)
}

/// The field names that `T`'s derived `Deserialize` accepts, read from
/// serde itself so that the OpenAPI check cannot drift from the code.
pub(crate) fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut probe = FieldProbe { fields: &[] };
    // The probe always fails once it has seen the field list.
    let _ = T::deserialize(&mut probe);
    probe.fields
}

/// A deserializer that records the field list of the struct asked for.
struct FieldProbe {
    fields: &'static [&'static str],
}

#[derive(Debug)]
struct ProbeDone;

impl std::fmt::Display for ProbeDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for ProbeDone {}

impl de::Error for ProbeDone {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        ProbeDone
    }
}

impl<'de> de::Deserializer<'de> for &mut FieldProbe {
    type Error = ProbeDone;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ProbeDone> {
        self.fields = fields;
        Err(ProbeDone)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugvm_remote::wire::{AddVcpuBody, RemoveMemoryBody, RemoveVcpuBody, ResizeBody};

    #[test]
    fn api_field_names_come_from_serde() {
        assert_eq!(
            field_names::<ResizeBody>(),
            [
                "desired_vcpus",
                "desired_ram",
                "best_effort",
                "desired_balloon"
            ]
        );
        assert_eq!(field_names::<RemoveMemoryBody>(), ["slot"]);
    }

    #[test]
    fn api_resize_validation() {
        let parsed: ResizeBody = parse("vm.resize", br#"{"desired_vcpus": 4}"#).unwrap();
        assert!(parsed.validate().is_ok());
        let err = parse::<ResizeBody>("vm.resize", b"{}").unwrap().validate();
        assert_eq!(
            err.unwrap_err(),
            "vm.resize needs desired_vcpus, desired_ram or both."
        );
        let zero = ResizeBody {
            desired_vcpus: Some(0),
            ..Default::default()
        };
        assert!(zero.validate().unwrap_err().contains("at least 1"));
    }

    #[test]
    fn api_parse_errors_are_sentences() {
        let err = parse::<RemoveVcpuBody>("vm.remove-vcpu", br#"{"id": 1, "x": 2}"#).unwrap_err();
        assert!(
            err.starts_with("Invalid vm.remove-vcpu body: unknown field `x`"),
            "{err}"
        );
        let err = parse::<RemoveVcpuBody>("vm.remove-vcpu", br#"{"id": -1}"#).unwrap_err();
        assert!(err.contains("expected u32"), "{err}");
        let err = parse::<RemoveVcpuBody>("vm.remove-vcpu", b"{}").unwrap_err();
        assert!(err.contains("missing field `id`"), "{err}");
        let err = parse::<RemoveVcpuBody>("vm.remove-vcpu", b"  ").unwrap_err();
        assert!(err.contains("empty body"), "{err}");
        assert_eq!(
            parse_optional::<AddVcpuBody>("vm.add-vcpu", b"").unwrap(),
            AddVcpuBody::default()
        );
    }
}
