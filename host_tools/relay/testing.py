"""Real peers around the relay for tests, the benchmark and the firmware's
end-to-end tests: the relay as a subprocess, an aiosmtpd sink, fetchmail's
ODMR client, and a scripted ODMR customer that hands the turned line to
aiosmtpd. Loopback only; every listener binds port 0."""
import asyncio
import hmac
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from base64 import b64decode, b64encode
from pathlib import Path

from aiosmtpd.smtp import SMTP

from host_tools.mpy import REPO

_LISTENING = re.compile(r"^relay: (\w+) listening on (\S+):(\d+)")


def write_config(path, queue, accounts=(("office", "s3cret", ["example.test"]),), listen=None,
                 tls=None, next_hop=None, limits=None, hostname="relay.test"):
    """A relay.toml; listeners default to smtp + odmr on port 0. An account is
    (user, secret, domains) or (user, secret, domains, recipients)."""
    listen = listen or {"smtp": "127.0.0.1:0", "odmr": "127.0.0.1:0"}
    out = [f'hostname = "{hostname}"', f'queue = "{queue}"', "[listen]"]
    out += [f'{k} = "{v}"' for k, v in listen.items()]
    if tls:
        out += ["[tls]", f'cert = "{tls[0]}"', f'key = "{tls[1]}"']
    for user, secret, domains, *recipients in accounts:
        out += ["[[account]]", f'user = "{user}"', f'secret = "{secret}"', f"domains = {_toml_list(domains)}"]
        out += [f"recipients = {_toml_list(r)}" for r in recipients]
    if next_hop:
        out += ["[outbound]", f'next_hop = "{next_hop}"', "retry_interval = 1"]
    if limits:
        out += ["[limits]"] + [f"{k} = {v!r}".replace("'", '"') for k, v in limits.items()]
    Path(path).write_text("\n".join(out) + "\n")
    return Path(path)


def _toml_list(items):
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


