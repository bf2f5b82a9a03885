//! The converter on samples written in Linux 6.12's tracepoint format, as tracefs and as
//! `trace-cmd report` print it (`bounce/traces/linux-dma-sample.{trace,report}`).

use super::*;

const TRACEFS: &str = include_str!("../../traces/linux-dma-sample.trace");
const REPORT: &str = include_str!("../../traces/linux-dma-sample.report");

fn convert(text: &str, compact: bool) -> (Vec<TraceRecord>, ConvertSummary) {
    convert_linux_trace(text.as_bytes(), compact).unwrap()
}

#[test]
fn tracefs_sample_converts_event_by_event() {
    let (recs, sum) = convert(TRACEFS, false);
    assert_eq!(sum.devices, ["0000:00:04.0", "0000:00:05.0"]);
    assert_eq!(
        (sum.maps, sum.failed_maps, sum.unmaps, sum.syncs),
        (6, 1, 6, 1)
    );
    assert_eq!((sum.unmatched, sum.ignored, sum.merged_sg), (1, 2, 0));
    assert_eq!(sum.events["dma_map_page"], 5);
    assert_eq!(sum.events["dma_map_sg"], 1);
    assert_eq!(recs.len(), 14);
    // The first map: time zero, CPU 0 as the queue, the PID as the thread.
    let m = &recs[0];
    assert_eq!((m.op, m.t_ns, m.device, m.queue), (TraceOp::Map, 0, 0, 0));
    assert_eq!((m.thread, m.addr, m.len), (Some(1402), 0x1043a2c40, 16));
    assert_eq!(m.dir, DmaDirection::ToDevice);
    // Its unmap, 379 us later from <idle> (PID 0), found by dma_addr.
    let u = &recs[3];
    assert_eq!(
        (u.op, u.id, u.t_ns, u.thread),
        (TraceOp::Unmap, m.id, 379_000, Some(0))
    );
    assert_eq!((u.addr, u.len), (m.addr, m.len));
    // The map that returned DMA_MAPPING_ERROR is a failed map with no unmap.
    let f = recs.iter().find(|r| r.failed()).unwrap();
    assert_eq!((f.addr, f.len, f.queue), (0x10e210000, 65536, 1));
    assert_eq!(f.error.as_deref(), Some("linux_mapping_error"));
    assert!(recs.iter().filter(|r| r.id == f.id).count() == 1);
    // dma_map_sg: one map per entry, device 1, the PID of "irq/24-nvme0q1-311".
    let sg: Vec<_> = recs
        .iter()
        .filter(|r| r.device == 1 && r.op == TraceOp::Map)
        .collect();
    assert_eq!(sg.len(), 2);
    assert_eq!(
        (sg[1].addr, sg[1].len, sg[1].thread),
        (0x10f7c3000, 4096, Some(311))
    );
    // The sync inside the second entry: a range sync at its offset.
    let s = recs.iter().find(|r| r.op == TraceOp::SyncForCpu).unwrap();
    assert_eq!(s.id, sg[1].id);
    assert_eq!(s.partial_sync(), Some((0x200, 512)));
    // dma_unmap_sg found both entries by their physical addresses.
    assert_eq!(
        recs.iter()
            .filter(|r| r.device == 1 && r.op == TraceOp::Unmap)
            .count(),
        2
    );
    // Every successful map is unmapped.
    for m in recs.iter().filter(|r| r.op == TraceOp::Map && !r.failed()) {
        assert!(recs.iter().any(|r| r.op == TraceOp::Unmap && r.id == m.id));
    }
}

#[test]
fn trace_cmd_report_gives_the_same_records() {
    assert_eq!(convert(TRACEFS, true), convert(REPORT, true));
}

#[test]
fn compaction_keeps_offsets_and_packs_addresses() {
    let (plain, _) = convert(TRACEFS, false);
    let (packed, _) = convert(TRACEFS, true);
    let end = packed
        .iter()
        .map(|r| r.addr + u64::from(r.len))
        .max()
        .unwrap();
    assert!(end < 1 << 20, "{end:#x}");
    for (a, b) in plain.iter().zip(&packed) {
        assert_eq!(a.addr % (64 << 10), b.addr % (64 << 10));
        assert_eq!((a.op, a.id, a.len), (b.op, b.id, b.len));
    }
    // Buffers that did not overlap still do not.
    let maps: Vec<_> = packed.iter().filter(|r| r.op == TraceOp::Map).collect();
    for (i, a) in maps.iter().enumerate() {
        for b in &maps[i + 1..] {
            let disjoint =
                a.addr + u64::from(a.len) <= b.addr || b.addr + u64::from(b.len) <= a.addr;
            let was = plain.iter().find(|r| r.id == a.id).unwrap();
            let wbs = plain.iter().find(|r| r.id == b.id).unwrap();
            let was_disjoint = was.addr + u64::from(was.len) <= wbs.addr
                || wbs.addr + u64::from(wbs.len) <= was.addr;
            assert_eq!(disjoint, was_disjoint);
        }
    }
}

#[test]
fn newer_sg_format_and_errors() {
    let line = " fio-1-7 [002] ..... 5.000001: dma_map_sg: dev0 dir=TO_DEVICE nents=2/2 ents=2/2 dma_addrs={0x1000,0x2000} sizes={0x200,0x200} phys_addrs={0x9000,0xa000} attrs=\n";
    let (recs, sum) = convert(line, false);
    assert_eq!((sum.maps, recs.len()), (2, 2));
    assert_eq!(
        (recs[0].thread, recs[0].queue, recs[1].len),
        (Some(7), 2, 0x200)
    );
    // Merged entries (an IOMMU) cannot be paired page by page.
    let merged = " a-1 [000] 1.0: dma_map_sg: d dir=TO_DEVICE dma_addrs={0x1000} sizes={0x2000} phys_addrs={0x9000,0xa000} attrs=\n";
    assert_eq!(convert(merged, false).1.merged_sg, 1);
    let bad = " a-1 [000] 1.0: dma_map_page: d dir=SIDEWAYS dma_addr=0 size=1 phys_addr=0 attrs=\n";
    let e = convert_linux_trace(bad.as_bytes(), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1") && e.contains("dir=SIDEWAYS"), "{e}");
    let bad =
        " a-1 [000] 1.0: dma_map_page: d dir=TO_DEVICE dma_addr=zz size=1 phys_addr=0 attrs=\n";
    assert!(convert_linux_trace(bad.as_bytes(), false).is_err());
}

#[test]
fn timestamps_parse_without_rounding() {
    assert_eq!(parse_ts("18276.384012"), Some(18_276_384_012_000));
    assert_eq!(parse_ts("1.000000001"), Some(1_000_000_001));
    assert_eq!(parse_ts("7"), Some(7_000_000_000));
    assert_eq!(parse_ts("1.x"), None);
}
