"""Helpers for tests that run real processes (a ``hwsearch serve``, Ray's processes) and kill
them: the process tree from /proc, a process's start time (a reused pid told apart), its command
line, a free port, and waiting on a condition with the service's log in the failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (by the parent pid in /proc/PID/stat)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone since the listing
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (…) may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def name(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"
    return cmdline.strip()[:120]


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    tail = log.read_text()[-4000:] if log.exists() else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; service log:\n{tail}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def hwsearch_serve(env: dict[str, str], log: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``hwsearch serve`` on 127.0.0.1:``port`` in its own process with ``env`` (RAY_ADDRESS
    removed: an embedded Ray); on exit it is stopped and any Ray process it left is killed."""
    full = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env
    exe = Path(sys.executable).with_name("hwsearch")
    server = subprocess.Popen(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=full,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    seen: dict[int, int | None] = {}

    def remember() -> None:
        for pid in descendants(server.pid):
            if pid != server.pid and pid not in seen:
                seen[pid] = start_time(pid)

    try:
        server.remember = remember  # type: ignore[attr-defined]
        yield server
    finally:
        with suppress(Exception):
            remember()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)
        for pid, started in seen.items():
            if started is not None and start_time(pid) == started:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
