//! RX: one frame from the tap into one RX chain, or, with `VIRTIO_NET_F_MRG_RXBUF`, spread over
//! as many chains as it needs (virtio 1.2 §5.1.6.4).
//!
//! The chains for a frame are popped first ([`take`]); only when they can hold all of it is
//! anything written. Without MRG_RXBUF that is one chain, which must hold the whole frame (a
//! chain too small is returned with used length 0 and the frame dropped, as before). With it,
//! chains are popped until their writable bytes cover the frame: the frame fills each chain in
//! turn, every chain gets its own used entry (the bytes written into it, consecutive in the used
//! ring), and the header's `num_buffers` says how many there are. The header is 12 bytes either
//! way (a modern device's `virtio_net_hdr_v1`).
//!
//! Hostile rings: a chain with a driver-readable buffer, no writable bytes, or malformed, ends
//! the collection: the frame is dropped and every chain popped for it returned with used length
//! 0 (never un-popped: the used ring holds each head once). If the ring runs out first, the
//! chains go back (`undo_pop`) and the frame waits for the driver's next buffers; if the chains
//! popped already hold every descriptor of the queue, no buffers can come: the frame is dropped
//! (the chains go back unused).

use bounce::{Chain, DmaQueue, QueueError};

use super::VNET_HDR_LEN;

/// What [`take`] found for a frame.
pub enum Take {
    /// Chains that together hold the frame (one without MRG_RXBUF).
    Ready(Vec<Chain>),
    /// The ring ran out first; the chains popped were put back and driver notifications are
    /// enabled.
    Empty,
    /// A chain was unusable: every chain popped was returned with used length 0. Drop the
    /// frame.
    Drop,
    /// No set of chains can ever hold the frame: the chains popped were put back. Drop the
    /// frame.
    TooBig,
}

/// A chain's writable bytes, or `None` if it has a driver-readable buffer or none writable.
fn capacity(chain: &Chain) -> Option<u64> {
    let mut n = 0u64;
    for d in &chain.descs {
        if !d.writable {
            return None;
        }
        n += u64::from(d.len);
    }
    (n > 0).then_some(n)
}

/// Pops the chains a frame of `len` bytes (header included) needs. Chains returned unused (a
/// hostile ring) are added to the used ring here; `used` is set when that happened.
/// `held_descs` descriptors of the queue are already held by the caller (for a frame's tail:
/// see `rx_direct`).
pub fn take(
    q: &mut DmaQueue,
    len: usize,
    mergeable: bool,
    used: &mut bool,
    held_descs: u64,
) -> Result<Take, QueueError> {
    let queue_size = u64::from(virtio_queue::QueueT::size(q.queue()));
    let mut chains: Vec<Chain> = Vec::new();
    let (mut have, mut descs) = (0u64, held_descs);
    let give_back = |q: &mut DmaQueue, chains: &[Chain], used: &mut bool| {
        for c in chains {
            q.add_used(c.head, 0)?;
            *used = true;
        }
        Ok::<_, QueueError>(())
    };
    while have < len as u64 {
        let chain = match q.pop() {
            Ok(Some(c)) => c,
            Ok(None) => {
                // Ask for a kick; if chains arrived meanwhile, go on with them. Otherwise put
                // back what was popped: with EVENT_IDX the kick comes at the first chain after
                // them.
                if q.enable_notification()? {
                    continue;
                }
                for _ in &chains {
                    q.undo_pop();
                }
                return Ok(Take::Empty);
            }
            Err(QueueError::MalformedChain { head }) => {
                crate::warn_limited!("virtio-net: malformed RX chain at head {head}");
                give_back(q, &chains, used)?;
                q.add_used(head, 0)?;
                *used = true;
                return Ok(Take::Drop);
            }
            Err(e) => return Err(e),
        };
        let Some(cap) = capacity(&chain) else {
            crate::warn_limited!(
                "virtio-net: RX chain {} has a driver-readable buffer or no room; frame dropped",
                chain.head
            );
            chains.push(chain);
            give_back(q, &chains, used)?;
            return Ok(Take::Drop);
        };
        have += cap;
        descs += chain.descs.len() as u64;
        chains.push(chain);
        if !mergeable && have < len as u64 {
            crate::warn_limited!(
                "virtio-net: RX chain {} too small for a {len}-byte frame; frame dropped",
                chains[0].head
            );
            give_back(q, &chains, used)?;
            return Ok(Take::Drop);
        }
        if have < len as u64 && descs >= queue_size {
            // Every descriptor of the queue is in `chains`: no more can come.
            crate::warn_limited!(
                "virtio-net: the whole RX ring ({have} bytes) cannot hold a {len}-byte frame; \
                 frame dropped"
            );
            for _ in &chains {
                q.undo_pop();
            }
            return Ok(Take::TooBig);
        }
    }
    Ok(Take::Ready(chains))
}

/// Writes `frame` into `chains` (from [`take`]: together they hold it), setting the header's
/// `num_buffers` to the number of chains (unless `frame` is the tail of a frame whose header is
/// already written: `tail`); returns each chain's used length. If a buffer cannot be mapped or
/// written (e.g. the bounce pools are exhausted) the frame is dropped: every chain's used
/// length is 0, which the driver discards as a runt.
pub fn write(q: &DmaQueue, chains: &[Chain], frame: &mut [u8], tail: bool) -> Vec<(u16, u32)> {
    let num_buffers = u16::try_from(chains.len()).unwrap_or(u16::MAX);
    if let Some(nb) = frame
        .get_mut(VNET_HDR_LEN - 2..VNET_HDR_LEN)
        .filter(|_| !tail)
    {
        nb.copy_from_slice(&num_buffers.to_le_bytes());
    }
    let mut off = 0usize;
    let mut out = Vec::with_capacity(chains.len());
    for c in chains {
        let mut n = 0usize;
        for d in &c.descs {
            if off == frame.len() {
                break;
            }
            let len = (d.len as usize).min(frame.len() - off);
            let r = q.map(d).and_then(|mut b| {
                b.write_at(0, &frame[off..off + len])
                    .and_then(|()| b.unmap())
            });
            if let Err(e) = r {
                crate::warn_limited!("virtio-net: RX chain {}: {e}; frame dropped", c.head);
                return chains.iter().map(|c| (c.head, 0)).collect();
            }
            off += len;
            n += len;
        }
        out.push((c.head, n as u32));
    }
    out
}
