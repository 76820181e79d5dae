//! What the guest does at the hotplug registers, on its way from the vCPU threads to the
//! hotplug service: a bounded queue (an eventfd wakes the event loop; what does not fit is
//! counted and dropped), and the hook that offers a device again when the engine refuses an
//! eject.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use devices::{CpuHotplugController, Ged, GedEvent, HotplugObservation, MemoryHotplugController};
use hotplug::{DeviceId, GuestEvent};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A guest access the engine must hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestObservation {
    /// The device.
    pub device: DeviceId,
    /// What the guest did.
    pub event: GuestEvent,
    /// An `_EJ0` the controller did not carry out (the engine's policy, as projected into
    /// the controller, refused it): the device stays and is offered again.
    pub refused: bool,
}

impl GuestObservation {
    /// An observation of `event` on `device`.
    pub fn new(device: DeviceId, event: GuestEvent) -> Self {
        GuestObservation {
            device,
            event,
            refused: false,
        }
    }
}

/// Observations that may wait for the event loop at once. A guest that makes more register
/// accesses than this before the loop drains them loses the excess (counted); only its own
/// transactions can suffer from that.
pub const OBSERVATION_QUEUE: usize = 1024;

/// The vCPU threads' end of the observation queue.
#[derive(Debug)]
pub struct ObservationSender {
    tx: SyncSender<GuestObservation>,
    wake: EventFd,
    dropped: Arc<AtomicU64>,
}

impl ObservationSender {
    /// Another sender on the same queue.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(ObservationSender {
            tx: self.tx.clone(),
            wake: self.wake.try_clone()?,
            dropped: self.dropped.clone(),
        })
    }

    /// Queues `obs` and wakes the loop; never blocks. A full queue drops it (counted).
    pub fn send(&self, obs: GuestObservation) {
        match self.tx.try_send(obs) {
            Ok(()) => {
                let _ = self.wake.write(1);
            }
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The event loop is gone (the VM is ending): nothing to report to.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// A bounded observation queue: the sender for the devices, the receiver for the service.
pub fn observation_queue() -> std::io::Result<(ObservationSender, ObservationReceiver)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(OBSERVATION_QUEUE);
    let wake = EventFd::new(EFD_NONBLOCK)?;
    let dropped = Arc::new(AtomicU64::new(0));
    Ok((
        ObservationSender {
            tx,
            wake: wake.try_clone()?,
            dropped: dropped.clone(),
        },
        ObservationReceiver { rx, wake, dropped },
    ))
}

/// The service's end of the observation queue.
#[derive(Debug)]
pub struct ObservationReceiver {
    rx: Receiver<GuestObservation>,
    wake: EventFd,
    dropped: Arc<AtomicU64>,
}

impl ObservationReceiver {
    /// Everything queued so far, in the order the guest made it.
    pub fn drain(&self) -> Vec<GuestObservation> {
        self.rx.try_iter().collect()
    }

    /// The eventfd that wakes the event loop when something is queued.
    pub fn wake(&self) -> &EventFd {
        &self.wake
    }

    /// Observations dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Maps a controller observation to the engine's terms; `device` names the device kind
/// from its UID (`DeviceId::cpu` or `DeviceId::memory_slot`). Every `_EJ0` reaches the engine,
/// the refused ones too: the engine judges and journals it.
pub fn observation(obs: HotplugObservation, device: fn(u32) -> DeviceId) -> GuestObservation {
    match obs {
        HotplugObservation::StatusRead { uid } => {
            GuestObservation::new(device(uid), GuestEvent::StatusRead)
        }
        HotplugObservation::Ost { uid, event, status } => {
            GuestObservation::new(device(uid), GuestEvent::ost(event, status))
        }
        HotplugObservation::Ejected { uid } => {
            GuestObservation::new(device(uid), GuestEvent::Eject)
        }
        HotplugObservation::EjectRefused { uid } => GuestObservation {
            refused: true,
            ..GuestObservation::new(device(uid), GuestEvent::Eject)
        },
    }
}

/// Sends controller observations to the engine.
pub fn observer(
    queue: ObservationSender,
    device: fn(u32) -> DeviceId,
) -> Box<dyn Fn(HotplugObservation) + Send + Sync> {
    Box::new(move |obs| queue.send(observation(obs, device)))
}

/// Called with a device the guest has just ejected (`_EJ0` carried out by its controller and
/// taken by the engine: a removal of it is in flight or has just committed): the vCPU manager
/// starts parking the CPU's thread then, so that Commit finds it parked. Also the type of the hook told of an eject the
/// engine refused (the device is offered to the guest again: raise its GED event).
pub type EjectHook = Box<dyn FnMut(DeviceId) + Send>;

/// The controller's half of a refused guest eject: the device stays, so its removal is
/// withdrawn in its controller (plugged back in if the guest already let it go under `allow`)
/// and the GED event of its kind is raised, so that the guest's next scan finds it again.
pub fn offer_again(
    cpu: Arc<CpuHotplugController>,
    memory: Option<Arc<MemoryHotplugController>>,
    ged: Arc<Ged>,
) -> EjectHook {
    Box::new(move |device| {
        let event = match device {
            DeviceId::Cpu(id) => {
                cpu.withdraw_removal(id.0);
                GedEvent::Cpu
            }
            DeviceId::MemorySlot(slot) => {
                if let Some(c) = &memory {
                    c.withdraw_removal(slot.0);
                }
                GedEvent::Memory
            }
        };
        if let Err(e) = ged.notify(event) {
            tracing::error!("cannot raise the GED interrupt: {e}");
        }
    })
}
