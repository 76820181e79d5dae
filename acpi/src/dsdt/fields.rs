//! AML `Field`s generated from a register layout: names, byte offsets and bit widths in,
//! a `Field` with `Offset()` gaps out, checked for overlap and for fitting the region.
//!
//! This is how the AML stays tied to [`crate::layout`]: no offset is written twice.

use acpi_tables::aml::{Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule};

use crate::aml_ext::path;
use crate::Error;

/// One named field unit: `bit_offset` from the start of the region, `bits` wide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldUnit {
    pub name: String,
    pub bit_offset: u64,
    pub bits: u64,
}

impl FieldUnit {
    /// A register of `bytes` bytes at byte `offset`.
    pub(crate) fn register(name: impl Into<String>, offset: u64, bytes: u64) -> Self {
        FieldUnit {
            name: name.into(),
            bit_offset: offset * 8,
            bits: bytes * 8,
        }
    }
}

/// `Field (region, access, NoLock, update) { ... }` holding `units` (in any order) of a
/// region `region_bytes` long, with reserved gaps between them.
pub(crate) fn field(
    region: &str,
    access: FieldAccessType,
    update: FieldUpdateRule,
    region_bytes: u64,
    units: &[FieldUnit],
) -> Result<Field, Error> {
    let mut units = units.to_vec();
    units.sort_by_key(|u| u.bit_offset);
    let mut entries = Vec::with_capacity(units.len() * 2);
    let mut at = 0u64;
    for u in &units {
        let name: [u8; 4] = u
            .name
            .as_bytes()
            .try_into()
            .map_err(|_| Error::InvalidName(u.name.clone()))?;
        path(&u.name)?;
        if u.bit_offset < at {
            return Err(Error::InvalidLayout(format!(
                "{} at bit {} overlaps the previous field (ends at bit {at})",
                u.name, u.bit_offset
            )));
        }
        if u.bits == 0 {
            return Err(Error::InvalidLayout(format!("{} has no bits", u.name)));
        }
        if u.bit_offset > at {
            entries.push(FieldEntry::Reserved(to_usize(u.bit_offset - at)?));
        }
        entries.push(FieldEntry::Named(name, to_usize(u.bits)?));
        at = u.bit_offset + u.bits;
    }
    if at > region_bytes * 8 {
        return Err(Error::InvalidLayout(format!(
            "fields of {region} end at bit {at}, past its {region_bytes} bytes"
        )));
    }
    Ok(Field::new(
        path(region)?,
        access,
        FieldLockRule::NoLock,
        update,
        entries,
    ))
}

fn to_usize(bits: u64) -> Result<usize, Error> {
    usize::try_from(bits).map_err(|_| Error::InvalidLayout(format!("{bits} bits")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aml_ext::bytes;

    #[test]
    fn gaps_become_offsets_and_match_iasl() {
        // Field (REGS, DWordAcc, NoLock, WriteAsZeros)
        // {
        //     AAAA,   32,
        //     Offset (0x08),
        //     BBBB,   32
        // }
        let iasl = [
            0x5b, 0x81, 0x12, 0x52, 0x45, 0x47, 0x53, 0x43, 0x41, 0x41, 0x41, 0x41, 0x20, 0x00,
            0x20, 0x42, 0x42, 0x42, 0x42, 0x20,
        ];
        let f = field(
            "REGS",
            FieldAccessType::DWord,
            FieldUpdateRule::WriteAsZeroes,
            12,
            &[
                FieldUnit::register("BBBB", 8, 4),
                FieldUnit::register("AAAA", 0, 4),
            ],
        )
        .unwrap();
        assert_eq!(bytes(&f), iasl);
    }

    #[test]
    fn rejects_overlap_overrun_and_bad_names() {
        let dword = FieldAccessType::DWord;
        let wz = FieldUpdateRule::WriteAsZeroes;
        let a = FieldUnit::register("AAAA", 0, 4);
        let b = FieldUnit::register("BBBB", 2, 4);
        assert!(matches!(
            field("REGS", dword, wz, 8, &[a.clone(), b]),
            Err(Error::InvalidLayout(_))
        ));
        assert!(matches!(
            field("REGS", dword, wz, 3, &[a]),
            Err(Error::InvalidLayout(_))
        ));
        let bad = FieldUnit::register("AAA", 0, 4);
        assert!(matches!(
            field("REGS", dword, wz, 8, &[bad]),
            Err(Error::InvalidName(_))
        ));
    }
}
