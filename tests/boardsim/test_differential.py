# mypy: disable-error-code="call-overload,return-value,misc,arg-type,unused-ignore"
"""boardsim's SecureISP target against Nuvoton's own code: the same packet scripts to both, the same
decrypted answers and the same silences.

The reference is ../shared/nuvoton-ref built with firmware/ (the `faithful` M2354 build), driven in
stdin/stdout mode one packet at a time; a silence is seen from its own report ("received after
SecureISP ended") and a reset from its exit status, so nothing here waits for a time. Each script
runs on a fresh chip on both sides. A script is drawn from a seeded generator: the good flows, each
malformed case (damaged bytes, unknown ids, commands out of their stage, bad lengths and addresses,
vendor sub-commands) and random mixtures. Each side is driven by its own host model, which follows the
keys that side has (round 2's random keys differ); the answers to GET_RAND_PUB0/1 and to a CONNECT
that asked the target for a random IV are compared by status and length only. Where the two must
differ is said in docs/boardsim.md.
"""

from __future__ import annotations

import os
import random
import select
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from boardsim.board import Board
from boardsim.isp import BoardChip
from boardsim.secureisp import SecureIspTarget
from boardsim.vendor import VendorCode
from nuwire.crc import crc16_ccitt_false, crc32
from nuwire.keys import public_key_from_raw, raw_public_key
from nuwire.profiles import M2354
from nuwire.secureisp.commands import Command, Vendor
from nuwire.secureisp.firmware import DEMO_KEY
from nuwire.secureisp.packet import SessionCipher
from nuwire.secureisp.session import Kdf, shared_key
from tests.nuref import build_nuref

SCRIPTS = int(os.environ.get("NUPROV_DIFFERENTIAL_SCRIPTS", "10000"))
DEMO_PRIVATE = ec.derive_private_key(
    int("d0ab2cb9eb88976e82f107598077ce50d8c7b67def7039ee5ba39ee0dd3be411", 16), ec.SECP256R1()
)
UID, UCID = (0x4E555245, 0x46554944, 1), (0x55434944, 0, 1, 2)
HOST = ec.derive_private_key(0x1234567, ec.SECP256R1())
ADDRESSES = (0x20000, 0x20004, 0x20002, 0x100000, 0x103800, 0xFF800, 0xFFFFC, 0x300000, 0x310000, 0x200000)
Step = tuple[str, tuple[object, ...]]


def _words(*words: int) -> bytes:
    return struct.pack(f"<{len(words)}I", *(w & 0xFFFFFFFF for w in words))


def random_step(rng: random.Random, stage3: bool = False) -> Step:
    kind = (
        rng.choice(["cmd", "vendor", "vendor", "cmd", "resync"])
        if stage3 and rng.random() < 0.85
        else rng.choice(
            [
                "resync",
                "connect",
                "disconnect",
                "pub0",
                "pub1",
                "get_pub0",
                "get_pub1",
                "rpub0",
                "rpub1",
                "get_rpub0",
                "get_rpub1",
                "bad_pub",
                "cmd",
                "cmd",
                "cmd",
                "vendor",
                "vendor",
                "raw",
            ]
        )
    )
    if kind == "connect":
        return kind, (rng.choice([bytes(16), rng.randbytes(16)]), rng.choice([0, 16, 4, 48]))
    if kind == "bad_pub":
        return kind, (rng.choice([Command.ECDH_PUB1, Command.ECDH_RAND_PUB1, Command.ECDH_PUB0]),)
    if kind == "cmd":
        command = rng.choice(
            [
                Command.GET_ID,
                Command.GET_VERSION,
                Command.READ_CONFIG,
                Command.ERASE,
                Command.WRITE,
                Command.SET_MASS_WRITE,
                Command.MASS_WRITE,
                Command.RESET,
                Command.IS_MASKED,
                141,
                36096,
                36609,
                153,
                Command.CONNECT,
            ]
        )
        address = rng.choice(ADDRESSES)
        data = {
            Command.ERASE: _words(address, rng.choice([0, 1, 2, 513])),
            Command.WRITE: _words(address, rng.choice([0, 4, 8, 40, 3]), *rng.sample(range(1 << 30), 10)),
            Command.SET_MASS_WRITE: _words(address, rng.choice([0, 4, 96, 1 << 21])),
            Command.RESET: _words(rng.choice([0, 1, 2, 3, 7])),
        }.get(command, rng.randbytes(48))
        length = rng.choice([4, 8, 12, 48, 0]) if command == Command.MASS_WRITE else rng.choice([0, 4, 8, 48])
        return kind, (int(command), rng.randrange(0, 4), length, data)
    if kind == "vendor":
        sub = rng.choice([*Vendor, 0x1234])
        entry = rng.choice([8, 9, 255, 256, 3])
        args = {
            Vendor.READ_OTP: (entry,),
            Vendor.WRITE_OTP: (entry, rng.choice([0, 0xFFFFFFFF, 0x12345678]), rng.getrandbits(32)),
            Vendor.VERIFY_IMAGE: (rng.choice(ADDRESSES),),
        }.get(sub, ())
        length = rng.choice([8 + 4 * len(args), 4, 2, 8])
        return kind, (sub, args, length)
    if kind == "raw":
        return kind, (rng.randrange(0x10000), rng.randbytes(48), rng.randrange(0, 49))
    return kind, ()


