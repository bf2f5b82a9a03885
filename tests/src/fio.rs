//! fio for guest benchmarks: Debian's `fio` (dynamically linked, ~60 libraries, ~85 MB) is not in
//! the test initramfs, so [`initramfs_with_fio`] appends an uncompressed cpio with fio and its
//! `ldd` libraries to it (Linux unpacks concatenated archives). Used by `blk-bench` and
//! `microvm-lab`.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::artifacts::cache_dir;
use crate::cpio::CpioWriter;
use crate::nested;

/// Where fio must be installed on the host (`apt-get install fio`).
pub const FIO: &str = "/usr/bin/fio";

/// `base` (the test initramfs) with fio and its libraries appended, cached in the build cache by
/// the inputs' paths, sizes and times.
pub fn initramfs_with_fio(base: &Path) -> Result<PathBuf> {
    if !Path::new(FIO).is_file() {
        bail!("{FIO} missing: apt-get install fio");
    }
    let mut files = vec![PathBuf::from(FIO)];
    files.extend(nested::shared_libraries(Path::new(FIO))?);
    let mut key = format!("{}", base.display());
    for f in &files {
        let m = fs::metadata(f).with_context(|| format!("{}", f.display()))?;
        key.push_str(&format!(
            "{}:{}:{:?};",
            f.display(),
            m.len(),
            m.modified().ok()
        ));
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let out = cache_dir()?.join(format!("bench-initrd-v2-{:016x}.img", h.finish()));
    if out.is_file() {
        return Ok(out);
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let mut w = BufWriter::new(fs::File::create(&tmp)?);
    let base_bytes = fs::read(base)?;
    w.write_all(&base_bytes)?;
    // Linux reads an uncompressed cpio after a compressed one only at a 4-byte offset.
    w.write_all(&vec![0u8; (4 - base_bytes.len() % 4) % 4])?;
    let mut c = CpioWriter::new(w);
    let mut dirs = std::collections::BTreeSet::new();
    for f in &files {
        let name = f.to_string_lossy().trim_start_matches('/').to_string();
        let mut d = Path::new(&name).parent();
        let mut chain = Vec::new();
        while let Some(p) = d.filter(|p| !p.as_os_str().is_empty()) {
            chain.push(p.to_string_lossy().to_string());
            d = p.parent();
        }
        for p in chain.into_iter().rev() {
            if dirs.insert(p.clone()) {
                c.dir(&p)?;
            }
        }
        let real = f.canonicalize()?;
        c.host_file(&name, &real)?;
    }
    c.finish()?
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {}", tmp.display(), e.error()))?;
    fs::rename(&tmp, &out)?;
    Ok(out)
}
