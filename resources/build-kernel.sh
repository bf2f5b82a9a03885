#!/bin/bash
# Build the microvm guest kernel (bzImage + vmlinux) from Debian's linux-source-6.1.
#
# Output: build/cache/kernel-<hash>/{bzImage,vmlinux,config}, hash = sha256 of the
# config fragment, this script and the source package version. The output directory
# is the only thing printed on stdout; a second run with the same inputs does nothing.
# Progress goes to stderr, the full make log to build/work/kernel-<hash>/build.log.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FRAGMENT=$ROOT/resources/kernel/microvm-x86_64-6.1.config
SELF=$ROOT/resources/build-kernel.sh
SRC_TAR=/usr/src/linux-source-6.1.tar.xz

die() { echo "build-kernel: error: $*" >&2; exit 1; }
log() { echo "build-kernel: $*" >&2; }

[ -f "$SRC_TAR" ] || die "$SRC_TAR missing: apt-get install linux-source-6.1"
for tool in make gcc flex bison bc sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' not found: apt-get install build-essential flex bison bc libelf-dev"
done
VERSION=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null) \
    || die "cannot read the version of package linux-source-6.1"

HASH=$( { cat "$FRAGMENT" "$SELF"; echo "linux-source-6.1 $VERSION"; } | sha256sum | cut -c1-16)
CACHE=$ROOT/build/cache
OUT=$CACHE/kernel-$HASH
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

WORK=$ROOT/build/work/kernel-$HASH
rm -rf "$WORK"
mkdir -p "$WORK"
BUILDLOG=$WORK/build.log
JOBS=$(nproc)
kmake() { nice make -C "$SRC" O="$WORK" ARCH=x86_64 "$@" >>"$BUILDLOG" 2>&1 \
    || { tail -n 40 "$BUILDLOG" >&2; die "make $* failed (log: $BUILDLOG)"; }; }

log "configuring (tinyconfig + $(basename "$FRAGMENT")) in $WORK"
kmake tinyconfig
(cd "$WORK" && "$SRC/scripts/kconfig/merge_config.sh" -m -O "$WORK" "$WORK/.config" "$FRAGMENT") >>"$BUILDLOG" 2>&1 \
    || die "merge_config.sh failed (log: $BUILDLOG)"
kmake olddefconfig

# Every requirement in the fragment must hold in the final .config.
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
done < "$FRAGMENT"
[ "$missing" = 0 ] || die "final .config does not satisfy $FRAGMENT (fix the fragment's dependencies)"
log "config check passed ($(grep -c '^CONFIG_' "$FRAGMENT") options)"

log "building bzImage and vmlinux with -j$JOBS (log: $BUILDLOG)"
kmake -j"$JOBS" bzImage vmlinux

# The PVH entry point is an ELF note in vmlinux: check it is there.
if command -v readelf >/dev/null; then
    readelf -n "$WORK/vmlinux" | grep -q 'Xen' || die "vmlinux has no Xen/PVH ELF note (CONFIG_PVH?)"
fi

TMP=$CACHE/.kernel-$HASH.tmp.$$
rm -rf "$TMP"
mkdir -p "$TMP"
cp "$WORK/arch/x86/boot/bzImage" "$TMP/bzImage"
cp "$WORK/vmlinux" "$TMP/vmlinux"
cp "$WORK/.config" "$TMP/config"
rm -rf "$OUT"
mv "$TMP" "$OUT"
log "done in $(( $(date +%s) - START ))s: $OUT"
echo "$OUT"
