"""Profile the messenger-w1 workload: where a replica and the client spend their CPU per message.

    .venv/bin/pip install py-spy      # not a dependency of the project
    .venv/bin/python scripts/profile_w1.py --out profile-w1 [--messages 20000] [--write-quorum 1]

Starts 3 replicas on loopback (replica 1 under cProfile, replicas 2 and 3
plain), then runs the bench's W=1 send workload in this process under
cProfile while py-spy samples replica 2 and this process (`--gil`: the
thread holding the GIL, i.e. Python's own CPU; C code that released the GIL,
such as grpc's poller, is not seen; `--nonblocking`, so it does not pause
them). cProfile times with the main thread's CPU clock, so waiting in epoll
costs nothing. Writes to --out: `client.pstats`, `replica-1.pstats`,
py-spy's collapsed stacks (`replica-2.txt`, `client.txt`), and `summary.md`:
the top of each profile in microseconds of CPU per message, scaled by the
CPU each process spent over the measured part (from /proc). Profilers slow
the processes they watch; read shares, not absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from grpc_messenger.bench.cpu import CLIENT, CpuMeter
from grpc_messenger.bench.procs import Processes, self_pid, start_python_server
from grpc_messenger.bench.workload import Workload, messenger_sends
from grpc_messenger.launch import wait_ready

TOP = 25


def _start_replicas(procs: Processes, out: Path, *, cprofile_first: bool) -> tuple[list[int], tuple[str, ...]]:
    pids: list[int] = []
    addresses: list[str] = []
    for i in range(3):
        name = f"replica-{i + 1}"
        data = procs.root / name
        data.mkdir()
        serve = ["--log-level", "warning", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)]
        serve += ["--grace", "2"]
        if i == 0 and cprofile_first:
            ready = procs.root / f"{name}.ready.json"
            wrapper = [sys.executable, __file__, "--serve-profiled", str(out / f"{name}.pstats"), "--"]
            child = procs.spawn(name, [*wrapper, *serve, "--ready-file", str(ready)])
            address = wait_ready(child.process, ready, name=name, log_path=child.log_path).address
        else:
            child, address = start_python_server(procs, name, ["grpc_messenger", *serve])
        pids.append(child.pid)
        addresses.append(address)
    return pids, tuple(addresses)


def _serve_profiled(pstats_path: Path, argv: list[str]) -> None:
    """Run `messenger <argv>` under cProfile timed by this thread's CPU clock; dump at exit."""
    from grpc_messenger.cli.main import cli

    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        cli.main(args=argv, prog_name="messenger", standalone_mode=False)
    finally:
        profiler.disable()
        profiler.dump_stats(pstats_path)


