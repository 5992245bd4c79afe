/* This project's SecureISP vendor sub-commands: Exec_VendorFunction for Nuvoton's SecureISP framework
 * (CommandHandler.c ParseCommands, case CMD_EXEC_VENDOR_FUNC 0x8F00).
 *
 * CommandHandler.c calls this only in stage 3 (after both ECDH rounds) and only when the request's valid
 * length is at least 4. pu32Buf is the whole 64-byte CMD_PACKET_T, checked and decrypted; what this
 * function leaves in it is the reply: CommandHandler.c sets u16Len to the return value, adds the CRC-16,
 * encrypts and adds the CRC-32. Returning 0 makes the reply ERR_PARAMETER. Every path writes word 0.
 *
 *   READ_OTP              entry              -> STS_OK, 12, entry, low, high  | ERR_OVER_RANGE | ERR_ISP_CONFIG
 *   WRITE_OTP             entry, low, high   -> STS_OK, 12, entry, low, high  | ERR_OTP_DIFFERENT (entry, what
 *                                               it holds; nothing programmed) | ERR_ISP_WRITE | ERR_OVER_RANGE
 *   REBOOT_TO_BOOTLOADER  -                  -> SYS_ResetCPU(): no answer
 *   VERIFY_IMAGE          slot address       -> STS_OK, 4, bytes checked | ERR_OVER_RANGE | ERR_IMAGE_*
 *
 * An OTP word is programmed only while it reads blank, once, and read back (ISPFF checked after every
 * FMC command, as the BSP's callers do); a word that holds another value is never programmed. The image
 * check is MCUboot's (boot/bootutil image_validate.c): SHA-256 over header, body and protected TLVs
 * against the SHA256 TLV, the PUBKEY TLV's SHA-256 (of the raw X||Y) against OTP entries 8..11, and
 * ECDSA P-256 over that digest with that key (the BSP's ECC_VerifySignature). boardsim/vendor.py is the
 * simulator's twin of this file; tests/boardsim/test_differential.py holds them to the same answers.
 */
#include <string.h>
#include "NuMicro.h"
#include "CommandHandler.h"
#include "vendor.h"

#define WORD_ERASED      0xFFFFFFFFu
#define MCUBOOT_MAGIC    0x96F3B83Du
#define TLV_INFO_MAGIC   0x6907u
#define TLV_PROT_MAGIC   0x6908u
#define TLV_KEYHASH      0x01u
#define TLV_PUBKEY       0x02u
#define TLV_SHA256       0x10u
#define TLV_ECDSA_SIG    0x22u
#define SPKI_SIZE        91u

/* DER SubjectPublicKeyInfo of an uncompressed P-256 key, up to the point's 0x04. */
static const uint8_t s_spki_prefix[27] = {
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
    0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
};

static int32_t reply(CMD_PACKET_T *cmd, uint32_t status, const uint32_t *data, uint32_t words)
{
    uint32_t i;

    memset(cmd->au32Data, 0, sizeof(cmd->au32Data));
    cmd->au32Data[0] = status;
    cmd->au32Data[1] = 4u * words;
    for (i = 0; i < words; i++)
        cmd->au32Data[2 + i] = data[i];
    return (int32_t)(8u + 4u * words);
}

/* One FMC read; -1 when ISPFF says it failed (the flag is cleared). */
static int32_t read_word(uint32_t addr, uint32_t *value)
{
    *value = FMC_Read(addr);
    if (FMC_GET_FAIL_FLAG()) {
        FMC_CLR_FAIL_FLAG();
        return -1;
    }
    return 0;
}

static int32_t read_otp(uint32_t entry, uint32_t words[2])
{
    if (read_word(FMC_OTP_BASE + 8u * entry, &words[0]) != 0)
        return -1;
    return read_word(FMC_OTP_BASE + 8u * entry + 4u, &words[1]);
}

static int32_t vendor_read_otp(CMD_PACKET_T *cmd, uint32_t entry)
{
    uint32_t out[3];

    if (entry >= FMC_OTP_ENTRY_CNT)
        return reply(cmd, ERR_OVER_RANGE, NULL, 0);
    if (read_otp(entry, &out[1]) != 0)
        return reply(cmd, ERR_ISP_CONFIG, NULL, 0);
    out[0] = entry;
    return reply(cmd, STS_OK, out, 3);
}

