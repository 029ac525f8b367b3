"""Run a command and report the peak resident size (VmHWM) of every process in its tree: the run
itself and, for `stylize --workers N`, the worker processes its local cluster spawns. Linux only
(/proc). The numbers behind docs/benchmarks.md, "Workers in the memory plan".

    python tools/tree_peaks.py python -m scratchnst stylize -o out.png --size 1024 --tile 256 --workers 2

Each process's VmHWM is read every POLL_S while the command runs; the last value read is its peak
up to then (a process that grows in its last POLL_S is under-reported by that much; a command that
ends before the first read reports wait4's ru_maxrss, which on Linux also covers its reaped
children). Prints one line per process
(pid, MiB, command line), their sum (an upper bound on what they held at once), and the command's
exit status, which is also this script's.
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
    pid = subprocess.Popen(argv).pid
    peaks: dict[int, tuple[int, str]] = {}
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            peaks.setdefault(pid, (usage.ru_maxrss * 1024, " ".join(argv)))  # Linux: kB
            break
        for p in tree(pid):
            peak, line = status_bytes(p), command_line(p)  # the line again: the first look may precede exec
            if peak:
                peaks[p] = (max(peak, peaks.get(p, (0, ""))[0]), line)
        time.sleep(POLL_S)
    for p, (peak, line) in sorted(peaks.items()):
        print(f"{p:>8} {peak / 2**20:9.1f} MiB  {line[:100]}")
    print(f"{'sum':>8} {sum(peak for peak, _ in peaks.values()) / 2**20:9.1f} MiB")
    code = os.waitstatus_to_exitcode(status)
    print(f"exit status {code}")
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
