//! Helper run inside the outer machine (nested path): runs a program with a timeout
//! via `microvm_tests::exec`, shows its stdout between markers on our stdout, and writes
//! the JSON report (stdout, stderr, status, timings) as one line to `--report PATH`.
//!
//! usage: harness-exec --report PATH --timeout-ms N [--echo] [--stdio null|pipes|terminal]
//!        [--mark TEXT]... -- PROGRAM [ARGS]...

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use microvm_tests::exec::{execute, ExecSpec, StdioMode};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("harness-exec: error: {e:#}");
        std::process::exit(2);
    }
}

fn real_main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let mut report = None;
    let mut timeout = Duration::from_secs(60);
    let mut marks = Vec::new();
    let mut echo = false;
    let mut stdio = StdioMode::Null;
    let mut program = None;
    let mut signal_at_mark = None;
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--report") => report = args.next(),
            Some("--timeout-ms") => {
                let v = args.next().context("--timeout-ms needs a value")?;
                let ms: u64 = v
                    .to_string_lossy()
                    .parse()
                    .context("--timeout-ms: not a number")?;
                timeout = Duration::from_millis(ms);
            }
            Some("--mark") => marks.push(
                args.next()
                    .context("--mark needs a value")?
                    .to_string_lossy()
                    .into_owned(),
            ),
            Some("--echo") => echo = true,
            Some("--signal-at-mark") => {
                let sig = args.next().context("--signal-at-mark needs SIGNAL MARK")?;
                let sig: i32 = sig
                    .to_string_lossy()
                    .parse()
                    .context("--signal-at-mark: the signal is not a number")?;
                let mark = args.next().context("--signal-at-mark needs SIGNAL MARK")?;
                signal_at_mark = Some((mark.to_string_lossy().into_owned(), sig));
            }
            Some("--stdio") => {
                let v = args.next().context("--stdio needs a value")?;
                stdio = StdioMode::from_name(&v.to_string_lossy())?;
            }
            Some("--") => {
                program = args.next();
                break;
            }
            _ => bail!("unknown argument {a:?}"),
        }
    }
    let report = report.context("--report PATH is required")?;
    let program = program.context("no program after --")?;
    let spec = ExecSpec {
        program: program.into(),
        args: args.collect(),
        timeout,
        marks,
        echo_stdout: echo,
        stdio,
        signal_at_mark,
    };
    println!("@@MVH-BEGIN@@");
    let result = execute(&spec);
    println!("\n@@MVH-END@@");
    let rep = result?;
    let line = serde_json::to_string(&rep).context("cannot encode the report")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&report)
        .with_context(|| format!("cannot open the report file {}", report.to_string_lossy()))?;
    f.write_all(format!("\n{line}\n").as_bytes())
        .context("cannot write the report")?;
    f.flush()?;
    println!(
        "@@MVH-REPORTED status={:?} signal={:?} timed_out={} elapsed_ms={:.1}@@",
        rep.status, rep.signal, rep.timed_out, rep.elapsed_ms
    );
    Ok(())
}
