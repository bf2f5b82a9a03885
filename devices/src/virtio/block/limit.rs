//! What a virtio-blk request costs its rate limiter.

use bounce::Chain;

/// One operation and the bytes of the request's data buffers: every descriptor but the header
/// (first) and the status byte (last). For discard and write zeroes that is the 16-byte segment
/// descriptor, not the range it covers: those are limited by the operations bucket and by
/// their maximum sectors per request.
pub(super) fn request_bytes(chain: &Chain) -> u64 {
    let n = chain.descs.len();
    chain
        .descs
        .iter()
        .take(n.saturating_sub(1))
        .skip(1)
        .map(|d| u64::from(d.len))
        .sum()
}
