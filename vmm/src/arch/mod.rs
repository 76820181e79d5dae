//! x86_64 vCPU setup for a 64-bit Linux boot: GDT, page tables, registers, MSRs, FPU,
//! LAPIC and CPUID.

pub mod cpuid;
pub mod gdt;
pub mod regs;

pub use cpuid::{cpuid_for_vcpu, CpuTopology};
pub use regs::{setup_boot_regs, setup_fpu, setup_lint, setup_msrs, BootRegsLayout, RegsError};
