//! A hostile driver: split rings in a small guest memory, chains built from fuzz input (direct
//! or indirect, at addresses the harness lays out or the input picks), raw pokes into rings and
//! memory, and the checks every harness makes after each round.

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory: rings in the first 64 KiB, buffers above.
pub const MEM_SIZE: usize = 256 << 10;
pub const DATA_BASE: u64 = 0x1_0000;
/// Queue size the harnesses program.
pub const QSIZE: u16 = 16;
/// Ring layouts: slot `i` at `i * 0x1000` (queues may be pointed at the same slot).
pub const LAYOUTS: u64 = 8;

pub fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}

/// Where one split ring lives (virtio 1.2 §2.7).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
}

impl Layout {
    pub fn slot(i: u64, size: u16) -> Layout {
        let base = (i % LAYOUTS) * 0x1000;
        let n = u64::from(size);
        let avail = base + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        Layout {
            desc: base,
            avail,
            used,
            size,
        }
    }

    /// The used ring's bytes (flags, idx, ring, avail_event): the device writes there.
    pub fn used_range(&self) -> (u64, u64) {
        (self.used, self.used + 6 + 8 * u64::from(self.size))
    }
}

/// What a readable buffer holds.
#[derive(Arbitrary, Debug, Clone)]
pub enum Content {
    Bytes(Vec<u8>),
    /// A virtio-blk request header with a type from the spec's list (or any) and a small sector.
    BlkHeader {
        kind: u8,
        sector: u16,
    },
    /// A discard / write-zeroes segment.
    BlkSegment {
        sector: u16,
        sectors: u16,
        flags: u8,
    },
}

