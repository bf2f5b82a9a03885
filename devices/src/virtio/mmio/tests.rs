use std::sync::{Arc, Mutex};

use bounce::Dma;
use event_manager::{EventManager, SubscriberOps};

use super::*;
use crate::virtio::rng::Rng;
use crate::virtio::test_utils::*;
use crate::virtio::{INT_CONFIG, INT_USED_RING, STATUS_ACKNOWLEDGE, STATUS_DRIVER, TYPE_RNG};

fn transport(mem: &vm_memory::GuestMemoryMmap, access_platform: bool) -> (MmioTransport, EventFd) {
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(
        Box::new(Rng::new()),
        Dma::direct(mem.clone()),
        irq.try_clone().unwrap(),
        MmioOptions {
            access_platform,
            device_index: 3,
        },
    )
    .unwrap();
    (t, irq)
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn features(t: &mut MmioTransport) -> u64 {
    w(t, REG_DEVICE_FEATURES_SEL, 0);
    let lo = r(t, REG_DEVICE_FEATURES);
    w(t, REG_DEVICE_FEATURES_SEL, 1);
    let hi = r(t, REG_DEVICE_FEATURES);
    u64::from(lo) | u64::from(hi) << 32
}

fn negotiate(t: &mut MmioTransport, f: u64) -> bool {
    w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
    w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w(t, REG_DRIVER_FEATURES_SEL, 0);
    w(t, REG_DRIVER_FEATURES, f as u32);
    w(t, REG_DRIVER_FEATURES_SEL, 1);
    w(t, REG_DRIVER_FEATURES, (f >> 32) as u32);
    w(
        t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    r(t, REG_STATUS) & STATUS_FEATURES_OK != 0
}

/// Programs queue 0 from the mock queue's layout with `size`, and marks it ready.
fn setup_queue(t: &mut MmioTransport, q: &TestQueue, size: u32) {
    w(t, REG_QUEUE_SEL, 0);
    w(t, REG_QUEUE_NUM, size);
    let d = q.desc_addr().0;
    let a = q.avail_addr().0;
    let u = q.used_addr().0;
    w(t, REG_QUEUE_DESC_LOW, d as u32);
    w(t, REG_QUEUE_DESC_HIGH, (d >> 32) as u32);
    w(t, REG_QUEUE_DRIVER_LOW, a as u32);
    w(t, REG_QUEUE_DRIVER_HIGH, (a >> 32) as u32);
    w(t, REG_QUEUE_DEVICE_LOW, u as u32);
    w(t, REG_QUEUE_DEVICE_HIGH, (u >> 32) as u32);
    w(t, REG_QUEUE_READY, 1);
}

const ALL_OK: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

#[test]
fn identity_registers() {
    let mem = guest_mem();
    let (mut t, _irq) = transport(&mem, false);
    assert_eq!(r(&mut t, REG_MAGIC), 0x7472_6976);
    assert_eq!(r(&mut t, REG_VERSION), 2);
    assert_eq!(r(&mut t, REG_DEVICE_ID), TYPE_RNG);
    assert_eq!(r(&mut t, REG_VENDOR_ID), VENDOR_ID);
    assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 256);
    w(&mut t, REG_QUEUE_SEL, 1);
    assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0, "no queue 1");
    assert_eq!(r(&mut t, REG_SHM_LEN_LOW), u32::MAX);
    // Odd widths and offsets are ignored, never panic.
    let mut b = [0xffu8; 2];
    t.read(REG_MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xffu8; 4];
    t.read(REG_MAGIC + 1, &mut b);
    assert_eq!(b, [0; 4]);
    t.write(REG_STATUS, &[1, 2]);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    w(&mut t, REG_QUEUE_NOTIFY, 7);
    w(&mut t, 0xf00, 1);
    assert_eq!(
        cmdline_fragment(0xd000_0000, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
}

#[test]
fn feature_negotiation() {
    let mem = guest_mem();
    let (mut t, _irq) = transport(&mem, false);
    let f = features(&mut t);
    assert_ne!(f & feature(VIRTIO_F_VERSION_1), 0);
    assert_eq!(f & feature(VIRTIO_F_ACCESS_PLATFORM), 0);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 2);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0);

    let (mut tp, _irq) = transport(&mem, true);
    assert_ne!(features(&mut tp) & feature(VIRTIO_F_ACCESS_PLATFORM), 0);

    // Legacy driver (no VERSION_1): refused.
    assert!(!negotiate(&mut t, 0));
    // Unknown bit: refused.
    w(&mut t, REG_STATUS, 0);
    assert!(!negotiate(
        &mut t,
        feature(VIRTIO_F_VERSION_1) | feature(40)
    ));
    w(&mut t, REG_STATUS, 0);
    assert!(negotiate(&mut t, feature(VIRTIO_F_VERSION_1)));
    assert_eq!(t.driver_features(), feature(VIRTIO_F_VERSION_1));
    // Frozen after FEATURES_OK.
    w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
    w(&mut t, REG_DRIVER_FEATURES, 0xffff_ffff);
    assert_eq!(t.driver_features(), feature(VIRTIO_F_VERSION_1));
    // DRIVER_OK without FEATURES_OK is refused.
    let (mut t2, _irq) = transport(&mem, false);
    w(
        &mut t2,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
    );
    assert_eq!(r(&mut t2, REG_STATUS) & STATUS_DRIVER_OK, 0);
    // Clearing bits without a reset is ignored.
    w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
    assert_ne!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
}

