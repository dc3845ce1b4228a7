"""Passwords on the LAN, with real clients against the firmware on the real
micropython executable: smtplib's STARTTLS and poplib's STLS, with the
certificate `odmrgw config push` makes for the box (issue 12, 3). Host
tests: CPython only."""
import json
import poplib
import smtplib
import ssl
import subprocess

import pytest
import trustme
from cryptography import x509

from host_tools.config import BOX_CERT, BOX_KEY, make_certificate
from tests.e2e.test_local import USERS, LocalGateway, firmware_mpy  # noqa: F401 - the fixture
from tests.host import simboard
from tests.host.test_deploy import flash_dir, odmrgw


def box_with_tls(tmp_path, firmware_mpy, ca, **cfg):
    cert, key = make_certificate("gw.example.test", ca.cert_pem.bytes(), ca.private_key_pem.bytes())
    (tmp_path / BOX_CERT).write_bytes(cert)
    (tmp_path / BOX_KEY).write_bytes(key)
    files = {"cert": str(tmp_path / BOX_CERT), "key": str(tmp_path / BOX_KEY)}
    gw = LocalGateway(tmp_path, firmware_mpy, pop3=files)
    conf = json.loads(gw.config.read_text())
    conf["smtp"].update(files)
    conf.update(cfg)
    gw.config.write_text(json.dumps(conf))
    return gw


def client_context(ca):
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False  # the test connects to 127.0.0.1; the chain is still verified
    return ctx


def test_passwords_cross_the_lan_only_inside_tls(tmp_path, firmware_mpy):
    # Issue 12, 3: the LAN listener offered AUTH PLAIN LOGIN without TLS and
    # no STARTTLS; POP3 took USER/PASS in clear although STLS was offered.
    ca = trustme.CA()
    gw = box_with_tls(tmp_path, firmware_mpy, ca)
    try:
        gw.start()
        s = smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=20)
        s.ehlo("pc.example.test")
        assert s.has_extn("starttls") and s.esmtp_features["auth"].split() == ["CRAM-MD5"]
        assert s.docmd("AUTH", "PLAIN AGFsaWNlAGFsaWNlLXB3")[0] == 538
        s.starttls(context=client_context(ca))
        s.ehlo("pc.example.test")
        assert not s.has_extn("starttls") and s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN", "CRAM-MD5"]
        s.user, s.password = "alice", USERS["alice"]
        assert s.auth("PLAIN", s.auth_plain)[0] == 235
        s.sendmail("alice@example.test", ["bob@example.test"], b"Subject: tls\r\n\r\nsecret stuff\r\n")
        s.quit()
        c = poplib.POP3("127.0.0.1", gw.pop3_port, timeout=20)
        caps = c.capa()
        assert "STLS" in caps and "USER" not in caps
        with pytest.raises(poplib.error_proto) as e:
            c.user("bob")
        assert b"STLS first" in e.value.args[0]
        c.stls(client_context(ca))
        assert "USER" in c.capa()
        c.user("bob")
        c.pass_(USERS["bob"])
        assert c.retr(1)[1][-1] == b"secret stuff"
        c.quit()
    finally:
        gw.stop()


def test_clear_text_logins_is_the_old_clients_switch(tmp_path, firmware_mpy):
    ca = trustme.CA()
    gw = box_with_tls(tmp_path, firmware_mpy, ca, clear_text_logins=True)
    try:
        gw.start()
        s = smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=20)
        s.ehlo("pc.example.test")
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN", "CRAM-MD5"]
        s.quit()
        c = gw.pop("alice")  # USER/PASS without STLS
        c.quit()
    finally:
        gw.stop()


@pytest.fixture
def sim(tmp_path):
    (tmp_path / "board").mkdir()
    board = simboard.start(tmp_path / "board")
    yield board
    board.close()


def test_config_push_gives_the_box_a_certificate_and_keeps_it(sim, tmp_path):
    cfg = {"hostname": "gw.example.test", "users": {"alice": {"password": "pw", "addresses": ["alice@example.test"]}}}
    (tmp_path / "gw.json").write_text(json.dumps(cfg))
    out = odmrgw("config", "push", str(tmp_path / "gw.json"), "--port", str(sim.link), "--no-restart").stdout
    assert "certificate: new for gw.example.test, self-signed" in out
    flash = flash_dir(sim)
    cert = x509.load_der_x509_certificate((flash / BOX_CERT).read_bytes())
    assert cert.subject == cert.issuer and "gw.example.test" in cert.subject.rfc4514_string()
    pushed = json.loads((flash / "config.json").read_text())
    assert pushed["smtp"]["cert"] == pushed["pop3"]["cert"] == BOX_CERT and pushed["pop3"]["key"] == BOX_KEY
    # A second push keeps it: the mail clients trust that one.
    out = odmrgw("config", "push", str(tmp_path / "gw.json"), "--port", str(sim.link), "--no-restart").stdout
    assert f"keeping the box's {BOX_CERT}" in out
    assert x509.load_der_x509_certificate((flash / BOX_CERT).read_bytes()) == cert


def test_config_push_signs_with_the_users_ca(sim, tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.private_key_pem.write_to_path(str(tmp_path / "ca.key"))
    (tmp_path / "gw.json").write_text(json.dumps({"hostname": "gw.example.test"}))
    out = odmrgw("config", "push", str(tmp_path / "gw.json"), "--port", str(sim.link), "--no-restart",
                 "--tls-ca", str(tmp_path / "ca.pem"), "--tls-ca-key", str(tmp_path / "ca.key")).stdout
    assert "signed by your CA" in out
    der = (flash_dir(sim) / BOX_CERT).read_bytes()
    # openssl verifies the chain to the user's CA.
    pem = ssl.DER_cert_to_PEM_cert(der)
    (tmp_path / "box.pem").write_text(pem)
    r = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "box.pem")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = odmrgw("config", "push", str(tmp_path / "gw.json"), "--port", str(sim.link), "--tls-ca", str(tmp_path / "ca.pem"), ok=False)
    assert bad.returncode != 0 and "--tls-ca and --tls-ca-key go together" in bad.stderr and "Traceback" not in bad.stderr


def test_commands_pipelined_behind_starttls_are_dropped(tmp_path, firmware_mpy):
    # STARTTLS command injection (CVE-2011-0411 style): what was sent in
    # clear after STARTTLS must not be answered inside TLS as if it came there.
    import socket

    ca = trustme.CA()
    gw = box_with_tls(tmp_path, firmware_mpy, ca)
    try:
        gw.start()
        with socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=20) as raw:
            f = raw.makefile("rb")
            assert f.readline().startswith(b"220")
            raw.sendall(b"EHLO pc\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            raw.sendall(b"STARTTLS\r\nHELP\r\n")
            assert f.readline().startswith(b"220 2.0.0")
            tls = client_context(ca).wrap_socket(raw, server_hostname="gw.example.test")
            tf = tls.makefile("rb")
            tls.sendall(b"NOOP\r\n")
            assert tf.readline().startswith(b"250 2.0.0"), "the injected HELP was answered"
            tls.sendall(b"QUIT\r\n")
            assert tf.readline().startswith(b"221")
    finally:
        gw.stop()
