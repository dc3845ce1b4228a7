"""The box's peer in the whole-box bench, as a process of its own (no GIL
shared with the load generator): aiosmtpd taking any recipient, each message
written to DIR/<local part>/<n>.eml and fsynced before its 250, one file per
recipient as a mailbox would hold it.

    python -m tests.bench.peer_mailbox DIR PORT

Prints READY once listening; stops on SIGTERM or SIGINT."""
import os
import signal
import sys
import threading
from pathlib import Path

from aiosmtpd.controller import Controller


class MailboxHandler:
    def __init__(self, root):
        self.root = Path(root)
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        for rcpt in envelope.rcpt_tos:
            box = self.root / rcpt.partition("@")[0].lower()
            box.mkdir(exist_ok=True)
            self.count += 1
            with open(box / f"{self.count}.eml", "wb") as f:
                f.write(envelope.content)
                f.flush()
                os.fsync(f.fileno())
        return "250 OK"


def main(root, port):
    serve(MailboxHandler(root), port)


def serve(handler, port):
    """Run `handler` in aiosmtpd on 127.0.0.1:port until SIGTERM or SIGINT."""
    controller = Controller(handler, hostname="127.0.0.1", port=int(port), data_size_limit=1 << 30)
    controller.start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print("READY", flush=True)
    done.wait()
    controller.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
