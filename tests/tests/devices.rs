//! virtio devices of microvm exercised by a real Linux guest, with and without
//! `--restricted-dma` (every device DMA bounced through the `bounce` pools), through the
//! harness (direct or nested path).
//!
//! The guest scripts are `resources/guest/tests/{blk,blk-exhaust,ext4,rng,net,net-mq}.sh`;
//! they print `KEY=VALUE` markers and `MICROVM-TEST-RESULT=PASS|FAIL`. Data the guest writes
//! comes from `/payload.bin` of the initramfs, whose bytes the host also has
//! (`payload.bin` next to the initramfs), so the host checks the disk image byte for byte.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use microvm_tests::{
    bounce_statistics, kernel_artifacts, Arg, Harness, KernelArtifacts, Outcome, Run, INIT_OK,
};
use serde_json::Value;

const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// `(size, disk offset, payload offset)` in bytes: the table of `blk.sh` (keep in sync).
/// Sizes 512 B .. 1 MiB; offsets 4 KiB aligned and sector-granular but unaligned.
const BLK_CASES: &[(usize, usize, usize)] = &[
    (512, 512, 0),
    (4096, 8192, 4096),
    (4096, 17920, 12345),
    (3584, 44032, 777),
    (65536, 131072, 65536),
    (66560, 262656, 100000),
    (262144, 1048576, 200000),
    (1048576, 2097152, 0),
    (1048064, 4196864, 512),
    (1048576, 6291968, 0),
];
const BLK_IMAGE_SIZE: u64 = 8 << 20;

fn setup() -> (Harness, KernelArtifacts) {
    let h = Harness::detect().unwrap_or_else(|e| panic!("cannot boot guests here: {e:#}"));
    let k = kernel_artifacts().unwrap_or_else(|e| panic!("cannot build the guest: {e:#}"));
    (h, k)
}

/// The bytes of the initramfs' `/payload.bin`.
fn payload(k: &KernelArtifacts) -> Vec<u8> {
    let p = k.initramfs.with_file_name("payload.bin");
    let b = fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    assert_eq!(b.len(), 1 << 20, "{}", p.display());
    b
}

/// A fresh zero-filled (sparse) raw image, removed on drop.
struct Image(PathBuf);

