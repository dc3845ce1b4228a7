# The RFC 3464 report builder on its own: dates by arithmetic, status codes,
# and the original's header copied up to the blank line whatever the reads.
import support
from gateway import dsn, log


class Draft:
    def __init__(self):
        self.data = bytearray()

    def write(self, buf):
        self.data += buf


class Env:
    id = "0000002a"
    mail_from = "alice@example.test"
    received = 951782400  # 2000-02-29 00:00:00 UTC


class Pieces:
    """A Body that hands out `piece` bytes per read."""

    def __init__(self, data, piece):
        self.data, self.pos, self.piece = data, 0, piece

    def readinto(self, buf):
        n = min(len(buf), self.piece, len(self.data) - self.pos)
        buf[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_dates_by_arithmetic():
    assert log.rfc5322_date(0) == "Thu, 01 Jan 1970 00:00:00 +0000"
    assert log.rfc5322_date(951782400) == "Tue, 29 Feb 2000 00:00:00 +0000"
    assert log.rfc5322_date(4102444799) == "Thu, 31 Dec 2099 23:59:59 +0000"


def test_status_from_the_enhanced_code_or_the_basic_one():
    assert dsn.status_of(550, "5.1.1 No such user") == "5.1.1"
    assert dsn.status_of(554, "transaction failed") == "5.0.0"
    assert dsn.status_of(0, "4.4.7 Gave up") == "4.4.7"


def test_header_is_copied_up_to_the_blank_line_for_any_read_size():
    header = b"Subject: hi\r\nMessage-ID: <x@y>\r\n"
    original = header + b"\r\nbody that must not appear\r\n"
    for piece in (1, 2, 3, 5, 31, 4096):
        d = Draft()
        dsn.write(d, "gw.example.test", Env(), [("b@x.test", 550, "5.1.1 No such user")], 951782500,
                  Pieces(original, piece), "smarthost.test")
        report = bytes(d.data)
        assert b"text/rfc822-headers\r\n\r\n" + header + b"\r\n--" in report, (piece, report)
        assert b"must not appear" not in report
        assert b"Final-Recipient: rfc822; b@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n" in report
        assert b"Remote-MTA: dns; smarthost.test\r\n" in report
        assert b"Arrival-Date: Tue, 29 Feb 2000 00:00:00 +0000" in report
        assert report.endswith(b"--\r\n")
