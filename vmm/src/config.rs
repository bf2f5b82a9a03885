//! The VM's configuration: from the command line, a JSON file, or both (flags win).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use bounce::SwiotlbConfig;
use clap::Parser;
use devices::rate_limiter::{BucketConfig, LimiterConfig};
use serde::{Deserialize, Serialize};

use crate::metrics::MetricsConfig;
use crate::seccomp::{SeccompMode, ThreadKind};

pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Linux's default swiotlb size (kernel/dma/swiotlb.c, IO_TLB_DEFAULT_SIZE).
pub const DEFAULT_RESTRICTED_DMA: &str = "64M";
pub const MAX_CPUS: u8 = 254;

/// Boots a Linux guest on KVM; virtio devices may reach guest memory only through a model of
/// restricted-DMA (swiotlb) bounce pools.
#[derive(Parser, Debug, Default)]
#[command(name = "microvm", version, about)]
pub struct Cli {
    /// Guest kernel: a bzImage, or an ELF vmlinux with a PVH entry point.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio, optionally compressed).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (replaces the default "console=ttyS0 reboot=k panic=1").
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,
    /// Guest memory in MiB [default: 256].
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u64>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    pub cpus: Option<u8>,
    /// A virtio-blk disk backed by a raw image file, optionally rate-limited (bw= bytes/s,
    /// bw-burst=, iops=, iops-burst=; K/M/G suffixes); repeatable.
    #[arg(long, value_name = "PATH[,readonly][,bw=B/s][,iops=N]...")]
    pub disk: Vec<String>,
    /// A virtio-net device on an existing tap interface, optionally with N queue pairs
    /// (queues=N: a multi-queue tap, `ip tuntap add NAME mode tap multi_queue`) and
    /// rate-limited in each direction (bw= bytes/s, bw-burst=, pps= frames/s, pps-burst=);
    /// repeatable.
    #[arg(long, value_name = "tap=NAME[,mac=MAC][,queues=N][,bw=B/s][,pps=N]...")]
    pub net: Vec<String>,
    /// A virtio-rng device fed from the host's getrandom.
    #[arg(long)]
    pub rng: bool,
    /// Bounce all device DMA through restricted-DMA pools of SIZE (K/M/G suffixes) [default
    /// size: 64M].
    #[arg(long, value_name = "SIZE", num_args = 0..=1, require_equals = true,
          default_missing_value = DEFAULT_RESTRICTED_DMA)]
    pub restricted_dma: Option<String>,
    /// Restricted-DMA pool model knobs as key=value,... (slot, segment, areas, dynamic,
    /// growth, threshold, chunk, exhaustion, order, shrink, cap, lookup, convert, convert-mode,
    /// ...; see bounce/README.md). Needs --restricted-dma.
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub bounce: Option<String>,
    /// Also make the guest bounce: offer VIRTIO_F_ACCESS_PLATFORM and add swiotlb=force to the
    /// kernel command line.
    #[arg(long)]
    pub guest_swiotlb: bool,
    /// Record every DMA map/unmap/sync to PATH (JSON lines; replay with bounce-replay).
    #[arg(long, value_name = "PATH")]
    pub dma_trace: Option<PathBuf>,
    /// Append a JSON line of counters (bounce pools, devices, vCPU exits, RSS) to PATH every
    /// DURATION (default 1s: `250ms`, `1s`, `2m`) and when the VM ends.
    #[arg(long, value_name = "PATH[,interval=DURATION]")]
    pub metrics: Option<String>,
    /// Serve the same counters as Prometheus text on a Unix socket at PATH (one scrape per
    /// connection).
    #[arg(long, value_name = "PATH")]
    pub metrics_socket: Option<PathBuf>,
    /// Seccomp filters on every thread: trap (a forbidden system call ends microvm with a
    /// message and status 148), kill (the kernel kills it, no message), log (allowed, logged by
    /// the kernel's audit log), off [default: trap].
    #[arg(long, value_enum, value_name = "MODE")]
    pub seccomp: Option<SeccompMode>,
    /// Do not check at start whether /dev/kvm runs guest kernel code at hardware speed (a
    /// tiny timed guest; microvm warns when it does not).
    #[arg(long)]
    pub no_kvm_probe: bool,
    /// Test only: the thread of this kind makes a forbidden system call right after installing
    /// its filter.
    #[arg(long, value_enum, hide = true)]
    pub seccomp_selftest: Option<ThreadKind>,
    /// Read the configuration from a JSON file (flags given as well override it).
    #[arg(long, value_name = "FILE.json")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    /// `{"bytes": {"rate": B/s, "burst": B, "one_time_burst": B}, "ops": {...}}`.
    #[serde(default)]
    pub rate_limit: LimiterConfig,
    /// The I/O engine; `None`: io_uring where the kernel has it, else sync.
    #[serde(default)]
    pub engine: Option<DiskEngine>,
    /// io_uring with SQPOLL, a kernel thread that polls the ring for this idle time (ms) before
    /// sleeping: it spends a host core while the disk is busy (`--disk ...,sqpoll=on|off|MS`).
    #[serde(default)]
    pub sqpoll_idle_ms: Option<u32>,
    /// Where the io_uring engine does writes (`--disk ...,writes=inline|ring`); `None`: inline.
    #[serde(default)]
    pub writes: Option<UringWrites>,
}

