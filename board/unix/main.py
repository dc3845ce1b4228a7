# The simulated board (what `odmrgw sim` runs):
#   micropython [-i] board/unix/main.py --config FILE --sd IMAGE [--once] [--no-echo]
# The FAT image is the SD card; the directory holding the config file plays
# the internal flash (the config, the CA file, deployed .mpy files), so the
# process works in that directory, as the box works in "/".
#   --once     recover the spool, run one poll cycle, print its one-line
#              summary, exit 0 (ok) or 1 (failed or no card); 2 for a bad
#              or missing config.
#   otherwise  run the gateway with the console on stdin/stdout until Ctrl-C
#              (or Ctrl-A/Ctrl-D from the console); with -i the MicroPython
#              REPL follows, which is what mpremote talks to (`odmrgw sim --pty`).
#              A missing or unformatted card is what a box with no card does:
#              the console and `status` say so, the rest does not start.
#   --no-console  serve without reading stdin (no prompt in the output)
#   --rom IMAGE   the gateway's code from a ROMFS image, as on a board with a
#                 romfs partition (docs/heap.md); without it, from .mpy files
import os
import sys


def _arg(name, default=None):
    argv = sys.argv
    return argv[argv.index(name) + 1] if name in argv else default


def _split(path):
    i = path.rfind("/")
    return (path[:i] or "/", path[i + 1 :]) if i >= 0 else (".", path)


def main():
    cfg_file, image = _arg("--config"), _arg("--sd")
    if not (cfg_file and image):
        print("usage: main.py --config FILE --sd IMAGE [--once] [--no-echo] [--no-console] [--rom IMAGE]")
        return 2
    rom = _arg("--rom")
    if rom:
        from rom import mount_rom

        mount_rom(rom)
    from board import Board
    from pollset import presize_poll
    import asyncio
    from gateway import config, log
    from gateway.app import App

    flash, cfg_name = _split(cfg_file)
    try:
        os.stat(cfg_file)
    except OSError:
        # unlike the box, which starts a fresh one on defaults: here a typo
        print("config: %s: no such file" % cfg_file)
        return 2
    board = Board(image)
    once = "--once" in sys.argv
    try:
        board.mount_sd()  # opens the image before the chdir below
    except OSError as e:
        why = "no such card image" if e.errno == 2 else "not a FAT image"
        board.card_problem = "no card: %s: %s (odmrgw sd mkfs makes one)" % (image, why)
        print(board.card_problem)
        if once:
            return 1
    os.chdir(flash)
    try:
        cfg = config.load(cfg_name)
        missing = config.missing_file(cfg)
        if missing:
            raise missing
    except config.ConfigError as e:
        print("config: %s" % e)
        board.umount_sd()
        return 2
    config = None  # the app drops the module once booted (docs/heap.md)
    presize_poll(sum(cfg[k]["sessions"] for k in ("smtp", "pop3", "imap")))
    app = App(board, cfg, cfg_name)
    app.attach_log()
    try:
        if once:
            app.open_card()
            result = asyncio.run(app.cycle().run())
            print(result.summary)
            return 0 if result.ok else 1
        log.info("simulated board up: card %s, config %s/%s" % (image, flash, cfg_name))
        asyncio.run(app.run(console="--no-console" not in sys.argv, echo="--no-echo" not in sys.argv))
    except KeyboardInterrupt:
        print("gateway stopped")
        # What the card took, for the whole-box bench (tests/bench/bench_box.py).
        print("card: %d block writes, %d syncs" % (board.dev.block_writes, board.dev.syncs))
    finally:
        app.stop()
        board.umount_sd()
    return 0


status = main()
if status:
    sys.exit(status)