HANDSHAKE: list[Step] = [
    ("resync", ()),
    ("connect", (bytes(range(16)), 16)),
    *((k, ()) for k in ("pub0", "pub1", "get_pub0", "get_pub1", "rpub0", "rpub1", "get_rpub0", "get_rpub1")),
]


def script(seed: int) -> tuple[list[Step], list[int | None]]:
    """Steps, and per step a byte to damage (None: none)."""
    rng = random.Random(seed)
    steps = list(HANDSHAKE[: rng.randrange(len(HANDSHAKE) + 1)]) if rng.random() < 0.8 else []
    if len(steps) == len(HANDSHAKE) or rng.random() < 0.5:
        full = len(steps) == len(HANDSHAKE)
        steps += [random_step(rng, full) for _ in range(rng.randrange(1, 8))]
    damage = [rng.randrange(64) if rng.random() < 0.04 else None for _ in steps]
    return steps, damage


@dataclass
class Player:
    """A host model following one target's keys: it renders the steps and reads the answers."""

    random_key: ec.EllipticCurvePrivateKey
    cipher: SessionCipher | None = None
    iv: bytes = bytes(16)
    server_pub: bytearray = field(default_factory=lambda: bytearray(64))
    tmp0: bytearray = field(default_factory=lambda: bytearray(32))
    target_random: bytearray = field(default_factory=lambda: bytearray(64))
    client_random: bool = False

    def render(self, step: Step, packet_id: int) -> tuple[int, bytes, int]:
        kind, args = step
        host, rand = raw_public_key(HOST.public_key()), raw_public_key(self.random_key.public_key())
        simple = {
            "resync": (Command.RESYNC, b"", 0),
            "disconnect": (Command.DISCONNECT, b"", 0),
            "pub0": (Command.ECDH_PUB0, host[:32], 32),
            "pub1": (Command.ECDH_PUB1, host[32:], 32),
            "rpub0": (Command.ECDH_RAND_PUB0, rand[:32], 32),
            "rpub1": (Command.ECDH_RAND_PUB1, rand[32:], 32),
            "get_pub0": (Command.ECDH_GET_PUB0, b"", 0),
            "get_pub1": (Command.ECDH_GET_PUB1, b"", 0),
            "get_rpub0": (Command.ECDH_GET_RAND_PUB0, b"", 0),
            "get_rpub1": (Command.ECDH_GET_RAND_PUB1, b"", 0),
        }
        if kind in simple:
            return simple[kind]
        if kind == "connect":
            iv, length = args
            return Command.CONNECT, bytes(iv), int(str(length))  # type: ignore[call-overload]
        if kind == "bad_pub":
            return int(args[0]), b"\x07" * 32, 32  # type: ignore[call-overload]
        if kind == "cmd":
            command, _, length, data = args
            return command, data, length  # type: ignore[return-value]
        if kind == "vendor":
            sub, words, length = args
            return Command.VENDOR, _words(0, sub, *words), length  # type: ignore[arg-type, misc]
        command, data, length = args
        return command, data, length  # type: ignore[return-value]

    def encode(self, command: int, packet_id: int, data: bytes, length: int, damage: int | None) -> bytes:
        head = struct.pack("<HHH", command, packet_id, length)
        plain = data.ljust(48, b"\0")[:48]
        body = plain if self.cipher is None or command == Command.RESYNC else self.cipher.encrypt(plain)
        sent = crc16_ccitt_false(head + plain).to_bytes(2, "little") + head + body
        raw = bytearray(sent + struct.pack("<II", crc32(sent), 0))
        if damage is not None:
            raw[damage] ^= 0x04
        return bytes(raw)

    def read(self, raw: bytes, request: bytes) -> tuple[object, ...]:
        """The answer as compared: header, length, status and valid bytes (or why it is bad)."""
        command, packet_id, length = struct.unpack_from("<HHH", raw, 2)
        if crc32(raw[:56]) != int.from_bytes(raw[56:60], "little"):
            return ("bad crc32",)
        data = raw[8:56] if self.cipher is None else self.cipher.decrypt(raw[8:56])
        if crc16_ccitt_false(raw[2:8] + data) != int.from_bytes(raw[:2], "little"):
            return ("bad crc16", command, packet_id, length)
        status = int.from_bytes(data[:4], "little")
        valid = data[: min(length, 48)]
        ok = status == 0
        if command in (Command.ECDH_GET_RAND_PUB0, Command.ECDH_GET_RAND_PUB1) and ok:
            at = 0 if command == Command.ECDH_GET_RAND_PUB0 else 32
            self.target_random[at : at + 32] = valid[4:36]
            valid = valid[:4]  # the target's random key differs between the two
        if command == Command.CONNECT and ok:
            self.iv = bytes(valid[8:24])
            if not any(request[8:24]):
                valid = valid[:8]  # a random IV differs between the two
        return (command, packet_id, length, status, bytes(valid))

    def follow(self, command: int, data: bytes, length: int, answer: tuple[object, ...]) -> None:
        """Mirror the target's key schedule after an answer (SecureISP.c, CommandHandler.c)."""
        if len(answer) < 5:
            return
        ok = answer[3] == 0
        if command == Command.RESYNC:
            self.cipher, self.iv, self.client_random = None, bytes(16), False
            return
        if command in (Command.ECDH_PUB0, Command.ECDH_RAND_PUB0, Command.ECDH_PUB1, Command.ECDH_RAND_PUB1):
            at = 0 if command in (Command.ECDH_PUB0, Command.ECDH_RAND_PUB0) else 32
            n = min(length, 64 - at, 48)
            self.server_pub[at : at + n] = data.ljust(48, b"\0")[:n]
        if command == Command.ECDH_PUB1 and ok:
            self.cipher = SessionCipher(self._key(public_key_from_raw(DEMO_KEY)), self.iv)
        elif command == Command.ECDH_GET_RAND_PUB0 and ok:
            x = bytes(self.target_random[:32])
            peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x02" + x)
            self.tmp0[:] = self._key(peer)  # d*Q and d*(-Q) share their x: Y is not needed
            self.client_random = True
        elif command == Command.ECDH_GET_RAND_PUB1 and ok:
            key = bytes(self.tmp0)
            self.cipher = SessionCipher(key, self.iv) if any(key) else None
            self.tmp0[:] = bytes(32)
        elif command == Command.SET_MASS_WRITE and ok and self.cipher is not None:
            struct.pack_into("<II", self.tmp0, 0, *struct.unpack_from("<II", data.ljust(8, b"\0")))

    def _key(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        """The key the target computed with the host key it holds (server_pub), whose private
        key this model knows (its static or its random key)."""
        for private in (HOST, self.random_key):
            if raw_public_key(private.public_key()) == bytes(self.server_pub):
                return shared_key(private, peer, self.iv, Kdf.RAW)
        raise AssertionError("the target accepted a host key this model did not send")


class Reference:
    """One nuref process, one packet at a time; None for a silence, "reset" for a reset."""

    def __init__(self, binary: Path) -> None:
        self.process = subprocess.Popen(  # our own build
            [str(binary)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "NUREF_CONNECT_LOOPS": str(10**9)},
        )
        self.late = 0

    def send(self, raw: bytes) -> bytes | str | None:
        p = self.process
        assert p.stdin is not None
        assert p.stdout is not None
        assert p.stderr is not None
        try:
            p.stdin.write(raw)
            p.stdin.flush()
        except BrokenPipeError:
            p.wait()
            return "reset"
        out, err = b"", b""
        while True:
            ready, _, _ = select.select([p.stdout, p.stderr], [], [], 60)
            assert ready, "the reference neither answered nor reported for 60 s"
            if p.stdout in ready:
                chunk = os.read(p.stdout.fileno(), 64 - len(out))
                if not chunk:
                    p.wait()
                    return "reset"
                out += chunk
                if len(out) == 64:
                    return out
            if p.stderr in ready:
                line = os.read(p.stderr.fileno(), 4096)
                err += line
                if b"received after SecureISP ended" in err:
                    return None
                if b"exit status" in err or not line:
                    p.wait()
                    return "reset"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def simulator() -> SecureIspTarget:
    chip = BoardChip(Board(M2354, UID, UCID))
    return SecureIspTarget(
        chip, DEMO_PRIVATE, VendorCode(chip), random_key=lambda: ec.generate_private_key(ec.SECP256R1())
    )


def run(binary: Path, seed: int) -> list[tuple[object, ...]]:
    """Both sides through one script; the mismatches (empty when they agree)."""
    steps, damage = script(seed)
    random_key = ec.derive_private_key(seed + 99, ec.SECP256R1())
    sides: list[tuple[Player, Reference | SecureIspTarget]] = [
        (Player(random_key), Reference(binary)),
        (Player(random_key), simulator()),
    ]
    seen: list[list[tuple[object, ...]]] = [[], []]
    try:
        for index, (step, broken) in enumerate(zip(steps, damage, strict=True)):
            for n, (player, target) in enumerate(sides):
                command, data, length = player.render(step, index)
                raw = player.encode(command, index, data, length, broken)
                if isinstance(target, Reference):
                    got: bytes | str | None = target.send(raw)
                else:
                    answer = target.handle(raw)
                    got = "reset" if answer.reset else answer.response
                if got is None or isinstance(got, str):
                    seen[n].append((got,))
                    continue
                result = player.read(got, raw)
                if command in (Command.ECDH_GET_PUB0, Command.ECDH_GET_PUB1) and player.client_random:
                    result = result[:4]
                seen[n].append(result)
                if len(result) < 4 or result[3] != 0x7D:  # bytes 60-63 are not checked: taken
                    player.follow(command, data, length, result)
            if seen[0][-1][0] in (None, "reset") or seen[0][-1] != seen[1][-1]:
                break
    finally:
        reference = sides[0][1]
        assert isinstance(reference, Reference)
        reference.close()
    return [] if seen[0] == seen[1] else [(seed, steps, seen[0], seen[1])]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_nuref(tmp_path_factory.mktemp("nuref")) / "nuref-m2354-faithful"


def test_the_good_flow_agrees(reference: Path) -> None:
    for seed in range(200):
        steps, _ = script(seed)
        if steps[: len(HANDSHAKE)] == HANDSHAKE:
            assert run(reference, seed) == []
            return
    raise AssertionError("no full handshake among the first scripts")


def test_simulator_and_reference_agree_on_fuzzed_scripts(reference: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        mismatches = [m for found in pool.map(lambda s: run(reference, s), range(SCRIPTS)) for m in found]
    assert not mismatches, mismatches[:3]
