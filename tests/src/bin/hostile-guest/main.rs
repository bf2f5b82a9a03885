//! hostile-guest: a guest program that drives microvm's virtio-mmio devices itself, from user
//! space, as a hostile driver would (tests/tests/hostile.rs carries it into the initramfs and
//! boots it on Debian's cloud kernel, whose virtio drivers are modules nobody loads, so nothing
//! claims the MMIO windows and `/dev/mem` may map them).
//!
//! `hostile-guest SCENARIO...` (or `all`): each scenario prints `HOSTILE-<name>=PASS|FAIL
//! [reason]` and its measurements as `HOSTILE-<key>=<value>` lines; the host asserts the
//! bounds. The exit status is 0 when every scenario passed.
//!
//! The disk (`/dev/vda` for the host) must hold the pattern of [`pattern`]: the u64 at byte
//! offset `o` is `o ^ PATTERN_XOR`.

mod virtq;

use std::fs::OpenOptions;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtq::*;

const TYPE_BLK: u32 = 2;
const TYPE_RNG: u32 = 4;
/// virtio-blk: more than one request queue.
const F_BLK_MQ: u64 = 1 << 12;
const PATTERN_XOR: u64 = 0x5a5a_5a5a_0000_0000;
/// How long one request may take before a scenario calls the device dead.
const DEAD: Duration = Duration::from_secs(20);

fn pattern(off: u64) -> u64 {
    off ^ PATTERN_XOR
}

struct Devices {
    blk: Mmio,
    rng: Mmio,
    blk_sectors: u64,
}

type Outcome = Result<(), String>;

