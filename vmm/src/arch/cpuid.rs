//! CPUID for each vCPU: KVM's supported leaves, with the APIC id and a topology that is the
//! same for all `max` possible CPUs (one socket, `max` cores, one thread per core).

use kvm_bindings::CpuId;

/// The topology every vCPU reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTopology {
    /// Possible CPUs (cores of the one socket).
    pub max_cpus: u32,
}

impl CpuTopology {
    /// Bits of the APIC id that number the cores: the smallest n with 2^n >= max_cpus.
    pub fn core_id_bits(&self) -> u32 {
        self.max_cpus.max(1).next_power_of_two().trailing_zeros()
    }
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Patches `base` (KVM's supported CPUID) for the vCPU with `apic_id`.
pub fn cpuid_for_vcpu(base: &CpuId, apic_id: u32, topo: CpuTopology) -> CpuId {
    let mut cpuid = base.clone();
    let max = topo.max_cpus.max(1);
    let shift = topo.core_id_bits();
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (max.min(255) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if max > 1 {
                    e.edx |= EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: addressable core ids in the package, minus one.
                e.eax = (e.eax & 0x03ff_ffff) | ((max - 1).min(63) << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = max;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_AMD_SIZE_IDS => {
                // ECX[7:0]: cores minus one; ECX[15:12]: APIC id bits for the core id.
                e.ecx = (e.ecx & !0xf0ff) | ((max - 1).min(255)) | ((shift & 0xf) << 12);
            }
            LEAF_AMD_EXT_APIC_ID => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn base() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0008_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                ecx: 0xffff_ffff,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn apic_id_and_topology_are_consistent() {
        let topo = CpuTopology { max_cpus: 6 };
        assert_eq!(topo.core_id_bits(), 3);
        let c = cpuid_for_vcpu(&base(), 5, topo);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 5);
        assert_eq!((e[0].ebx >> 16) & 0xff, 6);
        assert_eq!(e[0].ebx & 0xffff, 0x0800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!((e[1].edx, e[1].ebx, e[1].ecx), (5, 1, 0x100));
        assert_eq!((e[2].edx, e[2].eax, e[2].ebx, e[2].ecx), (5, 3, 6, 0x201));
        assert_eq!(e[3].ecx & 0xf0ff, 5 | (3 << 12));
    }

    #[test]
    fn single_cpu_has_no_core_bits() {
        assert_eq!(CpuTopology { max_cpus: 1 }.core_id_bits(), 0);
        let c = cpuid_for_vcpu(&base(), 0, CpuTopology { max_cpus: 1 });
        assert_eq!(c.as_slice()[0].edx & EDX_HTT, 0);
    }
}
