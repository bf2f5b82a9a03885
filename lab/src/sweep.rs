//! `microvm-lab sweep`: validate the spec, skip the cells already done, run the rest in
//! batches through the harness with a progress bar, append each cell's row as its batch ends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use microvm_tests::{Arg, Harness, Program, Run, StdioMode};
use serde::Serialize;

use crate::results::{self, Writer};
use crate::runner::{self, Inputs};
use crate::spec::{Cell, Spec};

/// Runs batches of cells; the harness in `microvm-lab`, a fake in tests.
pub trait Backend {
    /// Builds or finds what the cells need (once, before the first batch).
    fn prepare(&mut self) -> Result<()>;
    /// `direct` or `nested`, and why.
    fn path(&self) -> (String, String);
    /// Runs one batch's script; its output (stdout), or why the harness run failed.
    fn run_batch(&mut self, spec: &Spec, batch: &[(usize, &Cell)]) -> Result<String>;
}

/// The test harness: guests on the host or in the outer machine.
pub struct HarnessBackend {
    h: Option<Harness>,
    inputs: Option<Inputs>,
    img: PathBuf,
}

impl HarnessBackend {
    pub fn new() -> Self {
        HarnessBackend {
            h: None,
            inputs: None,
            img: std::env::temp_dir().join(format!("microvm-lab-{}.img", std::process::id())),
        }
    }
}

impl Drop for HarnessBackend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.img);
    }
}

impl Backend for HarnessBackend {
    fn prepare(&mut self) -> Result<()> {
        let h = Harness::detect()?;
        let k = microvm_tests::kernel_artifacts()?;
        let initrd = microvm_tests::fio::initramfs_with_fio(&k.initramfs)?;
        let microvm = microvm_tests::microvm_binary()?;
        self.inputs = Some(Inputs {
            microvm,
            kernel: k.bzimage.clone(),
            initrd,
        });
        self.h = Some(h);
        Ok(())
    }

    fn path(&self) -> (String, String) {
        self.h.as_ref().map_or_else(Default::default, |h| {
            (h.path().to_string(), h.reason().to_string())
        })
    }

    fn run_batch(&mut self, spec: &Spec, batch: &[(usize, &Cell)]) -> Result<String> {
        let (Some(h), Some(inputs)) = (&self.h, &self.inputs) else {
            anyhow::bail!("the harness backend was not prepared");
        };
        std::fs::File::create(&self.img)
            .and_then(|f| f.set_len(spec.disk_bytes()))
            .with_context(|| format!("cannot create {}", self.img.display()))?;
        let run = Run {
            program: Program::Host("/bin/sh".into()),
            args: vec![
                Arg::s("-c"),
                Arg::s(runner::batch_script(spec, inputs, batch)),
                Arg::s("sh"),
                Arg::disk_file(0),
            ],
            files_to_carry: vec![
                inputs.microvm.clone(),
                inputs.kernel.clone(),
                inputs.initrd.clone(),
            ],
            disks: vec![self.img.clone()],
            timeout: runner::batch_timeout(spec, batch.len()) + runner::net_allowance(batch),
            marks: vec![],
            echo: false,
            stdio: StdioMode::Null,
            signal_at_mark: None,
        };
        Ok(h.run_with_setup(&run, &runner::net_setup(batch))?.stdout)
    }
}

/// Which cells `sweep` runs, and how.
#[derive(Default)]
pub struct Options {
    /// Results directory [default: lab-results/<spec name>].
    pub out: Option<PathBuf>,
    pub dry_run: bool,
    pub retry_failed: bool,
    /// Only these cells (indices into the spec's cells), e.g. one job of a cluster array.
    pub cells: Vec<usize>,
    /// No progress bar (tests, cluster jobs' logs).
    pub quiet: bool,
}

/// Where and how the sweep ran, for the report.
#[derive(Debug, Serialize, serde::Deserialize, Default, Clone)]
pub struct Environment {
    pub path: String,
    pub path_reason: String,
    pub host_cpu: String,
    pub host_cpus: usize,
    pub host_kernel: String,
    /// Where microvm ran: the outer machine's kernel, CPUs and fio (nested), or the host's.
    pub runner: String,
    pub microvm_commit: String,
    /// The fio carried into the guests (the host's).
    pub fio: String,
    pub started_unix: u64,
    pub wall_s: f64,
    pub cells_run: usize,
}

pub const ENV_FILE: &str = "environment.json";

