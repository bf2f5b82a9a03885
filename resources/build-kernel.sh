#!/bin/bash
# Build the microvm guest kernel (bzImage + vmlinux) from Debian's linux-source-6.1.
#
# usage: build-kernel.sh [--variant NAME]
#
# Without --variant: tinyconfig + resources/kernel/microvm-x86_64-6.1.config.
# With --variant NAME: the same, then the overlay fragment resources/kernel/NAME.config
# on top (its lines replace the main fragment's for the same options, e.g. `noacpi`:
# CONFIG_ACPI off).
#
# Output: build/cache/kernel-<hash>/{bzImage,vmlinux,config} (a variant:
# build/cache/kernel-NAME-<hash>/), hash = sha256 of the config fragment(s), the variant
# name, this script, the source package version and the compiler's version. The output
# directory is the only thing printed on stdout; a second run with the same inputs does
# nothing.
#
# Finished kernels are also kept in a store shared by every clone on the machine,
# $MICROVM_KERNEL_STORE (default ${XDG_CACHE_HOME:-~/.cache}/microvm/kernels; `off`: none):
# a fresh clone with the same inputs copies the kernel from there instead of compiling it
# again (about 4-5 minutes of both cores per kernel on a 2-core machine).
# Progress goes to stderr, the full make log to build/work/kernel-[NAME-]<hash>/build.log.
#  #@arch
# An overlay may name another architecture with a line `# build-kernel: ARCH=NAME` (`i386`:  #@arch
# a 32-bit kernel; the default is x86_64). The lines that do this end in '#@arch' and are left  #@arch
# out of the hash of kernels whose overlay names no ARCH, so adding them changed no existing  #@arch
# kernel's hash (nor every machine's store): only lines that do nothing for such a build may  #@arch
# carry that mark. A kernel whose overlay names an ARCH has them in its hash.  #@arch
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FRAGMENT=$ROOT/resources/kernel/microvm-x86_64-6.1.config
SELF=$ROOT/resources/build-kernel.sh
SRC_TAR=/usr/src/linux-source-6.1.tar.xz

die() { echo "build-kernel: error: $*" >&2; exit 1; }
log() { echo "build-kernel: $*" >&2; }

VARIANT=
OVERLAY=
while [ $# -gt 0 ]; do
    case "$1" in
        --variant)
            [ $# -ge 2 ] || die "--variant needs a name (a file resources/kernel/NAME.config)"
            VARIANT=$2; shift 2 ;;
        --variant=*) VARIANT=${1#--variant=}; shift ;;
        *) die "unknown argument '$1' (usage: build-kernel.sh [--variant NAME])" ;;
    esac
done
if [ -n "$VARIANT" ]; then
    case "$VARIANT" in
        *[!a-z0-9_-]*) die "variant name '$VARIANT': use only a-z, 0-9, '_' and '-'" ;;
    esac
    OVERLAY=$ROOT/resources/kernel/$VARIANT.config
    [ -f "$OVERLAY" ] || die "variant '$VARIANT': no overlay fragment $OVERLAY"
    KARCH=$(sed -n 's/^# build-kernel: ARCH=\(.*\)$/\1/p' "$OVERLAY")  #@arch
    case "${KARCH:-x86_64}" in  #@arch
        x86_64|i386) ;;  #@arch
        *) die "$OVERLAY: ARCH=$KARCH: only x86_64 and i386 are supported" ;;  #@arch
    esac  #@arch
fi

[ -f "$SRC_TAR" ] || die "$SRC_TAR missing: apt-get install linux-source-6.1"
for tool in make gcc flex bison bc sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' not found: apt-get install build-essential flex bison bc libelf-dev"
done
VERSION=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null) \
    || die "cannot read the version of package linux-source-6.1"

