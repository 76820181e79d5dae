//! Fakes shared by the integration tests: participants that record calls, hold fake
//! resources and fail on demand.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hotplug::{
    DeviceId, DeviceOp, Direction, Engine, EngineConfig, FakeClock, HotplugParticipant,
    MachineConfig, Orders, ParticipantError, Role,
};

pub const MIB: u64 = 1 << 20;

/// A participant method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Validate,
    Prepare,
    RollbackPrepare,
    Publish,
    RollbackPublish,
    Commit,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub participant: String,
    pub method: Method,
    pub device: DeviceId,
}

/// A failure to inject: the `nth` call (0-based) of `method`, optionally only for `device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub method: Method,
    pub nth: usize,
    pub device: Option<DeviceId>,
}

/// What a fake participant holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FakeState {
    /// Devices it considers plugged.
    pub present: BTreeSet<DeviceId>,
    /// Resources taken by `prepare` and not yet released (commit or rollback).
    pub held: BTreeSet<DeviceId>,
    /// Devices published and not yet withdrawn or committed.
    pub published: BTreeSet<DeviceId>,
    /// Broken guarantees seen (double undo, undo without do, ...).
    pub violations: Vec<String>,
    /// Last op seen per call (to check origins and placements).
    pub ops: Vec<DeviceOp>,
}

struct Inner {
    state: FakeState,
    faults: Vec<Fault>,
    counts: Vec<(Method, usize)>,
}

/// A fake participant; clones share everything.
#[derive(Clone)]
pub struct Fake {
    pub name: String,
    inner: Arc<Mutex<Inner>>,
    log: Arc<Mutex<Vec<Call>>>,
    /// Advance this clock by the duration on every prepare (a slow participant).
    slow: Option<(FakeClock, Duration)>,
}

impl Fake {
    pub fn new(name: &str, log: &Arc<Mutex<Vec<Call>>>, boot_cpus: u32) -> Self {
        let mut state = FakeState::default();
        for i in 0..boot_cpus {
            state.present.insert(DeviceId::cpu(i));
        }
        Fake {
            name: name.into(),
            inner: Arc::new(Mutex::new(Inner {
                state,
                faults: Vec::new(),
                counts: Vec::new(),
            })),
            log: log.clone(),
            slow: None,
        }
    }

    pub fn slow(mut self, clock: &FakeClock, d: Duration) -> Self {
        self.slow = Some((clock.clone(), d));
        self
    }

    pub fn fail(&self, fault: Fault) {
        self.inner.lock().unwrap().faults.push(fault);
    }

    pub fn fail_next(&self, method: Method) {
        let nth = self.count(method);
        self.fail(Fault {
            method,
            nth,
            device: None,
        });
    }

    pub fn clear_faults(&self) {
        self.inner.lock().unwrap().faults.clear();
    }

    pub fn state(&self) -> FakeState {
        self.inner.lock().unwrap().state.clone()
    }

    pub fn count(&self, method: Method) -> usize {
        let inner = self.inner.lock().unwrap();
        inner
            .counts
            .iter()
            .find(|(m, _)| *m == method)
            .map(|(_, c)| *c)
            .unwrap_or(0)
    }

    /// Records the call, then tells whether it must fail.
    fn enter(&self, method: Method, op: &DeviceOp) -> bool {
        self.log.lock().unwrap().push(Call {
            participant: self.name.clone(),
            method,
            device: op.device,
        });
        let mut inner = self.inner.lock().unwrap();
        inner.state.ops.push(*op);
        let n = match inner.counts.iter_mut().find(|(m, _)| *m == method) {
            Some((_, c)) => {
                *c += 1;
                *c - 1
            }
            None => {
                inner.counts.push((method, 1));
                0
            }
        };
        inner
            .faults
            .iter()
            .any(|f| f.method == method && f.nth == n && f.device.is_none_or(|d| d == op.device))
    }

    fn err(&self, method: Method, op: &DeviceOp) -> ParticipantError {
        ParticipantError::with_source(
            format!("{} {:?} {}", self.name, method, op.device),
            std::io::Error::other("injected fault"),
        )
    }

    fn with_state(&self, f: impl FnOnce(&mut FakeState)) {
        f(&mut self.inner.lock().unwrap().state);
    }
}

impl HotplugParticipant for Fake {
    fn validate(&self, op: &DeviceOp) -> Result<(), ParticipantError> {
        if self.enter(Method::Validate, op) {
            return Err(self.err(Method::Validate, op));
        }
        Ok(())
    }

    fn prepare(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        if let Some((clock, d)) = &self.slow {
            clock.advance(*d);
        }
        if self.enter(Method::Prepare, op) {
            return Err(self.err(Method::Prepare, op));
        }
        self.with_state(|s| {
            if !s.held.insert(op.device) {
                s.violations.push(format!("prepare twice {}", op.device));
            }
        });
        Ok(())
    }

