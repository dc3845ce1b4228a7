# Client TLS for the box's two outgoing connections, the ODMR relay and the
# smarthost. The server's certificate is always verified: against the one CA
# stored on the board (DER, as MicroPython's ssl wants it; the host tools
# convert PEM) and for the configured server name. Only tls = "none" turns
# TLS off (gateway.smtp.client logs a warning then and never loads this).
from gateway.wire import SMTPError, reason


def server_name(conf):
    """The name the certificate must carry: server_name, else the host."""
    return conf["server_name"] or conf["host"]


def context(conf, what):
    """An SSLContext that trusts only conf["ca"] and verifies the peer."""
    import ssl

    path = conf["ca"]
    if not path:
        raise SMTPError(554, "5.7.0 %s.ca is not set: without a CA the box cannot verify %s" % (what, conf["host"]))
    try:
        with open(path, "rb") as f:
            der = f.read()
    except OSError:
        raise SMTPError(554, "5.7.0 %s.ca: cannot read the CA file %s" % (what, path))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # MicroPython's client context does not verify unless told to.
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cadata=der)
    except (ValueError, OSError):
        raise SMTPError(554, "5.7.0 %s.ca: %s is not a DER certificate (convert PEM with odmrgw config push)" % (what, path))
    return ctx


async def upgrade(reader, writer, ctx, name, timeout, what):
    """Runs the handshake on an open connection; a certificate that does not
    verify, or any TLS failure, becomes an SMTPError naming the server."""
    from gateway.compat import start_tls_client

    try:
        await start_tls_client(reader, writer, ctx, name, timeout)
    except ValueError as e:
        # MicroPython reports certificate problems as ValueError; CPython's
        # SSLCertVerificationError is one too.
        raise SMTPError(554, "5.7.0 %s: the certificate of %s is not trusted: %s" % (what, name, reason(e)))
    except (OSError, EOFError) as e:
        raise SMTPError(421, "4.7.0 %s: TLS handshake with %s failed: %s" % (what, name, reason(e)))
    except Exception as e:  # noqa: BLE001 - asyncio's TimeoutError differs by runtime
        raise SMTPError(421, "4.7.0 %s: TLS handshake with %s failed: %s" % (what, name, reason(e) or "timeout"))

