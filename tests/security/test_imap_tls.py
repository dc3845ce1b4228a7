"""IMAP passwords on the LAN, with imaplib against the firmware on the real
micropython executable: LOGINDISABLED until STARTTLS with the certificate
`odmrgw config push` makes (POP3's, which IMAP shares),
then LOGIN and AUTHENTICATE PLAIN inside TLS. Host tests: CPython only."""
import imaplib
import json

import pytest
import trustme

from tests.e2e.test_local import USERS, firmware_mpy, free_port  # noqa: F401 - the fixture
from tests.security.test_tls_logins import box_with_tls, client_context

HEAP = "320k"  # SMTP, POP3 and IMAP with TLS in one 64-bit process (docs/heap.md)


def test_imap_takes_a_password_only_inside_tls(tmp_path, firmware_mpy):
    ca = trustme.CA()
    gw = box_with_tls(tmp_path, firmware_mpy, ca)
    gw.heap = HEAP
    port = free_port()
    conf = json.loads(gw.config.read_text())
    conf["imap"] = {"port": port}
    gw.config.write_text(json.dumps(conf))
    try:
        gw.start()
        c = imaplib.IMAP4("127.0.0.1", port, timeout=20)
        assert "LOGINDISABLED" in c.capabilities and "STARTTLS" in c.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            c.login("alice", USERS["alice"])
        c.starttls(client_context(ca))
        assert "AUTH=PLAIN" in c.capabilities and "STARTTLS" not in c.capabilities
        c.login("alice", USERS["alice"])
        assert c.select("INBOX")[0] == "OK"
        c.logout()
        c = imaplib.IMAP4("127.0.0.1", port, timeout=20)
        c.starttls(client_context(ca))
        c.authenticate("PLAIN", lambda challenge: b"\0bob\0" + USERS["bob"].encode())
        assert c.state == "AUTH"
        c.logout()
    finally:
        gw.stop()
