# A card from older firmware: its mailboxes (<user>/<id>.msg with a `dele`
# journal, then <user>/<bucket>/<id>.m) are moved into today's layout after
# an upgrade, with the same UIDLs, byte for byte, none lost or doubled, also
# when the power was cut in the middle of the move.
import os

import support
from gateway.spool import Draft, Spool, record_header
from mailbox_support import boot as boot_with, listed, stored

CFG = support.config(support.OFFICE)


def boot(root):
    return boot_with(root, CFG)

# Builds both older layouts with the spool's own code and remounts, beside
# test_mailbox and test_mailbox_store (their helpers) compiled from source.
MICROPYTHON_HEAP = "192k"

T = 1700000000


def message(n):
    return b"Subject: old %d\r\nMessage-ID: <old%d@example.test>\r\n\r\nkept since %d\r\n" % (n, n, n)


def first_layout(home, id, data, whole=True):
    """A message file as the first firmware wrote it."""
    ret = b"Return-Path: <sender@outside.test>\r\n"
    with open("%s/%s.msg" % (home, id), "wb") as f:
        f.write(b"ODMB1 %s %d -\n" % (id.encode(), T))
        f.write(ret)
        f.write(data if whole else data[:10])
        if whole:
            f.write(b"\0ODME %d %s\n" % (len(ret) + len(data), id.encode()))


def second_layout(spool, home, id, data, addr):
    """A record as the second firmware wrote it: one bucket level."""
    d = home + "/" + id[:6]
    if not support.exists(d):
        os.mkdir(d)
    draft = Draft(spool, id, "%s/%s.m" % (d, id), record_header(id, T, "sender@outside.test", [(addr, "local")]))
    draft.write(data)
    draft.commit()


def old_card(root):
    """alice: four first-layout files (one cut short, one deleted by a whole
    journal), two second-layout records; bob: one of each and a torn
    journal. Returns ({user: ids that must be kept}, the spool)."""
    spool = Spool(root + "/spool")
    spool.start()
    for d in ("/mail", "/mail/alice", "/mail/bob"):
        os.mkdir(root + d)
    kept = {"alice": [], "bob": []}
    alice, bob = root + "/mail/alice", root + "/mail/bob"
    for n in range(4):
        id = spool._new_id()
        first_layout(alice, id, message(n), whole=n != 2)
        if n == 1:
            deleted = id
        elif n != 2:
            kept["alice"].append(id)
    with open(alice + "/dele", "wb") as f:
        f.write(deleted.encode() + b"\nEND\n")
    id = spool._new_id()
    first_layout(bob, id, message(10))
    kept["bob"].append(id)
    with open(bob + "/dele", "wb") as f:
        f.write(id.encode() + b"\n")  # torn: no END, so nothing was removed
    for n in (20, 21):
        id = spool._new_id()
        second_layout(spool, alice, id, message(n), "alice@example.test")
        kept["alice"].append(id)
    id = spool._new_id()
    second_layout(spool, bob, id, message(30), "bob@example.test")
    kept["bob"].append(id)
    return kept, spool


def migrate_all(boxes):
    steps = 0
    while boxes.migrate(2):
        steps += 1
        assert steps < 50
    return steps


def body_of(n):
    return b"Return-Path: <sender@outside.test>\r\n" + message(n)


def test_older_mailboxes_move_into_todays_layout_with_their_uidls():
    root = support.tmpdir()
    kept, _ = old_card(root)
    spool, boxes = boot(root)
    assert boxes.legacy == {"alice", "bob"}
    assert listed(boxes, "alice") == []  # nothing moved at boot: it reads no message
    assert migrate_all(boxes) > 2  # two at a time, so the box serves in between
    assert not boxes.legacy and boxes.migrate() == 0
    for user in ("alice", "bob"):
        assert listed(boxes, user) == kept[user]
        assert sorted(os.listdir(root + "/mail/" + user)) == ["00000", "journal", "seen"]
    a = kept["alice"]
    assert [stored(boxes, "alice", id) for id in a] == [body_of(n) for n in (0, 3, 20, 21)]
    assert [stored(boxes, "bob", id) for id in kept["bob"]] == [body_of(10), body_of(30)]
    # Mail that comes after the upgrade lands behind it, and POP3 deletes it all.
    d = spool.begin("pc@example.test", [("alice@example.test", "local")])
    d.write(message(99))
    new = d.commit()
    assert listed(boxes, "alice") == a + [new]
    boxes.expunge("alice", a + [new])
    spool, boxes = boot(root)
    assert listed(boxes, "alice") == [] and not boxes.legacy


def test_a_move_cut_by_a_power_cut_neither_loses_nor_doubles():
    root = support.tmpdir()
    kept, spool = old_card(root)
    spool, boxes = boot(root)
    migrate_all(boxes)
    a = kept["alice"]
    # Power cut after a copy was whole and before its old file went: the
    # old file is found again at the next boot.
    first_layout(root + "/mail/alice", a[0], message(0))
    # ... and one cut in the middle of its copy: a copy cut short beside
    # the old file.
    with open(boxes._path("alice", a[1]), "wb") as f:
        f.write(b"ODMRGW1 000070 %s %d\nF sender@outside.test\nR l alice" % (a[1].encode(), T))
    first_layout(root + "/mail/alice", a[1], message(3))
    spool, boxes = boot(root)
    assert boxes.legacy == {"alice"}
    migrate_all(boxes)
    assert listed(boxes, "alice") == a
    assert [stored(boxes, "alice", id) for id in a[:2]] == [body_of(0), body_of(3)]
    assert not [n for n in os.listdir(root + "/mail/alice") if n.endswith(".msg")]


def test_the_app_moves_older_mail_in_its_boot_hand_off():
    # App.hand_off moves it a step at a time between the sessions, then hands
    # off what waits in the spool.
    support.needs_micropython()
    from gateway import config
    from gateway.app import App

    card = support.Card()
    kept, spool = old_card(card.root)
    d = spool.begin("pc@example.test", [("alice@example.test", "local"), ("bob@example.test", "local")])
    d.write(message(50))
    both = d.commit()
    cfg = config.validate({"users": CFG["users"]})
    app = App(card.board, cfg, card.root + "/none.json")
    app.open_card()
    support.run(app.hand_off())
    assert not app.mailboxes.legacy
    assert listed(app.mailboxes, "alice") == kept["alice"] + [both]
    assert listed(app.mailboxes, "bob") == kept["bob"] + [both]
    card.unmount()
