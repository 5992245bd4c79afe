/* This project's SecureISP vendor sub-commands (Nuvoton's CMD_EXEC_VENDOR_FUNC 0x8F00).
 * Layout (Nuvoton's host ProcessCommand.c Process_VendorFunc, and ProcessVendorCmd.c):
 *   request  word 0 reserved (0), word 1 sub-command, words 2.. arguments
 *   reply    word 0 status, word 1 byte count of what follows, words 2.. data; length 8 + count
 * The same numbers are in nuwire/secureisp/commands.py (Vendor, Status); docs/protocols.md. */
#ifndef NUPROV_VENDOR_H
#define NUPROV_VENDOR_H
#include <stdint.h>

#define VENDOR_READ_OTP              0x0D10u  /* entry               -> entry, low, high        */
#define VENDOR_WRITE_OTP             0x0D11u  /* entry, low, high    -> entry, low, high        */
#define VENDOR_REBOOT_TO_BOOTLOADER  0x0B01u  /* -                   -> (CPU reset, no answer)   */
#define VENDOR_VERIFY_IMAGE          0x0B10u  /* slot address        -> bytes checked           */

/* The project's statuses (Nuvoton's table leaves 0x40..0x4F unused). */
#define ERR_IMAGE_NO_KEY     0x40u  /* OTP entries 8..11 blank                                */
#define ERR_IMAGE_FORMAT     0x43u  /* no well-formed MCUboot image at the address             */
#define ERR_IMAGE_KEY        0x44u  /* SHA-256 of the image's public key is not OTP 8..11      */
#define ERR_IMAGE_SIGNATURE  0x45u  /* SHA256 TLV or ECDSA P-256 signature does not verify     */
#define ERR_OTP_DIFFERENT    0x47u  /* the entry already holds another value: nothing written  */

#define APP_KEY_HASH_ENTRY   8u     /* OTP entries 8..11: SHA-256 of the application key X||Y  */

int32_t Exec_VendorFunction(uint32_t *pu32Buf, uint32_t u32Len);

/* firmware/sha256.c: FIPS 180-4 SHA-256, no allocation. */
typedef struct {
    uint32_t state[8];
    uint64_t bytes;
    uint8_t  block[64];
    uint32_t used;
} sha256_ctx_t;
void sha256_init(sha256_ctx_t *ctx);
void sha256_update(sha256_ctx_t *ctx, const uint8_t *data, uint32_t len);
void sha256_final(sha256_ctx_t *ctx, uint8_t digest[32]);

/* The BSP's ECDSA check (M2354BSP Library/StdDriver/src/crypto.c): hex strings, 0 when it holds.
 * Declared here as the BSP declares it; firmware/host/ecc_verify.c stands in for it on Linux. */
int32_t ECC_VerifySignature(CRYPTO_T *crypto, E_ECC_CURVE ecc_curve, char *message, char *public_k1,
                            char *public_k2, char *R, char *S);
#endif