fn host_cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .current_dir(microvm_tests::artifacts::repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn short(cell: &Cell) -> String {
    let c = &cell.config;
    format!(
        "pool={} {} {} {} rep{}",
        c.pool, c.exhaustion, c.convert, cell.workload.name, cell.rep
    )
}

pub fn sweep(spec_path: &Path, opts: Options, backend: &mut dyn Backend) -> Result<()> {
    // A bad spec stops here, before anything is built or booted.
    let spec = Spec::load(spec_path)?;
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("lab-results").join(&spec.name));
    let cells = spec.cells();
    for &i in &opts.cells {
        if i >= cells.len() {
            anyhow::bail!(
                "--cell {i}: the spec {} has cells 0..={} only",
                spec_path.display(),
                cells.len() - 1
            );
        }
    }
    let rows = results::load(&out)?;
    let done = results::done(&rows, opts.retry_failed);
    let chosen: Vec<(usize, &Cell)> = cells
        .iter()
        .enumerate()
        .filter(|(i, _)| opts.cells.is_empty() || opts.cells.contains(i))
        .collect();
    let pending: Vec<(usize, &Cell)> = chosen
        .iter()
        .copied()
        .filter(|(_, c)| !done.contains(&c.id()))
        .collect();
    eprintln!(
        "microvm-lab: sweep {:?}: {} configurations x {} workloads x {} repetitions = {} cells{}; \
         {} done in {}, {} to run in batches of {}",
        spec.name,
        spec.configs().len(),
        spec.workloads.len(),
        spec.repetitions,
        cells.len(),
        if opts.cells.is_empty() {
            String::new()
        } else {
            format!(" ({} chosen by --cell)", chosen.len())
        },
        chosen.len() - pending.len(),
        out.display(),
        pending.len(),
        spec.batch
    );
    if opts.dry_run {
        let inputs = Inputs {
            microvm: "MICROVM".into(),
            kernel: "BZIMAGE".into(),
            initrd: "INITRD".into(),
        };
        for (i, c) in &pending {
            println!("{i:4} {}", c.id());
        }
        if let Some(first) = pending.chunks(spec.batch).next() {
            println!("--- first batch script ($1: the disk image) ---");
            print!("{}", runner::batch_script(&spec, &inputs, first));
        }
        return Ok(());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::copy(spec_path, out.join("spec.toml")).context("cannot copy the spec")?;
    if pending.is_empty() {
        eprintln!("microvm-lab: nothing to run");
        return Ok(());
    }

    backend.prepare()?;
    let env_path = out.join(ENV_FILE);
    let mut env: Environment = std::fs::read(&env_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    (env.path, env.path_reason) = backend.path();
    env.host_cpu = host_cpu();
    env.host_cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    env.host_kernel = command_output("uname", &["-r"]);
    env.microvm_commit = command_output("git", &["describe", "--always", "--dirty"]);
    env.fio = command_output(microvm_tests::fio::FIO, &["--version"]);
    if env.started_unix == 0 {
        env.started_unix = now_unix();
    }

    let mut writer = Writer::open(&out)?;
    let bar = if opts.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(chosen.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} cells, ETA {eta} | {msg}",
        )
        .context("progress bar template")?,
    );
    bar.set_position((chosen.len() - pending.len()) as u64);
    if !opts.quiet {
        bar.enable_steady_tick(Duration::from_millis(500));
    }
    let started = Instant::now();
    let prior_wall = env.wall_s;
    let mut failed = 0usize;
    for batch in pending.chunks(spec.batch) {
        let msg = match batch {
            [(_, only)] => short(only),
            [(_, first), rest @ ..] => {
                format!("{} (+{} more in this batch)", short(first), rest.len())
            }
            [] => String::new(),
        };
        bar.set_message(msg);
        let (text, harness_error) = match backend.run_batch(&spec, batch) {
            Ok(o) => (o, None),
            Err(e) => (String::new(), Some(format!("{e:#}"))),
        };
        if let Some(env_line) = text.lines().find_map(|l| {
            l.find(runner::ENV_MARK)
                .map(|i| &l[i + runner::ENV_MARK.len()..])
        }) {
            let place = if env.path == "nested" {
                "outer QEMU machine"
            } else {
                "host"
            };
            env.runner = format!("{place}: {}", env_line.trim());
        }
        let outputs = runner::split_output(&text);
        for (i, cell) in batch {
            let name = runner::metrics_name(*i, cell);
            let o = outputs.get(i);
            if let Some(o) = o {
                runner::save_metrics(&out, &name, &o.metrics)
                    .with_context(|| format!("cannot save {name}"))?;
            }
            let mut row = runner::row(&spec, cell, o, &env.path, &name);
            if let (None, Some(e)) = (o, &harness_error) {
                row.error = format!("harness: {e}");
            }
            if !row.ok() {
                failed += 1;
                let line = format!("cell {i} failed: {}: {}", cell.id(), row.error);
                if bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
            }
            writer.append(&row)?;
            bar.inc(1);
        }
        env.cells_run += batch.len();
        // Over every (resumed) invocation of this sweep.
        env.wall_s = prior_wall + started.elapsed().as_secs_f64();
        std::fs::write(&env_path, serde_json::to_vec_pretty(&env)?)?;
    }
    bar.finish_with_message("done");
    eprintln!(
        "microvm-lab: {} cells run in {:.0} s ({} failed); results in {}",
        pending.len(),
        started.elapsed().as_secs_f64(),
        failed,
        out.display()
    );
    Ok(())
}

#[cfg(test)]
#[path = "sweep_tests.rs"]
mod tests;
