"""The chaos test of issue 15: a two-node Ray cluster started with ``ray start`` (a head on a
free port and a worker node with a temp dir of its own, one CPU each) and ``hwsearch serve``
on PostgreSQL, with faults injected mid-job: the service killed and restarted for every search
strategy, the worker node killed, the head killed and brought back.

Each asserts what the service promises: the job ends ``succeeded`` with exactly its budget of
trial numbers 0..N-1, each stored once (or ``exhausted`` with its reason), within a bound, and
the service outlives every Ray failure. Budgets are small so the module fits CI's time.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from databases import postgres_url
from processes import descendants, free_port, hwsearch_serve, wait_for

from service.db import make_engine, migrate
from service.store import Store
from workers.search import list_strategies

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.skipif(not Path("/proc").exists(), reason="finds processes in Linux's /proc"),
]

SPEC: dict[str, Any] = {
    "model": "digits-cnn",
    "targets": ["xeon-gold-6240"],
    "space": {"keep": [0.5, 0.75, 1.0], "wbits": [4, 8], "rank_fractions": [0.25, 0.5, 1.0]},
    "budget": {"evaluations": 14},
    "concurrency": 2,
}
ENDED = ("succeeded", "failed", "exhausted", "cancelled")


@dataclass
class Node:
    """One ``ray start --block`` process: the node's processes are its descendants."""

    args: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    tree: list[int] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--block", *self.args],
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL the node: the ``ray start`` process and every process below it."""
        if self.process is None:
            return
        tree = descendants(self.process.pid)
        for pid in tree:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(30)
        self.process = None


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    head: Node
    worker: Node

    def nodes_alive(self) -> int:
        script = "import ray; ray.init(); print(sum(n['Alive'] for n in ray.nodes()))"
        out = subprocess.run(
            [sys.executable, "-c", script],
            env={**self.env, "RAY_ADDRESS": self.address},
            capture_output=True,
            text=True,
            timeout=120,
        )
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0

    def wait_nodes(self, n: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.nodes_alive() >= n:
                return
            time.sleep(2)
        raise AssertionError(f"the cluster did not reach {n} live nodes within {timeout_s} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    port = free_port()
    # A token of the cluster's own and a HOME of its own: nothing lands in the user's ~/.ray.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "HOME": str(root),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    head = Node(
        [
            "--head",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            f"--temp-dir={root / 'head'}",
        ],
        root / "head.log",
    )
    head.start(env)
    address = f"{_node_ip(env)}:{port}"
    worker = Node(
        [f"--address={address}", "--num-cpus=1", f"--temp-dir={root / 'worker'}"], root / "worker.log"
    )
    c = Cluster(address, env, head, worker)
    try:
        c.wait_nodes(1)
        worker.start(env)
        c.wait_nodes(2)
        yield c
    finally:
        worker.kill()
        head.kill()


def _node_ip(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import ray._private.services as s; print(s.get_node_ip_address())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture
def database() -> Iterator[str]:
    for url in postgres_url():
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield url


@pytest.fixture
def served(cluster: Cluster, database: str, tmp_path: Path) -> tuple[dict[str, str], str]:
    """The environment of a ``hwsearch serve`` on the cluster and the database, and an admin token."""
    return _service(cluster, database, tmp_path)


def _service(cluster: Cluster, database: str, tmp_path: Path) -> tuple[dict[str, str], str]:
    engine = make_engine(database)
    token = Store(engine).create_token("ops")
    engine.dispose()
    env = {
        **cluster.env,
        "RAY_ADDRESS": cluster.address,
        "DATABASE_URL": database,
        "HWSEARCH_DATA_DIR": str(tmp_path),
        "HWSEARCH_ORPHAN_AFTER_S": "8",
        "HWSEARCH_STALL_S": "60",
    }
    return env, token


def _submit(base: str, token: str, spec: dict[str, Any]) -> str:
    r = httpx.post(f"{base}/api/v1/jobs", json=spec, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 201, r.text
    return f"{base}/api/v1/jobs/{r.json()['id']}"


def _job(url: str) -> dict[str, Any]:
    return httpx.get(url, timeout=30).json()


def _assert_whole(url: str, job: dict[str, Any], budget: int) -> None:
    """Succeeded with trial numbers exactly 0..budget-1, each plan once; or exhausted, saying so."""
    trials = httpx.get(f"{url}/trials", params={"limit": 1000}, timeout=30).json()["items"]
    numbers = sorted(t["number"] for t in trials)
    if job["status"] == "exhausted":
        assert job["error"] or job["progress"], job
        assert numbers == list(range(len(numbers))), numbers
        return
    assert job["status"] == "succeeded", job
    assert numbers == list(range(budget)), numbers
    plans = [json.dumps(t["plan"], sort_keys=True) for t in trials]
    assert len(set(plans)) == len(plans)


@pytest.mark.parametrize("strategy", list_strategies())
def test_the_service_killed_mid_job_and_restarted(
    strategy: str, served: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    """SIGKILL of ``hwsearch serve`` (its dispatcher's process dies with it) at a third of the
    budget; a new service on the same database resumes the job to exactly its budget."""
    env, token = served
    budget = SPEC["budget"]["evaluations"]
    log = tmp_path / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with hwsearch_serve(env, log, port) as first:
        wait_for(lambda: httpx.get(f"{base}/healthz").status_code == 200, 120, "the service", log)
        url = _submit(base, token, {**SPEC, "strategy": strategy})
        wait_for(lambda: _job(url)["evaluations"] >= budget // 3, 300, "a third of the budget", log)
        first.remember()  # type: ignore[attr-defined]
        first.kill()
        first.wait(30)
    port = free_port()
    base2 = f"http://127.0.0.1:{port}"
    url2 = url.replace(base, base2)
    with hwsearch_serve(env, log, port):
        job = wait_for(lambda: (j := _job(url2))["status"] in ENDED and j, 300, "the resumed job's end", log)
        _assert_whole(url2, job, budget)


def test_a_killed_worker_node_costs_no_trial(
    served: tuple[dict[str, str], str], cluster: Cluster, tmp_path: Path
) -> None:
    """Finding 3: SIGKILL of the worker node mid-job. Its evaluator's batch is evaluated again
    elsewhere, a replacement evaluator is placed only where a CPU is free, and the job ends
    with exactly its budget instead of hanging; the node then rejoins for the tests after."""
    env, token = served
    budget = SPEC["budget"]["evaluations"]
    log = tmp_path / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with hwsearch_serve(env, log, port):
            wait_for(lambda: httpx.get(f"{base}/healthz").status_code == 200, 120, "the service", log)
            url = _submit(base, token, {**SPEC, "strategy": "random"})
            wait_for(lambda: _job(url)["evaluations"] >= 3, 300, "three trials", log)
            cluster.worker.kill()
            job = wait_for(lambda: (j := _job(url))["status"] in ENDED and j, 300, "the job's end", log)
            _assert_whole(url, job, budget)
            assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
    finally:
        cluster.worker.start(cluster.env)
        cluster.wait_nodes(2)


def test_a_lost_head_that_returns(
    served: tuple[dict[str, str], str], cluster: Cluster, tmp_path: Path
) -> None:
    """Finding 4: SIGKILL of the head (GCS, raylet, everything under its ``ray start``) mid-job.
    The service stays up and says Ray is down (503), the job goes back to the queue; a new head
    on the same port (a new cluster id) is found again, and the job ends with its whole budget."""
    env, token = served
    budget = SPEC["budget"]["evaluations"]
    log = tmp_path / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with hwsearch_serve(env, log, port) as server:
        wait_for(lambda: httpx.get(f"{base}/healthz").status_code == 200, 120, "the service", log)
        url = _submit(base, token, {**SPEC, "strategy": "guided"})
        wait_for(lambda: _job(url)["evaluations"] >= 3, 300, "three trials", log)
        cluster.worker.kill()  # the worker node's raylet would not join a new head's cluster
        cluster.head.kill()
        down = wait_for(
            lambda: (h := httpx.get(f"{base}/healthz", timeout=30)).status_code == 503 and h,
            60,
            "/healthz to say Ray is down",
            log,
        )
        assert down.json()["ray"].startswith("error") and down.json()["database"] == "ok", down.json()
        assert server.poll() is None
        wait_for(lambda: _job(url)["status"] == "queued", 60, "the job back in the queue", log)
        cluster.head.start(cluster.env)
        cluster.wait_nodes(1)
        cluster.worker.start(cluster.env)
        job = wait_for(lambda: (j := _job(url))["status"] in ENDED and j, 400, "the job's end", log)
        _assert_whole(url, job, budget)
        assert server.poll() is None
        assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        assert job["progress"].get("requeued", 0) >= 1
    cluster.wait_nodes(2)


def test_a_paused_runner_is_replaced_and_fenced(served: tuple[dict[str, str], str], tmp_path: Path) -> None:
    """Finding 5 with one replica: the job's runner paused (SIGSTOP) past the orphan bound. The
    job is taken over (its generation moves on), the quiet runner is killed rather than waited
    on for ever, and the job ends with its whole budget, each number stored once."""
    env, token = served
    budget = SPEC["budget"]["evaluations"]
    log = tmp_path / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with hwsearch_serve(env, log, port):
        wait_for(lambda: httpx.get(f"{base}/healthz").status_code == 200, 120, "the service", log)
        url = _submit(base, token, {**SPEC, "strategy": "random"})
        running = wait_for(
            lambda: (j := _job(url))["evaluations"] >= 3 and "runner" in j["progress"] and j,
            300,
            "three trials",
            log,
        )
        runner = running["progress"]["runner"]["pid"]
        os.kill(runner, signal.SIGSTOP)
        try:
            wait_for(
                lambda: _job(url)["progress"].get("runner", {}).get("pid") not in (None, runner),
                90,
                "a new runner to take the job over",
                log,
            )
            # The quiet one was killed, not left paused (gone, or a zombie not yet reaped).
            wait_for(lambda: _gone(runner), 30, "the paused runner to be killed", log)
        finally:
            with suppress(ProcessLookupError):
                os.kill(runner, signal.SIGCONT)
        job = wait_for(lambda: (j := _job(url))["status"] in ENDED and j, 300, "the job's end", log)
        _assert_whole(url, job, budget)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


class Outage:
    """A TCP relay to PostgreSQL that can be cut: while cut, every relayed connection is reset
    and new ones are refused, as when the database's host drops off the network."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        import socket
        import threading

        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.cut = threading.Event()
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            try:
                backend = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open += [client, backend]
            for a, b in ((client, backend), (backend, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.close()

    def down(self) -> None:
        import socket

        self.cut.set()
        with self.lock:
            for s in self.open:
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
            self.open.clear()

    def up(self) -> None:
        self.cut.clear()


def test_a_database_outage(cluster: Cluster, database: str, tmp_path: Path) -> None:
    """The database unreachable for 20 s mid-job (every connection reset, new ones refused):
    /healthz says so (503 naming the database), the service stays up, and once it is back the
    job ends with exactly its budget."""
    relay = Outage(("127.0.0.1", 5432))
    env, token = _service(cluster, database.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}"), tmp_path)
    budget = SPEC["budget"]["evaluations"]
    log = tmp_path / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with hwsearch_serve(env, log, port) as server:
        wait_for(lambda: httpx.get(f"{base}/healthz").status_code == 200, 120, "the service", log)
        url = _submit(base, token, {**SPEC, "strategy": "random"})
        wait_for(lambda: _job(url)["evaluations"] >= 3, 300, "three trials", log)
        relay.down()
        try:
            down = wait_for(
                lambda: (h := httpx.get(f"{base}/healthz", timeout=30)).status_code == 503 and h,
                20,
                "/healthz to say the database is away",
                log,
            )
            assert down.json()["database"].startswith("error"), down.json()
            time.sleep(20)
            assert server.poll() is None
        finally:
            relay.up()
        job = wait_for(lambda: (j := _job(url))["status"] in ENDED and j, 300, "the job's end", log)
        _assert_whole(url, job, budget)
        assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
