//! plugvm's hotplug framework: every vCPU or memory hotplug is a transaction carried by
//! ordered participants, with the VMM in the firmware's seat and the guest's `_OST` as the
//! verdict.
//!
//! The crate knows nothing of KVM, AML, HTTP, threads or I/O. The VMM owns an [`Engine`],
//! registers its participants, and drives it from its event loop. A participant serves one
//! [`DeviceKind`] ([`CpuKind`], [`MemoryKind`]) as a [`DeviceParticipant`], registered with
//! [`Engine::register_for`] and called only for that kind's ops; one that must see every op
//! is a [`HotplugParticipant`], registered with [`Engine::register`]. The engine is driven like this:
//!
//! - [`Engine::begin`] plans a [`Request`] on the [`Machine`] model and runs phases 1-3
//!   (Validate, Prepare, Publish) through the participants; the transaction then waits for
//!   the guest (phase 4) unless it already ended.
//! - [`Engine::guest_event`] feeds what the hotplug controllers saw (`_OST`, `_EJ0`, status
//!   reads); [`Engine::tick`] applies deadlines (arm a timer at [`Engine::next_deadline`]).
//! - Each call returns the transactions that finished ([`Completion`]) and what the VMM must
//!   do ([`Directive`]); [`Engine::journal`] and [`Engine::transaction`] serve the API.
//!
//! ```
//! use std::sync::Arc;
//! use hotplug::{
//!     CpuKind, DeviceId, DeviceParticipant, Engine, EngineConfig, FakeClock, GuestEvent,
//!     MachineConfig, Orders, Request, Role, TxStatus,
//! };
//!
//! struct Vcpus;
//! impl DeviceParticipant<CpuKind> for Vcpus {}
//!
//! let machine = MachineConfig {
//!     max_cpus: 4,
//!     boot_cpus: 1,
//!     boot_memory: 512 << 20,
//!     block_size: 128 << 20,
//!     hotplug_region_size: 1 << 30,
//!     memory_slots: 8,
//! };
//! let clock = FakeClock::new();
//! let mut engine = Engine::new(machine, EngineConfig::default(), Arc::new(clock)).unwrap();
//! engine
//!     .register_for::<CpuKind>("vcpus", Orders::standard(Role::Cpu), Vcpus)
//!     .unwrap();
//!
//! let begun = engine.begin(Request::AddCpu { id: None }).unwrap();
//! assert!(begun.completed.is_none()); // waiting for the guest
//! let report = engine.guest_event(DeviceId::cpu(1), GuestEvent::ost(1, 0));
//! assert_eq!(report.completed[0].id, begun.id);
//! assert_eq!(report.completed[0].outcome.status, TxStatus::Committed);
//! assert_eq!(engine.machine().present_cpus(), vec![0, 1]);
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod clock;
mod config;
mod device;
mod engine;
mod journal;
mod kind;
mod machine;
mod ops;
mod ost;
mod outcome;
mod participant;
mod tx;
mod validation;
mod verdict;

pub use clock::{Clock, FakeClock, MonotonicClock, Timestamp};
pub use config::{Deadlines, EngineConfig, GuestEjectPolicy};
pub use device::{CpuId, DeviceId, MemoryPlacement, SlotId};
pub use engine::{Begun, Engine, Error};
pub use journal::{
    ErrorRecord, GuestEventKind, GuestEventRecord, Journal, JournalStats, Phase, PhaseRecord,
    RecordStatus, Target, TxRecord, MAX_GUEST_EVENTS, MAX_GUEST_RECORDS,
};
pub use kind::{CpuKind, DeviceKind, DeviceParticipant, KindOp, MemoryKind};
pub use machine::{
    ConfigError, Machine, MachineConfig, PlanError, PlannedOp, Presence, SlotState, ValidationError,
};
pub use ops::{BatchMode, DeviceOp, Direction, OpKind, Origin, Request, TxId};
pub use ost::{CodeName, GuestEvent, Ost, OstEvent, OstStatus};
pub use outcome::{
    Completion, DeviceOutcome, DeviceResult, Directive, FailureReason, Report, StepError,
    TxOutcome, TxStatus, MAX_NOTES, MAX_NOTE_LEN,
};
pub use participant::{
    HotplugParticipant, OrderedPhase, Orders, ParticipantError, ParticipantId, PhaseOrders, Role,
};