/// `--disk PATH,writes=...` / `"writes"` in the JSON config: where the io_uring engine does
/// writes. Reads, flushes, discards and write-zeroes always go through the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UringWrites {
    /// `pwritev` on the device thread (the default): a buffered write to a file system
    /// without asynchronous buffered writes (ext4) would be handed to an io-wq worker, which
    /// costs more than the write (docs/results/README.md).
    Inline,
    /// Through the ring, in flight with the rest (their bounce buffers held until completion).
    Ring,
}

/// `sqpoll=on`: the SQPOLL thread's idle time before it sleeps (ms).
pub const DEFAULT_SQPOLL_IDLE_MS: u32 = 10;

/// `--disk PATH,engine=...` / `"engine"` in the JSON config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskEngine {
    Uring,
    Sync,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub tap: String,
    #[serde(default)]
    pub mac: Option<String>,
    /// As for disks (`ops` are frames); each direction gets its own buckets, shared by the
    /// queue pairs.
    #[serde(default)]
    pub rate_limit: LimiterConfig,
    /// Queue pairs (1 to 256): more than one opens the tap that many times with
    /// `IFF_MULTI_QUEUE` and offers the guest VIRTIO_NET_F_MQ.
    #[serde(default = "default_queues")]
    pub queues: u16,
}

fn default_queues() -> u16 {
    1
}

/// The most queue pairs of one net device (the kernel's `MAX_TAP_QUEUES`).
pub const MAX_NET_QUEUES: u16 = 256;

fn check_queues(what: &str, queues: u16) -> Result<()> {
    if queues == 0 || queues > MAX_NET_QUEUES {
        bail!("{what}: queues={queues} is not between 1 and {MAX_NET_QUEUES}");
    }
    Ok(())
}

/// The resolved configuration. Also the JSON file's schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    #[serde(default = "default_cpus")]
    pub cpus: u8,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    #[serde(default)]
    pub rng: bool,
    /// The bounce pool model; `None`: devices DMA directly (no bouncing).
    #[serde(default)]
    pub restricted_dma: Option<SwiotlbConfig>,
    #[serde(default)]
    pub guest_swiotlb: bool,
    #[serde(default)]
    pub dma_trace: Option<PathBuf>,
    /// `--metrics`: periodic JSON lines.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// `--metrics-socket`: Prometheus text on a Unix socket.
    #[serde(default)]
    pub metrics_socket: Option<PathBuf>,
    #[serde(default)]
    pub seccomp: SeccompMode,
    /// Probe /dev/kvm's speed at start (`--no-kvm-probe` turns it off).
    #[serde(default = "default_true")]
    pub kvm_probe: bool,
    /// `--seccomp-selftest` (command line only).
    #[serde(skip)]
    pub seccomp_selftest: Option<ThreadKind>,
}

fn default_true() -> bool {
    true
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.into()
}
fn default_memory() -> u64 {
    DEFAULT_MEMORY_MIB
}
fn default_cpus() -> u8 {
    1
}

