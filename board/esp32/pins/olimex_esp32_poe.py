# Olimex ESP32-POE: Ethernet (LAN8720 PHY, powered over PoE or USB) and a
# micro-SD slot wired for 1-bit SDMMC (CLK 14, CMD 15, D0 2).
# `odmrgw deploy --board olimex_esp32_poe` installs this file as /pins.py.
NAME = "olimex-esp32-poe"
SD = {"slot": 1, "width": 1}
LAN = {"phy_type": "LAN8720", "phy_addr": 0, "mdc": 23, "mdio": 18, "power": 12, "ref_clk": 17}
BUTTON = 34  # BUT1, low while held (input-only pin with a pull-up on the board)
