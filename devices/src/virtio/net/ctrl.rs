//! The control queue (virtio 1.2 §5.1.6.5), offered with `VIRTIO_NET_F_CTRL_VQ` when the device
//! has more than one queue pair (`VIRTIO_NET_F_MQ` needs it).
//!
//! A command is one chain: driver-readable `class`, `command` and command-specific data, then a
//! device-writable `ack` byte (`VIRTIO_NET_OK` or `VIRTIO_NET_ERR`). The device understands
//! `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` only; every other command is answered `VIRTIO_NET_ERR`
//! (the driver negotiated no feature that would let it send one).
//!
//! Hostile chains: a driver-readable buffer after a device-writable one, no device-writable
//! byte for the ack, or an ack that cannot be mapped, are returned with used length 0 and the
//! command is not run (there is nowhere to put its status); a command shorter than its two header bytes, longer than [`MAX_COMMAND`], or
//! whose buffers cannot be read, is answered `VIRTIO_NET_ERR`. Only what is read is mapped: at
//! most [`MAX_COMMAND`] bytes, and the ack byte alone; every mapping is released before
//! [`handle`] returns.

use bounce::{Chain, Desc, DmaError, DmaQueue};

/// `ack` values.
pub const VIRTIO_NET_OK: u8 = 0;
pub const VIRTIO_NET_ERR: u8 = 1;
/// The multiqueue class and its one command microvm supports.
pub const VIRTIO_NET_CTRL_MQ: u8 = 4;
pub const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
/// The longest command (class, command and data) the device reads; `VQ_PAIRS_SET` is 4 bytes.
pub const MAX_COMMAND: usize = 64;

/// Why a control chain was returned without an answer.
#[derive(Debug, thiserror::Error)]
pub enum CtrlError {
    #[error("a driver-readable buffer follows a device-writable one")]
    ReadableAfterWritable,
    #[error("no device-writable byte for the ack")]
    NoAck,
    #[error("writing the ack: {0}")]
    Ack(DmaError),
}

/// One control command as the driver sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command<'a> {
    pub class: u8,
    pub command: u8,
    pub data: &'a [u8],
}

/// Answers one control chain: `exec` runs a well-formed command and returns its ack. Returns
/// the chain's used length (the ack byte written: 1).
pub fn handle(
    q: &DmaQueue,
    chain: &Chain,
    exec: impl FnOnce(Command<'_>) -> u8,
) -> Result<u32, CtrlError> {
    let split = chain
        .descs
        .iter()
        .position(|d| d.writable)
        .unwrap_or(chain.descs.len());
    let (readable, writable) = chain.descs.split_at(split);
    if writable.iter().any(|d| !d.writable) {
        return Err(CtrlError::ReadableAfterWritable);
    }
    let ack = writable
        .iter()
        .find(|d| d.len > 0)
        .ok_or(CtrlError::NoAck)?;
    // Mapped first: a command whose ack cannot be written is not run.
    let mut ack = q
        .map(&Desc {
            addr: ack.addr,
            len: 1,
            writable: true,
        })
        .map_err(CtrlError::Ack)?;
    let total: u64 = readable.iter().map(|d| u64::from(d.len)).sum();
    let status = if total < 2 {
        crate::warn_limited!(
            "virtio-net: control command of {total} bytes, shorter than its header"
        );
        VIRTIO_NET_ERR
    } else if total > MAX_COMMAND as u64 {
        crate::warn_limited!(
            "virtio-net: control command of {total} bytes (at most {MAX_COMMAND} are read)"
        );
        VIRTIO_NET_ERR
    } else {
        let mut buf = [0u8; MAX_COMMAND];
        match read_readable(q, readable, &mut buf[..total as usize]) {
            Ok(()) => exec(Command {
                class: buf[0],
                command: buf[1],
                data: &buf[2..total as usize],
            }),
            Err(e) => {
                crate::warn_limited!("virtio-net: control command unreadable: {e}");
                VIRTIO_NET_ERR
            }
        }
    };
    ack.write_at(0, &[status]).map_err(CtrlError::Ack)?;
    ack.unmap().map_err(CtrlError::Ack)?;
    Ok(1)
}

/// Reads the readable buffers, in order, into `out` (exactly their total length).
fn read_readable(q: &DmaQueue, descs: &[Desc], out: &mut [u8]) -> Result<(), DmaError> {
    let mut off = 0usize;
    for d in descs {
        let len = d.len as usize;
        if len == 0 {
            continue;
        }
        let b = q.map(d)?;
        b.read_at(0, &mut out[off..off + len])?;
        b.unmap()?;
        off += len;
    }
    Ok(())
}
