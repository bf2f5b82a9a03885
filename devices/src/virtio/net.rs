//! virtio-net (virtio 1.2 §5.1) on a tap device: one RX queue (0) and one TX queue (1).
//!
//! * TX: a chain's driver-readable buffers (12-byte virtio net header + frame) are gathered into
//!   a fixed host buffer of [`MAX_FRAME_LEN`] bytes and written to the tap in one `write`.
//!   Oversized or malformed chains are dropped and returned with used length 0.
//! * RX: when the tap is readable, one frame (header included) is read into a fixed host buffer
//!   and copied into the next RX chain's writable buffers. A frame never gets dropped because
//!   the driver has not posted buffers yet: it stays pending and the tap is taken out of the
//!   event loop (back-pressure) until the driver kicks the RX queue. At most [`RX_BURST`] frames
//!   are moved per event so heavy ingress cannot starve the other devices.
//! * Offloads: CSUM, GUEST_CSUM, HOST/GUEST_TSO4/6 are offered only if the tap accepted
//!   `TUNSETOFFLOAD` with them at construction; after FEATURES_OK the tap gets exactly the
//!   negotiated guest-side set. UFO is never offered (Linux taps no longer do it). No
//!   MRG_RXBUF: with GUEST_TSO the driver must post 64 KiB chains ("big packets").
//! * TX headers reach the host kernel (`virtio_net_hdr_to_skb`) only as far as the driver
//!   negotiated them: [`hdr::sanitize_tx`] clears what the device must ignore and drops frames
//!   asking for a checksum or segmentation offload that was not negotiated.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use bounce::{Chain, DmaQueue, QueueError};
use event_manager::EventSet;

pub use super::tap::Tap;
use super::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN};
use super::{
    chain_bytes, drain_queue_limited, feature, read_config_bytes, ActivateError, DeviceError,
    Interrupt, QueueState, VirtioDevice, QUEUE_BUDGET, TYPE_NET,
};
pub use hdr::TxHeaderError;

use crate::rate_limiter::{self, LimiterConfig, RateLimiter};

pub const VIRTIO_NET_F_CSUM: u32 = 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
pub const VIRTIO_NET_F_MAC: u32 = 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
pub const VIRTIO_NET_F_STATUS: u32 = 16;
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

pub mod hdr;

const RX: usize = 0;
const TX: usize = 1;
/// Largest frame accepted or delivered, header included (64 KiB GSO frame + Ethernet/VLAN).
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65535 + 18;
/// Frames moved from the tap per event.
pub const RX_BURST: usize = 64;

/// Device options chosen by the VMM.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub queue_size: u16,
    /// Frames (`ops`) and bytes per second, applied to each direction with its own buckets
    /// (none: unlimited); bytes are the Ethernet frame's, without the virtio-net header.
    pub rate_limit: LimiterConfig,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            mac: [0x06, 0, 0, 0, 0, 1],
            queue_size: 256,
            rate_limit: LimiterConfig::default(),
        }
    }
}

/// virtio-net device.
pub struct Net {
    tap: Tap,
    max_sizes: [u16; 2],
    features: u64,
    config: [u8; 12],
    queues: Vec<DmaQueue>,
    interrupt: Option<Arc<Interrupt>>,
    rx_buf: Box<[u8]>,
    /// Length of the frame in `rx_buf` waiting for an RX chain.
    rx_pending: Option<usize>,
    /// A frame is pending and the RX ring was empty: stop polling the tap.
    rx_starved: bool,
    tx_buf: Box<[u8]>,
    /// The features the driver accepted (what TX headers may ask for).
    acked: u64,
    /// Rate limiters of RX (index 0) and TX (index 1), kept across resets.
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
    /// The RX limiter refused the pending frame: stop polling the tap until its timer fires.
    rx_throttled: bool,
}

