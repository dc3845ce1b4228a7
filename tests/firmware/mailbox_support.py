# Helpers the mailbox tests share (test_mailbox, test_mailbox_store): what a
# POP3 session would list and read, and power-cut rounds on a card image.
# Apart from support.py, so that only these tests pay its heap.


def boot(root, cfg):
    """What App.open_card does: the spool, then the mailboxes on it."""
    from gateway.mailbox import Mailboxes
    from gateway.policy import Policy
    from gateway.spool import Spool

    spool = Spool(root + "/spool")
    spool.start()
    return spool, Mailboxes(root + "/mail", Policy(cfg), spool)


def listed(boxes, user):
    """The ids a POP3 session would list, oldest first."""
    got = boxes.listing(user)
    return [got.uid(i) for i in range(len(got))]


def stored(boxes, user, id):
    src = boxes.open_body(user, id, bytearray(64))
    out = b""
    while True:
        p = src.piece()
        if not p:
            break
        out += bytes(p)
    src.close()
    return out


def copy(src, dst):
    buf = bytearray(4096)
    with open(src, "rb") as a, open(dst, "wb") as b:
        while True:
            n = a.readinto(buf)
            if not n:
                return
            b.write(memoryview(buf)[:n])


def keep_pristine(template):
    """Unmounts the template card and keeps a copy of its image."""
    template.unmount()
    copy(template.image, template.image + ".pristine")


def cut_card(template, cut):
    """The pristine card again, mounted with a power cut after `cut` block writes."""
    copy(template.image + ".pristine", template.image)
    return template.remount(cut_after=cut)


def power_cuts(template, tears=(0, 200)):
    """The pristine card again and again, mounted with a power cut after 1,
    2, 3 ... block writes, with the last sector torn `tears` bytes in; for
    each tear, until the change the caller makes on a card ends before its
    cut."""
    for tear in tears:
        cut = 1
        while True:
            card = cut_card(template, cut)
            dev = card.board.dev
            dev.tear = tear
            yield card
            if not dev.cut:
                break
            cut += 1
