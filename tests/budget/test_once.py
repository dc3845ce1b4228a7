"""`odmrgw sim --once` as a user runs it, at the sim's default heap for the
binary in use: one poll over STARTTLS that flushes outgoing mail and
pulls a 100-recipient message with the rest, every message delivered."""
import json
import os
import ssl
import subprocess
import sys

from host_tools import mpy
from host_tools.relay.testing import RelayProcess, Sink, write_config
from tests.budget.officemail import message
from tests.conftest import record_figure

ODMRGW = [sys.executable, "-m", "host_tools"]
QUEUE = """
import sys
from board import Board
from gateway.spool import Spool
b = Board(sys.argv[1])
sp = Spool(b.mount_sd() + "/spool", b.now)
sp.recover()
for i in range(int(sys.argv[2])):
    d = sp.begin("alice@example.test", [("partner%d@far.test" % i, "out")])
    d.write(b"From: alice@example.test\\r\\nSubject: out %d\\r\\nMessage-ID: <out-%d@example.test>\\r\\n\\r\\nhello\\r\\n" % (i, i))
    d.commit()
b.umount_sd()
"""


def test_once_flushes_and_pulls_over_starttls_at_the_default_heap(tmp_path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("relay.test", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "relay.pem")
    cert.private_key_pem.write_to_path(tmp_path / "relay-key.pem")
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "ca.der").write_bytes(ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode()))
    sink = Sink()
    hop = sink.serve()
    relay = RelayProcess(write_config(tmp_path / "relay.toml", tmp_path / "queue", next_hop=f"127.0.0.1:{hop.port}",
                                      tls=(tmp_path / "relay.pem", tmp_path / "relay-key.pem"),
                                      listen={"smtp": "127.0.0.1:0", "odmr": "127.0.0.1:0",
                                              "submission": "127.0.0.1:0"})).start()
    try:
        tls = {"tls": "starttls", "ca": "ca.der", "server_name": "relay.test", "user": "office", "secret": "s3cret",
               "host": "127.0.0.1"}
        cfg = {"hostname": "gw.example.test", "domains": ["example.test"],
               "relay": dict(tls, port=relay.ports["odmr"]), "smarthost": dict(tls, port=relay.ports["submission"]),
               "users": {u: {"password": u + "-pw", "addresses": [u + "@example.test"]} for u in ("alice", "bob")},
               "catch_all": {"example.test": "bob"}}
        (flash / "gw.json").write_text(json.dumps(cfg))
        image = tmp_path / "card.img"
        subprocess.run([*ODMRGW, "sd", "mkfs", image, "--size", "32M"], check=True, capture_output=True, timeout=60)
        (tmp_path / "queue.py").write_text(QUEUE)
        mpy.run(tmp_path / "queue.py", image, 5, heap="1m", check=True, capture_output=True, timeout=60)
        import smtplib

        with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=60) as s:
            many = [f"staff{i}@example.test" for i in range(99)] + ["alice@example.test"]
            s.sendmail("outside@far.test", many, message(b"many", many[0], 3000))
            for i in range(10):
                s.sendmail("outside@far.test", ["alice@example.test"], message(b"m%d" % i, "alice@example.test", 5000))
        heap = os.environ.get("ODMRGW_BUDGET_HEAP")  # to look for the smallest; unset: the sim's default
        r = subprocess.run([*ODMRGW, "sim", "--config", flash / "gw.json", "--sd", image, "--once"]
                           + (["--heap", heap] if heap else []),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "pulled 11 message(s)" in r.stdout and "sent 5, deferred 0, bounced 0" in r.stdout, r.stdout
        assert "MemoryError" not in r.stdout + r.stderr
        export = tmp_path / "export"
        subprocess.run([*ODMRGW, "sd", "export", image, export], check=True, capture_output=True, timeout=120)
        assert len(list((export / "alice").glob("*/*"))) == 11
        assert len(list((export / "bob").glob("*/*"))) == 1
        record_figure(f"sim --once over STARTTLS ({mpy.pointer_bits()}-bit)", f"passes at {heap or mpy.sim_heap()}")
    finally:
        relay.stop()
        hop.stop()
