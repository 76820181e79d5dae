//! The 16550 UART at COM1 (`vm-superio`), as a PIO device.

use std::io::{self, Write};
use std::sync::Mutex;

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::guest_log::{guest_warn, GuestLog};

/// Raises an interrupt by writing to an eventfd registered as a KVM irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }

    /// The wrapped eventfd.
    pub fn event(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

type Uart = Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

/// COM1: what the guest writes goes to `out`; [`SerialDevice::enqueue_input`] feeds the
/// guest's receive FIFO.
pub struct SerialDevice {
    uart: Mutex<Uart>,
    bad_access: GuestLog,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART raising its interrupt through `irq` and writing guest output to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Mutex::new(Serial::new(EventFdTrigger::new(irq), out)),
            bad_access: GuestLog::new(),
        }
    }

    /// Queues host input for the guest. Returns how many bytes fitted in the FIFO; the rest
    /// is dropped, as a real UART would when nobody reads it.
    pub fn enqueue_input(&self, bytes: &[u8]) -> usize {
        let Ok(mut uart) = self.uart.lock() else {
            return 0;
        };
        let room = uart.fifo_capacity().min(bytes.len());
        match uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("serial: cannot queue input: {e:?}");
                0
            }
        }
    }
}

impl SerialDevice {
    /// Bytes queued for the guest and not read yet.
    pub fn pending_input(&self) -> usize {
        self.uart.lock().map_or(0, |u| u.state().in_buffer.len())
    }

    /// Raises the receive interrupt again when input is waiting and the guest enabled the
    /// receive interrupt. The UART model raises an edge only when data arrives with no
    /// receive interrupt already flagged, so one lost edge would leave input unread forever;
    /// a real 16550 keeps its interrupt line asserted while data is pending, and this gives
    /// the guest the same guarantee. Returns whether it raised the interrupt.
    pub fn kick_receiver(&self) -> bool {
        const IER_RDA: u8 = 0x01;
        let Ok(uart) = self.uart.lock() else {
            return false;
        };
        let state = uart.state();
        if state.interrupt_enable & IER_RDA == 0 || state.in_buffer.is_empty() {
            return false;
        }
        uart.interrupt_evt().trigger().is_ok()
    }
}

impl DevicePio for SerialDevice {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let len = data.len();
        let (Ok(off), [byte]) = (u8::try_from(offset), &mut *data) else {
            guest_warn!(
                self.bad_access,
                "serial: {len}-byte read at offset {offset} ignored"
            );
            data.fill(0);
            return;
        };
        if let Ok(mut uart) = self.uart.lock() {
            *byte = uart.read(off);
        }
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let (Ok(off), [byte]) = (u8::try_from(offset), data) else {
            guest_warn!(
                self.bad_access,
                "serial: {}-byte write at offset {offset} ignored",
                data.len()
            );
            return;
        };
        if let Ok(mut uart) = self.uart.lock() {
            if let Err(e) = uart.write(off, *byte) {
                guest_warn!(self.bad_access, "serial: write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_sink_and_input_the_guest() {
        let sink = Sink::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        for b in b"hi" {
            dev.pio_write(PioAddress(0x3f8), 0, &[*b]);
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi");
        // Enable the receive-data interrupt, then feed input.
        dev.pio_write(PioAddress(0x3f8), 1, &[1]);
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert!(irq.read().unwrap() >= 1);
        let mut byte = [0u8];
        dev.pio_read(PioAddress(0x3f8), 0, &mut byte);
        assert_eq!(byte, *b"x");
    }

    #[test]
    fn unread_input_raises_the_interrupt_again() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(io::sink()));
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        assert!(
            !dev.kick_receiver(),
            "no kick while the guest has receive interrupts off"
        );
        dev.pio_write(PioAddress(0x3f8), 1, &[1]);
        let _ = irq.read();
        assert_eq!(dev.pending_input(), 2);
        assert!(dev.kick_receiver());
        assert_eq!(irq.read().unwrap(), 1);
        let mut byte = [0u8];
        dev.pio_read(PioAddress(0x3f8), 0, &mut byte);
        dev.pio_read(PioAddress(0x3f8), 0, &mut byte);
        assert_eq!(dev.pending_input(), 0);
        assert!(!dev.kick_receiver(), "nothing left to read");
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let dev = SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(io::sink()));
        let mut wide = [0xffu8; 4];
        dev.pio_read(PioAddress(0x3f8), 0, &mut wide);
        assert_eq!(wide, [0; 4]);
        dev.pio_write(PioAddress(0x3f8), 0, &[1, 2]);
        dev.pio_write(PioAddress(0x3f8), 0x100, &[1]);
        assert_eq!(dev.bad_access.count(), 3);
    }
}
