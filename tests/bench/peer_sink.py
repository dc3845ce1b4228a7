"""A plain aiosmtpd as a process of its own (no GIL shared with the bench):
takes any recipient and prints READY once listening, then one line per
message taken (its running count), so the bench can tell when the last one
is in. Without DIR it keeps nothing and syncs nothing; with DIR each message
is written to a file there and fsynced before its 250, as
tests/bench/peer_mailbox.py does (one message at a time, no group commit).

    python -m tests.bench.peer_sink PORT [DIR]

Stops on SIGTERM or SIGINT."""
import sys

from tests.bench.peer_mailbox import MailboxHandler, serve


class CountingHandler:
    def __init__(self):
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        print(self.count, flush=True)
        return "250 OK"


class SyncedCountingHandler(MailboxHandler):
    def __init__(self, root):
        super().__init__(root)
        self.messages = 0

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        self.messages += 1
        print(self.messages, flush=True)
        return reply


if __name__ == "__main__":
    port, *root = sys.argv[1:]
    serve(SyncedCountingHandler(root[0]) if root else CountingHandler(), port)
