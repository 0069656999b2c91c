"""The device agent (``hwsearch agent``, issue 19): runs on the device, measures what the service
leases to it, over plain HTTP it starts itself (a device behind NAT works).

Two runtimes. ``onnxruntime`` needs onnxruntime, numpy, httpx and this module: not torch, not
Ray, not the cluster's Python (see docs/devices.md for a minimal install on a board). ``torch``
needs torch instead of onnxruntime and times TorchScript files (``kernels.export_torchscript``:
the model as a CPU deployment runs it, int8 Linear layers on torch's int8 kernels). One loop:

1. register: device facts (CPU, cores, memory, OS, runtime versions, accelerators) and, for a
   target that does not exist yet, the runtime's micro-benchmarks that define it;
2. lease a task of its runtime (204: nothing to do, wait and ask again);
3. download its files (the plan's model file, the uncompressed reference, the input as .npy),
   beating the lease meanwhile;
4. time plan and reference interleaved on a fixed number of threads (warm-up, rounds, median of
   the per-round ratios: ``latency_models.interleaved_timing``), post the result; a file the
   runtime cannot load or run is posted as the task's failure, with the reason.

A lease that is lost (the agent was too slow, or killed) is the service's to hand out again; the
agent drops that task and leases the next. A service that does not answer is retried with a
back-off; a rejected token stops the agent with the reason.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Agent", "AgentError", "device_info"]


class AgentError(RuntimeError):
    """The agent cannot go on (its token was rejected, its registration refused); says why."""


def _meminfo_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(runtime: str, threads: int) -> dict[str, Any]:
    """What the agent tells the service about its device (shown on the dashboard)."""
    import numpy

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "memory_bytes": _meminfo_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "runtime": runtime,
        "threads": threads,
    }
    if runtime == "onnxruntime":
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        accelerators = [p for p in onnxruntime.get_available_providers() if p != "CPUExecutionProvider"]
        info["accelerators"] = accelerators
    elif runtime == "torch":
        import torch

        info["torch"] = torch.__version__
        # Named, not used: the agent measures on the CPU (the files are traced there).
        info["accelerators"] = ["cuda"] if torch.cuda.is_available() else []
    return info


def _runtime_version(runtime: str) -> str:
    if runtime == "torch":
        import torch

        return str(torch.__version__)
    import onnxruntime

    return str(onnxruntime.__version__)


class _Loaded:
    """A task's plan and reference loaded in the agent's runtime, callable without arguments."""

    def __init__(self, runtime: str, model: Path, reference: Path, x: Any, threads: int) -> None:
        if runtime == "torch":
            import torch

            from kernels import load_torchscript

            torch.set_num_threads(threads)
            plan, ref = load_torchscript(model), load_torchscript(reference)
            xt = torch.from_numpy(x)
            self._guard: Any = torch.inference_mode
            self.plan = lambda: plan(xt)
            self.reference = lambda: ref(xt)
        else:
            from latency_models import ort_session

            plan_s, ref_s = ort_session(str(model), threads), ort_session(str(reference), threads)
            feed = {plan_s.get_inputs()[0].name: x}
            ref_feed = {ref_s.get_inputs()[0].name: x}
            self._guard = contextlib.nullcontext
            self.plan = lambda: plan_s.run(None, feed)
            self.reference = lambda: ref_s.run(None, ref_feed)

    def guard(self) -> Any:
        return self._guard()


class Agent:
    """One device's agent. ``run`` measures until ``max_tasks`` are done, the queue stays empty
    for ``idle_exit_s`` or ``stop`` is set; returns the number of tasks it measured."""

    def __init__(
        self,
        url: str,
        token: str,
        target: str,
        *,
        runtime: str = "onnxruntime",
        threads: int = 1,
        name: str | None = None,
        repeats: int = 15,
        warmup: int = 3,
        poll_s: float = 2.0,
        log: Any = None,
    ) -> None:
        import httpx

        if runtime not in ("onnxruntime", "torch"):
            raise AgentError(f"--runtime {runtime!r}: one of 'onnxruntime' or 'torch'")
        try:
            _runtime_version(runtime)
        except ImportError:
            raise AgentError(
                f"--runtime {runtime}: {runtime} is not installed here (pip install {runtime})"
            ) from None
        if threads < 1:
            raise AgentError(f"--threads {threads}: give a whole number >= 1")
        self.base = url.rstrip("/")
        self.client = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        self.target, self.runtime, self.threads = target, runtime, threads
        self.name = name or f"{platform.node() or 'device'}-{os.getpid()}"
        self.repeats, self.warmup, self.poll_s = repeats, warmup, poll_s
        self.log = log or (lambda _msg: None)
        self.device_id: str | None = None
        self.heartbeat_s = 10.0

    # ---- HTTP ----------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kw: Any) -> Any:
        """One request, retried with a back-off while the service does not answer; 401/403 stop
        the agent; other errors come back as the response for the caller to judge."""
        import httpx

        delay = 1.0
        while True:
            try:
                r = self.client.request(method, path, **kw)
            except httpx.HTTPError as exc:
                self.log(f"the service at {self.base} does not answer ({exc}); retrying in {delay:.0f} s")
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if r.status_code in (401, 403):
                raise AgentError(f"the service refused this agent ({r.status_code}): {r.text[:300]}")
            return r

    def register(self) -> dict[str, Any]:
        """Register the device (measuring the runtime first, for a target the service lacks)."""
        body: dict[str, Any] = {
            "name": self.name,
            "target": self.target,
            "runtime": self.runtime,
            "threads": self.threads,
            "info": device_info(self.runtime, self.threads),
        }
        known = self._call("GET", f"/api/v1/targets/{self.target}")
        if known.status_code == 404:
            self.log(f"target {self.target!r} is new: measuring this device's runtime to define it")
            body["target_profile"] = self.measure_target().to_dict()
        r = self._call("POST", "/api/v1/agents", json=body)
        if r.status_code != 201:
            raise AgentError(f"registration refused ({r.status_code}): {r.text[:500]}")
        device: dict[str, Any] = r.json()
        self.device_id = device["id"]
        self.heartbeat_s = float(device.get("heartbeat_s") or 10.0)
        self.log(f"registered device {self.device_id} for target {self.target!r}")
        return device

    def measure_target(self) -> Any:
        """This device running the agent's runtime as a ``Target`` (its micro-benchmarks)."""
        from latency_models import measure_runtime_target, runtime_target

        if self.runtime == "onnxruntime":
            return measure_runtime_target(self.target, threads=self.threads, measured_by=f"agent {self.name}")
        from kernels import probe_torch_runtime

        probe = probe_torch_runtime(threads=self.threads, scripted=True)
        when = time.strftime("%Y-%m-%d", time.gmtime())
        how = (
            f"measured by agent {self.name} on {when}, torch {probe['torch']}, {self.threads} thread(s), "
            "median of 7"
        )
        n = probe["n"]
        return runtime_target(
            self.target,
            probe,
            runtime="torch",
            description=(
                f"{platform.machine()} device running TorchScript, {self.threads} thread(s), measured"
            ),
            sources={
                "peak_macs_per_s": f"{n}×{n}×{n} float32 matmul and torch's dynamic int8 Linear, {how}",
                "memory_bandwidth_gb_s": f"32 MB tensor clone (read + write), {how}",
                "dispatch_overhead_ms": f"64 chained adds in a TorchScript trace against one, per op, {how}",
            },
        )

    # ---- the loop ------------------------------------------------------------------------------
    def run(
        self,
        *,
        max_tasks: int | None = None,
        idle_exit_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        if self.device_id is None:
            self.register()
        stop = stop or threading.Event()
        done = 0
        idle_since = time.monotonic()
        while not stop.is_set() and (max_tasks is None or done < max_tasks):
            r = self._call("POST", f"/api/v1/agents/{self.device_id}/lease")
            if r.status_code == 204:
                if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    break
                stop.wait(self.poll_s)
                continue
            if r.status_code != 200:
                self.log(f"lease refused ({r.status_code}): {r.text[:300]}")
                stop.wait(self.poll_s)
                continue
            task = r.json()
            if self._measure_and_post(task):
                done += 1
            idle_since = time.monotonic()
        return done

    def _measure_and_post(self, task: dict[str, Any]) -> bool:
        lost = threading.Event()
        finished = threading.Event()
        lease = {"lease_id": task["lease_id"]}

        def beat() -> None:
            while not finished.wait(self.heartbeat_s):
                r = self._call("POST", task["heartbeat"], json=lease)
                if r.status_code != 200:
                    lost.set()
                    return

        beater = threading.Thread(target=beat, name=f"lease-{task['id']}", daemon=True)
        beater.start()
        try:
            measured = self.measure(task, lost)
        except Exception as exc:  # the runtime cannot load or run this file: say so, go on
            finished.set()
            reason = f"{type(exc).__name__}: {exc}"[:4000]
            self.log(f"task {task['id']} ({task['model']}) failed: {reason}")
            if "fail" in task and not lost.is_set():
                self._call("POST", task["fail"], json={**lease, "error": reason})
            return False
        finally:
            finished.set()
        if measured is None or lost.is_set():
            self.log(f"task {task['id']}: the lease was lost; dropped (the service hands it out again)")
            return False
        r = self._call("POST", task["result"], json={**lease, **measured})
        if r.status_code != 200:
            self.log(f"task {task['id']}: result refused ({r.status_code}): {r.text[:300]}")
            return False
        self.log(
            f"task {task['id']} ({task['model']}): {measured['latency_ms']:.3f} ms, "
            f"speed-up {measured['speedup']:.2f} against the uncompressed model"
        )
        return True

    def measure(self, task: dict[str, Any], lost: threading.Event | None = None) -> dict[str, Any] | None:
        """Download a task's files and time the plan against the reference; None when the lease
        was lost on the way."""
        import numpy as np

        from latency_models import interleaved_timing

        runtime = str(task.get("runtime") or "onnxruntime")
        if runtime != self.runtime:  # the service leases only the device's runtime: a bug if not
            raise AgentError(f"task {task['id']} is for {runtime}, this agent runs {self.runtime}")
        with tempfile.TemporaryDirectory(prefix="hwsearch-agent-") as tmp:
            paths: dict[str, Path] = {}
            for name, url in task["files"].items():
                r = self._call("GET", url, params={"lease_id": task["lease_id"]})
                if r.status_code != 200:
                    return None
                paths[name] = Path(tmp) / name
                paths[name].write_bytes(r.content)
            x = np.load(paths["input"], allow_pickle=False)
            loaded = _Loaded(runtime, paths["model"], paths["reference"], x, self.threads)
            if lost is not None and lost.is_set():
                return None
            with loaded.guard():
                timing = interleaved_timing(
                    loaded.plan, loaded.reference, repeats=self.repeats, warmup=self.warmup
                )
        return {
            "latency_ms": timing["median_ms"],
            "reference_ms": timing["reference_median_ms"],
            "speedup": timing["speedup"],
            "p10_ms": timing["p10_ms"],
            "p90_ms": timing["p90_ms"],
            "repeats": self.repeats,
            "threads": self.threads,
            "runtime": self.runtime,
            "runtime_version": _runtime_version(self.runtime),
        }
