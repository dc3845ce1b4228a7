# The simulated board (what `odmrgw sim` runs):
#   micropython [-i] board/unix/main.py --config FILE --sd IMAGE [--once] [--no-echo]
# The FAT image is the SD card; the directory holding the config file plays
# the internal flash (the config, the CA file, deployed .mpy files), so the
# process works in that directory, as the box works in "/".
#   --once     recover the spool, run one poll cycle, print its one-line
#              summary, exit 0 (ok) or 1 (failed); 2 for a bad config.
#   otherwise  run the gateway with the console on stdin/stdout until Ctrl-C
#              (or Ctrl-A/Ctrl-D from the console); with -i the MicroPython
#              REPL follows, which is what mpremote talks to (`odmrgw sim --pty`).
import os
import sys
from board import Board


def _arg(name, default=None):
    argv = sys.argv
    return argv[argv.index(name) + 1] if name in argv else default


def _split(path):
    i = path.rfind("/")
    return (path[:i] or "/", path[i + 1 :]) if i >= 0 else (".", path)


def main():
    cfg_file, image = _arg("--config"), _arg("--sd")
    if not (cfg_file and image):
        print("usage: main.py --config FILE --sd IMAGE [--once] [--no-echo]")
        return 2
    import asyncio
    from gateway import config, log
    from gateway.app import App

    board = Board(image)
    board.mount_sd()  # opens the image before the chdir below
    flash, cfg_name = _split(cfg_file)
    os.chdir(flash)
    try:
        cfg = config.load(cfg_name)
    except config.ConfigError as e:
        print("config: %s" % e)
        board.umount_sd()
        return 2
    config = None  # the app drops the module once booted (docs/heap.md)
    app = App(board, cfg, cfg_name)
    app.attach_log()
    try:
        os.stat(cfg_name)
    except OSError:
        log.warn("no %s in %s: running on the defaults" % (cfg_name, flash))
    try:
        if "--once" in sys.argv:
            app.open_card()
            result = asyncio.run(app.cycle().run())
            print(result.summary)
            return 0 if result.ok else 1
        log.info("simulated board up: card %s, config %s/%s" % (image, flash, cfg_name))
        asyncio.run(app.run(echo="--no-echo" not in sys.argv))
    except KeyboardInterrupt:
        print("gateway stopped")
        # What the card took, for the whole-box bench (tests/bench/bench_box.py).
        print("card: %d block writes, %d syncs" % (board.dev.block_writes, board.dev.syncs))
    finally:
        app.close()
        board.umount_sd()
    return 0


status = main()
if status:
    sys.exit(status)
