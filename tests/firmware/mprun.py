# Runs one firmware test on MicroPython: micropython mprun.py MODULE TEST
# Prints @@OK, @@SKIP reason or @@FAIL as its last status line.
import sys
import micropython

import support

module, name = sys.argv[1], sys.argv[2]
try:
    getattr(__import__(module), name)()
except support.Skip as e:
    print("\n@@SKIP", e.args[0] if e.args else "")
except BaseException as e:  # noqa: B036 - a test may raise anything; report it
    sys.print_exception(e)
    print("\n@@FAIL")
    sys.exit(1)
else:
    print("\n@@HEAP peak=%d" % micropython.mem_peak())
    print("@@OK")
