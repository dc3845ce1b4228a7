# SASL mechanisms for SMTP AUTH, both sides: CRAM-MD5 (RFC 2195, which ODMR
# makes mandatory), PLAIN (RFC 4616) and LOGIN. MicroPython has no hmac
# module, so HMAC-MD5 (RFC 2104) is built on hashlib.md5 here.
import binascii
import hashlib

_BLOCK = 64
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


class SaslError(Exception):
    """Bad client input during AUTH: answered with 501 5.5.2."""


def hmac_md5(key, msg):
    if len(key) > _BLOCK:
        key = hashlib.md5(key).digest()
    key = key + bytes(_BLOCK - len(key))
    inner = hashlib.md5(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.md5(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def b64encode(data):
    return binascii.b2a_base64(data, newline=False)


def b64decode(text):
    """Strict base64: MicroPython's a2b_base64 silently skips bad characters,
    and a login must not succeed on garbage."""
    text = text.strip()
    if not text or len(text) % 4 or any(c not in _B64 for c in text):
        raise SaslError("bad base64")
    try:
        return binascii.a2b_base64(text)
    except ValueError:
        raise SaslError("bad base64")


def _as_bytes(s):
    return s.encode() if isinstance(s, str) else s


def _cram_md5_digest(secret, challenge_b64):
    return hmac_md5(_as_bytes(secret), b64decode(challenge_b64)).hex()


def cram_md5_response(user, secret, challenge_b64):
    """The client's answer to a 334 challenge, base64-encoded."""
    return b64encode(_as_bytes(user) + b" " + _cram_md5_digest(secret, challenge_b64).encode())


def cram_md5_challenge(hostname, nonce):
    """A server challenge in RFC 2195's <unique.time@host> shape, base64."""
    return b64encode(b"<%s@%s>" % (_as_bytes(nonce), _as_bytes(hostname)))


def cram_md5_parse(response_b64):
    """(user, hex digest) from a client's response."""
    parts = b64decode(response_b64).split(b" ")
    if len(parts) != 2 or len(parts[1]) != 32:
        raise SaslError("malformed CRAM-MD5 response")
    return parts[0].decode(), parts[1].decode()


def cram_md5_check(secret, challenge_b64, digest_hex):
    return equal(_cram_md5_digest(secret, challenge_b64), digest_hex.lower())


def plain_response(user, secret):
    return b64encode(b"\0" + _as_bytes(user) + b"\0" + _as_bytes(secret))


def plain_parse(response_b64):
    """(user, password) from an AUTH PLAIN response."""
    parts = b64decode(response_b64).split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise SaslError("malformed PLAIN response")
    return parts[1].decode(), parts[2].decode()


def equal(a, b):
    """Compare secrets in time that does not depend on where they differ."""
    if len(a) != len(b):
        return False
    diff = 0
    for x, y in zip(_as_bytes(a), _as_bytes(b)):
        diff |= x ^ y
    return diff == 0
