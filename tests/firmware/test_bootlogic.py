# The ESP32 board's safe-mode decision and crash counter, off the hardware:
# plain functions over the bytes of RTC memory, driven with a stand-in RTC.
import sys

import support

# board/esp32/board.py is compiled from source here (the box loads it as
# .mpy); with the network settings that no longer fits in 64k.
MICROPYTHON_HEAP = "96k"


def esp32_board():
    """board/esp32/board.py, imported beside (not instead of) board/unix's."""
    here = support.__file__.rsplit("/", 1)[0]
    path = here + "/../../board/esp32"
    saved = sys.modules.pop("board", None)
    sys.path.insert(0, path)
    try:
        import board

        return board
    finally:
        sys.path.remove(path)
        sys.modules.pop("board", None)
        if saved is not None:
            sys.modules["board"] = saved


class FakeRTC:
    """machine.RTC().memory(): up to 2 KB that survive soft and watchdog resets."""

    def __init__(self, mem=b""):
        self.mem = mem

    def memory(self, data=None):
        if data is None:
            return self.mem
        assert len(data) <= 2048
        self.mem = bytes(data)


def test_power_on_memory_counts_as_no_crash():
    b = esp32_board()
    for mem in (b"", b"\x00" * 16, b"junk!", b"odm"):
        assert b.crash_count(mem) == 0
        assert not b.safe_mode(False, mem)


def test_boot_button_always_means_safe_mode():
    b = esp32_board()
    assert b.safe_mode(True, b"")
    assert b.safe_mode(1, b.crash_memory(0))


def test_three_crash_reboots_in_a_row_start_safe_mode():
    b = esp32_board()
    rtc = FakeRTC()
    for boot in range(b.SAFE_AFTER):
        assert not b.safe_mode(False, rtc.memory()), boot
        b.arm(rtc)  # main.py starts the app, which then crashes or hits the watchdog
    assert b.crash_count(rtc.memory()) == 3
    assert b.safe_mode(False, rtc.memory())


def test_a_stable_run_or_a_wanted_reboot_clears_the_counter():
    b = esp32_board()
    rtc = FakeRTC()
    b.arm(rtc)
    b.arm(rtc)
    b.settle(rtc)  # ran STABLE_AFTER seconds, or `reboot` at the console
    b.arm(rtc)
    assert b.crash_count(rtc.memory()) == 1
    assert not b.safe_mode(False, rtc.memory())


def test_counter_saturates_instead_of_wrapping():
    b = esp32_board()
    rtc = FakeRTC(b.crash_memory(254))
    for _ in range(5):
        b.arm(rtc)
    assert b.crash_count(rtc.memory()) == 255
    assert b.safe_mode(False, rtc.memory())


def test_the_clock_is_unix_time_whichever_epoch_the_port_counts_from():
    b = esp32_board()
    assert b.epoch_offset(lambda t: (2000, 1, 1, 0, 0, 0, 5, 1)) == 946684800  # ESP32 before 1970 epochs
    assert b.epoch_offset(lambda t: (1970, 1, 1, 0, 0, 0, 3, 1)) == 0


def test_network_settings_from_the_config():
    from gateway import config

    b = esp32_board()
    dhcp = config.validate({})["network"]
    assert b.static_ifconfig(dhcp) is None and b.hostname_of(dhcp) == "odmrgw"
    static = config.validate({"network": {"ip": "192.168.1.20", "netmask": "255.255.255.0", "gateway": "192.168.1.1",
                                          "hostname": "office-gw"}})["network"]
    assert b.static_ifconfig(static) == ("192.168.1.20", "255.255.255.0", "192.168.1.1", "192.168.1.1")
    assert b.hostname_of(static) == "office-gw"
