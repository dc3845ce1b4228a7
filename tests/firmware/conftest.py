"""Every firmware test runs twice: on CPython, and on the real micropython
executable with a small heap. The MicroPython run is its own pytest item whose
id ends in [micropython], so a failure names the test and the runtime.

A test module may set MICROPYTHON_HEAP = "96k" (with a comment saying why) or
MICROPYTHON_HEAPS = {"test_name": "128k"} for one test, and
MICROPYTHON_TIMEOUT = seconds. The default heap is 64k.
"""
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RUNNER = HERE / "mprun.py"
DEFAULT_HEAP = "64k"
DEFAULT_TIMEOUT = 300

sys.path.insert(0, str(REPO / "firmware"))
sys.path.insert(0, str(HERE))


def micropython_exe():
    from host_tools import mpy

    return mpy.micropython_exe()  # ODMRGW_MICROPYTHON, else the venv's


def micropython_env(tmp, mpy_dir, test_dir=HERE):
    env = dict(os.environ)
    # The firmware and the board load as .mpy, as on the box: compiling them
    # at import time would take far more heap than the running code needs.
    # test_dir: the test module's own directory (tests/security reuses this).
    env["MICROPYPATH"] = os.pathsep.join(dict.fromkeys([str(test_dir), str(HERE), str(mpy_dir), ".frozen"]))
    env["FW_TMP"] = str(tmp)
    return env


class MicroPythonItem(pytest.Item):
    def __init__(self, *, test, module, heap, timeout, **kw):
        super().__init__(**kw)
        self.test, self.module, self.heap, self.timeout = test, module, heap, timeout

    def runtest(self):
        tmp = self.config._tmp_path_factory.mktemp(self.test)
        heap = os.environ.get("ODMRGW_FW_HEAP", self.heap)
        cmd = [micropython_exe(), "-X", f"heapsize={heap}", str(RUNNER), self.module, self.test]
        try:
            proc = subprocess.run(cmd, env=micropython_env(tmp, firmware_mpy(self.config), self.path.parent), cwd=tmp,
                                  capture_output=True, timeout=self.timeout)
        except subprocess.TimeoutExpired as e:
            raise MicroPythonFailure(f"timed out after {self.timeout}s", (e.stdout or b"") + (e.stderr or b""))
        out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
        status = [line for line in out.splitlines() if line.startswith("@@")]
        if status and status[-1].startswith("@@SKIP"):
            pytest.skip(status[-1][7:])
        if proc.returncode or not status or status[-1] != "@@OK":
            raise MicroPythonFailure(f"exit code {proc.returncode}", out.encode())

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, MicroPythonFailure):
            why, out = excinfo.value.args
            return f"micropython -X heapsize={self.heap}: {why}\n{out.decode(errors='replace')}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"{self.module}::{self.test}[micropython]"


class MicroPythonFailure(Exception):
    pass


def firmware_mpy(config):
    """firmware/ and board/unix/board.py compiled once per test worker."""
    if not hasattr(config, "_firmware_mpy"):
        from host_tools import mpy

        config._firmware_mpy = mpy.compile_firmware(config._tmp_path_factory.mktemp("fw-mpy"), ("board.py",))
    return config._firmware_mpy


def pytest_pycollect_makeitem(collector, name, obj):
    if not (name.startswith("test_") and inspect.isfunction(obj) and isinstance(collector, pytest.Module)):
        return None
    mod = collector.obj
    heap = getattr(mod, "MICROPYTHON_HEAPS", {}).get(name, getattr(mod, "MICROPYTHON_HEAP", DEFAULT_HEAP))
    timeout = getattr(mod, "MICROPYTHON_TIMEOUT", DEFAULT_TIMEOUT)
    return [
        pytest.Function.from_parent(collector, name=f"{name}[cpython]", callobj=obj, originalname=name),
        MicroPythonItem.from_parent(
            collector, name=f"{name}[micropython]", test=name, module=mod.__name__.rsplit(".", 1)[-1], heap=heap, timeout=timeout
        ),
    ]


@pytest.fixture(autouse=True)
def _firmware_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FW_TMP", str(tmp_path))
