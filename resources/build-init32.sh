#!/bin/bash
# Build the initramfs of the 32-bit guest test: resources/guest/init32/init.c compiled as a
# static i386 program without libc (the host's gcc with -m32 -nostdlib: no gcc-multilib or
# 32-bit libc needed), as /init, with /dev/console, /proc and /sys. A 32-bit kernel cannot run
# the busybox initramfs: its programs are 64-bit.
#
# Output: build/cache/init32-<hash>/initramfs.cpio.gz, hash = sha256 of this script, init.c
# and the compiler's version. The output directory is the only thing printed on stdout.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$ROOT/resources/build-init32.sh
SRC=$ROOT/resources/guest/init32/init.c

die() { echo "build-init32: error: $*" >&2; exit 1; }
for tool in gcc cpio gzip; do
    command -v "$tool" >/dev/null || die "'$tool' not found: apt-get install build-essential cpio"
done

HASH=$( { cat "$SELF" "$SRC"; gcc --version | head -n 1; } | sha256sum | cut -c1-16)
CACHE=$ROOT/build/cache
OUT=$CACHE/init32-$HASH
if [ -f "$OUT/initramfs.cpio.gz" ]; then
    echo "$OUT"
    exit 0
fi
mkdir -p "$CACHE"
TMP=$CACHE/.init32-$HASH.tmp.$$
rm -rf "$TMP"
trap 'rm -rf "$TMP"' EXIT
STAGE=$TMP/root
mkdir -p "$STAGE/dev" "$STAGE/proc" "$STAGE/sys"
# i686 without SSE: whatever 32-bit CPU the kernel was built for runs it.
gcc -m32 -march=i686 -mno-sse -static -nostdlib -ffreestanding -fno-pic -fno-pie -no-pie \
    -fno-stack-protector -fno-asynchronous-unwind-tables -O2 -Wall -Wextra -Werror \
    -o "$STAGE/init" "$SRC" \
    || die "cannot compile $SRC as a 32-bit program (gcc -m32; its messages are above)"
file_type=$(od -An -tx1 -j4 -N1 "$STAGE/init" | tr -d ' ')
[ "$file_type" = 01 ] || die "$STAGE/init is not a 32-bit ELF (EI_CLASS $file_type)"
# The kernel opens /dev/console for init before anything is mounted.
mknod -m 600 "$STAGE/dev/console" c 5 1 || die "mknod /dev/console failed (run as root)"
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) \
    | gzip -9n > "$TMP/initramfs.cpio.gz"
rm -rf "$STAGE"
rm -rf "$OUT"
mv "$TMP" "$OUT"
echo "build-init32: built $OUT/initramfs.cpio.gz ($(stat -c %s "$OUT/initramfs.cpio.gz") bytes)" >&2
echo "$OUT"
