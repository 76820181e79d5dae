//! Registers, MSRs, FPU and LAPIC of a vCPU at the 64-bit Linux entry point.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{segment_from_gdt, BOOT_GDT};

/// Errors setting up a vCPU's architectural state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM ioctl failed.
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// Writing the boot GDT, IDT or page tables into guest memory failed.
    #[error("cannot write boot structures into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// KVM accepted fewer MSRs than plugvm set.
    #[error("KVM set {set} of {wanted} boot MSRs")]
    MsrsNotSet {
        /// MSRs set.
        set: usize,
        /// MSRs wanted.
        wanted: usize,
    },
    /// Building the MSR list failed.
    #[error("cannot build the MSR list: {0:?}")]
    MsrList(vmm_sys_util::fam::Error),
}

/// Where the boot structures live in guest memory (all below 1 MiB, outside the kernel).
#[derive(Clone, Copy, Debug)]
pub struct BootRegsLayout {
    /// Boot GDT.
    pub gdt: u64,
    /// Boot IDT (empty).
    pub idt: u64,
    /// PML4 page; the PDPT and PD follow it, page by page.
    pub pml4: u64,
    /// Initial stack pointer.
    pub stack: u64,
    /// The zero page (`boot_params`) passed in RSI.
    pub zero_page: u64,
}

impl Default for BootRegsLayout {
    fn default() -> Self {
        BootRegsLayout {
            gdt: 0x500,
            idt: 0x520,
            pml4: 0x9000,
            stack: 0x8ff0,
            zero_page: 0x7000,
        }
    }
}

const X86_CR0_PE: u64 = 1;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Writes the GDT, IDT and an identity map of the first 1 GiB, then points the BSP's
/// registers at `entry` in 64-bit mode, as the Linux 64-bit boot protocol asks.
pub fn setup_boot_regs(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    layout: &BootRegsLayout,
    entry: u64,
) -> Result<(), RegsError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout.gdt + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(layout.idt))?;
    let pdpt = layout.pml4 + 0x1000;
    let pd = pdpt + 0x1000;
    mem.write_obj(pdpt | 0x03, GuestAddress(layout.pml4))?;
    mem.write_obj(pd | 0x03, GuestAddress(pdpt))?;
    for i in 0..512u64 {
        // 2 MiB pages: present, writable, page size.
        mem.write_obj((i << 21) | 0x83, GuestAddress(pd + i * 8))?;
    }

    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Kvm("KVM_GET_SREGS", e))?;
    let code = segment_from_gdt(BOOT_GDT[1], 1);
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    sregs.gdt.base = layout.gdt;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = layout.idt;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(BOOT_GDT[3], 3);
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.cr3 = layout.pml4;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("KVM_SET_SREGS", e))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: layout.stack,
        rbp: layout.stack,
        rsi: layout.zero_page,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| RegsError::Kvm("KVM_SET_REGS", e))
}

/// The x87/SSE control words Linux expects after reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| RegsError::Kvm("KVM_SET_FPU", e))
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRBACK: u64 = 6;

/// The MSRs Firecracker sets at boot: syscall MSRs cleared, fast strings on, MTRRs enabled
/// with write-back as the default type.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets [`boot_msrs`] on `vcpu`.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(RegsError::MsrList)?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| RegsError::Kvm("KVM_SET_MSRS", e))?;
    if set != entries.len() {
        return Err(RegsError::MsrsNotSet {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
    let b = |i: usize| regs.get(offset + i).map_or(0, |&v| v as u8);
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        if let Some(r) = regs.get_mut(offset + i) {
            *r = byte as std::os::raw::c_char;
        }
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as a PC's BIOS leaves them.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| RegsError::Kvm("KVM_GET_LAPIC", e))?;
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT0,
        with_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT1,
        with_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&lapic)
        .map_err(|e| RegsError::Kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapic_register_round_trip_and_delivery_mode() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_lapic_reg(&mut regs, APIC_LVT0, 0x0001_0700);
        assert_eq!(lapic_reg(&regs, APIC_LVT0), 0x0001_0700);
        assert_eq!(with_delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
        // Out of range offsets neither panic nor write.
        set_lapic_reg(&mut regs, 1022, u32::MAX);
        assert_eq!(lapic_reg(&regs, 1022), 0xffff);
    }

    #[test]
    fn boot_msrs_enable_fast_strings_and_mtrrs() {
        let msrs = boot_msrs();
        let get = |i| msrs.iter().find(|m| m.index == i).map(|m| m.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some((1 << 11) | 6));
        assert_eq!(get(MSR_LSTAR), Some(0));
    }
}
