//! Converts Linux's DMA API tracepoints (`include/trace/events/dma.h`, Linux 6.12+) into the
//! project's trace format, so that DMA captured in a real (confidential) guest can be replayed.
//!
//! Input: the text `trace-cmd report` prints, or `/sys/kernel/tracing/trace` (and
//! `trace_pipe`), with the `dma:` events enabled. Each event line is
//! `TASK-PID [CPU] [FLAGS] TIMESTAMP: EVENT: PAYLOAD`, the payload being the event's
//! `TP_printk` output (quoted from Linux 6.12's `include/trace/events/dma.h`):
//!
//! | events | `TP_printk` |
//! | --- | --- |
//! | `dma_map_page`, `dma_map_resource` (`dma_map_phys` from 6.18) | `"%s dir=%s dma_addr=%llx size=%zu phys_addr=%llx attrs=%s"` |
//! | `dma_unmap_page`, `dma_unmap_resource` (`dma_unmap_phys`) | `"%s dir=%s dma_addr=%llx size=%zu attrs=%s"` |
//! | `dma_map_sg` | `"%s dir=%s dma_addrs=%s sizes=%s phys_addrs=%s attrs=%s"` (later kernels add `nents=%d/%d ents=%d/%d`) |
//! | `dma_unmap_sg` | `"%s dir=%s phys_addrs=%s attrs=%s"` |
//! | `dma_sync_single_for_cpu`, `_for_device` | `"%s dir=%s dma_addr=%llx size=%zu"` |
//! | `dma_sync_sg_for_cpu`, `_for_device` | `"%s dir=%s dma_addrs=%s sizes=%s"` |
//! | `dma_map_sg_err` (later kernels) | `"%s dir=%s dma_addrs=%s err=%d attrs=%s"` |
//!
//! `%s` first is the device name, `dir` one of `BIDIRECTIONAL`, `TO_DEVICE`, `FROM_DEVICE`,
//! `NONE`; arrays print as `{0x1,0x2}` (`__print_array`). Coherent allocations (`dma_alloc*`,
//! `dma_free*`) are not streaming DMA and are counted, not converted.
//!
//! Mapping to the project's records: each device name gets a `device` number in order of first
//! appearance; `queue` is the CPU (the model picks a pool area by it, as Linux by the CPU);
//! `thread` is the PID; `t_ns` is the time since the first event; `addr` the physical address
//! (the guest's "original"); a map's `dma_addr` is how its unmap and syncs find it (an sg unmap
//! by its physical addresses, which is all 6.12 prints), and a sync inside a mapping becomes a
//! range sync (`offset`, `sync_len`). A map that returned `DMA_MAPPING_ERROR` (all ones), or a
//! `dma_map_sg_err`, becomes a failed map (`error`: `linux_mapping_error`). Unmaps and syncs of
//! mappings made before the capture began are dropped and counted. With `compact` (default)
//! the physical addresses are moved next to each other, each extent keeping its offset in a
//! 64 KiB block (page alignment and `min_align_mask` bits survive), so a replay of a guest
//! with gigabytes of RAM needs only the memory its buffers span.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use thiserror::Error;

use crate::trace::{TraceOp, TraceRecord};
use crate::types::DmaDirection;

#[derive(Debug, Error)]
pub enum LinuxTraceError {
    #[error("line {line}: {why}")]
    Parse { line: usize, why: String },
    #[error("reading the trace: {0}")]
    Io(#[from] std::io::Error),
}

/// What the conversion did, for the user.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConvertSummary {
    /// Events converted, by tracepoint name.
    pub events: BTreeMap<String, u64>,
    pub maps: u64,
    pub failed_maps: u64,
    pub unmaps: u64,
    pub syncs: u64,
    /// Unmaps and syncs of mappings not seen (made before the capture).
    pub unmatched: u64,
    /// `dma_alloc*`/`dma_free*` events and `dir=NONE` ones, not converted.
    pub ignored: u64,
    /// `dma_map_sg` events whose entries were merged (an IOMMU: fewer DMA segments than pages),
    /// which cannot be paired page by page and are dropped.
    pub merged_sg: u64,
    pub devices: Vec<String>,
}

/// One parsed event line.
struct Event<'l> {
    pid: u32,
    /// The task's name (`comm`).
    comm: &'l str,
    cpu: u16,
    t_ns: u64,
    name: &'l str,
    device: &'l str,
    fields: HashMap<&'l str, &'l str>,
}

