# Wiring of the running gateway. The board object is the only way in to the
# hardware: firmware never imports board code.
VERSION = "0.1.0"


def status(board):
    """The figures a person at the console asks for, as (label, value) pairs."""
    import gc

    gc.collect()
    free = board.card_free()
    size = board.card_size()
    return [
        ("firmware", "odmrgw %s on board %s" % (VERSION, board.name)),
        ("uptime", "%ds" % (board.now() - board.started)),
        ("network", board.network_status()),
        ("card", "%s: %d of %d KiB free" % (board.sd_root, free // 1024, size // 1024)),
        ("heap", "%d bytes free, %d used" % (gc.mem_free(), gc.mem_alloc())),
    ]
