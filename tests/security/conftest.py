"""The attacks the box withstands (issue 12), one test each. Like the
firmware tests, every test here runs twice: on CPython and on the real
micropython executable (tests/firmware/conftest.py)."""
import sys
from pathlib import Path

from tests.firmware.conftest import _firmware_tmp, pytest_pycollect_makeitem  # noqa: F401 - pytest finds hooks by name

sys.path.insert(0, str(Path(__file__).resolve().parent))
