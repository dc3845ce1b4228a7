"""The attacks the box withstands (issue 12), one test each. A module that
names its MicroPython heap (MICROPYTHON_HEAP) attacks the firmware: its tests
run twice, on CPython and on the real micropython executable, as the
firmware tests do (tests/firmware/conftest.py). The relay's attacks are
plain host tests."""
import sys
from pathlib import Path

from tests.firmware import conftest as firmware
from tests.firmware.conftest import _firmware_tmp  # noqa: F401 - pytest finds fixtures by name

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_pycollect_makeitem(collector, name, obj):
    if hasattr(collector.obj, "MICROPYTHON_HEAP"):
        return firmware.pytest_pycollect_makeitem(collector, name, obj)
    return None