static int32_t vendor_write_otp(CMD_PACKET_T *cmd, uint32_t entry, uint32_t low, uint32_t high)
{
    uint32_t want[2], have[2], out[3], i;

    want[0] = low;
    want[1] = high;
    if (entry >= FMC_OTP_ENTRY_CNT)
        return reply(cmd, ERR_OVER_RANGE, NULL, 0);
    if (read_otp(entry, have) != 0)
        return reply(cmd, ERR_ISP_CONFIG, NULL, 0);
    out[0] = entry;
    for (i = 0; i < 2u; i++) {
        if (have[i] != want[i] && have[i] != WORD_ERASED) {
            out[1] = have[0];
            out[2] = have[1];
            return reply(cmd, ERR_OTP_DIFFERENT, out, 3);
        }
    }
    for (i = 0; i < 2u; i++) {
        if (have[i] == want[i])
            continue;
        FMC_Write(FMC_OTP_BASE + 8u * entry + 4u * i, want[i]);
        if (FMC_GET_FAIL_FLAG()) {
            FMC_CLR_FAIL_FLAG();
            break;
        }
    }
    if (read_otp(entry, have) != 0)
        return reply(cmd, ERR_ISP_WRITE, NULL, 0);
    out[1] = have[0];
    out[2] = have[1];
    if (have[0] != want[0] || have[1] != want[1])
        return reply(cmd, ERR_ISP_WRITE, out, 3);
    return reply(cmd, STS_OK, out, 3);
}

/* Bytes of flash at any alignment, through FMC reads. */
static int32_t read_flash(uint32_t addr, uint8_t *out, uint32_t len)
{
    uint32_t word, i;

    for (i = 0; i < len; i++) {
        uint32_t at = addr + i;
        if (i == 0u || (at & 3u) == 0u) {
            if (read_word(at & ~3u, &word) != 0)
                return -1;
        }
        out[i] = (uint8_t)(word >> (8u * (at & 3u)));
    }
    return 0;
}

static uint32_t get16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t get32(const uint8_t *p) { return get16(p) | get16(p + 2) << 16; }

static void to_hex(const uint8_t *in, uint32_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    uint32_t i;

    for (i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15u];
    }
    out[2 * len] = 0;
}

/* One INTEGER of a DER ECDSA signature into 32 big-endian bytes; the offset after it, or 0. */
static uint32_t der_integer(const uint8_t *sig, uint32_t at, uint32_t end, uint8_t out[32])
{
    uint32_t len;

    if (at + 2u > end || sig[at] != 0x02u)
        return 0;
    len = sig[at + 1u];
    at += 2u;
    if (len == 0u || at + len > end)
        return 0;
    while (len > 32u && sig[at] == 0u) {
        at++;
        len--;
    }
    if (len > 32u)
        return 0;
    memset(out, 0, 32);
    memcpy(out + 32u - len, &sig[at], len);
    return at + len;
}

typedef struct {
    uint8_t sha256[32];
    uint8_t keyhash[32];
    uint8_t spki[SPKI_SIZE];
    uint8_t sig[80];
    uint32_t sig_len;
    uint32_t found;       /* bit per TLV kind: 1 SHA256, 2 PUBKEY, 4 ECDSA_SIG, 8 KEYHASH */
    uint32_t spki_len;
} tlvs_t;

/* The TLV area at addr: its end, or 0 when it is not well formed. */
static uint32_t read_tlvs(uint32_t addr, uint32_t magic, tlvs_t *t)
{
    uint8_t head[4];
    uint32_t total, at, end;

    if (addr + 4u > FMC_APROM_END || read_flash(addr, head, 4) != 0 || get16(head) != magic)
        return 0;
    total = get16(head + 2);
    end = addr + total;
    if (total < 4u || end > FMC_APROM_END)
        return 0;
    for (at = addr + 4u; at < end;) {
        uint32_t kind, len;
        if (at + 4u > end || read_flash(at, head, 4) != 0)
            return 0;
        kind = get16(head);
        len = get16(head + 2);
        if (at + 4u + len > end)
            return 0;
        if (t != NULL && kind == TLV_SHA256 && len == 32u && !(t->found & 1u)) {
            if (read_flash(at + 4u, t->sha256, 32) != 0) return 0;
            t->found |= 1u;
        } else if (t != NULL && kind == TLV_PUBKEY && !(t->found & 2u)) {
            t->spki_len = len;
            if (len == SPKI_SIZE && read_flash(at + 4u, t->spki, SPKI_SIZE) != 0) return 0;
            t->found |= 2u;
        } else if (t != NULL && kind == TLV_ECDSA_SIG && len <= sizeof(t->sig) && !(t->found & 4u)) {
            if (read_flash(at + 4u, t->sig, len) != 0) return 0;
            t->sig_len = len;
            t->found |= 4u;
        } else if (t != NULL && kind == TLV_KEYHASH && len == 32u && !(t->found & 8u)) {
            if (read_flash(at + 4u, t->keyhash, 32) != 0) return 0;
            t->found |= 8u;
        }
        at += 4u + len;
    }
    return end;
}

