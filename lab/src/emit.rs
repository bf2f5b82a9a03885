//! `microvm-lab sweep SPEC --emit slurm|parallel`: the matrix as a Slurm job-array script or a
//! GNU parallel command list, one cell per job. Each job runs `microvm-lab sweep SPEC --cell N
//! --out OUT/cells/NNNN` (its own results directory: its own `results.jsonl`, metrics and
//! environment), and `microvm-lab report OUT/cells --out OUT` merges them.

use std::path::Path;

use crate::spec::Spec;

/// What the emitted jobs run.
pub struct Job<'a> {
    /// The `microvm-lab` binary (overridable in the script by `MICROVM_LAB`).
    pub lab: &'a Path,
    /// The spec, as the jobs will see it (absolute).
    pub spec_path: &'a Path,
    /// Where the cells' directories go (`OUT/cells/NNNN`).
    pub out: &'a Path,
    /// The repository the harness builds from (jobs `cd` there).
    pub repo: &'a Path,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    Slurm,
    Parallel,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A cell's own results directory, relative to `OUT`.
pub fn cell_dir(i: usize) -> String {
    format!("cells/{i:04}")
}

/// `dir`: the cell's directory below `OUT` (shell text).
fn sweep_command(job: &Job<'_>, index: &str, dir: &str) -> String {
    format!(
        "\"${{MICROVM_LAB:-{lab}}}\" sweep {spec} --quiet --cell {index} --out {out}/{dir}",
        lab = job
            .lab
            .display()
            .to_string()
            .replace(['"', '$', '`', '\\'], ""),
        spec = quote(&job.spec_path.display().to_string()),
        out = quote(&job.out.display().to_string()),
    )
}

/// A Slurm job-array script: task N runs cell N. Its comments name every cell.
pub fn slurm(spec: &Spec, job: &Job<'_>) -> String {
    let cells = spec.cells();
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str(&format!("#SBATCH --job-name=microvm-lab-{}\n", spec.name));
    s.push_str(&format!(
        "#SBATCH --array=0-{}\n",
        cells.len().saturating_sub(1)
    ));
    s.push_str("#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=2\n");
    // A cell boots one guest: fio's runtime plus a boot allowance.
    let minutes = runner_minutes(spec);
    s.push_str(&format!("#SBATCH --time={minutes}\n"));
    s.push_str(&format!(
        "#SBATCH --output={}/microvm-lab-%A_%a.log\n",
        job.out.display()
    ));
    s.push_str(&format!(
        "# microvm-lab sweep {:?}: {} cells, one per array task. Submit with\n\
         #   mkdir -p {out} && sbatch THIS_SCRIPT\n\
         # (Slurm opens the log before the job runs), then merge with\n\
         #   microvm-lab report {out}/cells --out {out}\n\
         # Array task -> cell:\n",
        spec.name,
        cells.len(),
        out = job.out.display()
    ));
    for (i, c) in cells.iter().enumerate() {
        s.push_str(&format!("#   {i:4} {}\n", c.id()));
    }
    s.push_str("set -eu\n");
    s.push_str(&format!(
        "mkdir -p {}/logs\n",
        quote(&job.out.display().to_string())
    ));
    s.push_str(&format!("cd {}\n", quote(&job.repo.display().to_string())));
    s.push_str(&format!(
        "exec {}\n",
        sweep_command(
            job,
            "\"$SLURM_ARRAY_TASK_ID\"",
            "cells/$(printf %04d \"$SLURM_ARRAY_TASK_ID\")"
        )
    ));
    s
}

/// A GNU parallel command list: one line per cell (`parallel --jobs N < FILE`).
pub fn parallel(spec: &Spec, job: &Job<'_>) -> String {
    let repo = quote(&job.repo.display().to_string());
    (0..spec.cells().len())
        .map(|i| {
            format!(
                "cd {repo} && {}\n",
                sweep_command(job, &i.to_string(), &cell_dir(i))
            )
        })
        .collect()
}

/// A cell's time limit in minutes (Slurm's `--time`), as the harness bounds a batch of one
/// (the longest cell: a network transfer has more time), plus the builds' allowance.
fn runner_minutes(spec: &Spec) -> u64 {
    let cells = spec.cells();
    let longest = cells
        .iter()
        .map(|c| crate::runner::batch_timeout(spec, 1) + crate::runner::net_allowance(&[(0, c)]))
        .max()
        .unwrap_or_default();
    longest.as_secs().div_ceil(60) + 5
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
name = "t"
repetitions = 2
[matrix]
pool = ["off", "1M", "4M"]
exhaustion = ["fail", "transient"]
[[workload]]
name = "rr"
rw = "randread"
bs = "4k"
engine = "psync"
"#;

    fn job() -> Job<'static> {
        Job {
            lab: Path::new("/opt/lab/microvm-lab"),
            spec_path: Path::new("/data/spec.toml"),
            out: Path::new("/scratch/out"),
            repo: Path::new("/src/microvm"),
        }
    }

    #[test]
    fn the_slurm_script_names_every_cell_once() {
        let spec = Spec::parse(SPEC, "s").unwrap();
        let cells = spec.cells();
        assert_eq!(cells.len(), 10);
        let s = slurm(&spec, &job());
        assert!(s.starts_with("#!/bin/bash\n"));
        assert!(s.contains("#SBATCH --array=0-9\n"), "{s}");
        for (i, c) in cells.iter().enumerate() {
            let line = format!("#   {i:4} {}\n", c.id());
            assert_eq!(s.matches(&line).count(), 1, "{line}");
            assert_eq!(s.matches(&c.id()).count(), 1, "{} named once", c.id());
        }
        assert!(s.contains(
            "sweep '/data/spec.toml' --quiet --cell \"$SLURM_ARRAY_TASK_ID\" --out \
             '/scratch/out'/cells/$(printf %04d \"$SLURM_ARRAY_TASK_ID\")"
        ));
        assert!(s.contains("${MICROVM_LAB:-/opt/lab/microvm-lab}"));
    }

    #[test]
    fn the_parallel_list_has_one_line_per_cell() {
        let spec = Spec::parse(SPEC, "s").unwrap();
        let p = parallel(&spec, &job());
        let lines: Vec<&str> = p.lines().collect();
        assert_eq!(lines.len(), 10);
        for (i, l) in lines.iter().enumerate() {
            assert!(l.starts_with("cd '/src/microvm' && "), "{l}");
            assert!(
                l.ends_with(&format!("--cell {i} --out '/scratch/out'/cells/{i:04}")),
                "{l}"
            );
        }
        assert_eq!(cell_dir(7), "cells/0007");
    }
}
