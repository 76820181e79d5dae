//! The life of a vCPU thread: explicit states, commands that move between them, and a
//! handle whose every wait is bounded.
//!
//! The thread owns its vCPU for as long as the VM lives (KVM cannot destroy a vCPU, so a
//! removed CPU is *parked*, not ended). The owner drives it with [`VcpuCommand`]s through a
//! [`VcpuHandle`]: the command is stored, then the thread is *kicked* (a signal whose handler
//! sets `immediate_exit` in the vCPU's `kvm_run`, so `KVM_RUN` returns at once even when the
//! signal lands just before it), and the thread acknowledges by publishing its new
//! [`VcpuState`]. A thread that never comes back to its command check (stuck in a device
//! access, say) makes the owner's wait expire with [`VcpuWaitError::Timeout`]; it never hangs
//! the caller.
//!
//! Only the latest command counts: a newer one replaces one the thread has not taken yet
//! (except that `Exit` is final and `Pause` does not replace `Park`), so no sequence of
//! requests can queue work behind a slow vCPU.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a vCPU thread is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VcpuState {
    /// The thread exists and has never run the vCPU (a spare made ready for a hot-add).
    Created,
    /// In or around `KVM_RUN`.
    Running,
    /// Out of `KVM_RUN` because the VM is paused; resumes with [`VcpuCommand::Run`].
    Paused,
    /// Out of `KVM_RUN` because the guest ejected the CPU; runs again when it is re-added.
    Parked,
    /// The thread has ended (the VM is ending, or the vCPU stopped the machine).
    Exited,
}

/// What the owner asks of a vCPU thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuCommand {
    /// Enter (or go back to) `KVM_RUN`.
    Run,
    /// Leave `KVM_RUN` until the next `Run` (VM pause).
    Pause,
    /// Leave `KVM_RUN` until the next `Run` (the CPU left the guest).
    Park,
    /// End the thread.
    Exit,
}

impl VcpuCommand {
    /// The state a thread in `from` moves to on this command. A pause or park of a vCPU that
    /// is not running changes nothing but a paused vCPU may be parked, and nothing leaves
    /// `Exited`.
    pub fn next_state(self, from: VcpuState) -> VcpuState {
        use VcpuState::*;
        match (self, from) {
            (_, Exited) | (VcpuCommand::Exit, _) => Exited,
            (VcpuCommand::Run, _) => Running,
            (VcpuCommand::Pause, Running) => Paused,
            (VcpuCommand::Pause, s) => s,
            (VcpuCommand::Park, Running | Paused | Created) => Parked,
            (VcpuCommand::Park, s) => s,
        }
    }

    /// Whether the thread must be pulled out of `KVM_RUN` to obey.
    fn needs_kick(self) -> bool {
        !matches!(self, VcpuCommand::Run)
    }
}

/// What one run of the vCPU ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// An exit was handled; run again.
    Continue,
    /// `KVM_RUN` was interrupted by a kick: look at the commands.
    Kicked,
    /// The vCPU cannot run any more (the guest stopped the machine, or KVM failed).
    Stop,
}

/// The part of a vCPU that runs on its thread: KVM for real vCPUs, a stand-in in tests.
pub trait VcpuRun: Send + 'static {
    /// Called on the vCPU thread before anything else (where the kick handler learns which
    /// `kvm_run` to flag).
    fn attach(&mut self) {}
    /// Runs the vCPU once (one `KVM_RUN` and the exit it returned).
    fn run(&mut self) -> RunOutcome;
    /// Clears what a kick left behind (`immediate_exit`), before the next run.
    fn clear_kick(&mut self) {}
    /// Called on the vCPU thread before it ends.
    fn detach(&mut self) {}
}

/// Why a wait for a vCPU failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VcpuWaitError {
    /// The thread did not reach the wanted state in time.
    #[error("vCPU {id} did not become {want:?} within {waited:?} (it is {state:?})")]
    Timeout {
        /// vCPU id.
        id: u32,
        /// The state waited for.
        want: VcpuState,
        /// The state it was in when the wait ended.
        state: VcpuState,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The thread ended instead.
    #[error("vCPU {id} exited while waiting for it to become {want:?}")]
    Exited {
        /// vCPU id.
        id: u32,
        /// The state waited for.
        want: VcpuState,
    },
}

