"""`odmrgw console --port P [COMMAND...]`: the box's configuration console.

Without COMMAND: an interactive terminal (mpremote's, so Ctrl-] leaves it and
Ctrl-C still reaches MicroPython). With COMMAND: sends that one line, prints
the console's answer and exits, for scripts (`odmrgw console --port P status`).
"""
import subprocess
import sys
import time
from pathlib import Path

PROMPT = b"gw> "


def add_parser(sub):
    p = sub.add_parser("console", help="the box's configuration console")
    p.add_argument("--port", required=True, help="serial port of the box (or the pty of `odmrgw sim --pty`)")
    p.add_argument("--timeout", type=float, default=15, help="seconds to wait for an answer (with COMMAND)")
    p.add_argument("command", nargs="*", help="one console command to run, e.g. status")
    p.set_defaults(func=run)


def ask(port, line, timeout=15):
    """Sends one command line; returns the console's answer as text."""
    import serial

    with serial.Serial(port, 115200, timeout=0.1) as s:
        s.reset_input_buffer()
        s.write(line.encode() + b"\r")
        got = bytearray()
        end = time.monotonic() + timeout
        # the answer ends at the next prompt; log lines may follow it
        while PROMPT not in got and time.monotonic() < end:
            got += s.read(4096)
    if PROMPT not in got:
        raise SystemExit(f"odmrgw console: no answer from {port} within {timeout:g}s (is the gateway running?)")
    text = got[: got.index(PROMPT)].decode(errors="replace").replace("\r\n", "\n")
    echo = line + "\n"
    return text[len(echo):] if text.startswith(echo) else text


def run(args):
    if args.command:
        sys.stdout.write(ask(args.port, " ".join(args.command), args.timeout))
        return 0
    mpremote = Path(sys.executable).parent / "mpremote"
    print("console of the gateway: type help; Ctrl-] leaves; Ctrl-C stops the gateway (REPL)")
    return subprocess.call([str(mpremote), "connect", args.port, "repl"])
