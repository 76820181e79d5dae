use super::*;

use std::io::Write;

use crate::api::test_util::TempDir as Scratch;

/// An ELF64 x86-64 executable header followed by `body`: what check_elf looks at.
fn fake_vmlinux(body: &[u8]) -> Vec<u8> {
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little-endian
    elf[16] = 2; // ET_EXEC
    elf[18] = 0x3e; // x86-64
    elf.extend_from_slice(body);
    elf
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut options = lzma_rust2::XzOptions::with_preset(1);
    // The kernel's XZ payloads use the x86 BCJ filter: the decoder must undo it.
    options
        .filters
        .push(lzma_rust2::FilterConfig::new_bcj_x86(0));
    let mut w = lzma_rust2::XzWriter::new(Vec::new(), options).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

/// A bzImage-shaped file: boot sector and `setup_sects` setup sectors (with the header),
/// then the protected-mode code, a few bytes of which precede the payload.
fn bzimage(payload: &[u8]) -> Vec<u8> {
    let setup_sects = 3u8;
    let pm = (usize::from(setup_sects) + 1) * 512;
    let lead = 0x40;
    let mut file = vec![0u8; pm + lead];
    file[SETUP_SECTS] = setup_sects;
    file[HDR_MAGIC..HDR_MAGIC + 4].copy_from_slice(b"HdrS");
    file[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
    file[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&(lead as u32).to_le_bytes());
    file[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    file.extend_from_slice(payload);
    // The kernel appends the decompressed size; the decoders must ignore what follows.
    file.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    file
}

fn set32(file: &mut [u8], at: usize, value: u32) {
    file[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn write(dir: &Scratch, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.0.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn header_error(file: &[u8]) -> ExtractError {
    parse_header(&file[..file.len().min(HEADER_END)], file.len() as u64).unwrap_err()
}

#[test]
fn header_gives_the_payload_after_the_setup_sectors() {
    let file = bzimage(&xz(b"x"));
    let p = parse_header(&file, file.len() as u64).unwrap();
    assert_eq!(p.offset, 4 * 512 + 0x40);
    assert_eq!(
        Compression::from_magic(&file[p.offset as usize..]),
        Some(Compression::Xz)
    );
    // setup_sects 0 means 4.
    let mut old = file.clone();
    old[SETUP_SECTS] = 0;
    old.splice(4 * 512..4 * 512, [0u8; 512]);
    assert_eq!(
        parse_header(&old, old.len() as u64).unwrap().offset,
        5 * 512 + 0x40
    );
}

#[test]
fn bad_headers_are_each_their_own_error() {
    let good = bzimage(&xz(&fake_vmlinux(b"kernel")));
    assert!(matches!(
        header_error(&good[..0x100]),
        ExtractError::TooShort { size: 0x100 }
    ));

    let mut no_magic = good.clone();
    no_magic[HDR_MAGIC] = b'X';
    assert!(matches!(header_error(&no_magic), ExtractError::NotBzImage));

    let mut old = good.clone();
    old[VERSION..VERSION + 2].copy_from_slice(&0x0207u16.to_le_bytes());
    let e = header_error(&old);
    assert!(matches!(e, ExtractError::OldProtocol { version: 0x0207 }));
    assert!(e.to_string().contains("2.07"), "{e}");
    assert!(e.boot_as_bzimage());

    // Past the end, by offset or by length, including values that would wrap a u32.
    for (field, value) in [
        (PAYLOAD_OFFSET, u32::MAX),
        (PAYLOAD_OFFSET, good.len() as u32),
        (PAYLOAD_LENGTH, u32::MAX),
        (PAYLOAD_LENGTH, good.len() as u32),
    ] {
        let mut bad = good.clone();
        set32(&mut bad, field, value);
        let e = header_error(&bad);
        assert!(
            matches!(e, ExtractError::PayloadOutOfFile { file_size, .. } if file_size == good.len() as u64),
            "{field:#x}={value:#x}: {e}"
        );
        assert!(!e.boot_as_bzimage());
    }
    // Many setup sectors push the payload out too.
    let mut bad = good.clone();
    bad[SETUP_SECTS] = 0xff;
    assert!(matches!(
        header_error(&bad),
        ExtractError::PayloadOutOfFile { .. }
    ));

    let mut empty = good.clone();
    set32(&mut empty, PAYLOAD_LENGTH, 3);
    assert!(matches!(
        header_error(&empty),
        ExtractError::EmptyPayload { length: 3 }
    ));
}

#[test]
fn each_compression_decompresses() {
    let vmlinux = fake_vmlinux(&[0x90; 10_000]);
    for (compression, packed) in [
        (Compression::Xz, xz(&vmlinux)),
        (Compression::Gzip, gzip(&vmlinux)),
        (Compression::Zstd, zstd(&vmlinux)),
    ] {
        assert_eq!(Compression::from_magic(&packed), Some(compression));
        let mut trailing = packed.clone();
        trailing.extend_from_slice(&[1, 2, 3, 4]);
        let out = decompress(&trailing[..], compression, MAX_VMLINUX_SIZE).unwrap();
        assert_eq!(out, vmlinux, "{compression:?}");
    }
}

#[test]
fn unknown_compression_boots_the_bzimage() {
    let dir = Scratch::new();
    // LZ4's legacy frame, as the kernel makes it.
    let mut payload = b"\x02\x21\x4c\x18".to_vec();
    payload.resize(64, 0);
    let p = write(&dir, "bz", &bzimage(&payload));
    let e = extract(&p, Some(&dir.0)).unwrap_err();
    assert!(matches!(e, ExtractError::UnknownCompression { .. }), "{e}");
    assert!(e.boot_as_bzimage());
    assert!(e.to_string().contains("[02, 21, 4c, 18"), "{e}");
}

#[test]
fn corrupt_payloads_are_errors() {
    let dir = Scratch::new();
    let mut garbage = b"\xfd7zXZ\x00".to_vec();
    garbage.extend(std::iter::repeat_n(0x5a, 200));
    let p = write(&dir, "garbage", &bzimage(&garbage));
    let e = extract(&p, Some(&dir.0)).unwrap_err();
    assert!(
        matches!(
            e,
            ExtractError::Decompress {
                compression: Compression::Xz,
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.boot_as_bzimage());

    // A truncated stream.
    let packed = xz(&fake_vmlinux(&[7; 5000]));
    let cut = write(&dir, "cut", &bzimage(&packed[..packed.len() / 2]));
    assert!(matches!(
        extract(&cut, None).unwrap_err(),
        ExtractError::Decompress { .. }
    ));

    // Decompresses, but to something else than a kernel.
    let text = write(&dir, "text", &bzimage(&gzip(&[b'a'; 100])));
    let e = extract(&text, Some(&dir.0)).unwrap_err();
    assert!(matches!(e, ExtractError::NotElf("no ELF magic")), "{e}");
    let mut arm = fake_vmlinux(b"");
    arm[18] = 0xb7; // aarch64
    assert!(matches!(
        check_elf(&arm),
        Err(ExtractError::NotElf("not for x86-64"))
    ));
    // Nothing was cached from those.
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("vmlinux-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn decompression_is_bounded() {
    let dir = Scratch::new();
    // 4 MiB of zeros compress to a few KiB.
    let big = fake_vmlinux(&vec![0; 4 << 20]);
    for packed in [xz(&big), gzip(&big), zstd(&big)] {
        let compression = Compression::from_magic(&packed).unwrap();
        let e = decompress(&packed[..], compression, 1 << 20).unwrap_err();
        assert!(
            matches!(e, ExtractError::TooLarge { limit } if limit == 1 << 20),
            "{e}"
        );
        // Exactly at the limit is fine.
        let exact = decompress(&packed[..], compression, big.len() as u64).unwrap();
        assert_eq!(exact.len(), big.len());
    }
    let p = write(&dir, "bz", &bzimage(&xz(&big)));
    assert!(matches!(
        extract_with_limit(&p, Some(&dir.0), 1 << 20).unwrap_err(),
        ExtractError::TooLarge { .. }
    ));
}

#[test]
fn extraction_is_cached_by_content_and_a_hit_decompresses_nothing() {
    let dir = Scratch::new();
    let cache = dir.0.join("cache/kernels");
    let vmlinux = fake_vmlinux(&[0xcc; 3000]);
    let p = write(&dir, "bz", &bzimage(&xz(&vmlinux)));
    let Vmlinux::Cached(first) = extract(&p, Some(&cache)).unwrap() else {
        panic!("not cached");
    };
    assert_eq!(std::fs::read(&first).unwrap(), vmlinux);
    let name = first.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with("vmlinux-") && name.len() == "vmlinux-".len() + 64);

    // Swap the cached file for another ELF: a hit hands it back as it is, proving that
    // nothing was decompressed nor rewritten.
    let marker = fake_vmlinux(b"the cached one");
    std::fs::write(&first, &marker).unwrap();
    let Vmlinux::Cached(second) = extract(&p, Some(&cache)).unwrap() else {
        panic!("not cached");
    };
    assert_eq!(second, first);
    assert_eq!(std::fs::read(&second).unwrap(), marker);

    // A cached file that is not an ELF (truncated, overwritten) is extracted again.
    std::fs::write(&first, b"junk").unwrap();
    let Vmlinux::Cached(third) = extract(&p, Some(&cache)).unwrap() else {
        panic!("not cached");
    };
    assert_eq!(std::fs::read(&third).unwrap(), vmlinux);

    // Another bzImage, another entry.
    let other = write(&dir, "bz2", &bzimage(&gzip(&vmlinux)));
    let Vmlinux::Cached(fourth) = extract(&other, Some(&cache)).unwrap() else {
        panic!("not cached");
    };
    assert_ne!(fourth, first);
}

#[test]
fn without_a_usable_cache_the_vmlinux_is_in_memory() {
    let dir = Scratch::new();
    let vmlinux = fake_vmlinux(&[1; 100]);
    let p = write(&dir, "bz", &bzimage(&zstd(&vmlinux)));
    assert!(matches!(extract(&p, None).unwrap(), Vmlinux::InMemory(v) if v == vmlinux));
    // The "directory" is a file: it cannot be created, which is only a warning.
    let blocker = write(&dir, "file", b"");
    let r = extract(&p, Some(&blocker.join("kernels"))).unwrap();
    assert!(matches!(r, Vmlinux::InMemory(v) if v == vmlinux));
}

#[test]
fn atomic_write_leaves_the_whole_file_or_nothing() {
    let dir = Scratch::new();
    let target = dir.0.join("vmlinux-x");
    std::fs::write(&target, b"old").unwrap();
    write_atomically(&target, b"new contents").unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("vmlinux-x")]);

    // The rename fails (a directory is in the way): the old state and no temp file remain.
    let blocked = dir.0.join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("inside"), b"").unwrap();
    assert!(write_atomically(&blocked, b"x").is_err());
    assert!(blocked.is_dir());
    let mut names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["blocked", "vmlinux-x"]);
}