impl Net {
    pub fn new(tap: Tap, cfg: NetConfig) -> io::Result<Net> {
        let qs = cfg.queue_size;
        if qs < 2 || !qs.is_power_of_two() || qs > 32768 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut features = feature(VIRTIO_NET_F_MAC) | feature(VIRTIO_NET_F_STATUS);
        // Offer offloads only if the tap can actually do them.
        if tap
            .set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
            .is_ok()
        {
            features |= feature(VIRTIO_NET_F_CSUM)
                | feature(VIRTIO_NET_F_GUEST_CSUM)
                | feature(VIRTIO_NET_F_GUEST_TSO4)
                | feature(VIRTIO_NET_F_GUEST_TSO6)
                | feature(VIRTIO_NET_F_HOST_TSO4)
                | feature(VIRTIO_NET_F_HOST_TSO6);
        }
        tap.set_offload(0)?;
        let limiter = || rate_limiter::optional(cfg.rate_limit).map_err(io::Error::other);
        let (rx_limiter, tx_limiter) = (limiter()?, limiter()?);
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&cfg.mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        Ok(Net {
            tap,
            max_sizes: [qs, qs],
            features,
            config,
            queues: Vec::new(),
            interrupt: None,
            rx_buf: vec![0u8; MAX_FRAME_LEN].into_boxed_slice(),
            rx_pending: None,
            rx_starved: false,
            tx_buf: vec![0u8; MAX_FRAME_LEN].into_boxed_slice(),
            acked: 0,
            rx_limiter,
            tx_limiter,
            rx_throttled: false,
        })
    }

    /// Replaces the RX and TX rate limiters made from `NetConfig::rate_limit` (e.g. ones on a
    /// [`crate::rate_limiter::ManualClock`]); before the device joins an event loop.
    pub fn set_rate_limiters(&mut self, rx: Option<RateLimiter>, tx: Option<RateLimiter>) {
        self.rx_limiter = rx;
        self.tx_limiter = tx;
    }

    fn process_tx(&mut self) -> Result<QueueState, DeviceError> {
        let Net {
            tap,
            queues,
            interrupt,
            tx_buf,
            acked,
            tx_limiter,
            ..
        } = self;
        let (Some(q), Some(irq)) = (queues.get_mut(TX), interrupt.as_ref()) else {
            return Err(DeviceError::NoSuchQueue(TX));
        };
        let limiter = tx_limiter
            .as_mut()
            .map(|l| (l, tx_frame_bytes as fn(&Chain) -> u64));
        drain_queue_limited(q, irq, QUEUE_BUDGET, limiter, |q, chain| {
            let Some(len) = gather(q, chain, tx_buf) else {
                q.count_error();
                return 0;
            };
            // `gather` returns frames of VNET_HDR_LEN bytes or more.
            let Some((header, _)) = tx_buf.split_first_chunk_mut::<VNET_HDR_LEN>() else {
                return 0;
            };
            if let Err(e) = hdr::sanitize_tx(header, *acked) {
                crate::warn_limited!("virtio-net: TX chain {}: frame dropped: {e}", chain.head);
                q.count_error();
                return 0;
            }
            match tap.write_frame(&tx_buf[..len]) {
                Ok(_) => {}
                // A full tap drops the frame, as a NIC with a full wire would.
                Err(e) => {
                    log::debug!("virtio-net: tap write: {e}");
                    q.count_error();
                }
            }
            0
        })
    }

