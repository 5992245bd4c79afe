"""Wire formats shared by the orchestrator, the cloud server and the board simulator.

Everything here is pure: bytes in, values or events out, bytes out. No module imports anyio,
serial, httpx or pyocd (tests/wire/test_purity.py checks it), so the three parts share one tested
implementation of every byte that crosses a boundary:

- ``nuwire.secureisp``: SecureISP packets, ciphers and the session state machines (host and target,
  ROM and bootloader download).
- ``nuwire.mcuboot``: MCUboot images (build with a signing callback, parse, verify).
- ``nuwire.profiles``: target profiles as data (memory map, FMC, OTP layout, slots, debug lock).
- ``nuwire.keys``: P-256 public keys as raw X||Y, their hashes, and OTP entry words.
- ``nuwire.ids``: UID, OBJ_ID and the OBJ_ID flash record.
"""
