//! The ELF vmlinux inside a bzImage, extracted once on the host and cached by content.
//!
//! A bzImage is a small decompressor plus the compressed kernel (its *payload*). Booted as
//! a bzImage, the guest decompresses the payload itself at every boot, on vCPUs that may be
//! slow (nested or emulated); the host can do that once instead. [`extract`] reads the
//! payload's place from the setup header (boot protocol 2.08+: `payload_offset` at 0x248,
//! `payload_length` at 0x24c), identifies its compression by magic, decompresses it, checks
//! it is an ELF64 x86-64 executable and keeps it as `<cache dir>/vmlinux-<sha256 of the
//! bzImage>`, written atomically. Later boots of the same bzImage find it there.
//!
//! The bzImage is untrusted input: every offset and length is checked against the file's
//! size, and the decompressed size is bounded by [`MAX_VMLINUX_SIZE`].

use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

/// The largest vmlinux accepted (a distribution kernel's is under 100 MiB): a hostile payload
/// cannot make plugvm fill memory or the cache's disk.
pub const MAX_VMLINUX_SIZE: u64 = 512 << 20;

/// The setup header fields read (offsets from the start of the file).
const SETUP_SECTS: usize = 0x1f1;
const HDR_MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
const HEADER_END: usize = 0x250;
/// The first boot protocol with `payload_offset` and `payload_length`.
const MIN_VERSION: u16 = 0x0208;
/// The XZ decoder's memory limit in KiB: the kernel's XZ uses a 32 MiB dictionary, and a
/// hostile header must not make the decoder allocate gigabytes.
const XZ_MEM_LIMIT_KB: u32 = 128 * 1024;

/// The payload compressions plugvm decompresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// XZ (with the x86 BCJ filter, as `scripts/xz_wrap.sh` makes it): Debian's choice.
    Xz,
    /// gzip.
    Gzip,
    /// Zstandard.
    Zstd,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Xz => "XZ",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

