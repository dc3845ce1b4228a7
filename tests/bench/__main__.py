"""`make bench`: figures and ratios against a peer measured in the same run.
Each tests/bench/bench_*.py has run(report); report(name, value, note="").
Benchmarks never pass or fail on time; they report."""
import importlib
import pkgutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def report(name, value, note=""):
    print(f"  {name:<48} {value}{'  (' + note + ')' if note else ''}", flush=True)


def main(only=()):
    names = sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))
    for name in names:
        if only and name not in only:
            continue
        print(f"{name}:", flush=True)
        t0 = time.monotonic()
        importlib.import_module(f"tests.bench.{name}").run(report)
        print(f"  ({time.monotonic() - t0:.1f}s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
