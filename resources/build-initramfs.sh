#!/bin/bash
# Build the microvm test initramfs (gzip'd newc cpio) from busybox-static.
#
# Contents: busybox + applet links, /init (resources/guest/init), /tests/*.sh
# (resources/guest/tests/), /dev/console, /payload.bin (1 MiB of random bytes
# whose sha256 is recorded next to the image, so tests can check the initrd arrived
# intact; a copy is kept next to the image too, so host tests know the bytes guest
# tests write), and the host programs in CARRY (with their `ldd` libraries at the same
# paths: Debian's e2fsprogs for the ext4 test).
#
# Output: build/cache/initramfs-<hash>/{initramfs.cpio.gz,payload.sha256,payload.bin};
# hash = sha256 of this script, the guest files, the busybox binary and the carried
# programs and libraries. Only the output
# directory is printed on stdout; a second run with the same inputs does nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GUEST=$ROOT/resources/guest
SELF=$ROOT/resources/build-initramfs.sh
BUSYBOX=/bin/busybox

die() { echo "build-initramfs: error: $*" >&2; exit 1; }
log() { echo "build-initramfs: $*" >&2; }

[ -x "$BUSYBOX" ] || die "$BUSYBOX missing: apt-get install busybox-static"
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
file_is_static "$BUSYBOX" || die "$BUSYBOX is dynamically linked: install busybox-static, not busybox"
command -v cpio >/dev/null || die "cpio not found: apt-get install cpio"

# Host programs carried into the guest with their shared libraries (and extra files).
CARRY=(/sbin/mke2fs)
CARRY_FILES=(/etc/mke2fs.conf)
for b in "${CARRY[@]}"; do [ -x "$b" ] || die "$b missing: apt-get install e2fsprogs"; done
# A program's files: the program itself, then its libraries (ldd), including the loader.
carried_files() {
    echo "$1"
    ldd "$1" 2>/dev/null | awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]+ \(/ {print $1}'
}

HASH=$( { cat "$SELF" "$GUEST/init"; for f in "$GUEST"/tests/*.sh; do basename "$f"; cat "$f"; done;
          sha256sum "$BUSYBOX";
          for b in "${CARRY[@]}"; do carried_files "$b" | xargs -r readlink -f | xargs -r sha256sum; done;
          for f in "${CARRY_FILES[@]}"; do [ -f "$f" ] && sha256sum "$f"; done; } | sha256sum | cut -c1-16)
CACHE=$ROOT/build/cache
OUT=$CACHE/initramfs-$HASH
mkdir -p "$CACHE"
done_already() { [ -f "$OUT/initramfs.cpio.gz" ] && [ -f "$OUT/payload.sha256" ] && [ -f "$OUT/payload.bin" ]; }
if done_already; then echo "$OUT"; exit 0; fi

exec 9>"$CACHE/.initramfs.lock"
flock 9
if done_already; then echo "$OUT"; exit 0; fi

TMP=$CACHE/.initramfs-$HASH.tmp.$$
STAGE=$TMP/root
rm -rf "$TMP"
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,tests,root,etc}
trap 'rm -rf "$TMP"' EXIT

cp "$BUSYBOX" "$STAGE/bin/busybox"
# Applet links at the paths busybox expects (bin/sh, usr/bin/awk, ...).
"$BUSYBOX" --list-full | while read -r applet; do
    [ "$applet" = "bin/busybox" ] && continue
    mkdir -p "$STAGE/$(dirname "$applet")"
    ln -sf /bin/busybox "$STAGE/$applet"
done
[ -e "$STAGE/bin/sh" ] || die "busybox has no 'sh' applet"

install -m 0755 "$GUEST/init" "$STAGE/init"
for t in "$GUEST"/tests/*.sh; do install -m 0755 "$t" "$STAGE/tests/"; done
# The kernel opens /dev/console for init before anything is mounted.
mknod -m 600 "$STAGE/dev/console" c 5 1 || die "mknod /dev/console failed (run as root)"
mknod -m 666 "$STAGE/dev/null" c 1 3 || die "mknod /dev/null failed (run as root)"
head -c 1048576 /dev/urandom > "$STAGE/payload.bin"
sha256sum "$STAGE/payload.bin" | cut -d' ' -f1 > "$TMP/payload.sha256"
cp "$STAGE/payload.bin" "$TMP/payload.bin"
# Carried host programs at their own paths (replacing a busybox applet link of the same
# name), libraries at the paths ldd resolved (the dynamic loader finds them there).
carry_into_stage() { # SRC: copy the file SRC points to, to $STAGE/SRC
    mkdir -p "$STAGE/$(dirname "$1")"
    rm -f "$STAGE/$1"
    cp -L "$1" "$STAGE/$1"
}
for b in "${CARRY[@]}"; do
    carried_files "$b" | while read -r f; do carry_into_stage "$f"; done
done
for f in "${CARRY_FILES[@]}"; do [ -f "$f" ] && carry_into_stage "$f"; done
# e2fsprogs picks the file system type from argv[0].
for n in mkfs.ext4 mkfs.ext2; do rm -f "$STAGE/sbin/$n"; ln -s mke2fs "$STAGE/sbin/$n"; done
echo "root:x:0:0:root:/root:/bin/sh" > "$STAGE/etc/passwd"

(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) \
    | gzip -9n > "$TMP/initramfs.cpio.gz"
rm -rf "$STAGE"
rm -rf "$OUT"
mv "$TMP" "$OUT"
trap - EXIT
log "built $OUT/initramfs.cpio.gz ($(stat -c %s "$OUT/initramfs.cpio.gz") bytes)"
echo "$OUT"