impl Compression {
    /// The compression whose magic starts `head`, if plugvm knows it.
    pub fn from_magic(head: &[u8]) -> Option<Compression> {
        if head.starts_with(b"\xfd7zXZ\x00") {
            Some(Compression::Xz)
        } else if head.starts_with(b"\x1f\x8b") {
            Some(Compression::Gzip)
        } else if head.starts_with(b"\x28\xb5\x2f\xfd") {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// Why no vmlinux came out of a bzImage.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// Reading the bzImage failed.
    #[error("cannot read it: {0}")]
    Read(#[source] io::Error),
    /// Shorter than a setup header.
    #[error("{size} bytes is too short for a bzImage setup header")]
    TooShort {
        /// The file's size.
        size: u64,
    },
    /// No `HdrS` magic at 0x202.
    #[error("no bzImage setup header (HdrS magic)")]
    NotBzImage,
    /// A boot protocol without the payload fields.
    #[error("boot protocol {}.{:02} predates 2.08, which gives the payload's place", .version >> 8, .version & 0xff)]
    OldProtocol {
        /// `version` (0x0207 is 2.07).
        version: u16,
    },
    /// The payload lies (partly) outside the file.
    #[error("the setup header puts the payload at {offset:#x}, {length} bytes, past the end of the file ({file_size} bytes)")]
    PayloadOutOfFile {
        /// Offset of the payload in the file.
        offset: u64,
        /// `payload_length`.
        length: u64,
        /// The file's size.
        file_size: u64,
    },
    /// `payload_length` too small to hold a compressed kernel.
    #[error("the setup header gives an empty payload ({length} bytes)")]
    EmptyPayload {
        /// `payload_length`.
        length: u64,
    },
    /// A compression plugvm does not decompress (LZ4, LZO, bzip2, LZMA...).
    #[error("the payload's compression is not one plugvm decompresses (magic {magic:02x?})")]
    UnknownCompression {
        /// The payload's first bytes.
        magic: Vec<u8>,
    },
    /// The payload claims a known compression but does not decompress.
    #[error("the {compression} payload does not decompress: {source}")]
    Decompress {
        /// What the magic said.
        compression: Compression,
        /// The decoder's complaint.
        source: io::Error,
    },
    /// The payload decompresses to more than the limit.
    #[error("the payload decompresses to more than {limit} bytes")]
    TooLarge {
        /// The limit ([`MAX_VMLINUX_SIZE`] outside tests).
        limit: u64,
    },
    /// The payload is not an ELF64 x86-64 executable.
    #[error("the payload is not an ELF64 x86-64 executable: {0}")]
    NotElf(&'static str),
}

impl ExtractError {
    /// Whether this bzImage is fine to boot as it is: it is well formed but plugvm cannot
    /// extract from it (an older protocol, a compression it does not decode). Every other
    /// error is a corrupt file, which the guest's own decompressor would fail on too.
    pub fn boot_as_bzimage(&self) -> bool {
        matches!(
            self,
            ExtractError::OldProtocol { .. } | ExtractError::UnknownCompression { .. }
        )
    }
}

/// The extracted kernel.
#[derive(Debug)]
pub enum Vmlinux {
    /// In the cache: boot this file.
    Cached(PathBuf),
    /// Not cached (no cache directory, or it cannot be written): the image itself.
    InMemory(Vec<u8>),
}

/// Where the compressed kernel lies in a bzImage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

fn le16(head: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([head[at], head[at + 1]])
}

fn le32(head: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]])
}

/// Finds the payload from the start of a bzImage (`head`, at least its first 0x250 bytes
/// when the file is that long) and the file's size.
pub fn parse_header(head: &[u8], file_size: u64) -> Result<Payload, ExtractError> {
    if head.len() < HEADER_END {
        return Err(ExtractError::TooShort { size: file_size });
    }
    if head[HDR_MAGIC..HDR_MAGIC + 4] != *b"HdrS" {
        return Err(ExtractError::NotBzImage);
    }
    let version = le16(head, VERSION);
    if version < MIN_VERSION {
        return Err(ExtractError::OldProtocol { version });
    }
    // `payload_offset` counts from the protected-mode code, after the boot sector and the
    // setup sectors (0 meaning 4, for old kernels).
    let setup_sects = match head[SETUP_SECTS] {
        0 => 4,
        n => u64::from(n),
    };
    let offset = (setup_sects + 1) * 512 + u64::from(le32(head, PAYLOAD_OFFSET));
    let length = u64::from(le32(head, PAYLOAD_LENGTH));
    // u32 + u32 sums cannot overflow a u64.
    if offset + length > file_size {
        return Err(ExtractError::PayloadOutOfFile {
            offset,
            length,
            file_size,
        });
    }
    // Shorter than any compression's header and trailer: nothing to decompress.
    if length < 16 {
        return Err(ExtractError::EmptyPayload { length });
    }
    Ok(Payload { offset, length })
}

/// Decompresses `input` as `compression`, refusing more than `limit` bytes of output.
pub fn decompress(
    input: impl Read,
    compression: Compression,
    limit: u64,
) -> Result<Vec<u8>, ExtractError> {
    let err = |source| ExtractError::Decompress {
        compression,
        source,
    };
    let decoder: Box<dyn Read> = match compression {
        Compression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(
            input,
            false,
            XZ_MEM_LIMIT_KB,
        )),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(input)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e)))?,
        ),
    };
    let mut out = Vec::new();
    // One byte past the limit tells a payload of exactly `limit` bytes from a larger one.
    decoder
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(err)?;
    if out.len() as u64 > limit {
        return Err(ExtractError::TooLarge { limit });
    }
    Ok(out)
}

/// Checks that `image` starts with an ELF64 little-endian x86-64 executable's header.
pub fn check_elf(image: &[u8]) -> Result<(), ExtractError> {
    if image.len() < 64 {
        return Err(ExtractError::NotElf("shorter than an ELF header"));
    }
    if image[..4] != *b"\x7fELF" {
        return Err(ExtractError::NotElf("no ELF magic"));
    }
    if image[4] != 2 || image[5] != 1 {
        return Err(ExtractError::NotElf("not 64-bit little-endian"));
    }
    if le16(image, 16) != 2 {
        return Err(ExtractError::NotElf("not an executable (ET_EXEC)"));
    }
    if le16(image, 18) != 0x3e {
        return Err(ExtractError::NotElf("not for x86-64"));
    }
    Ok(())
}

