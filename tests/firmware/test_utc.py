# Log time stamps: ISO 8601 in UTC from unix seconds, on every port.
import support  # noqa: F401 - puts the firmware on the path
from gateway.log import iso8601


def test_log_times_are_iso_8601_utc():
    assert iso8601(0) == "1970-01-01T00:00:00Z"
    assert iso8601(951782400 + 3723) == "2000-02-29T01:02:03Z"
    assert iso8601(4102444799) == "2099-12-31T23:59:59Z"