/// Parses sizes like `4096`, `64K`, `64M`, `1G` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                _ => bail!("size {s:?} has an unknown suffix (use K, M or G)"),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("size {s:?} is not a number with an optional K/M/G suffix"))?;
    n.checked_mul(1 << shift)
        .with_context(|| format!("size {s:?} is too large"))
}

/// Rate limit options of `--disk` and `--net`: `bw=` bytes per second and `bw-burst=` bytes
/// (K/M/G), `ops=` (`iops=` or `pps=`) per second and `ops-burst=`. Returns `false` for a key
/// that is not one of them.
fn parse_limit(limit: &mut LimiterConfig, ops_name: &str, key: &str, v: &str) -> Result<bool> {
    let bucket = |b: &mut Option<BucketConfig>| *b.get_or_insert(BucketConfig::per_second(0));
    let (slot, burst) = match key {
        "bw" => (&mut limit.bytes, false),
        "bw-burst" => (&mut limit.bytes, true),
        k if k == ops_name => (&mut limit.ops, false),
        k if k.strip_prefix(ops_name) == Some("-burst") => (&mut limit.ops, true),
        _ => return Ok(false),
    };
    let mut b = bucket(slot);
    let n = parse_size(v).with_context(|| format!("{key}={v}"))?;
    if burst {
        b.burst = n;
    } else {
        b.rate = n;
    }
    *slot = Some(b);
    Ok(true)
}

fn check_limit(what: &str, limit: &LimiterConfig) -> Result<()> {
    for (name, b) in [("bw", limit.bytes), ("ops", limit.ops)] {
        if b.is_some_and(|b| b.rate == 0) {
            bail!(
                "{what}: a rate limit's {name} rate must be above 0 (a burst alone limits nothing)"
            );
        }
    }
    Ok(())
}

fn parse_disk(s: &str) -> Result<DiskConfig> {
    let mut parts = s.split(',');
    let path = parts.next().filter(|p| !p.is_empty());
    let Some(path) = path else {
        bail!(
            "--disk {s:?}: expected PATH[,readonly][,engine=uring|sync][,sqpoll=on|off|MS]\
             [,writes=inline|ring][,bw=B/s][,iops=N]..."
        )
    };
    let mut disk = DiskConfig {
        path: path.into(),
        readonly: false,
        engine: None,
        rate_limit: LimiterConfig::default(),
        sqpoll_idle_ms: None,
        writes: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "readonly" || opt == "ro" => disk.readonly = true,
            Some(("engine", "uring" | "io_uring")) => disk.engine = Some(DiskEngine::Uring),
            Some(("engine", "sync")) => disk.engine = Some(DiskEngine::Sync),
            Some(("sqpoll", "on")) => disk.sqpoll_idle_ms = Some(DEFAULT_SQPOLL_IDLE_MS),
            Some(("sqpoll", "off")) => disk.sqpoll_idle_ms = None,
            // 0 would be the kernel's default idle time (1 s), not 0 ms.
            Some(("sqpoll", ms)) if ms.parse::<u32>().is_ok_and(|ms| ms > 0) => {
                disk.sqpoll_idle_ms = ms.parse().ok();
            }
            Some(("writes", "inline")) => disk.writes = Some(UringWrites::Inline),
            Some(("writes", "ring")) => disk.writes = Some(UringWrites::Ring),
            Some((k, v)) if parse_limit(&mut disk.rate_limit, "iops", k, v)? => {}
            _ => bail!(
                "--disk {s:?}: unknown option {opt:?} (expected readonly, engine=uring|sync, \
                 sqpoll=on|off|MS, writes=inline|ring, bw=, bw-burst=, iops=, iops-burst=)"
            ),
        }
    }
    check_limit(&format!("--disk {s:?}"), &disk.rate_limit)?;
    Ok(disk)
}