impl Content {
    fn bytes(&self, len: usize) -> Vec<u8> {
        let mut v = match self {
            Content::Bytes(b) => b.clone(),
            Content::BlkHeader { kind, sector } => {
                let types = [0u32, 1, 4, 8, 11, 13];
                let t = types
                    .get(usize::from(*kind))
                    .copied()
                    .unwrap_or(u32::from(*kind));
                let mut h = t.to_le_bytes().to_vec();
                h.extend([0; 4]);
                h.extend(u64::from(*sector).to_le_bytes());
                h
            }
            Content::BlkSegment {
                sector,
                sectors,
                flags,
            } => {
                let mut s = u64::from(*sector).to_le_bytes().to_vec();
                s.extend(u32::from(*sectors).to_le_bytes());
                s.extend(u32::from(*flags).to_le_bytes());
                s
            }
        };
        v.resize(len, 0);
        v
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct DescSpec {
    pub len: u16,
    pub writable: bool,
    pub content: Content,
    /// Put the buffer at this address (modulo guest memory, so it may overlap rings and other
    /// buffers) instead of the next free one.
    pub at: Option<u32>,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct ChainSpec {
    pub descs: Vec<DescSpec>,
    /// Put the descriptors in an indirect table.
    pub indirect: bool,
}

/// A raw write the driver is not supposed to make.
#[derive(Arbitrary, Debug, Clone)]
pub enum Poke {
    Desc {
        index: u8,
        addr: u32,
        len: u32,
        flags: u16,
        next: u16,
    },
    AvailIdx(u16),
    AvailSlot {
        slot: u8,
        head: u16,
    },
    Bytes {
        addr: u32,
        data: Vec<u8>,
    },
}

/// A byte range `[start, end)` of guest memory.
pub type Range = (u64, u64);

/// One queue as the driver sees it.
#[derive(Debug)]
pub struct Ring {
    pub layout: Layout,
    next_desc: u16,
    avail_idx: u16,
    seen_used: u16,
}

impl Ring {
    pub fn new(mem: &GuestMemoryMmap, layout: Layout) -> Ring {
        let (_, end) = layout.used_range();
        let zero = vec![0u8; (end - layout.desc) as usize];
        let _ = mem.write_slice(&zero, GuestAddress(layout.desc));
        Ring {
            layout,
            next_desc: 0,
            avail_idx: 0,
            seen_used: 0,
        }
    }

    fn set_desc(&self, mem: &GuestMemoryMmap, table: u64, i: u16, d: (u64, u32, u16, u16)) {
        let a = table + 16 * u64::from(i);
        let _ = mem.write_obj(d.0, GuestAddress(a));
        let _ = mem.write_obj(d.1, GuestAddress(a + 8));
        let _ = mem.write_obj(d.2, GuestAddress(a + 12));
        let _ = mem.write_obj(d.3, GuestAddress(a + 14));
    }

    /// Lays out and publishes a chain; `cursor` is the next free data address.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, c: &ChainSpec, cursor: &mut u64) {
        let mut place = |len: u64, at: Option<u32>| -> u64 {
            match at {
                Some(a) => u64::from(a) % MEM_SIZE as u64,
                None => {
                    if *cursor + len > MEM_SIZE as u64 {
                        *cursor = DATA_BASE;
                    }
                    let a = *cursor;
                    *cursor = (*cursor + len).next_multiple_of(16);
                    a
                }
            }
        };
        let n = c.descs.len().clamp(1, usize::from(self.layout.size));
        let mut bufs = Vec::with_capacity(n);
        for d in c.descs.iter().take(n) {
            let len = u32::from(d.len);
            let addr = place(u64::from(len), d.at);
            if !d.writable {
                let _ = mem.write_slice(&d.content.bytes(len as usize), GuestAddress(addr));
            }
            let flags = if d.writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            bufs.push((addr, len, flags));
        }
        if bufs.is_empty() {
            bufs.push((DATA_BASE, 0, 0));
        }
        let head = self.next_desc;
        let size = self.layout.size;
        if c.indirect {
            let table = place(16 * bufs.len() as u64, None);
            for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
                let i = i as u16;
                let last = usize::from(i) + 1 == bufs.len();
                let f = flags | if last { 0 } else { VRING_DESC_F_NEXT as u16 };
                self.set_desc(mem, table, i, (addr, len, f, i + 1));
            }
            let d = (
                table,
                16 * bufs.len() as u32,
                VRING_DESC_F_INDIRECT as u16,
                0,
            );
            self.set_desc(mem, self.layout.desc, head, d);
            self.next_desc = (head + 1) % size;
        } else {
            for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
                let index = (head + i as u16) % size;
                let last = i + 1 == bufs.len();
                let f = flags | if last { 0 } else { VRING_DESC_F_NEXT as u16 };
                self.set_desc(
                    mem,
                    self.layout.desc,
                    index,
                    (addr, len, f, (index + 1) % size),
                );
            }
            self.next_desc = (head + bufs.len() as u16) % size;
        }
        let slot = self.layout.avail + 4 + 2 * u64::from(self.avail_idx % size);
        let _ = mem.write_obj(head, GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.layout.avail + 2));
    }

    pub fn poke(&mut self, mem: &GuestMemoryMmap, p: &Poke) {
        match p {
            Poke::Desc {
                index,
                addr,
                len,
                flags,
                next,
            } => {
                let i = u16::from(*index) % self.layout.size;
                let a = u64::from(*addr) % MEM_SIZE as u64;
                self.set_desc(mem, self.layout.desc, i, (a, *len, *flags, *next));
            }
            Poke::AvailIdx(i) => {
                self.avail_idx = *i;
                let _ = mem.write_obj(*i, GuestAddress(self.layout.avail + 2));
            }
            Poke::AvailSlot { slot, head } => {
                let s = u64::from(*slot) % u64::from(self.layout.size);
                let _ = mem.write_obj(*head, GuestAddress(self.layout.avail + 4 + 2 * s));
            }
            Poke::Bytes { addr, data } => {
                let a = u64::from(*addr) % MEM_SIZE as u64;
                let n = data.len().min(MEM_SIZE - a as usize);
                let _ = mem.write_slice(&data[..n], GuestAddress(a));
            }
        }
    }

    /// The used entries the device added in a round: `(head, len)`, with `before` the guest
    /// memory as the round started. A hostile driver may overwrite its own used index (a buffer
    /// placed over the ring): then the device's count and the ring disagree, and the round's
    /// entries are not checked (the harness takes up the device's count again).
    pub fn new_used(&mut self, before: &[u8], mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let at = self.layout.used + 2;
        let old = rd::<2>(before, at).map_or(0, u16::from_le_bytes);
        let idx: u16 = mem.read_obj(GuestAddress(at)).unwrap_or(0);
        if idx == old {
            return Vec::new();
        }
        let clobbered = old != self.seen_used;
        let n = idx.wrapping_sub(self.seen_used);
        self.seen_used = idx;
        if clobbered {
            return Vec::new();
        }
        // A device returns at most what was made available.
        assert!(
            n <= self.layout.size.max(self.avail_idx.wrapping_sub(old)),
            "used index moved by {n}"
        );
        (0..n)
            .map(|k| {
                let i = old.wrapping_add(k) % self.layout.size;
                let e = self.layout.used + 4 + 8 * u64::from(i);
                let id: u32 = mem.read_obj(GuestAddress(e)).unwrap_or(0);
                let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap_or(0);
                (id, len)
            })
            .collect()
    }
}