#[derive(Debug)]
struct Control {
    command: Option<VcpuCommand>,
    state: VcpuState,
}

#[derive(Debug)]
struct Shared {
    control: Mutex<Control>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Control> {
        // The lock guards two plain values that are never left half-written, so a panic
        // elsewhere cannot make them inconsistent: keep going with what is there.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, state: VcpuState) {
        self.lock().state = state;
        self.changed.notify_all();
    }

    /// The next command: waits for one unless the vCPU is running.
    fn take_command(&self, running: bool) -> Option<VcpuCommand> {
        let mut control = self.lock();
        if !running {
            control = self
                .changed
                .wait_while(control, |c| c.command.is_none())
                .unwrap_or_else(|e| e.into_inner());
        }
        control.command.take()
    }
}

/// Pulls a vCPU thread out of `KVM_RUN` (or out of whatever it is blocked in).
pub type Kick = fn(&JoinHandle<()>);

/// The owner's end of a vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    id: u32,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    kick: Kick,
}

impl VcpuHandle {
    /// Starts the thread of vCPU `id` in state [`VcpuState::Created`]; it runs nothing until
    /// [`VcpuCommand::Run`]. `kick` pulls the thread out of `KVM_RUN` (see the module docs).
    ///
    /// When the thread cannot start, the vCPU comes back with the error: KVM cannot destroy a
    /// vCPU, so the caller keeps it for the next try.
    pub fn spawn<V: VcpuRun>(
        id: u32,
        vcpu: V,
        kick: Kick,
    ) -> Result<VcpuHandle, (std::io::Error, Option<V>)> {
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                command: None,
                state: VcpuState::Created,
            }),
            changed: Condvar::new(),
        });
        let thread_shared = shared.clone();
        // Handed over through a slot the caller can empty again if the thread never starts.
        let slot = Arc::new(Mutex::new(Some(vcpu)));
        let thread_slot = slot.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let vcpu = thread_slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(vcpu) = vcpu {
                    vcpu_thread(id, vcpu, &thread_shared);
                }
            });
        let thread = match spawned {
            Ok(thread) => thread,
            Err(e) => {
                let vcpu = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                return Err((e, vcpu));
            }
        };
        Ok(VcpuHandle {
            id,
            shared,
            thread: Some(thread),
            kick,
        })
    }

    /// The vCPU id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The state the thread last acknowledged.
    pub fn state(&self) -> VcpuState {
        self.shared.lock().state
    }

    /// Asks the thread for `command` and returns at once.
    pub fn send(&self, command: VcpuCommand) {
        {
            let mut control = self.shared.lock();
            if control.state == VcpuState::Exited {
                return;
            }
            // Exit is final, and a pause must not undo a park the vCPU has not taken yet (a
            // resume would then run a CPU the guest ejected).
            match (control.command, command) {
                (Some(VcpuCommand::Exit), _) | (Some(VcpuCommand::Park), VcpuCommand::Pause) => {
                    return
                }
                _ => control.command = Some(command),
            }
        }
        self.shared.changed.notify_all();
        if command.needs_kick() {
            if let Some(thread) = &self.thread {
                if !thread.is_finished() {
                    (self.kick)(thread);
                }
            }
        }
    }

    /// Waits until the thread is in `want`, at most `timeout`.
    pub fn wait_for(&self, want: VcpuState, timeout: Duration) -> Result<(), VcpuWaitError> {
        let started = Instant::now();
        let control = self.shared.lock();
        let (control, _) = self
            .shared
            .changed
            .wait_timeout_while(control, timeout, |c| {
                c.state != want && c.state != VcpuState::Exited
            })
            .unwrap_or_else(|e| e.into_inner());
        match control.state {
            s if s == want => Ok(()),
            VcpuState::Exited => Err(VcpuWaitError::Exited { id: self.id, want }),
            state => Err(VcpuWaitError::Timeout {
                id: self.id,
                want,
                state,
                waited: started.elapsed(),
            }),
        }
    }

    /// [`send`](Self::send)s `command` and waits (at most `timeout`) for its acknowledgement.
    pub fn request(&self, command: VcpuCommand, timeout: Duration) -> Result<(), VcpuWaitError> {
        let want = command.next_state(self.state());
        self.send(command);
        self.wait_for(want, timeout)
    }

    /// Ends the thread, waiting at most `timeout`. A thread that does not end in time is left
    /// behind (detached) and reported; the caller is never held longer.
    pub fn exit(mut self, timeout: Duration) -> Result<(), VcpuWaitError> {
        self.send(VcpuCommand::Exit);
        self.wait_for(VcpuState::Exited, timeout)?;
        if let Some(thread) = self.thread.take() {
            // It has published Exited and only returns from here on: the join is immediate.
            if thread.join().is_err() {
                tracing::error!(vcpu = self.id, "vCPU thread panicked");
            }
        }
        Ok(())
    }
}

