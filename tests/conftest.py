"""Shared test plumbing: where things are, the micropython runner, and the
figures (sizes, heap) that tests report at the end of the run."""
import json
import os
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
FIGURES = REPO / "build" / "figures"
sys.path.insert(0, str(REPO))


def record_figure(name, value):
    """Keep a figure for the end-of-run summary; works across xdist workers."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"{name}.json").write_text(json.dumps({"name": name, "value": value}))


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):
        for f in FIGURES.glob("*.json") if FIGURES.exists() else ():
            f.unlink()


def pytest_terminal_summary(terminalreporter):
    if not FIGURES.exists():
        return
    rows = [json.loads(f.read_text()) for f in sorted(FIGURES.glob("*.json"))]
    if rows:
        terminalreporter.section("figures")
        for row in rows:
            terminalreporter.write_line(f"{row['name']}: {row['value']}")
