//! The outer machine's kernel (Debian's cloud kernel, found on the host or given), the modules
//! it loads for KVM, and the cached base initramfs: busybox, those modules and `/init`.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::artifacts::cache_dir;
use crate::cpio::CpioWriter;

pub(super) const BUSYBOX: &str = "/bin/busybox";
/// Modules loaded in the outer machine: (name, required).
const OUTER_MODULES: &[(&str, bool)] = &[
    ("irqbypass", true),
    ("kvm", true),
    ("kvm-amd", true),
    ("virtio_pci", false),
    ("virtio_blk", false),
    ("tun", false),
];
const OUTER_INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The kernel's console is ttyS2 (a file of kernel messages alone); user space writes to
# ttyS0 (QEMU's stdout). ttyS2 shares IRQ 4 with ttyS0: once init lets go of it (here), it
# is never opened again and the kernel writes it by polling, so ttyS0 keeps its interrupts.
exec </dev/null >/dev/ttyS0 2>&1
# ptys for programs run on a terminal (harness-exec --stdio terminal)
mkdir -p /dev/pts
mount -t devpts -o ptmxmode=0666 devpts /dev/pts
# /tmp stays on the initramfs root: carried files keep their host paths, which may be
# under /tmp (a checkout in /tmp), and a tmpfs mounted there would hide them.
mkdir -p /tmp /run
# Heartbeat every second on ttyS1 (beside harness-exec's report), at the highest priority:
# the harness declares the machine frozen when it stops.
stty -F /dev/ttyS1 raw -echo 2>/dev/null
sh -c 'n=0; while :; do n=$((n+1)); read -r up _ </proc/uptime; echo "@@MVH-HB $n $up@@"; sleep 1; done' \
    </dev/null >/dev/ttyS1 2>&1 &
echo $! >/run/heartbeat.pid
renice -n -20 -p "$(cat /run/heartbeat.pid)" >/dev/null 2>&1
for m in $(cat /modules.order); do
    insmod "/modules/$m" || echo "outer-init: insmod $m failed"
done
[ -c /dev/kvm ] || echo "outer-init: no /dev/kvm after loading the kvm modules"
# What the outer kernel made of the CPU model (the nested guests get KVM's view of it).
model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
flags=$(sed -n 's/^flags[[:space:]]*: //p' /proc/cpuinfo | head -n 1 | tr ' ' '\n' \
    | grep -E '^(svm|npt|avx|avx2|xsave|xsaveopt|xsavec|xsaves)$' | tr '\n' ' ')
xw=no; dmesg | grep -q 'XSAVE consistency problem' && xw=yes
fpu=$(dmesg | sed -n 's/^\[[^]]*\] //; s/^x86\/fpu: //p' | tr '\n' ';')
echo "@@MVH-OUTER-CPU $model | ${flags% } | xsave-warning=$xw | $fpu@@"
# Byte-exact console: no \n -> \r\n on the outer serial ports.
stty -F /dev/ttyS0 -opost 2>/dev/null
ip link set lo up 2>/dev/null
if [ -x /run.sh ]; then
    /run.sh
    echo "outer-init: run.sh exited with $?"
else
    echo "outer-init: no /run.sh"
fi
sync
poweroff -f
"#;

/// The Debian kernel booted as the outer machine, with its module tree.
#[derive(Debug, Clone)]
pub struct OuterKernel {
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
    pub version: String,
}

/// Compare version strings numerically where they are numeric ("6.1.0-10" < "6.1.0-9" is false).
pub(crate) fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split(|c: char| !c.is_ascii_alphanumeric())
        .map(|p| (p.parse::<u64>().unwrap_or(0), p.to_string()))
        .collect()
}

/// The module tree of kernel `version` booted from `vmlinuz`: `/lib/modules/<version>`, or, for
/// a kernel package unpacked somewhere (`dpkg -x` then `depmod -b ROOT VERSION`),
/// `ROOT/lib/modules/<version>` or `ROOT/usr/lib/modules/<version>` beside `ROOT/boot/vmlinuz-*`.
fn modules_dir(vmlinuz: &Path, version: &str) -> Option<PathBuf> {
    let mut dirs = vec![Path::new("/lib/modules").join(version)];
    if let Some(root) = vmlinuz.parent().and_then(Path::parent) {
        dirs.push(root.join("lib/modules").join(version));
        dirs.push(root.join("usr/lib/modules").join(version));
    }
    dirs.into_iter().find(|d| d.join("modules.dep").is_file())
}

