# The ESP32 board: SD card, network, clock, watchdog and safe mode, behind the
# same Board interface as board/unix (sd_root, now(), network_status(),
# feed_watchdog(), card_free(), card_size(), started, reboot()).
# The pins come from /pins.py (one of board/esp32/pins/*, chosen at deploy).
#
# The crash counter and the safe-mode decision are plain functions over the
# bytes of RTC memory, so they can be tested off the hardware.
import time

CONFIG = "/config.json"  # on the internal flash (LittleFS)
_Y2K = 946684800  # 2000-01-01T00:00:00Z in unix seconds
SAFE_AFTER = 3  # crash-reboots in a row that start safe mode
STABLE_AFTER = 600  # seconds of running that prove a boot good (counter back to 0)
WATCHDOG_MS = 60000  # the main loop feeds it every 2 s; a stuck loop resets the box
REPL_WATCHDOG_MS = 3600000  # left in the REPL, the box still restarts within the hour
NTP_EVERY = 86400
NTP_RETRY = 300
WIFI_CHECK = 30
_MAGIC = b"odmr"
SAFE = [False]
DEFAULT_HOSTNAME = "odmrgw"  # the box answers as odmrgw.local until network.hostname says otherwise


# --- network settings from the config (plain functions, tested off the box) ---
def static_ifconfig(net):
    """(ip, netmask, gateway, dns) for nic.ifconfig(), or None for DHCP.
    The validator has made sure a static ip comes with netmask and gateway."""
    if not net["ip"]:
        return None
    return (net["ip"], net["netmask"], net["gateway"], net["dns"] or net["gateway"])


def hostname_of(net):
    return net["hostname"] or DEFAULT_HOSTNAME


def epoch_offset(gmtime=time.gmtime):
    """Seconds to add to time.time() for unix time: older ESP32 releases
    count from 2000-01-01, newer ones (and the unix port) from 1970, so the
    port is asked rather than assumed."""
    return _Y2K if gmtime(0)[0] == 2000 else 0


EPOCH_OFFSET = epoch_offset()


# --- crash counter in RTC memory (survives soft and watchdog resets) ---------
def crash_count(mem):
    """Crash-reboots in a row recorded in RTC memory; 0 if it holds anything else."""
    return mem[4] if len(mem) >= 5 and bytes(mem[:4]) == _MAGIC else 0


def crash_memory(count):
    return _MAGIC + bytes([min(count, 255)])


def safe_mode(button_held, mem):
    return bool(button_held) or crash_count(mem) >= SAFE_AFTER


def arm(rtc):
    """Before the app starts: count this boot as a crash until it proves stable."""
    rtc.memory(crash_memory(crash_count(rtc.memory()) + 1))


def settle(rtc):
    """The app has run long enough, or is rebooting on purpose: not a crash."""
    rtc.memory(crash_memory(0))


def decide_safe_mode():
    """Called by boot.py. Reads the boot button and RTC memory."""
    import machine
    import pins

    held = machine.Pin(pins.BUTTON, machine.Pin.IN).value() == 0
    mem = machine.RTC().memory()
    SAFE[0] = safe_mode(held, mem)
    if SAFE[0]:
        _repl_watchdog()
        settle(machine.RTC())  # the next reset tries the app again
        print("odmrgw: SAFE MODE (%s): the gateway is not started; the REPL is yours" % ("boot button held" if held else "%d crash-reboots in a row" % crash_count(mem)))


def _repl_watchdog():
    # A running watchdog cannot be stopped on the ESP32; stretch it instead.
    import machine

    machine.WDT(timeout=REPL_WATCHDOG_MS)


