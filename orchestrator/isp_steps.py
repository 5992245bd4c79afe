"""Steps 8-13 over the board's UART, as one group: Nuvoton's SecureISP with this project's vendor
sub-commands (docs/protocols.md).

    8  ROM session; GET_ID (UID re-check); per OTP entry 8..11: READ_OTP, and only when blank
       (journal intent first) WRITE_OTP and READ_OTP back
    9  REBOOT_TO_BOOTLOADER (the board resets into its bootloader; nothing answers)
   10  bootloader session (RESYNC, CONNECT, both ECDH rounds)
   11  the signed application from the cloud, checked against the board's application key
   12  GET_ID; ERASE the slot's pages; SET_MASS_WRITE; MASS_WRITE chunk by chunk
   13  VERIFY_IMAGE: the bootloader checks the image against OTP 8..11; DISCONNECT boots it

Nuvoton's target stops answering after any damaged or refused exchange, so the whole group is
retried after an nRESET pulse through the probe (it works on a locked part) with a fresh session;
the journal and the board's own OTP say what is already done, so nothing is programmed twice.
A download cut off by a lost session resumes at the first chunk the bootloader did not acknowledge
(no erase: programming a word again with the same value changes nothing, and every chunk is read
back by the target), so a noisy line still finishes a long image; VERIFY_IMAGE checks it whole. The
group gives up after ``attempts`` lost sessions in a row that moved the download on by nothing
(if a port was away in one of them, the board waits for it instead: ``PortFailure.gone``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from cryptography.hazmat.primitives.asymmetric import ec

from cloudserver.client import SignedKey
from nuwire import mcuboot
from nuwire.ids import format_uid
from nuwire.keys import key_hash
from nuwire.profiles import TargetProfile
from nuwire.secureisp import messages as m
from nuwire.secureisp.session import HostSession
from nuwire.secureisp.states import Role
from orchestrator import otp
from orchestrator.errors import Fatal, Refused, SessionLost, Swapped, UartFailure
from orchestrator.journal import Board, Journal
from orchestrator.steps import checked
from orchestrator.uart import UartPort

T = TypeVar("T")
StepRunner = Callable[..., Awaitable[Any]]
"""(board, number, action, before=None): runs one numbered step, ``before`` (its UID check) first."""


async def _run(
    board: Board,
    number: int,
    action: Callable[[], Awaitable[T]],
    before: Callable[[], Awaitable[None]] | None = None,
) -> T:
    checked(number, before)
    if before is not None:
        await before()
    return await action()


@dataclass(frozen=True)
class HostKeys:
    """The station's static key and the static public keys of the board's ROM and bootloader."""

    station: ec.EllipticCurvePrivateKey
    rom: ec.EllipticCurvePublicKey
    bootloader: ec.EllipticCurvePublicKey


@dataclass
class IspSteps:
    profile: TargetProfile
    keys: HostKeys
    link: Callable[[], UartPort]
    """Opens the board's ISP UART (a new link per group attempt)."""
    reset: Callable[[], Awaitable[None]]
    """Pulse the board's nRESET (through the probe)."""
    journal: Journal
    station: str
    application: Callable[[Board], Awaitable[SignedKey]]
    attempts: int = 4
    step: StepRunner = _run
    """Runs one numbered step (the station journals it, times it, shows it)."""
    progress: Callable[[float], None] = lambda _: None
    log: Any = None
    _resume: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    """UID -> (the image, chunks the bootloader acknowledged) for a download cut off."""

    def session(self, role: Role) -> HostSession:
        key = self.keys.rom if role is Role.ROM else self.keys.bootloader
        return HostSession(role, self.keys.station, key, firmware=self.profile.firmware)

    async def run(self, board: Board) -> None:
        """The group, retried after an nRESET when a session is lost."""
        stalled, away = 0, False
        try:
            while True:
                before = self._resume.get(board.uid, (b"", 0))[1]
                try:
                    await self.once(board)
                    return
                except UartFailure as error:
                    moved = self._resume.get(board.uid, (b"", 0))[1] > before
                    stalled, away = (1 if moved else stalled + 1), away or error.gone
                    if stalled >= self.attempts:
                        error.gone = away and error.retryable  # spent while a port was away: no verdict
                        raise
                    if self.log is not None:
                        self.log.warning(
                            "uart.recover", uid=board.uid, stalled=stalled, error=str(error)[:300]
                        )
                await self.reset()
        finally:
            self._resume.pop(board.uid, None)

    async def once(self, board: Board) -> None:
        app_key = bytes.fromhex(board.application_key or "")
        async with self.link() as link:
            rom = self.session(Role.ROM)
            try:
                await link.open_session(rom)
                in_rom = True
            except SessionLost:
                in_rom = False  # a resumed board may already run its bootloader
            if in_rom:
                await self.step(
                    board,
                    8,
                    lambda: self.burn_app_hash(link, rom, board, app_key),
                    lambda: self._check_uid(link, rom, board),
                )
                await self.step(board, 9, lambda: link.send(rom, m.RebootToBootloader()))
            boot = self.session(Role.BOOTLOADER)
            await self.step(board, 10, lambda: link.open_session(boot))
            signed = await self.step(board, 11, lambda: self.application(board))
            image = mcuboot.parse(signed.image)
            if (
                signed.public_key != app_key
                or mcuboot.verify_against_key_hash(image, key_hash(app_key)) is not mcuboot.Verdict.OK
            ):
                raise Fatal("the signed application does not verify with the board's application key")
            self.journal.image(board.uid, self.station, 11, str(image.version), signed.sha256)
            await self.step(board, 12, lambda: self.download(link, boot, board, signed.image))
            await self.step(board, 13, lambda: self.finish(link, boot, len(signed.image)))

    async def inspect(self) -> tuple[str, int] | None:
        """(UID, CONFIG0) as the board's own SecureISP reports them (the ROM's, or its bootloader's),
        or None when neither answers. Writes nothing."""
        for role in (Role.ROM, Role.BOOTLOADER):
            try:
                async with self.link() as link:
                    session = self.session(role)
                    await link.open_session(session)
                    ident = _ok(await link.send(session, m.GetId()), "GET_ID")
                    config = _ok(await link.send(session, m.ReadConfig()), "READ_CONFIG")
            except (UartFailure, OSError):
                continue
            uid = format_uid(m.DeviceId.from_payload(ident.payload).uid)
            return uid, int.from_bytes(config.payload[:4].ljust(4, b"\xff"), "little")
        return None

    async def _check_uid(self, link: UartPort, session: HostSession, board: Board) -> None:
        reply = await link.send(session, m.GetId())
        uid = format_uid(m.DeviceId.from_payload(_ok(reply, "GET_ID").payload).uid)
        if uid != board.uid:
            raise Swapped(f"expected UID {board.uid}, the UART answers {uid}")

    async def read_otp(self, link: UartPort, rom: HostSession, entry: int) -> m.OtpValue:
        return m.OtpValue.from_reply(_ok(await link.send(rom, m.ReadOtp(entry)), "READ_OTP"), entry)

    async def burn_app_hash(self, link: UartPort, rom: HostSession, board: Board, app_key: bytes) -> None:
        """Step 8's OTP entries over SecureISP, as orchestrator/otp.py plans them, one at a time
        (after the UID check the step runs first: GET_ID in this session)."""

        async def read(entries: list[int]) -> dict[int, tuple[int, int]]:
            values = {}
            for entry in entries:
                value = await self.read_otp(link, rom, entry)
                values[entry] = (value.low, value.high)
            return values

        wanted = self.profile.app_key_hash_entries(app_key)
        for entry in await otp.plan(wanted, read, UartFailure):
            one = {entry: wanted[entry]}
            self.journal.event(board.uid, self.station, 8, "otp-intent", outputs={"entry": entry})
            with anyio.CancelScope(shield=True):  # never stopped between the write and its read-back
                await link.send(rom, m.WriteOtp(entry, *wanted[entry]))
                await otp.confirm(one, read, UartFailure)
            self.journal.event(
                board.uid, self.station, 8, "otp-result", outcome="written", outputs={"entry": entry}
            )

    async def download(self, link: UartPort, boot: HostSession, board: Board, image: bytes) -> None:
        await self._check_uid(link, boot, board)
        slot = self.profile.application_slot
        padded = image + b"\xff" * (-len(image) % 4)
        earlier, done = self._resume.get(board.uid, (b"", 0))
        if earlier != image:  # a new download: the slot is erased first
            done = 0
            pages = -(-len(padded) // self.profile.aprom.page_size)
            _ok(await link.send(boot, m.Erase(slot.base, pages)), "ERASE")
        _ok(await link.send(boot, m.SetMassWrite(slot.base, len(padded))), "SET_MASS_WRITE")
        self.progress(done * 48 / len(padded))
        for offset in range(done * 48, len(padded), 48):
            chunk = m.MassWrite(offset // 48, padded[offset : offset + 48])
            try:
                _ok(await link.send(boot, chunk), f"MASS_WRITE at {offset}")
            except SessionLost:
                self._resume[board.uid] = (image, offset // 48)  # chunks before it read back fine
                raise
            except Refused:
                self._resume.pop(board.uid, None)  # the flash did not program: erase and start over
                raise
            self.progress(min(1.0, (offset + 48) / len(padded)))

    async def finish(self, link: UartPort, boot: HostSession, size: int) -> None:
        reply = await link.send(boot, m.VerifyImage(self.profile.application_slot.base))
        if reply is None or not reply.ok:
            raise Fatal(f"the bootloader refused the application: {reply.status if reply else None!r}")
        checked = m.single_word(reply.vendor_data(), "VERIFY_IMAGE")
        if checked != size:
            raise Fatal(f"the bootloader checked {checked} bytes, the image has {size}")
        _ok(await link.send(boot, m.Disconnect()), "DISCONNECT")  # the bootloader boots the image


def _ok(reply: m.Reply | None, what: str) -> m.Reply:
    if reply is None or not reply.ok:
        status = reply.status if reply is not None else "no answer"
        raise Refused(f"{what} refused: {status!r}")
    return reply
