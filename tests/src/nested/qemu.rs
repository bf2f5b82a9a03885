//! The outer machine's QEMU process: start it, read its serial ports as they grow, watch it
//! ([`super::watch`]) and stop it when it panicked, froze or overran.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::config::OuterConfig;
use super::watch::{count_heartbeats, kernel_panicked, kernel_text, Stop, Watch};

/// One boot of the outer machine.
pub(super) struct Attempt {
    pub(super) status: String,
    /// Set when the harness stopped the machine itself (and why).
    pub(super) stop: Option<Stop>,
    pub(super) total: Duration,
    pub(super) console: String,
    pub(super) kernel_log: String,
    pub(super) heartbeats: u64,
    pub(super) qemu_err: String,
    /// When the harness stopped a live machine: its QEMU threads' CPU use just before.
    pub(super) qemu_activity: Option<String>,
    /// Host time to the outer machine running /run.sh.
    pub(super) boot: Option<Duration>,
}

/// Start QEMU and watch it until it ends or the harness stops it (see watch.rs).
pub(super) fn run_outer(
    qemu: &mut Command,
    config: &OuterConfig,
    echo: bool,
    [report_file, kernel_file]: [&Path; 2],
    limit: Duration,
) -> Result<Attempt> {
    let start = Instant::now();
    let mut child = qemu.spawn().with_context(|| {
        format!(
            "cannot start {}: apt-get install qemu-system-x86",
            config.qemu.display()
        )
    })?;
    let mut out = child.stdout.take().context("qemu stdout not captured")?;
    let mut err = child.stderr.take().context("qemu stderr not captured")?;
    let ready_at: Arc<Mutex<Option<Duration>>> = Arc::default();
    let last_output: Arc<Mutex<Duration>> = Arc::default();
    let ready = Arc::clone(&ready_at);
    let last_out = Arc::clone(&last_output);
    let reader = thread::spawn(move || {
        let mut all: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        let mut echoing = false;
        let mut echoed_to = 0usize;
        loop {
            let n = match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Ok(mut t) = last_out.lock() {
                *t = start.elapsed();
            }
            all.extend_from_slice(&buf[..n]);
            if let Ok(mut r) = ready.lock() {
                if r.is_none() && contains(&all, b"@@MVH-OUTER-READY") {
                    *r = Some(start.elapsed());
                    if echo {
                        // Progress for a person watching (guest-run, demo.sh); "\r\n"
                        // because their terminal may be in raw mode by now.
                        eprint!(
                            "harness: outer machine up after {:.1?}; starting the program\r\n",
                            start.elapsed()
                        );
                    }
                }
            }
            if echo {
                // Show what the program prints: the bytes between the helper's markers.
                if !echoing {
                    if let Some(i) = find(&all, b"@@MVH-BEGIN@@\n") {
                        echoing = true;
                        echoed_to = i + b"@@MVH-BEGIN@@\n".len();
                    }
                }
                if echoing {
                    // Up to the end marker; without one, all but a tail that could be its
                    // beginning (holding back more would stall an interactive prompt).
                    let end = find(&all[echoed_to..], b"@@MVH-END@@")
                        .map(|i| echoed_to + i)
                        .unwrap_or_else(|| {
                            all.len() - partial_marker_len(&all[echoed_to..], b"@@MVH-END@@")
                        });
                    if end > echoed_to {
                        let mut so = std::io::stdout().lock();
                        let _ = so.write_all(&all[echoed_to..end]);
                        let _ = so.flush();
                        echoed_to = end;
                    }
                }
            }
        }
        all
    });
    let err_reader = thread::spawn(move || {
        let mut all = Vec::new();
        let _ = err.read_to_end(&mut all);
        all
    });

    let mut watch = Watch::new(config.freeze_after);
    // ttyS1 (heartbeats, report) and ttyS2 (kernel messages) as QEMU writes them.
    let mut ttys1 = FileTail::new(report_file);
    let mut ttys2 = FileTail::new(kernel_file);
    let mut stop = None;
    let mut qemu_activity = None;
    let mut last_check = Duration::ZERO;
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for qemu failed")? {
            break st;
        }
        let now = start.elapsed();
        if now >= last_check + Duration::from_millis(250) {
            last_check = now;
            watch.heartbeats(count_heartbeats(&ttys1.read()), now);
            if kernel_panicked(&ttys2.read()) {
                watch.panicked(now);
            }
            if let Ok(t) = last_output.lock() {
                watch.console(*t);
            }
            if let Some(s) = watch.check(now, limit) {
                log::warn!("stopping the outer machine: {s:?}");
                if !matches!(s, Stop::Panicked) {
                    // Spinning vCPUs or a stuck QEMU? Its threads' CPU use says which.
                    qemu_activity = qemu_threads_activity(child.id());
                }
                stop = Some(s);
                let _ = child.kill();
                break child.wait().context("waiting for the killed qemu failed")?;
            }
        }
        thread::sleep(Duration::from_millis(20));
    };
    let total = start.elapsed();
    let console = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    let qemu_err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    let boot = ready_at.lock().ok().and_then(|r| *r);
    Ok(Attempt {
        status: status.to_string(),
        stop,
        total,
        console,
        kernel_log: kernel_text(&ttys2.read()),
        heartbeats: count_heartbeats(&ttys1.read()),
        qemu_err,
        qemu_activity,
        boot,
    })
}

