//! The guest side of a virtio-mmio v2 driver in user space: the register window through
//! `/dev/mem`, ring and buffer pages in locked memory whose guest-physical addresses come from
//! `/proc/self/pagemap`, split virtqueues polled (no interrupts: nothing in this kernel claims
//! the devices' IRQs, and every avail ring says VRING_AVAIL_F_NO_INTERRUPT).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::ptr::{read_volatile, write_volatile};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

pub const MAGIC: u32 = 0x7472_6976;
pub const REG_MAGIC: usize = 0x000;
pub const REG_DEVICE_ID: usize = 0x008;
pub const REG_DEVICE_FEATURES: usize = 0x010;
pub const REG_DEVICE_FEATURES_SEL: usize = 0x014;
pub const REG_DRIVER_FEATURES: usize = 0x020;
pub const REG_DRIVER_FEATURES_SEL: usize = 0x024;
pub const REG_QUEUE_SEL: usize = 0x030;
pub const REG_QUEUE_NUM_MAX: usize = 0x034;
pub const REG_QUEUE_NUM: usize = 0x038;
pub const REG_QUEUE_READY: usize = 0x044;
pub const REG_QUEUE_NOTIFY: usize = 0x050;
pub const REG_INTERRUPT_STATUS: usize = 0x060;
pub const REG_INTERRUPT_ACK: usize = 0x064;
pub const REG_STATUS: usize = 0x070;
pub const REG_QUEUE_DESC_LOW: usize = 0x080;
pub const REG_QUEUE_DESC_HIGH: usize = 0x084;
pub const REG_QUEUE_DRIVER_LOW: usize = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: usize = 0x094;
pub const REG_QUEUE_DEVICE_LOW: usize = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: usize = 0x0a4;
pub const CONFIG: usize = 0x100;

pub const S_ACK: u32 = 1;
pub const S_DRIVER: u32 = 2;
pub const S_DRIVER_OK: u32 = 4;
pub const S_FEATURES_OK: u32 = 8;
pub const S_NEEDS_RESET: u32 = 0x40;

pub const F_INDIRECT: u64 = 1 << 28;
pub const F_VERSION_1: u64 = 1 << 32;

pub const D_NEXT: u16 = 1;
pub const D_WRITE: u16 = 2;
pub const D_INDIRECT: u16 = 4;

pub const PAGE: usize = 4096;

/// One device's 4 KiB register window, mapped from `/dev/mem`.
#[derive(Clone, Copy)]
pub struct Mmio {
    base: *mut u8,
}

// SAFETY: the window is MMIO: every access is a volatile access that KVM turns into an exit;
// threads share it as a driver's threads share a device.
unsafe impl Send for Mmio {}
// SAFETY: as above.
unsafe impl Sync for Mmio {}

impl Mmio {
    pub fn map(mem: &File, phys: u64) -> io::Result<Mmio> {
        // SAFETY: a new shared mapping of 4 KiB of /dev/mem; the kernel checks the range.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                mem.as_raw_fd(),
                phys as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmio { base: p.cast() })
    }

    fn at<T>(&self, off: usize) -> *mut T {
        assert!(
            off + std::mem::size_of::<T>() <= PAGE && off.is_multiple_of(std::mem::size_of::<T>())
        );
        // SAFETY: in bounds of the 4 KiB mapping (checked above).
        unsafe { self.base.add(off).cast() }
    }
    pub fn r32(&self, off: usize) -> u32 {
        // SAFETY: aligned, in the mapping.
        unsafe { read_volatile(self.at::<u32>(off)) }
    }
    pub fn w32(&self, off: usize, v: u32) {
        // SAFETY: aligned, in the mapping.
        unsafe { write_volatile(self.at::<u32>(off), v) }
    }
    pub fn r8(&self, off: usize) -> u8 {
        // SAFETY: in the mapping.
        unsafe { read_volatile(self.at::<u8>(off)) }
    }
    pub fn w8(&self, off: usize, v: u8) {
        // SAFETY: in the mapping.
        unsafe { write_volatile(self.at::<u8>(off), v) }
    }
    pub fn r16(&self, off: usize) -> u16 {
        // SAFETY: aligned, in the mapping.
        unsafe { read_volatile(self.at::<u16>(off)) }
    }
    pub fn w16(&self, off: usize, v: u16) {
        // SAFETY: aligned, in the mapping.
        unsafe { write_volatile(self.at::<u16>(off), v) }
    }
    pub fn r64(&self, off: usize) -> u64 {
        // SAFETY: aligned, in the mapping; one 8-byte access.
        unsafe { read_volatile(self.at::<u64>(off)) }
    }
    pub fn w64(&self, off: usize, v: u64) {
        // SAFETY: aligned, in the mapping; one 8-byte access.
        unsafe { write_volatile(self.at::<u64>(off), v) }
    }
    /// A 4-byte read at a misaligned offset (one `mov`, not split by the compiler).
    pub fn r32_unaligned(&self, off: usize) -> u32 {
        assert!(off + 4 <= PAGE);
        let v: u32;
        // SAFETY: reads 4 bytes inside the mapping; x86 allows misaligned loads.
        unsafe {
            std::arch::asm!("mov {0:e}, dword ptr [{1}]", out(reg) v, in(reg) self.base.add(off),
                options(nostack, preserves_flags));
        }
        v
    }
}

