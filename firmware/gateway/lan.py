# The LAN SMTP listener: office PCs submit mail here. It is the receiver's own
# SMTP engine; the LanHandler (gateway.handlers) decides who may connect and
# where mail may go, so the relay rules live in one place.
from gateway.handlers import LanHandler


async def serve(cfg, spool, policy, host, port, on_delivered=None, on_outbound=None, sessions=4):
    """on_delivered(spool) runs after mail for our own users was accepted
    (Mailboxes.deliver_pending); on_outbound() after outside mail was (the
    scheduler's poke). A peer outside cfg["smtp"]["allow"] gets 554; one
    over `sessions` at once (cfg["smtp"]["sessions"] on the box) gets 421.
    STARTTLS is offered when cfg["smtp"] names a cert and key."""
    from gateway.compat import server_tls
    from gateway.smtp.server import serve as smtp_serve

    tls = server_tls(cfg["smtp"], "smtp")

    def handler():
        return LanHandler(cfg, spool, policy, on_delivered, on_outbound, tls)

    return await smtp_serve(handler, host, port, sessions)
