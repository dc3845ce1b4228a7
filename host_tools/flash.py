"""`odmrgw flash --port P --firmware BIN [--chip auto] [--dry-run]`: put a
MicroPython firmware image on the ESP32 with esptool: erase the flash, then
write the image at the chip's offset (0x1000 on the ESP32 and ESP32-S2, 0x0
on the S3 and the C-series). With --chip auto, esptool asks the chip first.
"""
import shlex
import subprocess
import sys

# Where MicroPython's firmware image starts, by chip (its download pages say
# the same). The ESP32 and S2 keep the second-stage bootloader at 0x1000.
OFFSETS = {"esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0, "esp32c6": 0x0}
BAUD = 460800


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


def detect_chip(port):
    """The chip's name as esptool's --chip spells it, e.g. "esp32s3"."""
    from esptool.cmds import detect_chip as detect

    loader = detect(port)
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
    chip = detect_chip(args.port) if args.chip == "auto" else args.chip
    print(f"chip: {chip}; firmware goes at {hex(OFFSETS[chip])}")
    for cmd in commands(chip, args.port, args.firmware, args.baud):
        print(show(cmd))
        if subprocess.run(cmd).returncode:
            return 1
    print("done: next, `odmrgw deploy --port %s`" % args.port)
    return 0
