"""Two independent SMTP implementations meet on the turned ODMR line: the
relay (CPython) delivers, through fetchmail's ODMR client, into the
firmware's own receiver (MicroPython, board/unix/smtpd_sim.py on a card
image). Every message lands on the card byte for byte."""
import subprocess
import sys
import threading
import time
import zlib

import pytest

from host_tools import mpy
from host_tools.relay.store import Store, domain_box
from host_tools.relay.testing import RelayProcess, fetchmail, write_config

HEAP = "256k"       # smtpd_sim compiled from source here, not from .mpy


free_port = mpy.free_port


class FirmwareReceiver:
    def __init__(self, image):
        self.image = image
        self.port = free_port()
        self.lines = []
        self.proc = mpy.popen(mpy.BOARD_UNIX / "smtpd_sim.py", "serve", image, self.port, heap=HEAP,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        deadline = time.monotonic() + 60
        while not any(line.startswith("READY") for line in self.lines):
            assert self.proc.poll() is None and time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.05)

    def stop(self):
        self.proc.kill()
        self.proc.wait(10)

    def check(self):
        out = mpy.run(mpy.BOARD_UNIX / "smtpd_sim.py", "check", self.image, heap=HEAP,
                      capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        return [line.split() for line in out.stdout.splitlines() if line.startswith("MSG ")]


@pytest.fixture
def card(tmp_path):
    image = tmp_path / "card.img"
    subprocess.run([sys.executable, "-m", "host_tools", "sd", "mkfs", str(image), "--size", "96M"],
                   check=True, capture_output=True, cwd=mpy.REPO, timeout=120)
    return image


def test_relay_delivers_into_the_firmware_receiver_byte_for_byte(tmp_path, card):
    relay = RelayProcess(write_config(tmp_path / "relay.toml", tmp_path / "queue")).start()
    receiver = None
    try:
        import smtplib

        with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=30) as c:
            for n in range(8):
                body = "".join(f"line {i}\r\n" if i % 7 else f".dot line {i}\r\n" for i in range(50 * n + 1))
                c.sendmail("x@outside.test", ["a@example.test", "b@example.test"], f"Subject: fw {n}\r\n\r\n{body}")
        # What the relay will send, as it stored it (its own Received: header included).
        queue = Store(tmp_path / "queue")
        want = sorted((len(data), zlib.crc32(data)) for data in map(queue.read, queue.list(domain_box("example.test"))))
        assert len(want) == 8
        receiver = FirmwareReceiver(card)
        run = fetchmail(relay.ports["odmr"], receiver.port)
        assert run.returncode == 0, run.stdout[-3000:]
        assert relay.queue("list").stdout == ""
        receiver.stop()
        got = receiver.check()
        assert sorted((int(m[2]), int(m[3], 16)) for m in got) == want
        assert all(m[4] == "x@outside.test" and m[5:] == ["a@example.test", "b@example.test"] for m in got)
    finally:
        relay.stop()
        if receiver:
            receiver.stop()
