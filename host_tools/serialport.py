"""The one thing every serial command can get wrong: the port. Each says, in
one line, which port could not be opened, why, and which ports there are."""
import contextlib
import os


def _ports():
    from serial.tools import list_ports

    return sorted(p.device for p in list_ports.comports())


def hint():
    ports = _ports()
    if ports:
        return "serial ports here: " + ", ".join(ports)
    return "no serial port is plugged in (a USB cable that only charges shows none); `odmrgw sim --pty PATH` makes one"


def problem(port):
    """Why `port` cannot be opened, as a sentence, or None. Looks without
    opening it: opening an ESP32's USB serial can reset the board."""
    if not os.path.exists(port):
        return f"no serial port {port}; {hint()}"
    if not os.access(port, os.R_OK | os.W_OK):
        return f"no permission to open {port} (add yourself to the dialout group, then log in again)"
    return None


class PortProblem(OSError):
    """The port cannot be opened; str() is the sentence."""


def check(port, tool=None):
    """Before a command touches anything: SystemExit naming the port, or
    with no tool PortProblem, for talking() to name the command."""
    why = problem(port)
    if why and tool:
        raise SystemExit(f"{tool}: {why}")
    if why:
        raise PortProblem(why)


def failed(port, tool, error):
    """SystemExit for an open or a talk with the port that failed anyway."""
    return SystemExit(f"{tool}: {port}: {error}; {hint()}")


@contextlib.contextmanager
def talking(port, tool):
    """Around a session with the box: a port that fails or a box that stops
    answering ends the command with one line, not a traceback."""
    from mpremote.transport import TransportError

    try:
        yield
    except PortProblem as e:
        raise SystemExit(f"{tool}: {e}")
    except (TransportError, OSError) as e:
        raise failed(port, tool, f"{e} (is it the box, running MicroPython? is another program using the port?)")
