//! The bounce `Dma` API: map / device read and write / guest write / sync / unmap sequences,
//! direct or bounced, against a reference model of what guest memory and each mapping must hold
//! (Linux's streaming DMA semantics: a bounced map copies the guest buffer in, whatever the
//! direction; sync for the CPU and unmap copy device writes out unless the CPU owns the buffer;
//! sync for the device copies the guest's data in for mappings the device reads).

use arbitrary::{Arbitrary, Unstructured};
use bounce::{Dma, DmaBuffer, DmaDirection, DmaError, DmaSource};
use vm_memory::{Bytes, GuestAddress};

use crate::driver::{guest_mem, snapshot, MEM_SIZE};

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Dir {
    ToDevice,
    FromDevice,
    Bidirectional,
}

impl From<Dir> for DmaDirection {
    fn from(d: Dir) -> Self {
        match d {
            Dir::ToDevice => DmaDirection::ToDevice,
            Dir::FromDevice => DmaDirection::FromDevice,
            Dir::Bidirectional => DmaDirection::Bidirectional,
        }
    }
}

#[derive(Arbitrary, Debug)]
pub enum Op {
    Map {
        addr: u32,
        len: u16,
        dir: Dir,
        queue: u8,
    },
    DeviceWrite {
        map: u8,
        offset: u16,
        data: Vec<u8>,
    },
    DeviceRead {
        map: u8,
        offset: u16,
        len: u16,
    },
    GuestWrite {
        addr: u32,
        data: Vec<u8>,
    },
    SyncForCpu(u8),
    SyncForDevice(u8),
    Unmap(u8),
    /// Dropped without `unmap` (an error path): the same as an unmap.
    Drop(u8),
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    /// `None`: direct. Otherwise pool knobs by index (small pools, so they fill up).
    pub pools: Option<u8>,
    pub rounds: Vec<Vec<Op>>,
}

const POOLS: [&str; 4] = [
    "size=64K,areas=1",
    "size=64K,areas=2,segment=8",
    "size=32K,areas=1,exhaustion=transient",
    "size=128K,areas=4,lookup=tree",
];

/// The model of one live mapping.
struct Model {
    addr: u64,
    dir: DmaDirection,
    /// What the device sees (the slot when bounced; unused when direct).
    data: Vec<u8>,
    cpu_owns: bool,
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    exec(&input);
}

