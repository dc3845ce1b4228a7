# The serial configuration console: runs in asyncio beside the gateway on the
# REPL's UART/USB (or, on the simulated board, stdin). It holds no state of its
# own beyond the line being typed: it reads from and sends commands to the App.
#
# Ctrl-A, Ctrl-C and Ctrl-D are MicroPython's, not ours: on any of them the
# console raises KeyboardInterrupt, which stops the gateway and leaves the
# REPL, so mpremote (which sends "\r\x03\r\x01") keeps working. The bytes after
# it stay unread for the REPL.
import json
import sys

from gateway.compat import drop_modules

_HANDOVER = (1, 3, 4)  # Ctrl-A raw REPL, Ctrl-C interrupt, Ctrl-D soft reset

HELP = """commands:
  help                      this text
  status                    uptime, network, polls, queues, card, heap
  show [key]                the config (secrets as ***), or one key
  set key value             change a key (checked at once; `save` keeps it)
  unset key                 back to the default
  save                      write the config to the flash
  poll                      poll the provider now
  queue                     the messages waiting in the spool
  log [n]                   the last n log lines (default 20)
  user add NAME PASSWORD [ADDRESS...]
  user del NAME
  user passwd NAME PASSWORD
  reboot                    restart the box
  factory-reset             forget the config (asks first; mail stays on the card)
Ctrl-C, Ctrl-A or Ctrl-D stop the gateway and leave the MicroPython REPL."""


class Console:
    """Every failed command answers with a line starting ERROR, so a script
    (`odmrgw console --port P set ...`) can tell and exit non-zero."""

    PROMPT = "gw> "
    ERROR = "error: "
    COMMANDS = ("help", "status", "show", "set", "unset", "save", "poll", "queue", "log", "user", "reboot", "factory-reset")
    MAX_LINE = 512
    LOG_LINES = 20

    def __init__(self, app):
        self.app = app
        self._confirm = None  # a command waiting for "yes"

    def execute(self, line):
        """Runs one command line; returns the lines to show."""
        words = line.split()
        if self._confirm:
            action, self._confirm = self._confirm, None
            if words == ["yes"]:
                return action()
            return ["cancelled"]
        if not words:
            return []
        if words[0] not in self.COMMANDS:  # getattr on typed text would intern it for good
            return [self.ERROR + "unknown command %r; try help" % words[0]]
        fn = getattr(self, "do_" + words[0].replace("-", "_"))
        try:
            return fn(words[1:], line) or []
        except ValueError as e:  # config.ConfigError among them
            return [self.ERROR + str(e)]
        except IndexError:
            return [self.ERROR + "usage: see help"]
        except Exception as e:  # noqa: BLE001 - a failed command must not end the console
            return [self.ERROR + "failed: %r" % (e,)]
        finally:
            # A command loads the config checks when it needs them; the
            # box's heap does not keep their 7 KB between commands.
            drop_modules(("gateway.config",))

    def do_help(self, args, line):
        return HELP.split("\n")

    def do_status(self, args, line):
        return ["%-8s %s" % row for row in self.app.status()]

    def do_show(self, args, line):
        key = args[0] if args else ""
        config = _config()
        shown = config.mask(self.app.cfg)
        try:
            value = config.get(shown, key)
        except KeyError:
            raise ValueError("%s is not set" % key)
        if isinstance(value, dict):
            return ["%s%s = %s" % (key + "." if key else "", k, json.dumps(value[k])) for k in sorted(value)]
        return ["%s = %s" % (key, json.dumps(value))]

    def do_set(self, args, line):
        key = args[0]
        text = line.split(None, 2)[2]
        return self._change(key, _config().parse(key, text))

    def do_unset(self, args, line):
        return self._change(args[0], None)

    def _change(self, key, value):
        self.app.set_config(_config().with_key(self.app.cfg, key, value))
        return ["ok; `save` keeps it, `reboot` puts it to work"]

    def do_save(self, args, line):
        self.app.save_config()
        return ["saved to %s; `reboot` puts it to work" % self.app.cfg_path]

    def do_poll(self, args, line):
        self.app.poll_now()
        return ["poll requested; `status` shows the result"]

    def do_queue(self, args, line):
        return self.app.queue_lines() or ["the spool is empty"]

    def do_log(self, args, line):
        return self.app.log_tail(int(args[0]) if args else self.LOG_LINES)

    def do_user(self, args, line):
        sub, name = args[0], args[1]
        users = self.app.cfg["users"]
        if sub == "add":
            if name in users:
                raise ValueError("user %s exists; use `user passwd`" % name)
            return self._change("users." + name, {"password": args[2], "addresses": args[3:]})
        if name not in users:
            raise ValueError("no such user %r" % name)
        if sub == "del":
            return self._change("users." + name, None)
        if sub == "passwd":
            return self._change("users." + name + ".password", args[2])
        raise IndexError(sub)

    def do_reboot(self, args, line):
        self.app.reboot()

    def do_factory_reset(self, args, line):
        self._confirm = self._factory_reset
        return ["this forgets the whole config (mail on the card stays); type yes to go on"]

    def _factory_reset(self):
        self.app.factory_reset()
        return ["config erased"]

    async def run(self, stream=None, write=None, echo=True):
        """Reads the console byte by byte until EOF. Echoes what is typed, so
        a raw UART feels like a terminal (echo=False where a terminal in
        line mode already does)."""
        import asyncio

        stream = stream or asyncio.StreamReader(sys.stdin.buffer)
        write = write or _stdout_write
        buf = bytearray()
        write(self.PROMPT)
        while True:
            b = await stream.read(1)
            if not b:
                return
            c = b[0]
            if c in _HANDOVER:
                raise KeyboardInterrupt
            if c == 13 or c == 10:
                if c == 10 and not buf and self._last_cr:
                    continue  # the LF of a CRLF
                self._last_cr = c == 13
                if echo:
                    write("\r\n")
                try:
                    for out in self.execute(buf.decode()):
                        write(out + "\r\n")
                except UnicodeError:
                    write("not text\r\n")
                buf = bytearray()
                write(self.PROMPT)
            elif c == 8 or c == 127:
                if buf:
                    buf = buf[:-1]
                    if echo:
                        write("\b \b")
            elif 32 <= c < 127 and len(buf) < self.MAX_LINE:
                buf.append(c)
                if echo:
                    write(chr(c))

    _last_cr = False


def _config():
    from gateway import config

    return config


def _stdout_write(text):
    sys.stdout.write(text)
