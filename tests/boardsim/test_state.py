"""The simulator's state folder follows the board: after every flush each file holds exactly the
bytes of its memory, and a board loaded from it is the same board."""

from __future__ import annotations

import random
from pathlib import Path

from boardsim.board import Board, Timing
from boardsim.state import StateStore, load_board
from nuwire.profiles import M2354


def test_every_flush_leaves_each_file_equal_to_its_memory(tmp_path: Path) -> None:
    store, rng = StateStore(tmp_path), random.Random(7)
    board = Board(M2354, (1, 2, 3))
    store.attach(board)
    folder, page = store.folder(board), M2354.aprom.page_size
    for round_ in range(30):
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(0, 64 * page, 4)
            if rng.random() < 0.2:
                assert board.erase_page(at)
            elif rng.random() < 0.5:
                block = rng.randbytes(4 * rng.randrange(1, 700))  # may run over pages
                assert board.program_flash(at, block)
            else:
                assert board.program_flash_word(at, rng.getrandbits(32))
        if round_ % 3 == 0:
            board.program_flash_word(M2354.data_flash.base + 4 * round_, 0)
        store.flush()
        assert (folder / "aprom.bin").read_bytes() == bytes(board.aprom)
        assert (folder / "dataflash.bin").read_bytes() == bytes(board.data_flash)
    again = load_board(folder, M2354, Timing.instant())
    assert again.aprom == board.aprom
    assert again.data_flash == board.data_flash
