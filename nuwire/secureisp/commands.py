"""SecureISP command, vendor sub-command and status tables.

Command ids and Nuvoton's statuses come from Nuvoton's open SecureISP target (M55M1BSP
SampleCode/SecureApplication/SecureISPDemo/ISPSource/CommandHandler.h). Only the commands that
CommandHandler.c handles are here: READ_OTP 0x8D and WRITE_OTP 0x8D00 are declared in the header
but not handled (ERR_CMD_INVALID, then SecureISP ends), so the host never sends them.

This project's own commands travel as sub-commands of Nuvoton's one vendor command, 0x8F00
(``Exec_VendorFunction``, firmware/vendor.c): request word 0 reserved, word 1 the sub-command,
then arguments; reply word 0 status, word 1 the byte count of what follows, then data.
Statuses 0x40..0x4F are this project's own; Nuvoton's table leaves them unused.
"""

from __future__ import annotations

from enum import IntEnum


class Command(IntEnum):
    CONNECT = 0x80
    RESET = 0x81
    READ_CONFIG = 0x82
    WRITE = 0x83
    ERASE = 0x84
    GET_ID = 0x85
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
    IS_MASKED = 0x8888
    VENDOR = 0x8F00


class Vendor(IntEnum):
    """Sub-commands of VENDOR 0x8F00 (request word 1), carried out by firmware/vendor.c."""

    READ_OTP = 0x0D10
    WRITE_OTP = 0x0D11
    REBOOT_TO_BOOTLOADER = 0x0B01
    VERIFY_IMAGE = 0x0B10


class Status(IntEnum):
    OK = 0x00
    ERR_IMAGE_NO_KEY = 0x40
    ERR_IMAGE_FORMAT = 0x43
    ERR_IMAGE_KEY = 0x44
    ERR_IMAGE_SIGNATURE = 0x45
    ERR_OTP_DIFFERENT = 0x47
    ERR_PARAMETER = 0x53
    ERR_TIMEOUT = 0x6F
    ERR_DH_ARGUMENT = 0x75
    ERR_DH_KEY = 0x76
    ERR_ISP_ERASE = 0x77
    ERR_PAGE_ALIGN = 0x78
    ERR_OVER_RANGE = 0x79
    ERR_INVALID_ADDRESS = 0x7A
    ERR_ISP_WRITE = 0x7B
    ERR_ISP_CONFIG = 0x7C
    ERR_CMD_CHECKSUM = 0x7D
    ERR_CMD_INVALID = 0x7E
    ERR_CMD_CONNECT = 0x7F


STATUS_MEANING: dict[Status, str] = {
    Status.OK: "done",
    Status.ERR_IMAGE_NO_KEY: "no application key hash in OTP: the bootloader verifies nothing",
    Status.ERR_IMAGE_FORMAT: "the slot does not hold a well-formed MCUboot image",
    Status.ERR_IMAGE_KEY: "the image's public key does not hash to the OTP entries",
    Status.ERR_IMAGE_SIGNATURE: "the image's SHA-256 TLV or ECDSA signature does not verify",
    Status.ERR_OTP_DIFFERENT: "the OTP entry already holds a different value: nothing programmed",
    Status.ERR_PARAMETER: "malformed command data, or a refused key",
    Status.ERR_TIMEOUT: "timeout",
    Status.ERR_DH_ARGUMENT: "ECDH argument out of order",
    Status.ERR_DH_KEY: "ECDH public key refused",
    Status.ERR_ISP_ERASE: "flash page erase failed",
    Status.ERR_PAGE_ALIGN: "address not page aligned",
    Status.ERR_OVER_RANGE: "address range outside the writable region",
    Status.ERR_INVALID_ADDRESS: "address or length not word aligned",
    Status.ERR_ISP_WRITE: "flash or OTP program failed (ISPFF set, or it did not read back)",
    Status.ERR_ISP_CONFIG: "FMC read failed",
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
