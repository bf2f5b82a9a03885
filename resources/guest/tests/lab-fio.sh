#!/bin/sh
# One fio workload for microvm-lab (lab/; not a test): fio (Debian's, carried into a
# bench-only initramfs part by the harness) on /dev/vda, O_DIRECT, parameters from the kernel
# command line: lab.rw= lab.bs= lab.iodepth= lab.engine= lab.runtime= (seconds) lab.size=.
# Prints `lab-fio=<fio --minimal line>` (terse format v3, `;`-separated).
command -v fio >/dev/null || { echo "lab: no fio in this initramfs"; exit 1; }
RW=randread BS=4k IODEPTH=1 ENGINE=psync RUNTIME=3 SIZE=32M
for word in $(cat /proc/cmdline); do
    case "$word" in
        lab.rw=*) RW=${word#lab.rw=} ;;
        lab.bs=*) BS=${word#lab.bs=} ;;
        lab.iodepth=*) IODEPTH=${word#lab.iodepth=} ;;
        lab.engine=*) ENGINE=${word#lab.engine=} ;;
        lab.runtime=*) RUNTIME=${word#lab.runtime=} ;;
        lab.size=*) SIZE=${word#lab.size=} ;;
    esac
done
out=$(fio --name=lab --filename=/dev/vda --rw="$RW" --bs="$BS" --iodepth="$IODEPTH" \
    --ioengine="$ENGINE" --size="$SIZE" --direct=1 --runtime="$RUNTIME" --time_based \
    --minimal 2>/tmp/fio.err) || { echo "lab-fio=FAILED $(cat /tmp/fio.err)"; exit 1; }
echo "lab-fio=$out"