class RelayProcess:
    """`python -m host_tools relay --config FILE` as a child; .ports maps each
    listener name to the port it bound (read from its stderr)."""

    def __init__(self, config, log=None):
        self.config = Path(config)
        self.log = Path(log or self.config.with_suffix(".log"))
        self.proc = None
        self.ports = {}

    def start(self, timeout=15):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host_tools", "relay", "--config", str(self.config)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.ports = {}
        expected = self._expected_listeners()
        deadline = time.monotonic() + timeout
        while set(self.ports) != expected:
            line = self.proc.stderr.readline()
            if not line or time.monotonic() > deadline:
                self.stop()
                logf.write(line + self.proc.stderr.read())
                logf.close()
                raise RuntimeError(f"relay did not start: {self.log.read_text()[-2000:]}")
            logf.write(line)
            m = _LISTENING.match(line.decode())
            if m:
                self.ports[m.group(1)] = int(m.group(3))
        # Keep draining stderr into the log so the child never blocks on a full pipe.
        self._pump_thread = threading.Thread(target=self._pump, args=(self.proc.stderr, logf), daemon=True)
        self._pump_thread.start()
        return self

    def _pump(self, pipe, logf):
        for line in pipe:
            logf.write(line)
            logf.flush()
        logf.close()

    def _expected_listeners(self):
        import tomllib

        return set(tomllib.loads(self.config.read_text()).get("listen", {}))

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._flushed()

    def stop(self):
        """SIGTERM, then SIGKILL after 10 s; returns the exit status. The log
        is complete when this returns."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._flushed()
        return self.proc.returncode if self.proc else None

    def _flushed(self):
        thread = getattr(self, "_pump_thread", None)
        if thread:
            thread.join(10)

    def queue(self, *args):
        """Run `odmrgw relay queue --config ... ARGS`; returns the CompletedProcess."""
        return subprocess.run(
            [sys.executable, "-m", "host_tools", "relay", "queue", "--config", str(self.config), *args],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Sink:
    """An aiosmtpd handler that keeps every message; `policy(address)` may
    return an SMTP reply string to refuse a recipient; `pipelining` makes it
    announce PIPELINING."""

    def __init__(self, policy=None, delay=0.0, pipelining=False):
        self.messages = []
        self.policy = policy
        self.delay = delay
        self.pipelining = pipelining
        self.lock = threading.Lock()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            # aiosmtpd reads pipelined commands correctly but does not announce it.
            responses = responses[:-1] + ["250-PIPELINING", responses[-1]]
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        refusal = self.policy(address) if self.policy else None
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"

    def serve(self, quickack=False):
        """Start on a free loopback port in a thread: returns a Listener (.port, .stop()).
        quickack: acknowledge every segment at once, so a peer that writes line
        by line under Nagle (fetchmail's ODMR pipe) is not held up by delayed ACKs."""
        return Listener(lambda: (QuickAckSMTP if quickack else SMTP)(self, hostname="customer.test"))


class QuickAckSMTP(SMTP):
    def data_received(self, data):
        # Linux clears TCP_QUICKACK after use, so it is set again for every read.
        self.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        super().data_received(data)


class Listener:
    """An asyncio server on 127.0.0.1:0 running in its own thread."""

    def __init__(self, factory):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start():
            self.server = await self.loop.create_server(factory, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("listener did not start")

    def _run(self, start):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def stop(self):
        async def close():
            self.server.close()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def fetchmail(odmr_port, smtp_port, user="office", password="s3cret", domains=("example.test",),
              timeout=120, extra=""):
    """Run fetchmail's ODMR client once; returns the CompletedProcess (its
    verbose log and errors together in .stdout).
    fetchmail wants a private rcfile (0600) and a HOME for its state files,
    and as root it locks /var/run/fetchmail.pid unless given its own pidfile,
    which would make parallel runs refuse each other."""
    home = tempfile.mkdtemp(prefix="fetchmail-")
    try:
        rc = Path(home) / "fetchmailrc"
        rc.write_text(
            f'poll 127.0.0.1 service {odmr_port} protocol ODMR user "{user}" password "{password}" '
            f'fetchdomains {",".join(domains)} smtphost 127.0.0.1/{smtp_port} {extra}\n'
        )
        rc.chmod(0o600)
        env = dict(os.environ, HOME=home, FETCHMAILHOME=home, LC_ALL="C")
        return subprocess.run(
            ["fetchmail", "-f", str(rc), "--pidfile", str(Path(home) / "fetchmail.pid"), "-N", "-d0", "--nosyslog", "-v"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


class Customer:
    """A scripted ODMR customer over a plain socket: send commands, read
    replies, and after a 250 to ATRN hand the line to aiosmtpd (`turn`)."""

    def __init__(self, port, tls_context=None, implicit_tls=False, timeout=20):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if implicit_tls:
            self.sock = tls_context.wrap_socket(self.sock, server_hostname="relay.test")
        self.tls_context = tls_context
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self):
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError("relay closed the connection")
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), lines

    def send(self, raw):
        self.sock.sendall(raw if isinstance(raw, bytes) else raw.encode() + b"\r\n")

    def cmd(self, line):
        self.send(line)
        return self.reply()

    def starttls(self):
        code, _ = self.cmd("STARTTLS")
        assert code == 220
        self.sock = self.tls_context.wrap_socket(self.sock, server_hostname="relay.test")
        self.file = self.sock.makefile("rb")

    def cram_md5(self, user, secret):
        code, lines = self.cmd("AUTH CRAM-MD5")
        if code != 334:
            return code, lines
        digest = hmac.new(secret.encode(), b64decode(lines[0][4:]), "md5").hexdigest()
        return self.cmd(b64encode(f"{user} {digest}".encode()).decode())

    def login(self, user="office", secret="s3cret", domains=None):
        """EHLO, AUTH CRAM-MD5, ATRN; returns the ATRN reply."""
        assert self.cmd("EHLO customer.test")[0] == 250
        assert self.cram_md5(user, secret)[0] == 235
        return self.cmd("ATRN" + (" " + ",".join(domains) if domains else ""))

    def turn(self, handler, timeout=60):
        """Serve the reversed line with aiosmtpd until the relay hangs up."""
        self.file.close()
        sock, self.sock = self.sock, None

        async def serve():
            done = asyncio.get_running_loop().create_future()
            sock.setblocking(False)
            await asyncio.get_running_loop().connect_accepted_socket(lambda: _customer_session(handler, done), sock)
            await asyncio.wait_for(done, timeout)

        asyncio.run(serve())

    def close(self):
        if self.sock:
            self.file.close()
            self.sock.close()
            self.sock = None


def _customer_session(handler, done):
    """aiosmtpd serving the customer's end of a turned line; `done` is set
    when the relay hangs up."""

    class Session(SMTP):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            if not done.done():
                done.set_result(None)

    return Session(handler, hostname="customer.test")


def tls_turn(port, tls_context, handler, implicit_tls=True, user="office", secret="s3cret", timeout=60):
    """A customer over TLS (implicit, or STARTTLS on the plain port): AUTH PLAIN,
    ATRN, then aiosmtpd takes over the TLS transport for the reversed line.
    Returns the ATRN reply code."""

    async def run():
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls_context if implicit_tls else None,
            server_hostname="relay.test" if implicit_tls else None)

        async def cmd(line=None):
            if line:
                writer.write(line.encode() + b"\r\n")
            while True:
                reply = await asyncio.wait_for(reader.readline(), timeout)
                if reply[3:4] != b"-":
                    return int(reply[:3])

        assert await cmd() == 220
        assert await cmd("EHLO customer.test") == 250
        if not implicit_tls:
            assert await cmd("STARTTLS") == 220
            await writer.start_tls(tls_context, server_hostname="relay.test")
            assert await cmd("EHLO customer.test") == 250
        assert await cmd("AUTH PLAIN " + b64encode(f"\0{user}\0{secret}".encode()).decode()) == 235
        code = await cmd("ATRN")
        if code != 250:
            writer.close()
            return code
        done = asyncio.get_running_loop().create_future()
        transport = writer.transport
        proto = _customer_session(handler, done)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        await asyncio.wait_for(done, timeout)
        return code

    return asyncio.run(run())


def tls_files(directory, hostname="relay.test"):
    """A trustme CA and a server cert for hostname and 127.0.0.1: returns
    (cert_path, key_path, ca_path, client_context)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(hostname, "127.0.0.1", common_name=hostname)
    d = Path(directory)
    cert.private_key_and_cert_chain_pem.write_to_path(d / "relay.pem")
    cert.private_key_pem.write_to_path(d / "relay-key.pem")
    ca.cert_pem.write_to_path(d / "ca.pem")
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return d / "relay.pem", d / "relay-key.pem", d / "ca.pem", ctx


class Postfix:
    """A private Postfix instance (Debian's `postfix`), for the tests and the
    bench: `postfix -c CONFIG start` with its config in `directory`, smtpd on
    127.0.0.1:`port` only, and nothing of the system's /etc/postfix. Mail for
    other domains goes to `relayhost` ("HOST:PORT"; the world, in a test).
    `main` is more main.cf text (e.g. `odmrgw relay postfix-config`'s lines);
    `mynetworks` are the clients that may relay (the relay's next_hop traffic).

    The queue and data directories live in a /tmp directory of their own:
    Postfix's daemons run as the postfix user, which must traverse every
    parent directory, and pytest's tmp directories are 0700."""

    SERVICES = (        # master.cf: only what smtpd-in, smtp-out and bounces need
        "{port} inet n - n - - smtpd",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "smtp unix - - n - - smtp",
        "relay unix - - n - - smtp",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    )

    def __init__(self, directory, port, relayhost, main="", mynetworks="127.0.0.1/32"):
        self.config = Path(directory)
        self.port = port
        self.relayhost = relayhost
        self.main = main
        self.mynetworks = mynetworks
        self.state = None

    def _main_cf(self):
        host, _, port = self.relayhost.rpartition(":")
        return "\n".join([
            "compatibility_level = 3.6",
            f"queue_directory = {self.state}/queue",
            f"data_directory = {self.state}/data",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "myhostname = postfix.test",
            "mydestination =",
            "local_recipient_maps =",
            "alias_maps =",
            "alias_database =",
            "local_transport = error:5.1.1 no local delivery here",
            f"mynetworks = {self.mynetworks}",
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            f"relayhost = [{host}]:{port}",
            f"maillog_file = {self.state}/maillog",
            "maillog_file_prefixes = /tmp",
            "biff = no",
            # No DNS on a test machine; every next hop here is an IP literal.
            "smtp_dns_support_level = disabled",
            "smtpd_peername_lookup = no",
            self.main,
        ]) + "\n"

    def start(self):
        self.state = Path(tempfile.mkdtemp(prefix="postfix-"))
        try:
            self.state.chmod(0o711)
            (self.state / "queue").mkdir()
            (self.state / "data").mkdir()
            shutil.chown(self.state / "data", "postfix")
            self.config.mkdir(parents=True, exist_ok=True)
            (self.config / "main.cf").write_text(self._main_cf())
            (self.config / "master.cf").write_text("\n".join(self.SERVICES).format(port=f"127.0.0.1:{self.port}") + "\n")
            run = self._postfix("start")
            if run.returncode != 0:
                raise RuntimeError(f"postfix did not start: {run.stdout}{run.stderr}{self.log()[-3000:]}")
        except BaseException:
            self.stop()
            raise
        return self

    def _postfix(self, *args):
        return subprocess.run(["postfix", "-c", str(self.config), *args], capture_output=True, text=True, timeout=60)

    def log(self):
        try:
            return (self.state / "maillog").read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def _master(self):
        """The master daemon's pid while it runs (a zombie does not count), else None."""
        try:
            pid = int((self.state / "queue" / "pid" / "master.pid").read_text())
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        return pid if state != "Z" else None

    def stop(self):
        """`postfix stop`, waiting (10 s at most) for the master to go; then
        SIGKILL to that one pid. The state directory is removed."""
        if not self.state:
            return
        if self._master():
            self._postfix("stop")
            deadline = time.monotonic() + 10
            while self._master() and time.monotonic() < deadline:
                time.sleep(0.05)
            pid = self._master()
            if pid:
                os.kill(pid, 9)
        shutil.rmtree(self.state, ignore_errors=True)
        self.state = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def swaks(port, to, data, sender="sender@outside.test", source="127.0.0.2", timeout=60):
    """swaks sending `data` (LF or CRLF lines) from `source` to 127.0.0.1:`port`;
    the CompletedProcess, with the transcript in .stdout. swaks puts a line
    end before its final dot itself, so the file gets `data` without its last one."""
    data = data if isinstance(data, bytes) else data.encode()
    with tempfile.NamedTemporaryFile("wb", suffix=".eml") as f:
        f.write(data.removesuffix(b"\n").removesuffix(b"\r"))
        f.flush()
        return subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--local-interface", source,
                               "--from", sender, "--to", to, "--data", "@" + f.name, "--timeout", str(timeout)],
                              capture_output=True, text=True, timeout=timeout + 30)
