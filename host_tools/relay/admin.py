"""`odmrgw relay queue ...`: look at and change the queue on disk. Safe while
the relay runs: every change is the same atomic file operation the relay uses."""
import email
import email.policy
import email.utils
import sys
import time

from host_tools.relay.client import canonical
from host_tools.relay.config import domain_of
from host_tools.relay.store import Store, boxes_for


def _age(seconds):
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def list_(cfg, store, args):
    now = time.time()
    total = 0
    for box in store.boxes():
        for env in store.list(box):
            total += 1
            print(f"{env.id}  {box:<28} {_age(now - env.received):>6} {env.size:>9}  <{env.mail_from}> -> "
                  + ", ".join(env.rcpts))
    print(f"{total} message(s)", file=sys.stderr)
    return 0


def show(cfg, store, args):
    found = store.find(args.id)
    if not found:
        print(f"no message {args.id}", file=sys.stderr)
        return 1
    for box, env in found:
        print(f"id: {env.id}\nbox: {box}\nfrom: <{env.mail_from}>\nto: {', '.join(env.rcpts)}\n"
              f"received: {email.utils.formatdate(env.received, localtime=False)}\nsize: {env.size}\n"
              f"origin: {env.origin}\n")
    sys.stdout.flush()
    data = store.read(found[0][1])
    if data is None:
        print(f"message {args.id} cannot be read (see the log above)", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(data)
    return 0


def drop(cfg, store, args):
    found = store.find(args.id)
    for box, env in found:
        store.remove(env)
        print(f"dropped {env.id} from {box}")
    if not found:
        print(f"no message {args.id}", file=sys.stderr)
        return 1
    return 0


def inject(cfg, store, args):
    try:
        with sys.stdin.buffer if args.file == "-" else open(args.file, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"odmrgw relay queue inject: {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    mail_from = args.sender if args.sender is not None else (email.utils.parseaddr(msg.get("From", ""))[1])
    rcpts = args.to or [a for _, a in email.utils.getaddresses(msg.get_all("To", []) + msg.get_all("Cc", [])) if a]
    held = cfg.held_domains
    rcpts = [r for r in rcpts if domain_of(r) in held] if not args.to else rcpts
    bad = [r for r in rcpts if domain_of(r) not in held]
    if bad or not rcpts:
        print(f"odmrgw relay queue inject: no recipient in a held domain ({', '.join(sorted(held))})"
              + (f"; not held: {', '.join(bad)}" if bad else ""), file=sys.stderr)
        return 2
    id = store.commit(mail_from, boxes_for(rcpts), canonical(data), origin="inject")
    print(id)
    return 0


COMMANDS = {"list": list_, "show": show, "drop": drop, "inject": inject}


def run(cfg, args):
    store = Store(cfg.queue)
    store.prepare()
    return COMMANDS[args.queue_cmd](cfg, store, args)
