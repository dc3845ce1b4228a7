# The listeners' TLS: STARTTLS on the LAN SMTP listener, STLS on POP3. One
# server context per certificate, made at start from the DER files on the
# flash (odmrgw config push makes them), and shared when both listeners
# name the same files: each context holds its key in mbedTLS memory.
_made = {}


def context(conf, what):
    """The SSLContext for conf["cert"] and conf["key"], or None unless both
    are set. A file that will not load is an error naming the key: the
    listener must not quietly fall back to passwords in clear."""
    cert, key = conf.get("cert"), conf.get("key")
    if not (cert and key):
        return None
    ctx = _made.get((cert, key))
    if ctx is None:
        import ssl

        from gateway.compat import load_cert_chain

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            load_cert_chain(ctx, cert, key)
        except (OSError, ValueError) as e:
            raise ValueError("%s.cert/%s.key: cannot load %s and %s as DER: %s" % (what, what, cert, key, e))
        _made[(cert, key)] = ctx
    return ctx
