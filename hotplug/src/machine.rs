//! The engine's model of the machine's hotpluggable devices: which vCPUs and memory slots
//! are present, which are in flight, and the precise reasons a request is invalid.

use serde::Serialize;

use crate::device::{CpuId, DeviceId, MemoryPlacement, SlotId};
use crate::ops::{OpKind, Request, TxId};
pub use crate::validation::{ConfigError, PlanError, ValidationError};

/// The hotplug-relevant shape of the VM, fixed at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MachineConfig {
    /// Maximum number of vCPUs (ids `0..max_cpus`).
    pub max_cpus: u32,
    /// vCPUs present at boot (ids `0..boot_cpus`).
    pub boot_cpus: u32,
    /// Boot memory in bytes (slot 0, never removable).
    pub boot_memory: u64,
    /// Hotplug block size in bytes: every hot-added size is a multiple of it.
    pub block_size: u64,
    /// Size of the hotplug region in bytes.
    pub hotplug_region_size: u64,
    /// Number of hotplug memory slots (ids `1..=memory_slots`).
    pub memory_slots: u32,
}

impl MachineConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.boot_cpus == 0 || self.boot_cpus > self.max_cpus {
            return Err(ConfigError::BootCpus {
                boot_cpus: self.boot_cpus,
                max_cpus: self.max_cpus,
            });
        }
        if self.block_size == 0 {
            return Err(ConfigError::BlockSize);
        }
        Ok(())
    }
}

/// A device's state in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "tx", rename_all = "snake_case")]
pub enum Presence {
    /// Not plugged.
    Absent,
    /// Plugged.
    Present,
    /// Being added by a transaction.
    Adding(TxId),
    /// Being removed by a transaction.
    Removing(TxId),
}

impl Presence {
    /// The transaction holding the device, if any.
    pub fn in_flight(&self) -> Option<TxId> {
        match self {
            Presence::Adding(t) | Presence::Removing(t) => Some(*t),
            _ => None,
        }
    }

    /// Whether the device holds resources (present, or in flight either way).
    fn occupied(&self) -> bool {
        !matches!(self, Presence::Absent)
    }
}

/// A hotplug memory slot's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SlotState {
    /// Plugged, free or in flight.
    pub presence: Presence,
    /// Where it lives while it is occupied.
    pub placement: Option<MemoryPlacement>,
}

/// One device operation decided by planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedOp {
    /// What happens.
    pub kind: OpKind,
    /// To which device.
    pub device: DeviceId,
    /// For memory: where.
    pub memory: Option<MemoryPlacement>,
}

/// The model: present vCPUs and used memory slots.
#[derive(Debug, Clone)]
pub struct Machine {
    config: MachineConfig,
    cpus: Vec<Presence>,
    /// `slots[i]` is slot `i + 1`.
    slots: Vec<SlotState>,
}

impl Machine {
    /// The machine as booted.
    pub fn new(config: MachineConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let cpus = (0..config.max_cpus)
            .map(|i| {
                if i < config.boot_cpus {
                    Presence::Present
                } else {
                    Presence::Absent
                }
            })
            .collect();
        let free = SlotState {
            presence: Presence::Absent,
            placement: None,
        };
        Ok(Machine {
            config,
            cpus,
            slots: vec![free; config.memory_slots as usize],
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// State of a device; `None` for an id the machine does not have. Slot 0 (boot memory)
    /// is always present.
    pub fn presence(&self, device: DeviceId) -> Option<Presence> {
        match device {
            DeviceId::Cpu(CpuId(i)) => self.cpus.get(i as usize).copied(),
            DeviceId::MemorySlot(SlotId(0)) => Some(Presence::Present),
            DeviceId::MemorySlot(s) => self.slot(s).map(|st| st.presence),
        }
    }

    /// The transaction in flight on a device, if any.
    pub fn in_flight(&self, device: DeviceId) -> Option<TxId> {
        self.presence(device).and_then(|p| p.in_flight())
    }

    /// Ids of the present vCPUs (in flight ones excluded), ascending.
    pub fn present_cpus(&self) -> Vec<u32> {
        self.ids_where(|p| p == Presence::Present)
    }

    /// State of a hotplug slot (`1..=memory_slots`).
    pub fn slot(&self, slot: SlotId) -> Option<&SlotState> {
        let idx = slot.0.checked_sub(1)?;
        self.slots.get(idx as usize)
    }

    /// Hotplug slots with their states, ascending.
    pub fn slots(&self) -> impl Iterator<Item = (SlotId, &SlotState)> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, s)| (SlotId(i as u32 + 1), s))
    }

