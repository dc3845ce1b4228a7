"""`python -m host_tools.mbox FILE [SENDER]`: appends the message on stdin to
the mbox FILE, as fetchmail's MDA in the demo. mailbox.mbox writes the
"From " line each message starts with, quotes ">From" in the body and
locks the file, which `cat >>` does none of."""
import mailbox
import sys


def append(path, data, sender=None):
    msg = mailbox.mboxMessage(data)
    if sender:
        msg.set_from(sender, True)
    box = mailbox.mbox(path)
    box.lock()
    try:
        box.add(msg)
        box.flush()
    finally:
        box.unlock()
        box.close()


if __name__ == "__main__":
    append(sys.argv[1], sys.stdin.buffer.read(), sys.argv[2] if len(sys.argv) > 2 else None)
