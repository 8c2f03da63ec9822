"""Run every benchmark in bench/, in order (what `make bench` calls).

A benchmark is a `bench/*.py` file that defines a top-level `main()` (found by reading the
source, not by importing it). Helpers and the servers under test (common.py, floor_server.py,
handwritten_server.py) define none and are skipped. Each benchmark runs in its own process with
this interpreter; the arguments given here (e.g. `--quick`, `--duration 5`) are passed to every
one of them, so every benchmark accepts the options of `bench.common.base_parser`.

    .venv/bin/python bench/run_all.py [--quick] [--duration S] [--only NAME[,NAME...]]

Exit code: 0 when every benchmark ran (missed targets included), 1 when any failed to run.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def defines_main(path: Path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "main"
        for node in tree.body
    )


def discover() -> list[Path]:
    me = Path(__file__).resolve()
    return [
        path
        for path in sorted(BENCH_DIR.glob("*.py"))
        if path.resolve() != me and not path.name.startswith("_") and defines_main(path)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names to run")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args, passthrough = parser.parse_known_args(argv)

    benches = discover()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {p.stem for p in benches}
        if unknown:
            parser.error(f"no such benchmark: {', '.join(sorted(unknown))}")
        benches = [p for p in benches if p.stem in wanted]
    if args.list:
        print("\n".join(p.stem for p in benches))
        return 0

    outcomes: list[tuple[str, int, float]] = []
    for path in benches:
        print(f"=== {path.stem} ===", flush=True)
        start = time.monotonic()
        code = subprocess.run([sys.executable, str(path), *passthrough], check=False).returncode
        outcomes.append((path.stem, code, time.monotonic() - start))

    print("=== summary ===")
    for name, code, seconds in outcomes:
        print(f"{name:<24} {'ok' if code == 0 else f'FAILED (exit {code})':<16} {seconds:6.0f}s")
    return 0 if all(code == 0 for _, code, _ in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
