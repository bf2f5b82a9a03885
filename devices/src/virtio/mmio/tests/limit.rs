//! A rate-limited device on the event loop, on the real clock: the limiter's timerfd brings
//! the event loop back to a throttled queue without a guest notification, and the loop does not
//! spin while it waits.

use std::time::{Duration, Instant};

use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::rate_limiter::{BucketConfig, LimiterConfig};
use crate::virtio::block::{Block, BlockConfig, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x12_0000;

#[test]
fn a_throttled_queue_resumes_on_the_limiter_timer() {
    let mem = guest_mem();
    let img = TempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let cfg = BlockConfig {
        // 100 requests per second, one at a time: 10 ms of tokens per request.
        rate_limit: LimiterConfig {
            bytes: None,
            ops: Some(BucketConfig {
                rate: 100,
                burst: 1,
                one_time_burst: 0,
            }),
        },
        ..Default::default()
    };
    let blk = Block::new(img.as_file().try_clone().unwrap(), cfg).unwrap();
    let (irq, _irqfd) = test_interrupt();
    let mut t = MmioTransport::new(
        Box::new(blk),
        Dma::direct(mem.clone()),
        irq.irqfd().try_clone().unwrap(),
        MmioOptions::default(),
    )
    .unwrap();
    let mut q = TestQueue::new(&mem, 16);
    assert!(negotiate(&mut t, feature(VIRTIO_F_VERSION_1)));
    setup_queue(&mut t, &q, 16);
    w(&mut t, REG_STATUS, ALL_OK);
    assert!(t.is_active());
    let t = Arc::new(Mutex::new(t));
    let mut em = EventManager::<Arc<Mutex<MmioTransport>>>::new().unwrap();
    em.add_subscriber(t.clone());

    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    q.write(HDR, &h);
    const N: u16 = 5;
    for _ in 0..N {
        q.add_chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    }
    let t0 = Instant::now();
    // One notification for all five; the rest is the limiter's timer.
    w(&mut t.lock().unwrap(), REG_QUEUE_NOTIFY, 0);
    let mut rounds = 0;
    while q.used_idx() < N && t0.elapsed() < Duration::from_secs(20) {
        em.run_with_timeout(1000).unwrap();
        rounds += 1;
    }
    let elapsed = t0.elapsed();
    assert_eq!(q.used_idx(), N, "every request completed");
    assert!(q.used().iter().all(|&(_, len)| len == 513));
    assert_eq!(q.read(STATUS, 1)[0], VIRTIO_BLK_S_OK);
    // Four requests after the first need 40 ms of tokens: never sooner (a loaded machine can
    // only make it later).
    assert!(elapsed >= Duration::from_millis(40), "{elapsed:?}");
    // Woken by the timer about once per request; a timerfd left unread would spin the
    // level-triggered loop thousands of times.
    assert!(rounds <= 20, "{rounds} event loop rounds");
    eprintln!("{N} requests at iops=100,iops-burst=1: {elapsed:?}, {rounds} event loop rounds");
}