/// Seconds with a fraction (`12345.678901`) to ns, without floating point.
fn parse_ts(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.parse().ok()?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_ns: u64 = format!("{frac:0<9}").parse().ok()?;
    Some(secs * 1_000_000_000 + frac_ns)
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// `{0x1,0x2}` (`__print_array`) to numbers; `hex` for addresses, decimal or `0x` for sizes.
fn array(s: &str, as_hex: bool) -> Option<Vec<u64>> {
    let inner = s.strip_prefix('{')?.strip_suffix('}')?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner
        .split(',')
        .map(|v| {
            let v = v.trim();
            if as_hex || v.starts_with("0x") {
                hex(v)
            } else {
                v.parse().ok()
            }
        })
        .collect()
}

/// Splits an event line; `None` for lines that are not `dma:` events (headers, comments,
/// other events).
fn parse_line(line: &str) -> Option<Result<Event<'_>, String>> {
    let line = line.trim_end();
    if line.trim_start().starts_with('#') {
        return None;
    }
    // The event name: the first token `dma_...:` right after a `TIMESTAMP:` token.
    let toks: Vec<(usize, &str)> = line
        .split_whitespace()
        .map(|t| (t.as_ptr() as usize - line.as_ptr() as usize, t))
        .collect();
    let k = (1..toks.len()).find(|&k| {
        toks[k].1.starts_with("dma_")
            && toks[k].1.ends_with(':')
            && toks[k - 1].1.ends_with(':')
            && parse_ts(toks[k - 1].1.trim_end_matches(':')).is_some()
    })?;
    let name = toks[k].1.trim_end_matches(':');
    let Some(t_ns) = parse_ts(toks[k - 1].1.trim_end_matches(':')) else {
        return Some(Err("bad timestamp".into()));
    };
    // `[CPU]` before the timestamp; the task and PID before that (`comm-pid`, comm may hold
    // spaces and dashes: the PID is after the last dash).
    let Some(c) = (0..k).find(|&i| toks[i].1.starts_with('[') && toks[i].1.ends_with(']')) else {
        return Some(Err("no [CPU] field".into()));
    };
    let cpu = match toks[c].1[1..toks[c].1.len() - 1].parse() {
        Ok(c) => c,
        Err(_) => return Some(Err(format!("bad CPU field {}", toks[c].1))),
    };
    let task = if c > 0 {
        &line[..toks[c - 1].0 + toks[c - 1].1.len()]
    } else {
        ""
    };
    let (comm, pid) = task
        .rsplit_once('-')
        .map(|(c, p)| (c.trim(), p.parse().unwrap_or(0)))
        .unwrap_or(("", 0));
    let payload = &line[toks[k].0 + toks[k].1.len()..];
    let mut words = payload.split_whitespace();
    let device = match words.next() {
        Some(d) if !d.contains('=') => d,
        _ => return Some(Err(format!("{name}: no device name"))),
    };
    let fields = words.filter_map(|w| w.split_once('=')).collect();
    Some(Ok(Event {
        pid,
        comm,
        cpu,
        t_ns,
        name,
        device,
        fields,
    }))
}

fn direction(s: &str) -> Option<Option<DmaDirection>> {
    match s {
        "TO_DEVICE" => Some(Some(DmaDirection::ToDevice)),
        "FROM_DEVICE" => Some(Some(DmaDirection::FromDevice)),
        "BIDIRECTIONAL" => Some(Some(DmaDirection::Bidirectional)),
        "NONE" => Some(None),
        _ => None,
    }
}

/// A live mapping: its record's id, guest address, length, direction and first-map template.
#[derive(Clone)]
struct Live {
    id: u64,
    addr: u64,
    len: u32,
    dma: u64,
}

struct Converter {
    devices: Vec<String>,
    t0: Option<u64>,
    next_id: u64,
    /// (device, dma_addr) -> mapping, for unmaps and syncs.
    by_dma: BTreeMap<(u16, u64), Live>,
    /// (device, phys) -> dma_addr of sg entries, for `dma_unmap_sg` (which prints phys only).
    sg_by_phys: HashMap<(u16, u64), u64>,
    out: Vec<TraceRecord>,
    sum: ConvertSummary,
    /// PIDs whose name a record carries already.
    named: std::collections::HashSet<u32>,
}

/// `DMA_MAPPING_ERROR`.
const MAPPING_ERROR: u64 = u64::MAX;