/// A copy of guest memory.
pub fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut v = vec![0u8; MEM_SIZE];
    mem.read_slice(&mut v, GuestAddress(0)).expect("snapshot");
    v
}

fn rd<const N: usize>(m: &[u8], a: u64) -> Option<[u8; N]> {
    let a = usize::try_from(a).ok()?;
    m.get(a..a.checked_add(N)?)?.try_into().ok()
}

/// A descriptor as read from a table: (addr, len, flags, next).
fn desc_at(m: &[u8], table: u64, i: u16) -> Option<(u64, u32, u16, u16)> {
    let a = table.checked_add(16 * u64::from(i))?;
    if a.checked_add(16)? > m.len() as u64 {
        return None;
    }
    Some((
        u64::from_le_bytes(rd(m, a)?),
        u32::from_le_bytes(rd(m, a + 8)?),
        u16::from_le_bytes(rd(m, a + 12)?),
        u16::from_le_bytes(rd(m, a + 14)?),
    ))
}

/// The buffers of the chain at `head`, as a device walks it: `(addr, len, writable)`.
/// Bounded like virtio-queue (at most `size` direct or table-length indirect descriptors).
pub fn walk_chain(m: &[u8], l: &Layout, head: u16) -> Vec<(u64, u32, bool)> {
    let mut out = Vec::new();
    let (mut table, mut size, mut i) = (l.desc, l.size, head);
    let mut indirect_done = false;
    for _ in 0..usize::from(l.size) + 64 {
        if i >= size {
            break;
        }
        let Some((addr, len, flags, next)) = desc_at(m, table, i) else {
            break;
        };
        if flags & VRING_DESC_F_INDIRECT as u16 != 0 && !indirect_done {
            indirect_done = true;
            table = addr;
            size = u16::try_from(len / 16).unwrap_or(u16::MAX);
            i = 0;
            continue;
        }
        out.push((addr, len, flags & VRING_DESC_F_WRITE as u16 != 0));
        if flags & VRING_DESC_F_NEXT as u16 == 0 {
            break;
        }
        i = next;
    }
    out
}

/// Every buffer any descriptor in the ring's table (and the indirect tables it points at)
/// describes, split by direction.
pub fn all_buffers(m: &[u8], l: &Layout) -> (Vec<Range>, Vec<Range>) {
    let (mut w, mut r) = (Vec::new(), Vec::new());
    let mut push = |addr: u64, len: u32, flags: u16| {
        let range = (addr, addr.saturating_add(u64::from(len)));
        if flags & VRING_DESC_F_WRITE as u16 != 0 {
            w.push(range);
        } else {
            r.push(range);
        }
    };
    for i in 0..l.size {
        let Some((addr, len, flags, _)) = desc_at(m, l.desc, i) else {
            continue;
        };
        if flags & VRING_DESC_F_INDIRECT as u16 != 0 {
            for j in 0..(len / 16).min(4096) {
                if let Some((a, n, f, _)) = desc_at(m, addr, j as u16) {
                    push(a, n, f);
                }
            }
            // The table itself is read, never written.
            push(addr, len, 0);
        } else {
            push(addr, len, flags);
        }
    }
    (w, r)
}

