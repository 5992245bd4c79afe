/* Linux stand-in for the BSP's ECC_VerifySignature (M2354BSP Library/StdDriver/src/crypto.c), for the
 * host build against ../shared/nuvoton-ref, whose shim models the ECC engine with OpenSSL but has no
 * signature check. Same arguments: hex strings of the digest, the key's X and Y, and R and S; returns
 * 0 when the signature holds, -1 otherwise. On the chip the BSP's own function runs the CRYPTO engine. */
#define OPENSSL_SUPPRESS_DEPRECATED   /* the EC_KEY calls the shim uses too; one short function */
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/obj_mac.h>
#include "NuMicro.h"
#include "vendor.h"

int32_t ECC_VerifySignature(CRYPTO_T *crypto, E_ECC_CURVE ecc_curve, char *message, char *public_k1,
                            char *public_k2, char *R, char *S)
{
    int32_t result = -1;
    unsigned char digest[32];
    BIGNUM *x = NULL, *y = NULL, *r = NULL, *s = NULL, *e = NULL;
    EC_KEY *key = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    ECDSA_SIG *sig = ECDSA_SIG_new();

    (void)crypto;
    if (ecc_curve != CURVE_P_256 || key == NULL || sig == NULL)
        goto done;
    if (!BN_hex2bn(&x, public_k1) || !BN_hex2bn(&y, public_k2) || !BN_hex2bn(&r, R) || !BN_hex2bn(&s, S) ||
        !BN_hex2bn(&e, message) || BN_num_bytes(e) > 32)
        goto done;
    if (BN_bn2binpad(e, digest, 32) != 32 || EC_KEY_set_public_key_affine_coordinates(key, x, y) != 1)
        goto done;
    if (ECDSA_SIG_set0(sig, r, s) != 1)
        goto done;
    r = s = NULL;   /* owned by sig now */
    if (ECDSA_do_verify(digest, 32, sig, key) == 1)
        result = 0;
done:
    BN_free(x); BN_free(y); BN_free(r); BN_free(s); BN_free(e);
    ECDSA_SIG_free(sig);
    EC_KEY_free(key);
    return result;
}