/// Per thread of process `pid`: (thread id, name, state, CPU ticks used), from /proc.
fn thread_ticks(pid: u32) -> Vec<(String, String, char, u64)> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let Ok(stat) = fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        if let Some((name, state, ticks)) = parse_task_stat(&stat) {
            out.push((
                t.file_name().to_string_lossy().into_owned(),
                name,
                state,
                ticks,
            ));
        }
    }
    out.sort();
    out
}

/// `/proc/PID/task/TID/stat`: the name (in parentheses, may hold anything), the state, and
/// utime + stime (fields 14 and 15).
fn parse_task_stat(stat: &str) -> Option<(String, char, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, state, utime + stime))
}

/// How busy QEMU's threads are over one second (for a frozen machine: vCPUs spinning, or
/// QEMU itself stuck?), e.g. `199% CPU: CPU 0/TCG R 99%, CPU 1/TCG R 100%, ...`.
fn qemu_threads_activity(pid: u32) -> Option<String> {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let before = thread_ticks(pid);
    let interval = Duration::from_secs(1);
    thread::sleep(interval);
    let after = thread_ticks(pid);
    if after.is_empty() {
        return None;
    }
    let mut total = 0;
    let mut threads = Vec::new();
    for (tid, name, state, ticks) in &after {
        let was = before.iter().find(|b| &b.0 == tid).map_or(*ticks, |b| b.3);
        let pct = ticks.saturating_sub(was) * 100 / hz;
        total += pct;
        threads.push(format!("{name} {state} {pct}%"));
    }
    Some(format!(
        "{total}% CPU over {interval:?}: {}",
        threads.join(", ")
    ))
}

/// A file QEMU appends to (a `-serial file:`), read as it grows.
struct FileTail<'a> {
    path: &'a Path,
    file: Option<fs::File>,
    data: Vec<u8>,
}

impl<'a> FileTail<'a> {
    fn new(path: &'a Path) -> FileTail<'a> {
        FileTail {
            path,
            file: None,
            data: Vec::new(),
        }
    }

    /// Everything written so far.
    fn read(&mut self) -> String {
        if self.file.is_none() {
            self.file = fs::File::open(self.path).ok();
        }
        if let Some(f) = self.file.as_mut() {
            let _ = f.read_to_end(&mut self.data);
        }
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of the longest tail of `hay` that is a proper beginning of `marker`.
fn partial_marker_len(hay: &[u8], marker: &[u8]) -> usize {
    (1..marker.len().min(hay.len() + 1))
        .rev()
        .find(|&n| hay.ends_with(&marker[..n]))
        .unwrap_or(0)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_possible_marker_start_is_held_back() {
        let m = b"@@MVH-END@@";
        assert_eq!(partial_marker_len(b"/ # ", m), 0);
        assert_eq!(partial_marker_len(b"text@", m), 1);
        assert_eq!(partial_marker_len(b"text@@MVH-EN", m), 8);
        assert_eq!(partial_marker_len(b"", m), 0);
        assert_eq!(partial_marker_len(b"@@MVH-END@", m), 10);
    }

    #[test]
    fn parses_task_stat_lines() {
        let stat =
            "4242 (CPU 1/TCG) R 4200 4200 4200 0 -1 4194368 9 0 0 0 1234 56 0 0 20 0 5 0 100 0 0";
        assert_eq!(
            parse_task_stat(stat),
            Some(("CPU 1/TCG".to_string(), 'R', 1290))
        );
        // A name with parentheses and spaces.
        let odd = "7 (a) b (c)) S 1 1 1 0 -1 0 0 0 0 0 3 4 0 0";
        assert_eq!(parse_task_stat(odd), Some(("a) b (c)".to_string(), 'S', 7)));
        assert_eq!(parse_task_stat("garbage"), None);
    }
}
