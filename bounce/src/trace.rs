//! DMA traces: one JSON object per line for every map (also a failed one), unmap and sync.
//!
//! Format version 2 (written since 2026-12-01) starts with a header line; version 1 (no
//! header, no optional fields) is still read:
//!
//! ```text
//! {"format":"bounce-dma-trace","version":2}
//! {"t_ns":1200,"op":"map","id":1,"device":0,"queue":1,"thread":1,"addr":1052672,"len":4096,"dir":"from_device","bounce":17592186044416,"pool":1,"pool_kind":"initial"}
//! {"t_ns":5100,"op":"sync_for_cpu","id":1,"device":0,"queue":1,"thread":1,"addr":1052672,"len":4096,"dir":"from_device","offset":0,"sync_len":512,"bounce":17592186044416}
//! {"t_ns":9800,"op":"unmap","id":1,"device":0,"queue":1,"thread":1,"addr":1052672,"len":4096,"dir":"from_device","bounce":17592186044416}
//! {"t_ns":9900,"op":"map","id":2,"device":0,"queue":1,"thread":1,"addr":0,"len":8192,"dir":"to_device","min_align_mask":4095,"error":"no_space","error_msg":"..."}
//! ```
//! `t_ns`: nanoseconds since the recorder was created; `id`: the mapping (a map and the syncs and
//! unmap of the same buffer share it); `addr`: the guest (original) address; `op`: `map`,
//! `unmap`, `sync_for_cpu`, `sync_for_device`; `thread`: a small number the recorder gives each
//! thread that records (1, 2, ... in order of first record; not an OS id); `thread_name`: that
//! thread's name (`blk0`, `vcpu1`, `main`: microvm's event loop), on the thread's first record
//! only (added 2026-12-01 without a version change: readers ignore fields they do not know, and
//! traces without it still load; [`thread_names`] collects them). Optional fields
//! (absent when zero or unknown): `min_align_mask`, `alloc_align_mask`, `may_block` (the map's
//! attributes); `bounce`: the bounce address, in the model's synthetic address space (from
//! [`crate::BOUNCE_BASE`]; never a host address; absent for a direct `Dma`); `pool` and
//! `pool_kind` (`initial`, `dynamic`, `transient`): the pool that served a map; `offset`,
//! `sync_len`: the range a sync covered; `error` (a [`DmaError`] kind in snake case) and
//! `error_msg`: a map that failed (it has no unmap). A map that had to wait
//! (`DmaError::WouldBlock`) is not recorded until it succeeds. Records are written in the order
//! the operations completed.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::DmaError;
use crate::pool::MapAttrs;
use crate::types::{DmaDirection, DmaSource};

/// The format version [`TraceRecorder`] writes (in its header line).
pub const TRACE_VERSION: u32 = 2;
/// The header's `format` value.
pub const TRACE_FORMAT: &str = "bounce-dma-trace";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceOp {
    Map,
    Unmap,
    SyncForCpu,
    SyncForDevice,
}

/// The kind of pool that served a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TracePoolKind {
    Initial,
    Dynamic,
    Transient,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    pub t_ns: u64,
    pub op: TraceOp,
    pub id: u64,
    pub device: u16,
    pub queue: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<u32>,
    /// The recording thread's name, on its first record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_name: Option<String>,
    pub addr: u64,
    pub len: u32,
    pub dir: DmaDirection,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_align_mask: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub alloc_align_mask: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub may_block: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_kind: Option<TracePoolKind>,
    /// A sync's range: offset into the mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    /// A sync's range: its length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_len: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_msg: Option<String>,
}

impl Default for TraceRecord {
    fn default() -> Self {
        TraceRecord {
            t_ns: 0,
            op: TraceOp::Map,
            id: 0,
            device: 0,
            queue: 0,
            thread: None,
            thread_name: None,
            addr: 0,
            len: 0,
            dir: DmaDirection::Bidirectional,
            min_align_mask: 0,
            alloc_align_mask: 0,
            may_block: false,
            bounce: None,
            pool: None,
            pool_kind: None,
            offset: None,
            sync_len: None,
            error: None,
            error_msg: None,
        }
    }
}

impl TraceRecord {
    /// The map attributes recorded with it.
    pub fn attrs(&self) -> MapAttrs {
        MapAttrs {
            min_align_mask: self.min_align_mask,
            alloc_align_mask: self.alloc_align_mask,
            may_block: self.may_block,
        }
    }

