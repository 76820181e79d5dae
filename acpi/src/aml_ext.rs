//! AML pieces acpi_tables 0.2 lacks, and a fallible path constructor.
//!
//! Each type keeps the ASL it encodes and is checked against iasl's bytes in the tests.

use acpi_tables::aml::Path;
use acpi_tables::{Aml, AmlSink};

use crate::Error;

const LANDOP: u8 = 0x90;
const BREAKOP: u8 = 0xa5;
const INCREMENTOP: u8 = 0x75;
/// Large resource descriptor tag: QWord Address Space Descriptor.
const QWORD_ADDRESS_SPACE: u8 = 0x8a;

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

/// A QWord Address Space Descriptor for a fixed memory range consumed by the device:
/// `QWordMemory (ResourceConsumer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadWrite,
/// 0, min, min + len - 1, 0, len)`.
///
/// acpi_tables' `AddressSpace` always writes ResourceProducer; a memory device consumes
/// its range. The `*_OFFSET` constants are the byte offsets of the 64-bit fields, for
/// `CreateQWordField` when the descriptor is the first item of a resource template.
pub(crate) struct QWordMemory {
    min: u64,
    len: u64,
}

impl QWordMemory {
    /// Payload length (bytes after the 3-byte tag and length).
    const PAYLOAD_LEN: u16 = 43;
    /// Resource type 0: memory range.
    const TYPE_MEMORY: u8 = 0;
    /// General flags: bit 0 consumer, bit 1 clear (positive decode), bit 2 min fixed,
    /// bit 3 max fixed.
    const GENERAL_FLAGS: u8 = (1 << 0) | (1 << 2) | (1 << 3);
    /// Type-specific flags: bit 0 read/write, bits 1-2 = 1 cacheable, memory type
    /// AddressRangeMemory, no translation.
    const MEMORY_FLAGS: u8 = (1 << 0) | (1 << 1);
    /// Byte offset of the range minimum (`_MIN`).
    pub(crate) const MIN_OFFSET: u8 = 14;
    /// Byte offset of the range maximum (`_MAX`).
    pub(crate) const MAX_OFFSET: u8 = 22;
    /// Byte offset of the range length (`_LEN`).
    pub(crate) const LEN_OFFSET: u8 = 38;

    /// The range `min .. min + len`; `None` if it is empty or wraps.
    pub(crate) fn new(min: u64, len: u64) -> Option<Self> {
        min.checked_add(len.checked_sub(1)?)?;
        Some(QWordMemory { min, len })
    }
}

impl Aml for QWordMemory {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(QWORD_ADDRESS_SPACE);
        sink.word(Self::PAYLOAD_LEN);
        sink.byte(Self::TYPE_MEMORY);
        sink.byte(Self::GENERAL_FLAGS);
        sink.byte(Self::MEMORY_FLAGS);
        sink.qword(0); // granularity
        sink.qword(self.min);
        // `new` checked that this does not wrap.
        sink.qword(self.min.wrapping_add(self.len - 1));
        sink.qword(0); // translation offset
        sink.qword(self.len);
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
    use acpi_tables::aml::{
        Add, Arg, CreateDWordField, CreateQWordField, LessThan, Method, Name, NotEqual,
        ResourceTemplate, Return, While, ZERO,
    };

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

    #[test]
    fn qword_memory_and_create_fields_match_iasl() {
        // Name (MR64, ResourceTemplate ()
        // {
        //     QWordMemory (ResourceConsumer, PosDecode, MinFixed, MaxFixed, Cacheable,
        //         ReadWrite, 0x0, 0x100000000, 0x13FFFFFFF, 0x0, 0x40000000)
        // })
        // CreateQWordField (MR64, 0x0E, MMIN)
        // CreateDWordField (MR64, 0x16, MMAX)
        // Method (TEST, 0, NotSerialized) { Return ((MMIN + MMAX)) }
        // compiled with iasl 20200925
        let iasl = [
            0x08, 0x4d, 0x52, 0x36, 0x34, 0x11, 0x33, 0x0a, 0x30, 0x8a, 0x2b, 0x00, 0x00, 0x0d,
            0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0x3f, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x79,
            0x00, 0x8f, 0x4d, 0x52, 0x36, 0x34, 0x0a, 0x0e, 0x4d, 0x4d, 0x49, 0x4e, 0x8a, 0x4d,
            0x52, 0x36, 0x34, 0x0a, 0x16, 0x4d, 0x4d, 0x41, 0x58, 0x14, 0x11, 0x54, 0x45, 0x53,
            0x54, 0x00, 0xa4, 0x72, 0x4d, 0x4d, 0x49, 0x4e, 0x4d, 0x4d, 0x41, 0x58, 0x00,
        ];
        let mem = QWordMemory::new(1 << 32, 1 << 30).unwrap();
        let mr64 = path("MR64").unwrap();
        let mut b = bytes(&Name::new(
            path("MR64").unwrap(),
            &ResourceTemplate::new(vec![&mem]),
        ));
        let (mmin, mmax) = (path("MMIN").unwrap(), path("MMAX").unwrap());
        CreateQWordField::new(&mmin, &mr64, &QWordMemory::MIN_OFFSET).to_aml_bytes(&mut b);
        CreateDWordField::new(&mmax, &mr64, &QWordMemory::MAX_OFFSET).to_aml_bytes(&mut b);
        let sum = Add::new(&ZERO, &mmin, &mmax);
        Method::new(path("TEST").unwrap(), 0, false, vec![&Return::new(&sum)]).to_aml_bytes(&mut b);
        assert_eq!(b, iasl);
    }

    #[test]
    fn qword_memory_rejects_empty_and_wrapping_ranges() {
        assert!(QWordMemory::new(0, 0).is_none());
        assert!(QWordMemory::new(u64::MAX, 2).is_none());
        assert!(QWordMemory::new(u64::MAX, 1).is_some());
        assert!(QWordMemory::new(0, u64::MAX).is_some());
    }
}
