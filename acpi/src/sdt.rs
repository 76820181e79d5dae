//! The common System Description Table header and byte helpers.

use acpi_tables::sdt::Sdt;

/// OEM ID in every table header (and the RSDP).
pub(crate) const OEM_ID: [u8; 6] = *b"PLUGVM";
/// OEM table ID in every table header.
pub(crate) const OEM_TABLE_ID: [u8; 8] = *b"PLUGVM  ";
/// OEM revision in every table header.
pub(crate) const OEM_REVISION: u32 = 1;
/// Size of the common table header.
pub(crate) const HEADER_LEN: usize = 36;

/// A complete table: header with `signature` and `revision`, then `body`, checksummed.
pub(crate) fn table(signature: [u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    // HEADER_LEN satisfies Sdt::new's only assertion (length >= 36). The body is appended
    // in one piece because Sdt recomputes the checksum on every append.
    let mut sdt = Sdt::new(
        signature,
        HEADER_LEN as u32,
        revision,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.append_slice(body);
    sdt.as_slice().to_vec()
}

/// Little-endian writers for building table bodies.
pub(crate) trait Put {
    fn u8(&mut self, v: u8) -> &mut Self;
    fn u16(&mut self, v: u16) -> &mut Self;
    fn u32(&mut self, v: u32) -> &mut Self;
    fn u64(&mut self, v: u64) -> &mut Self;
}

impl Put for Vec<u8> {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.extend_from_slice(&v.to_le_bytes());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_and_checksum() {
        let t = table(*b"TEST", 3, &[1, 2, 3]);
        assert_eq!(&t[0..4], b"TEST");
        assert_eq!(u32::from_le_bytes([t[4], t[5], t[6], t[7]]), 39);
        assert_eq!(t[8], 3);
        assert_eq!(&t[10..16], b"PLUGVM");
        assert_eq!(&t[36..], &[1, 2, 3]);
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    }
}
