"""The wire formats import no I/O library: they are bytes in, bytes out."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import nuwire

FORBIDDEN = ("anyio", "serial", "serial_asyncio", "httpx", "pyocd", "asyncio", "socket")


def test_wire_modules_import_no_io_library() -> None:
    modules = [info.name for info in pkgutil.walk_packages(nuwire.__path__, "nuwire.")]
    assert "nuwire.secureisp.session" in modules
    assert "nuwire.mcuboot" in modules
    script = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in modules)
        + f"print(','.join(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""