    /// Boot memory plus the memory of the present slots (in flight ones excluded).
    pub fn total_memory(&self) -> u64 {
        self.config.boot_memory.saturating_add(
            self.slots
                .iter()
                .filter(|s| s.presence == Presence::Present)
                .filter_map(|s| s.placement.map(|p| p.size))
                .sum(),
        )
    }

    fn ids_where(&self, f: impl Fn(Presence) -> bool) -> Vec<u32> {
        (0..self.config.max_cpus)
            .filter(|&i| self.cpus.get(i as usize).is_some_and(|p| f(*p)))
            .collect()
    }

    fn conflict(&self, device: DeviceId) -> Result<(), PlanError> {
        match self.in_flight(device) {
            Some(tx) => Err(PlanError::Conflict { device, tx }),
            None => Ok(()),
        }
    }

    /// Plans a request into device operations, in batch order: removals of vCPUs (highest id
    /// first), removals of memory (highest slot first), additions of memory, additions of
    /// vCPUs (lowest id first). Nothing changes.
    pub fn plan(&self, request: &Request) -> Result<Vec<PlannedOp>, PlanError> {
        match *request {
            Request::AddCpu { id } => Ok(vec![self.plan_add_cpu(id)?]),
            Request::RemoveCpu { id } => Ok(vec![self.plan_remove_cpu(id)?]),
            Request::AddMemory { size } => Ok(vec![self.plan_add_memory(size)?]),
            Request::RemoveMemory { slot } => Ok(vec![self.plan_remove_memory(slot)?]),
            Request::Resize { vcpus, memory, .. } => self.plan_resize(vcpus, memory),
        }
    }

    /// Plans the removal of `device` that the guest initiated.
    pub fn plan_guest_eject(&self, device: DeviceId) -> Result<PlannedOp, PlanError> {
        match device {
            DeviceId::Cpu(CpuId(id)) => self.plan_remove_cpu(id),
            DeviceId::MemorySlot(SlotId(slot)) => self.plan_remove_memory(slot),
        }
    }

    fn plan_add_cpu(&self, id: Option<u32>) -> Result<PlannedOp, PlanError> {
        let max_cpus = self.config.max_cpus;
        let id = match id {
            Some(id) => {
                let device = DeviceId::cpu(id);
                match self.presence(device) {
                    None => return Err(ValidationError::CpuBeyondMax { id, max_cpus }.into()),
                    Some(Presence::Present) => {
                        return Err(ValidationError::CpuAlreadyPresent { id }.into())
                    }
                    Some(_) => self.conflict(device)?,
                }
                id
            }
            None => *self
                .ids_where(|p| p == Presence::Absent)
                .first()
                .ok_or(ValidationError::NoFreeCpu { max_cpus })?,
        };
        Ok(PlannedOp {
            kind: OpKind::AddCpu,
            device: DeviceId::cpu(id),
            memory: None,
        })
    }

    fn plan_remove_cpu(&self, id: u32) -> Result<PlannedOp, PlanError> {
        let device = DeviceId::cpu(id);
        let max_cpus = self.config.max_cpus;
        let presence = self
            .presence(device)
            .ok_or(ValidationError::CpuBeyondMax { id, max_cpus })?;
        if id == 0 {
            return Err(ValidationError::CpuZeroRemoval.into());
        }
        self.conflict(device)?;
        if presence == Presence::Absent {
            return Err(ValidationError::CpuAbsent { id }.into());
        }
        Ok(PlannedOp {
            kind: OpKind::RemoveCpu,
            device,
            memory: None,
        })
    }