    /// Moves frames from the tap to the RX queue until the tap is empty, the ring is, or the
    /// burst is done.
    fn process_rx(&mut self) -> Result<(), DeviceError> {
        let Net {
            tap,
            queues,
            interrupt,
            rx_buf,
            rx_pending,
            rx_starved,
            rx_limiter,
            rx_throttled,
            ..
        } = self;
        let (Some(q), Some(irq)) = (queues.get_mut(RX), interrupt.as_ref()) else {
            return Err(DeviceError::NoSuchQueue(RX));
        };
        let mut used = false;
        let mut frames = 0;
        while frames < RX_BURST {
            if rx_limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
                *rx_throttled = true;
                break;
            }
            let len = match *rx_pending {
                Some(len) => len,
                None => match tap.read_frame(rx_buf) {
                    Ok(len) if len >= VNET_HDR_LEN => len,
                    Ok(len) => {
                        log::debug!("virtio-net: runt frame of {len} bytes from the tap");
                        frames += 1;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(DeviceError::Backend(e)),
                },
            };
            *rx_pending = Some(len);
            match q.pop() {
                Ok(Some(chain)) => {
                    // Charged only for a frame that has a chain to go to: a refused one stays
                    // pending and the chain goes back.
                    let bytes = (len - VNET_HDR_LEN) as u64;
                    if rx_limiter.as_mut().is_some_and(|l| !l.consume(bytes)) {
                        q.undo_pop();
                        *rx_throttled = true;
                        break;
                    }
                    let n = scatter(q, &chain, &mut rx_buf[..len]);
                    q.add_used(chain.head, n)?;
                    used = true;
                    *rx_pending = None;
                    frames += 1;
                }
                Ok(None) => {
                    // No buffers: keep the frame, ask for a kick, stop reading the tap.
                    if q.enable_notification()? {
                        continue;
                    }
                    *rx_starved = true;
                    break;
                }
                Err(QueueError::MalformedChain { head }) => {
                    crate::warn_limited!("virtio-net: malformed RX chain at head {head}");
                    q.add_used(head, 0)?;
                    used = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if rx_pending.is_none() {
            *rx_starved = false;
        }
        if used && q.needs_notification()? {
            irq.signal_used_queue().map_err(DeviceError::Interrupt)?;
        }
        Ok(())
    }
}

/// What a TX chain costs its rate limiter: the frame's bytes, without the virtio-net header.
fn tx_frame_bytes(chain: &Chain) -> u64 {
    chain_bytes(chain).saturating_sub(VNET_HDR_LEN as u64)
}

/// Copies a TX chain into `buf`; `None` (frame dropped) if it is malformed or too large.
fn gather(q: &DmaQueue, chain: &Chain, buf: &mut [u8]) -> Option<usize> {
    let mut len = 0usize;
    for d in &chain.descs {
        if d.writable {
            crate::warn_limited!("virtio-net: TX chain {} has a writable buffer", chain.head);
            return None;
        }
        let n = d.len as usize;
        let Some(dst) = len.checked_add(n).and_then(|end| buf.get_mut(len..end)) else {
            crate::warn_limited!("virtio-net: TX frame over {MAX_FRAME_LEN} bytes dropped");
            return None;
        };
        let r = q.map(d).and_then(|b| {
            b.read_at(0, dst)?;
            b.unmap()
        });
        if let Err(e) = r {
            crate::warn_limited!("virtio-net: TX chain {}: {e}", chain.head);
            return None;
        }
        len += n;
    }
    (len >= VNET_HDR_LEN).then_some(len)
}

/// Copies a frame into an RX chain; returns the used length (0: chain unusable, frame dropped).
fn scatter(q: &DmaQueue, chain: &Chain, frame: &mut [u8]) -> u32 {
    // num_buffers = 1 (bytes 10..12 of the header; the tap leaves them alone).
    if let Some(nb) = frame.get_mut(10..12) {
        nb.copy_from_slice(&1u16.to_le_bytes());
    }
    let capacity: u64 = chain.descs.iter().map(|d| u64::from(d.len)).sum();
    if chain.descs.iter().any(|d| !d.writable) || capacity < frame.len() as u64 {
        crate::warn_limited!(
            "virtio-net: RX chain {} unusable for a {}-byte frame; frame dropped",
            chain.head,
            frame.len()
        );
        return 0;
    }
    let mut off = 0usize;
    for d in &chain.descs {
        if off == frame.len() {
            break;
        }
        let n = (d.len as usize).min(frame.len() - off);
        let Ok(mut b) = q.map(d) else {
            crate::warn_limited!("virtio-net: RX chain {}: unmappable buffer", chain.head);
            return 0;
        };
        let r = b.write_at(0, &frame[off..off + n]).and_then(|()| b.unmap());
        if let Err(e) = r {
            crate::warn_limited!("virtio-net: RX chain {}: {e}", chain.head);
            return 0;
        }
        off += n;
    }
    off as u32
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
        let mut tun = 0;
        if features & feature(VIRTIO_NET_F_GUEST_CSUM) != 0 {
            tun |= TUN_F_CSUM;
            if features & feature(VIRTIO_NET_F_GUEST_TSO4) != 0 {
                tun |= TUN_F_TSO4;
            }
            if features & feature(VIRTIO_NET_F_GUEST_TSO6) != 0 {
                tun |= TUN_F_TSO6;
            }
        }
        if let Err(e) = self.tap.set_offload(tun) {
            // Full, checksummed frames are always valid for the driver.
            crate::error_limited!(
                "virtio-net: TUNSETOFFLOAD {tun:#x}: {e}; delivering plain frames"
            );
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        queues: Vec<DmaQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if !self.queues.is_empty() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: queues.len(),
            });
        }
        for (i, q) in queues.iter().enumerate() {
            if !virtio_queue::QueueT::ready(q.queue()) {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        self.queues = queues;
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<QueueState, DeviceError> {
        match index {
            // RX is bounded by RX_BURST per call, and what is left waits on the tap (polled,
            // level-triggered) or on the driver's next RX buffers (a notification).
            RX => self.process_rx().map(|()| QueueState::Drained),
            TX => self.process_tx(),
            i => Err(DeviceError::NoSuchQueue(i)),
        }
    }

    fn backend_interest(&self) -> Option<(RawFd, EventSet)> {
        (!self.queues.is_empty() && !self.rx_starved && !self.rx_throttled)
            .then(|| (self.tap.as_raw_fd(), EventSet::IN))
    }

    fn rate_limiter_fds(&self) -> Vec<(usize, RawFd)> {
        // Index 0 is RX, 1 TX.
        [&self.rx_limiter, &self.tx_limiter]
            .into_iter()
            .enumerate()
            .filter_map(|(i, l)| l.as_ref().map(|l| (i, l.timer_fd())))
            .collect()
    }

    fn rate_limiter_event(&mut self, index: usize) {
        let l = match index {
            0 => self.rx_limiter.as_mut(),
            _ => self.tx_limiter.as_mut(),
        };
        if let Some(l) = l {
            l.on_timer();
        }
        if index == 0 {
            self.rx_throttled = false;
        }
    }

    fn process_backend(&mut self, events: EventSet) -> Result<(), DeviceError> {
        if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            crate::error_limited!("virtio-net: tap error/hang-up");
        }
        self.process_rx()
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.interrupt = None;
        self.rx_pending = None;
        self.rx_starved = false;
        self.acked = 0;
        if let Err(e) = self.tap.set_offload(0) {
            crate::warn_limited!("virtio-net: clearing tap offloads: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::io::FromRawFd;

    use super::*;
    use crate::virtio::test_utils::*;

    mod limit;

    /// A SOCK_SEQPACKET pair: one frame per read/write, like a tap.
    pub(super) fn fake_tap() -> (Tap, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: socketpair returned two fresh fds that nothing else owns.
        let (a, b) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        (Tap::from_file(a), b)
    }

    pub(super) fn frame(n: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend(vec![fill; n]);
        f
    }

    pub(super) struct Rig<'a> {
        pub(super) net: Net,
        pub(super) rx: TestQueue<'a>,
        pub(super) tx: TestQueue<'a>,
        pub(super) peer: File,
        _irqfd: vmm_sys_util::eventfd::EventFd,
    }

    pub(super) fn rig(mem: &vm_memory::GuestMemoryMmap) -> Rig<'_> {
        let (tap, peer) = fake_tap();
        let mut net = Net::new(tap, NetConfig::default()).unwrap();
        // A socket takes no offloads: none offered.
        assert_eq!(
            net.features(),
            feature(VIRTIO_NET_F_MAC) | feature(VIRTIO_NET_F_STATUS)
        );
        let rx = TestQueue::at(mem, 0, 16);
        let tx = TestQueue::at(mem, 0x8000, 16);
        let (irq, irqfd) = test_interrupt();
        net.activate(vec![rx.dma_queue(), tx.dma_queue()], irq)
            .unwrap();
        Rig {
            net,
            rx,
            tx,
            peer,
            _irqfd: irqfd,
        }
    }

    #[test]
    fn tx_gathers_chain_into_one_frame() {
        use std::io::Read;
        let mem = guest_mem();
        let mut r = rig(&mem);
        let f = frame(100, 0x5a);
        r.tx.write(0x10_0000, &f[..VNET_HDR_LEN]);
        r.tx.write(0x10_1000, &f[VNET_HDR_LEN..]);
        r.tx.add_chain(&[(0x10_0000, 12, false), (0x10_1000, 100, false)]);
        // Malformed: writable buffer, then too large.
        r.tx.add_chain(&[(0x10_0000, 12, true)]);
        r.tx.add_chain(&[(0x10_0000, 65535, false), (0x20_0000, 65535, false)]);
        r.net.process_queue(TX).unwrap();
        assert_eq!(r.tx.used(), vec![(0, 0), (2, 0), (3, 0)]);
        let mut got = vec![0u8; 4096];
        let n = r.peer.read(&mut got).unwrap();
        assert_eq!(&got[..n], &f[..]);
        assert!(r.peer.read(&mut got).is_err(), "only one frame sent");
    }

    /// Sends one TX frame (header + 64 bytes) through the device; returns what reached the tap,
    /// if anything.
    fn send(r: &mut Rig, header: [u8; VNET_HDR_LEN]) -> Option<Vec<u8>> {
        use std::io::Read;
        r.tx.write(0x10_0000, &header);
        r.tx.write(0x10_1000, &[0x5a; 64]);
        r.tx.add_chain(&[(0x10_0000, 12, false), (0x10_1000, 64, false)]);
        r.net.process_queue(TX).unwrap();
        assert_eq!(r.tx.used().last().map(|u| u.1), Some(0));
        let mut got = vec![0u8; 4096];
        let n = r.peer.read(&mut got).ok()?;
        assert_eq!(&got[VNET_HDR_LEN..n], &[0x5a; 64], "frame intact");
        got.truncate(VNET_HDR_LEN);
        Some(got)
    }

    #[test]
    fn tx_headers_carry_only_negotiated_offloads_to_the_tap() {
        use hdr::*;
        let mem = guest_mem();
        let mut r = rig(&mem);
        let h = |flags: u8, gso: u8, f: [u16; 5]| {
            let mut b = [flags, gso, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            for (i, v) in f.into_iter().enumerate() {
                b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
            }
            b
        };
        let tso4 = |flags| h(flags, VIRTIO_NET_HDR_GSO_TCPV4, [66, 1448, 34, 16, 0xffff]);

        // Nothing negotiated (a socket takes no offloads): flags, checksum and GSO fields and
        // num_buffers reach the tap zeroed; a GSO frame is dropped, not sent.
        assert_eq!(send(&mut r, h(0xff, 0, [0xffff; 5])), Some(vec![0; 12]));
        assert_eq!(send(&mut r, tso4(VIRTIO_NET_HDR_F_NEEDS_CSUM)), None);

        // The driver negotiated CSUM and HOST_TSO4 (not TSO6).
        r.net
            .ack_features(feature(VIRTIO_NET_F_CSUM) | feature(VIRTIO_NET_F_HOST_TSO4));
        let want = h(1, VIRTIO_NET_HDR_GSO_TCPV4, [66, 1448, 34, 16, 0]);
        assert_eq!(send(&mut r, tso4(0xff)), Some(want.to_vec()));
        let tso6 = h(1, VIRTIO_NET_HDR_GSO_TCPV6, [86, 1428, 54, 16, 0]);
        assert_eq!(send(&mut r, tso6), None);
        assert_eq!(send(&mut r, tso4(0)), None, "GSO without NEEDS_CSUM");
        let ecn = h(
            1,
            VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            [66, 1448, 34, 16, 0],
        );
        assert_eq!(send(&mut r, ecn), None);
        let ufo = h(1, VIRTIO_NET_HDR_GSO_UDP, [42, 1472, 34, 6, 0]);
        assert_eq!(send(&mut r, ufo), None);

        // A reset forgets what was negotiated (the driver sets its queues up afresh).
        r.net.reset();
        r.rx = TestQueue::at(&mem, 0, 16);
        r.tx = TestQueue::at(&mem, 0x8000, 16);
        let (irq, _irqfd) = test_interrupt();
        r.net
            .activate(vec![r.rx.dma_queue(), r.tx.dma_queue()], irq)
            .unwrap();
        assert_eq!(send(&mut r, tso4(VIRTIO_NET_HDR_F_NEEDS_CSUM)), None);
    }

    #[test]
    fn rx_backpressure_keeps_the_frame() {
        use std::io::Write;
        let mem = guest_mem();
        let mut r = rig(&mem);
        let f1 = frame(60, 1);
        let f2 = frame(1500, 2);
        r.peer.write_all(&f1).unwrap();
        r.peer.write_all(&f2).unwrap();
        assert!(r.net.backend_interest().is_some());

        // No RX buffers yet: the frame stays pending and the tap is no longer polled.
        r.net.process_backend(EventSet::IN).unwrap();
        assert!(r.net.backend_interest().is_none());
        assert!(r.rx.used().is_empty());

        // The driver posts one buffer and kicks: f1 is delivered, f2 then waits.
        r.rx.add_chain(&[(0x10_0000, 2048, true)]);
        r.net.process_queue(RX).unwrap();
        assert_eq!(r.rx.used(), vec![(0, f1.len() as u32)]);
        let got = r.rx.read(0x10_0000, f1.len());
        assert_eq!(&got[VNET_HDR_LEN..], &f1[VNET_HDR_LEN..]);
        assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers");
        assert!(r.net.backend_interest().is_none());

        // A chain too small for f2 is returned unused and f2 is dropped; a two-buffer chain
        // then takes the next frame.
        r.rx.add_chain(&[(0x11_0000, 100, true)]);
        r.net.process_queue(RX).unwrap();
        assert_eq!(r.rx.used()[1], (1, 0));
        assert!(r.net.backend_interest().is_some());
        r.peer.write_all(&f2).unwrap();
        r.rx.add_chain(&[(0x12_0000, 1000, true), (0x13_0000, 1000, true)]);
        r.net.process_backend(EventSet::IN).unwrap();
        assert_eq!(r.rx.used()[2], (2, f2.len() as u32));
        assert_eq!(r.rx.read(0x13_0000, 10), vec![2u8; 10]);

        // Reset forgets the pending state and stops polling.
        r.net.reset();
        assert!(r.net.backend_interest().is_none());
    }

    #[test]
    fn config_space_has_mac_and_link_up() {
        let (tap, _peer) = fake_tap();
        let net = Net::new(
            tap,
            NetConfig {
                mac: [2, 3, 4, 5, 6, 7],
                ..Default::default()
            },
        )
        .unwrap();
        let mut c = [0u8; 8];
        net.read_config(0, &mut c);
        assert_eq!(c, [2, 3, 4, 5, 6, 7, 1, 0]);
        assert!(net.backend_interest().is_none(), "not active");
    }

    #[test]
    fn real_tap() {
        // Needs CAP_NET_ADMIN and /dev/net/tun (CI runs as root): fails loudly otherwise.
        let tap = Tap::open("mvmtest%d")
            .expect("cannot open a tap: run as root (CAP_NET_ADMIN) with /dev/net/tun");
        let net = Net::new(tap, NetConfig::default()).unwrap();
        assert_ne!(net.features() & feature(VIRTIO_NET_F_MAC), 0);
    }
}
