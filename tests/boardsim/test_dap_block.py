"""A DAP_TransferBlock carried out at once (SwdPort.block) gives exactly what the same transfers
one word at a time give: the answer, TAR, RDBUFF, the transfer count, sticky errors, memory."""

from __future__ import annotations

import random
import struct

from boardsim.board import Board
from boardsim.dap import DapProbe, SwdPort
from nuwire.profiles import M2354

SRAM_END = M2354.sram.base + M2354.sram.size
STARTS = (M2354.sram.base, 0, SRAM_END - 256, M2354.aprom.size - 256, 0x1000_0000)


def _run(at_once: bool) -> tuple[list[tuple[bytes, int, int, int, int]], bytes, int]:
    rng = random.Random(3)
    board = Board(M2354, (1, 2, 3))
    board.aprom[:4096] = rng.randbytes(4096)
    port = SwdPort()
    port.attach(board, None)
    probe, taken = DapProbe("SIM", port), [0]
    block = port.block

    def counted(request: int, count: int, data: bytes) -> bytes | None:
        found = block(request, count, data) if at_once else None  # else: word by word only
        taken[0] += found is not None
        return found

    port.block = counted  # type: ignore[method-assign]
    seen = []
    for _ in range(300):
        start = rng.choice(STARTS) + 4 * rng.randrange(0, 64)
        count = rng.randrange(1, 127)
        probe.process(bytes([0x05, 0, 1, 0x05]) + struct.pack("<I", start))  # TAR
        if rng.random() < 0.5:  # DRW reads
            answer = probe.process(struct.pack("<BBHB", 0x06, 0, count, 0x0F))
        else:  # DRW writes
            answer = probe.process(struct.pack("<BBHB", 0x06, 0, count, 0x0D) + rng.randbytes(4 * count))
        seen.append((answer, port.tar, port.rdbuff, port.transfers, port.ctrl_stat))
        port.ctrl_stat = 0  # ABORT: clear a sticky error for the next round
    return seen, bytes(board.sram), taken[0]


def test_a_block_at_once_is_the_same_as_word_by_word() -> None:
    fast, slow = _run(at_once=True), _run(at_once=False)
    assert fast[0] == slow[0]
    assert fast[1] == slow[1]
    assert any(ack != 1 for (answer, *_) in slow[0] for ack in [answer[3]])  # some ran off a memory
    assert fast[2] > 100  # and most went at once
