#!/usr/bin/env python3
"""Cuts time windows out of a bounce DMA trace (JSON lines) and joins them end to end.

usage: cut-windows.py IN.jsonl OUT.jsonl START-END[,START-END...] [GAP_MS]

Windows are in seconds of the trace's `t_ns`. A mapping is kept when its map falls in a
window; its syncs and unmap are kept with it even past the window's end. Each window is
shifted to start GAP_MS (default 100) after the previous window's last record, so a
`--timed` replay does not sit through the idle time between fio jobs. The header line is
kept; ids and everything else are unchanged.
"""
import json
import sys


def main():
    src, dst, spec = sys.argv[1], sys.argv[2], sys.argv[3]
    gap = int(float(sys.argv[4]) * 1e6) if len(sys.argv) > 4 else 100_000_000
    windows = [tuple(int(float(x) * 1e9) for x in w.split("-")) for w in spec.split(",")]
    header, recs = None, []
    with open(src) as f:
        for line in f:
            line = line.strip().strip("\0")
            if not line:
                continue
            r = json.loads(line)
            if "format" in r:
                header = line
            else:
                recs.append(r)
    keep = {}  # mapping id -> window index
    for r in recs:
        if r["op"] == "map":
            for i, (a, b) in enumerate(windows):
                if a <= r["t_ns"] < b:
                    keep[r["id"]] = i
    out, shift_end = [], 0
    for i, (a, _) in enumerate(windows):
        w = [r for r in recs if keep.get(r["id"]) == i]
        if not w:
            continue
        shift = shift_end - a + (gap if out else 0)
        for r in w:
            r["t_ns"] += shift
        shift_end = max(r["t_ns"] for r in w)
        out.extend(w)
    with open(dst, "w") as f:
        if header:
            f.write(header + "\n")
        for r in out:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    print(f"{len(out)} of {len(recs)} records, {len(keep)} mappings, "
          f"{shift_end / 1e9:.2f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
