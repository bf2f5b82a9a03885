//! The sweep specification (TOML): a matrix of microvm configurations, a list of fio
//! workloads, repetitions; validated in full before anything runs.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SpecError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Toml {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: String,
        field: String,
        message: String,
    },
}

/// A size with a K/M/G suffix, as microvm takes it.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                _ => return Err(format!("size {s:?}: unknown suffix (K, M or G)")),
            };
            (&t[..t.len() - 1], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} is not a number with an optional K/M/G suffix"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn one() -> u32 {
    1
}
fn default_runtime() -> u32 {
    5
}
fn default_size() -> String {
    "32M".into()
}
fn default_memory() -> u64 {
    512
}
fn default_batch() -> usize {
    4
}
fn default_interval() -> String {
    "250ms".into()
}
fn default_pool() -> Vec<String> {
    vec!["64M".into()]
}
fn default_growth() -> Vec<String> {
    vec!["linux".into()]
}
fn default_exhaustion() -> Vec<String> {
    vec!["transient".into()]
}
fn default_convert() -> Vec<String> {
    vec!["none".into()]
}
fn default_lookup() -> Vec<String> {
    vec!["list".into()]
}
fn default_areas() -> Vec<u32> {
    vec![0]
}
fn default_cpus() -> Vec<u8> {
    vec![1]
}
fn default_guest_swiotlb() -> Vec<bool> {
    vec![false]
}

/// The configuration axes; every combination is run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    /// `--restricted-dma=SIZE`; `off` for no bouncing (the baseline).
    #[serde(default = "default_pool")]
    pub pool: Vec<String>,
    /// `--bounce growth=` (`linux`, `proposed`).
    #[serde(default = "default_growth")]
    pub growth: Vec<String>,
    /// `--bounce exhaustion=` (`fail`, `transient`, `throttle`, `wait`).
    #[serde(default = "default_exhaustion")]
    pub exhaustion: Vec<String>,
    /// `--bounce convert=` (`none`, `snp`, `tdx`, `pkvm`, `custom:...`).
    #[serde(default = "default_convert")]
    pub convert: Vec<String>,
    /// `--bounce lookup=` (`list`, `tree`).
    #[serde(default = "default_lookup")]
    pub lookup: Vec<String>,
    /// `--bounce areas=`; 0 is microvm's default (one per vCPU).
    #[serde(default = "default_areas")]
    pub areas: Vec<u32>,
    /// `--cpus`.
    #[serde(default = "default_cpus")]
    pub cpus: Vec<u8>,
    /// `--guest-swiotlb`.
    #[serde(default = "default_guest_swiotlb")]
    pub guest_swiotlb: Vec<bool>,
    /// More `--bounce` keys for every cell (e.g. `dynamic=on,convert-mode=account`).
    #[serde(default)]
    pub bounce_extra: String,
}

fn default_kind() -> String {
    "fio".into()
}
fn default_net_size() -> String {
    "32M".into()
}

/// One workload: a fio job on the disk (`kind = "fio"`, the default), or a network transfer
/// over a tap (`kind = "net"`: `direction` and `size`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    #[serde(default = "default_kind")]
    pub kind: String,
    /// fio `--rw`: read, write, randread, randwrite, rw, randrw.
    #[serde(default)]
    pub rw: String,
    /// fio `--bs` (e.g. `4k`, `64k`, `1m`).
    #[serde(default)]
    pub bs: String,
    #[serde(default = "one")]
    pub iodepth: u32,
    /// fio `--ioengine`: `psync` or `libaio`.
    #[serde(default)]
    pub engine: String,
    /// net: `down` (the guest downloads over HTTP from the tap's far side) or `up` (it
    /// uploads: an HTTP POST).
    #[serde(default)]
    pub direction: String,
    /// net: bytes moved (K/M/G suffix).
    #[serde(default = "default_net_size")]
    pub size: String,
}

impl Workload {
    pub fn is_net(&self) -> bool {
        self.kind == "net"
    }

    /// net: the transfer's bytes.
    pub fn net_bytes(&self) -> u64 {
        parse_size(&self.size).unwrap_or(32 << 20)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    #[serde(default = "one")]
    pub repetitions: u32,
    /// fio time per cell, seconds.
    #[serde(default = "default_runtime")]
    pub runtime_s: u32,
    /// The disk image and fio's region on it.
    #[serde(default = "default_size")]
    pub disk_size: String,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Cells per harness run (one outer machine on the nested path).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// `--metrics ...,interval=`.
    #[serde(default = "default_interval")]
    pub metrics_interval: String,
    pub matrix: Matrix,
    #[serde(rename = "workload")]
    pub workloads: Vec<Workload>,
}

/// One microvm configuration of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub pool: String,
    pub growth: String,
    pub exhaustion: String,
    pub convert: String,
    pub lookup: String,
    pub areas: u32,
    pub cpus: u8,
    pub guest_swiotlb: bool,
}

impl Config {
    pub fn bounced(&self) -> bool {
        self.pool != "off"
    }

