"""`odmrgw demo` (what `make run` runs): the whole product on one PC.

It starts the desktop relay (the provider) and a simulated gateway on a fresh
card image, both on loopback, hands the relay a few messages for the office
domain, lets the gateway poll, and shows what was pulled, which mailbox each
message went to, and how to read them with a POP3 client. Both keep running
until Ctrl-C (or SIGTERM); with --once the demo ends after the first cycle.
Every process it starts is stopped when it ends.

Its directory carries a mark file; the demo only ever removes the files it
made, and only in a directory with its mark, so `--dir .` wipes nothing.
"""
import email
import email.utils
import json
import poplib
import shutil
import smtplib
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

from host_tools import mpy, sd, sim

DEMO_DIR = mpy.REPO / "build" / "demo"
DOMAIN = "example.test"
ACCOUNT = ("office", "s3cret")
USERS = {
    "alice": ("alice-pw", ["alice@example.test", "info@example.test"]),
    "bob": ("bob-pw", ["bob@example.test"]),
}
CATCH_ALL = "alice"  # anything else @example.test
SAMPLES = [
    ("carol@customer.example", "alice@example.test", "Order 1043", "Hello Alice,\n\nplease ship order 1043 by Friday.\n\nCarol\n"),
    ("dave@supplier.example", "bob@example.test", "Invoice 77", "Bob,\n\nthe invoice for March is attached in spirit.\n\nDave\n"),
    ("newsletter@club.example", "info@example.test", "Club news", "The club meets on Tuesday.\n"),
    ("erin@partner.example", "sales@example.test", "Price list?", "Could you send your price list?\n\nErin\n"),
    ("frank@friend.example", "bob@example.test", "Lunch", "Lunch on Thursday? " + "Long line. " * 40 + "\n"),
]
POLL_INTERVAL = 60
ONCE_TIMEOUT = 120
MARK = ".odmrgw-demo"
# What the demo makes in its directory: all it ever removes.
MADE = ("flash", "card.img", "card.img.lock", "relay.toml", "relay-queue", "relay.log", "gateway.log", "mailboxes",
        "fetchmailrc", "fetchmail.pid", "fetchids", *(f"{user}.mbox" for user in USERS))
# --ports BASE: BASE and the next four, in this order.
PORT_NAMES = ("gateway smtp", "gateway pop3", "relay smtp", "relay odmr", "relay submission")


def add_parser(sub):
    p = sub.add_parser("demo", help="relay + simulated gateway on loopback: mail flows end to end")
    p.add_argument("--dir", default=str(DEMO_DIR), help="working directory: a new or empty one, or an earlier demo's")
    p.add_argument("--once", action="store_true", help="exit after the first poll cycle")
    p.add_argument("--ports", type=int, metavar="BASE",
                   help="fixed loopback ports BASE..BASE+4 (%s) instead of free ones" % ", ".join(PORT_NAMES))
    p.set_defaults(func=run)


def choose_ports(base):
    """{name: port}: free ones, or BASE.. when given (each must be free)."""
    if base is None:
        return {name: mpy.free_port() for name in PORT_NAMES}
    if not 1024 <= base <= 65535 - len(PORT_NAMES):
        raise SystemExit(f"odmrgw demo: --ports {base}: must be 1024 to {65535 - len(PORT_NAMES)}")
    ports = {name: base + i for i, name in enumerate(PORT_NAMES)}
    for name, port in ports.items():
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise SystemExit(f"odmrgw demo: --ports {base}: port {port} ({name}) is in use")
    return ports


def clear_dir(path):
    """Makes `path` an empty demo directory, removing only what an earlier
    demo made there; refuses anything that is not a demo's."""
    if path.exists() and not path.is_dir():
        raise SystemExit(f"odmrgw demo: --dir {path}: not a directory")
    if path.is_dir() and not (path / MARK).exists():
        if any(path.iterdir()):
            raise SystemExit(f"odmrgw demo: --dir {path}: not empty and not a demo's directory "
                             f"(no {MARK}); name a new or empty one")
    for name in MADE if path.is_dir() else ():
        made = path / name
        if made.is_dir() and not made.is_symlink():
            shutil.rmtree(made)
        elif made.exists() or made.is_symlink():
            made.unlink()
    path.mkdir(parents=True, exist_ok=True)
    (path / MARK).write_text("made by odmrgw demo; it removes only its own files here\n")


def say(text=""):
    print(text, flush=True)


