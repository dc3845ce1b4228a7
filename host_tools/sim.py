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

from host_tools import mpy, sd as sdcard
from host_tools.cardlock import CardLock


def add_parser(sub):
    p = sub.add_parser("sim", help="run the simulated gateway (micropython, a card image as SD card)")
    p.add_argument("--config", required=True, help="gateway config (JSON); its directory plays the internal flash")
    p.add_argument("--sd", required=True, help="card image (odmrgw sd mkfs)")
    p.add_argument("--heap", help="MicroPython heap size (default %s on a 32-bit build, %s on 64-bit; see docs/heap.md)"
                   % (mpy.SIM_HEAP[32], mpy.SIM_HEAP[64]))
    p.add_argument("--once", action="store_true", help="one poll cycle, print its summary, exit 0 or 1")
    p.add_argument("--no-rom", dest="rom", action="store_false",
                   help="load the gateway from .mpy files, as a board with stock MicroPython does, "
                        "not from its ROMFS image (the code then takes heap too)")
    p.add_argument("--pty", metavar="PATH", help="put the console on a pseudo-terminal, linked at PATH")
    p.set_defaults(func=run)


def command(config, sd, heap=None, once=False, echo=True, console=True, rom=True):
    """The board's main module runs as .mpy from the firmware cache, like
    every other module, so the sim's heap is the box's heap. With rom the
    gateway's code comes from its ROMFS image, as on a board with a romfs
    partition, and takes no part of `heap` (docs/heap.md)."""
    heap = heap or mpy.sim_heap()
    tail = []
    if rom:
        image = mpy.rom_image()
        heap = mpy.rom_heapsize(heap, image.stat().st_size)
        tail = ["--rom", str(image)]
    cmd = [mpy.micropython_exe(), "-X", f"heapsize={heap}"]
    if not once:
        cmd.append("-i")  # the REPL follows when the console hands over (Ctrl-C)
    cmd += ["-m", "main", "--config", str(Path(config).resolve()), "--sd", str(Path(sd).resolve())] + tail
    if once:
        cmd.append("--once")
    if not echo:
        cmd.append("--no-echo")
    if not console:
        cmd.append("--no-console")
    return cmd


def where(config):
    """env and cwd for the board's process. `-m` puts the working directory
    first on the path, so the board starts in the directory that plays its
    internal flash, as the box starts in / (a checkout's board/ folder would
    otherwise shadow the board module)."""
    return {"env": mpy.env(), "cwd": str(Path(config).resolve().parent)}


def popen(config, sd, heap=None, once=False, echo=True, console=True, rom=True, **kw):
    """The simulated board as a child holding the card's lock (CardBusy if
    another process has it); stop() releases it."""
    lock = CardLock(sd, "odmrgw sim").acquire()
    try:
        proc = subprocess.Popen(command(config, sd, heap, once, echo, console, rom), **where(config), pass_fds=(lock.fd,), **kw)
    except BaseException:
        lock.release()
        raise
    lock.note(f"the simulated board, process {proc.pid}")
    proc.card_lock = lock
    return proc


def stop(proc, timeout=10, interrupt=True):
    """Stops a simulated board as Ctrl-C would (the card is unmounted
    cleanly), then harder if it does not go. interrupt=False skips Ctrl-C,
    for a board whose REPL would wait on a terminal after it."""
    import signal

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL) if interrupt else (signal.SIGTERM, signal.SIGKILL)
    try:
        for sig in sigs:
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
    finally:
        proc.card_lock.release()


def check_files(config, sd):
    """The config must be there (a typo must not run the box on defaults),
    and the image must be a card."""
    if not os.path.isfile(config):
        raise SystemExit(f"odmrgw sim: {config}: no such config file")
    problem = sdcard.image_problem(sd)
    if problem:
        raise SystemExit(f"odmrgw sim: {problem}")


def run(args):
    check_files(args.config, args.sd)
    if args.pty:
        with PtyConsole(args.config, args.sd, args.pty, args.heap, args.rom) as sim:
            print(f"simulated gateway running; console on {args.pty}")
            print(f"  mpremote connect {args.pty} resume exec \"print('hello')\"")
            print("Ctrl-C here stops it.")
            return sim.proc.wait()
    # In a terminal: the terminal echoes and edits lines itself. Ctrl-C is
    # the board's (it stops the gateway and opens its REPL), so this process
    # lets it pass; a handler, unlike SIG_IGN, is not inherited by the child.
    # SIGTERM (see cli) stops the child too.
    import signal

    old = signal.signal(signal.SIGINT, lambda *a: None)
    try:
        proc = popen(args.config, args.sd, args.heap, once=args.once, echo=not sys.stdin.isatty(), rom=args.rom)
        try:
            return proc.wait()
        finally:
            stop(proc, interrupt=False)
    finally:
        signal.signal(signal.SIGINT, old)


def place_link(link, device):
    """Links `link` to the pty. Only a symlink (an old pty's) is replaced:
    anything else at that path is someone's file."""
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise SystemExit(f"odmrgw sim: --pty {link}: a file is there; name a new path (it becomes a symlink)")
    elif not link.parent.is_dir():
        raise SystemExit(f"odmrgw sim: --pty {link}: no such directory {link.parent}")
    link.symlink_to(device)


class PtyConsole:
    """The simulated board with its stdin/stdout bridged to a pty linked at
    `link`. A context manager: leaving it stops the process and the bridge."""

    def __init__(self, config, sd, link, heap=None, rom=True):
        self.master, slave = os.openpty()
        tty.setraw(slave)  # before anything flows: no echo, no line editing
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.ONLCR  # mpremote expects "\r\n", never "\r\r\n"
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.device = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(self.master, False)
        self.link = Path(link)
        try:
            place_link(self.link, self.device)
            self.proc = popen(config, sd, heap, rom=rom, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              bufsize=0)
        except BaseException:
            os.close(self.master)
            if self.link.is_symlink() and os.readlink(self.link) == self.device:
                self.link.unlink()
            raise
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
