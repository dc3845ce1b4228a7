"""A plain aiosmtpd as a process of its own (no GIL shared with the bench):
takes any recipient, keeps nothing, syncs nothing; prints READY once
listening, then one line per message taken (its running count), so the
bench can tell when the last one is in.

    python -m tests.bench.peer_sink PORT

Stops on SIGTERM or SIGINT."""
import sys

from tests.bench.peer_mailbox import serve


class CountingHandler:
    def __init__(self):
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        print(self.count, flush=True)
        return "250 OK"


if __name__ == "__main__":
    serve(CountingHandler(), sys.argv[1])
