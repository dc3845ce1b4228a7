# The IMAP server's session layer over scripted streams, on both runtimes:
# greeting, capabilities, logins and their throttling, TLS rules, bad input.
# imaplib against the simulated box is in tests/e2e/test_imap_clients.py.
import support
from gateway.guard import Logins
from imap_support import LOGIN, PLAIN, box_with, talk, tagged

# The IMAP modules (.mpy) beside the store's, this module compiled from
# source with its message bodies, and a session's 3.5 KB of buffers.
MICROPYTHON_HEAP = "256k"


def test_greeting_capability_noop_logout():
    boxes, _ = box_with()
    out = talk(boxes, b"c1 CAPABILITY\r\nc2 NOOP\r\nc3 LOGOUT\r\n")
    assert out.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    assert b"* CAPABILITY IMAP4rev1 LITERAL+" in out and b"AUTH=PLAIN" in out
    assert b"STARTTLS" not in out  # no certificate configured
    assert tagged(out, b"c1") == b"c1 OK CAPABILITY completed"
    assert tagged(out, b"c2") == b"c2 OK NOOP completed"
    assert b"* BYE logging out\r\nc3 OK LOGOUT completed\r\n" in out


def test_login_with_quoted_strings_and_literals():
    boxes, _ = box_with()
    out = talk(boxes, b'a1 LOGIN "alice" {8}\r\n', b"alice-pw\r\n", b"a2 NAMESPACE\r\n")
    assert b"+ go ahead\r\n" in out
    assert tagged(out, b"a1").startswith(b"a1 OK [CAPABILITY")
    assert b'* NAMESPACE (("" "/")) NIL NIL' in out
    # LITERAL+: no continuation asked for, none sent
    out = talk(boxes, b"a1 LOGIN {5+}\r\nalice {8+}\r\nalice-pw\r\na2 NOOP\r\n")
    assert b"+ go ahead" not in out and tagged(out, b"a1").startswith(b"a1 OK")


def test_authenticate_plain_with_and_without_initial_response():
    from gateway import sasl

    boxes, _ = box_with()
    answer = sasl.plain_response("alice", "alice-pw")
    out = talk(boxes, b"a1 AUTHENTICATE PLAIN " + answer + b"\r\n")
    assert tagged(out, b"a1").startswith(b"a1 OK")
    out = talk(boxes, b"a1 AUTHENTICATE PLAIN\r\n", answer + b"\r\n")
    assert b"+ \r\n" in out and tagged(out, b"a1").startswith(b"a1 OK")
    out = talk(boxes, b"a1 AUTHENTICATE PLAIN\r\n", b"*\r\n", b"a2 AUTHENTICATE CRAM-MD5\r\n")
    assert tagged(out, b"a1").startswith(b"a1 BAD") and tagged(out, b"a2").startswith(b"a2 NO")


def test_commands_need_their_state():
    boxes, _ = box_with()
    out = talk(boxes, b"a1 SELECT INBOX\r\n", b"a2 FETCH 1 FLAGS\r\n", LOGIN, b"a3 FETCH 1 FLAGS\r\n",
               b"a4 LOGIN alice alice-pw\r\n", b"a5 FROB\r\n", b"* NOOP\r\n")
    assert tagged(out, b"a1") == b"a1 BAD log in first"
    assert tagged(out, b"a2") == b"a2 BAD no mailbox selected"
    assert tagged(out, b"a3") == b"a3 BAD no mailbox selected"
    assert tagged(out, b"a4") == b"a4 BAD already logged in"
    assert tagged(out, b"a5") == b"a5 BAD unknown command"
    assert b"* BAD a command starts with its tag" in out


def test_wrong_passwords_are_delayed_counted_and_end_the_session():
    boxes, _ = box_with()
    with support.patched(Logins, DELAY=0.05):
        out = talk(boxes, b"a1 LOGIN alice nope\r\na2 LOGIN alice nope\r\na3 LOGIN bob nope\r\na4 NOOP\r\n")
    assert tagged(out, b"a1") == b"a1 NO [AUTHENTICATIONFAILED] wrong user name or password"
    assert out.endswith(b"a3 NO [AUTHENTICATIONFAILED] wrong user name or password\r\n* BYE too many failed logins\r\n")
    with support.patched(Logins, DELAY=0.05):
        talk(boxes, b"a1 LOGIN alice nope\r\na2 LOGIN alice nope\r\n")  # the fifth failure from this address
        out = talk(boxes, LOGIN)  # locked out: not even the right password is checked
    assert tagged(out, b"a1").startswith(b"a1 NO [UNAVAILABLE] too many failed logins from your address")