/// A locked guest page and its guest-physical address.
#[derive(Clone, Copy)]
pub struct Page {
    pub virt: *mut u8,
    pub phys: u64,
}

// SAFETY: pages are plain memory owned by the arena, which lives until the process exits.
unsafe impl Send for Page {}

impl Page {
    pub fn w<T: Copy>(&self, off: usize, v: T) {
        assert!(off + std::mem::size_of::<T>() <= PAGE);
        // SAFETY: in bounds of this page; the device may read it concurrently (volatile).
        unsafe { write_volatile(self.virt.add(off).cast::<T>(), v) }
    }
    pub fn r<T: Copy>(&self, off: usize) -> T {
        assert!(off + std::mem::size_of::<T>() <= PAGE);
        // SAFETY: in bounds; the device may write it concurrently (volatile).
        unsafe { read_volatile(self.virt.add(off).cast::<T>()) }
    }
    pub fn fill(&self, byte: u8) {
        // SAFETY: the whole page is ours.
        unsafe { std::ptr::write_bytes(self.virt, byte, PAGE) }
    }
    pub fn bytes(&self) -> Vec<u8> {
        (0..PAGE).map(|i| self.r::<u8>(i)).collect()
    }
}

/// Locked anonymous memory handed out a page at a time.
pub struct Arena {
    pages: Vec<Page>,
    next: usize,
}