    /// Whether this is a map that failed when it was recorded.
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// A sync covering only part of its mapping (the range, when it is not the whole buffer).
    pub fn partial_sync(&self) -> Option<(u32, u32)> {
        let (off, len) = (self.offset.unwrap_or(0), self.sync_len.unwrap_or(self.len));
        (off != 0 || len != self.len).then_some((off, len))
    }
}

/// The first line of a version 2+ trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHeader {
    pub format: String,
    pub version: u32,
}

impl TraceHeader {
    pub fn current() -> Self {
        TraceHeader {
            format: TRACE_FORMAT.to_string(),
            version: TRACE_VERSION,
        }
    }
}

/// The snake-case kind of a DMA error, as traces record it.
pub fn error_kind(e: &DmaError) -> &'static str {
    match e {
        DmaError::ZeroLength { .. } => "zero_length",
        DmaError::OutOfGuestMemory { .. } => "out_of_guest_memory",
        DmaError::NotContiguous { .. } => "not_contiguous",
        DmaError::OutOfBuffer { .. } => "out_of_buffer",
        DmaError::ReadOnlyBuffer => "read_only_buffer",
        DmaError::TooLarge { .. } => "too_large",
        DmaError::NoSpace { .. } => "no_space",
        DmaError::CapReached { .. } => "cap_reached",
        DmaError::AtomicPoolExhausted { .. } => "atomic_pool_exhausted",
        DmaError::WouldBlock { .. } => "would_block",
        DmaError::UnknownAddress { .. } => "unknown_address",
        DmaError::NotMapped { .. } => "not_mapped",
        DmaError::NotMappingStart { .. } => "not_mapping_start",
        DmaError::DoubleSync { .. } => "double_sync",
    }
}

/// What a map, sync or unmap adds to the record beyond the buffer (all optional).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extra<'e> {
    pub attrs: MapAttrs,
    pub bounce: Option<u64>,
    pub pool: Option<(u64, TracePoolKind)>,
    pub range: Option<(usize, usize)>,
    pub error: Option<&'e DmaError>,
}

static NEXT_THREAD: AtomicU32 = AtomicU32::new(1);

thread_local! {
    static THREAD: Cell<u32> = const { Cell::new(0) };
}

/// This thread's number in traces (given at its first record, process-wide), and its name
/// when this is its first record.
fn thread_no() -> (u32, Option<String>) {
    THREAD.with(|t| {
        if t.get() == 0 {
            t.set(NEXT_THREAD.fetch_add(1, Relaxed));
            let name = std::thread::current()
                .name()
                .map_or_else(|| format!("thread-{}", t.get()), str::to_string);
            return (t.get(), Some(name));
        }
        (t.get(), None)
    })
}

/// The recorded threads: number, name (if the trace names it), records.
pub fn thread_names(recs: &[TraceRecord]) -> Vec<(u32, Option<String>, usize)> {
    let mut m: std::collections::BTreeMap<u32, (Option<String>, usize)> = Default::default();
    for r in recs {
        if let Some(t) = r.thread {
            let e = m.entry(t).or_default();
            e.1 += 1;
            if e.0.is_none() {
                e.0.clone_from(&r.thread_name);
            }
        }
    }
    m.into_iter().map(|(t, (n, c))| (t, n, c)).collect()
}

/// Writes trace records to any `Write` (a file, or memory in tests).
pub struct TraceRecorder {
    out: Mutex<Box<dyn Write + Send>>,
    epoch: Instant,
    next_id: AtomicU64,
    errors: AtomicU64,
}

