//! virtio-net (virtio 1.2 §5.1) on a tap device: one RX queue (0) and one TX queue (1), or with
//! `N > 1` queue pairs on a multi-queue tap (one tap fd per pair), RX queue `2i` and TX queue
//! `2i + 1` for pair `i` and a control queue last (`2N`).
//!
//! * Multiqueue: with more than one pair, `VIRTIO_NET_F_MQ` and `VIRTIO_NET_F_CTRL_VQ` are
//!   offered and config space says `max_virtqueue_pairs` = N. Only the first `pairs` pairs carry
//!   traffic: 1 after activation, then what the driver sets with `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`
//!   on the control queue ([`ctrl`]). The tap queues of the other pairs are detached
//!   (`TUNSETQUEUE`), so the kernel steers no frame to a queue nobody reads; a driver
//!   notification on an unused pair's queue is ignored. The rate limiters are the device's,
//!   shared by its pairs.
//!
//! * TX ([`tx`]): a chain's driver-readable buffers (12-byte virtio net header + frame) are
//!   mapped and written to the tap in one `writev` straight from the mappings (the bounce slots
//!   when bouncing); only the header is copied, to be sanitised. Oversized or malformed chains
//!   are dropped and returned with used length 0.
//! * RX ([`rx`]): when the tap is readable, one frame (header included) is read into a fixed
//!   host buffer and copied into the next RX chain's writable buffers, or with
//!   `VIRTIO_NET_F_MRG_RXBUF` spread over as many chains as it needs (`num_buffers` in its
//!   header). With MRG_RXBUF and no RX rate limiter the frame is `readv`'d straight into the
//!   next chain's mappings, the host buffer taking only what does not fit (`rx_direct`). A frame never gets dropped because the driver has not posted enough buffers yet:
//!   it stays pending and the tap is taken out of the event loop (back-pressure) until the
//!   driver kicks the RX queue. At most [`RX_BURST`] frames are moved per event so heavy
//!   ingress cannot starve the other devices.
//! * Offloads: CSUM, GUEST_CSUM, HOST/GUEST_TSO4/6 are offered only if the tap accepted
//!   `TUNSETOFFLOAD` with them at construction; after FEATURES_OK the tap gets exactly the
//!   negotiated guest-side set. UFO is never offered (Linux taps no longer do it). Without
//!   MRG_RXBUF, GUEST_TSO makes the driver post 64 KiB chains ("big packets"); with it, a
//!   driver posts page-sized buffers and a 64 KiB frame takes several.
//! * TX headers reach the host kernel (`virtio_net_hdr_to_skb`) only as far as the driver
//!   negotiated them: [`hdr::sanitize_tx`] clears what the device must ignore and drops frames
//!   asking for a checksum or segmentation offload that was not negotiated.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use bounce::{Chain, DmaQueue};
use event_manager::EventSet;

