"""Where the time goes in ``citytel ingest`` during a drain: py-spy samples, summarised.

py-spy attaches to the running worker (``--nonblocking``: it never pauses the process, so the
drain runs at nearly its normal speed) and samples its threads' stacks while they are on CPU.
The summary gives, per function, the share of samples in which it was on top of the stack
(self) or anywhere on it (total), and the split between paho's network thread and the asyncio
thread. Without py-spy, the profile is skipped and the summary says so.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.services import start_group, stop_group

_RATE = 200  # samples per second
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_PACKAGE_ROOTS = ("site-packages/", "/src/", "/lib/python3")


def py_spy() -> str | None:
    """The py-spy executable next to this Python, or on the PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def attach(pid: int, output: Path) -> subprocess.Popen[bytes] | None:
    """Start sampling process ``pid``; the recorder stops by itself when the process exits."""
    executable = py_spy()
    if executable is None:
        return None
    command = [
        executable, "record", "--pid", str(pid), "--rate", str(_RATE), "--nonblocking",
        "--threads", "--format", "raw", "--output", str(output),
    ]  # fmt: skip
    log = output.with_suffix(".log").open("ab")
    return start_group(command, out=log)


def stop(recorder: subprocess.Popen[bytes]) -> None:
    """Stop sampling a process that keeps running: py-spy writes its output on an interrupt."""
    recorder.send_signal(signal.SIGINT)
    finish(recorder)


def finish(recorder: subprocess.Popen[bytes]) -> None:
    """Wait for the recorder to write its output once its target has exited."""
    try:
        recorder.wait(timeout=30)
    except subprocess.TimeoutExpired:
        stop_group(recorder)


def _where(file: str) -> str:
    # A path relative to its package root: no machine paths in the summary.
    for marker in _PACKAGE_ROOTS:
        if marker in file:
            tail = file.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" and "/" in tail else tail
    return file


def _frame(raw: str) -> str:
    match = _FRAME.match(raw)
    if match is None:
        return raw
    return f"{match['func']} ({_where(match['file'])})"


def _area(frame: str) -> str:
    where = frame.rsplit("(", 1)[-1]
    for prefix, name in (
        ("citytel/api/auth", "citytel API key check (api/auth.py)"),
        ("citytel/api", "citytel API routes (api/)"),
        ("citytel/collection", "citytel fill forecasts (collection.py)"),
        ("fastapi/", "FastAPI (routing, dependencies, validation)"),
        ("starlette/", "Starlette (routing, responses)"),
        ("uvicorn/", "uvicorn (HTTP protocol)"),
        ("httptools", "httptools (HTTP parser)"),
        ("prometheus_client", "prometheus-client (request metrics)"),
        ("hashlib", "hashlib"),
        ("citytel/formats", "citytel decoding (formats/)"),
        ("citytel/storage", "citytel storage (storage/)"),
        ("citytel/ingest", "citytel ingest loop and inbox (ingest/)"),
        ("paho/", "paho-mqtt"),
        ("pydantic", "pydantic validation"),
        ("asyncpg", "asyncpg driver"),
        ("asyncio/", "asyncio event loop"),
        ("json/", "json"),
        ("datetime", "datetime"),
        ("threading", "threading (locks, events)"),
        ("selectors", "socket wait (select)"),
        ("socket", "socket"),
    ):
        if where.startswith(prefix) or f"/{prefix}" in where:
            return name
    return "other"


def summarize(raw: Path, *, top: int = 15) -> dict[str, Any]:
    """The top functions (self and total), areas and threads of a py-spy raw profile."""
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        count = int(number)
        frames = [_frame(f) for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        samples += count
        network = any("_thread_main (paho" in f or "loop_forever (paho" in f for f in frames)
        threads["paho network thread" if network else "asyncio (main) thread"] += count
        self_time[frames[-1]] += count
        areas[_area(frames[-1])] += count
        for frame in set(frames):
            total_time[frame] += count

    def share(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [
            {"function": name, "pct": round(100 * c / samples, 1)}
            for name, c in counter.most_common(n)
        ]

    return {
        "samples": samples,
        "rate_hz": _RATE,
        "threads_pct": {k: round(100 * v / samples, 1) for k, v in threads.most_common()},
        "areas_self_pct": {k: round(100 * v / samples, 1) for k, v in areas.most_common()},
        "top_self": share(self_time, top),
        "top_total": share(Counter({k: v for k, v in total_time.items() if not _is_entry(k)}), top),
    }


_ENTRY = (
    "<module>",
    "_run_module_as_main",
    "_run_code",
    "main (citytel/cli.py)",
    "_ingest (citytel/cli.py)",
    "Thread.",
    "Client._thread_main",
    "Client.loop_forever",
    "Runner.run",
    "run (asyncio/runners.py)",
    "BaseEventLoop.run_",
    "BaseEventLoop._run_once",
    "Handle._run",
)


def _is_entry(frame: str) -> bool:
    # Frames on (nearly) every stack of a thread say nothing about where its time goes.
    return frame.startswith(_ENTRY)