/// Whether `path` holds a (cached) ELF64 x86-64 executable.
fn is_cached_elf(path: &Path) -> bool {
    let mut head = [0u8; 64];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && check_elf(&head).is_ok()
}

/// The SHA-256 of `file`'s contents, in hex.
fn sha256_hex(file: &mut File) -> io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let (mut hasher, mut reader) = (Sha256::new(), io::BufReader::with_capacity(1 << 16, file));
    // (sha2 0.11 has no `io::Write` to `io::copy` into.)
    while let n @ 1.. = reader.fill_buf()?.len() {
        hasher.update(reader.buffer());
        reader.consume(n);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Writes `bytes` to `path` through a temporary file in the same directory, renamed over
/// `path` once complete and synced: a concurrent reader, or a later boot after a crash,
/// sees the whole file or none.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Extracts the vmlinux of the bzImage at `bzimage`, through the cache in `cache_dir` when
/// given.
///
/// A cached vmlinux (the file exists and is an ELF) is used without decompressing anything.
/// A cache that cannot be created or written is only a warning: the vmlinux is then
/// returned in memory.
pub fn extract(bzimage: &Path, cache_dir: Option<&Path>) -> Result<Vmlinux, ExtractError> {
    extract_with_limit(bzimage, cache_dir, MAX_VMLINUX_SIZE)
}

fn extract_with_limit(
    bzimage: &Path,
    cache_dir: Option<&Path>,
    limit: u64,
) -> Result<Vmlinux, ExtractError> {
    let mut file = File::open(bzimage).map_err(ExtractError::Read)?;
    let file_size = file.metadata().map_err(ExtractError::Read)?.len();
    let mut head = Vec::with_capacity(HEADER_END);
    (&mut file)
        .take(HEADER_END as u64)
        .read_to_end(&mut head)
        .map_err(ExtractError::Read)?;
    let payload = parse_header(&head, file_size)?;
    let mut magic = [0u8; 6];
    file.seek(SeekFrom::Start(payload.offset))
        .and_then(|_| file.read_exact(&mut magic))
        .map_err(ExtractError::Read)?;
    let compression =
        Compression::from_magic(&magic).ok_or_else(|| ExtractError::UnknownCompression {
            magic: magic.to_vec(),
        })?;

    let cached = match cache_dir {
        Some(dir) => {
            let name = format!(
                "vmlinux-{}",
                sha256_hex(&mut file).map_err(ExtractError::Read)?
            );
            Some(dir.join(name))
        }
        None => None,
    };
    if let Some(path) = cached.as_deref().filter(|p| is_cached_elf(p)) {
        tracing::debug!(
            bzimage = %bzimage.display(),
            vmlinux = %path.display(),
            "vmlinux cache hit"
        );
        return Ok(Vmlinux::Cached(path.to_owned()));
    }

    let whereto = cached.as_deref().map_or("not cached".into(), |p| {
        format!("cached at {}", p.display())
    });
    tracing::info!(
        "extracting vmlinux from bzImage {} ({whereto})",
        bzimage.display()
    );
    let start = Instant::now();
    file.seek(SeekFrom::Start(payload.offset))
        .map_err(ExtractError::Read)?;
    let image = decompress(
        io::BufReader::new(file.take(payload.length)),
        compression,
        limit,
    )?;
    check_elf(&image)?;
    tracing::info!(
        %compression,
        bytes = image.len(),
        ms = start.elapsed().as_millis() as u64,
        "vmlinux extracted"
    );

    let Some(path) = cached else {
        return Ok(Vmlinux::InMemory(image));
    };
    let stored = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| write_atomically(&path, &image));
    match stored {
        Ok(()) => Ok(Vmlinux::Cached(path)),
        Err(e) => {
            tracing::warn!(
                "cannot cache the vmlinux at {}: {e}; booting it from memory",
                path.display()
            );
            Ok(Vmlinux::InMemory(image))
        }
    }
}

#[cfg(test)]
#[path = "kernel_cache_tests.rs"]
mod tests;