    /// `--bounce` keys for this configuration (with the spec's extra keys).
    pub fn bounce_keys(&self, extra: &str) -> String {
        let mut k = format!(
            "growth={},exhaustion={},convert={},lookup={}",
            self.growth, self.exhaustion, self.convert, self.lookup
        );
        if self.areas > 0 {
            k.push_str(&format!(",areas={}", self.areas));
        }
        if !extra.trim().is_empty() {
            k.push(',');
            k.push_str(extra.trim());
        }
        k
    }

    /// microvm's arguments beyond kernel, initrd, disk, metrics and cmdline.
    pub fn microvm_args(&self, extra: &str) -> Vec<String> {
        let mut a = vec!["--cpus".to_string(), self.cpus.to_string()];
        if self.bounced() {
            a.push(format!("--restricted-dma={}", self.pool));
            a.push("--bounce".into());
            a.push(self.bounce_keys(extra));
        }
        if self.guest_swiotlb {
            a.push("--guest-swiotlb".into());
        }
        a
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pool={},growth={},exhaustion={},convert={},lookup={},areas={},cpus={},guest-swiotlb={}",
            self.pool,
            self.growth,
            self.exhaustion,
            self.convert,
            self.lookup,
            self.areas,
            self.cpus,
            u8::from(self.guest_swiotlb)
        )
    }
}

/// One run: a configuration, a workload, a repetition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub config: Config,
    pub workload: Workload,
    pub rep: u32,
}

impl Cell {
    /// Stable across runs of the same spec: the key resuming matches on.
    pub fn id(&self) -> String {
        format!("{}|{}|rep{}", self.config, self.workload.name, self.rep)
    }
}

const RW: &[&str] = &["read", "write", "randread", "randwrite", "rw", "randrw"];
const ENGINES: &[&str] = &["psync", "libaio"];