static uint32_t verify_image(uint32_t base, uint32_t *checked)
{
    static tlvs_t t;
    sha256_ctx_t sha;
    uint8_t header[32], buf[64], digest[32], r[32], s[32], otp_hash[32];
    char msg[65], qx[65], qy[65], rh[65], sh[65];
    uint32_t hdr_size, prot_size, img_size, hashed_end, end, at, i, words[2], blank = 1;

    if ((base & 3u) || base - FMC_APROM_BASE > FMC_APROM_SIZE - 32u || read_flash(base, header, 32) != 0)
        return ERR_OVER_RANGE;
    hdr_size = get16(header + 8);
    prot_size = get16(header + 10);
    img_size = get32(header + 12);
    if (get32(header) != MCUBOOT_MAGIC || hdr_size < 32u || img_size > FMC_APROM_END - base - hdr_size)
        return ERR_IMAGE_FORMAT;
    hashed_end = base + hdr_size + img_size;
    if (prot_size != 0u) {
        end = read_tlvs(hashed_end, TLV_PROT_MAGIC, NULL);
        if (end == 0u || end - hashed_end != prot_size)
            return ERR_IMAGE_FORMAT;
        hashed_end = end;
    }
    memset(&t, 0, sizeof(t));
    end = read_tlvs(hashed_end, TLV_INFO_MAGIC, &t);
    if (end == 0u)
        return ERR_IMAGE_FORMAT;

    for (i = 0; i < 4u; i++) {
        if (read_otp(APP_KEY_HASH_ENTRY + i, words) != 0)
            return ERR_ISP_CONFIG;
        memcpy(&otp_hash[8u * i], words, 8);   /* entry n low word = digest[8n..8n+3], little-endian */
        if (words[0] != WORD_ERASED || words[1] != WORD_ERASED)
            blank = 0;
    }
    if (blank)
        return ERR_IMAGE_NO_KEY;
    if (!(t.found & 2u) || t.spki_len != SPKI_SIZE || memcmp(t.spki, s_spki_prefix, sizeof(s_spki_prefix)) != 0)
        return ERR_IMAGE_FORMAT;
    sha256_init(&sha);
    sha256_update(&sha, &t.spki[sizeof(s_spki_prefix)], 64);
    sha256_final(&sha, digest);
    if (memcmp(digest, otp_hash, 32) != 0)
        return ERR_IMAGE_KEY;

    sha256_init(&sha);
    for (at = base; at < hashed_end; at += 64u) {
        uint32_t n = hashed_end - at < 64u ? hashed_end - at : 64u;
        if (read_flash(at, buf, n) != 0)
            return ERR_IMAGE_FORMAT;
        sha256_update(&sha, buf, n);
    }
    sha256_final(&sha, digest);
    if (!(t.found & 1u) || memcmp(digest, t.sha256, 32) != 0)
        return ERR_IMAGE_SIGNATURE;
    if (t.found & 8u) {
        sha256_init(&sha);
        sha256_update(&sha, t.spki, SPKI_SIZE);
        sha256_final(&sha, buf);
        if (memcmp(buf, t.keyhash, 32) != 0)
            return ERR_IMAGE_KEY;
    }
    if (!(t.found & 4u) || t.sig_len < 2u || t.sig[0] != 0x30u || 2u + t.sig[1] != t.sig_len)
        return ERR_IMAGE_SIGNATURE;
    at = der_integer(t.sig, 2, t.sig_len, r);
    if (at == 0u || der_integer(t.sig, at, t.sig_len, s) != t.sig_len)
        return ERR_IMAGE_SIGNATURE;
    to_hex(digest, 32, msg);
    to_hex(&t.spki[27], 32, qx);
    to_hex(&t.spki[59], 32, qy);
    to_hex(r, 32, rh);
    to_hex(s, 32, sh);
    if (ECC_VerifySignature(CRYPTO, CURVE_P_256, msg, qx, qy, rh, sh) != 0)
        return ERR_IMAGE_SIGNATURE;
    *checked = end - base;
    return STS_OK;
}

int32_t Exec_VendorFunction(uint32_t *pu32Buf, uint32_t u32Len)
{
    CMD_PACKET_T *cmd = (CMD_PACKET_T *)pu32Buf;   /* command id and packet id stay as they came */
    uint32_t sub = cmd->au32Data[1], checked = 0, status;

    (void)u32Len;
    if (sub == VENDOR_READ_OTP && cmd->u16Len >= 12u)
        return vendor_read_otp(cmd, cmd->au32Data[2]);
    if (sub == VENDOR_WRITE_OTP && cmd->u16Len >= 20u)
        return vendor_write_otp(cmd, cmd->au32Data[2], cmd->au32Data[3], cmd->au32Data[4]);
    if (sub == VENDOR_REBOOT_TO_BOOTLOADER && cmd->u16Len >= 8u) {
        SYS_ResetCPU();    /* the ROM boots the verified bootloader; nothing answers */
        return 0;
    }
    if (sub == VENDOR_VERIFY_IMAGE && cmd->u16Len >= 12u) {
        status = verify_image(cmd->au32Data[2], &checked);
        return status == STS_OK ? reply(cmd, STS_OK, &checked, 1) : reply(cmd, status, NULL, 0);
    }
    return 0;                                      /* unknown sub-command or too short: ERR_PARAMETER */
}
