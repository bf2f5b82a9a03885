//! The 12-byte virtio net header of a TX frame, made fit for the host kernel.
//!
//! The tap hands the header to the host kernel's `virtio_net_hdr_to_skb`, which sets up
//! checksum offload and segmentation (GSO) from it, whatever the tap's own offload settings: the
//! header must say only what the driver negotiated (virtio 1.2 §5.1.6.2.1). [`sanitize_tx`]
//! clears what the device must ignore and refuses the frames that ask for an offload the driver
//! did not negotiate.

use thiserror::Error;

use super::{
    feature, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VNET_HDR_LEN,
};

pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// Why a TX frame is dropped.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TxHeaderError {
    #[error("GSO type {0:#x} was not negotiated")]
    GsoNotNegotiated(u8),
    #[error("GSO without NEEDS_CSUM")]
    GsoWithoutCsum,
    #[error("GSO with a segment size of 0")]
    GsoSizeZero,
}

fn get16(hdr: &[u8; VNET_HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([hdr[at], hdr[at + 1]])
}

fn put16(hdr: &mut [u8; VNET_HDR_LEN], at: usize, v: u16) {
    hdr[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Rewrites a TX header (`flags`, `gso_type`, `hdr_len`, `gso_size`, `csum_start`,
/// `csum_offset`, `num_buffers`, little-endian) to say only what the driver negotiated in
/// `acked`:
///
/// * `flags`: NEEDS_CSUM stays only with VIRTIO_NET_F_CSUM; every other bit (DATA_VALID and
///   RSC_INFO are for RX only) is cleared, as the device must ignore them.
/// * `gso_type`: TCPV4 needs HOST_TSO4, TCPV6 HOST_TSO6, and both NEEDS_CSUM and a non-zero
///   `gso_size`; UDP (UFO), ECN and unknown types are never offered. Anything else is an error:
///   the frame is dropped rather than sent unsegmented.
/// * Fields that nothing uses any more are zeroed: `csum_start`/`csum_offset` without
///   NEEDS_CSUM, `gso_size` without GSO, `hdr_len` with neither, and always `num_buffers`.
pub fn sanitize_tx(hdr: &mut [u8; VNET_HDR_LEN], acked: u64) -> Result<(), TxHeaderError> {
    let has = |bit| acked & feature(bit) != 0;
    let needs_csum = hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && has(VIRTIO_NET_F_CSUM);
    hdr[0] = if needs_csum {
        VIRTIO_NET_HDR_F_NEEDS_CSUM
    } else {
        0
    };
    let gso = hdr[1];
    let allowed = match gso {
        VIRTIO_NET_HDR_GSO_NONE => true,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_HOST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_HOST_TSO6),
        _ => false,
    };
    if !allowed {
        return Err(TxHeaderError::GsoNotNegotiated(gso));
    }
    if gso != VIRTIO_NET_HDR_GSO_NONE {
        if !needs_csum {
            return Err(TxHeaderError::GsoWithoutCsum);
        }
        if get16(hdr, 4) == 0 {
            return Err(TxHeaderError::GsoSizeZero);
        }
    } else {
        put16(hdr, 4, 0); // gso_size
        if !needs_csum {
            put16(hdr, 2, 0); // hdr_len
        }
    }
    if !needs_csum {
        put16(hdr, 6, 0); // csum_start
        put16(hdr, 8, 0); // csum_offset
    }
    put16(hdr, 10, 0); // num_buffers
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
    fn hdr(flags: u8, gso: u8, fields: [u16; 5]) -> [u8; VNET_HDR_LEN] {
        let mut h = [flags, gso, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for (i, v) in fields.into_iter().enumerate() {
            put16(&mut h, 2 + 2 * i, v);
        }
        h
    }

    const TSO4: u64 = feature(VIRTIO_NET_F_CSUM) | feature(VIRTIO_NET_F_HOST_TSO4);

    #[test]
    fn only_negotiated_offloads_pass() {
        let gso4 = |flags| hdr(flags, VIRTIO_NET_HDR_GSO_TCPV4, [66, 1448, 34, 16, 7]);
        // Negotiated: kept as written but for num_buffers.
        let mut h = gso4(VIRTIO_NET_HDR_F_NEEDS_CSUM);
        sanitize_tx(&mut h, TSO4).unwrap();
        assert_eq!(h, hdr(1, 1, [66, 1448, 34, 16, 0]));
        // DATA_VALID, RSC_INFO and unknown flag bits are cleared.
        let mut h = gso4(0xff);
        sanitize_tx(&mut h, TSO4).unwrap();
        assert_eq!(h, hdr(1, 1, [66, 1448, 34, 16, 0]));

        for (h, acked, err) in [
            (gso4(1), 0, TxHeaderError::GsoNotNegotiated(1)),
            (
                gso4(1),
                feature(VIRTIO_NET_F_CSUM),
                TxHeaderError::GsoNotNegotiated(1),
            ),
            (gso4(0), TSO4, TxHeaderError::GsoWithoutCsum),
            // Without CSUM, NEEDS_CSUM is ignored: the GSO frame has no checksum offload.
            (
                gso4(1),
                feature(VIRTIO_NET_F_HOST_TSO4),
                TxHeaderError::GsoWithoutCsum,
            ),
            (
                hdr(1, VIRTIO_NET_HDR_GSO_TCPV4, [66, 0, 34, 16, 0]),
                TSO4,
                TxHeaderError::GsoSizeZero,
            ),
            (
                hdr(1, VIRTIO_NET_HDR_GSO_TCPV6, [86, 1428, 54, 16, 0]),
                TSO4,
                TxHeaderError::GsoNotNegotiated(VIRTIO_NET_HDR_GSO_TCPV6),
            ),
            (
                hdr(
                    1,
                    VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
                    [66, 1448, 34, 16, 0],
                ),
                TSO4,
                TxHeaderError::GsoNotNegotiated(0x81),
            ),
            (
                hdr(1, VIRTIO_NET_HDR_GSO_UDP, [42, 1472, 34, 6, 0]),
                u64::MAX,
                TxHeaderError::GsoNotNegotiated(VIRTIO_NET_HDR_GSO_UDP),
            ),
            (
                hdr(1, 0x42, [0; 5]),
                u64::MAX,
                TxHeaderError::GsoNotNegotiated(0x42),
            ),
        ] {
            let mut h2 = h;
            assert_eq!(
                sanitize_tx(&mut h2, acked),
                Err(err),
                "{h:?} acked {acked:#x}"
            );
        }
    }

    #[test]
    fn fields_nothing_uses_are_zeroed() {
        // No offload negotiated: only a plain header leaves.
        let mut h = hdr(0xff, 0, [0xffff; 5]);
        sanitize_tx(&mut h, 0).unwrap();
        assert_eq!(h, [0; VNET_HDR_LEN]);
        // Checksum offload alone: hdr_len stays as the kernel's hint, gso_size goes.
        let mut h = hdr(1, 0, [54, 1448, 34, 16, 1]);
        sanitize_tx(&mut h, feature(VIRTIO_NET_F_CSUM)).unwrap();
        assert_eq!(h, hdr(1, 0, [54, 0, 34, 16, 0]));
    }
}
