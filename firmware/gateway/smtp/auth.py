# SMTP AUTH on the receiving side (RFC 4954): PLAIN, LOGIN and CRAM-MD5,
# checked against handler.auth_password. Imported only when a session sees
# AUTH, so a receiver that never offers it (the provider's delivery after
# ATRN) does not carry this code or the SASL module in its heap.
import asyncio

from gateway import sasl
from gateway.compat import ticks_ms


class Cancelled(Exception):
    """The client sent "*" to abandon the exchange."""


async def command(session, arg):
    """The AUTH verb: only when the handler advertised it in EHLO."""
    if not session.mechanisms or session.user or session.mail_from is not None:
        session.error(503, "5.5.1 AUTH not available now")
        return
    mech, _, initial = arg.partition(" ")
    mech = mech.upper()
    if mech not in session.mechanisms and mech in ("PLAIN", "LOGIN") and not session.secure:
        session.error(538, "5.7.11 Encryption required: PLAIN and LOGIN only after STARTTLS (CRAM-MD5 works without)")
        return
    if mech not in session.mechanisms or mech not in ("PLAIN", "LOGIN", "CRAM-MD5"):
        session.error(504, "5.5.4 Unrecognized authentication type")
        return
    try:
        user, ok = await authenticate(session, mech, initial.strip())
    except sasl.SaslError:
        session.error(501, "5.5.2 Cannot decode response")
        return
    except Cancelled:
        session.error(501, "5.0.0 Authentication cancelled")
        return
    # From the verdict to the record of a failure nothing waits, so logins
    # in flight at once from one address all count against its lockout.
    logins = session.handler.logins(session)
    ip = session.peer
    wait = logins.locked(ip) if logins else 0
    if wait:
        session.error(454, "4.7.0 Too many failed logins from your address, try again in %d minutes" % ((wait + 59) // 60))
        return
    if not ok:
        session.login_failures += 1
        if logins:
            logins.failed(ip, user, "smtp")
            await asyncio.sleep(logins.DELAY)
        session.error(535, "5.7.8 Authentication credentials invalid")
        if logins and session.login_failures >= logins.SESSION_TRIES:
            session.hang_up(421, "4.7.0 Too many failed logins, closing connection")
        return
    session.user = user
    session.reply(235, "2.7.0 Authentication successful")


async def authenticate(session, mech, initial):
    """(user name, whether the credentials are right). Raises
    sasl.SaslError for undecodable input and Cancelled for "*"."""
    if mech == "PLAIN":
        resp = initial.encode() if initial else await _challenge(session, "")
        user, password = sasl.plain_parse(resp)
    elif mech == "LOGIN":
        user = sasl.b64decode(initial.encode() if initial else await _challenge(session, "VXNlcm5hbWU6"))
        password = sasl.b64decode(await _challenge(session, "UGFzc3dvcmQ6"))
        try:
            user, password = user.decode(), password.decode()
        except UnicodeError:
            raise sasl.SaslError("not UTF-8")
    else:
        return await _cram_md5(session, initial)
    secret = _secret(session, user)
    return user, bool(secret) and sasl.equal(secret, password)


async def _cram_md5(session, initial):
    if initial:
        raise sasl.SaslError("CRAM-MD5 takes no initial response")
    import random

    nonce = "%d.%d" % (random.getrandbits(30), ticks_ms())
    challenge = sasl.cram_md5_challenge(session.handler.hostname, nonce)
    user, digest = sasl.cram_md5_parse(await _challenge(session, challenge.decode()))
    secret = _secret(session, user)
    return user, bool(secret) and sasl.cram_md5_check(secret, challenge, digest)


def _secret(session, user):
    """The user's password, or "" when there is none. An empty password
    (the config's default) never logs in, by any mechanism: with CRAM-MD5
    anyone can key the digest with an empty secret."""
    return session.handler.auth_password(session, user) or ""


async def _challenge(session, text):
    """334 and the client's base64 answer, as bytes."""
    session.reply(334, text)
    line = await session.read_line()
    if line is None:
        raise sasl.SaslError("response too long")
    if line == b"*":
        raise Cancelled()
    return line
