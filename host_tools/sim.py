"""`odmrgw sim`: the simulated board (board/unix/main.py) on the micropython
executable, with a card image as its SD card.

With --pty PATH its console (and, after Ctrl-C, its REPL) sits on a
pseudo-terminal, so `mpremote connect PATH resume exec ...` drives it as it
would drive the box over USB. MicroPython's unix port cannot open a pty
itself, and a tty on its stdin makes its REPL flush input whenever it
switches terminal modes, so the process talks through pipes and this module
copies bytes between the pipes and the pty's master side.
"""
import os
import select
import subprocess
import sys
import termios
import threading
import time
import tty
from pathlib import Path

from host_tools import mpy



def add_parser(sub):
    p = sub.add_parser("sim", help="run the simulated gateway (micropython, a card image as SD card)")
    p.add_argument("--config", required=True, help="gateway config (JSON); its directory plays the internal flash")
    p.add_argument("--sd", required=True, help="card image (odmrgw sd mkfs)")
    p.add_argument("--heap", help="MicroPython heap size (default %s on a 32-bit build, %s on 64-bit; see docs/heap.md)"
                   % (mpy.SIM_HEAP[32], mpy.SIM_HEAP[64]))
    p.add_argument("--once", action="store_true", help="one poll cycle, print its summary, exit 0 or 1")
    p.add_argument("--pty", metavar="PATH", help="put the console on a pseudo-terminal, linked at PATH")
    p.set_defaults(func=run)


def command(config, sd, heap=None, once=False, echo=True):
    """The board's main module runs as .mpy from the firmware cache, like
    every other module, so the sim's heap is the box's heap."""
    cmd = [mpy.micropython_exe(), "-X", f"heapsize={heap or mpy.sim_heap()}"]
    if not once:
        cmd.append("-i")  # the REPL follows when the console hands over (Ctrl-C)
    cmd += ["-m", "main", "--config", str(Path(config).resolve()), "--sd", str(Path(sd).resolve())]
    if once:
        cmd.append("--once")
    if not echo:
        cmd.append("--no-echo")
    return cmd


def where(config):
    """env and cwd for the board's process. `-m` puts the working directory
    first on the path, so the board starts in the directory that plays its
    internal flash, as the box starts in / (a checkout's board/ folder would
    otherwise shadow the board module)."""
    return {"env": mpy.env(), "cwd": str(Path(config).resolve().parent)}


def popen(config, sd, heap=None, once=False, echo=True, **kw):
    return subprocess.Popen(command(config, sd, heap, once, echo), **where(config), **kw)


def stop(proc, timeout=10):
    """Stops a simulated board as Ctrl-C would (the card is unmounted
    cleanly), then harder if it does not go."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(sig)
        if proc.stdin and sig == signal.SIGINT:
            proc.stdin.close()  # the REPL after Ctrl-C reads EOF and ends
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    return proc.wait()


def run(args):
    if args.once:
        return subprocess.run(command(args.config, args.sd, args.heap, once=True), **where(args.config)).returncode
    if args.pty:
        with PtyConsole(args.config, args.sd, args.pty, args.heap) as sim:
            print(f"simulated gateway running; console on {args.pty}")
            print(f"  mpremote connect {args.pty} resume exec \"print('hello')\"")
            print("Ctrl-C here stops it.")
            return sim.proc.wait()
    # In a terminal: the terminal echoes and edits lines itself. Ctrl-C is
    # the board's (it stops the gateway and opens its REPL), so this process
    # lets it pass; a handler, unlike SIG_IGN, is not inherited by the child.
    import signal

    old = signal.signal(signal.SIGINT, lambda *a: None)
    try:
        return subprocess.call(command(args.config, args.sd, args.heap, echo=not sys.stdin.isatty()), **where(args.config))
    finally:
        signal.signal(signal.SIGINT, old)


class PtyConsole:
    """The simulated board with its stdin/stdout bridged to a pty linked at
    `link`. A context manager: leaving it stops the process and the bridge."""

    def __init__(self, config, sd, link, heap=None):
        self.master, slave = os.openpty()
        tty.setraw(slave)  # before anything flows: no echo, no line editing
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.ONLCR  # mpremote expects "\r\n", never "\r\r\n"
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.device = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(self.master, False)
        self.link = Path(link)
        if self.link.is_symlink() or self.link.exists():
            self.link.unlink()
        self.link.symlink_to(self.device)
        self.proc = popen(config, sd, heap, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
        self._stop = False
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._up, self._down)]
        for t in self._threads:
            t.start()

    def _up(self):
        """Board output to the pty. Nobody reading is like a UART with nothing
        plugged in: what does not fit the pty's buffer is dropped, so the
        board never blocks on its console."""
        out = self.proc.stdout.fileno()
        while True:
            data = os.read(out, 4096)
            if not data:
                return
            try:
                os.write(self.master, data)
            except (BlockingIOError, OSError):
                pass

    def _down(self):
        """What is typed on the pty to the board's stdin."""
        while not self._stop and self.proc.poll() is None:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                time.sleep(0.05)  # no one has the pty open (EIO): wait for mpremote
                continue
            try:
                self.proc.stdin.write(data)
            except (BrokenPipeError, ValueError):
                return

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self, timeout=10):
        self._stop = True
        stop(self.proc, timeout)
        for t in self._threads:
            t.join(2)
        self.proc.stdout.close()
        os.close(self.master)
        if self.link.is_symlink():
            self.link.unlink()
