#!/bin/sh
# virtio-blk data integrity (tests/tests/devices.rs): write slices of /payload.bin to
# /dev/vda at sector-granular offsets, aligned and not, all at once (concurrent requests),
# with O_DIRECT; drop the page cache; read every slice back with O_DIRECT and compare.
# The host checks the image file against the same table (BLK_CASES in devices.rs).
# Case table: "SIZE DISK_OFFSET PAYLOAD_OFFSET" (bytes); keep in sync with devices.rs.
CASES="512 512 0
4096 8192 4096
4096 17920 12345
3584 44032 777
65536 131072 65536
66560 262656 100000
262144 1048576 200000
1048576 2097152 0
1048064 4196864 512
1048576 6291968 0"
[ -b /dev/vda ] || { echo "no /dev/vda"; exit 1; }
echo "blk-cmdline=$(cat /proc/cmdline)"
echo "blk-vda-size=$(blockdev --getsize64 /dev/vda)"
n=0
pids=""
for c in $(echo "$CASES" | tr ' ' ':'); do
    size=${c%%:*}; rest=${c#*:}; off=${rest%%:*}; src=${rest#*:}
    dd if=/payload.bin of=/tmp/want.$n bs=$size count=1 skip=$src iflag=skip_bytes 2>/dev/null
    dd if=/tmp/want.$n of=/dev/vda bs=$size count=1 seek=$off oflag=seek_bytes,direct conv=notrunc 2>/tmp/dd.$n &
    pids="$pids $!"
    n=$((n + 1))
done
i=0
fail=0
for p in $pids; do
    if wait $p; then :; else echo "blk-write-$i=FAILED: $(tr '\n' ' ' < /tmp/dd.$i)"; fail=1; fi
    i=$((i + 1))
done
sync
echo 3 > /proc/sys/vm/drop_caches
echo "blk-writes-done=$n"
i=0
ok=0
for c in $(echo "$CASES" | tr ' ' ':'); do
    size=${c%%:*}; rest=${c#*:}; off=${rest%%:*}
    if dd if=/dev/vda of=/tmp/got bs=$size count=1 skip=$off iflag=skip_bytes,direct 2>/tmp/dd.r; then
        if cmp -s /tmp/got /tmp/want.$i; then
            ok=$((ok + 1))
        else
            echo "blk-case-$i=MISMATCH size=$size offset=$off: $(cmp /tmp/got /tmp/want.$i 2>&1 | head -1)"
            fail=1
        fi
    else
        echo "blk-read-$i=FAILED: $(tr '\n' ' ' < /tmp/dd.r)"
        fail=1
    fi
    rm -f /tmp/got
    i=$((i + 1))
done
echo "blk-cases-ok=$ok/$n"
# The guest's own swiotlb (with --guest-swiotlb): how much it bounced.
[ -f /sys/kernel/debug/swiotlb/io_tlb_used_hiwater ] && echo "blk-guest-swiotlb-hiwater=$(cat /sys/kernel/debug/swiotlb/io_tlb_used_hiwater)"
dmesg | grep -i "i/o error" | head -3
[ "$fail" = 0 ] && [ "$ok" = "$n" ]