/// The addresses of a buffer that lie in guest memory (a device can write no others).
fn in_memory(a: u64, n: u32) -> std::ops::Range<u64> {
    let end = a.saturating_add(u64::from(n)).min(MEM_SIZE as u64);
    a.min(end)..end
}

/// Ranges sorted and merged, for lookups in O(log n) (a hostile table yields thousands).
fn merged(mut v: Vec<Range>) -> Vec<Range> {
    v.retain(|&(s, e)| s < e);
    v.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Whether `a` lies in one of `ranges` (sorted and merged by [`merged`]).
fn inside(ranges: &[Range], a: u64) -> bool {
    let i = ranges.partition_point(|&(s, _)| s <= a);
    i > 0 && a < ranges[i - 1].1
}

/// Whether two merged range lists overlap.
fn overlaps(a: &[Range], b: &[Range]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].0 < b[j].1 && b[j].0 < a[i].1 {
            return true;
        }
        if a[i].1 <= b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    false
}

/// What one round left, for comparing two runs with different fills.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundLog {
    /// Per used entry: its used length and every byte of its writable buffers afterwards,
    /// each with whether the written-bytes comparison may use it (not in a ring and not in any
    /// readable buffer).
    pub entries: Vec<(u32, Vec<(u8, bool)>)>,
    /// Whether a readable buffer overlapped a writable one somewhere: the device may then copy
    /// fill bytes, and the comparison is off from here on.
    pub tainted: bool,
}

/// The checks after a round on one ring, with `before`/`after` snapshots of guest memory and
/// `rings` every layout a queue may use:
/// - used head indices are below the queue size;
/// - a used length never exceeds the writable bytes of its chain;
/// - no byte changed outside writable buffers and used rings.
///
/// Returns the round's log for the written-bytes comparison.
pub fn check_round(
    before: &[u8],
    after: &[u8],
    rings: &[Layout],
    used: &[(Layout, Vec<(u32, u32)>)],
) -> RoundLog {
    let mut writable = Vec::new();
    let mut readable = Vec::new();
    let mut ring_areas = Vec::new();
    for l in rings {
        for m in [before, after] {
            let (w, r) = all_buffers(m, l);
            writable.extend(w);
            readable.extend(r);
        }
        ring_areas.push(l.used_range());
        ring_areas.push((l.desc, l.used_range().1));
    }
    // Chains walked (what the device saw) count too: indirect tables outside the ring's table.
    let mut log = RoundLog::default();
    let buffers = merged(writable.clone());
    for (l, entries) in used {
        // A driver may point a writable buffer at its own used ring: the device then writes
        // data over entries it returned, legitimately, and they cannot be checked.
        if overlaps(&buffers, &[l.used_range()]) {
            log.entries.extend(entries.iter().map(|_| (0, Vec::new())));
            continue;
        }
        for &(id, len) in entries {
            assert!(
                id < u32::from(l.size),
                "used head {id} >= queue size {}",
                l.size
            );
            let walks = [before, after].map(|m| walk_chain(m, l, id as u16));
            let cap = |w: &Vec<(u64, u32, bool)>| -> u64 {
                w.iter().filter(|d| d.2).map(|d| u64::from(d.1)).sum()
            };
            let cap_max = cap(&walks[0]).max(cap(&walks[1]));
            assert!(
                u64::from(len) <= cap_max,
                "used length {len} exceeds the chain's {cap_max} writable bytes (head {id})"
            );
            for w in &walks {
                for &(a, n, wr) in w {
                    let r = (a, a.saturating_add(u64::from(n)));
                    if wr {
                        writable.push(r);
                    } else {
                        readable.push(r);
                    }
                }
            }
            // Every byte of the chain's writable buffers (as walked before the round).
            let mut bytes = Vec::new();
            for &(a, n, _) in walks[0].iter().filter(|d| d.2) {
                for addr in in_memory(a, n) {
                    bytes.push((after[addr as usize], true));
                }
            }
            log.entries.push((len, bytes));
        }
    }
    // Bytes in a ring or in any readable buffer may change for other reasons, or be copied
    // from the fill: they count as written.
    let readable = merged(readable);
    let ring_areas = merged(ring_areas);
    let mut k = 0;
    for (_, entries) in used {
        for &(id, _) in entries {
            let walk = walk_chain(before, &rings_of(used, k), id as u16);
            let mut j = 0;
            for &(a, n, _) in walk.iter().filter(|d| d.2) {
                for addr in in_memory(a, n) {
                    if let Some(b) = log.entries[k].1.get_mut(j) {
                        b.1 = !inside(&ring_areas, addr) && !inside(&readable, addr);
                    }
                    j += 1;
                }
            }
            k += 1;
        }
    }
    let writable = merged(writable);
    log.tainted = overlaps(&writable, &readable);
    // Nothing outside writable buffers and used rings changed.
    let mut allowed = writable;
    allowed.extend(rings.iter().map(Layout::used_range));
    let allowed = merged(allowed);
    let changed: BTreeSet<usize> = before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect();
    for &i in &changed {
        assert!(
            inside(&allowed, i as u64),
            "guest byte {i:#x} changed outside every writable buffer and used ring"
        );
    }
    log
}

