"""Regenerate the command outputs quoted in README.md, so they cannot go stale silently.

Each quoted output sits between two markers that name the commands it comes from::

    <!-- readme-numbers: .venv/bin/hwsearch compress digits-cnn --plan examples/x.json --measure -->
    ```
    ...what the commands printed...
    ```
    <!-- /readme-numbers -->

One marker may name several commands separated by `` && ``; their outputs are joined. The
script runs every named command from the repository root (a throw-away ``HWSEARCH_DATA_DIR``
unless ``--data-dir`` is given, so a user's fitted targets do not leak in), replaces the block
and stamps the line after the closing marker with the date and machine it ran on.

    .venv/bin/python bench/readme_numbers.py            # rewrite README.md
    .venv/bin/python bench/readme_numbers.py --check    # exit 1 if a block's commands changed
                                                        # output shape (numbers aside), rewrite nothing
    .venv/bin/python bench/readme_numbers.py --only compress   # blocks whose commands contain WORD

Timings drift with load, so ``--check`` compares the outputs with every number masked: it
catches a renamed field, a missing line or a changed message, not a timing that moved.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(
    r"(?P<open><!-- readme-numbers: (?P<commands>.+?) -->\n)```[a-z]*\n(?P<body>.*?)```\n"
    r"(?P<close><!-- /readme-numbers -->\n)(?P<stamp><!-- measured .*? -->\n)?",
    re.S,
)
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def run_commands(commands: str, env: dict[str, str]) -> str:
    """The joined stdout of ``commands`` (split on `` && ``), each run from the repository root."""
    out = []
    for command in commands.split(" && "):
        done = subprocess.run(
            shlex.split(command), cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"{command!r} exited {done.returncode}:\n{done.stderr[-2000:]}")
        out.append(done.stdout.rstrip("\n"))
    return "\n".join(out) + "\n"


def masked(text: str) -> str:
    return NUMBER.sub("N", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--check", action="store_true", help="compare output shapes; rewrite nothing")
    parser.add_argument("--only", help="only blocks whose commands contain this word (e.g. search)")
    parser.add_argument(
        "--data-dir", type=Path, help="HWSEARCH_DATA_DIR for the commands (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    text = args.readme.read_text()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="readme-numbers-"))
    env = {**os.environ, "HWSEARCH_DATA_DIR": str(data_dir), "NO_COLOR": "1", "COLUMNS": "120"}
    stale: list[str] = []
    pieces: list[str] = []
    last = 0
    for m in BLOCK.finditer(text):
        commands = m["commands"]
        pieces.append(text[last : m.start()])
        last = m.end()
        if args.only and not re.search(rf"(?<![\w-]){re.escape(args.only)}(?![\w-])", commands):
            pieces.append(m.group(0))
            continue
        start = time.perf_counter()
        body = run_commands(commands, env)
        took = time.perf_counter() - start
        print(f"{commands}  ({took:.0f} s)\n{body}", file=sys.stderr)
        if masked(body) != masked(m["body"]):
            stale.append(commands)
        stamp = (
            f"<!-- measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
            f"bench/readme_numbers.py on {platform.machine()}, {os.cpu_count()} cores, {took:.0f} s -->\n"
        )
        pieces.append(f"{m['open']}```\n{body}```\n{m['close']}{stamp}")
    pieces.append(text[last:])
    if args.check:
        for commands in stale:
            print(f"stale: the output of {commands!r} no longer has the quoted shape", file=sys.stderr)
        return 1 if stale else 0
    args.readme.write_text("".join(pieces))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
