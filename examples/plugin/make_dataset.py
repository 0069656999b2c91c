"""Write scikit-learn's digits as PNG files in ImageFolder layout: OUT/<label>/<index>.png.

    python examples/plugin/make_dataset.py digits-eval            # the held-out 30% (540 images)
    python examples/plugin/make_dataset.py digits-all --split all

The default split is the held-out part the example plugin never trains on, so accuracy
measured on this folder is honest. Images are 8×8 grey PNGs (the 0..16 pixel values scaled to
0..255); class folders are named 0..9, so sorted folder names are the labels. The folder is
written beside OUT under a temporary name and renamed into place when complete: a failed run
leaves nothing half-written. Needs numpy, scikit-learn and Pillow (not torch).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

# Run as a script from a checkout: the package sits beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hwsearch_example_plugin.data import Split, digits


def write_dataset(out: Path, split: Split = "test", per_class: int | None = None) -> int:
    """Write the ``split`` images under ``out`` (which must not exist or be empty); returns
    how many were written. ``per_class`` keeps the first N images of each class."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new one")
    images, labels = digits(split)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        written = 0
        counts: dict[int, int] = {}
        for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            label = int(label)
            if per_class is not None and counts.get(label, 0) >= per_class:
                continue
            counts[label] = counts.get(label, 0) + 1
            folder = tmp / str(label)
            folder.mkdir(exist_ok=True)
            # A uint8 H×W array is an 8-bit grey ("L") image.
            Image.fromarray(pixels).save(folder / f"{index:04d}.png")
            written += 1
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to create")
    parser.add_argument(
        "--split",
        choices=("test", "train", "all"),
        default="test",
        help="test: the held-out 30%% the plugin never trains on (default); train; all",
    )
    parser.add_argument("--per-class", type=int, default=None, help="keep at most N images per class")
    args = parser.parse_args(argv)
    if args.per_class is not None and args.per_class < 1:
        parser.error("--per-class must be at least 1")
    try:
        n = write_dataset(args.out, args.split, args.per_class)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {n} images in {len(list(args.out.iterdir()))} class folders to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
