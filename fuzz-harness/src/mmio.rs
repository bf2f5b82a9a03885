//! The virtio-mmio transport with each device behind it (rng, blk, net), driven through MMIO
//! register accesses (any order, any width, bogus values) and ring memory, with queue processing
//! on a real `EventManager` as in microvm.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use arbitrary::{Arbitrary, Unstructured};
use bounce::Dma;
use devices::bus::BusDevice;
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::mmio::{MmioOptions, MmioTransport};
use devices::virtio::net::{Net, NetConfig, Tap};
use devices::virtio::{Rng, VirtioDevice};
use event_manager::{EventManager, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

use crate::driver::*;

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rng,
    Blk,
    Net,
}

#[derive(Arbitrary, Debug)]
pub enum Action {
    /// A 32-bit register write (offset `4 * reg`, below config space; QueueNum and the queue
    /// addresses are written only by `Setup`, so the harness knows where the rings are).
    Write {
        reg: u8,
        value: u32,
    },
    Read {
        reg: u8,
    },
    /// An access of another width or alignment, or into config space.
    Odd {
        offset: u16,
        data: Vec<u8>,
        write: bool,
    },
    /// The driver's initialisation sequence, up to the step given, with these features (masked
    /// with what the device offers, unless `raw`) and queue sizes (an index into a list that
    /// holds bad sizes too).
    Setup {
        features: u64,
        raw: bool,
        sizes: [u8; 2],
        upto: u8,
    },
    Chains {
        queue: bool,
        chains: Vec<ChainSpec>,
    },
    Poke {
        queue: bool,
        poke: Poke,
    },
    Notify(u32),
    /// A frame from the host side of the net device's socket.
    Frame(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub kind: Kind,
    pub bounced: bool,
    pub rounds: Vec<Vec<Action>>,
}

const SIZES: [u16; 8] = [16, 8, 4, 2, 1, 0, 3, 512];

/// Registers only `Setup` writes, so the harness knows where the rings are and how large:
/// QueueNum and the queue addresses.
fn harness_owned(off: u64) -> bool {
    off == 0x38 || (0x80..=0xa4).contains(&off)
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let a = exec(&input, 0x00);
    // virtio-rng writes random bytes: the written-bytes comparison needs a deterministic device.
    if input.kind != Kind::Rng {
        let b = exec(&input, 0xff);
        compare_runs(&a, &b);
    }
}

/// A device, what must live as long as it (its image), and the host side of its tap.
type Built = (
    Box<dyn VirtioDevice>,
    Vec<Box<dyn std::any::Any>>,
    Option<File>,
);

fn device(kind: Kind) -> Built {
    match kind {
        Kind::Rng => (Box::new(Rng::new()), vec![], None),
        Kind::Blk => {
            let img = TempFile::new().expect("temp image");
            let mut f = img.as_file().try_clone().expect("image fd");
            f.set_len(64 << 10).expect("image size");
            f.write_all(&[0x5a; 4096]).expect("image content");
            let cfg = BlockConfig {
                queue_size: QSIZE,
                size_max: 64 << 10,
                ..Default::default()
            };
            let blk = Block::new(f, cfg).expect("block");
            (Box::new(blk), vec![Box::new(img)], None)
        }
        Kind::Net => {
            let (a, b) = crate::net::socketpair();
            let cfg = NetConfig {
                queue_size: QSIZE,
                ..Default::default()
            };
            let net = Net::new(Tap::from_file(a), cfg).expect("net");
            (Box::new(net), vec![], Some(b))
        }
    }
}

fn w(t: &Mutex<MmioTransport>, off: u64, v: u32) {
    t.lock().expect("transport").write(off, &v.to_le_bytes());
}

fn r(t: &Mutex<MmioTransport>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.lock().expect("transport").read(off, &mut b);
    u32::from_le_bytes(b)
}

pub fn exec(input: &Input, fill: u8) -> Vec<RoundLog> {
    let mem = guest_mem();
    let dma = if input.bounced {
        Dma::bounced_from_str(mem.clone(), "size=512K,areas=1").expect("pools")
    } else {
        Dma::direct(mem.clone())
    };
    let (dev, _keep, mut peer) = device(input.kind);
    let nq = dev.queue_max_sizes().len().min(2);
    let irqfd = EventFd::new(EFD_NONBLOCK).expect("irqfd");
    let t = MmioTransport::new(dev, dma.clone(), irqfd, MmioOptions::default()).expect("mmio");
    let t = Arc::new(Mutex::new(t));
    let mut em = EventManager::<Arc<Mutex<MmioTransport>>>::new().expect("event manager");
    em.add_subscriber(t.clone());
    let mut layouts: Vec<Layout> = (0..nq).map(|i| Layout::slot(i as u64, QSIZE)).collect();
    let mut rings: Vec<Ring> = layouts.iter().map(|l| Ring::new(&mem, *l)).collect();
    let mut cursor = DATA_BASE;
    let mut logs = Vec::new();
    for round in input.rounds.iter().take(32) {
        for a in round.iter().take(64) {
            match a {
                Action::Write { reg, value } => {
                    let off = 4 * u64::from(*reg % 64);
                    if !harness_owned(off) {
                        w(&t, off, *value);
                    }
                }
                Action::Read { reg } => {
                    let _ = r(&t, 4 * u64::from(*reg % 64));
                }
                Action::Odd {
                    offset,
                    data,
                    write,
                } => {
                    let off = u64::from(*offset % 0x1000);
                    if harness_owned(off & !3) {
                        continue;
                    }
                    let mut d = data.clone();
                    d.truncate(8);
                    let mut tr = t.lock().expect("transport");
                    if *write {
                        tr.write(off, &d);
                    } else {
                        tr.read(off, &mut d);
                    }
                }
                Action::Setup {
                    features,
                    raw,
                    sizes,
                    upto,
                } => {
                    // The register sequence of virtio 1.2 §3.1.1, stopping after step `upto`.
                    let upto = *upto % 8;
                    w(&t, 0x70, 0);
                    if upto < 1 {
                        continue;
                    }
                    w(&t, 0x70, 1);
                    w(&t, 0x70, 3);
                    w(&t, 0x14, 0);
                    let lo = r(&t, 0x10);
                    w(&t, 0x14, 1);
                    let hi = r(&t, 0x10);
                    let offered = u64::from(lo) | u64::from(hi) << 32;
                    let f = if *raw { *features } else { features & offered };
                    w(&t, 0x24, 0);
                    w(&t, 0x20, f as u32);
                    w(&t, 0x24, 1);
                    w(&t, 0x20, (f >> 32) as u32);
                    if upto < 2 {
                        continue;
                    }
                    w(&t, 0x70, 0xb);
                    for q in 0..nq {
                        let size = SIZES[usize::from(sizes[q] % 8)];
                        // The harness's rings follow the size when it is one a ring can have.
                        let ring_size = if (1..=QSIZE).contains(&size) && size.is_power_of_two() {
                            size
                        } else {
                            QSIZE
                        };
                        layouts[q] = Layout::slot(q as u64, ring_size);
                        rings[q] = Ring::new(&mem, layouts[q]);
                        let l = layouts[q];
                        w(&t, 0x30, q as u32);
                        w(&t, 0x38, u32::from(size));
                        for (reg, v) in [(0x80, l.desc), (0x90, l.avail), (0xa0, l.used)] {
                            w(&t, reg, v as u32);
                            w(&t, reg + 4, (v >> 32) as u32);
                        }
                        if upto >= 3 {
                            w(&t, 0x44, 1);
                        }
                    }
                    if upto >= 4 {
                        w(&t, 0x70, 0xf);
                    }
                }
                Action::Chains { queue, chains } => {
                    let q = usize::from(*queue) % nq;
                    for c in chains.iter().take(usize::from(QSIZE)) {
                        rings[q].add_chain(&mem, c, &mut cursor);
                    }
                }
                Action::Poke { queue, poke } => {
                    let q = usize::from(*queue) % nq;
                    rings[q].poke(&mem, poke);
                }
                Action::Notify(v) => w(&t, 0x50, *v),
                Action::Frame(f) => {
                    if let Some(p) = &mut peer {
                        let _ = p.write(&f[..f.len().min(70_000)]);
                    }
                }
            }
        }
        // Register accesses do not touch guest memory; the event loop below does.
        fill_writable(&mem, &layouts, fill);
        let before = snapshot(&mem);
        // The event loop serves what was notified (and what the budget left, on later turns).
        for _ in 0..4 {
            if em.run_with_timeout(0).unwrap_or(0) == 0 {
                break;
            }
        }
        let after = snapshot(&mem);
        let used = layouts
            .iter()
            .zip(rings.iter_mut())
            .map(|(l, ring)| (*l, ring.new_used(&before, &mem)))
            .collect::<Vec<_>>();
        // After a reset the queue addresses are 0 until the next `Setup`: a driver that makes
        // a queue ready then has the device use rings at address 0.
        let mut rings = layouts.clone();
        rings.push(Layout {
            desc: 0,
            avail: 0,
            used: 0,
            size: QSIZE,
        });
        logs.push(check_round(&before, &after, &rings, &used));
        if let Some(p) = &mut peer {
            let mut buf = vec![0u8; 70_000];
            while let Ok(n) = std::io::Read::read(p, &mut buf) {
                assert!(n <= devices::virtio::net::MAX_FRAME_LEN, "{n}-byte frame");
            }
        }
        assert_eq!(
            slots_used(&dma),
            0,
            "bounce slots left mapped after a round"
        );
    }
    logs
}
