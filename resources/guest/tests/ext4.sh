#!/bin/sh
# ext4 on virtio-blk (tests/tests/devices.rs): mkfs.ext4 (Debian's e2fsprogs, carried
# into the initramfs), mount, copy /payload.bin, sync, umount, mount read-only, checksum.
set -e
[ -b /dev/vda ] || { echo "no /dev/vda"; exit 1; }
mkfs.ext4 -F -q -b 4096 /dev/vda
echo "ext4-mkfs=ok"
mkdir -p /mnt
mount -t ext4 /dev/vda /mnt
mkdir -p /mnt/dir
cp /payload.bin /mnt/dir/payload.bin
dd if=/payload.bin of=/mnt/dir/odd.bin bs=1000 count=777 2>/dev/null
sync
umount /mnt
echo 3 > /proc/sys/vm/drop_caches
mount -t ext4 -o ro /dev/vda /mnt
echo "ext4-ro-mount=$(awk '$2 == "/mnt" {print $1 " " $3 " " substr($4, 1, 2)}' /proc/mounts)"
echo "ext4-payload-sha256=$(sha256sum /mnt/dir/payload.bin | cut -d' ' -f1)"
echo "ext4-odd-sha256=$(sha256sum /mnt/dir/odd.bin | cut -d' ' -f1)"
echo "ext4-odd-expected=$(dd if=/payload.bin bs=1000 count=777 2>/dev/null | sha256sum | cut -d' ' -f1)"
umount /mnt
dmesg | grep -i "ext4\|i/o error" | head -5
