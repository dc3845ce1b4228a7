"""`python -m host_tools.relay --config relay.toml [queue ...]`: the same as
`odmrgw relay ...`, without loading the other odmrgw commands (for a service
unit on a VPS that has only the relay's dependencies)."""
import argparse
import sys

from host_tools.relay import add_parser

parser = argparse.ArgumentParser(prog="python -m host_tools.relay")
add_parser(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(["relay", *sys.argv[1:]])
try:
    sys.exit(args.func(args) or 0)
except KeyboardInterrupt:
    sys.exit(130)