#[test]
fn activation_notify_and_interrupts_via_event_manager() {
    let mem = guest_mem();
    let (mut t, irq) = transport(&mem, false);
    let mut q = TestQueue::new(&mem, 16);
    assert!(negotiate(&mut t, feature(VIRTIO_F_VERSION_1)));
    setup_queue(&mut t, &q, 16);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
    // Ignored once the queue is ready.
    w(&mut t, REG_QUEUE_NUM, 3);
    w(&mut t, REG_QUEUE_DESC_LOW, 0x1234_5671);
    w(&mut t, REG_STATUS, ALL_OK);
    assert!(t.is_active());
    // Ignored after DRIVER_OK.
    w(&mut t, REG_QUEUE_READY, 0);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 1);

    let t = Arc::new(Mutex::new(t));
    let mut em = EventManager::<Arc<Mutex<MmioTransport>>>::new().unwrap();
    em.add_subscriber(t.clone());
    // Activation poked the control eventfd.
    em.run_with_timeout(100).unwrap();

    q.add_chain(&[(0x10_0000, 32, true)]);
    w(&mut t.lock().unwrap(), REG_QUEUE_NOTIFY, 0);
    em.run_with_timeout(100).unwrap();
    assert_eq!(q.used(), vec![(0, 32)]);
    assert_eq!(irq.read().unwrap(), 1);
    let mut tl = t.lock().unwrap();
    assert_eq!(r(&mut tl, REG_INTERRUPT_STATUS), INT_USED_RING);
    w(&mut tl, REG_INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(r(&mut tl, REG_INTERRUPT_STATUS), 0);

    // Reset: everything back to zero, queue no longer ready, device inactive.
    w(&mut tl, REG_STATUS, 0);
    assert_eq!(r(&mut tl, REG_STATUS), 0);
    assert_eq!(r(&mut tl, REG_QUEUE_READY), 0);
    assert!(!tl.is_active());
    drop(tl);
    em.run_with_timeout(100).unwrap();
}

#[test]
fn bad_queue_sizes_need_reset() {
    let mem = guest_mem();
    for size in [0u32, 3, 512, 0x1_0010] {
        let (mut t, irq) = transport(&mem, false);
        let q = TestQueue::new(&mem, 16);
        assert!(negotiate(&mut t, feature(VIRTIO_F_VERSION_1)));
        setup_queue(&mut t, &q, size);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(!t.is_active(), "size {size}");
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_CONFIG);
        assert_eq!(irq.read().unwrap(), 1);
        // The driver's reset clears it.
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
    }
}

