//! The guest console: a 16550A (vm-superio) on the process's stdout, fed from stdin.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use devices::bus::BusDevice;

/// Raises the serial IRQ through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Unbuffered stdout, so the console shows prompts without a newline at once.
pub struct Console;

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

pub type SerialDevice = Serial<IrqTrigger, NoEvents, Console>;

pub struct SerialPort(pub SerialDevice);

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [b, ..]) = (u8::try_from(offset), data) {
            *b = self.0.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b, ..]) = (u8::try_from(offset), data) {
            if let Err(e) = self.0.write(off, *b) {
                log::warn!("serial write failed: {e:?}");
            }
        }
    }
}

/// Forwards stdin to the serial receive FIFO.
pub struct StdinInput {
    pub serial: Arc<Mutex<SerialPort>>,
}

impl MutEventSubscriber for StdinInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&io::stdin(), EventSet::IN)) {
            // Not pollable (e.g. a regular file): the guest simply gets no input.
            log::debug!("guest console input disabled: stdin cannot be polled: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let room = serial.0.fifo_capacity();
        if room == 0 {
            return;
        }
        let mut buf = [0u8; 64];
        let n = room.min(buf.len());
        match io::stdin().lock().read(&mut buf[..n]) {
            Ok(0) => {
                // EOF: stop polling, the guest keeps running.
                let _ = ops.remove(Events::empty_raw(io::stdin().as_raw_fd()));
            }
            Ok(n) => {
                if let Err(e) = serial.0.enqueue_raw_bytes(&buf[..n]) {
                    log::warn!("serial input dropped: {e:?}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("reading stdin failed, console input disabled: {e}");
                let _ = ops.remove(events);
            }
        }
    }
}
