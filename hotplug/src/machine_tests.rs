use super::*;

const MIB: u64 = 1 << 20;

fn cfg() -> MachineConfig {
    MachineConfig {
        max_cpus: 4,
        boot_cpus: 2,
        boot_memory: 512 * MIB,
        block_size: 128 * MIB,
        hotplug_region_size: 1024 * MIB,
        memory_slots: 3,
    }
}

fn m() -> Machine {
    Machine::new(cfg()).unwrap()
}

fn invalid(r: Result<Vec<PlannedOp>, PlanError>) -> ValidationError {
    match r {
        Err(PlanError::Invalid(v)) => v,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

fn commit(m: &mut Machine, req: Request) -> Vec<PlannedOp> {
    let plan = m.plan(&req).unwrap();
    m.reserve(&plan, TxId(99));
    for op in &plan {
        m.settle(op, true);
    }
    plan
}

#[test]
fn config_is_checked() {
    let mut c = cfg();
    c.boot_cpus = 0;
    assert!(matches!(Machine::new(c), Err(ConfigError::BootCpus { .. })));
    c.boot_cpus = 5;
    assert!(matches!(Machine::new(c), Err(ConfigError::BootCpus { .. })));
    let mut c = cfg();
    c.block_size = 0;
    assert_eq!(Machine::new(c).err(), Some(ConfigError::BlockSize));
}

#[test]
fn cpu_validation_errors() {
    let m = m();
    use ValidationError as V;
    let cases = [
        (
            Request::AddCpu { id: Some(4) },
            V::CpuBeyondMax { id: 4, max_cpus: 4 },
        ),
        (
            Request::AddCpu { id: Some(1) },
            V::CpuAlreadyPresent { id: 1 },
        ),
        (Request::RemoveCpu { id: 0 }, V::CpuZeroRemoval),
        (Request::RemoveCpu { id: 3 }, V::CpuAbsent { id: 3 }),
        (
            Request::RemoveCpu { id: 9 },
            V::CpuBeyondMax { id: 9, max_cpus: 4 },
        ),
    ];
    for (req, want) in cases {
        assert_eq!(invalid(m.plan(&req)), want, "{req:?}");
    }
}

#[test]
fn add_cpu_picks_lowest_free_and_reports_none_left() {
    let mut m = m();
    let plan = commit(&mut m, Request::AddCpu { id: None });
    assert_eq!(plan[0].device, DeviceId::cpu(2));
    commit(&mut m, Request::AddCpu { id: Some(3) });
    assert_eq!(m.present_cpus(), vec![0, 1, 2, 3]);
    assert_eq!(
        invalid(m.plan(&Request::AddCpu { id: None })),
        ValidationError::NoFreeCpu { max_cpus: 4 }
    );
}

#[test]
fn in_flight_devices_conflict_and_are_skipped() {
    let mut m = m();
    let plan = m.plan(&Request::AddCpu { id: None }).unwrap();
    m.reserve(&plan, TxId(7));
    assert_eq!(
        m.plan(&Request::AddCpu { id: Some(2) }),
        Err(PlanError::Conflict {
            device: DeviceId::cpu(2),
            tx: TxId(7)
        })
    );
    // Lowest free skips the in-flight id.
    let next = m.plan(&Request::AddCpu { id: None }).unwrap();
    assert_eq!(next[0].device, DeviceId::cpu(3));
    // A resize of vCPUs conflicts while any vCPU is in flight.
    assert!(matches!(
        m.plan(&Request::Resize {
            vcpus: Some(1),
            memory: None,
            best_effort: false
        }),
        Err(PlanError::Conflict { tx: TxId(7), .. })
    ));
    // Rolled back: free again.
    m.settle(&plan[0], false);
    assert_eq!(m.presence(DeviceId::cpu(2)), Some(Presence::Absent));
}

#[test]
fn memory_validation_errors() {
    let mut m = m();
    use ValidationError as V;
    assert_eq!(
        invalid(m.plan(&Request::AddMemory { size: 0 })),
        V::MemorySizeZero
    );
    assert_eq!(
        invalid(m.plan(&Request::AddMemory { size: MIB })),
        V::MemoryNotBlockAligned {
            size: MIB,
            block_size: 128 * MIB
        }
    );
    assert_eq!(
        invalid(m.plan(&Request::AddMemory { size: 2048 * MIB })),
        V::BeyondRegion {
            size: 2048 * MIB,
            largest_free: 1024 * MIB
        }
    );
    assert_eq!(
        invalid(m.plan(&Request::RemoveMemory { slot: 0 })),
        V::BootMemory
    );
    assert_eq!(
        invalid(m.plan(&Request::RemoveMemory { slot: 4 })),
        V::UnknownSlot { slot: 4, slots: 3 }
    );
    assert_eq!(
        invalid(m.plan(&Request::RemoveMemory { slot: 1 })),
        V::SlotEmpty { slot: 1 }
    );
    for _ in 0..3 {
        commit(&mut m, Request::AddMemory { size: 128 * MIB });
    }
    assert_eq!(
        invalid(m.plan(&Request::AddMemory { size: 128 * MIB })),
        V::NoFreeSlot { slots: 3 }
    );
}

#[test]
fn memory_slots_first_fit_and_reuse() {
    let mut m = m();
    let a = commit(&mut m, Request::AddMemory { size: 256 * MIB });
    let b = commit(&mut m, Request::AddMemory { size: 128 * MIB });
    assert_eq!(a[0].device, DeviceId::memory_slot(1));
    assert_eq!(
        a[0].memory,
        Some(MemoryPlacement {
            offset: 0,
            size: 256 * MIB
        })
    );
    assert_eq!(b[0].memory.map(|p| p.offset), Some(256 * MIB));
    assert_eq!(m.total_memory(), 896 * MIB);
    commit(&mut m, Request::RemoveMemory { slot: 1 });
    // Slot 1 is free again, and so is its range.
    let c = commit(&mut m, Request::AddMemory { size: 128 * MIB });
    assert_eq!(c[0].device, DeviceId::memory_slot(1));
    assert_eq!(c[0].memory.map(|p| p.offset), Some(0));
    // Largest gap is now 640 MiB at the end.
    assert_eq!(
        invalid(m.plan(&Request::AddMemory { size: 768 * MIB })),
        ValidationError::BeyondRegion {
            size: 768 * MIB,
            largest_free: 640 * MIB
        }
    );
}

#[test]
fn resize_validation_errors() {
    let m = m();
    use ValidationError as V;
    let r = |vcpus, memory| Request::Resize {
        vcpus,
        memory,
        best_effort: false,
    };
    assert_eq!(invalid(m.plan(&r(None, None))), V::EmptyResize);
    assert_eq!(invalid(m.plan(&r(Some(0), None))), V::ZeroVcpus);
    assert_eq!(
        invalid(m.plan(&r(Some(5), None))),
        V::VcpusBeyondMax {
            requested: 5,
            max_cpus: 4
        }
    );
    assert_eq!(invalid(m.plan(&r(None, Some(0)))), V::ZeroMemory);
    assert_eq!(
        invalid(m.plan(&r(None, Some(256 * MIB)))),
        V::MemoryBelowBoot {
            requested: 256 * MIB,
            boot_memory: 512 * MIB
        }
    );
    assert_eq!(
        invalid(m.plan(&r(None, Some(2048 * MIB)))),
        V::MemoryBeyondMax {
            requested: 2048 * MIB,
            max: 1536 * MIB
        }
    );
    assert_eq!(
        invalid(m.plan(&r(None, Some(600 * MIB)))),
        V::MemoryNotBlockAligned {
            size: 88 * MIB,
            block_size: 128 * MIB
        }
    );
}

#[test]
fn resize_plans_in_batch_order() {
    let mut m = m();
    commit(&mut m, Request::AddMemory { size: 128 * MIB });
    commit(&mut m, Request::AddMemory { size: 256 * MIB });
    // 2 -> 4 vCPUs and 896 -> 640 MiB: removes slot 2 first, then adds cpus 2, 3.
    let plan = m
        .plan(&Request::Resize {
            vcpus: Some(4),
            memory: Some(640 * MIB),
            best_effort: false,
        })
        .unwrap();
    let got: Vec<(OpKind, DeviceId)> = plan.iter().map(|p| (p.kind, p.device)).collect();
    assert_eq!(
        got,
        vec![
            (OpKind::RemoveMemory, DeviceId::memory_slot(2)),
            (OpKind::AddCpu, DeviceId::cpu(2)),
            (OpKind::AddCpu, DeviceId::cpu(3)),
        ]
    );
    // Shrinking to an unreachable total.
    assert_eq!(
        invalid(m.plan(&Request::Resize {
            vcpus: None,
            memory: Some(700 * MIB),
            best_effort: false
        })),
        ValidationError::MemoryShrinkNotExact {
            requested: 700 * MIB,
            nearest: 768 * MIB
        }
    );
    // Highest slot first, skipping a slot that would overshoot: 896 -> 768 removes slot 1.
    let plan = m
        .plan(&Request::Resize {
            vcpus: None,
            memory: Some(768 * MIB),
            best_effort: false,
        })
        .unwrap();
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].device, DeviceId::memory_slot(1));
}
