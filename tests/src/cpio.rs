//! Minimal writer for the `newc` cpio format the Linux initramfs unpacker reads.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() {
            bail!("empty cpio entry name");
        }
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            namesize,
            0
        );
        self.ino += 1;
        let w = &mut self.out;
        w.write_all(header.as_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&[0])?;
        pad(w, 110 + namesize)?;
        w.write_all(data)?;
        pad(w, data.len())?;
        Ok(())
    }

    /// Add a directory and any missing parents.
    pub fn dir(&mut self, path: &str) -> Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return Ok(());
        }
        let mut acc = String::new();
        for part in path.split('/') {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if self.dirs.insert(acc.clone()) {
                let name = acc.clone();
                self.entry(&name, S_IFDIR | 0o755, (0, 0), &[])?;
            }
        }
        Ok(())
    }

    fn parent(&mut self, path: &str) -> Result<()> {
        if let Some((parent, _)) = path.trim_matches('/').rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(())
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.parent(path)?;
        self.entry(path, S_IFREG | (perm & 0o7777), (0, 0), data)
    }

    /// Add the host file `host` (following symlinks) at `path`, keeping its permissions.
    pub fn host_file(&mut self, path: &str, host: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data =
            std::fs::read(host).with_context(|| format!("cannot read {}", host.display()))?;
        let perm = std::fs::metadata(host)
            .with_context(|| format!("cannot stat {}", host.display()))?
            .permissions()
            .mode();
        self.file(path, perm, &data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.parent(path)?;
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.parent(path)?;
        self.entry(path, S_IFCHR | perm, (major, minor), &[])
    }

    pub fn finish(mut self) -> Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn pad<W: Write>(w: &mut W, len: usize) -> Result<()> {
    let rem = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..rem])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_lists_with_gnu_cpio() -> Result<()> {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/a/b/c.txt", 0o644, b"hello")?;
        w.symlink("/bin/sh", "busybox")?;
        w.char_dev("/dev/console", 0o600, 5, 1)?;
        let data = w.finish()?;
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("cpio must be installed (apt-get install cpio)")?;
        child.stdin.take().context("no stdin")?.write_all(&data)?;
        let out = child.wait_with_output()?;
        assert!(out.status.success());
        let list = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = list.lines().collect();
        assert_eq!(
            names,
            [
                "a",
                "a/b",
                "a/b/c.txt",
                "bin",
                "bin/sh",
                "dev",
                "dev/console"
            ]
        );
        Ok(())
    }
}
