//! Nested machine slots: how many outer machines may run at once on this host.
//!
//! An outer machine is QEMU TCG: each of its vCPUs is a host thread at 100 % of a core, so
//! the host runs as many machines at once as it has cores for their vCPUs, and no more
//! (over-committed, TCG vCPUs of two machines time-share one core, every guest runs slower
//! and the watch's bounds come closer). The slots are `flock`s on files in a directory shared
//! by every checkout of the machine ([`slot_dir`]): a fresh clone's CI run and a
//! developer's test run count against the same cores.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// `MICROVM_NESTED_SLOTS`: outer machines at once (default: [`default_slots`]).
pub const ENV_SLOTS: &str = "MICROVM_NESTED_SLOTS";

/// Host cores / the outer machine's vCPUs, at least 1.
pub fn default_slots(outer_smp: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / outer_smp.max(1) as usize).max(1)
}

/// The number of slots: `MICROVM_NESTED_SLOTS` if set, else [`default_slots`].
pub fn slots(outer_smp: u32) -> Result<usize> {
    match std::env::var(ENV_SLOTS) {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => Ok(n),
            _ => bail!("{ENV_SLOTS}={v}: expected a number of outer machines from 1 to 64"),
        },
        _ => Ok(default_slots(outer_smp)),
    }
}

/// Where the slot files live: `${XDG_CACHE_HOME:-~/.cache}/microvm/nested` (machine-wide),
/// else the checkout's cache directory.
pub fn slot_dir(fallback: &Path) -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("microvm").join("nested"))
        .filter(|d| fs::create_dir_all(d).is_ok())
        .unwrap_or_else(|| fallback.to_path_buf())
}

/// One held slot: an exclusive `flock` on `slot-<i>.lock`, released on drop.
pub(super) struct Slot(fs::File);

impl Slot {
    /// Take a free slot of `count` in `dir`, waiting (and saying who holds them) when all are
    /// taken; writes `who` into the slot's file for the next waiter.
    pub(super) fn acquire(dir: &Path, count: usize, who: &str) -> Result<Slot> {
        let files = (0..count)
            .map(|i| {
                let path = dir.join(format!("slot-{i}.lock"));
                fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("cannot open lock file {}", path.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        let waited = Instant::now();
        let mut said = false;
        let mut f = loop {
            if let Some(i) = first_free(&files, dir)? {
                break files.into_iter().nth(i).expect("index of a file");
            }
            if !said {
                said = true;
                let holders: Vec<String> = (0..count)
                    .map(|i| {
                        let h = fs::read_to_string(dir.join(format!("slot-{i}.lock")))
                            .unwrap_or_default();
                        let h = h.trim();
                        if h.is_empty() {
                            "a run that did not say".to_string()
                        } else {
                            h.to_string()
                        }
                    })
                    .collect();
                eprintln!(
                    "harness: waiting for one of {count} nested machine slot(s) in {} (held by: {})",
                    dir.display(),
                    holders.join("; ")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if said {
            eprintln!(
                "harness: got a nested machine slot after {:.1?}",
                waited.elapsed()
            );
        }
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let _ = f.set_len(0);
        let _ = writeln!(
            f,
            "pid {} since unix time {since}: {who}",
            std::process::id()
        );
        Ok(Slot(f))
    }
}

/// The index of the first file whose lock this call took, if any was free.
fn first_free(files: &[fs::File], dir: &Path) -> Result<Option<usize>> {
    use std::os::unix::io::AsRawFd;
    for (i, f) in files.iter().enumerate() {
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(i));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock {
            bail!("flock {}/slot-{i}.lock failed: {err}", dir.display());
        }
    }
    Ok(None)
}

impl Drop for Slot {
    fn drop(&mut self) {
        use std::os::unix::io::AsRawFd;
        let _ = self.0.set_len(0);
        // SAFETY: unlocking our own descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exclusive_and_released_on_drop() {
        let dir = std::env::temp_dir().join(format!("mvh-slots-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let a = Slot::acquire(&dir, 2, "a").unwrap();
        let b = Slot::acquire(&dir, 2, "b").unwrap();
        // Both slots held: a third taker finds none free (a new open file description, as
        // another process would have).
        let probe: Vec<fs::File> = (0..2)
            .map(|i| fs::File::open(dir.join(format!("slot-{i}.lock"))).unwrap())
            .collect();
        assert_eq!(first_free(&probe, &dir).unwrap(), None);
        drop(a);
        assert_eq!(first_free(&probe, &dir).unwrap(), Some(0));
        drop(b);
        let _ = fs::remove_dir_all(&dir);
    }
}
