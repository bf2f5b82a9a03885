//! The guest console: a 16550A (vm-superio) on the process's stdout, fed from stdin.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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

/// Tells the event loop when the guest has drained the receive FIFO, so stdin is read again.
pub struct InputDrained(EventFd);

impl InputDrained {
    pub fn new() -> io::Result<(InputDrained, EventFd)> {
        let evt = EventFd::new(EFD_NONBLOCK)?;
        let watch = evt.try_clone()?;
        Ok((InputDrained(evt), watch))
    }
}

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

pub type SerialDevice = Serial<IrqTrigger, InputDrained, Console>;

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
                devices::warn_limited!("serial write failed: {e:?}");
            }
        }
    }
}

/// Forwards stdin to the serial receive FIFO. While the FIFO is full, stdin leaves the (level-
/// triggered) event loop, which would otherwise spin on it; it comes back when the guest has
/// read the FIFO empty.
pub struct StdinInput {
    serial: Arc<Mutex<SerialPort>>,
    drained: EventFd,
    paused: bool,
}

impl StdinInput {
    /// `drained` is the other end of the serial port's [`InputDrained`].
    pub fn new(serial: Arc<Mutex<SerialPort>>, drained: EventFd) -> Self {
        StdinInput {
            serial,
            drained,
            paused: false,
        }
    }

    fn stdin_events() -> Events {
        Events::new(&io::stdin(), EventSet::IN)
    }
}

impl MutEventSubscriber for StdinInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Self::stdin_events()) {
            // Not pollable (e.g. a regular file): the guest simply gets no input.
            log::debug!("guest console input disabled: stdin cannot be polled: {e:?}");
            return;
        }
        if let Err(e) = ops.add(Events::new(&self.drained, EventSet::IN)) {
            log::warn!("cannot watch the console input FIFO: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.drained.as_raw_fd() {
            let _ = self.drained.read();
            if self.paused && ops.add(Self::stdin_events()).is_ok() {
                self.paused = false;
            }
            return;
        }
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let room = serial.0.fifo_capacity();
        if room == 0 {
            if ops.remove(Self::stdin_events()).is_ok() {
                self.paused = true;
            }
            return;
        }
        let mut buf = [0u8; 64];
        let n = room.min(buf.len());
        match read_stdin(&mut buf[..n]) {
            Ok(0) => {
                // EOF: stop polling, the guest keeps running.
                let _ = ops.remove(Self::stdin_events());
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

/// One `read(2)` of fd 0 into `buf`. Not `io::stdin()`: std buffers stdin, so reading fewer
/// bytes than are waiting (the FIFO's room) would leave the rest in std's buffer, where epoll
/// cannot see it: typed input stuck until the next key.
fn read_stdin(buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reads at most `buf.len()` bytes into `buf`, which lives across the call.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