    fn check_size(&self, size: u64) -> Result<(), ValidationError> {
        let block_size = self.config.block_size;
        if size == 0 {
            return Err(ValidationError::MemorySizeZero);
        }
        if !size.is_multiple_of(block_size) {
            return Err(ValidationError::MemoryNotBlockAligned { size, block_size });
        }
        Ok(())
    }

    /// First gap of the region that fits `size`, or the largest gap.
    fn first_fit(&self, size: u64) -> Result<u64, ValidationError> {
        let mut used: Vec<MemoryPlacement> = self
            .slots
            .iter()
            .filter(|s| s.presence.occupied())
            .filter_map(|s| s.placement)
            .collect();
        used.sort_by_key(|p| p.offset);
        let mut cursor = 0u64;
        let mut largest_free = 0u64;
        let ends = used
            .iter()
            .map(|p| (p.offset, p.end()))
            .chain(std::iter::once((
                self.config.hotplug_region_size,
                self.config.hotplug_region_size,
            )));
        for (start, end) in ends {
            let gap = start.saturating_sub(cursor);
            if gap >= size {
                return Ok(cursor);
            }
            largest_free = largest_free.max(gap);
            cursor = cursor.max(end);
        }
        Err(ValidationError::BeyondRegion { size, largest_free })
    }

    fn plan_add_memory(&self, size: u64) -> Result<PlannedOp, PlanError> {
        self.check_size(size)?;
        let slots = self.config.memory_slots;
        let slot = self
            .slots()
            .find(|(_, s)| s.presence == Presence::Absent)
            .map(|(id, _)| id)
            .ok_or(ValidationError::NoFreeSlot { slots })?;
        let offset = self.first_fit(size)?;
        Ok(PlannedOp {
            kind: OpKind::AddMemory,
            device: DeviceId::MemorySlot(slot),
            memory: Some(MemoryPlacement { offset, size }),
        })
    }

    fn plan_remove_memory(&self, slot: u32) -> Result<PlannedOp, PlanError> {
        let slots = self.config.memory_slots;
        if slot == 0 {
            return Err(ValidationError::BootMemory.into());
        }
        let device = DeviceId::memory_slot(slot);
        let state = self
            .slot(SlotId(slot))
            .ok_or(ValidationError::UnknownSlot { slot, slots })?;
        self.conflict(device)?;
        match (state.presence, state.placement) {
            (Presence::Present, Some(p)) => Ok(PlannedOp {
                kind: OpKind::RemoveMemory,
                device,
                memory: Some(p),
            }),
            _ => Err(ValidationError::SlotEmpty { slot }.into()),
        }
    }

    fn plan_resize(
        &self,
        vcpus: Option<u32>,
        memory: Option<u64>,
    ) -> Result<Vec<PlannedOp>, PlanError> {
        if vcpus.is_none() && memory.is_none() {
            return Err(ValidationError::EmptyResize.into());
        }
        let (mut cpu_removals, mut cpu_additions) = (Vec::new(), Vec::new());
        let (mut mem_removals, mut mem_additions) = (Vec::new(), Vec::new());
        if let Some(n) = vcpus {
            self.plan_cpu_count(n, &mut cpu_removals, &mut cpu_additions)?;
        }
        if let Some(m) = memory {
            self.plan_memory_total(m, &mut mem_removals, &mut mem_additions)?;
        }
        let mut plan = cpu_removals;
        plan.append(&mut mem_removals);
        plan.append(&mut mem_additions);
        plan.append(&mut cpu_additions);
        Ok(plan)
    }