def test_no_login_in_clear_while_starttls_is_offered():
    boxes, _ = box_with()
    tls = object()  # offered, never started here
    out = talk(boxes, b"a0 CAPABILITY\r\n", LOGIN, b"a2 AUTHENTICATE PLAIN AGFsaWNlAGFsaWNlLXB3\r\n", tls=tls)
    assert b"STARTTLS LOGINDISABLED" in out and b"AUTH=PLAIN" not in out
    assert tagged(out, b"a1").startswith(b"a1 NO [PRIVACYREQUIRED]")
    assert tagged(out, b"a2").startswith(b"a2 NO [PRIVACYREQUIRED]")
    boxes.policy.cfg["clear_text_logins"] = True
    out = talk(boxes, LOGIN, tls=tls)
    assert tagged(out, b"a1").startswith(b"a1 OK")


def test_bad_input_gets_bad_and_the_session_goes_on():
    boxes, _ = box_with()
    out = talk(boxes, b"a1 LOGIN {4294967295}\r\n", b"a2 NOOP ", 10 << 20, b"\r\n", b"a3 LOGIN " + b"(" * 20 + b"\r\n",
               b"a4 LOGIN \xff\xfe \"x\r\n", b"a5 NO\0OP\r\n", b"a6 LOGIN {3+}\r\nabc \"\r\n",
               b"a7 LOGIN {70000+}\r\n" + b"z" * 100)
    assert tagged(out, b"a1") == b"a1 BAD literal too big"
    assert b"+ go ahead" not in out  # the client was never asked for the literal
    assert b"* BAD line too long" in out
    assert tagged(out, b"a3") == b"a3 BAD too many nested parentheses"
    assert tagged(out, b"a4").startswith(b"a4 BAD")
    assert tagged(out, b"a5") == b"a5 BAD NUL in a command"
    assert tagged(out, b"a6") == b"a6 BAD unterminated quoted string"
    assert out.endswith(b"* BYE literal too big\r\n")  # a LITERAL+ too big to skip ends the session


def test_too_many_bad_commands_end_the_session():
    boxes, _ = box_with()
    out = talk(boxes, *[b"x%d FROB\r\n" % i for i in range(12)])
    assert out.endswith(b"x9 BAD unknown command\r\n* BYE too many bad commands\r\n")


def test_made_up_commands_cost_no_heap_for_good():
    support.needs_micropython("gc.mem_alloc")
    import gc

    boxes, _ = box_with(PLAIN)

    def words(first):
        return b"".join(b"t%d %s\r\n" % (n, "".join(chr(65 + int(d)) for d in "%04d" % n).encode())
                        for n in range(first, first + 9))

    talk(boxes, LOGIN, words(0))
    gc.collect()
    before = gc.mem_alloc()
    for k in range(30):
        talk(boxes, LOGIN, words(1000 + 9 * k))
    gc.collect()
    assert gc.mem_alloc() - before < 2048, gc.mem_alloc() - before


def test_imap_is_off_unless_its_port_is_set():
    from gateway import config

    cfg = config.validate({})
    assert cfg["imap"] == {"port": 0, "sessions": 2}
    assert config.validate({"imap": {"port": 143}})["imap"]["port"] == 143
    with support.raises(config.ConfigError) as e:
        config.validate({"imap": {"port": 110}})
    assert str(e.value) == "imap.port: is pop3.port too (110); each listener needs its own"
    with support.raises(config.ConfigError) as e:
        config.validate({"imap": {"port": -1}})
    assert str(e.value) == "imap.port: must be a port number (1-65535) or 0 (off)"


def test_imap_code_comes_with_the_first_client_and_goes_with_the_last():
    # The listener alone stays loaded: the session's code (48 KB on 32-bit)
    # is the heap's again once no IMAP client is connected.
    support.needs_micropython("drop_modules")
    import asyncio
    import sys

    from gateway.imap import listener

    boxes, _ = box_with(PLAIN)

    async def client(port, script):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(script)
        await w.drain()
        out = b""
        while b"z9 OK" not in out:
            got = await r.read(4096)
            if not got:
                break
            out += got
        w.close()
        await w.wait_closed()
        return out

    async def run():
        import random

        for _ in range(50):
            port = random.randrange(20000, 60000)
            try:
                # The box's validated config (the policy holds it), with a port for IMAP.
                srv = await listener.serve(dict(boxes.policy.cfg, imap={"port": port, "sessions": 2}), boxes, "127.0.0.1")
                break
            except OSError:
                pass
        try:
            out = await client(port, LOGIN + b"a2 SELECT INBOX\r\na3 FETCH 1 (ENVELOPE BODYSTRUCTURE)\r\nz9 LOGOUT\r\n")
            assert b"a3 OK FETCH completed" in out
            for _ in range(20):  # the session ends just after its last reply
                await asyncio.sleep(0.05)
                if "gateway.imap.session" not in sys.modules:
                    break
            assert not [m for m in sys.modules if m.startswith("gateway.imap.") and m != "gateway.imap.listener"]
            assert b"z9 OK" in await client(port, LOGIN + b"z9 LOGOUT\r\n")  # and it comes back
        finally:
            srv.close()

    support.run(run())
