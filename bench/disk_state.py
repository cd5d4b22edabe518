"""Keyed state past memory (issue 13): a running group_by over 20 M keys under a memory cap,
``state="memory"`` against ``state="disk"``.

    sudo .venv/bin/python bench/disk_state.py [--keys 20000000] [--records 30000000]
        [--cap-mib 1024] [--batch 50000] [--write]

Each run is a child process (``--child``) placed in a cgroup (v1 ``memory`` controller, or
v2) whose memory limit is ``--cap-mib``: like a container with that much memory. The child
pushes ``--records`` records through the engine's own ``Pipeline``, running
``group_by("k").agg(pl.len(), pl.col("v").sum())``; the records are made batch by batch
(nothing but the state grows): record ``i`` has ``k = i * 7919 mod K`` (every key once in the
first K records, then again from the first) and ``v = i mod 1000``. The sink keeps the output
rows of every 10 007th key only, and the child checks them against the formula (a key whose
first record is below ``N - K`` has count 2, else 1; its sum follows) before it reports.

Reported per run: whether it finished or was killed (and after how many records), records/s,
the cgroup's peak memory (page cache of the state files included: the kernel reclaims it
under the limit), the child's peak anonymous memory (``VmHWM``), and the state's size (in
memory, or the files on disk). Needs root (to make the cgroup); ``--write`` puts the table
into the ``disk-state`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from benchutil import fmt_mib, fmt_rate, machine_info, machine_line, write_section

STEP = 7919
SAMPLE = 10_007


def child(args: argparse.Namespace) -> None:
    import streamnb as sn
    from streamnb.columns import visible
    from streamnb.engine.core import Context, Delta
    from streamnb.engine.executor import Pipeline
    from streamnb.engine.operators import GroupByOperator

    keys, n, size = args.keys, args.records, args.batch
    directory = Path(args.state_dir) if args.state_dir else None
    kept: list[pl.DataFrame] = []

    def sink(delta: Delta) -> None:
        rows = visible(delta.rows)
        kept.append(rows.filter(pl.col("k") % SAMPLE == 0))

    schema = pl.DataFrame(schema={"k": pl.Int64, "v": pl.Int64})
    stream = sn.from_records(schema).group_by("k").agg(pl.len(), pl.col("v").sum())
    pipeline = Pipeline(stream.plan.root, Context(state_dir=directory), sink)
    (source,) = pipeline.sources
    start = time.perf_counter()
    done = 0
    for first in range(0, n, size):
        i = np.arange(first, min(first + size, n), dtype=np.int64)
        pipeline.push(source, pl.DataFrame({"k": i * STEP % keys, "v": i % 1000}))
        done = int(i[-1]) + 1
        if done % (size * 40) == 0:
            print(json.dumps({"progress": done}), flush=True)
    pipeline.finish(source)
    wall = time.perf_counter() - start
    (op,) = [s.op for s in pipeline.steps if isinstance(s.op, GroupByOperator)]
    store = op.store
    assert store is not None
    # the oracle: key k's records are i = k * STEP^-1 mod K, and that i + K when below N
    final = pl.concat(kept).unique("k", keep="last").sort("k")
    inverse = pow(STEP, -1, keys)
    k = final.get_column("k").to_numpy()
    i = k * inverse % keys
    twice = i + keys < n
    want_len = np.where(twice, 2, 1)
    want_sum = i % 1000 + np.where(twice, (i + keys) % 1000, 0)
    expected_keys = sum(1 for q in range(0, keys, SAMPLE))
    ok = (
        final.height == expected_keys
        and bool((final.get_column("len").to_numpy() == want_len).all())
        and bool((final.get_column("v").to_numpy() == want_sum).all())
    )
    print(
        json.dumps(
            {
                "records": done,
                "wall": wall,
                "keys": len(store),
                "state_bytes": store.nbytes,
                "in_memory": store.nbytes - (store.rows.nbytes if directory else 0),
                "vmhwm": _status_kib("VmHWM") * 1024,
                "check": "ok" if ok else "WRONG",
            }
        ),
        flush=True,
    )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Cgroup:
    """A memory cgroup with a limit (v1 ``memory`` controller, else v2)."""

    def __init__(self, name: str, limit: int) -> None:
        v1 = Path("/sys/fs/cgroup/memory")
        self.v1 = v1.is_dir()
        base = v1 if self.v1 else Path("/sys/fs/cgroup")
        self.path = base / name
        self.path.mkdir(exist_ok=True)
        if self.v1:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            (self.path / "memory.max_usage_in_bytes").write_text("0")
        else:
            (self.path / "memory.max").write_text(str(limit))
            (self.path / "memory.swap.max").write_text("0")

    def peak(self) -> int:
        name = "memory.max_usage_in_bytes" if self.v1 else "memory.peak"
        try:
            return int((self.path / name).read_text())
        except OSError:
            return 0

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


def run(args: argparse.Namespace, state: str) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="streamnb-disk-state-"))
    group = Cgroup(f"streamnb-bench-{os.getpid()}", args.cap_mib * 2**20)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        f"--keys={args.keys}",
        f"--records={args.records}",
        f"--batch={args.batch}",
    ]
    if state == "disk":
        cmd.append(f"--state-dir={scratch}")
    script = f'echo $$ > {group.path / "cgroup.procs"}; exec "$@"'
    start = time.perf_counter()
    proc = subprocess.Popen(["sh", "-c", script, "sh", *cmd], stdout=subprocess.PIPE, text=True)
    result: dict = {"state": state, "progress": 0}
    disk_peak = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        message = json.loads(line)
        result["progress"] = message.get("progress", result["progress"])
        result.update(message)
        disk_peak = max(disk_peak, _du(scratch))
    code = proc.wait()
    result.update(
        exit=code,
        elapsed=time.perf_counter() - start,
        cgroup_peak=group.peak(),
        files=disk_peak,
        killed=code in (-9, 137),
    )
    group.remove()
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def _du(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def table(args: argparse.Namespace, results: list[dict]) -> str:
    info = machine_info()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "## Keyed state past memory: a 20 M-key running group_by under a memory cap",
        "",
        f"_Written by `bench/disk_state.py --write` on {stamp}._",
        "",
        f"- **Machine:** {machine_line(info)}",
        f"- **Data:** {args.records:,} records `(k, v)` made batch by batch ({args.batch:,} per "
        f"batch), {args.keys:,} keys (every key once, then the first "
        f'{args.records - args.keys:,} again); `group_by("k").agg(pl.len(), pl.col("v").sum())` '
        f"through the engine's `Pipeline`, in a child process in a memory cgroup limited to "
        f"**{args.cap_mib:,} MiB**.",
        "",
        "| state | outcome | records | records/s | keys held | state in memory (MiB) | state "
        "files (MiB) | cgroup peak, page cache included (MiB) | process peak RSS (MiB) | check |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        finished = "check" in r
        outcome = (
            "finished"
            if finished
            else f"killed (exit {r['exit']})"
            if r["killed"]
            else f"failed (exit {r['exit']})"
        )
        records = r.get("records", r["progress"])
        rate = fmt_rate(r["records"] / r["wall"]) if finished else "–"
        lines.append(
            f"| {r['state']} | {outcome} | {records:,} | {rate} | "
            f"{r.get('keys', 0):,} | {fmt_mib(r['in_memory']) if finished else '–'} | "
            f"{fmt_mib(r['files']) if r['state'] == 'disk' else '–'} | "
            f"{fmt_mib(r['cgroup_peak'])} | "
            f"{fmt_mib(r.get('vmhwm', 0)) if finished else '–'} | {r.get('check', '–')} |"
        )
    lines += [
        "",
        "- *records* for a killed run: the last progress report before the kill (every "
        f"{40 * args.batch:,} records). *state in memory*: for disk, the hash index and row "
        "flags (the rows are in the files). *check*: the final count and sum of every "
        f"{SAMPLE:,}th key against the formula.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20_000_000)
    parser.add_argument("--records", type=int, default=30_000_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--cap-mib", type=int, default=1024)
    parser.add_argument("--states", default="memory,disk")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results = []
    for state in args.states.split(","):
        r = run(args, state)
        print(json.dumps(r), flush=True)
        results.append(r)
    body = table(args, results)
    print(body)
    if args.write:
        write_section("disk-state", body)


if __name__ == "__main__":
    main()
