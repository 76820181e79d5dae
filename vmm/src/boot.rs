//! Loading the guest: kernel (bzImage or ELF vmlinux), initramfs, command line, the zero page
//! with its E820 map, and the ACPI tables.
//!
//! A bzImage is booted through the ELF vmlinux inside it, extracted on the host and cached
//! ([`crate::kernel_cache`]), unless `--kernel-cache off` or plugvm cannot decompress it.

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::config::KernelCacheConfig;
use crate::kernel_cache::{self, ExtractError, Vmlinux};
use crate::memory::MemoryLayout;

/// Where the 64-bit kernel is loaded (the protected-mode kernel of a bzImage, or the lowest
/// segment an ELF vmlinux may use).
pub const HIMEM_START: u64 = 0x0010_0000;
/// Where the command line is written.
pub const CMDLINE_START: u64 = 0x0002_0000;
/// Largest command line accepted.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// End of conventional memory below the EBDA.
const EBDA_START: u64 = 0x0009_fc00;
const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;

/// Errors loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel or initramfs cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The kernel file is neither a bzImage nor an ELF vmlinux.
    #[error("{0} is not a Linux kernel (neither a bzImage nor an ELF vmlinux)")]
    NotAKernel(PathBuf),
    /// The bzImage is corrupt: its header or payload does not give a vmlinux.
    #[error("cannot extract the vmlinux from bzImage {path}: {source}")]
    Extract {
        /// The bzImage.
        path: PathBuf,
        /// What is wrong with it.
        source: ExtractError,
    },
    /// linux-loader refused the kernel.
    #[error("cannot load kernel {path}: {source}")]
    LoadKernel {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: loader::Error,
    },
    /// The initramfs does not fit in guest RAM below the kernel's limit.
    #[error("initramfs {path} ({size} bytes) does not fit in guest RAM")]
    InitramfsTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing into guest memory failed.
    #[error("cannot write the {what} into guest memory: {source}")]
    GuestMemory {
        /// What was written.
        what: &'static str,
        /// Cause.
        source: vm_memory::GuestMemoryError,
    },
    /// Writing the command line failed.
    #[error("cannot write the kernel command line: {0}")]
    WriteCmdline(loader::Error),
}

/// What the boot vCPU needs to start the kernel.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// 64-bit entry point.
    pub entry: u64,
    /// First address past the loaded kernel.
    pub end: u64,
    /// Setup header of a bzImage (`None` for an ELF vmlinux).
    pub setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KernelFormat {
    BzImage,
    Elf,
}

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Read {
        path: path.to_owned(),
        source,
    })
}

fn detect_format(file: &mut File, path: &Path) -> Result<KernelFormat, BootError> {
    let read_err = |source| BootError::Read {
        path: path.to_owned(),
        source,
    };
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]).map_err(read_err)? {
            0 => break,
            k => n += k,
        }
    }
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::NotAKernel(path.to_owned()))
}

