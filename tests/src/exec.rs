//! Run one program with a timeout, capture stdout/stderr and time when given
//! marker strings first appear on stdout.
//!
//! The same code runs on the host (direct path) and inside the outer machine (the
//! `harness-exec` helper, nested path), so console-based timings are measured the
//! same way on both paths.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub timeout: Duration,
    /// Strings to look for on stdout; the time of first appearance is reported.
    pub marks: Vec<String>,
    /// Copy the child's stdout to our stdout as it arrives.
    pub echo_stdout: bool,
}

/// What happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecReport {
    pub stdout: String,
    pub stderr: String,
    /// Exit code, if the program exited normally.
    pub status: Option<i32>,
    /// Signal that ended the program, if any.
    pub signal: Option<i32>,
    /// The timeout expired and the program was killed.
    pub timed_out: bool,
    /// Wall time from spawn to exit, milliseconds.
    pub elapsed_ms: f64,
    /// Marker -> milliseconds from spawn to its first appearance on stdout.
    pub marks: BTreeMap<String, f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Spawn, wait (killing the program at the timeout), and report.
pub fn execute(spec: &ExecSpec) -> Result<ExecReport> {
    let start = Instant::now();
    let mut child = Command::new(&spec.program)
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", spec.program.display()))?;

    let mut out_pipe = child
        .stdout
        .take()
        .context("child stdout was not captured")?;
    let mut err_pipe = child
        .stderr
        .take()
        .context("child stderr was not captured")?;

    let marks_found: Arc<Mutex<BTreeMap<String, f64>>> = Arc::default();
    let wanted = spec.marks.clone();
    let echo = spec.echo_stdout;
    let found = Arc::clone(&marks_found);
    let out_thread = thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = match out_pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = ms(start.elapsed());
            let old_len = all.len();
            all.extend_from_slice(&buf[..n]);
            if echo {
                let mut so = std::io::stdout().lock();
                let _ = so.write_all(&buf[..n]);
                let _ = so.flush();
            }
            if let Ok(mut found) = found.lock() {
                for m in &wanted {
                    if found.contains_key(m) {
                        continue;
                    }
                    let from = old_len.saturating_sub(m.len());
                    if contains(&all[from..], m.as_bytes()) {
                        found.insert(m.clone(), now);
                    }
                }
            }
        }
        all
    });
    let err_thread = thread::spawn(move || {
        let mut all = Vec::new();
        let _ = err_pipe.read_to_end(&mut all);
        all
    });

    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for the child failed")? {
            break st;
        }
        if start.elapsed() >= spec.timeout {
            timed_out = true;
            log::warn!(
                "{} still running after {:?}: killing it",
                spec.program.display(),
                spec.timeout
            );
            let _ = child.kill();
            break child
                .wait()
                .context("waiting for the killed child failed")?;
        }
        thread::sleep(Duration::from_millis(2));
    };
    let elapsed_ms = ms(start.elapsed());
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    let marks = marks_found.lock().map(|m| m.clone()).unwrap_or_default();

    Ok(ExecReport {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        status: status.code(),
        signal: status.signal(),
        timed_out,
        elapsed_ms,
        marks,
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_status_and_marks() -> Result<()> {
        let rep = execute(&ExecSpec {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo one; sleep 0.2; echo MARK-B; echo err >&2; exit 3".into(),
            ],
            timeout: Duration::from_secs(10),
            marks: vec!["MARK-B".into(), "never".into()],
            echo_stdout: false,
        })?;
        assert_eq!(rep.stdout, "one\nMARK-B\n");
        assert_eq!(rep.stderr, "err\n");
        assert_eq!(rep.status, Some(3));
        assert!(!rep.timed_out);
        let t = rep.marks.get("MARK-B").copied().unwrap_or(0.0);
        assert!(t >= 150.0, "mark time {t} ms");
        assert!(!rep.marks.contains_key("never"));
        Ok(())
    }

    #[test]
    fn kills_at_timeout() -> Result<()> {
        let rep = execute(&ExecSpec {
            program: "/bin/sleep".into(),
            args: vec!["30".into()],
            timeout: Duration::from_millis(300),
            marks: vec![],
            echo_stdout: false,
        })?;
        assert!(rep.timed_out);
        assert_eq!(rep.status, None);
        assert!(rep.elapsed_ms < 5000.0);
        Ok(())
    }
}
