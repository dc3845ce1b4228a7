"""`odmrgw relay postfix-config`: the Postfix lines come from the relay's
config, the map files are written only where they may be, and mistakes are
one line each. (tests/e2e/test_postfix.py runs a real Postfix on them.)"""
import subprocess
import sys

from host_tools.mpy import REPO
from host_tools.relay.testing import write_config


def postfix_config(conf, *args):
    return subprocess.run([sys.executable, "-m", "host_tools", "relay", "postfix-config", "--config", str(conf), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_lines_and_maps_from_the_relay_config(tmp_path):
    conf = write_config(tmp_path / "relay.toml", tmp_path / "queue", listen={"smtp": "0.0.0.0:2525"},
                        accounts=[("office", "s", ["example.test", "branch.test"], ["Alice@example.test", "@branch.test"]),
                                  ("shop", "t", ["shop.test"])])
    out = postfix_config(conf, "--maps", tmp_path / "maps")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "relay_domains = branch.test, example.test, shop.test\n" in text
    assert f"transport_maps = texthash:{tmp_path}/maps/odmr_transport\n" in text
    assert f"relay_recipient_maps = texthash:{tmp_path}/maps/odmr_recipients\n" in text
    # A listener on every address is reached on loopback; an account without
    # a list takes its whole domain; addresses are compared lower-cased.
    assert "example.test\tsmtp:[127.0.0.1]:2525\n" in text
    assert "@branch.test\tOK\n@shop.test\tOK\nalice@example.test\tOK\n" in text
    assert "next_hop" in text         # the relay has none: say where it should point
    assert not (tmp_path / "maps").exists()


def test_write_puts_the_maps_in_place_and_never_replaces_a_foreign_file(tmp_path):
    conf = write_config(tmp_path / "relay.toml", tmp_path / "queue", next_hop="127.0.0.1:25")
    maps = tmp_path / "maps"
    maps.mkdir()
    assert postfix_config(conf, "--write", "--maps", maps).returncode == 0
    assert (maps / "odmr_transport").read_text().endswith("example.test\tsmtp:[127.0.0.1]:0\n")
    assert postfix_config(conf, "--write", "--maps", maps).returncode == 0      # its own files: rewritten
    (maps / "odmr_recipients").write_text("carol@example.test OK\n")
    out = postfix_config(conf, "--write", "--maps", maps)
    assert out.returncode == 1 and "was not written by this command (--force replaces it)" in out.stderr
    assert (maps / "odmr_recipients").read_text() == "carol@example.test OK\n"
    assert postfix_config(conf, "--write", "--force", "--maps", maps).returncode == 0
    assert (maps / "odmr_recipients").read_text().endswith("@example.test\tOK\n")


def test_mistakes_are_one_line(tmp_path):
    conf = write_config(tmp_path / "relay.toml", tmp_path / "queue", listen={"odmr": "127.0.0.1:0"})
    out = postfix_config(conf)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "listen.smtp" in out.stderr
    conf = write_config(tmp_path / "relay.toml", tmp_path / "queue")
    out = postfix_config(conf, "--write", "--maps", tmp_path / "missing")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "cannot write" in out.stderr