class Board:
    sd_root = "/sd"

    def __init__(self, pins, cfg):
        import machine

        self.pins = pins
        self.cfg = cfg
        self.name = pins.NAME
        self.started = self.now()
        self.rtc = machine.RTC()
        self.nic = None
        self.wdt = None
        self.card_problem = None  # a sentence while the card cannot be used
        self._stable = False
        self._next_wifi = 0
        self._next_ntp = 0
        self._address = None  # the last address logged

    # --- bring-up ---------------------------------------------------------
    def start(self):
        import machine

        arm(self.rtc)
        self.wdt = machine.WDT(timeout=WATCHDOG_MS)
        try:
            self.mount_sd()
        except OSError as e:
            # not a crash: the box stays up, reachable at the console for repair
            self.card_problem = "no SD card, or not FAT-formatted (%s); insert one formatted FAT32 and reboot" % e
            print("odmrgw: " + self.card_problem)
        self.start_network()
        self._ntp()
        self.started = self.now()

    def mount_sd(self):
        import machine
        import vfs

        sd = dict(self.pins.SD)
        for k in ("sck", "miso", "mosi", "cs"):
            if k in sd:
                sd[k] = machine.Pin(sd[k])
        vfs.mount(machine.SDCard(**sd), self.sd_root)
        return self.sd_root

    def start_network(self):
        import network

        self._set_hostname(network)
        lan = self.pins.LAN
        if lan:
            import machine

            self.nic = network.LAN(
                mdc=machine.Pin(lan["mdc"]),
                mdio=machine.Pin(lan["mdio"]),
                power=machine.Pin(lan["power"]) if lan.get("power") is not None else None,
                phy_type=getattr(network, "PHY_" + lan["phy_type"]),
                phy_addr=lan["phy_addr"],
                ref_clk=machine.Pin(lan["ref_clk"]),
                ref_clk_mode=machine.Pin.OUT,
            )
            self.nic.active(True)
            self._set_address()
        else:
            self.nic = network.WLAN(network.STA_IF)
            self.nic.active(True)
            self._set_address()
            self._wifi_connect()
        self._wait_for_address(20)

    def _set_hostname(self, network):
        # before the interface starts: DHCP sends the name, and the port's
        # mDNS responder answers for NAME.local
        try:
            network.hostname(hostname_of(self.cfg["network"]))
        except (AttributeError, ValueError, OSError) as e:
            print("odmrgw: network.hostname not set (%r); find the box by its address" % (e,))

    def _set_address(self):
        static = static_ifconfig(self.cfg["network"])
        if static:
            self.nic.ifconfig(static)  # no DHCP client from here on

    def _wifi_connect(self):
        wifi = self.cfg["wifi"]
        if wifi["ssid"]:
            self.nic.connect(wifi["ssid"], wifi["password"])
        else:
            print("odmrgw: wifi.ssid is not set: `set wifi.ssid NAME` at the console")

    def _wait_for_address(self, seconds):
        for _ in range(seconds * 4):
            if self.nic.isconnected():
                return
            self.feed_watchdog()
            time.sleep_ms(250)

    def _ntp(self):
        import ntptime

        ntptime.host = self.cfg["ntp"]["host"]
        try:
            ntptime.settime()
            self._next_ntp = time.time() + NTP_EVERY
        except (OSError, OverflowError) as e:
            from gateway import log

            log.warn("ntp: %s: %r; trying again in %ds" % (ntptime.host, e, NTP_RETRY))
            self._next_ntp = time.time() + NTP_RETRY

    # --- the Board interface -----------------------------------------------
    def now(self):
        return time.time() + EPOCH_OFFSET

    def network_status(self):
        nic = self.nic
        if nic is None:
            return "not started"
        kind = "ethernet" if self.pins.LAN else "wifi %s" % self.cfg["wifi"]["ssid"]
        if not nic.isconnected():
            return kind + ": down, reconnecting"
        ip, mask, gateway, dns = nic.ifconfig()
        how = "static" if static_ifconfig(self.cfg["network"]) else "DHCP"
        return "%s: %s (%s), gateway %s, dns %s, name %s.local" % (
            kind, ip, how, gateway, dns, hostname_of(self.cfg["network"]))

    def feed_watchdog(self):
        """Called every few seconds by the app's main loop. Also the place for
        slow housekeeping: the stable-boot mark, Wi-Fi reconnects, daily NTP."""
        if self.wdt:
            self.wdt.feed()
        t = time.time()
        if not self._stable and self.now() - self.started >= STABLE_AFTER:
            self._stable = True
            settle(self.rtc)
        if self.nic and not self.pins.LAN and t >= self._next_wifi:
            self._next_wifi = t + WIFI_CHECK
            if not self.nic.isconnected():
                self._wifi_connect()
        if self._next_ntp and t >= self._next_ntp and self.nic and self.nic.isconnected():
            self._ntp()
        self._log_address()

    def _log_address(self):
        """A DHCP lease can come (or change) long after boot: the log and the
        serial console say the address whenever it does."""
        nic = self.nic
        address = nic.ifconfig()[0] if nic and nic.isconnected() else None
        if address != self._address:
            from gateway import log

            self._address = address
            log.info("network: %s" % self.network_status())

    def card_free(self):
        import os

        st = os.statvfs(self.sd_root)
        return st[0] * st[3]

    def card_size(self):
        import os

        st = os.statvfs(self.sd_root)
        return st[0] * st[2]

    def reboot(self):
        import machine

        settle(self.rtc)
        machine.reset()

    def stop(self):
        """The console handed over to the REPL: not a crash, and the
        watchdog must not bite while someone works at the REPL."""
        settle(self.rtc)
        _repl_watchdog()


def main():
    """Called by main.py: bring the board up and run the gateway until the
    console hands over to the REPL. An unexpected error reboots the box,
    and the crash counter (armed in start()) decides about safe mode."""
    if SAFE[0]:
        return
    import asyncio
    import machine
    import pins
    from gateway import config, log
    from gateway.app import VERSION, App
    from gateway.compat import print_exception

    try:
        cfg = config.load(CONFIG)
    except config.ConfigError as e:
        print("odmrgw: %s is broken (%s); starting with defaults, fix it at the console" % (CONFIG, e))
        cfg = config.validate({})
    missing = config.missing_file(cfg)
    if missing:  # the rest still works: only what needs that file fails
        print("odmrgw: %s: %s" % (CONFIG, missing))
    config = None  # the app drops the module once booted (docs/heap.md)
    board = Board(pins, cfg)
    app = None
    try:
        board.start()
        app = App(board, cfg, CONFIG)
        app.attach_log()
        log.info("odmrgw %s on board %s" % (VERSION, board.name))
        board._log_address()  # the address, on the console and in the log
        asyncio.run(app.run())
    except KeyboardInterrupt:
        board.stop()
        if app:
            app.stop()
        print("odmrgw: stopped; this is the MicroPython REPL (Ctrl-D restarts the gateway)")
    except Exception as e:  # noqa: BLE001 - anything else is a crash: log it, reboot
        print_exception(e)
        try:
            log.error("crash: %r; rebooting" % (e,))
        finally:
            time.sleep(5)
            machine.reset()
