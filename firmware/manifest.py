# The gateway for MicroPython's freezing tool (micropython-lib's manifest
# form): a board manifest that says include("<this repo>/firmware/manifest.py")
# builds the gateway into the firmware image, so its bytecode runs from flash
# instead of taking heap (docs/freezing.md). `odmrgw deploy` stays the tested
# way onto a board.
metadata(description="ODMR mail gateway for small offices", version="0.1.0")

package("gateway")
