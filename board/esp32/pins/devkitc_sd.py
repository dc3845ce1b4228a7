# ESP32-DevKitC (WROOM-32) with a micro-SD breakout on the VSPI pins, on Wi-Fi.
# Wire the breakout: CLK 18, MISO 19, MOSI 23, CS 5, 3V3 and GND.
# `odmrgw deploy --board devkitc_sd` installs this file as /pins.py.
NAME = "esp32-devkitc+sd"
SD = {"slot": 2, "sck": 18, "miso": 19, "mosi": 23, "cs": 5, "freq": 20000000}
LAN = None  # Wi-Fi: the "wifi" config keys
BUTTON = 0  # the BOOT button, low while held