    fn plan_cpu_count(
        &self,
        n: u32,
        removals: &mut Vec<PlannedOp>,
        additions: &mut Vec<PlannedOp>,
    ) -> Result<(), PlanError> {
        let max_cpus = self.config.max_cpus;
        if n == 0 {
            return Err(ValidationError::ZeroVcpus.into());
        }
        if n > max_cpus {
            return Err(ValidationError::VcpusBeyondMax {
                requested: n,
                max_cpus,
            }
            .into());
        }
        for (i, p) in self.cpus.iter().enumerate() {
            if let Some(tx) = p.in_flight() {
                return Err(PlanError::Conflict {
                    device: DeviceId::cpu(i as u32),
                    tx,
                });
            }
        }
        let present = self.present_cpus();
        let count = present.len() as u32;
        if n < count {
            // CPU 0 is always present and n >= 1, so it is never picked.
            for &id in present.iter().rev().take((count - n) as usize) {
                removals.push(PlannedOp {
                    kind: OpKind::RemoveCpu,
                    device: DeviceId::cpu(id),
                    memory: None,
                });
            }
        } else {
            let absent = self.ids_where(|p| p == Presence::Absent);
            for &id in absent.iter().take((n - count) as usize) {
                additions.push(PlannedOp {
                    kind: OpKind::AddCpu,
                    device: DeviceId::cpu(id),
                    memory: None,
                });
            }
        }
        Ok(())
    }

    fn plan_memory_total(
        &self,
        m: u64,
        removals: &mut Vec<PlannedOp>,
        additions: &mut Vec<PlannedOp>,
    ) -> Result<(), PlanError> {
        let boot_memory = self.config.boot_memory;
        let max = boot_memory.saturating_add(self.config.hotplug_region_size);
        if m == 0 {
            return Err(ValidationError::ZeroMemory.into());
        }
        if m < boot_memory {
            return Err(ValidationError::MemoryBelowBoot {
                requested: m,
                boot_memory,
            }
            .into());
        }
        if m > max {
            return Err(ValidationError::MemoryBeyondMax { requested: m, max }.into());
        }
        for (id, s) in self.slots() {
            if let Some(tx) = s.presence.in_flight() {
                return Err(PlanError::Conflict {
                    device: DeviceId::MemorySlot(id),
                    tx,
                });
            }
        }
        let mut total = self.total_memory();
        if m > total {
            additions.push(self.plan_add_memory(m - total)?);
        } else if m < total {
            let used: Vec<(SlotId, MemoryPlacement)> = self
                .slots()
                .filter_map(|(id, s)| s.placement.map(|p| (id, p)))
                .collect();
            for &(id, p) in used.iter().rev() {
                if total - p.size < m {
                    continue;
                }
                total -= p.size;
                removals.push(PlannedOp {
                    kind: OpKind::RemoveMemory,
                    device: DeviceId::MemorySlot(id),
                    memory: Some(p),
                });
                if total == m {
                    break;
                }
            }
            if total != m {
                return Err(ValidationError::MemoryShrinkNotExact {
                    requested: m,
                    nearest: total,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Marks the planned devices as in flight for `tx`.
    pub(crate) fn reserve(&mut self, ops: &[PlannedOp], tx: TxId) {
        for op in ops {
            let presence = match op.kind.direction() {
                crate::ops::Direction::Add => Presence::Adding(tx),
                crate::ops::Direction::Remove => Presence::Removing(tx),
            };
            self.set(op.device, presence, op.memory);
        }
    }

    /// Ends a device's flight: `committed` applies the operation, otherwise restores it.
    pub(crate) fn settle(&mut self, op: &PlannedOp, committed: bool) {
        let plugged = match op.kind.direction() {
            crate::ops::Direction::Add => committed,
            crate::ops::Direction::Remove => !committed,
        };
        if plugged {
            self.set(op.device, Presence::Present, op.memory);
        } else {
            self.set(op.device, Presence::Absent, None);
        }
    }

    fn set(&mut self, device: DeviceId, presence: Presence, placement: Option<MemoryPlacement>) {
        match device {
            DeviceId::Cpu(CpuId(i)) => {
                if let Some(p) = self.cpus.get_mut(i as usize) {
                    *p = presence;
                }
            }
            DeviceId::MemorySlot(SlotId(s)) => {
                if let Some(st) = s
                    .checked_sub(1)
                    .and_then(|i| self.slots.get_mut(i as usize))
                {
                    *st = SlotState {
                        presence,
                        placement,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
