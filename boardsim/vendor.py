"""This project's vendor sub-commands (0x8F00) on the simulated board: firmware/vendor.c in Python.

Each branch follows the C function of the same name in firmware/vendor.c, status for status, so
that the differential test (tests/boardsim/test_differential.py) can hold the simulator to the C
code the chip runs. The reply layout is Nuvoton's convention: word 0 status, word 1 the byte count
of what follows, then data; the valid length is 8 + that count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from boardsim.secureisp import ERASED, Chip, Request
from nuwire import mcuboot
from nuwire.errors import ProtocolError
from nuwire.keys import from_otp_entries
from nuwire.secureisp.commands import Status, Vendor


@dataclass
class VendorCode:
    """``Exec_VendorFunction`` for one chip; ``verified`` is what the last VERIFY_IMAGE found."""

    chip: Chip
    verified: str = ""
    """The version of the image VERIFY_IMAGE last accepted ("" for none); the bootloader boots it."""
    reason: str = ""

    def __call__(self, request: Request) -> int | None:
        sub = request.word(1)
        if sub == Vendor.READ_OTP and request.length >= 12:
            return self._read_otp(request, request.word(2))
        if sub == Vendor.WRITE_OTP and request.length >= 20:
            return self._write_otp(request, request.word(2), (request.word(3), request.word(4)))
        if sub == Vendor.REBOOT_TO_BOOTLOADER and request.length >= 8:
            return None  # SYS_ResetCPU(): the chip restarts into its bootloader, nothing answers
        if sub == Vendor.VERIFY_IMAGE and request.length >= 12:
            return self._verify(request, request.word(2))
        return 0  # unknown sub-command or too short: CommandHandler.c answers ERR_PARAMETER

    @staticmethod
    def _reply(request: Request, status: int, *words: int) -> int:
        request.clear()
        for index, word in enumerate((status, 4 * len(words), *words)):
            request.set_word(index, word)
        return 8 + 4 * len(words)

    def _otp(self, entry: int) -> tuple[int, int] | None:
        base = self.chip.profile.otp.entry_address(entry)
        low, high = self.chip.read_word(base), self.chip.read_word(base + 4)
        return None if low is None or high is None else (low, high)

    def _read_otp(self, request: Request, entry: int) -> int:
        if entry >= self.chip.profile.otp.entries:
            return self._reply(request, Status.ERR_OVER_RANGE)
        have = self._otp(entry)
        if have is None:
            return self._reply(request, Status.ERR_ISP_CONFIG)
        return self._reply(request, Status.OK, entry, *have)

    def _write_otp(self, request: Request, entry: int, want: tuple[int, int]) -> int:
        """Each word programmed once, only while blank; a different value is refused untouched."""
        if entry >= self.chip.profile.otp.entries:
            return self._reply(request, Status.ERR_OVER_RANGE)
        have = self._otp(entry)
        if have is None:
            return self._reply(request, Status.ERR_ISP_CONFIG)
        if any(h not in (w, ERASED) for h, w in zip(have, want, strict=True)):
            self.reason = f"OTP entry {entry} holds another value"
            return self._reply(request, Status.ERR_OTP_DIFFERENT, entry, *have)
        base = self.chip.profile.otp.entry_address(entry)
        for offset, (h, w) in enumerate(zip(have, want, strict=True)):
            if h != w and not self.chip.program_word(base + 4 * offset, w):
                return self._reply(request, Status.ERR_ISP_WRITE, entry, *(self._otp(entry) or have))
        after = self._otp(entry)
        if after != want:
            return self._reply(request, Status.ERR_ISP_WRITE, entry, *(after or have))
        return self._reply(request, Status.OK, entry, *want)

    def _verify(self, request: Request, address: int) -> int:
        status, checked = self.verify(address)
        if status != Status.OK:
            return self._reply(request, status)
        return self._reply(request, Status.OK, checked)

    def verify(self, address: int) -> tuple[Status, int]:
        """firmware/vendor.c verify_image: the MCUboot image at ``address`` against OTP 8..11."""
        self.verified = ""
        aprom = self.chip.profile.aprom
        if address % 4 or not aprom.contains(address, 32):
            return self._no(Status.ERR_OVER_RANGE, "image address outside APROM"), 0
        header = self._bytes(address, 32)
        hdr_size = int.from_bytes(header[8:10], "little")
        protected = int.from_bytes(header[10:12], "little")
        body = int.from_bytes(header[12:16], "little")
        if int.from_bytes(header[:4], "little") != mcuboot.IMAGE_MAGIC or hdr_size < 32:
            return self._no(Status.ERR_IMAGE_FORMAT, "no MCUboot header"), 0
        tlv_at = address + hdr_size + body + protected
        if not aprom.contains(address, hdr_size + body + protected + 4):
            return self._no(Status.ERR_IMAGE_FORMAT, "image runs past APROM"), 0
        tlv_total = int.from_bytes(self._bytes(tlv_at + 2, 2), "little")
        if not aprom.contains(tlv_at, max(tlv_total, 4)):
            return self._no(Status.ERR_IMAGE_FORMAT, "TLV area runs past APROM"), 0
        raw = self._bytes(address, tlv_at + tlv_total - address)
        try:
            image = mcuboot.parse(raw)
        except ProtocolError as error:
            return self._no(Status.ERR_IMAGE_FORMAT, str(error)), 0
        entries = [self._otp(n) or (ERASED, ERASED) for n in self.chip.profile.otp.app_key_hash]
        if all(word == ERASED for entry in entries for word in entry):
            return self._no(Status.ERR_IMAGE_NO_KEY, "OTP entries 8..11 hold no application key hash"), 0
        if image.tlv(mcuboot.TlvType.PUBKEY) is None:
            return self._no(Status.ERR_IMAGE_FORMAT, "no PUBKEY TLV"), 0
        try:
            verdict = mcuboot.verify_against_key_hash(image, from_otp_entries(entries))
        except ProtocolError as error:  # the PUBKEY TLV is no P-256 SubjectPublicKeyInfo
            return self._no(Status.ERR_IMAGE_FORMAT, str(error)), 0
        if verdict is mcuboot.Verdict.KEY_MISMATCH:
            return self._no(Status.ERR_IMAGE_KEY, "the image's public key does not hash to OTP 8..11"), 0
        if verdict is not mcuboot.Verdict.OK:
            return self._no(Status.ERR_IMAGE_SIGNATURE, verdict.value), 0
        self.verified = str(image.version)
        self.reason = f"application {image.version} verified ({hashlib.sha256(raw).hexdigest()[:16]})"
        return Status.OK, len(raw)

    def _no(self, status: Status, reason: str) -> Status:
        self.reason = reason
        return status

    def _bytes(self, address: int, length: int) -> bytes:
        out = b""
        for at in range(address - address % 4, address + length, 4):
            word = self.chip.read_word(at)
            out += (ERASED if word is None else word).to_bytes(4, "little")
        skip = address % 4
        return out[skip : skip + length]