fn parse_net(s: &str) -> Result<NetConfig> {
    let mut tap = None;
    let mut mac = None;
    let mut rate_limit = LimiterConfig::default();
    let mut queues = 1;
    for kv in s.split(',') {
        match kv.split_once('=') {
            Some(("tap", v)) if !v.is_empty() => tap = Some(v.to_string()),
            Some(("mac", v)) => mac = Some(v.to_string()),
            Some(("queues", v)) => {
                queues = v.parse().with_context(|| {
                    format!("--net {s:?}: queues={v:?} is not a number from 1 to {MAX_NET_QUEUES}")
                })?
            }
            Some((k, v)) if parse_limit(&mut rate_limit, "pps", k, v)? => {}
            _ => bail!(
                "--net {s:?}: expected tap=NAME[,mac=MAC][,queues=N][,bw=B/s][,bw-burst=B]\
                 [,pps=N][,pps-burst=N]"
            ),
        }
    }
    let tap = tap.with_context(|| format!("--net {s:?}: tap=NAME is required"))?;
    check_limit(&format!("--net {s:?}"), &rate_limit)?;
    check_queues(&format!("--net {s:?}"), queues)?;
    Ok(NetConfig {
        tap,
        mac,
        rate_limit,
        queues,
    })
}

impl VmConfig {
    pub fn from_cli(cli: Cli) -> Result<Self> {
        let mut cfg = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                serde_json::from_str::<VmConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => {
                let Some(kernel) = cli.kernel.clone() else {
                    bail!("no kernel given: use --kernel PATH (or --config FILE.json)");
                };
                VmConfig {
                    kernel,
                    initrd: None,
                    cmdline: default_cmdline(),
                    memory_mib: DEFAULT_MEMORY_MIB,
                    cpus: 1,
                    disks: vec![],
                    nets: vec![],
                    rng: false,
                    restricted_dma: None,
                    guest_swiotlb: false,
                    dma_trace: None,
                    metrics: None,
                    metrics_socket: None,
                    seccomp: SeccompMode::default(),
                    seccomp_selftest: None,
                    kvm_probe: true,
                }
            }
        };
        if let Some(k) = cli.kernel {
            cfg.kernel = k;
        }
        if cli.initrd.is_some() {
            cfg.initrd = cli.initrd;
        }
        if let Some(c) = cli.cmdline {
            cfg.cmdline = c;
        }
        if let Some(m) = cli.memory {
            cfg.memory_mib = m;
        }
        if let Some(c) = cli.cpus {
            cfg.cpus = c;
        }
        for d in &cli.disk {
            cfg.disks.push(parse_disk(d)?);
        }
        for n in &cli.net {
            cfg.nets.push(parse_net(n)?);
        }
        cfg.rng |= cli.rng;
        match (cli.restricted_dma, cli.bounce) {
            (None, Some(_)) => bail!("--bounce needs --restricted-dma"),
            (None, None) => {}
            (Some(size), opts) => {
                let size = parse_size(&size)?;
                cfg.restricted_dma = Some(pool_config(size, cfg.cpus, opts.as_deref())?);
            }
        }
        if let Some(pool) = cfg.restricted_dma.as_mut() {
            // 0 means "one per CPU": the guest's CPUs, as Linux counts them.
            if pool.areas == 0 {
                pool.areas = u32::from(cfg.cpus);
            }
            // The guest's RAM, for Linux's default atomic pool sizes (0: not given).
            if pool.guest_ram == 0 {
                pool.guest_ram = cfg.memory_mib << 20;
            }
        }
        cfg.guest_swiotlb |= cli.guest_swiotlb;
        if cli.dma_trace.is_some() {
            cfg.dma_trace = cli.dma_trace;
        }
        if let Some(m) = &cli.metrics {
            cfg.metrics = Some(MetricsConfig::parse(m)?);
        }
        if cli.metrics_socket.is_some() {
            cfg.metrics_socket = cli.metrics_socket;
        }
        if let Some(m) = cli.seccomp {
            cfg.seccomp = m;
        }
        cfg.seccomp_selftest = cli.seccomp_selftest;
        cfg.kvm_probe &= !cli.no_kvm_probe;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        self.validate_limits()?;
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            bail!("--cpus {} is out of range: 1 to {MAX_CPUS}", self.cpus);
        }
        if !self.kernel.is_file() {
            bail!(
                "kernel {} does not exist or is not a file",
                self.kernel.display()
            );
        }
        if let Some(m) = &self.metrics {
            m.validate()?;
        }
        if let Some(i) = &self.initrd {
            if !i.is_file() {
                bail!("initrd {} does not exist or is not a file", i.display());
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<()> {
        for d in &self.disks {
            check_limit(&format!("disk {}", d.path.display()), &d.rate_limit)?;
        }
        for n in &self.nets {
            check_limit(&format!("net {}", n.tap), &n.rate_limit)?;
            check_queues(&format!("net {}", n.tap), n.queues)?;
        }
        Ok(())
    }
}

/// Pool configuration for `--restricted-dma[=SIZE]` plus `--bounce key=value,...`: Linux's
/// defaults, one area per vCPU (as Linux gives one per possible CPU), then the user's keys.
pub fn pool_config(size: u64, cpus: u8, opts: Option<&str>) -> Result<SwiotlbConfig> {
    let mut cfg = SwiotlbConfig {
        size,
        areas: u32::from(cpus),
        ..SwiotlbConfig::default()
    };
    for kv in opts
        .unwrap_or("")
        .split(',')
        .filter(|kv| !kv.trim().is_empty())
    {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--bounce {kv:?}: expected KEY=VALUE"))?;
        cfg.set(k.trim(), v.trim())
            .map_err(|e| anyhow!("--bounce {kv:?}: {e}"))?;
    }
    cfg.validate()
        .map_err(|e| anyhow!("invalid restricted-DMA pool configuration: {e}"))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_config_applies_options_over_defaults() {
        let c = pool_config(8 << 20, 2, Some("slot=2K,lookup=list")).unwrap();
        assert_eq!((c.size, c.areas), (8 << 20, 2));
        let c = pool_config(8 << 20, 2, Some("size=16M,areas=4")).unwrap();
        assert_eq!((c.size, c.areas), (16 << 20, 4));
        assert!(pool_config(8 << 20, 1, Some("bogus=1")).is_err());
        assert!(pool_config(8 << 20, 1, Some("slot")).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn disks_and_nets() {
        assert_eq!(
            parse_disk("/a.img,readonly").unwrap(),
            DiskConfig {
                path: "/a.img".into(),
                readonly: true,
                engine: None,
                rate_limit: LimiterConfig::default(),
                sqpoll_idle_ms: None,
                writes: None,
            }
        );
        assert_eq!(
            parse_disk("/a.img,writes=ring").unwrap().writes,
            Some(UringWrites::Ring)
        );
        assert_eq!(
            parse_disk("/a.img,writes=ring,writes=inline")
                .unwrap()
                .writes,
            Some(UringWrites::Inline)
        );
        assert!(parse_disk("/a.img,writes=async").is_err());
        let j: DiskConfig = serde_json::from_str(r#"{"path":"/a","writes":"ring"}"#).unwrap();
        assert_eq!(j.writes, Some(UringWrites::Ring));
        assert_eq!(
            parse_disk("/a.img,engine=uring,sqpoll=on")
                .unwrap()
                .sqpoll_idle_ms,
            Some(DEFAULT_SQPOLL_IDLE_MS)
        );
        assert_eq!(
            parse_disk("/a.img,sqpoll=50").unwrap().sqpoll_idle_ms,
            Some(50)
        );
        assert_eq!(
            parse_disk("/a.img,sqpoll=on,sqpoll=off")
                .unwrap()
                .sqpoll_idle_ms,
            None
        );
        assert!(parse_disk("/a.img,sqpoll=maybe").is_err());
        assert!(parse_disk("/a.img,sqpoll=0").is_err());
        let j: DiskConfig =
            serde_json::from_str(r#"{"path":"/a","engine":"uring","sqpoll_idle_ms":5}"#).unwrap();
        assert_eq!(j.sqpoll_idle_ms, Some(5));
        assert_eq!(
            parse_disk("/a.img,engine=sync").unwrap().engine,
            Some(DiskEngine::Sync)
        );
        assert_eq!(
            parse_disk("/a.img,engine=uring,ro").unwrap().engine,
            Some(DiskEngine::Uring)
        );
        assert!(parse_disk("/a.img,engine=aio").is_err());
        let j: DiskConfig = serde_json::from_str(r#"{"path":"/a","engine":"sync"}"#).unwrap();
        assert_eq!(j.engine, Some(DiskEngine::Sync));
        assert!(parse_disk("/a.img,bogus").is_err());
        assert!(parse_disk("").is_err());
        let n = parse_net("tap=tap0,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac.as_deref(), Some("02:00:00:00:00:01"));
        assert!(parse_net("mac=02:00:00:00:00:01").is_err());
        assert_eq!(n.queues, 1);
    }

    #[test]
    fn net_queues() {
        assert_eq!(parse_net("tap=tap0,queues=4").unwrap().queues, 4);
        assert_eq!(parse_net("queues=256,tap=tap0").unwrap().queues, 256);
        for bad in [
            "queues=0",
            "queues=257",
            "queues=two",
            "queues=",
            "queues=-1",
        ] {
            assert!(parse_net(&format!("tap=tap0,{bad}")).is_err(), "{bad}");
        }
        let json = r#"{"kernel": "k", "nets": [{"tap": "tap0", "queues": 2}, {"tap": "tap1"}]}"#;
        let cfg: VmConfig = serde_json::from_str(json).unwrap();
        assert_eq!((cfg.nets[0].queues, cfg.nets[1].queues), (2, 1));
        assert!(cfg.validate_limits().is_ok());
        let zero = r#"{"kernel": "k", "nets": [{"tap": "tap0", "queues": 0}]}"#;
        let cfg: VmConfig = serde_json::from_str(zero).unwrap();
        assert!(cfg.validate_limits().is_err());
    }

    #[test]
    fn rate_limits_in_json() {
        let json = r#"{"kernel": "k",
            "disks": [{"path": "d.img", "rate_limit":
                {"bytes": {"rate": 1048576, "burst": 65536, "one_time_burst": 8388608},
                 "ops": {"rate": 100}}}],
            "nets": [{"tap": "tap0", "rate_limit": {"ops": {"rate": 1000, "burst": 10}}}]}"#;
        let cfg: VmConfig = serde_json::from_str(json).unwrap();
        let d = &cfg.disks[0].rate_limit;
        assert_eq!(
            d.bytes,
            Some(BucketConfig {
                rate: 1 << 20,
                burst: 64 << 10,
                one_time_burst: 8 << 20
            })
        );
        assert_eq!(d.ops, Some(BucketConfig::per_second(100)));
        assert_eq!(cfg.nets[0].rate_limit.ops.map(|b| b.burst), Some(10));
        assert!(cfg.validate_limits().is_ok());
        // A misspelt field is an error, not an unlimited device.
        let bad = r#"{"kernel": "k", "disks": [{"path": "d.img", "rate_limits": {}}]}"#;
        assert!(serde_json::from_str::<VmConfig>(bad).is_err());
        let zero = r#"{"kernel": "k", "disks": [{"path": "d.img",
            "rate_limit": {"ops": {"rate": 0}}}]}"#;
        let cfg: VmConfig = serde_json::from_str(zero).unwrap();
        assert!(cfg.validate_limits().is_err());
    }

    #[test]
    fn rate_limit_options() {
        let d = parse_disk("/a.img,bw=10M,iops=1000,bw-burst=1M").unwrap();
        let bucket = |rate, burst| BucketConfig {
            rate,
            burst,
            one_time_burst: 0,
        };
        assert_eq!(d.rate_limit.bytes, Some(bucket(10 << 20, 1 << 20)));
        assert_eq!(d.rate_limit.ops, Some(bucket(1000, 0)));
        let d = parse_disk("/a.img,iops-burst=50,iops=100,readonly").unwrap();
        assert!(d.readonly);
        assert_eq!(d.rate_limit.ops, Some(bucket(100, 50)));
        assert_eq!(d.rate_limit.bytes, None);
        // A burst without a rate, a zero rate, pps on a disk, iops on a net: refused.
        assert!(parse_disk("/a.img,bw-burst=1M").is_err());
        assert!(parse_disk("/a.img,bw=0").is_err());
        assert!(parse_disk("/a.img,pps=10").is_err());
        assert!(parse_disk("/a.img,bw=fast").is_err());
        let n = parse_net("tap=tap0,bw=1M,pps=5000,pps-burst=100").unwrap();
        assert_eq!(n.rate_limit.bytes, Some(bucket(1 << 20, 0)));
        assert_eq!(n.rate_limit.ops, Some(bucket(5000, 100)));
        assert!(parse_net("tap=tap0,iops=10").is_err());
    }

    #[test]
    fn json_config_with_flag_overrides() {
        let dir = std::env::temp_dir().join(format!("microvm-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("k");
        std::fs::write(&kernel, b"x").unwrap();
        let json = dir.join("vm.json");
        std::fs::write(
            &json,
            format!(
                r#"{{"kernel": {:?}, "cpus": 2, "memory_mib": 512, "rng": true, "seccomp": "log",
                    "restricted_dma": {{"size": 8388608, "lookup": "list"}}}}"#,
                kernel
            ),
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "microvm",
            "--config",
            json.to_str().unwrap(),
            "--memory",
            "128",
        ])
        .unwrap();
        let cfg = VmConfig::from_cli(cli).unwrap();
        assert_eq!((cfg.cpus, cfg.memory_mib, cfg.rng), (2, 128, true));
        assert_eq!(cfg.seccomp, SeccompMode::Log);
        let pool = cfg.restricted_dma.unwrap();
        assert_eq!((pool.size, pool.areas), (8 << 20, 2));
        std::fs::write(&json, r#"{"kernel": "k", "bogus": 1}"#).unwrap();
        let cli = Cli::try_parse_from(["microvm", "--config", json.to_str().unwrap()]).unwrap();
        assert!(VmConfig::from_cli(cli).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn seccomp_defaults_to_trap_and_the_flag_wins() {
        let c = Cli::try_parse_from(["microvm", "--kernel", "k"]).unwrap();
        assert_eq!(c.seccomp, None);
        assert_eq!(SeccompMode::default(), SeccompMode::Trap);
        for (arg, mode) in [
            ("trap", SeccompMode::Trap),
            ("kill", SeccompMode::Kill),
            ("log", SeccompMode::Log),
            ("off", SeccompMode::Off),
        ] {
            let c = Cli::try_parse_from(["microvm", "--kernel", "k", "--seccomp", arg]).unwrap();
            assert_eq!(c.seccomp, Some(mode));
        }
        assert!(Cli::try_parse_from(["microvm", "--kernel", "k", "--seccomp", "bogus"]).is_err());
    }

    #[test]
    fn restricted_dma_flag_shapes() {
        let c = Cli::try_parse_from(["microvm", "--kernel", "k", "--restricted-dma"]).unwrap();
        assert_eq!(c.restricted_dma.as_deref(), Some("64M"));
        let c = Cli::try_parse_from(["microvm", "--kernel", "k", "--restricted-dma=8M"]).unwrap();
        assert_eq!(c.restricted_dma.as_deref(), Some("8M"));
        let c = Cli::try_parse_from(["microvm", "--kernel", "k"]).unwrap();
        assert!(c.restricted_dma.is_none());
    }

    #[test]
    fn metrics_flag_and_json() {
        let m = MetricsConfig::parse("/tmp/m.jsonl").unwrap();
        assert_eq!(
            (m.path.to_str(), m.interval_ms),
            (Some("/tmp/m.jsonl"), 1000)
        );
        let m = MetricsConfig::parse("m.jsonl,interval=100ms").unwrap();
        assert_eq!(m.interval_ms, 100);
        assert_eq!(
            MetricsConfig::parse("m,interval=2").unwrap().interval_ms,
            2000
        );
        assert_eq!(
            MetricsConfig::parse("m,interval=1.5s").unwrap().interval_ms,
            1500
        );
        assert_eq!(
            MetricsConfig::parse("m,interval=2m").unwrap().interval_ms,
            120_000
        );
        assert!(MetricsConfig::parse("m,interval=5ms").is_err());
        assert!(MetricsConfig::parse("m,interval=x").is_err());
        assert!(MetricsConfig::parse("m,bogus=1").is_err());
        assert!(MetricsConfig::parse(",interval=1s").is_err());
        let j: MetricsConfig = serde_json::from_str(r#"{"path": "m.jsonl"}"#).unwrap();
        assert_eq!(j.interval_ms, 1000);
        assert!(serde_json::from_str::<MetricsConfig>(r#"{"path": "m", "bogus": 1}"#).is_err());
    }
}