impl Arena {
    pub fn new(npages: usize) -> io::Result<Arena> {
        let len = npages * PAGE;
        // SAFETY: a new private anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping just made.
        if unsafe { libc::mlock(p, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let pagemap = File::open("/proc/self/pagemap")?;
        let mut pages = Vec::with_capacity(npages);
        for i in 0..npages {
            // SAFETY: inside the mapping; touching it makes sure it is backed.
            let virt = unsafe { p.cast::<u8>().add(i * PAGE) };
            // SAFETY: as above.
            unsafe { write_volatile(virt, 0) };
            let mut e = [0u8; 8];
            pagemap.read_exact_at(&mut e, (virt as u64 / PAGE as u64) * 8)?;
            let e = u64::from_le_bytes(e);
            let pfn = e & ((1 << 55) - 1);
            if e >> 63 == 0 || pfn == 0 {
                return Err(io::Error::other(format!(
                    "page {i} not present in pagemap ({e:#x}); run as root"
                )));
            }
            pages.push(Page {
                virt,
                phys: pfn * PAGE as u64,
            });
        }
        Ok(Arena { pages, next: 0 })
    }

    pub fn page(&mut self) -> Page {
        let p = *self
            .pages
            .get(self.next)
            .expect("hostile-guest: arena exhausted");
        self.next += 1;
        p.fill(0);
        p
    }
}

/// A split virtqueue with each part in its own page (sizes up to 256).
pub struct Vq {
    pub index: u32,
    pub size: u16,
    pub desc: Page,
    pub avail: Page,
    pub used: Page,
    avail_idx: u16,
    last_used: u16,
}

impl Vq {
    pub fn new(arena: &mut Arena, index: u32, size: u16) -> Vq {
        assert!(size <= 256);
        let avail = arena.page();
        avail.w::<u16>(0, 1); // VRING_AVAIL_F_NO_INTERRUPT
        Vq {
            index,
            size,
            desc: arena.page(),
            avail,
            used: arena.page(),
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Zeroes the rings and the indexes (after a device reset, before reuse).
    pub fn clear(&mut self) {
        self.desc.fill(0);
        self.avail.fill(0);
        self.used.fill(0);
        self.avail.w::<u16>(0, 1);
        self.avail_idx = 0;
        self.last_used = 0;
    }

    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let o = usize::from(i) * 16;
        self.desc.w::<u64>(o, addr);
        self.desc.w::<u32>(o + 8, len);
        self.desc.w::<u16>(o + 12, flags);
        self.desc.w::<u16>(o + 14, next);
    }

    /// Registers the queue with the device (QueueSel .. QueueReady).
    pub fn program(&self, m: &Mmio) {
        m.w32(REG_QUEUE_SEL, self.index);
        m.w32(REG_QUEUE_NUM, u32::from(self.size));
        for (lo, hi, a) in [
            (REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, self.desc.phys),
            (REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, self.avail.phys),
            (REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, self.used.phys),
        ] {
            m.w32(lo, a as u32);
            m.w32(hi, (a >> 32) as u32);
        }
        m.w32(REG_QUEUE_READY, 1);
    }

    /// Makes `head` available (no notification).
    pub fn push(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        self.avail.w::<u16>(4 + 2 * slot, head);
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.avail.w::<u16>(2, self.avail_idx);
        fence(Ordering::SeqCst);
    }

    pub fn notify(&self, m: &Mmio) {
        m.w32(REG_QUEUE_NOTIFY, self.index);
    }

    pub fn used_idx(&self) -> u16 {
        fence(Ordering::SeqCst);
        self.used.r::<u16>(2)
    }

    /// The next used entry `(id, len)`, if the device returned one.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if self.used_idx() == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = 4 + 8 * usize::from(self.last_used % self.size);
        self.last_used = self.last_used.wrapping_add(1);
        Some((self.used.r::<u32>(slot), self.used.r::<u32>(slot + 4)))
    }

    /// Waits (polling) for the next used entry, at most `limit`.
    pub fn wait_used(&mut self, limit: Duration) -> Option<(u32, u32)> {
        let t = Instant::now();
        loop {
            if let Some(u) = self.pop_used() {
                return Some(u);
            }
            if t.elapsed() > limit {
                return None;
            }
            std::hint::spin_loop();
        }
    }
}

/// Resets the device and brings it to DRIVER_OK with `features` (plus VERSION_1) and `queues`.
/// Returns the status read back at the end.
pub fn init(m: &Mmio, features: u64, queues: &[&Vq]) -> Result<u32, String> {
    m.w32(REG_STATUS, 0);
    if m.r32(REG_STATUS) != 0 {
        return Err(format!("status {:#x} after reset", m.r32(REG_STATUS)));
    }
    m.w32(REG_STATUS, S_ACK);
    m.w32(REG_STATUS, S_ACK | S_DRIVER);
    m.w32(REG_DEVICE_FEATURES_SEL, 0);
    let lo = u64::from(m.r32(REG_DEVICE_FEATURES));
    m.w32(REG_DEVICE_FEATURES_SEL, 1);
    let offered = lo | (u64::from(m.r32(REG_DEVICE_FEATURES)) << 32);
    let want = (features | F_VERSION_1) & offered;
    if want & features != features {
        return Err(format!("device offers {offered:#x}, need {features:#x}"));
    }
    m.w32(REG_DRIVER_FEATURES_SEL, 0);
    m.w32(REG_DRIVER_FEATURES, want as u32);
    m.w32(REG_DRIVER_FEATURES_SEL, 1);
    m.w32(REG_DRIVER_FEATURES, (want >> 32) as u32);
    m.w32(REG_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if m.r32(REG_STATUS) & S_FEATURES_OK == 0 {
        return Err("FEATURES_OK refused".into());
    }
    for q in queues {
        m.w32(REG_QUEUE_SEL, q.index);
        let max = m.r32(REG_QUEUE_NUM_MAX);
        if u32::from(q.size) > max {
            return Err(format!("queue {} size {} > max {max}", q.index, q.size));
        }
        q.program(m);
    }
    m.w32(REG_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    Ok(m.r32(REG_STATUS))
}
