"""A simulated board for host tests: fresh card image, config in its own
directory (the board's flash), console on a pty. Used by the deploy, config
and console tests."""
import json
import subprocess
import time

from host_tools import mpy
from host_tools.device import BAUD
from host_tools.sd import SDTOOL
from host_tools.sim import PtyConsole


free_port = mpy.free_port


def make_board_files(tmp_path, cfg=None, card_size=4 << 20):
    flash = tmp_path / "flash"
    flash.mkdir()
    cfg = cfg or {}
    cfg.setdefault("listen", "127.0.0.1")
    cfg.setdefault("smtp", {"port": free_port()})
    cfg.setdefault("pop3", {"port": free_port()})
    (flash / "config.json").write_text(json.dumps(cfg))
    image = tmp_path / "card.img"
    subprocess.run(mpy.command(SDTOOL, "mkfs", image, card_size), env=mpy.env(), check=True, timeout=60,
                   stdout=subprocess.DEVNULL)
    return flash / "config.json", image


def wait_for(port_path, marker=b"gw> ", timeout=20):
    """Opens the pty and waits until the console shows its prompt."""
    import serial

    end = time.monotonic() + timeout
    got = bytearray()
    with serial.Serial(str(port_path), BAUD, timeout=0.1) as s:
        s.write(b"\r")
        while marker not in got and time.monotonic() < end:
            got += s.read(4096)
    assert marker in got, got.decode(errors="replace")


def start(tmp_path, cfg=None):
    config, image = make_board_files(tmp_path, cfg)
    sim = PtyConsole(config, image, tmp_path / "tty")
    try:
        wait_for(sim.link)
    except BaseException:
        sim.close()
        raise
    return sim
