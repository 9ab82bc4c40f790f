"""Key material wrapped for a kmsd import job, and kmsd's ciphertext format 1,
with Python `cryptography` (an implementation kmsd shares nothing with).

    byok.py wrap PEM MATERIAL OUT        CKM_RSA_AES_KEY_WRAP: RSA-OAEP-SHA256 of a
                                         fresh AES-256 key || RFC 5649 wrap of MATERIAL
    byok.py encrypt KEY NAME VERSION AAD PLAINTEXT OUT   format 1 (docs/formats.md §1)
    byok.py decrypt KEY NAME AAD CIPHERTEXT OUT          format 1, the other way
    byok.py hmac KEY DATA OUT                            HMAC-SHA256
    byok.py ecgen CURVE DER                              an EC private key (P-256, P-384), PKCS#8 DER
    byok.py ecverify DER DATA SIG                        checks a DER ECDSA-SHA256 signature
Arguments are file paths except NAME, VERSION and AAD (text).
"""
import os
import struct
import sys

from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def wrap(pem, material):
    public = serialization.load_pem_public_key(pem)
    assert public.key_size == 3072
    ephemeral = os.urandom(32)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    return public.encrypt(ephemeral, oaep) + aes_key_wrap_with_padding(ephemeral, material)


def message_key(key, salt):
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"kmsd v1 aes-256-gcm message key")
    return hkdf.derive(key)


def aad(header, name, caller_aad):
    name = name.encode()
    return b"kmsd ciphertext v1\x00" + header + struct.pack(">I", len(name)) + name + caller_aad


def encrypt(key, name, version, caller_aad, plaintext):
    header = bytes([1, 1]) + struct.pack(">I", version)
    salt, nonce = os.urandom(16), os.urandom(12)
    ct = AESGCM(message_key(key, salt)).encrypt(nonce, plaintext, aad(header, name, caller_aad))
    return header + salt + nonce + ct


def decrypt(key, name, caller_aad, blob):
    assert blob[0:2] == bytes([1, 1]), "format 1, AES-256-GCM"
    header, salt, nonce, ct = blob[0:6], blob[6:22], blob[22:34], blob[34:]
    return AESGCM(message_key(key, salt)).decrypt(nonce, ct, aad(header, name, caller_aad))


def main(argv):
    what = argv[1]
    if what == "wrap":
        write(argv[4], wrap(read(argv[2]), read(argv[3])))
    elif what == "encrypt":
        write(argv[7], encrypt(read(argv[2]), argv[3], int(argv[4]), argv[5].encode(), read(argv[6])))
    elif what == "decrypt":
        write(argv[6], decrypt(read(argv[2]), argv[3], argv[4].encode(), read(argv[5])))
    elif what == "hmac":
        h = hmac.HMAC(read(argv[2]), hashes.SHA256())
        h.update(read(argv[3]))
        write(argv[4], h.finalize())
    elif what == "ecgen":
        curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}[argv[2]]
        key = ec.generate_private_key(curve)
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write(argv[3], der)
    elif what == "ecverify":
        key = serialization.load_der_private_key(read(argv[2]), password=None)
        key.public_key().verify(read(argv[4]), read(argv[3]), ec.ECDSA(hashes.SHA256()))
    else:
        raise SystemExit(f"unknown command {what}")


if __name__ == "__main__":
    main(sys.argv)