def _py_spy(pid: int, path: Path, duration_s: int) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--gil", "--nonblocking"]
    args += ["--duration", str(duration_s), "--output", str(path)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _collapsed_top(path: Path, us_per_msg: float) -> str:
    """Self and inclusive time per function from py-spy's collapsed stacks, as us/message."""
    if not path.exists():
        return f"(no py-spy output at {path.name})\n"
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        total += count
        self_counts[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            incl_counts[frame] += count
    if not total:
        return "(no samples)\n"
    lines = [
        f"{total} samples holding the GIL; us/msg = share of samples x {us_per_msg:.0f} us/msg (all CPU of the process,"
        " from /proc: an upper bound, as C work without the GIL is not sampled)",
        "",
    ]
    for title, counts in (("self", self_counts), ("inclusive", incl_counts)):
        lines += [f"| {title} % | us/msg | function |", "|--:|--:|---|"]
        for frame, count in counts.most_common(TOP):
            share = count / total
            lines.append(f"| {100 * share:.1f} | {share * us_per_msg:.1f} | `{frame}` |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py:123)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


def _pstats_top(path: Path, messages: int) -> str:
    """The top of a cProfile dump by own time, as us/message."""
    if not path.exists():
        return f"(no cProfile output at {path.name})\n"
    stats = pstats.Stats(str(path), stream=io.StringIO())
    rows = []
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((tottime, cumtime, ncalls, f"{func} ({Path(filename).name}:{line})"))
    total = sum(r[0] for r in rows)
    out = [f"main thread's CPU only; {total:.2f} s in total, {1e6 * total / messages:.0f} us/msg", ""]
    out += ["| own us/msg | cumulative us/msg | calls/msg | function |", "|--:|--:|--:|---|"]
    for tottime, cumtime, ncalls, name in sorted(rows, reverse=True)[:TOP]:
        out.append(
            f"| {1e6 * tottime / messages:.1f} | {1e6 * cumtime / messages:.1f} | {ncalls / messages:.2f} | `{name}` |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    """Profile one W=1 run and write the summary."""
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-profiled":
        _serve_profiled(Path(sys.argv[2]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--write-quorum", type=int, default=1)
    parser.add_argument("--profiler", choices=["py-spy", "cprofile"], default="py-spy")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cprofile = args.profiler == "cprofile"
    # a short warm-up: the profilers cover it too (about 1% of the messages)
    w = Workload(messages=args.messages, warmup_messages=200, row_time_max_s=120.0)
    root = Path(tempfile.mkdtemp(prefix="messenger-profile-"))
    procs = Processes(root)
    spies: list[subprocess.Popen[bytes]] = []
    try:
        pids, servers = _start_replicas(procs, out, cprofile_first=cprofile)
        names = {CLIENT: self_pid(), **{f"replica-{i + 1}": pid for i, pid in enumerate(pids)}}
        meter = CpuMeter(names)
        duration_s = max(10, int(args.messages / 1000) + 10)
        profiler = cProfile.Profile(time.thread_time)

        async def workload() -> None:
            if cprofile:
                profiler.enable()
            try:
                timing = await messenger_sends(
                    servers, w, tag="profile", write_quorum=args.write_quorum, meter=meter, home=root / "home"
                )
            finally:
                profiler.disable()
            print(f"{timing.messages} messages, {timing.msgs_per_s:,.0f} msgs/s", file=sys.stderr)

        if not cprofile:
            spies = [
                _py_spy(pids[1], out / "replica-2.txt", duration_s),
                _py_spy(self_pid(), out / "client.txt", duration_s),
            ]
            time.sleep(1.0)  # py-spy attaches
        started = time.perf_counter()
        asyncio.run(workload())
        elapsed = time.perf_counter() - started
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled on Ctrl-C
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
        messages = args.messages
        us = {name: 1e6 * s / messages for name, s in meter.spent_s.items()}
        summary = [
            f"# W={args.write_quorum} profile ({args.profiler}): {messages:,} messages,"
            f" {elapsed:.0f} s with the warm-up",
            "",
            "CPU per message over the measured part (from /proc; under the profiler): "
            + ", ".join(f"{name} {value:.0f} us" for name, value in us.items()),
            "",
        ]
        if cprofile:
            profiler.dump_stats(out / "client.pstats")
            procs.close()  # replica 1 writes its cProfile dump as it exits
            summary += [
                "## client: cProfile (main thread's CPU clock: the event loop)",
                "",
                _pstats_top(out / "client.pstats", messages),
                "## replica 1: cProfile (main thread's CPU clock: the event loop)",
                "",
                _pstats_top(out / "replica-1.pstats", messages),
            ]
        else:
            summary += [
                "## client: py-spy --gil",
                "",
                _collapsed_top(out / "client.txt", us.get(CLIENT, 0.0)),
                "## replica 2: py-spy --gil",
                "",
                _collapsed_top(out / "replica-2.txt", us.get("replica-2", 0.0)),
            ]
        (out / "summary.md").write_text("\n".join(summary))
        print(out / "summary.md")
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.kill()
                spy.wait(timeout=10)
        procs.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
