"""The embedded Ray listens on loopback only (issue 14, finding 5).

A real ``hwsearch serve --host 127.0.0.1`` (its own process, SQLite, embedded Ray) runs a small
job, so that every kind of Ray process is up: GCS, raylet, the runtime-env and dashboard agents,
the job's worker and its evaluator actors. Every TCP socket in LISTEN state held by the service
process or any of its descendants must then be on 127.0.0.0/8 or ::1 (or ::ffff:127.x, an IPv4
loopback address on a dual-stack socket). Before the fix the GCS, raylet and workers listened on
``::`` and the runtime-env agent on the host's outward IP.

Sockets are read from /proc (``/proc/net/tcp{,6}`` and each process's ``fd`` links), so the test
needs Linux and nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import descendants as _descendants
from processes import free_port as _free_port
from processes import name as _name
from processes import start_time as _start_time
from processes import wait_for as _wait

from service.db import make_engine, migrate
from service.store import Store

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from Linux's /proc")

SPEC: dict[str, Any] = {
    "model": "digits-cnn",
    "targets": ["xeon-gold-6240"],
    "space": {"keep": [0.5, 0.75], "wbits": [4, 8]},
    "strategy": "random",
    "budget": {"evaluations": 4},
}
_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp for LISTEN


def _proc_address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} writes it: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_ip)
    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
    packed = b"".join(words)
    return ipaddress.IPv4Address(packed) if len(packed) == 4 else ipaddress.IPv6Address(packed)


def _listening_by_inode() -> dict[int, tuple[str, int]]:
    """Every TCP socket in LISTEN state of this network namespace: inode → (address, port)."""
    found: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == _TCP_LISTEN:
                hex_ip, hex_port = local.split(":")
                found[inode] = (str(_proc_address(hex_ip)), int(hex_port, 16))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _listening_sockets(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process, address, port) for every LISTEN socket the processes hold."""
    listening = _listening_by_inode()
    out = []
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # exited
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[len("socket:[") : -1])
                if inode in listening:
                    out.append((pid, _name(pid), *listening[inode]))
    return out


def test_the_embedded_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hwsearch.db'}")
    migrate(engine)
    token = Store(engine).create_token("test")
    engine.dispose()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    # An embedded Ray with Ray's defaults: no cluster address, no authentication override, and a
    # home of its own, where ray.init writes a new token (~/.ray/auth_token).
    ray_vars = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    env = {k: v for k, v in os.environ.items() if k not in ray_vars}
    home = tmp_path / "home"
    home.mkdir()
    env |= {
        "HOME": str(home),
        "HWSEARCH_DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'hwsearch.db'}",
    }
    exe = Path(sys.executable).with_name("hwsearch")
    server = subprocess.Popen(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    seen: dict[int, int | None] = {}  # pid → start time: Ray's processes, to end any left over
    try:
        _wait(lambda: httpx.get(f"{base}/healthz").status_code == 200, 90, "the service", log)
        r = httpx.post(f"{base}/api/v1/jobs", json=SPEC, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        url = f"{base}/api/v1/jobs/{r.json()['id']}"
        # Trials stored: the job's worker and its evaluator actors are up, and so is all of Ray.
        _wait(lambda: httpx.get(url).json()["evaluations"] >= 1, 240, "the job's first trial", log)

        pids = _descendants(server.pid)
        seen = {pid: _start_time(pid) for pid in pids if pid != server.pid}
        sockets = _listening_sockets(pids)
        report = "\n".join(f"  {pid} {addr}:{p} {name}" for pid, name, addr, p in sockets)
        by_kind = {
            kind: [s for s in sockets if s[1].split(" ", 1)[0].rsplit("/", 1)[-1] == kind]
            for kind in ("gcs_server", "raylet", "ray::RuntimeEnvAgent")
        }
        # Not vacuous: the GCS, the raylet and the runtime-env agent were found listening.
        assert all(by_kind.values()), f"Ray processes not found listening:\n{report}"
        assert len(sockets) >= 5, report
        exposed = [s for s in sockets if not _is_loopback(s[2])]
        assert not exposed, "listening beyond loopback:\n" + "\n".join(
            f"  {pid} {addr}:{p} {name}" for pid, name, addr, p in exposed
        )

        # Ray's own token authentication is on too (Ray 2.52+: ray.init turns it on for a new
        # local cluster): the runtime-env agent's HTTP API refuses a request without the token.
        agent_port = by_kind["ray::RuntimeEnvAgent"][0][3]
        agent = f"http://127.0.0.1:{agent_port}/get_runtime_envs_info"

        def ask_agent(**headers: str) -> int:
            return httpx.post(agent, content=b"", headers=headers).status_code

        assert ask_agent() == 401
        assert ask_agent(Authorization="Bearer wrong") == 403
        token_file = home / ".ray" / "auth_token"
        assert token_file.stat().st_mode & 0o777 == 0o600  # Ray writes it 0644; only its user needs it
        assert ask_agent(Authorization=f"Bearer {token_file.read_text().strip()}") == 200
    finally:
        server.send_signal(signal.SIGTERM)  # uvicorn's shutdown, then Ray's at exit
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)
        # Ray's processes die with the service; any left (a slow exit) are ended by their pid.
        for pid, started in seen.items():
            if started is not None and _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
