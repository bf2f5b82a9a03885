//! A host program run inside the guest: [`initramfs_with_program`] appends an uncompressed cpio
//! with the program, its `ldd` libraries and test scripts to the test initramfs (Linux unpacks
//! concatenated archives), as [`crate::fio`] does for fio. Used by the hostile-guest suite
//! (`tests/tests/hostile.rs`).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::artifacts::cache_dir;
use crate::cpio::CpioWriter;
use crate::nested;

/// `base` with `program` at `/usr/bin/<its file name>`, its shared libraries at their host
/// paths, and each `(name, text)` of `scripts` at `/tests/<name>.sh` (what the init's
/// `microvm.test=<name>` runs). Written to the build cache under `tag` (rewritten each call).
pub fn initramfs_with_program(
    base: &Path,
    program: &Path,
    scripts: &[(&str, &str)],
    tag: &str,
) -> Result<PathBuf> {
    let name = program
        .file_name()
        .context("program path has no file name")?
        .to_string_lossy()
        .into_owned();
    let out = cache_dir()?.join(format!("{tag}-initrd-{}.img", std::process::id()));
    let mut w = BufWriter::new(
        fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?,
    );
    let base_bytes = fs::read(base).with_context(|| format!("{}", base.display()))?;
    w.write_all(&base_bytes)?;
    // Linux reads an uncompressed cpio after a compressed one only at a 4-byte offset.
    w.write_all(&vec![0u8; (4 - base_bytes.len() % 4) % 4])?;
    let mut c = CpioWriter::new(w);
    c.host_file(&format!("usr/bin/{name}"), program)?;
    for lib in nested::shared_libraries(program)? {
        let real = lib.canonicalize()?;
        c.host_file(lib.to_string_lossy().trim_start_matches('/'), &real)?;
    }
    for (script, text) in scripts {
        c.file(&format!("tests/{script}.sh"), 0o755, text.as_bytes())?;
    }
    c.finish()?
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {}", out.display(), e.error()))?;
    Ok(out)
}
