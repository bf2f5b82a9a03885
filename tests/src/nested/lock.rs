//! The nested machine lock: one outer machine at a time, since each uses both cores.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// An exclusive lock (flock) so nested boots, which each use both cores, run one at a time.
pub(super) struct FileLock(fs::File);

impl FileLock {
    /// Wait for the lock (saying who holds it when it is taken), then write `who` into the
    /// lock file for the next waiter.
    pub(super) fn acquire(path: &Path, who: &str) -> Result<FileLock> {
        use std::os::unix::io::AsRawFd;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        let mut rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
            let holder = fs::read_to_string(path).unwrap_or_default();
            let holder = holder.trim();
            eprintln!(
                "harness: waiting for the nested machine lock {} (held by {})",
                path.display(),
                if holder.is_empty() {
                    "a run that did not say"
                } else {
                    holder
                }
            );
            let waited = Instant::now();
            // SAFETY: as above.
            rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                eprintln!(
                    "harness: got the nested machine lock after {:.1?}",
                    waited.elapsed()
                );
            }
        }
        if rc != 0 {
            bail!(
                "flock {} failed: {}",
                path.display(),
                std::io::Error::last_os_error()
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
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::unix::io::AsRawFd;
        let _ = self.0.set_len(0);
        // SAFETY: unlocking our own descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}
