"""Where the benches find the measured NAS-Bench-201 latencies, and one reader of them.

Not a script: bench/latency.py, bench/latency_nb201.py and bench/intervals.py import it (run
as scripts, bench/ is first on their import path).

The table lives outside the repository, in the ``shared/data`` folder beside the checkout
(``<checkout>/../shared/data/nb201_latency_dev.csv.gz``; its README describes the columns).
``$HWSEARCH_SHARED_DATA`` names another folder holding it; each bench's ``--data FILE`` names
the file itself.
"""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

#: Environment variable naming the folder that holds the shared data files.
SHARED_DATA_ENV = "HWSEARCH_SHARED_DATA"
NB201_FILE = "nb201_latency_dev.csv.gz"


def shared_data_dir() -> Path:
    """``$HWSEARCH_SHARED_DATA``, else ``shared/data`` beside the repository checkout."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def nb201_csv(path: str | Path | None = None) -> Path:
    """The NB-201 latency table: ``path`` (a bench's ``--data``) or the one in
    :func:`shared_data_dir`. A missing file stops the bench with the path and the fix."""
    found = Path(path) if path is not None else shared_data_dir() / NB201_FILE
    if not found.is_file():
        raise SystemExit(
            f"NAS-Bench-201 latency table not found: {found}\n"
            f"Fix: put {NB201_FILE} there, set {SHARED_DATA_ENV} to the folder that holds it, "
            "or pass --data FILE."
        )
    return found


def read_nb201(path: Path) -> tuple[list[str], dict[str, npt.NDArray[np.float64]]]:
    """Arch strings in NB-201 index order and each device's latencies (ms) in that order.

    Every device must list the same archs in the same order (row k of a device = arch k).
    """
    archs: dict[str, list[str]] = {}
    lat: dict[str, list[float]] = {}
    with gzip.open(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            if row["space"] != "nasbench201":
                raise ValueError(f"{path}: unexpected space {row['space']!r}")
            archs.setdefault(row["device"], []).append(row["arch"])
            lat.setdefault(row["device"], []).append(float(row["latency_ms"]))
    if not archs:
        raise ValueError(f"{path}: no rows")
    devices = list(archs)
    order = archs[devices[0]]
    for device in devices[1:]:
        if archs[device] != order:
            raise ValueError(f"{path}: device {device} lists the archs in another order than {devices[0]}")
    return order, {d: np.asarray(v, dtype=np.float64) for d, v in lat.items()}
