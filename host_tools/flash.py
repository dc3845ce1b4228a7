"""`odmrgw flash --port P --firmware BIN [--chip auto] [--dry-run]`: put a
MicroPython firmware image on the ESP32 with esptool: erase the flash, then
write the image at the chip's offset (0x1000 on the ESP32 and ESP32-S2, 0x0
on the S3 and the C-series). With --chip auto, esptool asks the chip first.
"""
import shlex
import subprocess
import sys

from host_tools import serialport

# Where MicroPython's firmware image starts, by chip (its download pages say
# the same). The ESP32 and S2 keep the second-stage bootloader at 0x1000.
OFFSETS = {"esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0, "esp32c6": 0x0}
BAUD = 460800
ESP_IMAGE_MAGIC = 0xE9  # the first byte of every ESP firmware image


def add_parser(sub):
    p = sub.add_parser("flash", help="erase the ESP32 and write a MicroPython firmware image")
    p.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    p.add_argument("--firmware", required=True, help="MicroPython .bin for the board (micropython.org/download)")
    p.add_argument("--chip", default="auto", choices=["auto", *OFFSETS], help="chip type (default: ask the chip)")
    p.add_argument("--baud", type=int, default=BAUD, help=f"baud rate for writing (default {BAUD})")
    p.add_argument("--dry-run", action="store_true", help="print the esptool invocations, run nothing")
    p.set_defaults(func=run)


def esptool(*args):
    return [sys.executable, "-m", "esptool", *args]


def detect_command(port):
    return esptool("--chip", "auto", "--port", port, "chip-id")


def commands(chip, port, firmware, baud=BAUD):
    """The esptool invocations for a known chip: erase, then write."""
    return [
        esptool("--chip", chip, "--port", port, "erase-flash"),
        esptool("--chip", chip, "--port", port, "--baud", str(baud), "write-flash", hex(OFFSETS[chip]), firmware),
    ]


def check_firmware(path):
    """Before anything is erased: the file must be an ESP firmware image, or
    a typo would leave the box with no firmware and no config."""
    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except OSError as e:
        raise SystemExit(f"odmrgw flash: {path}: {e.strerror}; nothing was erased")
    if first != bytes([ESP_IMAGE_MAGIC]):
        raise SystemExit(f"odmrgw flash: {path} is not an ESP32 firmware image (it must start with byte 0xE9; "
                         "the MicroPython download page has the .bin files); nothing was erased")


def detect_chip(port):
    """The chip's name as esptool's --chip spells it, e.g. "esp32s3"."""
    from esptool.cmds import detect_chip as detect
    from esptool.util import FatalError
    from serial import SerialException

    try:
        loader = detect(port)
    except (FatalError, SerialException, OSError) as e:
        raise serialport.failed(port, "odmrgw flash", f"no ESP32 answered ({e}); hold BOOT while it connects")
    try:
        name = loader.CHIP_NAME.lower().replace("-", "")
    finally:
        loader._port.close()
    if name not in OFFSETS:
        raise SystemExit(f"odmrgw flash: {loader.CHIP_NAME} is not a chip this gateway supports ({', '.join(OFFSETS)})")
    return name


def show(cmd):
    return shlex.join(cmd)


def run(args):
    check_firmware(args.firmware)
    if args.dry_run:
        if args.chip == "auto":
            print("# ask the chip what it is:")
            print(show(detect_command(args.port)))
            for chip in OFFSETS:
                print(f"# then, if it is an {chip}:")
                for cmd in commands(chip, args.port, args.firmware, args.baud):
                    print(show(cmd))
        else:
            for cmd in commands(args.chip, args.port, args.firmware, args.baud):
                print(show(cmd))
        return 0
    serialport.check(args.port, "odmrgw flash")
    chip = detect_chip(args.port) if args.chip == "auto" else args.chip
    print(f"chip: {chip}; firmware goes at {hex(OFFSETS[chip])}")
    for cmd in commands(chip, args.port, args.firmware, args.baud):
        print(show(cmd))
        if subprocess.run(cmd).returncode:
            return 1
    print("done: next, `odmrgw deploy --port %s`" % args.port)
    return 0