pub use super::tap::Tap;
use super::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN};
use super::{
    chain_bytes, drain_queue, drain_queue_limited, feature, read_config_bytes, ActivateError,
    DeviceError, Interrupt, QueueState, VirtioDevice, QUEUE_BUDGET, TYPE_NET,
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
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
pub const VIRTIO_NET_F_STATUS: u32 = 16;
pub const VIRTIO_NET_F_CTRL_VQ: u32 = 17;
pub const VIRTIO_NET_F_MQ: u32 = 22;
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

pub mod ctrl;
pub mod hdr;
pub mod rx;
mod rx_direct;
pub mod tx;

/// Queue indices of the first pair.
const RX: usize = 0;
const TX: usize = 1;
/// The most queue pairs a device takes (a multi-queue tap has at most this many queues).
pub const MAX_QUEUE_PAIRS: usize = super::tap::MAX_TAP_QUEUES;
/// Largest frame accepted or delivered, header included (64 KiB GSO frame + Ethernet/VLAN).
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65535 + 18;
/// Frames moved from the tap per event.
pub const RX_BURST: usize = 64;
/// Control commands served per notification (then the transport comes back after the other
/// ready fds): one VQ_PAIRS_SET may attach or detach up to N - 1 tap queues, and each detach
/// waits for an RCU grace period in the host kernel, so a driver flipping between 1 and N
/// pairs must not hold the event loop for [`QUEUE_BUDGET`] of them. Linux sends one command
/// at a time and waits for its answer.
pub const CTRL_BUDGET: usize = 4;

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

/// One queue pair's tap queue and RX state.
struct Pair {
    tap: Tap,
    /// The tap queue is attached (pair 0's always is; see [`Tap::set_queue_attached`]).
    attached: bool,
    rx_buf: Box<[u8]>,
    /// Length of the frame in `rx_buf` waiting for an RX chain.
    rx_pending: Option<usize>,
    /// A frame is pending and the RX ring was empty: stop polling the tap.
    rx_starved: bool,
}

/// virtio-net device.
pub struct Net {
    pairs: Vec<Pair>,
    /// Pairs carrying traffic (1 until the driver sets more with VQ_PAIRS_SET).
    active_pairs: usize,
    max_sizes: Vec<u16>,
    features: u64,
    config: [u8; 12],
    queues: Vec<DmaQueue>,
    interrupt: Option<Arc<Interrupt>>,
    /// Only for TX chains of too many buffers for one `writev` (empty until one comes).
    tx_buf: Vec<u8>,
    /// The features the driver accepted (what TX headers may ask for).
    acked: u64,
    /// Rate limiters of RX (index 0) and TX (index 1), kept across resets.
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
    /// The RX limiter refused the pending frame: stop polling the tap until its timer fires.
    rx_throttled: bool,
}

impl Net {
    /// A device with one queue pair on `tap`.
    pub fn new(tap: Tap, cfg: NetConfig) -> io::Result<Net> {
        Self::with_taps(vec![tap], cfg)
    }

    /// A device with one queue pair per tap queue in `taps` (the queues of one multi-queue
    /// tap: [`Tap::open_queues`]). All but the first are detached until the driver asks for
    /// more pairs.
    pub fn with_taps(taps: Vec<Tap>, cfg: NetConfig) -> io::Result<Net> {
        let qs = cfg.queue_size;
        if qs < 2 || !qs.is_power_of_two() || qs > 32768 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let n = taps.len();
        if n == 0 || n > MAX_QUEUE_PAIRS {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let tap = &taps[0];
        let mut features = feature(VIRTIO_NET_F_MAC)
            | feature(VIRTIO_NET_F_STATUS)
            | feature(VIRTIO_NET_F_MRG_RXBUF);
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
        let mut max_sizes = vec![qs; 2 * n];
        if n > 1 {
            features |= feature(VIRTIO_NET_F_CTRL_VQ) | feature(VIRTIO_NET_F_MQ);
            max_sizes.push(qs);
        }
        let mut pairs = Vec::with_capacity(n);
        for (i, tap) in taps.into_iter().enumerate() {
            if i > 0 {
                tap.set_queue_attached(false)?;
            }
            pairs.push(Pair {
                tap,
                attached: i == 0,
                rx_buf: vec![0u8; MAX_FRAME_LEN].into_boxed_slice(),
                rx_pending: None,
                rx_starved: false,
            });
        }
        let limiter = || rate_limiter::optional(cfg.rate_limit).map_err(io::Error::other);
        let (rx_limiter, tx_limiter) = (limiter()?, limiter()?);
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&cfg.mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        if n > 1 {
            // max_virtqueue_pairs (exists only with MQ).
            config[8..10].copy_from_slice(&(n as u16).to_le_bytes());
        }
        Ok(Net {
            pairs,
            active_pairs: 1,
            max_sizes,
            features,
            config,
            queues: Vec::new(),
            interrupt: None,
            tx_buf: Vec::new(),
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

    /// The features the driver accepted for multiqueue: MQ (with the CTRL_VQ it needs).
    fn mq(&self) -> bool {
        let both = feature(VIRTIO_NET_F_MQ) | feature(VIRTIO_NET_F_CTRL_VQ);
        self.acked & self.features & both == both
    }

    /// The control queue's index, if the driver negotiated one: after the last pair with MQ,
    /// else after the first (virtio 1.2 §5.1.2).
    fn ctrl_index(&self) -> Option<usize> {
        (self.acked & self.features & feature(VIRTIO_NET_F_CTRL_VQ) != 0).then(|| {
            if self.mq() {
                2 * self.pairs.len()
            } else {
                2
            }
        })
    }

    /// Queue pairs carrying traffic now.
    pub fn active_pairs(&self) -> usize {
        self.active_pairs
    }

    fn process_tx(&mut self, pair: usize) -> Result<QueueState, DeviceError> {
        let Net {
            pairs,
            queues,
            interrupt,
            tx_buf,
            acked,
            tx_limiter,
            ..
        } = self;
        let index = 2 * pair + TX;
        let (Some(p), Some(q), Some(irq)) =
            (pairs.get(pair), queues.get_mut(index), interrupt.as_ref())
        else {
            return Err(DeviceError::NoSuchQueue(index));
        };
        let tap = &p.tap;
        let limiter = tx_limiter
            .as_mut()
            .map(|l| (l, tx_frame_bytes as fn(&Chain) -> u64));
        drain_queue_limited(q, irq, QUEUE_BUDGET, limiter, |q, chain| {
            if let Err(e) = tx::send(q, chain, tap, *acked, tx_buf) {
                if e.is_guest_error() {
                    crate::warn_limited!("virtio-net: TX chain {}: frame dropped: {e}", chain.head);
                } else {
                    log::debug!("virtio-net: TX chain {}: {e}", chain.head);
                }
                q.count_error();
            }
            0
        })
    }

    /// Moves frames from pair `pair`'s tap queue to its RX queue until the tap is empty, the
    /// ring is, or the burst is done.
    fn process_rx(&mut self, pair: usize) -> Result<(), DeviceError> {
        let Net {
            pairs,
            queues,
            interrupt,
            rx_limiter,
            rx_throttled,
            acked,
            ..
        } = self;
        let index = 2 * pair + RX;
        let (Some(p), Some(q), Some(irq)) = (
            pairs.get_mut(pair),
            queues.get_mut(index),
            interrupt.as_ref(),
        ) else {
            return Err(DeviceError::NoSuchQueue(index));
        };
        let Pair {
            tap,
            rx_buf,
            rx_pending,
            rx_starved,
            ..
        } = p;
        let mergeable = *acked & feature(VIRTIO_NET_F_MRG_RXBUF) != 0;
        // Straight into the next chain's mappings (`rx_direct`: MRG_RXBUF, no RX limiter).
        let direct = mergeable && rx_limiter.is_none();
        let mut used = false;
        let mut frames = 0;
        while frames < RX_BURST {
            if rx_limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
                *rx_throttled = true;
                break;
            }
            if rx_pending.is_none() && direct {
                match rx_direct::read(q, tap, rx_buf, &mut used)? {
                    rx_direct::Direct::Done => {
                        frames += 1;
                        continue;
                    }
                    rx_direct::Direct::Empty => break,
                    rx_direct::Direct::Fallback(Some(len)) => {
                        *rx_pending = Some(len);
                        *rx_starved = true;
                        break;
                    }
                    rx_direct::Direct::Fallback(None) => {}
                }
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
            match rx::take(q, len, mergeable, &mut used, 0)? {
                rx::Take::Ready(chains) => {
                    // Charged only for a frame that has chains to go to: a refused one stays
                    // pending and the chains go back.
                    let bytes = (len - VNET_HDR_LEN) as u64;
                    if rx_limiter.as_mut().is_some_and(|l| !l.consume(bytes)) {
                        for _ in &chains {
                            q.undo_pop();
                        }
                        *rx_throttled = true;
                        break;
                    }
                    for (head, n) in rx::write(q, &chains, &mut rx_buf[..len], false) {
                        q.add_used(head, n)?;
                    }
                    used = true;
                    *rx_pending = None;
                    frames += 1;
                }
                rx::Take::Empty => {
                    // Not enough buffers: keep the frame, wait for a kick (`take` asked for
                    // one), stop reading the tap.
                    *rx_starved = true;
                    break;
                }
                rx::Take::Drop | rx::Take::TooBig => {
                    *rx_pending = None;
                    frames += 1;
                }
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

    /// Serves the control queue: each command is answered (see [`ctrl`]).
    fn process_ctrl(&mut self, index: usize) -> Result<QueueState, DeviceError> {
        let mq = self.mq();
        // Which pairs the driver made ready (VQ_PAIRS_SET may enable only those).
        let ready: Vec<bool> = (0..self.pairs.len())
            .map(|p| {
                [2 * p + RX, 2 * p + TX].iter().all(|&i| {
                    self.queues
                        .get(i)
                        .is_some_and(|q| virtio_queue::QueueT::ready(q.queue()))
                })
            })
            .collect();
        let Net {
            pairs,
            active_pairs,
            queues,
            interrupt,
            ..
        } = self;
        let (Some(q), Some(irq)) = (queues.get_mut(index), interrupt.as_ref()) else {
            return Err(DeviceError::NoSuchQueue(index));
        };
        drain_queue(q, irq, CTRL_BUDGET, |q, chain| {
            let r = ctrl::handle(q, chain, |cmd| {
                ctrl_command(cmd, mq, &ready, pairs, active_pairs)
            });
            r.unwrap_or_else(|e| {
                crate::warn_limited!(
                    "virtio-net: control chain {}: {e}; returned unanswered",
                    chain.head
                );
                q.count_error();
                0
            })
        })
    }
}

/// Runs one well-formed control command; its ack.
fn ctrl_command(
    cmd: ctrl::Command<'_>,
    mq: bool,
    ready: &[bool],
    pairs: &mut [Pair],
    active_pairs: &mut usize,
) -> u8 {
    use ctrl::{
        VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_OK,
    };
    if !(mq && cmd.class == VIRTIO_NET_CTRL_MQ && cmd.command == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) {
        crate::warn_limited!(
            "virtio-net: unsupported control command class {} command {}: VIRTIO_NET_ERR",
            cmd.class,
            cmd.command
        );
        return VIRTIO_NET_ERR;
    }
    let Ok(bytes) = <[u8; 2]>::try_from(cmd.data) else {
        crate::warn_limited!(
            "virtio-net: VQ_PAIRS_SET with {} bytes of data (2 expected)",
            cmd.data.len()
        );
        return VIRTIO_NET_ERR;
    };
    let n = usize::from(u16::from_le_bytes(bytes));
    if n == 0 || n > pairs.len() || !ready[..n].iter().all(|&r| r) {
        crate::warn_limited!(
            "virtio-net: VQ_PAIRS_SET {n} refused ({} pairs, the driver made {} ready)",
            pairs.len(),
            ready.iter().take_while(|&&r| r).count()
        );
        return VIRTIO_NET_ERR;
    }
    match set_active_pairs(pairs, n) {
        Ok(()) => {
            *active_pairs = n;
            crate::info_limited!("virtio-net: {n} of {} queue pairs in use", pairs.len());
            VIRTIO_NET_OK
        }
        Err(e) => {
            crate::error_limited!(
                "virtio-net: VQ_PAIRS_SET {n}: TUNSETQUEUE: {e}; back to 1 queue pair"
            );
            let _ = set_active_pairs(pairs, 1);
            *active_pairs = 1;
            VIRTIO_NET_ERR
        }
    }
}

/// Attaches the tap queues of pairs `0..n` and detaches the others (pair 0's stays attached);
/// every queue is tried, the first error is returned.
fn set_active_pairs(pairs: &mut [Pair], n: usize) -> io::Result<()> {
    let mut first = Ok(());
    for (i, p) in pairs.iter_mut().enumerate().skip(1) {
        let want = i < n;
        if p.attached != want {
            match p.tap.set_queue_attached(want) {
                Ok(()) => p.attached = want,
                Err(e) => {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
    }
    first
}

/// What a TX chain costs its rate limiter: the frame's bytes, without the virtio-net header.
fn tx_frame_bytes(chain: &Chain) -> u64 {
    chain_bytes(chain).saturating_sub(VNET_HDR_LEN as u64)
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
        // The interface's offloads, set through pair 0's queue (always attached).
        if let Err(e) = self.pairs[0].tap.set_offload(tun) {
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
        if queues.len() != self.max_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.max_sizes.len(),
                got: queues.len(),
            });
        }
        // The first pair, and the control queue if negotiated, are required; the other pairs'
        // queues only once VQ_PAIRS_SET asks for them.
        let required = [Some(RX), Some(TX), self.ctrl_index()];
        for i in required.into_iter().flatten() {
            if !queues
                .get(i)
                .is_some_and(|q| virtio_queue::QueueT::ready(q.queue()))
            {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        self.queues = queues;
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<QueueState, DeviceError> {
        if self.ctrl_index() == Some(index) {
            return self.process_ctrl(index);
        }
        let pair = index / 2;
        if pair >= self.active_pairs {
            // A queue of a pair not in use (or no queue at all): not served. The transport
            // also comes here for every queue after activation and rate-limiter timers.
            log::debug!("virtio-net: queue {index} is not in use");
            return Ok(QueueState::Drained);
        }
        match index % 2 {
            // RX is bounded by RX_BURST per call, and what is left waits on the tap (polled,
            // level-triggered) or on the driver's next RX buffers (a notification).
            RX => self.process_rx(pair).map(|()| QueueState::Drained),
            _ => self.process_tx(pair),
        }
    }

    fn backend_interest(&self) -> Option<(RawFd, EventSet)> {
        self.backend_interest_at(0)
    }

    fn process_backend(&mut self, events: EventSet) -> Result<(), DeviceError> {
        self.process_backend_at(0, events)
    }

    fn backend_count(&self) -> usize {
        self.pairs.len()
    }

    fn backend_interest_at(&self, index: usize) -> Option<(RawFd, EventSet)> {
        let p = self.pairs.get(index)?;
        (!self.queues.is_empty()
            && index < self.active_pairs
            && !p.rx_starved
            && !self.rx_throttled)
            .then(|| (p.tap.as_raw_fd(), EventSet::IN))
    }

    fn process_backend_at(&mut self, index: usize, events: EventSet) -> Result<(), DeviceError> {
        if index >= self.active_pairs {
            // An event from before VQ_PAIRS_SET took the pair out of use.
            return Ok(());
        }
        if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            crate::error_limited!("virtio-net: tap queue {index}: error/hang-up");
        }
        self.process_rx(index)
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

    fn reset(&mut self) {
        self.queues.clear();
        self.interrupt = None;
        for p in &mut self.pairs {
            p.rx_pending = None;
            p.rx_starved = false;
        }
        if let Err(e) = set_active_pairs(&mut self.pairs, 1) {
            crate::error_limited!("virtio-net: detaching tap queues at reset: {e}");
        }
        self.active_pairs = 1;
        self.acked = 0;
        if let Err(e) = self.pairs[0].tap.set_offload(0) {
            crate::warn_limited!("virtio-net: clearing tap offloads: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