/// The layout of the ring that used entry number `k` (counting across rings) came from.
fn rings_of(used: &[(Layout, Vec<(u32, u32)>)], mut k: usize) -> Layout {
    for (l, e) in used {
        if k < e.len() {
            return *l;
        }
        k -= e.len();
    }
    unreachable!("entry index out of range")
}

/// Fills every writable buffer of the ring's table with `fill` (before a round), so a byte the
/// device did not write still holds it afterwards.
pub fn fill_writable(mem: &GuestMemoryMmap, rings: &[Layout], fill: u8) {
    let m = snapshot(mem);
    for l in rings {
        let (w, _) = all_buffers(&m, l);
        for (s, e) in w {
            let e = e.min(MEM_SIZE as u64);
            if s < e && s >= DATA_BASE {
                let _ = mem.write_slice(&vec![fill; (e - s) as usize], GuestAddress(s));
            }
        }
    }
}

/// Compares two runs of the same input whose writable buffers were filled with `0x00` and
/// `0xff`: a used length must not exceed the bytes written into the chain's writable buffers
/// (a byte is written when it holds something else than the fill in either run).
pub fn compare_runs(a: &[RoundLog], b: &[RoundLog]) {
    assert_eq!(a.len(), b.len(), "runs of one input took different paths");
    let mut tainted = false;
    for (round, (x, y)) in a.iter().zip(b).enumerate() {
        tainted |= x.tainted || y.tainted;
        if tainted {
            return;
        }
        assert_eq!(
            x.entries.len(),
            y.entries.len(),
            "round {round}: the runs used different numbers of chains"
        );
        for (e, ((len, p), (len1, q))) in x.entries.iter().zip(&y.entries).enumerate() {
            assert_eq!(
                len, len1,
                "round {round}: used lengths differ between the runs"
            );
            let written = p
                .iter()
                .zip(q)
                .filter(|(&(v0, ok0), &(v1, ok1))| !(ok0 && ok1) || v0 != 0x00 || v1 != 0xff)
                .count();
            assert!(
                *len as usize <= written,
                "round {round}, used entry {e}: used length {len} but {written} bytes written"
            );
        }
    }
}