impl TraceRecorder {
    /// A recorder writing to `out`, starting with the header line.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        let rec = TraceRecorder {
            out: Mutex::new(out),
            epoch: Instant::now(),
            next_id: AtomicU64::new(1),
            errors: AtomicU64::new(0),
        };
        rec.write_line(&TraceHeader::current());
        rec
    }

    /// Records to a (buffered) file, created or truncated.
    pub fn to_file(path: &Path) -> io::Result<Self> {
        Ok(Self::new(Box::new(BufWriter::new(File::create(path)?))))
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        op: TraceOp,
        id: u64,
        src: DmaSource,
        addr: u64,
        len: usize,
        dir: DmaDirection,
        x: Extra<'_>,
    ) {
        let (thread, thread_name) = thread_no();
        let r = TraceRecord {
            t_ns: self.epoch.elapsed().as_nanos() as u64,
            op,
            id,
            device: src.device,
            queue: src.queue,
            thread: Some(thread),
            thread_name,
            addr,
            len: len as u32,
            dir,
            min_align_mask: x.attrs.min_align_mask,
            alloc_align_mask: x.attrs.alloc_align_mask,
            may_block: x.attrs.may_block,
            bounce: x.bounce,
            pool: x.pool.map(|p| p.0),
            pool_kind: x.pool.map(|p| p.1),
            offset: x.range.map(|r| r.0 as u32),
            sync_len: x.range.map(|r| r.1 as u32),
            error: x.error.map(|e| error_kind(e).to_string()),
            error_msg: x.error.map(|e| e.to_string()),
        };
        self.write_line(&r);
    }

    fn write_line(&self, v: &impl Serialize) {
        let mut out = self.out.lock();
        let ok = serde_json::to_writer(&mut *out, v).is_ok() && out.write_all(b"\n").is_ok();
        if !ok && self.errors.fetch_add(1, Relaxed) == 0 {
            log::error!("DMA trace: write failed; further errors are only counted");
        }
    }

    /// Records that could not be written.
    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    pub fn flush(&self) -> io::Result<()> {
        self.out.lock().flush()
    }
}

impl Drop for TraceRecorder {
    fn drop(&mut self) {
        if let Err(e) = self.out.get_mut().flush() {
            log::error!("DMA trace: flush failed: {e}");
        }
    }
}

/// Reads a JSON-lines trace (blank lines skipped), of any version up to [`TRACE_VERSION`].
pub fn read_trace(r: impl BufRead) -> io::Result<Vec<TraceRecord>> {
    read_trace_versioned(r).map(|(_, v)| v)
}

/// [`read_trace`], also giving the format version (1 for a trace without a header).
pub fn read_trace_versioned(r: impl BufRead) -> io::Result<(u32, Vec<TraceRecord>)> {
    let bad = |n: usize, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("line {}: {e}", n + 1))
    };
    let mut v = Vec::new();
    let mut version = None;
    for (n, line) in r.lines().enumerate() {
        let line = line?;
        let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        if line.is_empty() {
            continue;
        }
        if version.is_none() {
            let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(n, &e))?;
            if value.get("format").is_some() {
                let h: TraceHeader = serde_json::from_value(value).map_err(|e| bad(n, &e))?;
                if h.format != TRACE_FORMAT {
                    return Err(bad(n, &format!("not a DMA trace (format {:?})", h.format)));
                }
                if h.version == 0 || h.version > TRACE_VERSION {
                    return Err(bad(
                        n,
                        &format!(
                            "trace format version {} is not one this reader knows (1..={TRACE_VERSION})",
                            h.version
                        ),
                    ));
                }
                version = Some(h.version);
                continue;
            }
            version = Some(1);
        }
        v.push(serde_json::from_str(line).map_err(|e| bad(n, &e))?);
    }
    Ok((version.unwrap_or(TRACE_VERSION), v))
}

/// Writes records as a version-[`TRACE_VERSION`] trace (header first).
pub fn write_trace<'r>(
    mut w: impl Write,
    recs: impl IntoIterator<Item = &'r TraceRecord>,
) -> io::Result<()> {
    serde_json::to_writer(&mut w, &TraceHeader::current())?;
    w.write_all(b"\n")?;
    for r in recs {
        serde_json::to_writer(&mut w, r)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// A trace sink tests read back: every clone appends to the same bytes.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct MemorySink(std::sync::Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl MemorySink {
    /// What was written so far.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.0.lock().clone()
    }
}

#[cfg(test)]
impl Write for MemorySink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"t_ns":1200,"op":"map","id":1,"device":0,"queue":1,"addr":1052672,"len":4096,"dir":"from_device"}

