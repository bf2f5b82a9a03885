#!/bin/sh
# virtio-blk throughput (tests/src/bin/blk-bench.rs; not a test): fio (Debian's, carried
# into a bench-only initramfs part by blk-bench) on /dev/vda, O_DIRECT, psync, one job
# each (libaio at bench.iodepth=N when N > 1): sequential 64 KiB reads and writes, random
# 4 KiB reads and writes. Prints
# `bench-JOB=READ_KIBS READ_IOPS WRITE_KIBS WRITE_IOPS` from fio's terse output.
command -v fio >/dev/null || { echo "bench: no fio in this initramfs (run tests/src/bin/blk-bench.rs)"; exit 1; }
RUNTIME=4
IODEPTH=1
for word in $(cat /proc/cmdline); do
    case "$word" in
        bench.runtime=*) RUNTIME=${word#bench.runtime=} ;;
        bench.iodepth=*) IODEPTH=${word#bench.iodepth=} ;;
    esac
done
ENGINE="--ioengine=psync"
[ "$IODEPTH" -gt 1 ] && ENGINE="--ioengine=libaio --iodepth=$IODEPTH"
for job in seq-read:read:64k seq-write:write:64k rand-read:randread:4k rand-write:randwrite:4k; do
    name=${job%%:*}; rest=${job#*:}; rw=${rest%%:*}; bs=${rest#*:}
    out=$(fio --name="$name" --filename=/dev/vda --rw="$rw" --bs="$bs" --size=64M --direct=1 \
        $ENGINE --runtime="$RUNTIME" --time_based --minimal 2>/tmp/fio.err) \
        || { echo "bench-$name=FAILED $(cat /tmp/fio.err)"; exit 1; }
    echo "bench-$name=$(echo "$out" | awk -F';' '{print $7, $8, $48, $49}')"
done
