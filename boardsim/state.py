"""A board's state on disk: STATE_DIR/<UID>/{state.json, otp.bin, aprom.bin, ldrom.bin, dataflash.bin}.

Each file is written atomically (a temporary file in the same folder, fsync, rename). Flash changes
arrive a word at a time during a download, so they mark the file dirty and :meth:`StateStore.flush`
writes what is dirty; the server flushes on a short timer and after every packet that answered, and
OTP and state changes are flushed at once. otp.bin is 256 entries of 8 bytes, entry n at offset 8n,
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


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
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

    def folder(self, board: Board) -> Path:
        return self.root / board.uid_text

    def attach(self, board: Board) -> None:
        board.on_change = self.mark
        self.folder(board).mkdir(parents=True, exist_ok=True)
        self._dirty[board.uid_text] = (board, {"otp", "aprom", "ldrom", "dataflash", "state"})
        self.flush()

    def mark(self, board: Board, what: str) -> None:
        entry = self._dirty.setdefault(board.uid_text, (board, set()))
        entry[1].add(what)
        if what in IMMEDIATE:
            self.flush()

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
                write_atomically(folder / f"{name}.bin", bytes(blobs[name]))
            # state.json reflects every change (obj_id lives in data flash, counts in OTP).
            write_atomically(folder / "state.json", json.dumps(state_json(board), indent=1).encode())


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