pub fn exec(input: &Input) {
    let mem = guest_mem();
    let dma = match input.pools {
        None => Dma::direct(mem.clone()),
        Some(p) => {
            Dma::bounced_from_str(mem.clone(), POOLS[usize::from(p) % POOLS.len()]).expect("pools")
        }
    };
    let bounced = input.pools.is_some();
    let mut guest = snapshot(&mem);
    for round in input.rounds.iter().take(16) {
        let mut live: Vec<(DmaBuffer<'_>, Model)> = Vec::new();
        for op in round.iter().take(256) {
            step(&dma, bounced, op, &mut live, &mut guest, &mem);
            assert!(
                snapshot(&mem) == guest,
                "guest memory differs from the model after {op:?}"
            );
            // Live bounce mappings never share slot bytes.
            let mut spans: Vec<(u64, u64)> = live
                .iter()
                .filter_map(|(b, _)| b.bounce_addr().map(|a| (a, a + b.len() as u64)))
                .collect();
            spans.sort_unstable();
            assert!(
                spans.windows(2).all(|w| w[0].1 <= w[1].0),
                "two live mappings share bounce memory: {spans:x?}"
            );
        }
        // End of round: the device unmaps what it still holds.
        for (b, m) in live.drain(..) {
            unmap_model(bounced, &m, &mut guest);
            b.unmap().expect("unmap of a live mapping");
        }
        assert!(
            snapshot(&mem) == guest,
            "guest memory differs from the model after unmaps"
        );
        if let Some(s) = dma.stats() {
            assert_eq!(s.slots_used, 0, "bounce slots still used after every unmap");
        }
    }
}

fn unmap_model(bounced: bool, m: &Model, guest: &mut [u8]) {
    if bounced && m.dir.device_writes() && !m.cpu_owns {
        let a = m.addr as usize;
        guest[a..a + m.data.len()].copy_from_slice(&m.data);
    }
}

fn step<'d>(
    dma: &'d Dma,
    bounced: bool,
    op: &Op,
    live: &mut Vec<(DmaBuffer<'d>, Model)>,
    guest: &mut [u8],
    mem: &vm_memory::GuestMemoryMmap,
) {
    let pick = |i: u8, n: usize| (n > 0).then(|| usize::from(i) % n);
    match op {
        Op::Map {
            addr,
            len,
            dir,
            queue,
        } => {
            let addr = u64::from(*addr) % (MEM_SIZE as u64 + 4096);
            let len = u32::from(*len);
            let src = DmaSource {
                device: 0,
                queue: u16::from(*queue % 4),
            };
            let dir = DmaDirection::from(*dir);
            let in_range = addr + u64::from(len) <= MEM_SIZE as u64;
            match dma.map(src, GuestAddress(addr), len, dir) {
                Ok(b) => {
                    assert!(len > 0 && in_range, "mapped {len} bytes at {addr:#x}");
                    assert_eq!(b.len(), len as usize);
                    let a = addr as usize;
                    let data = guest[a..a + len as usize].to_vec();
                    let m = Model {
                        addr,
                        dir,
                        data,
                        cpu_owns: false,
                    };
                    live.push((b, m));
                }
                Err(e) => {
                    // Zero-length and out-of-range maps must fail; others may (pools full).
                    if len > 0 && in_range {
                        assert!(bounced, "a direct map of a valid range failed: {e}");
                    }
                }
            }
        }
        Op::DeviceWrite { map, offset, data } => {
            let Some(i) = pick(*map, live.len()) else {
                return;
            };
            let (b, m) = &mut live[i];
            let off = usize::from(*offset);
            let r = b.write_at(off, data);
            let fits = off + data.len() <= m.data.len();
            match r {
                Ok(()) => {
                    assert!(
                        m.dir.device_writes() && fits,
                        "write into a {:?} buffer",
                        m.dir
                    );
                    if bounced {
                        m.data[off..off + data.len()].copy_from_slice(data);
                    } else {
                        let a = m.addr as usize + off;
                        guest[a..a + data.len()].copy_from_slice(data);
                    }
                }
                Err(DmaError::ReadOnlyBuffer) => assert!(!m.dir.device_writes()),
                Err(e) => assert!(!fits, "device write failed: {e}"),
            }
        }
        Op::DeviceRead { map, offset, len } => {
            let Some(i) = pick(*map, live.len()) else {
                return;
            };
            let (b, m) = &live[i];
            let off = usize::from(*offset);
            let mut buf = vec![0u8; usize::from(*len)];
            let fits = off + buf.len() <= m.data.len();
            match b.read_at(off, &mut buf) {
                Ok(()) => {
                    assert!(fits);
                    let want = if bounced {
                        &m.data[off..off + buf.len()]
                    } else {
                        let a = m.addr as usize + off;
                        &guest[a..a + buf.len()]
                    };
                    assert!(
                        buf == want,
                        "the device read other bytes than the model holds"
                    );
                }
                Err(e) => assert!(!fits, "device read failed: {e}"),
            }
        }
        Op::GuestWrite { addr, data } => {
            let a = (u64::from(*addr) % MEM_SIZE as u64) as usize;
            let n = data.len().min(MEM_SIZE - a);
            mem.write_slice(&data[..n], GuestAddress(a as u64))
                .expect("guest write");
            guest[a..a + n].copy_from_slice(&data[..n]);
        }
        Op::SyncForCpu(i) => {
            let Some(i) = pick(*i, live.len()) else {
                return;
            };
            let (b, m) = &mut live[i];
            match b.sync_for_cpu() {
                Ok(()) => {
                    assert!(!m.cpu_owns);
                    m.cpu_owns = true;
                    if bounced && m.dir.device_writes() {
                        let a = m.addr as usize;
                        guest[a..a + m.data.len()].copy_from_slice(&m.data);
                    }
                }
                Err(DmaError::DoubleSync { .. }) => assert!(m.cpu_owns),
                Err(e) => panic!("sync_for_cpu: {e}"),
            }
        }
        Op::SyncForDevice(i) => {
            let Some(i) = pick(*i, live.len()) else {
                return;
            };
            let (b, m) = &mut live[i];
            match b.sync_for_device() {
                Ok(()) => {
                    assert!(m.cpu_owns);
                    m.cpu_owns = false;
                    if bounced && m.dir.device_reads() {
                        let a = m.addr as usize;
                        let n = m.data.len();
                        m.data.copy_from_slice(&guest[a..a + n]);
                    }
                }
                Err(DmaError::DoubleSync { .. }) => assert!(!m.cpu_owns),
                Err(e) => panic!("sync_for_device: {e}"),
            }
        }
        Op::Unmap(i) | Op::Drop(i) => {
            let Some(i) = pick(*i, live.len()) else {
                return;
            };
            let (b, m) = live.swap_remove(i);
            unmap_model(bounced, &m, guest);
            if matches!(op, Op::Unmap(_)) {
                b.unmap().expect("unmap of a live mapping");
            } else {
                drop(b);
            }
        }
    }
}
