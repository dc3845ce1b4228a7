"""`odmrgw relay postfix-config`: the Postfix lines that put Postfix in front
of this relay (docs/relay.md, "Postfix in front"). Postfix takes the
Internet's mail for the held domains and hands it to the relay's smtp
listener on loopback; the relay's recipient lists become Postfix's
relay_recipient_maps, so Postfix refuses an unknown address at RCPT and no
one bounces after the fact."""
import sys
from pathlib import Path

TRANSPORT = "odmr_transport"
RECIPIENTS = "odmr_recipients"
MARK = "# written by odmrgw relay postfix-config; run it again instead of editing\n"
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def maps(cfg):
    """{file name: text} for transport_maps and relay_recipient_maps."""
    if "smtp" not in cfg.listen:
        raise ValueError("listen.smtp: Postfix hands mail to the relay's smtp listener; configure one (e.g. \"127.0.0.1:2525\")")
    host, port = cfg.listen["smtp"]
    host = _ANY.get(host, host)
    hop = f"smtp:[{host}]:{port}"
    domains = sorted(cfg.held_domains)
    recipients = set()
    for account in cfg.accounts.values():
        recipients |= account.recipients if account.recipients is not None else {"@" + d for d in account.domains}
    return {
        TRANSPORT: MARK + "".join(f"{d}\t{hop}\n" for d in domains),
        RECIPIENTS: MARK + "".join(f"{r}\tOK\n" for r in sorted(recipients)),
    }


def main_cf(cfg, directory):
    lines = [
        f"# Postfix main.cf lines for the relay {cfg.path}",
        "relay_domains = " + ", ".join(sorted(cfg.held_domains)),
        f"transport_maps = texthash:{directory / TRANSPORT}",
        f"relay_recipient_maps = texthash:{directory / RECIPIENTS}",
        "# the relay refuses larger messages, so Postfix should not take them",
        f"message_size_limit = {cfg.limits['max_size']}",
    ]
    if not cfg.next_hop:
        lines.append("# and set the relay's [outbound] next_hop to this Postfix (e.g. \"127.0.0.1:25\"), for its bounces and the boxes' mail")
    return "\n".join(lines) + "\n"


def run(cfg, args):
    try:
        files = maps(cfg)
    except ValueError as e:
        print(f"odmrgw relay postfix-config: {e}", file=sys.stderr)
        return 2
    directory = Path(args.maps).absolute()
    if not args.write:
        sys.stdout.write(main_cf(cfg, directory))
        for name, text in files.items():
            sys.stdout.write(f"\n# {directory / name}\n{text}")
        return 0
    for name, text in files.items():
        path = directory / name
        if path.exists() and not args.force and not path.read_text(errors="replace").startswith(MARK):
            print(f"odmrgw relay postfix-config: {path} exists and was not written by this command (--force replaces it)",
                  file=sys.stderr)
            return 1
    try:
        for name, text in files.items():
            # Postfix may read the map at any moment: never a half-written one.
            tmp = directory / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(directory / name)
    except OSError as e:
        print(f"odmrgw relay postfix-config: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    sys.stdout.write(main_cf(cfg, directory))
    return 0
