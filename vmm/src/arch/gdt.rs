//! The boot GDT: flat 64-bit code, data and TSS descriptors, and their KVM segment form.

use kvm_bindings::kvm_segment;

/// Builds a GDT descriptor from its flags, base and limit (the packing the SDM describes).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

fn bits(entry: u64, shift: u32, mask: u64) -> u64 {
    (entry >> shift) & mask
}

/// The KVM segment register value for GDT `entry` at `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = (bits(entry, 56, 0xff) << 24) | bits(entry, 16, 0xff_ffff);
    let limit_raw = (bits(entry, 48, 0xf) << 16) | bits(entry, 0, 0xffff);
    let g = bits(entry, 55, 1) as u8;
    let limit = if g == 0 {
        limit_raw
    } else {
        (limit_raw << 12) | 0xfff
    };
    let present = bits(entry, 47, 1) as u8;
    kvm_segment {
        base,
        limit: limit as u32,
        selector: u16::from(index) * 8,
        type_: bits(entry, 40, 0xf) as u8,
        present,
        dpl: bits(entry, 45, 0x3) as u8,
        db: bits(entry, 54, 1) as u8,
        s: bits(entry, 44, 1) as u8,
        l: bits(entry, 53, 1) as u8,
        g,
        avl: bits(entry, 52, 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_flat() {
        let cs = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(cs.selector, 8);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.g), (1, 0, 1, 1, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn null_segment_is_unusable_and_fields_round_trip() {
        assert_eq!(segment_from_gdt(BOOT_GDT[0], 0).unusable, 1);
        let e = gdt_entry(0x008b, 0x1234_5678, 0xabcde);
        let s = segment_from_gdt(e, 3);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.type_, 0xb);
        assert_eq!(s.selector, 24);
    }
}
