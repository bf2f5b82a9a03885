//! `bounce` against the reference model of Linux 6.12's allocator (`linux_ref.rs`): over random
//! sequences of maps (sizes, `min_align_mask`, `alloc_align_mask`, sources), unmaps and added
//! pools, every map must get **the same bounce address** (pool, slot and offset) as Linux's
//! `swiotlb_tbl_map_single` would give, or fail where it fails, and after every step every
//! pool's free-run counts must equal Linux's. The default (Linux) configuration: `order=linux`,
//! `reuse=next`, transient pools; the worker is off and pools are added by the test (as
//! `swiotlb_dyn_alloc` would, at moments the test picks) so that runs repeat.

use std::sync::atomic::Ordering::Relaxed;

use proptest::prelude::*;

use super::fastpath::hint;
use super::linux_ref::{init_pool, limit_nareas, Mem};
use super::*;

#[derive(Debug, Clone)]
enum Op {
    Map {
        orig: u64,
        len: usize,
        min_align_mask: u64,
        alloc_align_mask: u64,
        device: u16,
        queue: u16,
    },
    Unmap(usize),
    /// A pool of this many bytes, as the worker adds them.
    Grow(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![
        5 => 1usize..8192,
        4 => 1usize..70_000,
        1 => 200_000usize..270_000,
    ];
    let min = prop::sample::select(vec![0u64, 0, 0x7ff, 0xfff, 0x3, 0x1fff]);
    let aam = prop::sample::select(vec![0u64, 0, 0x7ff, 0xfff, 0x1fff, 0x3fff]);
    prop_oneof![
        8 => (0u64..1 << 30, len, min, aam, 0u16..3, 0u16..4).prop_map(
            |(orig, len, min_align_mask, alloc_align_mask, device, queue)| Op::Map {
                orig,
                len,
                min_align_mask,
                alloc_align_mask,
                device,
                queue,
            }
        ),
        5 => any::<prop::sample::Index>().prop_map(|i| Op::Unmap(i.index(1 << 20))),
        1 => prop::sample::select(vec![256u64 << 10, 512 << 10, 1 << 20]).prop_map(Op::Grow),
    ]
}

/// Every live pool, by start: (start, free-run counts), in `bounce` and in the model.
fn same_pools(s: &Swiotlb, r: &Mem) -> Result<(), TestCaseError> {
    let mut b: Vec<(u64, Vec<u32>)> =
        s.sh.pools
            .load()
            .list
            .iter()
            .map(|p| (p.start, p.free_runs()))
            .collect();
    let mut m: Vec<(u64, Vec<u32>)> = r
        .pools
        .iter()
        .chain(&r.transient)
        .map(|p| (p.start, p.lists()))
        .collect();
    b.sort();
    m.sort();
    prop_assert_eq!(b, m, "pools or free-run counts differ from Linux's");
    Ok(())
}

/// The model's pool for `bounce`'s pool at `start` (its geometry checked against Linux's).
fn model_pool(s: &Swiotlb, start: u64, areas: usize) -> Result<linux_ref::Pool, TestCaseError> {
    let set = s.sh.pools.load();
    let p = set.list.iter().find(|p| p.start == start).unwrap();
    prop_assert_eq!(p.nareas(), limit_nareas(areas, p.nslots).max(1));
    Ok(init_pool(start, p.nslots, p.nareas(), false))
}

fn cases() -> u32 {
    std::env::var("BOUNCE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    #[test]
    fn same_slots_as_linux(
        size in prop::sample::select(vec![256u64 << 10, 512 << 10, 1 << 20]),
        areas in prop::sample::select(vec![1usize, 2, 4]),
        ops in prop::collection::vec(op(), 1..160),
    ) {
        let s = Swiotlb::from_config_str(&format!(
            "size={size},areas={areas},dynamic=off,transient=on"
        ))
        .unwrap();
        prop_assert_eq!(s.config().order, crate::PoolOrder::Linux);
        prop_assert_eq!(s.config().reuse, crate::SlotReuse::Next);
        let mut r = Mem::new(areas, true);
        r.add_mem_pool(model_pool(&s, BOUNCE_BASE, areas)?);
        // (bounce address, min_align_mask, source) of each live mapping.
        let mut live: Vec<(u64, u64, DmaSource)> = Vec::new();
        for o in ops {
            match o {
                Op::Map { orig, len, min_align_mask, alloc_align_mask, device, queue } => {
                    let src = DmaSource { device, queue };
                    let attrs = MapAttrs { min_align_mask, alloc_align_mask, may_block: false };
                    // Where `bounce` will put a pool it makes now (a transient one).
                    let next = s.sh.next_addr.load(Relaxed);
                    let got = s.alloc(src, orig, len, attrs).map(|m| m.addr);
                    let want = r.map_single(
                        min_align_mask, hint(src), orig, len, alloc_align_mask, next,
                    );
                    match (&got, want) {
                        (Ok(a), Some(w)) => {
                            prop_assert_eq!(*a, w, "{:?}: bounce {:#x}, Linux {:#x}", o, a, w);
                            live.push((*a, min_align_mask, src));
                        }
                        (Err(DmaError::TooLarge { .. } | DmaError::NoSpace { .. }), None) => {}
                        _ => prop_assert!(false, "{:?}: bounce {:?}, Linux {:?}", o, got, want),
                    }
                }
                Op::Unmap(i) if !live.is_empty() => {
                    let (addr, min, src) = live.swap_remove(i % live.len());
                    s.free(src, addr).unwrap();
                    r.unmap_single(min, addr);
                }
                Op::Unmap(_) => {}
                Op::Grow(bytes) => {
                    let next = s.sh.next_addr.load(Relaxed);
                    s.grow(bytes).unwrap();
                    r.add_mem_pool(model_pool(&s, next, areas)?);
                }
            }
            same_pools(&s, &r)?;
        }
        for (addr, min, src) in live.drain(..) {
            s.free(src, addr).unwrap();
            r.unmap_single(min, addr);
            same_pools(&s, &r)?;
        }
    }
}