fn vcpu_thread(id: u32, mut vcpu: impl VcpuRun, shared: &Shared) {
    vcpu.attach();
    let mut state = VcpuState::Created;
    tracing::debug!(vcpu = id, "vCPU thread ready");
    loop {
        if let Some(command) = shared.take_command(state == VcpuState::Running) {
            let next = command.next_state(state);
            if next != state {
                tracing::debug!(vcpu = id, from = ?state, to = ?next, "vCPU state");
            }
            state = next;
            // Published even when unchanged: the owner may be waiting for this very state.
            shared.publish(state);
            if state == VcpuState::Exited {
                break;
            }
        }
        if state != VcpuState::Running {
            continue;
        }
        match vcpu.run() {
            RunOutcome::Continue => {}
            RunOutcome::Kicked => vcpu.clear_kick(),
            RunOutcome::Stop => {
                state = VcpuState::Exited;
                shared.publish(state);
                break;
            }
        }
    }
    vcpu.detach();
    tracing::debug!(vcpu = id, "vCPU thread ended");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    const ACK: Duration = Duration::from_secs(5);

    /// A vCPU that "runs" in 1 ms slices, or blocks for `stuck_for` on its next run
    /// (as a vCPU blocked in a device write would), ignoring kicks.
    struct FakeVcpu {
        runs: Arc<AtomicU32>,
        stuck: Arc<AtomicBool>,
        stop_after: Option<u32>,
    }

    impl VcpuRun for FakeVcpu {
        fn run(&mut self) -> RunOutcome {
            let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            while self.stuck.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(1));
            if self.stop_after.is_some_and(|s| n >= s) {
                return RunOutcome::Stop;
            }
            RunOutcome::Continue
        }
    }

    fn fake(stop_after: Option<u32>) -> (VcpuHandle, Arc<AtomicU32>, Arc<AtomicBool>) {
        let runs = Arc::new(AtomicU32::new(0));
        let stuck = Arc::new(AtomicBool::new(false));
        let vcpu = FakeVcpu {
            runs: runs.clone(),
            stuck: stuck.clone(),
            stop_after,
        };
        let handle = VcpuHandle::spawn(7, vcpu, |_| {})
            .map_err(|(e, _)| e)
            .unwrap();
        (handle, runs, stuck)
    }

    /// Makes the fake's next run block, and waits (bounded) until it has begun.
    fn wait_until_stuck(runs: &AtomicU32, stuck: &AtomicBool) {
        let before = runs.load(Ordering::SeqCst);
        stuck.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + ACK;
        while runs.load(Ordering::SeqCst) <= before {
            assert!(Instant::now() < deadline, "the vCPU never ran again");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn transitions_follow_the_table() {
        use VcpuCommand::*;
        use VcpuState::*;
        let cases = [
            (Run, Created, Running),
            (Run, Paused, Running),
            (Run, Parked, Running),
            (Pause, Running, Paused),
            (Pause, Created, Created),
            (Pause, Parked, Parked),
            (Park, Running, Parked),
            (Park, Paused, Parked),
            (Park, Created, Parked),
            (Exit, Running, Exited),
            (Exit, Parked, Exited),
            (Run, Exited, Exited),
        ];
        for (command, from, to) in cases {
            assert_eq!(command.next_state(from), to, "{command:?} from {from:?}");
        }
    }

    #[test]
    fn a_spare_runs_nothing_until_told() {
        let (h, runs, _) = fake(None);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(h.state(), VcpuState::Created);
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        h.request(VcpuCommand::Run, ACK).unwrap();
        h.exit(ACK).unwrap();
    }

    #[test]
    fn run_pause_park_resume_exit() {
        let (h, runs, _) = fake(None);
        h.request(VcpuCommand::Run, ACK).unwrap();
        h.request(VcpuCommand::Pause, ACK).unwrap();
        let paused_at = runs.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(runs.load(Ordering::SeqCst), paused_at, "a paused vCPU runs");
        h.request(VcpuCommand::Run, ACK).unwrap();
        h.request(VcpuCommand::Park, ACK).unwrap();
        assert_eq!(h.state(), VcpuState::Parked);
        h.request(VcpuCommand::Pause, ACK).unwrap();
        assert_eq!(
            h.state(),
            VcpuState::Parked,
            "pausing a parked vCPU keeps it parked"
        );
        h.request(VcpuCommand::Run, ACK).unwrap();
        let before = runs.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            runs.load(Ordering::SeqCst) > before,
            "a resumed vCPU runs again"
        );
        h.exit(ACK).unwrap();
    }

    #[test]
    fn every_wait_on_a_stuck_vcpu_expires() {
        let (h, runs, stuck) = fake(None);
        h.request(VcpuCommand::Run, ACK).unwrap();
        wait_until_stuck(&runs, &stuck);
        let bound = Duration::from_millis(50);
        for command in [VcpuCommand::Pause, VcpuCommand::Park] {
            let started = Instant::now();
            let err = h.request(command, bound).unwrap_err();
            assert!(
                matches!(
                    err,
                    VcpuWaitError::Timeout {
                        id: 7,
                        state: VcpuState::Running,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "the wait was not bounded"
            );
        }
        let h_exit = Instant::now();
        // Exit consumes the handle: a stuck thread is left behind, the caller goes on.
        let err = h.exit(bound).unwrap_err();
        assert!(matches!(
            err,
            VcpuWaitError::Timeout {
                want: VcpuState::Exited,
                ..
            }
        ));
        assert!(h_exit.elapsed() < Duration::from_secs(1));
        stuck.store(false, Ordering::SeqCst);
    }

    #[test]
    fn a_stuck_vcpu_obeys_once_it_comes_back() {
        let (h, runs, stuck) = fake(None);
        h.request(VcpuCommand::Run, ACK).unwrap();
        wait_until_stuck(&runs, &stuck);
        assert!(h
            .request(VcpuCommand::Park, Duration::from_millis(20))
            .is_err());
        stuck.store(false, Ordering::SeqCst);
        h.wait_for(VcpuState::Parked, ACK).unwrap();
        h.exit(ACK).unwrap();
    }

    #[test]
    fn the_latest_command_wins() {
        let (h, _, stuck) = fake(None);
        h.request(VcpuCommand::Run, ACK).unwrap();
        stuck.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(5));
        for _ in 0..1000 {
            h.send(VcpuCommand::Pause);
            h.send(VcpuCommand::Run);
        }
        h.send(VcpuCommand::Park);
        stuck.store(false, Ordering::SeqCst);
        h.wait_for(VcpuState::Parked, ACK).unwrap();
        h.exit(ACK).unwrap();
    }

    #[test]
    fn exit_is_final_and_a_pause_does_not_undo_a_park() {
        let (h, _, stuck) = fake(None);
        h.request(VcpuCommand::Run, ACK).unwrap();
        stuck.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(5));
        h.send(VcpuCommand::Park);
        h.send(VcpuCommand::Pause);
        stuck.store(false, Ordering::SeqCst);
        h.wait_for(VcpuState::Parked, ACK).unwrap();
        stuck.store(true, Ordering::SeqCst);
        h.send(VcpuCommand::Run);
        std::thread::sleep(Duration::from_millis(5));
        h.send(VcpuCommand::Exit);
        h.send(VcpuCommand::Run);
        stuck.store(false, Ordering::SeqCst);
        h.wait_for(VcpuState::Exited, ACK).unwrap();
        h.exit(ACK).unwrap();
    }

    #[test]
    fn a_vcpu_that_stops_the_machine_reports_exited() {
        let (h, _, _) = fake(Some(3));
        h.send(VcpuCommand::Run);
        assert_eq!(
            h.wait_for(VcpuState::Paused, ACK),
            Err(VcpuWaitError::Exited {
                id: 7,
                want: VcpuState::Paused
            })
        );
        assert_eq!(h.state(), VcpuState::Exited);
        h.send(VcpuCommand::Run);
        assert_eq!(h.state(), VcpuState::Exited);
        h.exit(ACK).unwrap();
    }
}
