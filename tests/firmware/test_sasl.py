import support
from gateway import sasl


def test_hmac_md5_rfc2104_vectors():
    assert sasl.hmac_md5(b"\x0b" * 16, b"Hi There").hex() == "9294727a3638bb1c13f48ef8158bfc9d"
    assert sasl.hmac_md5(b"Jefe", b"what do ya want for nothing?").hex() == "750c783e6ab0b503eaa86e310a5db738"
    # A key longer than the block is hashed first (RFC 2202 case 6).
    assert sasl.hmac_md5(b"\xaa" * 80, b"Test Using Larger Than Block-Size Key - Hash Key First").hex() == (
        "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd"
    )


def test_cram_md5_rfc2195_example_both_sides():
    challenge = sasl.b64encode(b"<1896.697170952@postoffice.reston.mci.net>")
    response = sasl.cram_md5_response("tim", "tanstaaftanstaaf", challenge)
    assert sasl.b64decode(response) == b"tim b913a602c7eda7a495b4e6e7334d3890"
    user, digest = sasl.cram_md5_parse(response)
    assert user == "tim"
    assert sasl.cram_md5_check("tanstaaftanstaaf", challenge, digest)
    assert not sasl.cram_md5_check("wrong", challenge, digest)


def test_plain_round_trip_and_bad_input():
    assert sasl.plain_parse(sasl.plain_response("alice", "pw")) == ("alice", "pw")
    for bad in (b"!!!!", b"abc", b"", sasl.b64encode(b"no-nuls")):
        with support.raises(sasl.SaslError):
            sasl.plain_parse(bad)


def test_challenge_shape():
    assert sasl.b64decode(sasl.cram_md5_challenge("gw.test", "123.456")) == b"<123.456@gw.test>"