/// Loads the kernel at [`HIMEM_START`]. A bzImage's vmlinux is extracted and booted instead,
/// through the cache `cache` names, unless it is off.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    cache: &KernelCacheConfig,
) -> Result<LoadedKernel, BootError> {
    let mut file = open(path)?;
    let format = detect_format(&mut file, path)?;
    if format == KernelFormat::BzImage && cache.enabled() {
        match kernel_cache::extract(path, cache.dir().as_deref()) {
            Ok(Vmlinux::Cached(vmlinux)) => {
                tracing::info!(
                    "booting the vmlinux extracted from bzImage {} ({})",
                    path.display(),
                    vmlinux.display()
                );
                let mut file = open(&vmlinux)?;
                return load_image(mem, &vmlinux, &mut file, KernelFormat::Elf);
            }
            Ok(Vmlinux::InMemory(image)) => {
                tracing::info!(
                    "booting the vmlinux extracted from bzImage {} (in memory)",
                    path.display()
                );
                return load_image(mem, path, &mut Cursor::new(image), KernelFormat::Elf);
            }
            // Well formed, but not something plugvm extracts: the guest's decompressor can.
            Err(e) if e.boot_as_bzimage() => {
                tracing::info!("booting {} as a bzImage: {e}", path.display());
            }
            Err(source) => {
                return Err(BootError::Extract {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
    load_image(mem, path, &mut file, format)
}

/// Loads `image` (read from `path`) as `format`.
fn load_image<F: Read + ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    path: &Path,
    image: &mut F,
    format: KernelFormat,
) -> Result<LoadedKernel, BootError> {
    let load_err = |source| BootError::LoadKernel {
        path: path.to_owned(),
        source,
    };
    let highmem = Some(GuestAddress(HIMEM_START));
    let result = match format {
        KernelFormat::BzImage => BzImage::load(mem, None, image, highmem).map_err(load_err)?,
        KernelFormat::Elf => Elf::load(mem, None, image, highmem).map_err(load_err)?,
    };
    let entry = match format {
        KernelFormat::BzImage => result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        KernelFormat::Elf => result.kernel_load.0,
    };
    tracing::info!(?format, entry = format_args!("{entry:#x}"), "kernel loaded");
    Ok(LoadedKernel {
        entry,
        end: result.kernel_end,
        setup_header: result.setup_header,
    })
}

/// Where an initramfs was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitramfsPlacement {
    /// Guest address.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Chooses the initramfs address: as high as possible in low RAM, page aligned, below the
/// kernel's `initrd_addr_max` and above the kernel.
pub fn place_initramfs(
    size: u64,
    low_ram_end: u64,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Option<u64> {
    let top = low_ram_end.min(initrd_addr_max.saturating_add(1));
    let address = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (address >= kernel_end).then_some(address)
}

/// Copies the initramfs into guest RAM.
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    layout: &MemoryLayout,
    kernel: &LoadedKernel,
) -> Result<InitramfsPlacement, BootError> {
    let mut file = open(path)?;
    let read_err = |source| BootError::Read {
        path: path.to_owned(),
        source,
    };
    let size = file.seek(SeekFrom::End(0)).map_err(read_err)?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let initrd_max = kernel
        .setup_header
        .map_or(0x7fff_ffff, |h| u64::from(h.initrd_addr_max));
    let address =
        place_initramfs(size, layout.low_ram_end(), kernel.end, initrd_max).ok_or_else(|| {
            BootError::InitramfsTooLarge {
                path: path.to_owned(),
                size,
            }
        })?;
    let len = usize::try_from(size).map_err(|_| BootError::InitramfsTooLarge {
        path: path.to_owned(),
        size,
    })?;
    mem.read_exact_volatile_from(GuestAddress(address), &mut file, len)
        .map_err(|source| BootError::GuestMemory {
            what: "initramfs",
            source,
        })?;
    Ok(InitramfsPlacement { address, size })
}

/// The parameter that keeps Linux from reserving a swiotlb bounce buffer.
pub const NO_SWIOTLB: &str = "swiotlb=noforce";

/// The command line the guest gets: the user's, plus [`NO_SWIOTLB`] when guest memory can
/// reach above 4 GiB (`memory_above_4g`) and the user said nothing of swiotlb.
///
/// Linux x86 reserves a 64 MiB bounce buffer for 32-bit DMA whenever memory can reach above
/// 4 GiB, hotpluggable memory in the SRAT included: a 512 MiB guest with a hotplug region lost
/// an eighth of its RAM to it. No plugvm device does DMA, so the buffer can never be used.
pub fn guest_cmdline(user: &str, memory_above_4g: bool) -> String {
    let mentions_swiotlb = user
        .split_ascii_whitespace()
        .any(|p| p.starts_with("swiotlb="));
    let fits = user.len() + 1 + NO_SWIOTLB.len() < CMDLINE_MAX_SIZE;
    if !memory_above_4g || mentions_swiotlb || !fits {
        return user.to_string();
    }
    if user.trim().is_empty() {
        NO_SWIOTLB.to_string()
    } else {
        format!("{user} {NO_SWIOTLB}")
    }
}

/// Writes the command line at [`CMDLINE_START`] and returns its length.
pub fn load_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, BootError> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    c.insert_str(cmdline).map_err(BootError::Cmdline)?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &c).map_err(BootError::WriteCmdline)?;
    Ok(cmdline.len())
}

/// The E820 map: conventional memory below the EBDA, then boot RAM from 1 MiB (the BIOS area
/// in between holds the ACPI tables and stays out of the map).
pub fn e820_map(layout: &MemoryLayout) -> Vec<boot_e820_entry> {
    let mut map = vec![boot_e820_entry {
        addr: 0,
        size: EBDA_START,
        r#type: E820_RAM,
    }];
    for r in &layout.ram {
        let base = r.base.max(HIMEM_START);
        if r.end() > base {
            map.push(boot_e820_entry {
                addr: base,
                size: r.end() - base,
                r#type: E820_RAM,
            });
        }
    }
    map
}

/// Everything the zero page says.
#[derive(Clone, Copy, Debug)]
pub struct ZeroPageInputs<'a> {
    /// The loaded kernel.
    pub kernel: &'a LoadedKernel,
    /// Command line length (written at [`CMDLINE_START`]).
    pub cmdline_len: usize,
    /// The initramfs, if any.
    pub initramfs: Option<InitramfsPlacement>,
    /// RSDP address.
    pub rsdp: u64,
}

/// Builds `boot_params` for the 64-bit boot protocol.
pub fn build_zero_page(
    inputs: ZeroPageInputs<'_>,
    layout: &MemoryLayout,
) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = inputs.kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = inputs.cmdline_len as u32 + 1;
    if let Some(initrd) = inputs.initramfs {
        params.hdr.ramdisk_image = initrd.address as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = inputs.rsdp;
    let map = e820_map(layout);
    if map.len() > params.e820_table.len() {
        return Err(BootError::GuestMemory {
            what: "E820 map",
            source: vm_memory::GuestMemoryError::InvalidBackendAddress,
        });
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = *e;
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page at `address`.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    params: &boot_params,
    address: u64,
) -> Result<(), BootError> {
    mem.write_obj(*params, GuestAddress(address))
        .map_err(|source| BootError::GuestMemory {
            what: "zero page",
            source,
        })
}

/// Where a PC starts after reset (F000:FFF0), and where Linux jumps for a BIOS reboot.
pub const RESET_VECTOR: u64 = 0xffff0;

/// Real-mode code for the reset vector: writes the ACPI reset value to the reset register,
/// then halts. There is no BIOS behind plugvm, yet Linux ends up here: on hardware-reduced
/// ACPI it prefers an EFI reboot, and with no EFI it falls back to jumping to the BIOS reset
/// vector (`reboot=bios`), which would otherwise run whatever bytes lie there forever.
pub fn reset_vector_stub() -> Vec<u8> {
    use acpi::layout::power::{RESET_PORT, RESET_VALUE};
    let port = RESET_PORT.to_le_bytes();
    vec![
        0xb0,
        RESET_VALUE, // mov al, RESET_VALUE
        0xba,
        port[0],
        port[1], // mov dx, RESET_PORT
        0xee,    // out dx, al
        0xf4,    // hlt
        0xeb,
        0xfd, // jmp back to hlt
    ]
}

/// Writes [`reset_vector_stub`] at [`RESET_VECTOR`].
pub fn write_reset_vector(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_slice(&reset_vector_stub(), GuestAddress(RESET_VECTOR))
        .map_err(|source| BootError::GuestMemory {
            what: "reset vector",
            source,
        })
}

/// Writes every ACPI table at its address.
pub fn write_acpi_tables(
    mem: &GuestMemoryMmap,
    tables: &acpi::AcpiTables,
) -> Result<(), BootError> {
    for t in &tables.tables {
        mem.write_slice(&t.bytes, GuestAddress(t.address))
            .map_err(|source| BootError::GuestMemory {
                what: "ACPI tables",
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn swiotlb_is_turned_off_only_where_linux_would_force_it() {
        let base = "console=ttyS0 panic=-1 pci=off";
        assert_eq!(guest_cmdline(base, false), base);
        assert_eq!(guest_cmdline(base, true), format!("{base} swiotlb=noforce"));
        assert_eq!(guest_cmdline("", true), "swiotlb=noforce");
        // The user's own choice wins.
        let own = "console=ttyS0 swiotlb=65536";
        assert_eq!(guest_cmdline(own, true), own);
        // A command line at the limit is left as it is.
        let long = "x".repeat(CMDLINE_MAX_SIZE - 10);
        assert_eq!(guest_cmdline(&long, true), long);
    }

    #[test]
    fn reset_stub_writes_the_reset_register_and_fits_below_1m() {
        let stub = reset_vector_stub();
        assert!(RESET_VECTOR + stub.len() as u64 <= HIMEM_START);
        // The hotplug status page is rewritten while the guest runs: not over the stub.
        let page = acpi::layout::status_page::ADDR..acpi::layout::status_page::ADDR + 0x1000;
        assert!(RESET_VECTOR >= page.end || RESET_VECTOR + (stub.len() as u64) <= page.start);
        let port = acpi::layout::power::RESET_PORT.to_le_bytes();
        assert_eq!(
            &stub[..6],
            &[
                0xb0,
                acpi::layout::power::RESET_VALUE,
                0xba,
                port[0],
                port[1],
                0xee
            ]
        );
    }

    #[test]
    fn initramfs_goes_high_and_page_aligned() {
        let a = place_initramfs(10_000, 512 << 20, 16 << 20, 0x7fff_ffff).unwrap();
        assert_eq!(a % PAGE_SIZE, 0);
        assert!(a + 10_000 <= 512 << 20);
        assert!(a >= (512 << 20) - 3 * PAGE_SIZE);
    }

    #[test]
    fn initramfs_too_large_is_refused() {
        assert_eq!(
            place_initramfs(600 << 20, 512 << 20, 16 << 20, 0x7fff_ffff),
            None
        );
        assert_eq!(
            place_initramfs(500 << 20, 512 << 20, 16 << 20, 0x7fff_ffff),
            None
        );
    }

    #[test]
    fn initramfs_respects_initrd_addr_max() {
        let a = place_initramfs(4096, 3 << 30, 16 << 20, 0x7fff_ffff).unwrap();
        assert!(a + 4096 <= 0x8000_0000);
    }

    #[test]
    fn e820_skips_the_bios_area() {
        let map = e820_map(&MemoryLayout::new(512 << 20, 0));
        assert_eq!(map.len(), 2);
        assert_eq!((map[0].addr, map[0].size), (0, EBDA_START));
        assert_eq!(
            (map[1].addr, map[1].size),
            (HIMEM_START, (512 << 20) - HIMEM_START)
        );
        let big = e820_map(&MemoryLayout::new(4 << 30, 0));
        assert_eq!(big.len(), 3);
        assert_eq!({ big[2].addr }, 1 << 32);
    }

    #[test]
    fn text_file_is_not_a_kernel() {
        let dir = std::env::temp_dir().join(format!("plugvm-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("not-a-kernel");
        std::fs::File::create(&p)
            .unwrap()
            .write_all(b"hello world")
            .unwrap();
        let mem = crate::memory::create_guest_memory(
            &MemoryLayout::new(64 << 20, 0),
            crate::memory_backing::Backing::default(),
        )
        .unwrap();
        assert!(matches!(
            load_kernel(&mem, &p, &KernelCacheConfig::Off),
            Err(BootError::NotAKernel(_))
        ));
        assert!(matches!(
            load_kernel(&mem, &dir.join("missing"), &KernelCacheConfig::Off),
            Err(BootError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zero_page_points_at_everything() {
        let k = LoadedKernel {
            entry: 0x100200,
            end: 0x200000,
            setup_header: None,
        };
        let layout = MemoryLayout::new(256 << 20, 0);
        let p = build_zero_page(
            ZeroPageInputs {
                kernel: &k,
                cmdline_len: 12,
                initramfs: Some(InitramfsPlacement {
                    address: 0x800_0000,
                    size: 1234,
                }),
                rsdp: 0xe0000,
            },
            &layout,
        )
        .unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x800_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 1234);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries, 2);
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
    }
}
