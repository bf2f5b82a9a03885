//! DMA traces: one JSON object per line for every map, unmap and sync.
//!
//! ```text
//! {"t_ns":1200,"op":"map","id":1,"device":0,"queue":1,"addr":1052672,"len":4096,"dir":"from_device"}
//! {"t_ns":9800,"op":"unmap","id":1,"device":0,"queue":1,"addr":1052672,"len":4096,"dir":"from_device"}
//! ```
//! `t_ns`: nanoseconds since the recorder was created; `id`: the mapping (a map and the syncs and
//! unmap of the same buffer share it); `addr`: the guest (original) address; `op`: `map`,
//! `unmap`, `sync_for_cpu`, `sync_for_device`. Records are written in the order the operations
//! completed.

use std::fs::File;
use std::io::{self, BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::types::{DmaDirection, DmaSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceOp {
    Map,
    Unmap,
    SyncForCpu,
    SyncForDevice,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    pub t_ns: u64,
    pub op: TraceOp,
    pub id: u64,
    pub device: u16,
    pub queue: u16,
    pub addr: u64,
    pub len: u32,
    pub dir: DmaDirection,
}

/// Writes trace records to any `Write` (a file, or memory in tests).
pub struct TraceRecorder {
    out: Mutex<Box<dyn Write + Send>>,
    epoch: Instant,
    next_id: AtomicU64,
    errors: AtomicU64,
}

impl TraceRecorder {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        TraceRecorder {
            out: Mutex::new(out),
            epoch: Instant::now(),
            next_id: AtomicU64::new(1),
            errors: AtomicU64::new(0),
        }
    }

    /// Records to a (buffered) file, created or truncated.
    pub fn to_file(path: &Path) -> io::Result<Self> {
        Ok(Self::new(Box::new(BufWriter::new(File::create(path)?))))
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    pub(crate) fn record(
        &self,
        op: TraceOp,
        id: u64,
        src: DmaSource,
        addr: u64,
        len: usize,
        dir: DmaDirection,
    ) {
        let r = TraceRecord {
            t_ns: self.epoch.elapsed().as_nanos() as u64,
            op,
            id,
            device: src.device,
            queue: src.queue,
            addr,
            len: len as u32,
            dir,
        };
        let mut out = self.out.lock();
        let ok = serde_json::to_writer(&mut *out, &r).is_ok() && out.write_all(b"\n").is_ok();
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

/// Reads a JSON-lines trace (blank lines skipped).
pub fn read_trace(r: impl BufRead) -> io::Result<Vec<TraceRecord>> {
    let mut v = Vec::new();
    for (n, line) in r.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        v.push(serde_json::from_str(&line).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("line {}: {e}", n + 1))
        })?);
    }
    Ok(v)
}
