"""The gateway's code from a ROMFS image, as on a board with a romfs partition
(docs/heap.md): the sim reads the image into one bytearray and gets that much
more heap, so what is left must be the box's heap, no more and no less, and
the code must come from the image, not from the .mpy files beside it."""
import subprocess

from tests.conftest import record_figure

# Heap the whole firmware takes once imported from the image: its function,
# class and module objects, the interned names; the bytecode and constants
# stay in the image. Measured 2026-12-02: 50,416 bytes on the 32-bit build
# (119,696 from .mpy files), 90,688 on the PyPI 64-bit one (167,840).
ROM_IMPORT_HEAP_BUDGET = {64: 92 * 1024, 32: 52 * 1024}
# IMAP's modules, measured after the rest: 18,048 bytes on the 32-bit build
# (49,184 from .mpy files), 33,696 on 64-bit (70,240), 2026-12-02; with the
# folder name table and the header end found by chunks 18,144 (49,952) and
# 34,016 (71,104).
ROM_IMAP_IMPORT_BUDGET = {64: 35 * 1024, 32: 19 * 1024}


def _run(tmp_path, script, heap):
    from host_tools import mpy

    path = tmp_path / "probe.py"
    path.write_text(script)
    proc = subprocess.run([mpy.micropython_exe(), "-X", f"heapsize={heap}", str(path)], env=mpy.env(),
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split()


def test_the_image_leaves_the_box_exactly_its_heap(tmp_path):
    from host_tools import mpy

    image = mpy.rom_image()
    block = mpy.HEAP_BLOCK[mpy.pointer_bits()]
    for heap in (mpy.budget_heap(), mpy.sim_heap()):
        measure = "import gc\ngc.collect()\nprint(gc.mem_free())\n"
        plain = int(_run(tmp_path, "import rom\n" + measure, heap)[-1])
        with_rom = int(_run(tmp_path, f"from rom import mount_rom\nmount_rom({str(image)!r})\n" + measure,
                            mpy.rom_heapsize(heap, image.stat().st_size))[-1])
        # the mount's own objects (the VfsRom, its mount entry, a longer
        # sys.path) are on the box's heap too; the image must not give more
        assert plain - 512 <= with_rom <= plain + 2 * block, (heap, plain, with_rom)


def test_the_gateway_is_imported_from_the_image(tmp_path):
    from host_tools import mpy

    image = mpy.rom_image()
    out = _run(tmp_path, f"from rom import mount_rom\nmount_rom({str(image)!r})\n"
                         "import gateway.app, gateway.imap.session\n"
                         "print(gateway.app.__file__, gateway.imap.session.__file__)\n", "512k")
    assert out == ["/rom/gateway/app.mpy", "/rom/gateway/imap/session.mpy"]


def _rom_import(tmp_path, first, measured):
    """Heap taken by importing `measured` from the image once `first` are in."""
    from host_tools import mpy

    out = _run(tmp_path, f"from rom import mount_rom\nmount_rom({str(mpy.rom_image())!r})\n"
                         + "".join(f"import {m}\n" for m in first)
                         + "import gc\ngc.collect()\nbase = gc.mem_alloc()\n"
                         + "".join(f"import {m}\n" for m in measured)
                         + "gc.collect()\nprint(gc.mem_alloc() - base)\n", "512k")
    return int(out[-1])


def _box_and_imap():
    from host_tools import mpy

    modules = mpy.gateway_modules()
    return [m for m in modules if not m.startswith("gateway.imap.")], [m for m in modules if m.startswith("gateway.imap.")]


def test_whole_firmware_from_the_image_stays_in_budget(tmp_path):
    from host_tools import mpy

    box, _ = _box_and_imap()
    used, bits = _rom_import(tmp_path, [], box), mpy.pointer_bits()
    record_figure("heap after importing all firmware from its ROMFS image",
                  f"{used} bytes, {len(box)} modules, image {mpy.rom_image().stat().st_size} bytes, unix port {bits}-bit")
    assert used < ROM_IMPORT_HEAP_BUDGET[bits], f"the firmware from ROM takes {used} bytes, budget {ROM_IMPORT_HEAP_BUDGET[bits]}"


def test_imap_from_the_image_stays_in_its_budget(tmp_path):
    from host_tools import mpy

    box, imap = _box_and_imap()
    used, bits = _rom_import(tmp_path, box, imap), mpy.pointer_bits()
    record_figure("heap IMAP's modules add from the ROMFS image", f"{used} bytes, {len(imap)} modules, unix port {bits}-bit")
    assert used < ROM_IMAP_IMPORT_BUDGET[bits], f"IMAP from ROM takes {used} bytes, budget {ROM_IMAP_IMPORT_BUDGET[bits]}"


def test_deploy_puts_the_gateway_into_a_romfs_partition_it_fits(tmp_path):
    from host_tools import deploy, mpy

    files = deploy.build(deploy.DEFAULT_BOARD, mpy.native_march())
    package = sorted(p[len("lib/"):] for p in files if p.startswith("lib/gateway/"))
    copied, image, size = deploy.for_rom(files, 128 * 1024)
    assert image is not None and size == len(image) <= 128 * 1024
    assert sorted(copied) == sorted(p for p in files if not p.startswith("lib/gateway/"))
    # the image, mounted as the box mounts it, holds each module byte for byte
    (tmp_path / "gateway.romfs").write_bytes(image)
    listing = _run(tmp_path, "import vfs, os\nf = open('gateway.romfs', 'rb')\nvfs.mount(vfs.VfsRom(f.read()), '/rom')\n"
                             "def walk(d):\n for name, kind, *_ in os.ilistdir(d):\n"
                             "  p = d + '/' + name\n  if kind == 0x4000: walk(p)\n"
                             "  else: print(p[5:], __import__('hashlib').sha256(open(p, 'rb').read()).digest().hex())\n"
                             "walk('/rom')\n", "1m")
    import hashlib

    assert dict(zip(listing[::2], listing[1::2])) == {p: hashlib.sha256(files["lib/" + p]).hexdigest() for p in package}


def test_deploy_copies_the_gateway_to_lib_without_a_partition_or_room():
    from host_tools import deploy, mpy

    files = deploy.build(deploy.DEFAULT_BOARD, mpy.native_march())
    for rom_size in (0, 64 * 1024):
        copied, image, size = deploy.for_rom(files, rom_size)
        assert image is None and size > rom_size and copied == files