def message(sender, rcpt, subject, body):
    """A message as a mail program writes it: Date and Message-ID included."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, rcpt, subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2])
    msg.set_content(body)
    return msg


class Demo:
    def __init__(self, workdir, ports=None):
        self.dir = Path(workdir).absolute()
        self.relay = None
        self.gateway = None
        self.gateway_log = self.dir / "gateway.log"
        self.flash = self.dir / "flash"
        self.image = self.dir / "card.img"
        self.ports = choose_ports(ports)
        self.smtp_port = self.ports["gateway smtp"]
        self.pop3_port = self.ports["gateway pop3"]

    # --- set-up -----------------------------------------------------------
    def prepare(self):
        clear_dir(self.dir)
        self.flash.mkdir()
        say(f"working in {self.dir}")
        sd.sdtool("mkfs", self.image, 64 << 20, check=True, timeout=120, capture_output=True)
        say(f"  fresh 64 MiB card image: {self.image}")

    def start_relay(self):
        from host_tools.relay.testing import RelayProcess, write_config

        listen = {name: f"127.0.0.1:{self.ports['relay ' + name]}" for name in ("smtp", "odmr", "submission")}
        cfg = write_config(self.dir / "relay.toml", self.dir / "relay-queue", accounts=[(*ACCOUNT, [DOMAIN])],
                           listen=listen)
        self.relay = RelayProcess(cfg, self.dir / "relay.log").start()
        p = self.relay.ports
        say(f"  desktop relay (the provider): inbound SMTP {p['smtp']}, ODMR {p['odmr']}, submission {p['submission']}")
        say(f"    its config: {cfg}; its log: {self.relay.log}")

    def write_gateway_config(self):
        p = self.relay.ports
        endpoint = {"host": "127.0.0.1", "tls": "none", "user": ACCOUNT[0], "secret": ACCOUNT[1]}
        cfg = {
            "hostname": "gw.example.test",
            "domains": [DOMAIN],
            "listen": "127.0.0.1",
            "relay": dict(endpoint, port=p["odmr"]),
            "smarthost": dict(endpoint, port=p["submission"]),
            "poll": {"interval": POLL_INTERVAL, "debounce": 2},
            "smtp": {"port": self.smtp_port, "allow": ["127.0.0.0/8"]},
            "pop3": {"port": self.pop3_port},
            "users": {u: {"password": pw, "addresses": addrs} for u, (pw, addrs) in USERS.items()},
            "catch_all": {DOMAIN: CATCH_ALL},
        }
        path = self.flash / "config.json"
        path.write_text(json.dumps(cfg, indent=2))
        say(f"  gateway config: {path} (relay.tls none: loopback only)")
        return path

    def show_accounts(self):
        say("  the passwords, all of them test values:")
        say(f"    relay ODMR and submission account: {ACCOUNT[0]} / {ACCOUNT[1]} (in relay.toml and the gateway config)")
        for user, (pw, addrs) in USERS.items():
            say(f"    gateway user {user} / {pw} (POP3, and SMTP AUTH for outside mail): {', '.join(addrs)}")
        say(f"    anything else @{DOMAIN} goes to {CATCH_ALL}")

    def feed(self):
        say()
        say(f"the outside world sends {len(SAMPLES)} messages for {DOMAIN} to the relay:")
        with smtplib.SMTP("127.0.0.1", self.relay.ports["smtp"], timeout=30) as s:
            for sender, rcpt, subject, body in SAMPLES:
                s.send_message(message(sender, rcpt, subject, body))
                say(f"  {sender:26} -> {rcpt:20} {subject}")
        say(f"the relay now holds {self.relay_count()} message(s) for {DOMAIN}")

    def relay_count(self):
        out = self.relay.queue("list").stdout
        return sum(1 for line in out.splitlines() if line.strip() and not line.startswith((" ", "#")) and DOMAIN in line)

    # --- the gateway --------------------------------------------------------
    def poll_once(self):
        say()
        say("the gateway polls: outbound flush, ODMR (EHLO, AUTH CRAM-MD5, ATRN), local delivery ...")
        with open(self.gateway_log, "a") as log:
            proc = sim.popen(self.flash / "config.json", self.image, once=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                out = proc.communicate(timeout=ONCE_TIMEOUT)[0]
            except subprocess.TimeoutExpired:
                sim.stop(proc)
                out = proc.communicate()[0] + f"\n(the cycle took over {ONCE_TIMEOUT}s; stopped)\n"
            finally:
                sim.stop(proc)
            log.write(out)
        lines = [line for line in out.splitlines() if line.strip()]
        summary = lines[-1] if lines else "(no output)"
        say(f"  gateway: {summary}")
        if proc.returncode:
            say(f"  the cycle failed (exit {proc.returncode}); the gateway's output is in {self.gateway_log}")
        say(f"the relay now holds {self.relay_count()} message(s) for {DOMAIN}")
        return proc.returncode

    def show_mailboxes(self):
        dest = self.dir / "mailboxes"
        if dest.exists():
            shutil.rmtree(dest)
        proc = sd.sdtool("export", self.image, dest, timeout=120, capture_output=True, text=True)
        say()
        if proc.returncode:
            say("no mailboxes to show: " + (proc.stderr.strip().splitlines() or ["odmrgw sd export failed"])[-1])
            return
        say("what sits in which mailbox on the card (odmrgw sd export):")
        users = sorted(p.name for p in dest.iterdir()) if dest.exists() else []
        for user in users or ["(none)"]:
            files = sorted((dest / user / "new").glob("*")) if users else []
            say(f"  {user}: {len(files)} message(s)")
            for f in files:
                msg = email.message_from_bytes(f.read_bytes())
                say(f"    from {msg['From']:26} to {msg['To']:20} {msg['Subject']}")
        say(f"  (as Maildirs under {dest})")

    def serve(self):
        with open(self.gateway_log, "a") as log:  # the child keeps its own copy
            self.gateway = sim.popen(self.flash / "config.json", self.image, console=False, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.pop3_port), 1).close()
                return True
            except OSError:
                if self.gateway.poll() is not None:
                    break
                time.sleep(0.2)
        say(f"the gateway did not start serving; see {self.gateway_log}")
        return False

    def office_mail(self):
        """An office PC hands the gateway a message for a colleague: it is
        delivered on the box at once, with no trip to the provider."""
        say()
        say(f"an office PC sends alice's note to bob through the gateway (LAN SMTP 127.0.0.1:{self.smtp_port}):")
        msg = message("alice@example.test", "bob@example.test", "Team meeting", "Bob, the team meeting moves to 3 pm.\n\nAlice\n")
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as s:
            s.send_message(msg)
        say("  alice@example.test -> bob@example.test   Team meeting (delivered locally)")
        say("and alice answers Carol; mail for outside domains needs AUTH, and goes out via the provider:")
        reply = message("alice@example.test", "carol@customer.example", "Re: Order 1043",
                        "Carol,\n\norder 1043 ships on Thursday.\n\nAlice\n")
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as s:
            s.login("alice", USERS["alice"][0])
            s.send_message(reply)
        say("  alice@example.test -> carol@customer.example   Re: Order 1043 (queued on the card as outgoing)")
        if self.wait_for_relay_log("outbox ", 30):
            say("  the gateway's next cycle handed it to the relay's submission service (see its outbox)")
        else:
            say(f"  not handed over yet; the gateway's log says why: {self.gateway_log}")

    def wait_for_relay_log(self, marker, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.relay.log.read_text(errors="replace"):
                return True
            time.sleep(0.2)
        return False

    def show_pop3(self):
        say()
        say(f"the gateway serves the mailboxes over POP3 on 127.0.0.1:{self.pop3_port}:")
        for user, (pw, _) in USERS.items():
            box = poplib.POP3("127.0.0.1", self.pop3_port, timeout=30)
            try:
                box.user(user)
                box.pass_(pw)
                count, size = box.stat()
                say(f"  {user}: {count} message(s), {size} bytes")
                for n in range(1, count + 1):
                    head = email.message_from_bytes(b"\r\n".join(box.top(n, 0)[1]))
                    say(f"    {n}. from {head['From']:26} {head['Subject']}")
            finally:
                box.quit()
        say()
        say("read them with any POP3 client, for example:")
        say(f"  python3 -c \"import poplib; p = poplib.POP3('127.0.0.1', {self.pop3_port}); p.user('alice'); "
            f"p.pass_('{USERS['alice'][0]}'); print(b'\\n'.join(p.retr(1)[1]).decode())\"")
        say(f"  fetchmail -f {self.fetchmailrc()} --pidfile {self.dir / 'fetchmail.pid'}   (copies both mailboxes to {self.dir}/*.mbox, keeps them on the box)")
        say("  or a mail program: server 127.0.0.1, port %d, user alice or bob, no TLS" % self.pop3_port)
        say()
        say(f"send more mail to the relay (127.0.0.1:{self.relay.ports['smtp']}, e.g. "
            f"swaks --server 127.0.0.1:{self.relay.ports['smtp']} --to bob@{DOMAIN}); "
            f"the gateway polls every {POLL_INTERVAL}s.")
        say(f"office PCs send through the gateway: SMTP 127.0.0.1:{self.smtp_port} (AUTH as alice to reach outside domains)")
        say(f"logs: {self.gateway_log}, {self.relay.log}")
        say("Ctrl-C stops both.")

    def fetchmailrc(self):
        path = self.dir / "fetchmailrc"
        # its own idfile: the one in $HOME would mark a later demo's mail as seen
        lines = [f'set idfile "{self.dir / "fetchids"}"', f"poll 127.0.0.1 service {self.pop3_port} protocol POP3 uidl"]
        for user, (pw, _) in USERS.items():
            mda = f"{sys.executable} -m host_tools.mbox {self.dir / user}.mbox %F"
            lines.append(f'  user "{user}" password "{pw}" sslproto "" keep mda "{mda}"')
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)  # fetchmail insists: it holds passwords
        return path

    def stop(self):
        if self.gateway:
            sim.stop(self.gateway)
        if self.relay:
            self.relay.stop()


def run(args):
    demo = Demo(args.dir, args.ports)
    try:
        say("odmrgw demo: a provider (the desktop relay) and an office gateway (simulated ESP32) on loopback")
        demo.prepare()
        demo.start_relay()
        demo.write_gateway_config()
        demo.show_accounts()
        demo.feed()
        status = demo.poll_once()
        demo.show_mailboxes()
        if args.once:
            return status
        if not demo.serve():
            return 1
        demo.office_mail()
        demo.show_pop3()
        while demo.gateway.poll() is None:
            time.sleep(1)
        say(f"the gateway stopped (exit {demo.gateway.returncode}); see {demo.gateway_log}")
        return 1
    except KeyboardInterrupt:
        say("\nstopping the gateway and the relay")
        return 0
    finally:
        demo.stop()