{"t_ns":9800,"op":"unmap","id":1,"device":0,"queue":1,"addr":1052672,"len":4096,"dir":"from_device"}
"#;

    #[test]
    fn reads_version_1_traces() {
        let (v, recs) = read_trace_versioned(V1.as_bytes()).unwrap();
        assert_eq!(v, 1);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].thread, None);
        assert_eq!(recs[0].bounce, None);
        assert_eq!(recs[0].attrs(), MapAttrs::default());
        assert!(!recs[0].failed());
        assert_eq!(recs[1].op, TraceOp::Unmap);
    }

    #[test]
    fn version_2_round_trips_and_omits_empty_fields() {
        let r = TraceRecord {
            t_ns: 5,
            id: 3,
            addr: 0x1000,
            len: 4096,
            dir: DmaDirection::ToDevice,
            thread: Some(2),
            min_align_mask: 0xfff,
            bounce: Some(crate::BOUNCE_BASE + 0x800),
            pool: Some(1),
            pool_kind: Some(TracePoolKind::Initial),
            ..Default::default()
        };
        let sync = TraceRecord {
            op: TraceOp::SyncForCpu,
            offset: Some(512),
            sync_len: Some(1024),
            ..r.clone()
        };
        let mut buf = Vec::new();
        write_trace(&mut buf, [&r, &sync]).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(text.starts_with(r#"{"format":"bounce-dma-trace","version":2}"#));
        assert!(!text.contains("alloc_align_mask") && !text.contains("error"));
        let (v, back) = read_trace_versioned(&buf[..]).unwrap();
        assert_eq!((v, back), (2, vec![r.clone(), sync.clone()]));
        assert_eq!(r.partial_sync(), None);
        assert_eq!(sync.partial_sync(), Some((512, 1024)));
    }

    #[test]
    fn rejects_unknown_versions_and_formats() {
        let newer = "{\"format\":\"bounce-dma-trace\",\"version\":3}\n";
        let e = read_trace(newer.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("version 3"), "{e}");
        let other = "{\"format\":\"something\",\"version\":1}\n";
        assert!(read_trace(other.as_bytes()).is_err());
        let e = read_trace("{\"t_ns\":1}\n".as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 1:"), "{e}");
    }

    #[test]
    fn trailing_nul_padding_is_ignored() {
        // A trace copied back into a larger disk image ends in zeros.
        let mut t = V1.as_bytes().to_vec();
        t.extend_from_slice(&[0u8; 100]);
        assert_eq!(read_trace(&t[..]).unwrap().len(), 2);
    }

    #[test]
    fn error_kinds_are_snake_case() {
        assert_eq!(error_kind(&DmaError::NoSpace { len: 1 }), "no_space");
        assert_eq!(
            error_kind(&DmaError::AtomicPoolExhausted { len: 1 }),
            "atomic_pool_exhausted"
        );
    }

    #[test]
    fn threads_get_distinct_small_numbers_and_their_names_once() {
        let (here, _) = thread_no();
        assert_eq!(thread_no(), (here, None));
        let there = std::thread::Builder::new()
            .name("blk0".into())
            .spawn(|| (thread_no(), thread_no()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(there.0 .1.as_deref(), Some("blk0"));
        assert_eq!(there.1, (there.0 .0, None));
        assert_ne!(here, there.0 .0);
        assert!(here > 0 && there.0 .0 > 0);
    }

    #[test]
    fn recorded_traces_name_their_threads() {
        let buf = MemorySink::default();
        let rec = std::sync::Arc::new(TraceRecorder::new(Box::new(buf.clone())));
        let src = DmaSource::default();
        let extra = || Extra {
            attrs: MapAttrs::default(),
            bounce: None,
            pool: None,
            range: None,
            error: None,
        };
        for name in ["vcpu1", "blk0"] {
            let r = rec.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    for _ in 0..3 {
                        r.record(TraceOp::Map, 1, src, 0, 8, DmaDirection::ToDevice, extra());
                    }
                })
                .unwrap()
                .join()
                .unwrap();
        }
        rec.flush().unwrap();
        let text = String::from_utf8(buf.bytes()).unwrap();
        assert_eq!(text.matches("\"thread_name\"").count(), 2, "{text}");
        let recs = read_trace(text.as_bytes()).unwrap();
        let names = thread_names(&recs);
        assert_eq!(names.len(), 2);
        assert_eq!(names[0].1.as_deref(), Some("vcpu1"));
        assert_eq!(names[1].1.as_deref(), Some("blk0"));
        assert_eq!((names[0].2, names[1].2), (3, 3));
        // A version-2 trace from before names were recorded still loads, unnamed.
        let old = "{\"format\":\"bounce-dma-trace\",\"version\":2}\n{\"t_ns\":1,\"op\":\"map\",\"id\":1,\"device\":0,\"queue\":0,\"thread\":4,\"addr\":0,\"len\":8,\"dir\":\"to_device\"}\n";
        let recs = read_trace(old.as_bytes()).unwrap();
        assert_eq!(thread_names(&recs), vec![(4, None, 1)]);
    }
}
