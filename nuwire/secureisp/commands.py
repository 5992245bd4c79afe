"""SecureISP command and status tables.

Values from Nuvoton's open SecureISP target (M55M1BSP SampleCode/SecureApplication/SecureISPDemo/
ISPSource/CommandHandler.h). The vendor range 0x8F00..0x8FFF carries this project's own commands:
reboot into the bootloader and the bootloader's encrypted download. Status codes 0x40..0x4F are this
project's own; Nuvoton's table leaves them unused.
"""

from __future__ import annotations

from enum import IntEnum


class Command(IntEnum):
    CONNECT = 0x80
    RESET = 0x81
    WRITE = 0x83
    ERASE = 0x84
    GET_ID = 0x85
    READ_OTP = 0x8D
    DISCONNECT = 0x8E
    GET_VERSION = 0x8F
    RESYNC = 0x8000
    SET_MASS_WRITE = 0x8300
    MASS_WRITE = 0x8301
    ECDH_PUB0 = 0x8600
    ECDH_PUB1 = 0x8601
    ECDH_GET_PUB0 = 0x8602
    ECDH_GET_PUB1 = 0x8603
    ECDH_RAND_PUB0 = 0x8604
    ECDH_RAND_PUB1 = 0x8605
    ECDH_GET_RAND_PUB0 = 0x8606
    ECDH_GET_RAND_PUB1 = 0x8607
    WRITE_OTP = 0x8D00
    # Vendor commands (0x8F00..0x8FFF), this project's own.
    REBOOT_TO_BOOTLOADER = 0x8F01
    DL_BEGIN = 0x8F10
    DL_FINISH = 0x8F11


class Status(IntEnum):
    OK = 0x00
    ERR_DL_NO_KEY = 0x40
    ERR_DL_INCOMPLETE = 0x41
    ERR_DL_DIGEST = 0x42
    ERR_DL_FORMAT = 0x43
    ERR_DL_KEY = 0x44
    ERR_DL_SIGNATURE = 0x45
    ERR_NO_BOOTLOADER = 0x46
    ERR_PARAMETER = 0x53
    ERR_TIMEOUT = 0x6F
    ERR_DH_ARGUMENT = 0x75
    ERR_DH_KEY = 0x76
    ERR_ISP_ERASE = 0x77
    ERR_PAGE_ALIGN = 0x78
    ERR_OVER_RANGE = 0x79
    ERR_INVALID_ADDRESS = 0x7A
    ERR_ISP_WRITE = 0x7B
    ERR_CMD_CHECKSUM = 0x7D
    ERR_CMD_INVALID = 0x7E
    ERR_CMD_CONNECT = 0x7F


STATUS_MEANING: dict[Status, str] = {
    Status.OK: "done",
    Status.ERR_DL_NO_KEY: "no application key hash in OTP: the bootloader refuses to download",
    Status.ERR_DL_INCOMPLETE: "the download did not cover the announced image size",
    Status.ERR_DL_DIGEST: "SHA-256 of the written slot differs from the announced digest",
    Status.ERR_DL_FORMAT: "the written image is not a well-formed MCUboot image",
    Status.ERR_DL_KEY: "the image's public key does not hash to the OTP entries",
    Status.ERR_DL_SIGNATURE: "the image's SHA-256 TLV or ECDSA signature does not verify",
    Status.ERR_NO_BOOTLOADER: "no bootloader verified at the last reset: the ROM stays in ISP",
    Status.ERR_PARAMETER: "malformed command data",
    Status.ERR_TIMEOUT: "timeout",
    Status.ERR_DH_ARGUMENT: "ECDH argument out of order",
    Status.ERR_DH_KEY: "ECDH public key is not a point on P-256",
    Status.ERR_ISP_ERASE: "flash page erase failed",
    Status.ERR_PAGE_ALIGN: "address not page aligned",
    Status.ERR_OVER_RANGE: "address range outside the writable region",
    Status.ERR_INVALID_ADDRESS: "address or length not word aligned",
    Status.ERR_ISP_WRITE: "flash or OTP program failed (ISPFF set, or the word was already programmed)",
    Status.ERR_CMD_CHECKSUM: "request failed its CRC-32 or CRC-16 check",
    Status.ERR_CMD_INVALID: "command not allowed now",
    Status.ERR_CMD_CONNECT: "not connected",
}


def status_of(word: int) -> Status | int:
    """The Status for a reply's status word, or the raw word when the table does not know it."""
    try:
        return Status(word)
    except ValueError:
        return word