impl Converter {
    fn device(&mut self, name: &str) -> u16 {
        match self.devices.iter().position(|d| d == name) {
            Some(i) => i as u16,
            None => {
                self.devices.push(name.to_string());
                (self.devices.len() - 1) as u16
            }
        }
    }

    fn base(&mut self, e: &Event<'_>, dir: DmaDirection) -> TraceRecord {
        let t0 = *self.t0.get_or_insert(e.t_ns);
        // The task's name with its first event (`<...>` when the trace lost it).
        let thread_name = (self.named.insert(e.pid) && !e.comm.is_empty() && e.comm != "<...>")
            .then(|| e.comm.to_string());
        TraceRecord {
            t_ns: e.t_ns.saturating_sub(t0),
            device: self.device(e.device),
            queue: e.cpu,
            thread: Some(e.pid),
            thread_name,
            dir,
            ..Default::default()
        }
    }

    fn map(&mut self, base: &TraceRecord, phys: u64, dma: u64, size: u64, sg: bool) {
        self.next_id += 1;
        let mut r = TraceRecord {
            op: TraceOp::Map,
            id: self.next_id,
            addr: phys,
            len: size as u32,
            ..base.clone()
        };
        if dma == MAPPING_ERROR {
            r.error = Some("linux_mapping_error".into());
            r.error_msg = Some("the map returned DMA_MAPPING_ERROR".into());
            self.sum.failed_maps += 1;
        } else {
            let live = Live {
                id: r.id,
                addr: phys,
                len: r.len,
                dma,
            };
            self.by_dma.insert((r.device, dma), live);
            if sg {
                self.sg_by_phys.insert((r.device, phys), dma);
            }
            self.sum.maps += 1;
        }
        self.out.push(r);
    }

    fn unmap(&mut self, base: &TraceRecord, dma: u64) {
        match self.by_dma.remove(&(base.device, dma)) {
            Some(l) => {
                self.out.push(TraceRecord {
                    op: TraceOp::Unmap,
                    id: l.id,
                    addr: l.addr,
                    len: l.len,
                    ..base.clone()
                });
                self.sum.unmaps += 1;
            }
            None => self.sum.unmatched += 1,
        }
    }

    fn sync(&mut self, base: &TraceRecord, op: TraceOp, dma: u64, size: u64) {
        // The mapping that holds [dma, dma + size).
        let hit = self
            .by_dma
            .range(..=(base.device, dma))
            .next_back()
            .filter(|((d, _), l)| *d == base.device && dma + size <= l.dma + u64::from(l.len))
            .map(|(_, l)| l.clone());
        match hit {
            Some(l) => {
                self.out.push(TraceRecord {
                    op,
                    id: l.id,
                    addr: l.addr,
                    len: l.len,
                    offset: Some((dma - l.dma) as u32),
                    sync_len: Some(size as u32),
                    ..base.clone()
                });
                self.sum.syncs += 1;
            }
            None => self.sum.unmatched += 1,
        }
    }

