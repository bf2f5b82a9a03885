//! Build inputs the tests need: the guest kernel and initramfs (resources/ scripts,
//! cached by content hash) and release binaries (`cargo build --release`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Repository root (`MICROVM_REPO_ROOT` overrides the compile-time location).
pub fn repo_root() -> PathBuf {
    if let Some(p) = std::env::var_os("MICROVM_REPO_ROOT") {
        return PathBuf::from(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cache directory for harness-built files (`build/cache`, git-ignored).
pub fn cache_dir() -> Result<PathBuf> {
    let dir = repo_root().join("build").join("cache");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Guest kernel and initramfs built from `resources/`.
#[derive(Debug, Clone)]
pub struct KernelArtifacts {
    pub bzimage: PathBuf,
    pub vmlinux: PathBuf,
    pub config: PathBuf,
    pub initramfs: PathBuf,
    /// sha256 (hex) of `/payload.bin` inside the initramfs.
    pub payload_sha256: String,
}

impl KernelArtifacts {
    /// `--kernel BZIMAGE --initrd INITRAMFS --cmdline CMDLINE`: how a guest test's run starts.
    pub fn boot_args(&self, cmdline: impl Into<String>) -> Vec<crate::Arg> {
        use crate::Arg;
        vec![
            Arg::s("--kernel"),
            Arg::file(&self.bzimage),
            Arg::s("--initrd"),
            Arg::file(&self.initramfs),
            Arg::s("--cmdline"),
            Arg::s(cmdline),
        ]
    }
}

/// Run a resources/ build script; it prints its output directory as its last stdout line.
fn run_resource_script(name: &str, args: &[&str]) -> Result<PathBuf> {
    let script = repo_root().join("resources").join(name);
    log::info!("running {} {}", script.display(), args.join(" "));
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}); its messages are above. Run it by hand to see the whole log.",
            script.display(),
            args.join(" "),
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .with_context(|| format!("{} printed no output directory", script.display()))?;
    Ok(PathBuf::from(dir))
}

fn existing(p: PathBuf) -> Result<PathBuf> {
    if !p.is_file() {
        bail!("expected build output {} is missing", p.display());
    }
    Ok(p)
}

/// Build (or reuse from the cache) the guest kernel and initramfs.
pub fn kernel_artifacts() -> Result<KernelArtifacts> {
    kernel_artifacts_of(None)
}

/// A variant of the guest kernel (`resources/build-kernel.sh --variant NAME`: the main
/// fragment plus the overlay `resources/kernel/NAME.config`, e.g. `noacpi`), built or reused
/// from the cache, with the same initramfs.
pub fn kernel_variant_artifacts(variant: &str) -> Result<KernelArtifacts> {
    kernel_artifacts_of(Some(variant))
}

/// The test initramfs alone (`resources/build-initramfs.sh`, cached), for guests whose
/// kernel does not come from resources/ ([`debian_cloud_kernel`]).
pub fn guest_initramfs() -> Result<PathBuf> {
    let idir =
        run_resource_script("build-initramfs.sh", &[]).context("building the guest initramfs")?;
    existing(idir.join("initramfs.cpio.gz"))
}

/// The initramfs of the 32-bit guest test (`resources/build-init32.sh`, cached): a static
/// i386 `/init` that prints `I386-*` lines and powers off. A 32-bit kernel cannot run the
/// busybox initramfs (64-bit programs).
pub fn init32_initramfs() -> Result<PathBuf> {
    let dir = run_resource_script("build-init32.sh", &[])
        .context("building the 32-bit guest's initramfs")?;
    existing(dir.join("initramfs.cpio.gz"))
}

fn kernel_artifacts_of(variant: Option<&str>) -> Result<KernelArtifacts> {
    let kdir = match variant {
        None => run_resource_script("build-kernel.sh", &[]).context("building the guest kernel")?,
        Some(v) => run_resource_script("build-kernel.sh", &["--variant", v])
            .with_context(|| format!("building the guest kernel variant '{v}'"))?,
    };
    let idir =
        run_resource_script("build-initramfs.sh", &[]).context("building the guest initramfs")?;
    let sha_file = existing(idir.join("payload.sha256"))?;
    let payload_sha256 = std::fs::read_to_string(&sha_file)
        .with_context(|| format!("cannot read {}", sha_file.display()))?
        .trim()
        .to_string();
    Ok(KernelArtifacts {
        bzimage: existing(kdir.join("bzImage"))?,
        vmlinux: existing(kdir.join("vmlinux"))?,
        config: existing(kdir.join("config"))?,
        initramfs: existing(idir.join("initramfs.cpio.gz"))?,
        payload_sha256,
    })
}

/// Debian's stock cloud kernel (`/boot/vmlinuz-<version>-cloud-amd64`, package
/// `linux-image-cloud-amd64`, the one the nested path also boots as its outer machine), the
/// newest installed; `MICROVM_DEBIAN_KERNEL=/path/to/vmlinuz` chooses another. Nothing is
/// rebuilt: it is a compressed bzImage with most drivers as modules (none of which the test
/// initramfs loads), so there is no PVH `vmlinux` and no pvpanic.
pub fn debian_cloud_kernel() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MICROVM_DEBIAN_KERNEL") {
        return existing(PathBuf::from(p))
            .context("MICROVM_DEBIAN_KERNEL points to a missing file");
    }
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let entries = std::fs::read_dir("/boot").context("cannot list /boot")?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(version) = name
            .strip_prefix("vmlinuz-")
            .filter(|v| v.ends_with("-cloud-amd64"))
        {
            found.push((version.to_string(), e.path()));
        }
    }
    found.sort_by_key(|(v, _)| crate::nested::outer_image::version_key(v));
    let (_, path) = found.pop().context(
        "Debian's cloud kernel is not installed (no /boot/vmlinuz-*-cloud-amd64): \
         apt-get install linux-image-cloud-amd64 (resources/install-deps.sh does), \
         or set MICROVM_DEBIAN_KERNEL=/path/to/vmlinuz",
    )?;
    // /boot/vmlinuz-* is readable by root only on some systems: say so here, not as a
    // loader error later.
    std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(path)
}

/// The cargo target directory (CARGO_TARGET_DIR, else `<repo>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        }
        None => repo_root().join("target"),
    }
}

/// `cargo build --release -p PACKAGE --bin BIN`, returning the binary's path.
pub fn cargo_release_binary(package: &str, bin: &str) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = target_dir();
    log::info!("cargo build --release -p {package} --bin {bin}");
    let status = Command::new(&cargo)
        .current_dir(repo_root())
        .args(["build", "--release", "-p", package, "--bin", bin])
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("cannot run {}", Path::new(&cargo).display()))?;
    if !status.success() {
        bail!("cargo build --release -p {package} --bin {bin} failed ({status}); compiler output is above");
    }
    existing(target.join("release").join(bin))
}

/// The `microvm` binary: `MICROVM_BIN` if set, else `cargo build --release -p vmm`.
pub fn microvm_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MICROVM_BIN") {
        return existing(PathBuf::from(p)).context("MICROVM_BIN points to a missing file");
    }
    cargo_release_binary("vmm", "microvm")
}

/// The `harness-exec` helper run inside the outer machine on the nested path.
pub fn harness_exec_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MICROVM_HARNESS_EXEC") {
        return existing(PathBuf::from(p)).context("MICROVM_HARNESS_EXEC points to a missing file");
    }
    cargo_release_binary("microvm-tests", "harness-exec")
}