/// Find `/boot/vmlinuz-*-cloud-amd64` (or any `/boot/vmlinuz-*`) with its modules
/// installed; `MICROVM_OUTER_KERNEL=/boot/vmlinuz-VER` chooses one.
pub fn find_outer_kernel() -> Result<OuterKernel> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("MICROVM_OUTER_KERNEL") {
        candidates.push(PathBuf::from(p));
    } else {
        let entries = fs::read_dir("/boot").context("cannot list /boot")?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("vmlinuz-") {
                candidates.push(e.path());
            }
        }
    }
    let mut found = Vec::new();
    for c in candidates {
        let name = c
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(version) = name.strip_prefix("vmlinuz-") else {
            continue;
        };
        if let Some(modules) = modules_dir(&c, version) {
            found.push(OuterKernel {
                vmlinuz: c.clone(),
                modules,
                version: version.to_string(),
            });
        }
    }
    // Prefer the cloud flavour (small, virtio built for VMs), newest version.
    found.sort_by_key(|k| (k.version.ends_with("-cloud-amd64"), version_key(&k.version)));
    found.pop().context(
        "no /boot/vmlinuz-* with modules in /lib/modules/<version>: \
         apt-get install linux-image-cloud-amd64",
    )
}

/// Module files (deps first) for [`OUTER_MODULES`], from modules.dep.
pub(super) fn resolve_modules(kernel: &OuterKernel) -> Result<Vec<PathBuf>> {
    let dep_file = kernel.modules.join("modules.dep");
    let deps = fs::read_to_string(&dep_file)
        .with_context(|| format!("cannot read {}", dep_file.display()))?;
    let mut table = Vec::new();
    for line in deps.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        let deps: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
        table.push((module.to_string(), deps));
    }
    let module_name = |path: &str| -> String {
        let base = path.rsplit('/').next().unwrap_or(path);
        let base = base.split(".ko").next().unwrap_or(base);
        base.replace('-', "_")
    };
    let mut order: Vec<String> = Vec::new();
    for (name, required) in OUTER_MODULES {
        let want = name.replace('-', "_");
        let Some((path, deps)) = table.iter().find(|(m, _)| module_name(m) == want) else {
            if *required {
                bail!(
                    "kernel module {name} not found in {} (the outer machine needs it for /dev/kvm)",
                    dep_file.display()
                );
            }
            log::info!(
                "module {name} not in {}: assuming built in",
                dep_file.display()
            );
            continue;
        };
        // modules.dep lists dependencies so that the last one must be loaded first.
        for d in deps.iter().rev().chain(std::iter::once(path)) {
            if !order.contains(d) {
                order.push(d.clone());
            }
        }
    }
    Ok(order.iter().map(|m| kernel.modules.join(m)).collect())
}

/// A module's bytes, decompressing .ko.xz / .ko.zst / .ko.gz with the host tools.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some(("xz", "apt-get install xz-utils"))
    } else if name.ends_with(".zst") {
        Some(("zstd", "apt-get install zstd"))
    } else if name.ends_with(".gz") {
        Some(("gzip", "apt-get install gzip"))
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("cannot read {}", path.display())),
        Some((tool, hint)) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| {
                    format!(
                        "cannot run {tool} to decompress {} ({hint})",
                        path.display()
                    )
                })?;
            if !out.status.success() {
                bail!(
                    "{tool} -dc {} failed: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(out.stdout)
        }
    }
}

fn module_file_name(path: &Path) -> String {
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match base.find(".ko") {
        Some(i) => format!("{}.ko", &base[..i]),
        None => base,
    }
}

/// Build (or reuse) the base part of the outer initramfs.
pub fn base_initramfs(kernel: &OuterKernel) -> Result<PathBuf> {
    let busybox = fs::read(BUSYBOX)
        .with_context(|| format!("cannot read {BUSYBOX}: apt-get install busybox-static"))?;
    let modules = resolve_modules(kernel)?;
    let mut module_data = Vec::new();
    for m in &modules {
        module_data.push((module_file_name(m), read_module(m)?));
    }
    let mut h = DefaultHasher::new();
    OUTER_INIT.hash(&mut h);
    busybox.hash(&mut h);
    kernel.version.hash(&mut h);
    module_data.hash(&mut h);
    let out = cache_dir()?.join(format!("outer-base-{:016x}.cpio", h.finish()));
    if out.is_file() {
        return Ok(out);
    }

    let list = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .with_context(|| format!("cannot run {BUSYBOX} --list-full"))?;
    if !list.status.success() {
        bail!("{BUSYBOX} --list-full failed: is it busybox-static?");
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let file =
        fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = CpioWriter::new(BufWriter::new(file));
    for d in ["dev", "proc", "sys", "tmp", "run", "root", "etc", "modules"] {
        w.dir(d)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.file("bin/busybox", 0o755, &busybox)?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        w.symlink(applet, "/bin/busybox")?;
    }
    w.file("init", 0o755, OUTER_INIT.as_bytes())?;
    let mut order = String::new();
    for (name, data) in &module_data {
        w.file(&format!("modules/{name}"), 0o644, data)?;
        order.push_str(name);
        order.push('\n');
    }
    w.file("modules.order", 0o644, order.as_bytes())?;
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    w.finish()?
        .into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", tmp.display(), e.error()))?;
    fs::rename(&tmp, &out)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))?;
    log::info!("built outer base initramfs {}", out.display());
    Ok(out)
}

/// Shared libraries of a dynamically linked program (`ldd`), including the loader.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("cannot run ldd (apt-get install libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new()); // static
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            bail!(
                "{}: shared library missing on the host: {line}",
                program.display()
            );
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}