    fn rollback_prepare(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        let fail = self.enter(Method::RollbackPrepare, op);
        self.with_state(|s| {
            if s.published.contains(&op.device) {
                s.violations.push(format!(
                    "rollback_prepare before rollback_publish {}",
                    op.device
                ));
            }
            if !s.held.remove(&op.device) {
                s.violations
                    .push(format!("rollback_prepare without prepare {}", op.device));
            }
        });
        if fail {
            return Err(self.err(Method::RollbackPrepare, op));
        }
        Ok(())
    }

    fn publish(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        if self.enter(Method::Publish, op) {
            return Err(self.err(Method::Publish, op));
        }
        self.with_state(|s| {
            if !s.held.contains(&op.device) {
                s.violations
                    .push(format!("publish before prepare {}", op.device));
            }
            if !s.published.insert(op.device) {
                s.violations.push(format!("publish twice {}", op.device));
            }
        });
        Ok(())
    }

    fn rollback_publish(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        let fail = self.enter(Method::RollbackPublish, op);
        self.with_state(|s| {
            if !s.published.remove(&op.device) {
                s.violations
                    .push(format!("rollback_publish without publish {}", op.device));
            }
        });
        if fail {
            return Err(self.err(Method::RollbackPublish, op));
        }
        Ok(())
    }

    /// Applies the change, then fails if told to (a commit failure is only reported).
    fn commit(&mut self, op: &DeviceOp) -> Result<(), ParticipantError> {
        let fail = self.enter(Method::Commit, op);
        self.with_state(|s| {
            if !s.held.remove(&op.device) || !s.published.remove(&op.device) {
                s.violations
                    .push(format!("commit without prepare+publish {}", op.device));
            }
            let ok = match op.direction() {
                Direction::Add => s.present.insert(op.device),
                Direction::Remove => s.present.remove(&op.device),
            };
            if !ok {
                s.violations
                    .push(format!("commit on wrong state {}", op.device));
            }
        });
        if fail {
            return Err(self.err(Method::Commit, op));
        }
        Ok(())
    }
}

pub fn machine() -> MachineConfig {
    MachineConfig {
        max_cpus: 4,
        boot_cpus: 1,
        boot_memory: 512 * MIB,
        block_size: 128 * MIB,
        hotplug_region_size: 1024 * MIB,
        memory_slots: 3,
    }
}

/// An engine with the four standard roles (bus, memory, cpu, published state) as fakes.
pub struct Rig {
    pub engine: Engine,
    pub clock: FakeClock,
    pub log: Arc<Mutex<Vec<Call>>>,
    pub fakes: Vec<Fake>,
}

pub const ROLES: [(&str, Role); 4] = [
    ("acpi", Role::AcpiBus),
    ("memory", Role::Memory),
    ("vcpus", Role::Cpu),
    ("state", Role::PublishedState),
];

impl Rig {
    pub fn new(config: EngineConfig) -> Self {
        Self::with_machine(machine(), config)
    }

    pub fn with_machine(m: MachineConfig, config: EngineConfig) -> Self {
        let clock = FakeClock::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut engine = Engine::new(m, config, Arc::new(clock.clone())).unwrap();
        let mut fakes = Vec::new();
        // Registered in reverse so that ordering comes from the order numbers.
        for (name, role) in ROLES.iter().rev() {
            let f = Fake::new(name, &log, m.boot_cpus);
            engine
                .register(*name, Orders::standard(*role), Box::new(f.clone()))
                .unwrap();
            fakes.push(f);
        }
        fakes.reverse();
        Rig {
            engine,
            clock,
            log,
            fakes,
        }
    }

    pub fn fake(&self, name: &str) -> &Fake {
        self.fakes.iter().find(|f| f.name == name).unwrap()
    }

    /// Calls recorded since the last `take_log`, as (participant, method, device).
    pub fn take_log(&self) -> Vec<(String, Method, DeviceId)> {
        std::mem::take(&mut *self.log.lock().unwrap())
            .into_iter()
            .map(|c| (c.participant, c.method, c.device))
            .collect()
    }

    /// Every fake agrees with the model, holds nothing, and saw no broken guarantee.
    pub fn assert_consistent(&self) {
        let model: BTreeSet<DeviceId> = self
            .engine
            .machine()
            .present_cpus()
            .into_iter()
            .map(DeviceId::cpu)
            .chain(
                self.engine
                    .machine()
                    .slots()
                    .filter(|(_, s)| s.presence == hotplug::Presence::Present)
                    .map(|(id, _)| DeviceId::MemorySlot(id)),
            )
            .collect();
        for f in &self.fakes {
            let s = f.state();
            assert!(s.violations.is_empty(), "{}: {:?}", f.name, s.violations);
            assert!(s.held.is_empty(), "{} leaks {:?}", f.name, s.held);
            assert!(s.published.is_empty(), "{} leaks {:?}", f.name, s.published);
            assert_eq!(s.present, model, "{} disagrees with the model", f.name);
        }
    }
}