impl Spec {
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: p.clone(),
            source,
        })?;
        Spec::parse(&text, &p)
    }

    /// Parses and validates; `path` names the spec in errors.
    pub fn parse(text: &str, path: &str) -> Result<Spec, SpecError> {
        let spec: Spec = toml::from_str(text).map_err(|e| SpecError::Toml {
            path: path.into(),
            source: Box::new(e),
        })?;
        spec.validate(path)?;
        Ok(spec)
    }

    fn validate(&self, path: &str) -> Result<(), SpecError> {
        let bad = |field: &str, message: String| SpecError::Invalid {
            path: path.into(),
            field: field.into(),
            message,
        };
        if self.name.trim().is_empty() || self.name.contains(['/', '|']) {
            return Err(bad("name", "must be non-empty, without / or |".into()));
        }
        if self.repetitions == 0 {
            return Err(bad("repetitions", "must be at least 1".into()));
        }
        if self.runtime_s == 0 {
            return Err(bad("runtime_s", "must be at least 1".into()));
        }
        if self.batch == 0 {
            return Err(bad("batch", "must be at least 1".into()));
        }
        let disk = parse_size(&self.disk_size).map_err(|e| bad("disk_size", e))?;
        if disk < 1 << 20 {
            return Err(bad("disk_size", "must be at least 1M".into()));
        }
        if self.memory_mib < 64 {
            return Err(bad("memory_mib", "must be at least 64".into()));
        }
        parse_interval(&self.metrics_interval).map_err(|e| bad("metrics_interval", e))?;
        let m = &self.matrix;
        for (field, len) in [
            ("matrix.pool", m.pool.len()),
            ("matrix.growth", m.growth.len()),
            ("matrix.exhaustion", m.exhaustion.len()),
            ("matrix.convert", m.convert.len()),
            ("matrix.lookup", m.lookup.len()),
            ("matrix.areas", m.areas.len()),
            ("matrix.cpus", m.cpus.len()),
            ("matrix.guest_swiotlb", m.guest_swiotlb.len()),
        ] {
            if len == 0 {
                return Err(bad(field, "needs at least one value".into()));
            }
        }
        for p in &m.pool {
            if p != "off" {
                parse_size(p).map_err(|e| bad("matrix.pool", format!("{e} (or \"off\")")))?;
            }
        }
        for &c in &m.cpus {
            if c == 0 || c > 254 {
                return Err(bad("matrix.cpus", format!("{c} is out of range 1..=254")));
            }
        }
        // Every bounce combination through the pool model's own parser and checks.
        for c in self.configs() {
            if !c.bounced() {
                continue;
            }
            let size = parse_size(&c.pool).map_err(|e| bad("matrix.pool", e))?;
            let mut cfg = bounce::SwiotlbConfig {
                size,
                areas: u32::from(c.cpus),
                ..bounce::SwiotlbConfig::default()
            };
            for kv in c.bounce_keys(&m.bounce_extra).split(',') {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| bad("matrix.bounce_extra", format!("{kv:?}: expected K=V")))?;
                cfg.set(k.trim(), v.trim())
                    .map_err(|e| bad("matrix", format!("{c}: {kv}: {e}")))?;
            }
            cfg.validate()
                .map_err(|e| bad("matrix", format!("{c}: {e}")))?;
        }
        if self.workloads.is_empty() {
            return Err(bad(
                "workload",
                "at least one [[workload]] is needed".into(),
            ));
        }
        let mut names = BTreeSet::new();
        for w in &self.workloads {
            let f = |k: &str| format!("workload {:?}: {k}", w.name);
            if w.name.is_empty()
                || w.name
                    .contains(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_')
            {
                return Err(bad(&f("name"), "letters, digits, - and _ only".into()));
            }
            if !names.insert(&w.name) {
                return Err(bad(&f("name"), "used twice".into()));
            }
            match w.kind.as_str() {
                "net" => {
                    if w.direction != "down" && w.direction != "up" {
                        return Err(bad(
                            &f("direction"),
                            format!("{:?}: down or up", w.direction),
                        ));
                    }
                    let n = parse_size(&w.size).map_err(|e| bad(&f("size"), e))?;
                    if !(64 << 10..=1 << 30).contains(&n) {
                        return Err(bad(&f("size"), "must be 64K..=1G".into()));
                    }
                    if !w.rw.is_empty() || !w.bs.is_empty() || !w.engine.is_empty() {
                        return Err(bad(
                            &f("kind"),
                            "a net workload takes direction and size, not fio's rw/bs/engine"
                                .into(),
                        ));
                    }
                    continue;
                }
                "fio" => {}
                k => {
                    return Err(bad(&f("kind"), format!("{k:?}: fio or net")));
                }
            }
            if !RW.contains(&w.rw.as_str()) {
                return Err(bad(&f("rw"), format!("{:?} is not one of {RW:?}", w.rw)));
            }
            if !ENGINES.contains(&w.engine.as_str()) {
                return Err(bad(
                    &f("engine"),
                    format!("{:?} is not one of {ENGINES:?}", w.engine),
                ));
            }
            let bs = parse_size(&w.bs).map_err(|e| bad(&f("bs"), e))?;
            if bs < 512 || bs % 512 != 0 || bs > disk {
                return Err(bad(
                    &f("bs"),
                    format!("{} must be a multiple of 512 and fit the disk", w.bs),
                ));
            }
            if w.iodepth == 0 || w.iodepth > 1024 {
                return Err(bad(&f("iodepth"), "must be 1..=1024".into()));
            }
            if w.engine == "psync" && w.iodepth > 1 {
                return Err(bad(
                    &f("iodepth"),
                    format!(
                        "psync is synchronous: iodepth {} would be ignored (use libaio)",
                        w.iodepth
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every configuration, in matrix order (pool varies slowest).
    pub fn configs(&self) -> Vec<Config> {
        let m = &self.matrix;
        let mut out = Vec::new();
        for pool in &m.pool {
            for growth in &m.growth {
                for exhaustion in &m.exhaustion {
                    for convert in &m.convert {
                        for lookup in &m.lookup {
                            for &areas in &m.areas {
                                for &cpus in &m.cpus {
                                    for &guest_swiotlb in &m.guest_swiotlb {
                                        let c = Config {
                                            pool: pool.clone(),
                                            growth: growth.clone(),
                                            exhaustion: exhaustion.clone(),
                                            convert: convert.clone(),
                                            lookup: lookup.clone(),
                                            areas,
                                            cpus,
                                            guest_swiotlb,
                                        };
                                        // Without bouncing the pool knobs mean nothing: one
                                        // baseline per cpus/guest-swiotlb.
                                        let c = if c.bounced() { c } else { baseline(c) };
                                        if !out.contains(&c) {
                                            out.push(c);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Every cell: configurations x workloads x repetitions (repetitions outermost, so a
    /// partial sweep has whole passes).
    pub fn cells(&self) -> Vec<Cell> {
        let configs = self.configs();
        let mut out = Vec::new();
        for rep in 0..self.repetitions {
            for c in &configs {
                for w in &self.workloads {
                    out.push(Cell {
                        config: c.clone(),
                        workload: w.clone(),
                        rep,
                    });
                }
            }
        }
        out
    }

    pub fn disk_bytes(&self) -> u64 {
        parse_size(&self.disk_size).unwrap_or(32 << 20)
    }
}

/// The no-bounce configuration: no pool knobs (`-`).
fn baseline(c: Config) -> Config {
    Config {
        growth: "-".into(),
        exhaustion: "-".into(),
        convert: "-".into(),
        lookup: "-".into(),
        areas: 0,
        ..c
    }
}

/// `250ms`, `1s`: milliseconds, at least 10.
pub fn parse_interval(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let ms = if let Some(n) = t.strip_suffix("ms") {
        n.parse::<u64>().ok()
    } else if let Some(n) = t.strip_suffix('s') {
        n.parse::<u64>().ok().and_then(|n| n.checked_mul(1000))
    } else {
        None
    };
    match ms {
        Some(ms) if ms >= 10 => Ok(ms),
        Some(_) => Err(format!("{s:?} is below 10ms")),
        None => Err(format!("{s:?}: expected e.g. 250ms or 1s")),
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
