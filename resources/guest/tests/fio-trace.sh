#!/bin/sh
# fio-trace (tests/src/bin/fio-trace.rs): fio on /dev/vda while microvm records a DMA trace.
RUNTIME=8
for word in $(cat /proc/cmdline); do case "$word" in bench.runtime=*) RUNTIME=${word#bench.runtime=} ;; esac; done
run() {
    name=$1; shift
    echo "fio-trace-start $name uptime=$(cut -d' ' -f1 /proc/uptime)"
    out=$(fio --name="$name" --filename=/dev/vda --size=64M --direct=1 --ioengine=libaio \
        --runtime="$RUNTIME" --time_based --group_reporting --minimal "$@" 2>/tmp/fio.err) \
        || { echo "fio-trace-$name=FAILED $(cat /tmp/fio.err)"; exit 1; }
    echo "fio-trace-$name=$(echo "$out" | awk -F';' '{print $8, $49}')"
}
run rand-4k --rw=randrw --rwmixread=60 --bs=4k --iodepth=32 --numjobs=2
run seq-read-64k --rw=read --bs=64k --iodepth=8
run seq-write-64k --rw=write --bs=64k --iodepth=8
echo "@@FIO-TRACE-DONE"
