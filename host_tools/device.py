"""The box over its serial line: the speed of its USB UART, and one
mpremote session in the raw REPL that `odmrgw deploy` and `odmrgw config`
both use (`odmrgw console` talks to the console on the same line)."""
from host_tools import serialport

BAUD = 115200  # the ESP32's UART0, which the USB bridge carries


class Device:
    """One mpremote session with the box, in the raw REPL, without a soft
    reset (the simulated board would end on one). A context manager."""

    def __init__(self, port):
        from mpremote.transport_serial import SerialTransport

        serialport.check(port)
        self.t = SerialTransport(port, baudrate=BAUD)
        self.t.enter_raw_repl(soft_reset=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.t:
            self.t.exit_raw_repl()
            self.t.close()
            self.t = None

    def eval(self, expr):
        return self.t.eval(expr)

    def read(self, path):
        """The file's bytes, or None if it does not exist."""
        return bytes(self.t.fs_readfile(path)) if self.t.fs_exists(path) else None

    def write(self, path, data, progress=None):
        self.t.fs_writefile(path, data, chunk_size=512, progress_callback=progress)

    def makedirs(self, path):
        self.t.exec("import os\np=''\nfor d in %r.split('/'):\n p+=d\n try: os.mkdir(p)\n except OSError: pass\n p+='/'" % path)

    def remove(self, path):
        self.t.exec("import os\ntry: os.remove(%r)\nexcept OSError: pass" % path)

    def exists(self, path):
        return self.t.fs_exists(path)

    def rename(self, old, new):
        """os.rename on the box: atomic on its LittleFS flash."""
        self.t.exec("import os\nos.rename(%r, %r)" % (old, new))

    def platform(self):
        return self.eval("__import__('sys').platform")

    def restart(self):
        """Restart the gateway: a hard reset on the box. The simulated board
        has nothing to reset to, so it stays at its REPL."""
        if self.platform() == "linux":
            print("simulated board: it stays at its REPL; restart `odmrgw sim` to run the new files")
            return
        print("restarting the box")
        self.t.exec_raw_no_follow("import machine; machine.reset()")
        self.t.close()
        self.t = None