# The variant's name and overlay count only for a variant: the main kernel's hash does not
# change with the overlays beside it.
SELF=$(mktemp /tmp/build-kernel.hashed.XXXXXX)  #@arch
grep -v '#@arch$' "$ROOT/resources/build-kernel.sh" > "$SELF"  #@arch
# A variant that names an ARCH depends on the marked lines too: they count in its hash.  #@arch
[ -z "${KARCH:-}" ] || grep '#@arch$' "$ROOT/resources/build-kernel.sh" >> "$SELF"  #@arch
HASH=$( { cat "$FRAGMENT" "$SELF"; echo "linux-source-6.1 $VERSION"; gcc --version | head -n 1;
          if [ -n "$VARIANT" ]; then echo "variant $VARIANT"; cat "$OVERLAY"; fi; } \
        | sha256sum | cut -c1-16)
rm -f "$SELF"  #@arch
NAME=kernel-${VARIANT:+$VARIANT-}$HASH
CACHE=$ROOT/build/cache
OUT=$CACHE/$NAME
mkdir -p "$CACHE"

if [ -f "$OUT/bzImage" ] && [ -f "$OUT/vmlinux" ] && [ -f "$OUT/config" ]; then
    echo "$OUT"
    exit 0
fi

# One build at a time (tests may call this concurrently).
exec 9>"$CACHE/.kernel.lock"
flock 9
if [ -f "$OUT/bzImage" ] && [ -f "$OUT/vmlinux" ] && [ -f "$OUT/config" ]; then
    echo "$OUT"
    exit 0
fi

STORE=${MICROVM_KERNEL_STORE:-${XDG_CACHE_HOME:-$HOME/.cache}/microvm/kernels}
complete() { [ -f "$1/bzImage" ] && [ -f "$1/vmlinux" ] && [ -f "$1/config" ]; }
if [ "$STORE" != off ] && complete "$STORE/$NAME"; then
    TMP=$CACHE/.$NAME.tmp.$$
    rm -rf "$TMP"
    cp -r "$STORE/$NAME" "$TMP"
    rm -rf "$OUT"
    mv "$TMP" "$OUT"
    log "copied from the machine's kernel store: $STORE/$NAME (same fragment, script, source and compiler; MICROVM_KERNEL_STORE=off builds it)"
    echo "$OUT"
    exit 0
fi

START=$(date +%s)
SRC=$ROOT/build/src/linux-source-6.1
STAMP=$SRC/.microvm-extracted
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$VERSION" ]; then
    log "extracting $SRC_TAR ($VERSION)"
    rm -rf "$SRC"
    mkdir -p "$ROOT/build/src"
    tar -C "$ROOT/build/src" -xJf "$SRC_TAR"
    [ -d "$SRC" ] || die "$SRC_TAR did not contain linux-source-6.1/"
    echo "$VERSION" > "$STAMP"
fi

WORK=$ROOT/build/work/$NAME
rm -rf "$WORK"
mkdir -p "$WORK"
BUILDLOG=$WORK/build.log
JOBS=$(nproc)
kmake() { nice make -C "$SRC" O="$WORK" ARCH=x86_64 "$@" >>"$BUILDLOG" 2>&1 \
    || { tail -n 40 "$BUILDLOG" >&2; die "make $* failed (log: $BUILDLOG)"; }; }
if [ -n "${KARCH:-}" ] && [ "$KARCH" != x86_64 ]; then  #@arch
    log "ARCH=$KARCH (from $(basename "$OVERLAY"))"  #@arch
    kmake() { nice make -C "$SRC" O="$WORK" ARCH="$KARCH" "$@" >>"$BUILDLOG" 2>&1 || { tail -n 40 "$BUILDLOG" >&2; die "make $* failed (log: $BUILDLOG)"; }; }  #@arch
fi  #@arch

log "configuring (tinyconfig + $(basename "$FRAGMENT")${OVERLAY:+ + $(basename "$OVERLAY")}) in $WORK"
kmake tinyconfig
# merge_config.sh: a later fragment's value for an option replaces an earlier one's.
(cd "$WORK" && "$SRC/scripts/kconfig/merge_config.sh" -m -O "$WORK" "$WORK/.config" "$FRAGMENT" ${OVERLAY:+"$OVERLAY"}) >>"$BUILDLOG" 2>&1 \
    || die "merge_config.sh failed (log: $BUILDLOG)"
