//! The root pointers: RSDP (revision 2, XSDT only) and XSDT.

use acpi_tables::rsdp::Rsdp;
use acpi_tables::Aml;

use crate::sdt::{self, Put, HEADER_LEN, OEM_ID};

/// Size of a revision 2 RSDP.
pub(crate) const RSDP_LEN: usize = 36;

/// Size of an XSDT with `entries` table pointers.
pub(crate) fn xsdt_len(entries: usize) -> usize {
    HEADER_LEN + 8 * entries
}

/// The RSDP pointing at the XSDT; the RSDT address stays 0 (ACPI 2.0+ OSes use the XSDT).
pub(crate) fn build_rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(RSDP_LEN);
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut bytes);
    bytes
}

/// The XSDT listing `tables` (the DSDT is reached through the FADT, not listed here).
pub(crate) fn build_xsdt(tables: &[u64]) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 * tables.len());
    for addr in tables {
        body.u64(*addr);
    }
    sdt::table(*b"XSDT", 1, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{le32, le64, sum};

    #[test]
    fn rsdp_points_at_xsdt() {
        let r = build_rsdp(0xe0030);
        assert_eq!(r.len(), RSDP_LEN);
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(&r), 0, "extended checksum");
        assert_eq!(r[15], 2, "revision");
        assert_eq!(le32(&r, 16), 0, "no RSDT");
        assert_eq!(le32(&r, 20), RSDP_LEN as u32);
        assert_eq!(le64(&r, 24), 0xe0030);
    }

    #[test]
    fn xsdt_lists_tables() {
        let x = build_xsdt(&[0x1000, 0x2000]);
        assert_eq!(x.len(), xsdt_len(2));
        assert_eq!(sum(&x), 0);
        assert_eq!(le64(&x, 36), 0x1000);
        assert_eq!(le64(&x, 44), 0x2000);
    }
}