impl Image {
    fn new(name: &str, size: u64) -> Image {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir();
        let p = dir.join(format!(
            "microvm-devices-{name}-{}-{}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let f = fs::File::create(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        f.set_len(size).expect("set_len");
        Image(p)
    }
    fn read(&self) -> Vec<u8> {
        fs::read(&self.0).unwrap_or_else(|e| panic!("{}: {e}", self.0.display()))
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Boot the test initramfs with `microvm.test=TEST`, `disks` as /dev/vda.., plus `more`.
fn boot(
    h: &Harness,
    k: &KernelArtifacts,
    test: &str,
    disks: &[&Path],
    more: &[&str],
    setup_lines: &[String],
) -> Outcome {
    boot_disks(h, k, test, disks, "", more, setup_lines)
}

/// [`boot`] with `disk_suffix` after each `--disk PATH` (e.g. `",engine=sync"`).
fn boot_disks(
    h: &Harness,
    k: &KernelArtifacts,
    test: &str,
    disks: &[&Path],
    disk_suffix: &str,
    more: &[&str],
    setup_lines: &[String],
) -> Outcome {
    let mut args = k.boot_args(format!("{BASE_CMDLINE} microvm.test={test}"));
    for i in 0..disks.len() {
        args.push(Arg::s("--disk"));
        args.push(Arg::DiskFile {
            index: i,
            suffix: disk_suffix.to_string(),
        });
    }
    args.extend(more.iter().map(|s| Arg::s(*s)));
    let mut run = Run::microvm(args);
    run.disks = disks.iter().map(|d| d.to_path_buf()).collect();
    run.timeout = Duration::from_secs(180);
    let o = h
        .run_with_setup(&run, setup_lines)
        .unwrap_or_else(|e| panic!("harness run failed: {e:#}"));
    eprintln!(
        "{test} {more:?}: program {:?}, outer total {:?}",
        o.elapsed,
        o.outer.as_ref().map(|x| x.total)
    );
    o
}

fn assert_passed(o: &Outcome) {
    assert!(
        o.stdout.contains(INIT_OK),
        "guest never reached init\n{}",
        o.describe()
    );
    assert!(
        o.stdout.contains("MICROVM-TEST-RESULT=PASS"),
        "guest test did not pass\n{}",
        o.describe()
    );
    assert_eq!(o.status, Some(0), "microvm must exit 0\n{}", o.describe());
    assert!(!o.stderr.contains("panicked"), "{}", o.describe());
}

fn stats(o: &Outcome) -> Value {
    bounce_statistics(&o.stderr)
        .unwrap_or_else(|| panic!("no bounce statistics line on stderr\n{}", o.describe()))
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("statistics field {key} missing: {v}"))
}

fn total_failures(v: &Value) -> u64 {
    v["failures"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or_else(|| panic!("statistics have no failures object: {v}"))
}

/// The whole image equals zeros with every BLK_CASES slice of the payload in place.
fn check_blk_image(img: &Image, payload: &[u8]) {
    let got = img.read();
    assert_eq!(got.len() as u64, BLK_IMAGE_SIZE, "image size changed");
    let mut want = vec![0u8; got.len()];
    for &(size, off, src) in BLK_CASES {
        want[off..off + size].copy_from_slice(&payload[src..src + size]);
    }
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        let case = BLK_CASES
            .iter()
            .position(|&(size, off, _)| (off..off + size).contains(&i));
        let differing = (0..got.len()).filter(|&j| got[j] != want[j]).count();
        panic!(
            "host image differs from the expected pattern at byte {i} (case {case:?}): \
             got {:#04x}, want {:#04x}; {differing} bytes differ",
            got[i], want[i]
        );
    }
}

/// blk.sh: concurrent O_DIRECT writes of 10 slices, read back in the guest, then checked
/// in the host image. Returns the outcome for more checks.
fn blk_integrity(more: &[&str]) -> Outcome {
    blk_integrity_on(more, "")
}

/// [`blk_integrity`] with `disk_suffix` after the `--disk` path.
fn blk_integrity_on(more: &[&str], disk_suffix: &str) -> Outcome {
    let (h, k) = setup();
    let payload = payload(&k);
    let img = Image::new("blk", BLK_IMAGE_SIZE);
    let mut args = vec!["--cpus", "2"];
    args.extend_from_slice(more);
    let o = boot_disks(&h, &k, "blk", &[&img.0], disk_suffix, &args, &[]);
    assert_passed(&o);
    let cases = format!("{}/{}", BLK_CASES.len(), BLK_CASES.len());
    assert_eq!(o.value("blk-cases-ok"), Some(cases), "{}", o.describe());
    check_blk_image(&img, &payload);
    o
}

/// Bytes the blk test moves each way (writes: guest->device, reads: device->guest).
fn blk_bytes() -> u64 {
    BLK_CASES.iter().map(|c| c.0 as u64).sum()
}

#[test]
fn blk_data_integrity_without_restricted_dma() {
    let o = blk_integrity(&[]);
    // io_uring by default, where the (outer machine's) kernel has it.
    assert!(
        o.stderr.contains(": uring engine"),
        "expected the io_uring engine by default\n{}",
        o.describe()
    );
    assert!(
        bounce_statistics(&o.stderr).is_none(),
        "no bouncing expected without --restricted-dma\n{}",
        o.describe()
    );
}

/// The sync engine, asked for on the command line, with bounce buffers.
#[test]
fn blk_data_integrity_with_the_sync_engine() {
    let o = blk_integrity_on(&["--restricted-dma=4M"], ",engine=sync");
    assert!(o.stderr.contains(": sync engine"), "{}", o.describe());
    let s = stats(&o);
    assert_eq!(total_failures(&s), 0, "{s}");
}

#[test]
fn blk_data_integrity_with_restricted_dma() {
    let o = blk_integrity(&["--restricted-dma=4M"]);
    let s = stats(&o);
    eprintln!("statistics: {s}");
    assert_eq!(total_failures(&s), 0, "{s}");
    assert!(n(&s, "maps") > 0 && n(&s, "maps") == n(&s, "unmaps"), "{s}");
    // Every byte written went guest->pool, every byte read came pool->guest (and the
    // Linux-style copy-in on map of reads goes to the pool too).
    assert!(n(&s, "bytes_to_pool") >= blk_bytes(), "{s}");
    assert!(n(&s, "bytes_to_guest") >= blk_bytes(), "{s}");
}

#[test]
fn blk_data_integrity_with_guest_swiotlb() {
    let o = blk_integrity(&["--restricted-dma=4M", "--guest-swiotlb"]);
    let s = stats(&o);
    assert_eq!(total_failures(&s), 0, "{s}");
    assert!(n(&s, "bytes_to_pool") >= blk_bytes(), "{s}");
    assert!(
        o.stdout.contains("swiotlb=force"),
        "guest command line lacks swiotlb=force\n{}",
        o.describe()
    );
}

/// A 256 KiB pool with growth at 50 %: the blk test's 1 MiB requests make the pool set
/// grow (background extensions or transient pools) without a single failed mapping.
#[test]
fn bounce_pool_grows_under_load_without_failures() {
    let o = blk_integrity(&[
        "--restricted-dma=256K",
        "--bounce",
        "dynamic=on,growth=proposed,threshold=50,chunk=1M",
    ]);
    let s = stats(&o);
    eprintln!("statistics: {s}");
    assert!(
        n(&s, "extensions") > 0 || n(&s, "transient_created") > 0,
        "the pool never grew: {s}"
    );
    assert_eq!(total_failures(&s), 0, "{s}");
    assert!(
        n(&s, "pools_created") > 1 || n(&s, "transient_created") > 0,
        "{s}"
    );
}

/// The pool model's slower paths, under the default seccomp filters like every test here:
/// conversions injected as real sleeps (on the worker, and with `atomic-pool=off` on the I/O
/// thread, which converts transient pools per mapping), the worker's timed
/// waits for idle pools to release, DMA trace records written by the event loop, and
/// virtio-rng beside the disk.
#[test]
fn bounce_pool_with_injected_latency_shrink_and_trace() {
    let trace = std::env::temp_dir().join(format!("microvm-trace-{}.jsonl", std::process::id()));
    let trace_arg = trace.to_string_lossy().into_owned();
    let o = blk_integrity(&[
        "--rng",
        "--restricted-dma=256K",
        "--bounce",
        "dynamic=on,growth=proposed,threshold=50,chunk=1M,shrink=50ms,convert=snp,convert-mode=inject,atomic-pool=off",
        "--dma-trace",
        &trace_arg,
    ]);
    let _ = fs::remove_file(&trace);
    let s = stats(&o);
    eprintln!("statistics: {s}");
    assert_eq!(total_failures(&s), 0, "{s}");
    assert!(
        n(&s, "extensions") > 0 || n(&s, "transient_created") > 0,
        "the pool never grew: {s}"
    );
    assert!(n(&s["conversions"], "injected_ns") > 0, "{s}");
    assert!(!o.stderr.contains("DMA trace"), "{}", o.describe());
}

/// A 128 KiB pool that cannot grow, with 32 KiB segments (`segment=16`): data segments
/// bigger than the pool allows fail in the guest (EIO), microvm survives, the failures are
/// counted, and the earlier fsync'ed write is intact. (Every device maps one descriptor at
/// a time on one thread and a pool is at least one segment, the longest mapping, so the
/// failure shows as `too_large`; `no_space` would need two mappings in flight.)
#[test]
fn bounce_pool_exhaustion_fails_io_not_the_vmm() {
    let (h, k) = setup();
    let payload = payload(&k);
    let img = Image::new("exhaust", 8 << 20);
    let o = boot(
        &h,
        &k,
        "blk-exhaust",
        &[&img.0],
        &[
            "--restricted-dma=128K",
            "--bounce",
            "dynamic=off,transient=off,segment=16",
        ],
        &[],
    );
    assert_passed(&o);
    assert_eq!(
        o.value("exhaust-small-write").as_deref(),
        Some("ok"),
        "{}",
        o.describe()
    );
    assert_eq!(
        o.value("exhaust-small-readback").as_deref(),
        Some("ok"),
        "{}",
        o.describe()
    );
    let big: u32 = o
        .value("exhaust-big-failures")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        big >= 1,
        "no write bigger than the pool failed in the guest\n{}",
        o.describe()
    );
    let s = stats(&o);
    eprintln!("statistics: {s}");
    let f = &s["failures"];
    let exhausted = f["no_space"].as_u64().unwrap_or(0) + f["too_large"].as_u64().unwrap_or(0);
    assert!(
        exhausted > 0,
        "no mapping failed for lack of pool room: {s}"
    );
    assert_eq!(n(&s, "extensions"), 0, "{s}");
    assert_eq!(n(&s, "transient_created"), 0, "{s}");
    let got = img.read();
    assert_eq!(
        &got[..4096],
        &payload[..4096],
        "fsync'ed 4 KiB write not intact in the image"
    );
}

/// ext4 on a bounced virtio-blk: mkfs (which discards the whole disk: FALLOCATEs on the
/// io_uring engine's ring), write, sync, remount read-only, checksums.
#[test]
fn ext4_roundtrip_with_restricted_dma() {
    ext4_roundtrip("");
}

/// The same with io_uring's SQPOLL thread (`sqpoll=on`), under the default seccomp filters:
/// the ring and its kernel thread are set up before any filter, and the disk thread's
/// `io_uring_enter` (to wake the thread) is allowed.
#[test]
fn ext4_roundtrip_with_sqpoll() {
    let o = ext4_roundtrip(",engine=uring,sqpoll=on");
    assert!(o.stderr.contains("SQPOLL"), "{}", o.describe());
}

fn ext4_roundtrip(disk_suffix: &str) -> Outcome {
    let (h, k) = setup();
    let img = Image::new("ext4", 64 << 20);
    let o = boot_disks(
        &h,
        &k,
        "ext4",
        &[&img.0],
        disk_suffix,
        &["--restricted-dma=4M"],
        &[],
    );
    assert_passed(&o);
    assert_eq!(
        o.value("ext4-mkfs").as_deref(),
        Some("ok"),
        "{}",
        o.describe()
    );
    let ro = o.value("ext4-ro-mount").unwrap_or_default();
    assert_eq!(ro, "/dev/vda ext4 ro", "{}", o.describe());
    assert_eq!(
        o.value("ext4-payload-sha256"),
        Some(k.payload_sha256.clone()),
        "{}",
        o.describe()
    );
    let odd = o.value("ext4-odd-sha256");
    assert!(odd.is_some(), "{}", o.describe());
    assert_eq!(odd, o.value("ext4-odd-expected"), "{}", o.describe());
    // The host image holds an ext4 superblock (magic 0xEF53 at byte 1080).
    let got = img.read();
    assert_eq!(
        &got[1080..1082],
        &[0x53, 0xef],
        "no ext4 superblock in the host image"
    );
    let s = stats(&o);
    assert_eq!(total_failures(&s), 0, "{s}");
    assert!(n(&s, "bytes_to_pool") >= 1 << 20, "{s}");
    o
}

/// virtio-rng through the bounce pools: /dev/hwrng is virtio and gives varied bytes.
#[test]
fn virtio_rng_feeds_dev_hwrng() {
    let (h, k) = setup();
    let o = boot(&h, &k, "rng", &[], &["--rng", "--restricted-dma=4M"], &[]);
    assert_passed(&o);
    let cur = o.value("rng-current").unwrap_or_default();
    assert!(
        cur.starts_with("virtio_rng"),
        "rng_current={cur}\n{}",
        o.describe()
    );
    assert_eq!(
        o.value("rng-bytes").as_deref(),
        Some("65536"),
        "{}",
        o.describe()
    );
    let distinct: u32 = o
        .value("rng-distinct-bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        distinct >= 250,
        "{distinct} distinct byte values\n{}",
        o.describe()
    );
    let gz: u32 = o
        .value("rng-gzip-bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        gz > 65000,
        "entropy compresses to {gz} bytes\n{}",
        o.describe()
    );
    let s = stats(&o);
    assert_eq!(total_failures(&s), 0, "{s}");
    assert!(n(&s, "bytes_to_guest") >= 2 * 65536, "{s}");
}

/// sha256 (hex) of `data` by the host's `sha256sum`.
fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write");
    let out = c.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Harness side of the tap (host or outer machine): tap `mvtap0` at 10.0.2.1/24, an httpd
/// serving 4 MiB of random bytes (`/down.bin`, sha256 printed as `host-down-sha256=`) and
/// `/cgi-bin/up` (size and sha256 of what the nc listener on port 5002 received).
fn net_setup() -> Vec<String> {
    [
        "busybox ip link del mvtap0 2>/dev/null; true",
        "busybox tunctl -t mvtap0 >/dev/null",
        "busybox ip addr add 10.0.2.1/24 dev mvtap0",
        "busybox ip link set mvtap0 up",
        "rm -rf /tmp/mvnet /tmp/mvnet-up.bin && mkdir -p /tmp/mvnet/cgi-bin",
        "head -c 4194304 /dev/urandom > /tmp/mvnet/down.bin",
        "echo \"host-down-sha256=$(sha256sum /tmp/mvnet/down.bin | cut -d' ' -f1)\"",
        "cat > /tmp/mvnet/cgi-bin/up <<'CGI'
#!/bin/sh
echo 'Content-type: text/plain'
echo
# Wait (up to 10 s) until the listener has all 4 MiB.
i=0
while [ \"$(stat -c %s /tmp/mvnet-up.bin)\" -lt 4194304 ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
echo \"host-up-bytes=$(stat -c %s /tmp/mvnet-up.bin)\"
echo \"host-up-sha256=$(sha256sum < /tmp/mvnet-up.bin | cut -d' ' -f1)\"
CGI",
        "chmod +x /tmp/mvnet/cgi-bin/up",
        "busybox httpd -f -p 10.0.2.1:8080 -h /tmp/mvnet &",
        "(sleep 600 | busybox nc -l -p 5002 > /tmp/mvnet-up.bin) &",
        "sleep 0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// virtio-net with --restricted-dma: ping and 4 MiB each way, checksummed where received, with
/// the driver having negotiated VIRTIO_NET_F_MRG_RXBUF (received frames spread over several
/// buffers) and TX going from the mapped buffers to the tap by `writev`.
#[test]
fn virtio_net_ping_and_bulk_transfer_with_restricted_dma() {
    let (h, k) = setup();
    let payload = payload(&k);
    let o = boot(
        &h,
        &k,
        "net",
        &[],
        &["--net", "tap=mvtap0", "--restricted-dma=4M"],
        &net_setup(),
    );
    assert_passed(&o);
    eprintln!("setup output:\n{}", o.setup_output);
    let received: u32 = o
        .value("net-ping-received")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(received >= 1, "no ping reply\n{}", o.describe());
    assert_eq!(
        o.value("net-mrg-rxbuf").as_deref(),
        Some("1"),
        "the guest did not negotiate MRG_RXBUF\n{}",
        o.describe()
    );
    // One queue pair (no queues=): neither MQ (bit 22) nor CTRL_VQ (17) is offered.
    let features = o.value("net-features").unwrap_or_default();
    assert_eq!(
        (features.get(17..18), features.get(22..23)),
        (Some("0"), Some("0")),
        "features {features:?}\n{}",
        o.describe()
    );
    // Host -> guest: the guest's checksum of what it received.
    let host_down = Some(host_down_sha256(&o));
    assert_eq!(
        o.value("net-down-bytes").as_deref(),
        Some("4194304"),
        "{}",
        o.describe()
    );
    assert_eq!(o.value("net-down-sha256"), host_down, "{}", o.describe());
    // Guest -> host: the host side's checksum of what it received.
    let up: Vec<u8> = payload.iter().copied().cycle().take(4 << 20).collect();
    assert_eq!(
        o.value("net-host-up-bytes").as_deref(),
        Some("4194304"),
        "{}",
        o.describe()
    );
    assert_eq!(
        o.value("net-host-up-sha256"),
        Some(sha256_hex(&up)),
        "{}",
        o.describe()
    );
    let s = stats(&o);
    eprintln!("statistics: {s}");
    assert_eq!(total_failures(&s), 0, "{s}");
    assert!(n(&s, "bytes_to_guest") >= 4 << 20, "{s}");
    assert!(n(&s, "bytes_to_pool") >= 4 << 20, "{s}");
}

/// The sha256 of the 4 MiB the harness serves, as its setup printed it (`host-down-sha256=`).
fn host_down_sha256(o: &Outcome) -> String {
    o.setup_output
        .lines()
        .find_map(|l| l.strip_prefix("host-down-sha256="))
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!(
                "no host-down-sha256 in the setup output: {}",
                o.setup_output
            )
        })
}

/// Harness side of a multi-queue tap `mvtap1` at 10.0.3.1/24 (iproute2's `ip`, carried: busybox
/// `tunctl` cannot make one) with an httpd serving 4 MiB of random bytes (`/down.bin`).
fn net_mq_setup() -> Vec<String> {
    [
        "/usr/sbin/ip link del mvtap1 2>/dev/null; true",
        "/usr/sbin/ip tuntap add mvtap1 mode tap multi_queue",
        "/usr/sbin/ip addr add 10.0.3.1/24 dev mvtap1",
        "/usr/sbin/ip link set mvtap1 up",
        "rm -rf /tmp/mvnetmq && mkdir -p /tmp/mvnetmq",
        "head -c 4194304 /dev/urandom > /tmp/mvnetmq/down.bin",
        "echo \"host-down-sha256=$(sha256sum /tmp/mvnetmq/down.bin | cut -d' ' -f1)\"",
        "busybox httpd -f -p 10.0.3.1:8080 -h /tmp/mvnetmq &",
        "sleep 0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Boots `--cpus CPUS --net tap=mvtap1,queues=2` (microvm in a shell with `--metrics`, whose
/// final line is read) running `net-mq.sh`; checks what holds whatever the CPUs (MQ and
/// CTRL_VQ negotiated, ping and a checksummed 4 MiB download from each CPU, no device error,
/// a control command answered) and returns the outcome and the net device's metrics.
fn net_mq(cpus: u8, more: &str) -> (Outcome, Value) {
    const BEGIN: &str = "@@METRICS-BEGIN";
    const END: &str = "@@METRICS-END";
    let (h, k) = setup();
    let microvm = microvm_tests::microvm_binary().expect("microvm binary");
    let ip = PathBuf::from("/usr/sbin/ip");
    assert!(
        ip.exists(),
        "iproute2's ip is needed to create a multi-queue tap"
    );
    let out = format!("/tmp/microvm-netmq-{}.jsonl", std::process::id());
    let q = microvm_tests::sh_quote;
    let script = format!(
        "rm -f {out}; {} --kernel {} --initrd {} --cpus {cpus} --memory 256 \
         --net tap=mvtap1,queues=2 {more} --metrics {out},interval=10s --cmdline {} 2>&1; \
         echo \"status=$?\"; echo {BEGIN}; tail -n 1 {out}; echo {END}; rm -f {out}",
        q(&microvm.to_string_lossy()),
        q(&k.bzimage.to_string_lossy()),
        q(&k.initramfs.to_string_lossy()),
        q(&format!("{BASE_CMDLINE} microvm.test=net-mq")),
    );
    let run = Run {
        files_to_carry: vec![microvm, k.bzimage.clone(), k.initramfs.clone(), ip],
        timeout: Duration::from_secs(240),
        ..Run::shell(script, vec![])
    };
    let o = h
        .run_with_setup(&run, &net_mq_setup())
        .unwrap_or_else(|e| panic!("harness run failed: {e:#}"));
    eprintln!(
        "net-mq --cpus {cpus} {more}: program {:?}, outer total {:?}",
        o.elapsed,
        o.outer.as_ref().map(|x| x.total)
    );
    let text = o.stdout.replace('\r', "");
    assert!(text.contains("status=0"), "{}", o.describe());
    assert!(
        text.contains("MICROVM-TEST-RESULT=PASS"),
        "{}",
        o.describe()
    );
    assert!(!text.contains("panicked"), "{}", o.describe());
    let cpus_s = cpus.to_string();
    for (key, want) in [
        ("net-ctrl-vq", "1"),
        ("net-mq", "1"),
        ("net-cpus", cpus_s.as_str()),
    ] {
        assert_eq!(
            o.value(key).as_deref(),
            Some(want),
            "{key}\n{}",
            o.describe()
        );
    }
    let host_down = Some(host_down_sha256(&o));
    for c in 0..cpus {
        let received: u32 = o
            .value(&format!("net-ping-cpu{c}-received"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            received >= 1,
            "no ping reply from CPU {c}\n{}",
            o.describe()
        );
        if let Some(short) = o.value(&format!("net-ping-cpu{c}-short")) {
            // Seen once in CI; the guest's diagnostics follow that line in its output.
            eprintln!(
                "warning: CPU {c}'s ping had {received} of 10 replies in 30 s ({short}):\n{}",
                o.stdout
            );
        }
        assert_eq!(
            o.value(&format!("net-down-cpu{c}-bytes")).as_deref(),
            Some("4194304"),
            "{}",
            o.describe()
        );
        assert_eq!(
            o.value(&format!("net-down-cpu{c}-sha256")),
            host_down,
            "{}",
            o.describe()
        );
    }
    let line: Value = text
        .split_once(BEGIN)
        .and_then(|(_, r)| r.split_once(END))
        .and_then(|(b, _)| serde_json::from_str(b.trim()).ok())
        .unwrap_or_else(|| panic!("no final metrics line\n{}", o.describe()));
    let dev = line["devices"][0].clone();
    assert_eq!(dev["kind"], "net", "{line}");
    let queues = dev["queues"].as_array().expect("per-queue counters");
    assert_eq!(queues.len(), 5, "RX0 TX0 RX1 TX1 control: {dev}");
    let chains: Vec<u64> = queues
        .iter()
        .map(|q| q["chains"].as_u64().unwrap_or(0))
        .collect();
    eprintln!(
        "--cpus {cpus}: chains per queue rx0 {} tx0 {} rx1 {} tx1 {} ctrl {}; net: {dev}",
        chains[0], chains[1], chains[2], chains[3], chains[4]
    );
    assert!(chains[4] >= 1, "no control command: {dev}");
    assert!(chains[1] > 0, "TX queue 0 carried nothing: {dev}");
    assert_eq!(dev["total"]["errors"].as_u64(), Some(0), "{dev}");
    (o, dev)
}

fn chains(dev: &Value, queue: usize) -> u64 {
    dev["queues"][queue]["chains"].as_u64().unwrap_or(0)
}

/// virtio-net with two queue pairs on a multi-queue tap and two vCPUs, bounced through
/// restricted-DMA pools: the guest sets two pairs (Linux's VQ_PAIRS_SET at probe: min(CPUs,
/// max_virtqueue_pairs)) and both TX queues carry frames (virtio_net's XPS: CPU i sends on TX
/// queue i); both RX queues are reported; no map failed and every bounce slot was released.
#[test]
fn virtio_net_multiqueue_two_pairs_carry_traffic() {
    let (o, dev) = net_mq(2, "--restricted-dma=4M");
    let s = bounce_statistics(&o.stdout)
        .unwrap_or_else(|| panic!("no bounce statistics line\n{}", o.describe()));
    eprintln!("statistics: {s}");
    assert_eq!(total_failures(&s), 0, "{s}");
    assert_eq!(n(&s, "slots_used"), 0, "{s}");
    assert_eq!(n(&s, "maps"), n(&s, "unmaps"), "{s}");
    assert!(n(&s, "bytes_to_guest") >= 8 << 20, "{s}");
    for (key, want) in [("net-tx-queues", "2"), ("net-rx-queues", "2")] {
        assert_eq!(
            o.value(key).as_deref(),
            Some(want),
            "{key}\n{}",
            o.describe()
        );
    }
    assert!(
        o.stdout.contains("virtio-net: 2 of 2 queue pairs in use"),
        "no VQ_PAIRS_SET 2 logged\n{}",
        o.describe()
    );
    assert!(chains(&dev, 3) > 0, "TX queue 1 carried nothing: {dev}");
    assert!(
        chains(&dev, 0) + chains(&dev, 2) > 0,
        "nothing received: {dev}"
    );
}

/// The same device with one vCPU: Linux keeps one pair, so pair 1 carries nothing, and every
/// received frame reaches pair 0 (tap queue 1 is detached: a flow the tap steered to it would
/// be lost and a download would stall).
#[test]
fn virtio_net_multiqueue_one_cpu_uses_one_pair() {
    let (o, dev) = net_mq(1, "");
    for (key, want) in [("net-tx-queues", "1"), ("net-rx-queues", "1")] {
        assert_eq!(
            o.value(key).as_deref(),
            Some(want),
            "{key}\n{}",
            o.describe()
        );
    }
    assert_eq!(
        (chains(&dev, 2), chains(&dev, 3)),
        (0, 0),
        "pair 1 used: {dev}"
    );
    assert!(chains(&dev, 0) > 0, "nothing received: {dev}");
}
