"""The `odmrgw` command line. Each subcommand lives in its own module with an
`add_parser(subparsers)` function; they are imported only to build the parser,
so a slow dependency of one command never slows another."""
import argparse
import importlib
import signal
import sys

# Module names under host_tools, in the order `odmrgw --help` lists them.
COMMANDS = ["demo", "relay", "sd", "sim", "flash", "deploy", "config", "console"]


def build_parser():
    parser = argparse.ArgumentParser(prog="odmrgw", description="Host tools for the ODMR mail gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"host_tools.{name}").add_parser(sub)
    return parser


def _terminated(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = build_parser().parse_args(argv)
    # `kill PID` stops a command the way Ctrl-C does: its finally blocks stop
    # the relay and the simulated board it started, and free their ports.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
