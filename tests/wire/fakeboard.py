"""A small in-memory board behind the target session's Backend interface, for protocol tests.

It keeps OTP words (program once) and flash words (NOR: bits only go 1 -> 0), and records every
request it carried out, so tests can prove that a resend never programs twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nuwire.secureisp import messages as m
from nuwire.secureisp.commands import Status
from nuwire.secureisp.session import Outcome

PDID = 0xA1735440
UID = (0x11111111, 0x22222222, 0x33333333)


@dataclass
class FakeBoard:
    pdid: int = PDID
    otp: dict[int, int] = field(default_factory=dict)
    flash: dict[int, int] = field(default_factory=dict)
    done: list[m.Request] = field(default_factory=list)
    booted: bool = False

    def handle(self, request: m.Request) -> Outcome:
        self.done.append(request)
        if isinstance(request, m.GetId):
            return Outcome(Status.OK, m.DeviceId(self.pdid, UID, (1, 2, 3, 4), 0xDA).to_payload())
        if isinstance(request, m.GetVersion):
            return Outcome(Status.OK, (0x23551171).to_bytes(4, "little"))
        if isinstance(request, m.ReadOtp):
            low, high = (self.otp.get(8 * request.entry + k, 0xFFFFFFFF) for k in (0, 4))
            return Outcome(Status.OK, m.OtpValue(low, high).to_payload())
        if isinstance(request, m.WriteOtp):
            words = {8 * request.entry: request.low, 8 * request.entry + 4: request.high}
            if any(address in self.otp for address in words):
                return Outcome(Status.ERR_ISP_WRITE)
            self.otp.update(words)
            return Outcome(Status.OK)
        if isinstance(request, m.MassWrite | m.Write):
            for i in range(0, len(request.data), 4):
                word = int.from_bytes(request.data[i : i + 4], "little")
                self.flash[request.address + i] = self.flash.get(request.address + i, 0xFFFFFFFF) & word
            return Outcome(Status.OK)
        if isinstance(request, m.DlFinish):
            self.booted = True
            return Outcome(Status.OK, sum(4 for _ in self.flash).to_bytes(4, "little"))
        return Outcome(Status.OK)

    def flash_bytes(self, start: int, length: int) -> bytes:
        return b"".join(
            self.flash.get(start + i, 0xFFFFFFFF).to_bytes(4, "little") for i in range(0, length, 4)
        )
