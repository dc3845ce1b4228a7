"""A small SMTP client that reports per-recipient results: used after the ODMR
turn (over the customer's connection) and for the outbox's next hop."""
import asyncio
import re

from host_tools.relay.wire import LineReader, ProtocolError, Reply, read_reply

_BARE = re.compile(rb"\r\n|\r|\n")


def canonical(data):
    """CRLF line ends throughout, ending in CRLF: a bare CR or LF never survives
    to split a message on a later hop (SMTP smuggling). Counting comes first:
    the regular expression costs the intake a millisecond on 10 KB, and
    almost every message needs nothing."""
    crlf = data.count(b"\r\n")
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
        data = _BARE.sub(b"\r\n", data)
    return data if data.endswith(b"\r\n") or not data else data + b"\r\n"


def dot_stuff(data):
    data = data.replace(b"\r\n.", b"\r\n..")
    return b"." + data if data.startswith(b".") else data


class Result:
    """Per-recipient outcome of one transaction: delivered, failed (5xx) or
    deferred (4xx or no answer). `failed` and `deferred` map address -> Reply."""

    def __init__(self, rcpts):
        self.delivered = []
        self.failed = {}
        self.deferred = {r: Reply(421, ["4.4.2 connection lost before delivery"]) for r in rcpts}

    def settle(self, rcpt, reply):
        self.deferred.pop(rcpt, None)
        if reply.code < 400:
            self.delivered.append(rcpt)
        elif reply.code < 500:
            self.deferred[rcpt] = reply
        else:
            self.failed[rcpt] = reply

    @property
    def pending(self):
        return list(self.deferred)


class Client:
    def __init__(self, reader, writer, hostname, timeout=300):
        self.lines = reader if isinstance(reader, LineReader) else LineReader(reader, 4096)
        self.writer = writer
        self.hostname = hostname
        self.timeout = timeout
        self.keywords = {}

    @classmethod
    async def connect(cls, host, port, hostname, timeout=300):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer, hostname, timeout)

    async def _reply(self):
        return await read_reply(self.lines, self.timeout)

    async def _command(self, line):
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self._reply()

    async def greet(self):
        """Wait for the 220 and say EHLO (HELO if EHLO is refused)."""
        reply = await self._reply()
        if reply.code != 220:
            raise ProtocolError(f"greeting was {reply}")
        reply = await self._command(f"EHLO {self.hostname}")
        if reply.code == 250:
            for line in reply.lines[1:]:
                word, _, arg = line.partition(" ")
                self.keywords[word.upper()] = arg
        else:
            reply = await self._command(f"HELO {self.hostname}")
            if reply.code != 250:
                raise ProtocolError(f"HELO refused: {reply}")

    async def send(self, mail_from, rcpts, data):
        """One transaction; `data` is canonical (see canonical()). Raises EOFError/OSError/ProtocolError/TimeoutError when
        the line breaks; the Result then has every recipient still deferred."""
        result = Result(rcpts)
        mail = f"MAIL FROM:<{mail_from}>"
        if "SIZE" in self.keywords:
            mail += f" SIZE={len(data)}"
        if "8BITMIME" in self.keywords and not data.isascii():
            mail += " BODY=8BITMIME"
        commands = [mail] + [f"RCPT TO:<{r}>" for r in rcpts] + ["DATA"]
        if "PIPELINING" in self.keywords:
            self.writer.write("".join(c + "\r\n" for c in commands).encode())
            await self.writer.drain()
            replies = [await self._reply() for _ in commands]
        else:
            replies = [await self._command(commands[0])]
            for c in commands[1 : 1 + len(rcpts)] if replies[0].code == 250 else ():
                replies.append(await self._command(c))
            if any(r.code < 400 for r in replies[1:]):
                replies.append(await self._command("DATA"))
        mail_reply, rcpt_replies = replies[0], replies[1 : 1 + len(rcpts)]
        data_reply = replies[1 + len(rcpts)] if len(replies) > 1 + len(rcpts) else None
        if mail_reply.code >= 400:
            for r in rcpts:
                result.settle(r, mail_reply)
            await self._reset(data_reply)
            return result
        accepted = [r for r, rep in zip(rcpts, rcpt_replies) if rep.code < 400]
        for r, rep in zip(rcpts, rcpt_replies):
            if rep.code >= 400:
                result.settle(r, rep)
        if not accepted:
            await self._reset(data_reply)
            return result
        if data_reply.code != 354:
            for r in accepted:
                result.settle(r, data_reply)
            await self._command("RSET")
            return result
        self.writer.write(dot_stuff(data) + b".\r\n")
        await self.writer.drain()
        final = await self._reply()
        for r in accepted:
            result.settle(r, final)
        return result

    async def _reset(self, data_reply):
        # A pipelined DATA may have been accepted although no RCPT was (RFC 2920
        # §3.1): end it with an empty message, then forget the transaction.
        if data_reply is not None and data_reply.code == 354:
            self.writer.write(b".\r\n")
            await self.writer.drain()
            await self._reply()
        await self._command("RSET")

    async def quit(self):
        """Send QUIT; a peer that hangs up instead of answering 221 ends cleanly too."""
        try:
            self.writer.write(b"QUIT\r\n")
            await self.writer.drain()
            await asyncio.wait_for(self._reply(), 10)
        except (EOFError, OSError, ProtocolError, asyncio.TimeoutError):
            pass

    async def close(self):
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (OSError, asyncio.TimeoutError):
            pass
