#!/usr/bin/env python3
"""Runs a command under a hard memory limit and reports what it used.

    scripts/capped.py --limit 128MiB [--json] -- quiver build --input … --ram-budget 96MiB

The command runs in a fresh memory cgroup (cgroup v2 if the unified hierarchy has the memory
controller, else the v1 memory controller) with swap disallowed where the kernel lets us, so the
limit is hard: past it the kernel reclaims page cache and then OOM-kills the command. Needs root
(the benchmark machines and CI run as root). Afterwards it prints:

- the command's exit status (or the signal that killed it),
- its peak resident set (`ru_maxrss` of the child: the largest VmHWM among the command and its
  descendants; a forked child starts from this script's own high-water mark, ~10 MiB of
  Python, so a command smaller than that reads as that — `quiver build` prints its own VmHWM),
- the cgroup's peak charge (resident memory plus page cache the command caused, which the kernel
  may reclaim) and its limit,
- how many times the OOM killer fired in the cgroup.

Exits with the command's status, or 137 if it was OOM-killed, so scripts can tell.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

V2_ROOT = "/sys/fs/cgroup"
V1_ROOT = "/sys/fs/cgroup/memory"


def parse_size(text):
    t = text.strip()
    i = 0
    while i < len(t) and (t[i].isdigit() or t[i] == "."):
        i += 1
    number, unit = t[:i], t[i:].strip().lower()
    scale = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
             "g": 1 << 30, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    if not number or unit not in scale:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 128MiB")
    return int(float(number) * scale[unit])


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


class Cgroup:
    """A memory cgroup of either version, created for one command and removed after."""

    def __init__(self, limit):
        name = f"quiver-capped-{os.getpid()}"
        controllers = read(os.path.join(V2_ROOT, "cgroup.controllers"), "")
        if "memory" in controllers.split():
            self.version = 2
            self.path = os.path.join(V2_ROOT, name)
            os.mkdir(self.path)
            write(os.path.join(self.path, "memory.max"), limit)
            if os.path.exists(os.path.join(self.path, "memory.swap.max")):
                write(os.path.join(self.path, "memory.swap.max"), 0)
        elif os.path.isdir(V1_ROOT):
            self.version = 1
            self.path = os.path.join(V1_ROOT, name)
            os.mkdir(self.path)
            write(os.path.join(self.path, "memory.limit_in_bytes"), limit)
            memsw = os.path.join(self.path, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                write(memsw, limit)
            swappiness = os.path.join(self.path, "memory.swappiness")
            if os.path.exists(swappiness):
                try:
                    write(swappiness, 0)
                except OSError:
                    pass
        else:
            sys.exit("capped.py: no memory cgroup controller (neither cgroup v2 nor v1)")
        self.limit = limit

    def procs_file(self):
        return os.path.join(self.path, "cgroup.procs")

    def peak(self):
        if self.version == 2:
            v = read(os.path.join(self.path, "memory.peak"))
        else:
            v = read(os.path.join(self.path, "memory.max_usage_in_bytes"))
        return int(v) if v is not None else None

    def oom_kills(self):
        if self.version == 2:
            events = read(os.path.join(self.path, "memory.events"), "")
        else:
            events = read(os.path.join(self.path, "memory.oom_control"), "")
        for line in events.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return None

    def remove(self):
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=parse_size, required=True, help="hard memory limit, e.g. 128MiB")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command given")
    cg = Cgroup(args.limit)
    procs = cg.procs_file()
    start = time.monotonic()
    try:
        child = subprocess.Popen(command, preexec_fn=lambda: write(procs, os.getpid()))
        status = child.wait()
        seconds = time.monotonic() - start
        peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        report = {
            "command": command,
            "status": status,
            "seconds": round(seconds, 2),
            "limit_bytes": args.limit,
            "peak_rss_bytes": peak_rss,
            "cgroup_peak_bytes": cg.peak(),
            "oom_kills": cg.oom_kills(),
            "cgroup": f"v{cg.version}",
        }
    finally:
        cg.remove()
    mib = lambda b: "?" if b is None else f"{b / 1048576:.1f} MiB"
    if args.json:
        print(json.dumps(report), file=sys.stderr)
    else:
        how = f"exit {status}" if status >= 0 else f"killed by signal {-status}"
        print(f"capped: {how} after {report['seconds']} s; peak resident {mib(peak_rss)} "
              f"(VmHWM); cgroup peak {mib(report['cgroup_peak_bytes'])} of a {mib(args.limit)} "
              f"limit (cgroup {report['cgroup']}); OOM kills: {report['oom_kills']}", file=sys.stderr)
    if report["oom_kills"]:
        sys.exit(137)
    sys.exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main()