kmake olddefconfig

# The requirements: the main fragment's lines, except for options the overlay sets, then
# the overlay's lines.
REQUIRED=$WORK/required.config
option_of() { # a fragment line -> CONFIG_X, or nothing for comments and blank lines
    sed -n -e 's/^\(CONFIG_[A-Za-z0-9_]*\)=.*/\1/p' -e 's/^# \(CONFIG_[A-Za-z0-9_]*\) is not set$/\1/p'
}
if [ -n "$OVERLAY" ]; then
    option_of < "$OVERLAY" > "$WORK/overlay.options"
    while IFS= read -r line; do
        opt=$(printf '%s\n' "$line" | option_of)
        if [ -z "$opt" ] || ! grep -qxF "$opt" "$WORK/overlay.options"; then
            printf '%s\n' "$line"
        fi
    done < "$FRAGMENT" > "$REQUIRED"
    cat "$OVERLAY" >> "$REQUIRED"
else
    cp "$FRAGMENT" "$REQUIRED"
fi

# Every requirement must hold in the final .config.
missing=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            opt=${line%%=*}
            if ! grep -qxF "$line" "$WORK/.config"; then
                got=$(grep -E "^($opt=|# $opt is not set)" "$WORK/.config" || echo "(absent)")
                echo "build-kernel: required '$line' but final .config has: $got" >&2
                missing=1
            fi ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }; opt=${opt%% *}
            if grep -qE "^$opt=" "$WORK/.config"; then
                echo "build-kernel: required '$line' but final .config has: $(grep -E "^$opt=" "$WORK/.config")" >&2
                missing=1
            fi ;;
    esac
done < "$REQUIRED"
[ "$missing" = 0 ] || die "final .config does not satisfy $FRAGMENT${OVERLAY:+ + $OVERLAY} (fix the fragment's dependencies)"
log "config check passed ($(grep -cE '^(CONFIG_|# CONFIG_.* is not set$)' "$REQUIRED") options)"

log "building bzImage and vmlinux with -j$JOBS (log: $BUILDLOG): about 3 minutes on 2 free cores, up to 10 on a busy machine; once per config, cached after"
# A line every 30 s, so a long build is not mistaken for a hang.
( while sleep 30; do
    log "... still building: $(find "$WORK" -name '*.o' | wc -l) objects compiled, $(( $(date +%s) - START ))s so far"
  done ) &
TICKER=$!
trap 'kill $TICKER 2>/dev/null || true' EXIT
kmake -j"$JOBS" bzImage vmlinux
kill $TICKER 2>/dev/null || true

# The PVH entry point is an ELF note in vmlinux: check it is there.
if command -v readelf >/dev/null; then
    readelf -n "$WORK/vmlinux" | grep -q 'Xen' || die "vmlinux has no Xen/PVH ELF note (CONFIG_PVH?)"
fi

TMP=$CACHE/.$NAME.tmp.$$
rm -rf "$TMP"
mkdir -p "$TMP"
cp "$WORK/arch/x86/boot/bzImage" "$TMP/bzImage"
cp "$WORK/vmlinux" "$TMP/vmlinux"
cp "$WORK/.config" "$TMP/config"
rm -rf "$OUT"
mv "$TMP" "$OUT"
if [ "$STORE" != off ]; then
    # Into the store under a temporary name, then renamed: a reader never sees half a kernel.
    if mkdir -p "$STORE" && cp -r "$OUT" "$STORE/.$NAME.tmp.$$"; then
        rm -rf "${STORE:?}/$NAME"
        mv "$STORE/.$NAME.tmp.$$" "$STORE/$NAME" || rm -rf "$STORE/.$NAME.tmp.$$"
    else
        log "warning: could not keep the kernel in $STORE (it stays in $OUT)"
    fi
fi
log "done in $(( $(date +%s) - START ))s: $OUT"
echo "$OUT"
