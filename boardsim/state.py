"""A board's state on disk: STATE_DIR/<UID>/{state.json, otp.bin, aprom.bin, ldrom.bin, dataflash.bin}.

otp.bin and state.json are written atomically (a temporary file in the same folder, then a
rename), at once when they change: a SIGKILLed simulator leaves the old file or the new one. They
are not fsynced: the page cache outlives the simulator, and a power cut of the PC that runs it is
not a case the simulator models (an fsync per OTP word cost the whole simulator's event loop
milliseconds with every other probe waiting). Flash changes arrive a word at a time during a download, so
they mark the pages they touch dirty and :meth:`StateStore.flush` writes what is dirty; the server
flushes on a short timer and after every packet that answered. A flash file is written whole the
first time, then only the pages marked since, in place (one write each: a SIGKILLed simulator
leaves every page as it was or as it is, never half); state.json is not rewritten for flash alone, since
nothing in it follows from the APROM or the LDROM. otp.bin is 256 entries of 8 bytes, entry n at offset 8n,
low word then high word, little-endian: the same bytes the OTP holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from boardsim.board import Board, Timing
from nuwire.ids import format_obj_id, parse_uid
from nuwire.profiles import TargetProfile

IMMEDIATE = frozenset({"otp", "state"})
FLASH = frozenset({"aprom", "ldrom", "dataflash"})
CODE = frozenset({"aprom", "ldrom"})
"""Memories nothing in state.json follows from (obj_id lives in data flash, program counts in OTP)."""


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def state_json(board: Board) -> dict[str, object]:
    obj_id = board.obj_id()
    return {
        "uid": board.uid_text,
        "pdid": f"0x{board.profile.pdid:08X}",
        "profile": board.profile.name,
        "obj_id": None if obj_id is None else format_obj_id(obj_id),
        "debug_locked": board.debug_locked,
        "booted": board.booted,
        "bootloader_valid": board.bootloader_valid,
        "config": [f"0x{word:08X}" for word in board.config],
        "otp_program_counts": board.otp_program_counts,
        "events": board.events,
    }


class StateStore:
    """Keeps every board's folder in step with the board."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dirty: dict[str, tuple[Board, set[str]]] = {}
        self._pages: dict[tuple[str, str], set[int] | None] = {}
        """(UID, flash memory) -> the offsets of its pages changed since its file was written
        (None: the whole file), for the memories whose file has been written once."""

    def folder(self, board: Board) -> Path:
        return self.root / board.uid_text

    def attach(self, board: Board) -> None:
        board.on_change = self.mark
        self.folder(board).mkdir(parents=True, exist_ok=True)
        self._dirty[board.uid_text] = (board, {"otp", "aprom", "ldrom", "dataflash", "state"})
        self.flush()

    def mark(self, board: Board, what: str, offset: int | None = None, length: int = 4) -> None:
        uid = board.uid_text
        entry = self._dirty.get(uid)
        if entry is None:
            entry = self._dirty[uid] = (board, set())
        entry[1].add(what)
        if what in IMMEDIATE:
            self.flush()
            return
        key = (uid, what)
        pages = self._pages.get(key)
        if offset is None or key not in self._pages:
            self._pages[key] = None  # the whole file
        elif pages is not None:
            page = board.profile.aprom.page_size
            pages.update(range(offset - offset % page, offset + length, page))

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        for board, files in dirty.values():
            folder = self.folder(board)
            blobs = {
                "otp": board.otp,
                "aprom": board.aprom,
                "ldrom": board.ldrom,
                "dataflash": board.data_flash,
            }
            for name in sorted(files - {"state"}):
                if name in FLASH:
                    self._write_pages(board, name, folder / f"{name}.bin", blobs[name])
                else:
                    write_atomically(folder / f"{name}.bin", bytes(blobs[name]))
            if files - CODE:
                write_atomically(folder / "state.json", json.dumps(state_json(board)).encode())

    def _write_pages(self, board: Board, name: str, path: Path, memory: bytearray) -> None:
        key, page = (board.uid_text, name), board.profile.aprom.page_size
        pages = self._pages.get(key)
        if pages is None or not path.exists():
            write_atomically(path, bytes(memory))
        else:
            with open(path, "r+b") as handle:
                for offset in sorted(pages):
                    os.pwrite(handle.fileno(), memory[offset : offset + page], offset)
        self._pages[key] = set()


def load_board(folder: Path, profile: TargetProfile, timing: Timing) -> Board:
    """A board from its folder, as a power cut left it: memories, CONFIG, OTP program counts and
    its history (a restarted simulator puts it back in its fixture; it resets at insertion)."""
    state = json.loads((folder / "state.json").read_text())
    uid = parse_uid(state["uid"])
    board = Board(profile, uid, ucid=(uid[0] & 0xFF, uid[1], 0x4E55564F, 0x544F4E00), timing=timing)
    for name, memory in (("otp", board.otp), ("aprom", board.aprom), ("ldrom", board.ldrom),
                         ("dataflash", board.data_flash)):  # fmt: skip
        memory[:] = (folder / f"{name}.bin").read_bytes()
    board.config = [int(word, 16) for word in state["config"]]
    board.otp_program_counts = list(state["otp_program_counts"])
    board.events = list(state["events"])
    return board