fn kv(k: &str, v: impl std::fmt::Display) {
    println!("HOSTILE-{k}={v}");
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Outcome {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// One rng request of `len` bytes in `buf` on descriptor 0; returns the used length.
fn rng_once(m: &Mmio, q: &mut Vq, buf: &Page, len: u32) -> Result<u32, String> {
    q.set_desc(0, buf.phys, len, D_WRITE, 0);
    q.push(0);
    q.notify(m);
    let (id, n) = q
        .wait_used(DEAD)
        .ok_or_else(|| format!("rng: no answer within {DEAD:?}"))?;
    check(id == 0, || format!("rng: used id {id}"))?;
    check(n <= len, || format!("rng: used len {n} > buffer {len}"))?;
    Ok(n)
}

/// A fresh rng device at DRIVER_OK with one queue of `size`.
fn rng_ready(d: &Devices, a: &mut Arena, size: u16, features: u64) -> Result<Vq, String> {
    let q = Vq::new(a, 0, size);
    let s = init(&d.rng, features, &[&q])?;
    check(s & S_DRIVER_OK != 0 && s & S_NEEDS_RESET == 0, || {
        format!("rng status {s:#x} after init")
    })?;
    Ok(q)
}

/// 1-, 2- and 8-byte and misaligned accesses, unknown registers, bogus notify indices: all
/// ignored (reads as 0) and the device keeps working.
fn widths(d: &Devices, a: &mut Arena) -> Outcome {
    let m = &d.rng;
    m.w32(REG_STATUS, 0);
    check(m.r32(REG_MAGIC) == MAGIC, || "magic".into())?;
    let odd = [
        u64::from(m.r8(REG_MAGIC)),
        u64::from(m.r16(REG_MAGIC)),
        m.r64(REG_MAGIC),
        u64::from(m.r32_unaligned(REG_MAGIC + 2)),
        u64::from(m.r32(0x0f0)),
    ];
    kv("widths-odd-reads", format!("{odd:x?}"));
    check(odd.iter().all(|&v| v == 0), || {
        format!("odd-width reads should read 0: {odd:x?}")
    })?;
    m.w8(REG_STATUS, S_ACK as u8);
    m.w16(REG_STATUS, S_ACK as u16);
    m.w64(REG_STATUS, u64::from(S_ACK));
    m.w32(0x0f0, 0xdead_beef);
    let s = m.r32(REG_STATUS);
    check(s == 0, || {
        format!("odd-width status writes changed it: {s:#x}")
    })?;
    // Config space: the disk's capacity read at every width agrees.
    let cap64 = d.blk.r64(CONFIG);
    let cap32 = u64::from(d.blk.r32(CONFIG)) | (u64::from(d.blk.r32(CONFIG + 4)) << 32);
    let cap8 = d.blk.r8(CONFIG);
    kv("widths-blk-capacity", cap64);
    check(cap64 == cap32 && cap64 == d.blk_sectors, || {
        format!("capacity {cap64} / {cap32}, want {}", d.blk_sectors)
    })?;
    check(u64::from(cap8) == cap64 & 0xff, || "capacity byte".into())?;
    // Config writes the device does not take, at every width, and reads past the end.
    d.blk.w8(CONFIG, 0xff);
    d.blk.w64(CONFIG, u64::MAX);
    d.rng.w32(CONFIG + 0x40, 1);
    let _ = d.rng.r64(CONFIG + 0xef8);
    check(d.blk.r64(CONFIG) == cap64, || {
        "config write changed capacity".into()
    })?;

    let mut q = rng_ready(d, a, 16, 0)?;
    let buf = a.page();
    // Bogus notify indices (no ioeventfd matches: each is an MMIO exit) and odd-width notifies.
    let bogus = [1u32, 2, 3, 255, 256, 0xffff, 0x1_0000, 0xffff_ffff];
    for round in 0..64u32 {
        for &b in &bogus {
            m.w32(
                REG_QUEUE_NOTIFY,
                b.wrapping_add(round * 7919 * u32::from(b > 3)),
            );
        }
        m.w16(REG_QUEUE_NOTIFY, 0);
        m.w8(REG_QUEUE_NOTIFY, 0);
        m.w64(REG_QUEUE_NOTIFY, 0);
    }
    kv("widths-bogus-notifies", 64 * (bogus.len() + 3));
    let s = m.r32(REG_STATUS);
    check(s & S_NEEDS_RESET == 0 && s & S_DRIVER_OK != 0, || {
        format!("status {s:#x} after bogus notifies")
    })?;
    let n = rng_once(m, &mut q, &buf, 64)?;
    check(n == 64, || format!("rng gave {n} of 64 bytes"))
}

/// A queue size that is not a power of two, and misaligned rings, at DRIVER_OK: the device
/// cannot activate and must set DEVICE_NEEDS_RESET with a configuration-change interrupt
/// (virtio 1.2 §2.1.2); a reset clears it and the device works again.
fn needs_reset(d: &Devices, a: &mut Arena) -> Outcome {
    let m = &d.rng;
    for (what, size, misalign) in [("size-3", 3u16, 0u64), ("misaligned-desc", 16, 8)] {
        let q = Vq::new(a, 0, size);
        m.w32(REG_STATUS, 0);
        init_raw(m, &q, misalign);
        let s = m.r32(REG_STATUS);
        let isr = m.r32(REG_INTERRUPT_STATUS);
        kv(&format!("needs-reset-{what}-status"), format!("{s:#x}"));
        check(s & S_NEEDS_RESET != 0, || {
            format!("{what}: status {s:#x} lacks DEVICE_NEEDS_RESET")
        })?;
        check(isr & 2 != 0, || {
            format!("{what}: InterruptStatus {isr:#x} lacks the config change bit")
        })?;
        m.w32(REG_INTERRUPT_ACK, isr);
        m.w32(REG_STATUS, 0);
        let s = m.r32(REG_STATUS);
        check(s == 0, || format!("{what}: status {s:#x} after reset"))?;
    }
    let mut q = rng_ready(d, a, 16, 0)?;
    let buf = a.page();
    rng_once(m, &mut q, &buf, 32).map(|_| ())
}

/// Drives the set-up sequence by hand, with the descriptor table `misalign` bytes off.
fn init_raw(m: &Mmio, q: &Vq, misalign: u64) {
    m.w32(REG_STATUS, S_ACK | S_DRIVER);
    m.w32(REG_DRIVER_FEATURES_SEL, 1);
    m.w32(REG_DRIVER_FEATURES, 1);
    m.w32(REG_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    q.program(m);
    if misalign != 0 {
        // Still before QueueReady? No: program() set it; clear it, move the table, set it.
        m.w32(REG_QUEUE_READY, 0);
        m.w32(REG_QUEUE_DESC_LOW, (q.desc.phys + misalign) as u32);
        m.w32(REG_QUEUE_READY, 1);
    }
    m.w32(REG_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
}

/// After DRIVER_OK, the driver points the queue at decoy rings (whose one available chain
/// would write a canary page), shrinks it and un-readies it: the device must keep the rings it
/// activated with, never touch the decoy, and keep serving.
fn reprogram(d: &Devices, a: &mut Arena) -> Outcome {
    let m = &d.rng;
    let mut q = rng_ready(d, a, 16, 0)?;
    let buf = a.page();
    rng_once(m, &mut q, &buf, 16)?;
    let decoy = Vq::new(a, 0, 16);
    let canary = a.page();
    canary.fill(0xaa);
    for i in 0..16 {
        decoy.set_desc(i, canary.phys, PAGE as u32, D_WRITE, 0);
    }
    decoy.avail.w::<u16>(4, 0);
    decoy.avail.w::<u16>(2, 16);
    decoy.program(m); // QueueNum, the three addresses, QueueReady=1: all after DRIVER_OK
    m.w32(REG_QUEUE_READY, 0);
    m.w32(REG_QUEUE_NUM, 1);
    m.w32(REG_QUEUE_SEL, 9);
    m.w32(REG_QUEUE_NUM, 4);
    m.w32(REG_QUEUE_READY, 1);
    m.w32(REG_QUEUE_SEL, 0);
    m.w32(REG_DRIVER_FEATURES_SEL, 0);
    m.w32(REG_DRIVER_FEATURES, u32::MAX);
    m.w32(REG_QUEUE_NOTIFY, 0);
    std::thread::sleep(Duration::from_millis(300));
    let ready = m.r32(REG_QUEUE_READY);
    check(ready == 1, || {
        format!("QueueReady reads {ready} after the writes")
    })?;
    let touched = canary.bytes().iter().filter(|&&b| b != 0xaa).count();
    kv("reprogram-canary-bytes-changed", touched);
    check(touched == 0, || {
        format!("the decoy chain wrote {touched} canary bytes")
    })?;
    check(decoy.used_idx() == 0, || {
        "the device used the decoy ring".into()
    })?;
    let s = m.r32(REG_STATUS);
    check(s & S_NEEDS_RESET == 0, || format!("status {s:#x}"))?;
    let n = rng_once(m, &mut q, &buf, 128)?;
    check(n == 128, || {
        format!("rng gave {n} of 128 after the reprogramming")
    })
}

/// Fills the rng queue with chains whose one descriptor is an indirect table of 256
/// driver-readable descriptors, round after round: each must come back with length 0.
fn rng_flood(d: &Devices, a: &mut Arena, rounds: u32) -> Outcome {
    let m = &d.rng;
    let mut q = rng_ready(d, a, 256, F_INDIRECT)?;
    let table = a.page();
    let target = a.page();
    for i in 0..256u16 {
        let o = usize::from(i) * 16;
        table.w::<u64>(o, target.phys);
        table.w::<u32>(o + 8, PAGE as u32);
        table.w::<u16>(o + 12, if i < 255 { D_NEXT } else { 0 });
        table.w::<u16>(o + 14, i.wrapping_add(1));
    }
    for i in 0..q.size {
        q.set_desc(i, table.phys, PAGE as u32, D_INDIRECT, 0);
    }
    let t = Instant::now();
    let mut chains = 0u64;
    for _ in 0..rounds {
        for i in 0..q.size {
            q.push(i);
        }
        q.notify(m);
        for _ in 0..q.size {
            let (id, len) = q.wait_used(DEAD).ok_or("rng flood: no answer")?;
            check(len == 0, || {
                format!("chain {id}: used len {len} with no writable byte")
            })?;
            chains += 1;
        }
    }
    let ms = t.elapsed().as_millis();
    kv("rng-flood-chains", chains);
    kv("rng-flood-readonly-descriptors", chains * 256);
    kv("rng-flood-elapsed-ms", ms);
    // The device still serves a proper request on the same queue.
    let buf = a.page();
    q.set_desc(0, buf.phys, 64, D_WRITE, 0);
    q.push(0);
    q.notify(m);
    let (_, n) = q.wait_used(DEAD).ok_or("rng: no answer after the flood")?;
    check(n == 64, || format!("rng gave {n} of 64 after the flood"))
}

/// Block read slots: slot `j` uses descriptors `j*(2+k)..`: header, `k` data pages, status.
struct Blk {
    q: Vq,
    hdr: Vec<Page>,
    data: Vec<Vec<Page>>,
    k: u16,
}

impl Blk {
    fn new(a: &mut Arena, index: u32, slots: u16, k: u16) -> Blk {
        let q = Vq::new(a, index, 256);
        assert!(slots * (k + 2) <= 256);
        let hdr = (0..slots).map(|_| a.page()).collect();
        let data = (0..slots)
            .map(|_| (0..k).map(|_| a.page()).collect())
            .collect();
        Blk { q, hdr, data, k }
    }
    /// Writes slot `j`'s chain: a read of `k` pages at `sector`. Returns its head.
    fn prepare(&self, j: u16, sector: u64) -> u16 {
        let base = j * (self.k + 2);
        let h = &self.hdr[usize::from(j)];
        h.w::<u32>(0, 0); // VIRTIO_BLK_T_IN
        h.w::<u32>(4, 0);
        h.w::<u64>(8, sector);
        h.w::<u8>(2048, 0xee);
        self.q.set_desc(base, h.phys, 16, D_NEXT, base + 1);
        for (i, p) in self.data[usize::from(j)].iter().enumerate() {
            let i = i as u16;
            p.fill(0);
            self.q.set_desc(
                base + 1 + i,
                p.phys,
                PAGE as u32,
                D_WRITE | D_NEXT,
                base + 2 + i,
            );
        }
        self.q
            .set_desc(base + 1 + self.k, h.phys + 2048, 1, D_WRITE, 0);
        base
    }
    fn slot_of(&self, head: u32) -> Option<u16> {
        let j = u16::try_from(head).ok()? / (self.k + 2);
        (usize::from(j) < self.hdr.len() && head.is_multiple_of(u32::from(self.k + 2))).then_some(j)
    }
    /// Checks slot `j`'s answer: status OK and the pattern at `sector`.
    fn verify(&self, j: u16, sector: u64, len: u32) -> Outcome {
        let st = self.hdr[usize::from(j)].r::<u8>(2048);
        check(st == 0, || format!("blk slot {j}: status {st}"))?;
        let want = u32::from(self.k) * PAGE as u32 + 1;
        check(len == want, || {
            format!("blk slot {j}: used len {len}, want {want}")
        })?;
        for (i, p) in self.data[usize::from(j)].iter().enumerate() {
            for w in (0..PAGE).step_by(512) {
                let off = sector * 512 + (i * PAGE + w) as u64;
                let v = p.r::<u64>(w);
                check(v == pattern(off), || {
                    format!("blk: data at disk offset {off}: {v:#x}")
                })?;
            }
        }
        Ok(())
    }
}

/// Fills the disk queue with multi-page reads, notifies and resets the device at once: the
/// reset returns with status 0, the device writes nothing to the old rings afterwards, and
/// a re-initialised device reads correct data.
fn reset_inflight(d: &Devices, a: &mut Arena, rounds: u32) -> Outcome {
    let m = &d.blk;
    let mut b = Blk::new(a, 0, 14, 16);
    let span = u64::from(b.k) * 8;
    let mut max_reset_us = 0u128;
    let mut done_before = 0u64;
    let mut total = 0u64;
    for r in 0..rounds {
        b.q.clear();
        init(m, 0, &[&b.q])?;
        // Nothing of the previous round may reach the fresh rings (nothing is offered yet).
        std::thread::sleep(Duration::from_millis(20));
        let early = b.q.used_idx();
        check(early == 0, || {
            format!("round {r}: {early} used entries on a fresh ring before any buffer")
        })?;
        for j in 0..14u16 {
            let sector = (u64::from(r) * 14 + u64::from(j)) * span % (d.blk_sectors - span);
            let h = b.prepare(j, sector);
            b.q.push(h);
        }
        b.q.notify(m);
        let t = Instant::now();
        m.w32(REG_STATUS, 0);
        max_reset_us = max_reset_us.max(t.elapsed().as_micros());
        let s = m.r32(REG_STATUS);
        check(s == 0, || format!("status {s:#x} after the reset"))?;
        let at_reset = b.q.used_idx();
        std::thread::sleep(Duration::from_millis(50));
        let later = b.q.used_idx();
        check(later == at_reset, || {
            format!(
                "the device used {} chains after the reset",
                later.wrapping_sub(at_reset)
            )
        })?;
        done_before += u64::from(at_reset);
        total += 14;
    }
    kv("reset-inflight-requests", total);
    kv("reset-inflight-answered-before-reset", done_before);
    kv("reset-inflight-max-reset-us", max_reset_us);
    // A clean start reads the right data.
    b.q.clear();
    init(m, 0, &[&b.q])?;
    let h = b.prepare(3, 4096);
    b.q.push(h);
    b.q.notify(m);
    let (id, len) =
        b.q.wait_used(DEAD)
            .ok_or("blk: no answer after the resets")?;
    check(b.slot_of(id) == Some(3), || format!("used id {id}"))?;
    b.verify(3, 4096, len)
}

/// Latencies (µs) of single rng requests, back to back, for `dur`.
fn rng_latencies(m: &Mmio, q: &mut Vq, buf: &Page, dur: Duration) -> Result<Vec<u64>, String> {
    let t = Instant::now();
    let mut v = Vec::new();
    while t.elapsed() < dur {
        let s = Instant::now();
        rng_once(m, q, buf, 64)?;
        v.push(s.elapsed().as_micros() as u64);
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(v)
}

fn summary(key: &str, v: &mut [u64]) {
    v.sort_unstable();
    let p = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    kv(&format!("{key}-n"), v.len());
    kv(&format!("{key}-p50-us"), p(0.5));
    kv(&format!("{key}-p99-us"), p(0.99));
    kv(&format!("{key}-max-us"), p(1.0));
}

/// Keeps `b`'s queue full of reads (each chain re-offered, data checked, the moment it comes
/// back) until `stop`; counts completions in `done`.
fn blk_flood(mut b: Blk, m: Mmio, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> Outcome {
    let slots = b.hdr.len() as u16;
    for j in 0..slots {
        let h = b.prepare(j, u64::from(j) * 64);
        b.q.push(h);
    }
    b.q.notify(&m);
    let mut idle = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut any = false;
        while let Some((id, len)) = b.q.pop_used() {
            let j = b.slot_of(id).ok_or(format!("blk flood: used id {id}"))?;
            b.verify(j, u64::from(j) * 64, len)?;
            b.prepare(j, u64::from(j) * 64);
            b.q.push(j * (b.k + 2));
            done.fetch_add(1, Ordering::Relaxed);
            any = true;
        }
        if any {
            b.q.notify(&m);
            idle = Instant::now();
        } else if idle.elapsed() > DEAD {
            return Err("blk flood: the disk stopped answering".into());
        }
    }
    Ok(())
}

/// Runs `probe` (one timed request per call, µs) for `secs` while [`blk_flood`] floods `b`.
fn under_flood(
    key: &str,
    m: Mmio,
    b: Blk,
    secs: u64,
    mut probe: impl FnMut() -> Result<u64, String>,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let (stop2, done2) = (stop.clone(), done.clone());
    let flood = std::thread::spawn(move || blk_flood(b, m, stop2, done2));
    let t = Instant::now();
    let mut lat = Vec::new();
    let mut err = None;
    while t.elapsed() < Duration::from_secs(secs) && !flood.is_finished() {
        match probe() {
            Ok(us) => lat.push(us),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let flooded = flood
        .join()
        .map_err(|_| "flood thread panicked".to_string())?;
    let n = done.load(Ordering::Relaxed);
    kv(&format!("{key}-flood-requests"), n);
    kv(
        &format!("{key}-flood-per-s"),
        (n as f64 / t.elapsed().as_secs_f64()) as u64,
    );
    summary(key, &mut lat);
    flooded?;
    if let Some(e) = err {
        return Err(e);
    }
    check(n > 0, || "the disk flood never completed a request".into())
}

/// One thread keeps the disk queue full of reads; meanwhile rng requests are timed, and
/// compared with rng alone. (The disk runs on its own thread, `blkN`, rng on the main loop.)
fn fairness(d: &Devices, a: &mut Arena, secs: u64) -> Outcome {
    let mut q = rng_ready(d, a, 16, 0)?;
    let buf = a.page();
    let mut base = rng_latencies(&d.rng, &mut q, &buf, Duration::from_secs(1))?;
    summary("fair-rng-alone", &mut base);
    let b = Blk::new(a, 0, 28, 7);
    init(&d.blk, 0, &[&b.q])?;
    let rng = d.rng;
    under_flood("fair-rng-under-blk-flood", d.blk, b, secs, || {
        let s = Instant::now();
        rng_once(&rng, &mut q, &buf, 64)?;
        Ok(s.elapsed().as_micros() as u64)
    })
}

/// The same disk, two queues (`VIRTIO_BLK_F_MQ`, one event loop: its `blkN` thread): queue 0
/// flooded, single 4 KiB reads on queue 1 timed. Only the per-notification budget
/// (`QUEUE_BUDGET`) lets queue 1 in while queue 0 never runs dry.
fn fairness_mq(d: &Devices, a: &mut Arena, secs: u64) -> Outcome {
    let b = Blk::new(a, 0, 28, 7);
    let mut p = Blk::new(a, 1, 1, 1);
    init(&d.blk, F_BLK_MQ, &[&b.q, &p.q])?;
    let m = d.blk;
    under_flood("fair-blkq1-under-blkq0-flood", d.blk, b, secs, move || {
        let s = Instant::now();
        let sector = 8 * 1024;
        let h = p.prepare(0, sector);
        p.q.push(h);
        p.q.notify(&m);
        let (id, len) =
            p.q.wait_used(DEAD)
                .ok_or("blk queue 1: no answer under the flood")?;
        let us = s.elapsed().as_micros() as u64;
        check(id == 0, || format!("blk queue 1: used id {id}"))?;
        p.verify(0, sector, len)?;
        Ok(us)
    })
}

fn discover() -> Result<Devices, String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|e| e.to_string())?;
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mem")
        .map_err(|e| format!("/dev/mem: {e}"))?;
    let (mut blk, mut rng) = (None, None);
    for w in cmdline.split_whitespace() {
        let Some(spec) = w.strip_prefix("virtio_mmio.device=") else {
            continue;
        };
        let addr = spec
            .split_once('@')
            .and_then(|(_, r)| r.split_once(':'))
            .and_then(|(a, _)| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
            .ok_or_else(|| format!("cannot parse {w}"))?;
        let m = Mmio::map(&mem, addr).map_err(|e| format!("mmap /dev/mem at {addr:#x}: {e}"))?;
        if m.r32(REG_MAGIC) != MAGIC {
            return Err(format!("no virtio magic at {addr:#x}"));
        }
        let id = m.r32(REG_DEVICE_ID);
        println!("hostile-guest: device type {id} at {addr:#x}");
        match id {
            TYPE_BLK if blk.is_none() => blk = Some(m),
            TYPE_RNG => rng = Some(m),
            _ => {}
        }
    }
    let blk = blk.ok_or("no virtio-blk device")?;
    let rng = rng.ok_or("no virtio-rng device")?;
    Ok(Devices {
        blk_sectors: blk.r64(CONFIG),
        blk,
        rng,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let d = match discover() {
        Ok(d) => d,
        Err(e) => {
            println!("HOSTILE-discover=FAIL {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut a = match Arena::new(1024) {
        Ok(a) => a,
        Err(e) => {
            println!("HOSTILE-arena=FAIL {e}");
            return ExitCode::FAILURE;
        }
    };
    let all = args.is_empty() || args.iter().any(|s| s == "all");
    let want = |n: &str| all || args.iter().any(|s| s == n);
    let fair_secs = std::env::var("HOSTILE_FAIR_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    type Scenario<'a> = (&'a str, Box<dyn Fn(&Devices, &mut Arena) -> Outcome + 'a>);
    let scenarios: Vec<Scenario> = vec![
        ("widths", Box::new(widths)),
        ("needs-reset", Box::new(needs_reset)),
        ("reprogram", Box::new(reprogram)),
        ("rng-flood", Box::new(|d, a| rng_flood(d, a, 16))),
        ("reset-inflight", Box::new(|d, a| reset_inflight(d, a, 20))),
        ("fairness", Box::new(move |d, a| fairness(d, a, fair_secs))),
        (
            "fairness-mq",
            Box::new(move |d, a| fairness_mq(d, a, fair_secs)),
        ),
    ];
    let mut ok = true;
    for (name, f) in &scenarios {
        if !want(name) {
            continue;
        }
        let t = Instant::now();
        let r = f(&d, &mut a);
        kv(&format!("{name}-ms"), t.elapsed().as_millis());
        match r {
            Ok(()) => println!("HOSTILE-{name}=PASS"),
            Err(e) => {
                ok = false;
                println!("HOSTILE-{name}=FAIL {e}");
            }
        }
    }
    // Leave the devices reset, as a driver going away would.
    d.blk.w32(REG_STATUS, 0);
    d.rng.w32(REG_STATUS, 0);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
