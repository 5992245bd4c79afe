"""Published values from Nuvoton's BSPs, used as known answers (test vectors, never defaults)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

# M2351BSP SampleCode/MKROM/SecureBootDemo: FwSign.ini private key and NuBL2/main.c public key.
DEMO_HOST_PRIVATE = 0x380A67FCFC01CA7073DA7C2C54296A61327F77262A7D4674C3D8E29A63E3FA20
DEMO_HOST_X = bytes.fromhex("755B3819F05A3E9F32D4D599062834AAC5220F75955378414A8F63716A152CE2")
DEMO_HOST_Y = bytes.fromhex("91C413F1915ED7B47473FD797647BA3D83E8224377909AF5B30C530EAAD79FD7")
DEMO_HOST_KEY_HASH = bytes.fromhex("145e73e48865222fa4d9741671c0c670ed45fe06b24cdb5dd507d7ab35ee9363")
DEMO_HOST_OTP0 = (0xE4735E14, 0x2F226588)
# M55M1BSP SampleCode/SecureApplication/SecureISPDemo/ISPSource/SecureISP.c: target static key.
DEMO_TARGET_PRIVATE = 0xD0AB2CB9EB88976E82F107598077CE50D8C7B67DEF7039EE5BA39EE0DD3BE411


def host_key() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(DEMO_HOST_PRIVATE, ec.SECP256R1())


def target_key() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(DEMO_TARGET_PRIVATE, ec.SECP256R1())
