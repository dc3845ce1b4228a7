"""`odmrgw relay`: the desktop relay, the provider side of ODMR (RFC 2645).
The modules are imported only when the command runs."""
import argparse
import sys


def add_parser(sub):
    # --config is taken before or after the subcommand; SUPPRESS keeps a
    # subcommand's parser from resetting what was given before it.
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="the relay's TOML config")
    p = sub.add_parser("relay", parents=[config], help="run the desktop relay (the ODMR provider), or manage its queue")
    cmds = p.add_subparsers(dest="relay_cmd")
    q = cmds.add_parser("queue", parents=[config], help="list, show, drop or inject queued messages")
    qc = q.add_subparsers(dest="queue_cmd", required=True)
    qc.add_parser("list", help="every queued message, oldest first per box")
    for name, what in (("show", "envelope and text of one message"), ("drop", "delete a message from every box")):
        qc.add_parser(name, help=what).add_argument("id")
    inj = qc.add_parser("inject", help="queue a message file (- for stdin) as if it had arrived by SMTP")
    inj.add_argument("file")
    inj.add_argument("--from", dest="sender", help="envelope sender (default: the From: header)")
    inj.add_argument("--to", action="append", help="recipient (repeatable; default: To:/Cc: in held domains)")
    pf = cmds.add_parser("postfix-config", parents=[config],
                         help="print the Postfix lines that put Postfix in front of this relay")
    pf.add_argument("--maps", default="/etc/postfix", metavar="DIR",
                    help="where the two map files go (default /etc/postfix)")
    pf.add_argument("--write", action="store_true", help="write the map files into --maps, print only the main.cf lines")
    pf.add_argument("--force", action="store_true", help="with --write: replace map files this command did not write")
    p.set_defaults(func=run)


def run(args):
    from host_tools.relay.config import ConfigError, load

    path = getattr(args, "config", None)
    if not path:
        raise SystemExit("odmrgw relay: --config FILE is required")
    try:
        cfg = load(path)
    except ConfigError as e:
        raise SystemExit(f"odmrgw relay: {path}: {e}")
    if args.relay_cmd == "queue":
        from host_tools.relay import admin

        return admin.run(cfg, args)
    if args.relay_cmd == "postfix-config":
        from host_tools.relay import postfix

        return postfix.run(cfg, args)
    from host_tools.relay import service

    try:
        return service.main(cfg)
    except OSError as e:
        print(f"relay: cannot start: {e}", file=sys.stderr)
        return 1
