"""Run a command and report the peak resident size (VmHWM) of every process in its tree: the run
itself and, for `stylize --workers N`, the worker processes its local cluster spawns. Linux only
(/proc). The numbers behind docs/benchmarks.md, "Workers in the memory plan".

    python tools/tree_peaks.py python -m scratchnst stylize -o out.png --size 1024 --tile 256 --workers 2

Each process's VmHWM is read every POLL_S while the command runs; the last value read is its peak
up to then (a process that grows in its last POLL_S is under-reported by that much). Prints one
line per process (pid, MiB, command line), their sum (an upper bound on what they held at once),
and the command's exit status, which is also this script's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 0.2


def tree(pid: int) -> list[int]:
    """pid and its descendants (the children of each of its threads: Dask's nannies spawn from one)."""
    found = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for child in f.read().split():
                    found += tree(int(child))
    except OSError:  # gone meanwhile
        pass
    return found


def status_bytes(pid: int, field: str = "VmHWM") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ").strip()
    except OSError:
        return "?"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    proc = subprocess.Popen(argv)
    peaks: dict[int, tuple[int, str]] = {}
    while proc.poll() is None:
        for pid in tree(proc.pid):
            peak = status_bytes(pid)
            if peak:
                peaks[pid] = (peak, peaks[pid][1] if pid in peaks else command_line(pid))
        time.sleep(POLL_S)
    for pid, (peak, line) in sorted(peaks.items()):
        print(f"{pid:>8} {peak / 2**20:9.1f} MiB  {line[:100]}")
    print(f"{'sum':>8} {sum(p for p, _ in peaks.values()) / 2**20:9.1f} MiB")
    print(f"exit status {proc.returncode}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