#[test]
fn rings_outside_memory_or_misaligned_need_reset() {
    let mem = guest_mem();
    for (desc, base) in [(MEM_SIZE as u64, 0), (0x101, 0), (u64::MAX - 0xf, 0)] {
        let (mut t, _irq) = transport(&mem, false);
        let q = TestQueue::at(&mem, base, 16);
        assert!(negotiate(&mut t, feature(VIRTIO_F_VERSION_1)));
        setup_queue(&mut t, &q, 16);
        // Before DRIVER_OK the driver may clear ready and re-program the queue.
        w(&mut t, REG_QUEUE_READY, 0);
        w(&mut t, REG_QUEUE_DESC_LOW, desc as u32);
        w(&mut t, REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        w(&mut t, REG_QUEUE_READY, 1);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(!t.is_active(), "desc {desc:#x}");
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
    }
}

#[test]
fn device_failure_sets_needs_reset() {
    let mem = guest_mem();
    let (mut t, irq) = transport(&mem, false);
    let q = TestQueue::new(&mem, 16);
    assert!(negotiate(&mut t, feature(VIRTIO_F_VERSION_1)));
    setup_queue(&mut t, &q, 16);
    w(&mut t, REG_STATUS, ALL_OK);
    assert!(t.is_active());
    // The driver publishes an avail index 100 entries ahead of a 16-entry ring.
    q.set_avail_idx(100);
    t.process_event(0, EventSet::IN);
    assert!(!t.is_active());
    assert_ne!(r(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_ne!(r(&mut t, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
    assert!(irq.read().is_ok());
    // Further notifications are ignored until reset.
    t.process_event(0, EventSet::IN);
    t.process_event(TOKEN_CONTROL, EventSet::IN);
}

#[test]
fn transport_is_send_for_the_event_loop_and_vcpu_threads() {
    fn send<T: Send>() {}
    send::<MmioTransport>();
    send::<Arc<Mutex<MmioTransport>>>();
}

#[test]
fn register_floods_log_a_bounded_number_of_lines() {
    use crate::log_limit::testing::{capture, freeze_clock};
    use crate::log_limit::LINES_PER_INTERVAL;
    let mem = guest_mem();
    let (mut t, _irq) = transport(&mem, false);
    freeze_clock();
    let lines = capture(|| {
        for i in 0..10_000 {
            w(&mut t, 0x0f8, i); // unknown register
            t.write(REG_STATUS, &[1, 2]); // bad width
            w(&mut t, REG_QUEUE_NOTIFY, 7); // nonexistent queue
        }
    });
    // Three call sites, 30,000 triggers.
    assert!(
        lines.len() <= 3 * LINES_PER_INTERVAL as usize,
        "{}",
        lines.len()
    );
    assert!(
        lines
            .iter()
            .any(|(_, l)| l.contains("unknown register 0xf8")),
        "{lines:?}"
    );
}

/// A device whose queue never runs dry: every call uses up its budget.
struct Endless {
    calls: Arc<std::sync::atomic::AtomicUsize>,
    active: bool,
}

impl VirtioDevice for Endless {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, _: Vec<DmaQueue>, _: Arc<Interrupt>) -> Result<(), ActivateError> {
        self.active = true;
        Ok(())
    }
    fn process_queue(&mut self, _: usize) -> Result<QueueState, super::super::DeviceError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(QueueState::MoreWork)
    }
    fn reset(&mut self) {
        self.active = false;
    }
}

#[test]
fn a_queue_left_with_work_is_served_again_without_a_notification_and_others_still_run() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mem = guest_mem();
    let calls = Arc::new(AtomicUsize::new(0));
    let (irq, _irqfd) = test_interrupt();
    let mut greedy = MmioTransport::new(
        Box::new(Endless {
            calls: calls.clone(),
            active: false,
        }),
        Dma::direct(mem.clone()),
        irq.irqfd().try_clone().unwrap(),
        MmioOptions::default(),
    )
    .unwrap();
    let gq = TestQueue::at(&mem, 0x8000, 16);
    assert!(negotiate(&mut greedy, feature(VIRTIO_F_VERSION_1)));
    setup_queue(&mut greedy, &gq, 16);
    w(&mut greedy, REG_STATUS, ALL_OK);
    assert!(greedy.is_active());

    let (mut rng, _irq) = transport(&mem, false);
    let mut q = TestQueue::new(&mem, 16);
    assert!(negotiate(&mut rng, feature(VIRTIO_F_VERSION_1)));
    setup_queue(&mut rng, &q, 16);
    w(&mut rng, REG_STATUS, ALL_OK);

    let greedy = Arc::new(Mutex::new(greedy));
    let rng = Arc::new(Mutex::new(rng));
    let mut em = EventManager::<Arc<Mutex<MmioTransport>>>::new().unwrap();
    em.add_subscriber(greedy.clone());
    em.add_subscriber(rng.clone());
    // Activation: both control eventfds; the greedy queue is served once and left with work.
    em.run_with_timeout(0).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // No guest notification from here on: the transport re-signalled its queue eventfd.
    for round in 2..=5 {
        if round == 3 {
            // Meanwhile the other device's driver notifies; it is served in the same round.
            q.add_chain(&[(0x10_0000, 32, true)]);
            w(&mut rng.lock().unwrap(), REG_QUEUE_NOTIFY, 0);
        }
        em.run_with_timeout(0).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), round);
        assert_eq!(q.used().len(), usize::from(round >= 3), "round {round}");
    }
    // A reset stops it: the pending re-signal finds the device inactive.
    w(&mut greedy.lock().unwrap(), REG_STATUS, 0);
    for _ in 0..3 {
        em.run_with_timeout(0).unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

mod limit;

/// Programs queue `index` from the mock queue's layout and marks it ready.
fn setup_queue_at(t: &mut MmioTransport, index: u32, q: &TestQueue, size: u32) {
    w(t, REG_QUEUE_SEL, index);
    w(t, REG_QUEUE_NUM, size);
    for (lo, addr) in [
        (REG_QUEUE_DESC_LOW, q.desc_addr().0),
        (REG_QUEUE_DRIVER_LOW, q.avail_addr().0),
        (REG_QUEUE_DEVICE_LOW, q.used_addr().0),
    ] {
        w(t, lo, addr as u32);
        w(t, lo + 4, (addr >> 32) as u32);
    }
    w(t, REG_QUEUE_READY, 1);
}

/// A two-pair virtio-net behind the transport on a real event loop: the second tap queue is
/// polled only once VQ_PAIRS_SET (on the control queue, the last) asked for two pairs, and
/// its frames then reach pair 1's RX queue; a reset stops polling it.
#[test]
fn multiqueue_net_polls_each_pair_tap_queue_once_in_use() {
    use crate::virtio::net::ctrl::{VIRTIO_NET_CTRL_MQ, VIRTIO_NET_OK};
    use crate::virtio::net::{Tap, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ};
    use crate::virtio::{Net, NetConfig};
    use std::io::Write;

    let mem = guest_mem();
    let (ends, mut peers): (Vec<_>, Vec<_>) = (0..2)
        .map(|_| crate::virtio::seqpacket_pair().unwrap())
        .unzip();
    let taps = ends.into_iter().map(Tap::from_file).collect();
    let net = Net::with_taps(
        taps,
        NetConfig {
            queue_size: 16,
            ..Default::default()
        },
    )
    .unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(
        Box::new(net),
        Dma::direct(mem.clone()),
        irq.try_clone().unwrap(),
        MmioOptions::default(),
    )
    .unwrap();
    let mq = feature(VIRTIO_NET_F_MQ) | feature(VIRTIO_NET_F_CTRL_VQ);
    assert_eq!(features(&mut t) & mq, mq);
    assert!(negotiate(&mut t, feature(VIRTIO_F_VERSION_1) | mq));
    let mut qs: Vec<_> = (0..5)
        .map(|i| TestQueue::at(&mem, 0x38_0000 + 0x1000 * i, 16))
        .collect();
    for (i, q) in qs.iter().enumerate() {
        setup_queue_at(&mut t, i as u32, q, 16);
    }
    w(&mut t, REG_STATUS, ALL_OK);
    assert!(t.is_active());
    let t = Arc::new(Mutex::new(t));
    let mut em = EventManager::<Arc<Mutex<MmioTransport>>>::new().unwrap();
    em.add_subscriber(t.clone());
    em.run_with_timeout(100).unwrap();

    let frame = |fill: u8| {
        let mut f = vec![0u8; 12];
        f.extend([fill; 100]);
        f
    };
    // Pair 1 is not in use: its tap queue is not polled.
    qs[2].add_chain(&[(0x10_0000, 2048, true)]);
    peers[1].write_all(&frame(1)).unwrap();
    em.run_with_timeout(50).unwrap();
    assert!(qs[2].used().is_empty());

    // VQ_PAIRS_SET 2 on the control queue (index 4).
    qs[4].write(0x20_0000, &[VIRTIO_NET_CTRL_MQ, 0, 2, 0]);
    qs[4].add_chain(&[
        (0x20_0000, 2, false),
        (0x20_0002, 2, false),
        (0x20_1000, 1, true),
    ]);
    w(&mut t.lock().unwrap(), REG_QUEUE_NOTIFY, 4);
    em.run_with_timeout(100).unwrap();
    assert_eq!(qs[4].used(), vec![(0, 1)]);
    assert_eq!(qs[4].read(0x20_1000, 1), vec![VIRTIO_NET_OK]);
    // The transport now polls tap queue 1: the waiting frame lands in pair 1's RX queue.
    for _ in 0..3 {
        em.run_with_timeout(50).unwrap();
    }
    assert_eq!(qs[2].used(), vec![(0, 112)]);
    assert_eq!(qs[2].read(0x10_0000 + 12, 100), vec![1; 100]);
    assert!(qs[0].used().is_empty(), "nothing for pair 0");

    // A reset: pair 1 is out of use again (its fd unregistered).
    w(&mut t.lock().unwrap(), REG_STATUS, 0);
    em.run_with_timeout(50).unwrap();
    peers[1].write_all(&frame(2)).unwrap();
    em.run_with_timeout(50).unwrap();
    assert_eq!(qs[2].used().len(), 1);
    assert!(t
        .lock()
        .unwrap()
        .registered_backends
        .iter()
        .all(Option::is_none));
}
