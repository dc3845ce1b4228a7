"""`odmrgw console --port P [COMMAND...]`: the box's configuration console.

Without COMMAND: an interactive terminal (mpremote's, so Ctrl-] leaves it and
Ctrl-C still reaches MicroPython). With COMMAND: sends that one line, prints
the console's answer and exits, for scripts (`odmrgw console --port P status`):
0 if the command worked, 1 if the console answered with an error.
"""
import subprocess
import sys
import time
from pathlib import Path

from host_tools import serialport

PROMPT = b"gw> "
REPL_PROMPT = b">>> "
PROBE_TIMEOUT = 3


def add_parser(sub):
    p = sub.add_parser("console", help="the box's configuration console")
    p.add_argument("--port", required=True, help="serial port of the box (or the pty of `odmrgw sim --pty`)")
    p.add_argument("--timeout", type=float, default=15, help="seconds to wait for an answer (with COMMAND)")
    p.add_argument("command", nargs="*", help="one console command to run, e.g. status")
    p.set_defaults(func=run)


def _send(port, line, timeout, until=(PROMPT,)):
    """Sends a line; returns what came back up to the first of `until`."""
    import serial

    from host_tools.device import BAUD

    with serial.Serial(port, BAUD, timeout=0.1) as s:
        s.reset_input_buffer()
        s.write(line.encode() + b"\r")
        got = bytearray()
        end = time.monotonic() + timeout
        while not any(u in got for u in until) and time.monotonic() < end:
            got += s.read(4096)
    return bytes(got)


def ask(port, line, timeout=15):
    """Sends one command line; returns the console's answer as text."""
    # the answer ends at the next prompt; log lines may follow it
    got = _send(port, line, timeout)
    if PROMPT not in got:
        stopped = " (the gateway is stopped: that is MicroPython's REPL)" if REPL_PROMPT in got else \
            " (is the gateway running?)"
        raise SystemExit(f"odmrgw console: no answer from {port} within {timeout:g}s{stopped}")
    text = got[: got.index(PROMPT)].decode(errors="replace").replace("\r\n", "\n")
    echo = line + "\n"
    return text[len(echo):] if text.startswith(echo) else text


def error_mark():
    """How the firmware's console starts a failed command's answer."""
    from host_tools.config import gwconfig

    gwconfig()  # puts the firmware on the path
    from gateway.console import Console

    return Console.ERROR


def banner(port):
    """What the person is about to talk to: the gateway's console, or the
    REPL of a gateway that is stopped."""
    got = _send(port, "", PROBE_TIMEOUT, (PROMPT, REPL_PROMPT))
    if PROMPT in got:
        return "console of the gateway: type help; Ctrl-] leaves; Ctrl-C stops the gateway (REPL)"
    if REPL_PROMPT in got:
        return ("the gateway is stopped: this is MicroPython's REPL (on the box, Ctrl-D restarts the gateway); "
                "Ctrl-] leaves")
    return f"no answer from {port} yet (a box still booting?); Ctrl-] leaves"


def run(args):
    serialport.check(args.port, "odmrgw console")
    with serialport.talking(args.port, "odmrgw console"):
        if args.command:
            answer = ask(args.port, " ".join(args.command), args.timeout)
            if answer.startswith(error_mark()):
                sys.stderr.write(answer)
                return 1
            sys.stdout.write(answer)
            return 0
        print(banner(args.port))
    mpremote = Path(sys.executable).parent / "mpremote"
    return subprocess.call([str(mpremote), "connect", args.port, "repl"])
