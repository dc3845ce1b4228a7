"""Attacks on the relay's logins (issue 12, item 8): guesses sent in
parallel from one address, against the ODMR and the submission listener.
The relay is a `python -m host_tools relay` child; the attacker is raw
sockets bound to a loopback address of its own."""
import asyncio
import hmac
from base64 import b64decode, b64encode

import pytest

from host_tools.relay.testing import RelayProcess, write_config

MAX_FAILURES = 5
GUESSES = 30


@pytest.fixture
def relay(tmp_path):
    cfg = write_config(tmp_path / "relay.toml", tmp_path / "queue",
                       listen={"smtp": "127.0.0.1:0", "odmr": "127.0.0.1:0", "submission": "127.0.0.1:0"},
                       limits={"auth_fail_delay": 0.05, "auth_max_failures": MAX_FAILURES})
    r = RelayProcess(cfg).start()
    yield r
    r.stop()


async def _reply(reader):
    while True:
        line = await asyncio.wait_for(reader.readline(), 30)
        if not line:
            return 0, ""
        if line[3:4] != b"-":
            return int(line[:3]), line[4:].decode().strip()


async def _parallel_guesses(port, source, guesses=GUESSES):
    """`guesses` connections from `source`, moved in lockstep so that every
    AUTH is in flight before the first wrong answer arrives. Returns each
    connection's last reply code: 535 for a guess that was checked, or the
    code of the step that refused it."""
    conns = [await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)) for _ in range(guesses)]
    last, last_text = [None] * guesses, {}
    steps = [None, b"EHLO attacker.test", b"AUTH CRAM-MD5", "answer"]
    try:
        for step in steps:
            going = [i for i, code in enumerate(last) if code in (None, 220, 250, 334)]
            for i in going:
                _, w = conns[i]
                if step == "answer":
                    digest = hmac.new(b"guess", b64decode(last_text[i]), "md5").hexdigest()
                    w.write(b64encode(f"office {digest}".encode()) + b"\r\n")
                elif step:
                    w.write(step + b"\r\n")
            for i in going:
                last[i], last_text[i] = await _reply(conns[i][0])
        return last
    finally:
        for _, w in conns:
            w.close()


@pytest.mark.parametrize("listener", ["odmr", "submission"])
def test_parallel_guesses_from_a_fresh_address_are_cut_off_at_the_limit(relay, listener):
    codes = asyncio.run(_parallel_guesses(relay.ports[listener], "127.0.0.77"))
    # Only as many guesses as the limit are ever checked; the rest are
    # refused before a challenge is answered. Before the fix all 30 got 535.
    assert codes.count(535) == MAX_FAILURES, codes
    assert codes.count(421) == GUESSES - MAX_FAILURES, codes
    # The address is now blocked for both services, and another address is not.
    other = relay.ports["odmr" if listener == "submission" else "submission"]
    assert asyncio.run(_parallel_guesses(other, "127.0.0.77", 1)) == [421]
    assert asyncio.run(_parallel_guesses(other, "127.0.0.78", 1)) == [535]