    fn event(&mut self, e: Event<'_>) -> Result<(), String> {
        let name = e.name;
        if name.starts_with("dma_alloc") || name.starts_with("dma_free") {
            self.sum.ignored += 1;
            return Ok(());
        }
        let field = |k: &str| {
            e.fields
                .get(k)
                .copied()
                .ok_or_else(|| format!("{name}: no `{k}=`"))
        };
        let num = |k: &str| -> Result<u64, String> {
            let v = field(k)?;
            v.parse().map_err(|_| format!("{name}: bad {k}={v}"))
        };
        let addr = |k: &str| -> Result<u64, String> {
            let v = field(k)?;
            hex(v).ok_or_else(|| format!("{name}: bad {k}={v}"))
        };
        let arr = |k: &str, as_hex: bool| -> Result<Vec<u64>, String> {
            let v = field(k)?;
            array(v, as_hex).ok_or_else(|| format!("{name}: bad {k}={v}"))
        };
        let dir = field("dir")?;
        let Some(dir) = direction(dir).ok_or_else(|| format!("{name}: bad dir={dir}"))? else {
            self.sum.ignored += 1;
            return Ok(());
        };
        let base = self.base(&e, dir);
        match name {
            "dma_map_page" | "dma_map_resource" | "dma_map_phys" => self.map(
                &base,
                addr("phys_addr")?,
                addr("dma_addr")?,
                num("size")?,
                false,
            ),
            "dma_unmap_page" | "dma_unmap_resource" | "dma_unmap_phys" => {
                self.unmap(&base, addr("dma_addr")?)
            }
            "dma_sync_single_for_cpu" | "dma_sync_single_for_device" => {
                let op = if name.ends_with("cpu") {
                    TraceOp::SyncForCpu
                } else {
                    TraceOp::SyncForDevice
                };
                self.sync(&base, op, addr("dma_addr")?, num("size")?)
            }
            "dma_map_sg" => {
                let (dmas, sizes) = (arr("dma_addrs", true)?, arr("sizes", false)?);
                let phys = arr("phys_addrs", true)?;
                if dmas.len() != sizes.len() {
                    return Err(format!(
                        "{name}: {} dma_addrs, {} sizes",
                        dmas.len(),
                        sizes.len()
                    ));
                }
                if phys.len() != dmas.len() {
                    self.sum.merged_sg += 1;
                } else {
                    for ((p, d), s) in phys.into_iter().zip(dmas).zip(sizes) {
                        self.map(&base, p, d, s, true);
                    }
                }
            }
            "dma_map_sg_err" => {
                let err = field("err").unwrap_or("?");
                let mut r = base.clone();
                self.next_id += 1;
                r.id = self.next_id;
                // 6.12+ prints the physical addresses under `dma_addrs=`.
                r.addr = arr("dma_addrs", true)?.first().copied().unwrap_or(0);
                r.error = Some("linux_mapping_error".into());
                r.error_msg = Some(format!("dma_map_sg_err err={err}"));
                self.sum.failed_maps += 1;
                self.out.push(r);
            }
            "dma_unmap_sg" => {
                for p in arr("phys_addrs", true)? {
                    match self.sg_by_phys.remove(&(base.device, p)) {
                        Some(d) => self.unmap(&base, d),
                        None => self.sum.unmatched += 1,
                    }
                }
            }
            "dma_sync_sg_for_cpu" | "dma_sync_sg_for_device" => {
                let op = if name.ends_with("cpu") {
                    TraceOp::SyncForCpu
                } else {
                    TraceOp::SyncForDevice
                };
                let (dmas, sizes) = (arr("dma_addrs", true)?, arr("sizes", false)?);
                for (d, s) in dmas.into_iter().zip(sizes) {
                    self.sync(&base, op, d, s);
                }
            }
            _ => {
                self.sum.ignored += 1;
                return Ok(());
            }
        }
        *self.sum.events.entry(name.to_string()).or_default() += 1;
        Ok(())
    }
}

/// Moves every buffer's address next to the others (see the module doc).
fn compact(recs: &mut [TraceRecord]) {
    const BLOCK: u64 = 64 << 10;
    let mut ranges: Vec<(u64, u64)> = recs
        .iter()
        .map(|r| (r.addr, r.addr + u64::from(r.len.max(1))))
        .collect();
    ranges.sort_unstable();
    // Merged extents: (old start, old end, new start).
    let mut ext: Vec<(u64, u64, u64)> = Vec::new();
    let mut cursor = BLOCK;
    for (a, b) in ranges {
        match ext.last_mut() {
            Some(e) if a <= e.1 => e.1 = e.1.max(b),
            _ => {
                if let Some(e) = ext.last() {
                    cursor = e.2 + (e.1 - e.0);
                }
                let new = cursor.next_multiple_of(BLOCK) + a % BLOCK;
                ext.push((a, b, new));
            }
        }
    }
    for r in recs {
        let i = ext.partition_point(|e| e.0 <= r.addr) - 1;
        r.addr = ext[i].2 + (r.addr - ext[i].0);
    }
}

/// Converts a `trace-cmd report` or tracefs `trace` text to records (in the input's order).
pub fn convert_linux_trace(
    input: impl BufRead,
    compact_addresses: bool,
) -> Result<(Vec<TraceRecord>, ConvertSummary), LinuxTraceError> {
    let mut c = Converter {
        devices: Vec::new(),
        t0: None,
        next_id: 0,
        by_dma: BTreeMap::new(),
        sg_by_phys: HashMap::new(),
        out: Vec::new(),
        sum: ConvertSummary::default(),
        named: Default::default(),
    };
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        let Some(ev) = parse_line(&line) else {
            continue;
        };
        ev.and_then(|e| c.event(e))
            .map_err(|why| LinuxTraceError::Parse { line: n + 1, why })?;
    }
    if compact_addresses {
        compact(&mut c.out);
    }
    c.sum.devices = c.devices;
    Ok((c.out, c.sum))
}

#[cfg(test)]
mod tests;
