# A scripted SMTP peer on loopback for the client's tests (the ODMR pull,
# the smarthost flush). Apart from support.py, which every firmware test
# loads: this costs heap only in the tests that use it.
import asyncio

from gateway import sasl

CHALLENGE = sasl.cram_md5_challenge("relay.test", "42.17")


class Provider:
    """Plays a script: ("send", bytes | [pieces]) writes (pieces with a pause
    between, so TCP splits them), ("expect", prefix) reads one line,
    ("reply", code) reads a whole (multi-line) reply, ("sleep", s) waits, ("auth", None) checks a
    CRAM-MD5 answer, ("close", None) hangs up."""

    def __init__(self, script):
        self.script = script
        self.seen = []
        self.problems = []
        self.done = False
        self.finished = asyncio.Event()
        self.connected = False

    async def handle(self, r, w):
        self.connected = True
        try:
            for kind, arg in self.script:
                if kind == "send":
                    for i, piece in enumerate(arg if isinstance(arg, list) else [arg]):
                        if i:
                            await asyncio.sleep(0.01)
                        w.write(piece)
                        await w.drain()
                elif kind == "close":
                    break
                elif kind == "sleep":
                    await asyncio.sleep(arg)
                else:
                    line = (await r.readline()).rstrip(b"\r\n")
                    while kind == "reply" and line[3:4] == b"-":
                        line = (await r.readline()).rstrip(b"\r\n")
                    self.seen.append(line)
                    if kind == "auth":
                        user, digest = sasl.cram_md5_parse(line)
                        if not (user == "office" and sasl.cram_md5_check("s3cret", CHALLENGE, digest)):
                            self.problems.append("bad CRAM-MD5 answer")
                    elif not line.startswith(arg):
                        self.problems.append("expected %r, got %r" % (arg, line))
                        break
            else:
                self.done = True
        except Exception as e:  # noqa: BLE001 - reported through .problems
            self.problems.append(repr(e))
        finally:
            w.close()
            try:
                await w.wait_closed()  # on MicroPython only this closes
            except OSError:
                pass
            self.finished.set()
