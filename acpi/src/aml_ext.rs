//! AML pieces acpi_tables 0.2 lacks, and a fallible path constructor.
//!
//! Each type keeps the ASL it encodes and is checked against iasl's bytes in the tests.

use acpi_tables::aml::Path;
use acpi_tables::{Aml, AmlSink};

use crate::Error;

const LANDOP: u8 = 0x90;
const BREAKOP: u8 = 0xa5;
const INCREMENTOP: u8 = 0x75;

/// A name path such as `\_SB_.CPUS.CSCN`: checked here because `Path::new` panics on a
/// segment that is not exactly four characters.
pub(crate) fn path(name: &str) -> Result<Path, Error> {
    let rel = name.strip_prefix('\\').unwrap_or(name);
    let valid_seg = |s: &str| {
        let b = s.as_bytes();
        b.len() == 4
            && (b[0].is_ascii_uppercase() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
    };
    if rel.split('.').all(valid_seg) {
        Ok(Path::new(name))
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// `LAnd (a, b)`: logical and.
pub(crate) struct LAnd<'a> {
    a: &'a dyn Aml,
    b: &'a dyn Aml,
}

impl<'a> LAnd<'a> {
    pub(crate) fn new(a: &'a dyn Aml, b: &'a dyn Aml) -> Self {
        LAnd { a, b }
    }
}

impl Aml for LAnd<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(LANDOP);
        self.a.to_aml_bytes(sink);
        self.b.to_aml_bytes(sink);
    }
}

/// `Break`: leaves the innermost `While`.
pub(crate) struct Break;

impl Aml for Break {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(BREAKOP);
    }
}

/// `Increment (target)`.
pub(crate) struct Increment<'a> {
    target: &'a dyn Aml,
}

impl<'a> Increment<'a> {
    pub(crate) fn new(target: &'a dyn Aml) -> Self {
        Increment { target }
    }
}

impl Aml for Increment<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(INCREMENTOP);
        self.target.to_aml_bytes(sink);
    }
}

/// Already-serialized AML, so that separately built parts can be children of a
/// `Scope`/`Device` (acpi_tables children are borrowed, which makes deep trees built in
/// several functions awkward).
pub(crate) struct Raw(pub Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// Serializes `aml` into a fresh vector.
pub(crate) fn bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpi_tables::aml::{Arg, LessThan, Method, NotEqual, While};

    #[test]
    fn path_rejects_bad_segments() {
        assert!(path("\\_SB_.CPUS.C01F").is_ok());
        assert!(path("CSCN").is_ok());
        for bad in ["\\_SB.CPUS", "C1", "CPUS.", "cpus", "1CPU", "", "\\"] {
            assert_eq!(
                path(bad).err(),
                Some(Error::InvalidName(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn while_land_break_increment_match_iasl() {
        // Method (TEST, 2, NotSerialized)
        // {
        //     While (((Arg0 != 0xFFFFFFFF) && (Arg1 < 0x10)))
        //     {
        //         Arg1++
        //         Break
        //     }
        // }
        // compiled with iasl 20200925
        let iasl = [
            0x14, 0x18, 0x54, 0x45, 0x53, 0x54, 0x02, 0xa2, 0x11, 0x90, 0x92, 0x93, 0x68, 0x0c,
            0xff, 0xff, 0xff, 0xff, 0x95, 0x69, 0x0a, 0x10, 0x75, 0x69, 0xa5,
        ];
        let m = bytes(&Method::new(
            path("TEST").unwrap(),
            2,
            false,
            vec![&While::new(
                &LAnd::new(
                    &NotEqual::new(&Arg(0), &0xffff_ffffu32),
                    &LessThan::new(&Arg(1), &0x10u32),
                ),
                vec![&Increment::new(&Arg(1)), &Break],
            )],
        ));
        assert_eq!(m, iasl);
    }
}