/// The guest-visible used-ring state of one ring, for the bounce checks.
pub fn slots_used(dma: &bounce::Dma) -> u64 {
    dma.stats().map_or(0, |s| s.slots_used)
}

#[cfg(test)]
mod tests {
    //! The checks catch what they are for (a harness whose checks cannot fail proves nothing).
    use super::*;

    fn ring_with_chain(mem: &GuestMemoryMmap) -> (Ring, Layout) {
        let l = Layout::slot(0, QSIZE);
        let mut ring = Ring::new(mem, l);
        let chain = ChainSpec {
            descs: vec![DescSpec {
                len: 64,
                writable: true,
                content: Content::Bytes(vec![]),
                at: Some(DATA_BASE as u32),
            }],
            indirect: false,
        };
        let mut cursor = DATA_BASE + 0x1000;
        ring.add_chain(mem, &chain, &mut cursor);
        (ring, l)
    }

    /// A fake device returning the chain with `len`, after writing `written` bytes at `at`.
    fn device(mem: &GuestMemoryMmap, l: &Layout, len: u32, at: u64, written: usize) {
        mem.write_slice(&vec![0x42; written], GuestAddress(at))
            .unwrap();
        mem.write_obj(0u32, GuestAddress(l.used + 4)).unwrap();
        mem.write_obj(len, GuestAddress(l.used + 8)).unwrap();
        mem.write_obj(1u16, GuestAddress(l.used + 2)).unwrap();
    }

    fn round(len: u32, at: u64, written: usize, fill: u8) -> RoundLog {
        let mem = guest_mem();
        let (mut ring, l) = ring_with_chain(&mem);
        fill_writable(&mem, &[l], fill);
        let before = snapshot(&mem);
        device(&mem, &l, len, at, written);
        let after = snapshot(&mem);
        let used = ring.new_used(&before, &mem);
        check_round(&before, &after, &[l], &[(l, used)])
    }

    #[test]
    fn range_lookups() {
        let r = merged(vec![(10, 20), (15, 30), (40, 50), (5, 5)]);
        assert_eq!(r, vec![(10, 30), (40, 50)]);
        assert!(inside(&r, 10) && inside(&r, 29) && inside(&r, 45));
        assert!(!inside(&r, 9) && !inside(&r, 30) && !inside(&r, 50) && !inside(&r, 5));
        assert!(overlaps(&r, &[(29, 31)]));
        assert!(!overlaps(&r, &[(30, 40), (50, 60)]));
    }

    #[test]
    fn a_well_behaved_device_passes() {
        let a = round(16, DATA_BASE, 16, 0x00);
        let b = round(16, DATA_BASE, 16, 0xff);
        compare_runs(&[a], &[b]);
    }

    #[test]
    #[should_panic(expected = "exceeds the chain's 64 writable bytes")]
    fn a_used_length_beyond_the_writable_buffers_is_caught() {
        round(65, DATA_BASE, 64, 0x00);
    }

    #[test]
    #[should_panic(expected = "used length 32 but 16 bytes written")]
    fn a_used_length_beyond_the_bytes_written_is_caught() {
        let a = round(32, DATA_BASE, 16, 0x00);
        let b = round(32, DATA_BASE, 16, 0xff);
        compare_runs(&[a], &[b]);
    }

    #[test]
    #[should_panic(expected = "changed outside every writable buffer")]
    fn a_write_outside_writable_buffers_is_caught() {
        round(0, DATA_BASE + 0x800, 1, 0x00);
    }

    #[test]
    #[should_panic(expected = "used head 16 >= queue size")]
    fn a_used_head_beyond_the_queue_is_caught() {
        let mem = guest_mem();
        let (mut ring, l) = ring_with_chain(&mem);
        let before = snapshot(&mem);
        mem.write_obj(16u32, GuestAddress(l.used + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(l.used + 2)).unwrap();
        let used = ring.new_used(&before, &mem);
        check_round(&before, &snapshot(&mem), &[l], &[(l, used)]);
    }
}
