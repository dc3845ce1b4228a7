"""Hypothesis fuzzing of the SMTP engine, in-process on CPython over scripted
streams: random byte sessions always get well-formed replies and end, and a
message body is stored exactly as the RFC says (un-stuffed, only at the
strict terminator) or refused whole, wherever TCP splits it. The seeded
batch that also runs on MicroPython is tests/firmware/test_smtp_server_fuzz.py."""
import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "firmware"))
sys.path.insert(0, str(REPO / "tests" / "firmware"))

import support  # noqa: E402
import test_data  # noqa: E402
import test_smtp_server_fuzz as batch  # noqa: E402
from gateway.smtp import data, server  # noqa: E402
from gateway.spool import Spool  # noqa: E402

FUZZ = settings(max_examples=3000 if os.environ.get("ODMRGW_LONG") else 300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _chunks(blob, cuts):
    points = sorted({c % (len(blob) + 1) for c in cuts} | {0, len(blob)})
    return [blob[a:b] for a, b in zip(points, points[1:]) if b > a]


session_parts = st.lists(st.one_of(st.sampled_from(batch.WORDS), st.binary(min_size=1, max_size=40)), max_size=40)


@FUZZ
@given(prefix=st.booleans(), parts=session_parts, cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_random_sessions_get_wellformed_replies_and_end(tmp_path, prefix, parts, cuts):
    blob = (batch.PREFIX if prefix else b"") + b"".join(parts)
    seen = {}
    batch.check_session(_chunks(blob, cuts) if blob else [], str(tmp_path / "spool"), seen)
    assert seen.get(b"220") == 1


body_parts = st.lists(st.sampled_from([b"a", b"bc", b".", b"..", b"\r\n", b"\r", b"\n", b"x" * 120, b"\r\n.", b".\r\n", b"\xff"]), max_size=60)


class Keep(server.Handler):
    def rcpt(self, session, address):
        return "local"


@FUZZ
@given(body=body_parts, cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_a_body_is_stored_exactly_or_refused_whole(tmp_path, body, cuts):
    body = b"".join(body)
    blob = batch.PREFIX + body + b"\r\n.\r\nQUIT\r\n"
    sp = Spool(str(tmp_path / "spool"))
    h = Keep()
    h.spool = sp
    stream = support.ScriptedStream(_chunks(blob, cuts))
    s = server.SMTPSession(stream, stream, h)
    s.reader.max_line = 100
    support.run(s.run())
    want_status, want = test_data._reference(body + b"\r\n.\r\nQUIT\r\n")
    ids = sp.ids("local")
    if want_status == (data.OK,):
        assert len(ids) == 1
        stored = bytearray()
        buf = bytearray(4096)
        with sp.open(ids[0]) as b:
            while n := b.readinto(buf):
                stored += buf[:n]
        received_end = stored.index(b"\r\n", stored.index(b"\r\n\t") + 3) + 2
        assert bytes(stored[received_end:]) == want
    else:
        assert ids == [] and b"\r\n550 5.6.0 " in bytes(stream.out)
    assert bytes(stream.out).endswith(b"221 2.0.0 Bye\r\n")
    for id in ids:
        sp.done(id, "local")
