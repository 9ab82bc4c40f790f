"""JWS made by kmsd keys, verified by libraries nobody here wrote: PyJWT and
jwcrypto (over ``cryptography``), with the public key from GetPublicKey as
PEM and as JWK, for ES256, PS256 (RSA 3072 and 4096) and EdDSA, attached and
detached (RFC 7515 Appendix F), plain and with Open Banking's protected
header (``http://openbanking.org.uk/iat``/``iss``/``tan`` and ``crit``). A
tampered payload, header or signature fails in each library and in
``kmsd.jws.verify_jws``.

Run by tests/python_package.rs against a real daemon (KMSD_TEST_DAEMON=1);
skipped elsewhere.
"""
import base64
import json
import os
import unittest

import kmsd
from kmsd import Client
from kmsd.jws import JwsError
from kmsd.v1 import kmsd_pb2

ENABLED = os.environ.get("KMSD_TEST_DAEMON") == "1"

try:
    import jwt  # PyJWT
    from jwcrypto import jwk as jc_jwk
    from jwcrypto import jws as jc_jws
    from cryptography.hazmat.primitives import serialization

    LIBS = True
except ImportError:  # pragma: no cover - .ci/run installs them
    LIBS = False

OB = "http://openbanking.org.uk/"
OB_HEADERS = [
    (OB + "iat", 1700000000),
    (OB + "iss", "0015800001041RHAAY"),
    (OB + "tan", "openbanking.org.uk"),
    ("crit", [OB + "iat", OB + "iss", OB + "tan"]),
]
KEYS = {
    "jws.es256": ("ECDSA_P256_SHA256", "ES256"),
    "jws.ps256-3072": ("RSA_PSS_3072_SHA256", "PS256"),
    "jws.ps256-4096": ("RSA_PSS_4096_SHA256", "PS256"),
    "jws.eddsa": ("ED25519", "EdDSA"),
}
PAYLOAD = b'{"Data":{"Initiation":{"InstructedAmount":{"Amount":"165.88","Currency":"GBP"}}}}'


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def attach(detached, payload):
    """RFC 7515 Appendix F: put the payload back to verify."""
    h, empty, s = detached.split(".")
    assert empty == ""
    return f"{h}.{b64url(payload)}.{s}"


def tampered(token):
    h, _, s = token.split(".")
    forged = b64url(b'{"Data":{"Amount":"9999.99"}}')
    return f"{h}.{forged}.{s}"


def ob_registry():
    """jwcrypto must be told it understands the Open Banking headers (crit)."""
    return {
        name: jc_jws.JWSEHeaderParameter("Open Banking " + name, True, True, None)
        for name, _ in OB_HEADERS
        if name != "crit"
    }


@unittest.skipUnless(ENABLED, "needs the daemon (tests/python_package.rs)")
@unittest.skipUnless(LIBS, "needs PyJWT, jwcrypto and cryptography (.ci/run installs them)")
class ForeignLibrariesVerifyKmsdJws(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = Client.from_env()
        cls.public = {}
        for name, (algorithm, _) in KEYS.items():
            try:
                cls.client.call(
                    "Keys",
                    "CreateKey",
                    kmsd_pb2.CreateKeyRequest(name=name, algorithm=kmsd_pb2.Algorithm.Value(algorithm)),
                )
            except kmsd.AlreadyExists:
                pass
            cls.public[name] = cls.client.call("Crypto", "GetPublicKey", kmsd_pb2.GetPublicKeyRequest(key=name))

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def keys(self, name):
        """The public key in the forms each library takes: PEM and JWK."""
        pub = self.public[name]
        jwk = json.loads(pub.jwk)
        self.assertEqual(jwk["kid"], pub.kid)
        self.assertEqual(pub.kid, f"{name}/{pub.key_version}")
        pem = serialization.load_pem_public_key(pub.pem.encode())
        return {
            "pyjwt-pem": pem,
            "pyjwt-jwk": jwt.PyJWK(jwk).key,
            "jwcrypto-pem": jc_jwk.JWK.from_pem(pub.pem.encode()),
            "jwcrypto-jwk": jc_jwk.JWK.from_json(pub.jwk),
        }

    def pyjwt_verify(self, token, key, alg):
        return jwt.api_jws.PyJWS().decode_complete(token, key, algorithms=[alg])

    def jwcrypto_verify(self, token, key, alg, registry=None, detached=None):
        w = jc_jws.JWS(header_registry=registry) if registry else jc_jws.JWS()
        w.deserialize(token)
        if detached is None:
            w.verify(key, alg=alg)
        else:
            w.verify(key, alg=alg, detached_payload=detached)
        return w

    def test_attached_and_detached_verify_in_pyjwt_and_jwcrypto(self):
        for name, (_, alg) in KEYS.items():
            keys = self.keys(name)
            with self.subTest(key=name):
                signed = self.client.sign_jws(name, PAYLOAD, typ="JOSE")
                self.assertEqual(signed.alg, alg)
                self.assertEqual(signed.kid, self.public[name].kid)
                header = json.loads(base64.urlsafe_b64decode(signed.jws.split(".")[0] + "=="))
                self.assertEqual(header, {"alg": alg, "kid": signed.kid, "typ": "JOSE"})
                for form in ("pyjwt-pem", "pyjwt-jwk"):
                    out = self.pyjwt_verify(signed.jws, keys[form], alg)
                    self.assertEqual(out["payload"], PAYLOAD, form)
                    self.assertEqual(out["header"]["kid"], signed.kid)
                    with self.assertRaises(jwt.InvalidSignatureError, msg=form):
                        self.pyjwt_verify(tampered(signed.jws), keys[form], alg)
                for form in ("jwcrypto-pem", "jwcrypto-jwk"):
                    self.assertEqual(self.jwcrypto_verify(signed.jws, keys[form], alg).payload, PAYLOAD)
                    with self.assertRaises(jc_jws.InvalidJWSSignature, msg=form):
                        self.jwcrypto_verify(tampered(signed.jws), keys[form], alg)

                detached = self.client.sign_jws(name, PAYLOAD, typ="JOSE", detached=True)
                h, empty, s = detached.jws.split(".")
                self.assertEqual(empty, "")
                for form in ("pyjwt-pem", "pyjwt-jwk"):
                    out = self.pyjwt_verify(attach(detached.jws, PAYLOAD), keys[form], alg)
                    self.assertEqual(out["payload"], PAYLOAD)
                    with self.assertRaises(jwt.InvalidSignatureError):
                        self.pyjwt_verify(attach(detached.jws, PAYLOAD + b" "), keys[form], alg)
                for form in ("jwcrypto-pem", "jwcrypto-jwk"):
                    self.jwcrypto_verify(detached.jws, keys[form], alg, detached=PAYLOAD)
                    with self.assertRaises(jc_jws.InvalidJWSSignature):
                        self.jwcrypto_verify(detached.jws, keys[form], alg, detached=PAYLOAD + b" ")

                # and kmsd's own verification, through Verify
                v = self.client.verify_jws(signed.jws)
                self.assertEqual((v.payload, v.key, v.key_version), (PAYLOAD, name, detached.key_version))
                self.client.verify_jws(detached.jws, PAYLOAD)
                with self.assertRaisesRegex(JwsError, "does not verify"):
                    self.client.verify_jws(tampered(signed.jws))
                with self.assertRaisesRegex(JwsError, "does not verify"):
                    self.client.verify_jws(detached.jws, PAYLOAD + b" ")
                # the signature of another message
                other = self.client.sign_jws(name, b"other", typ="JOSE").jws.split(".")[2]
                with self.assertRaisesRegex(JwsError, "does not verify"):
                    self.client.verify_jws(f"{h}.{b64url(PAYLOAD)}.{other}")

    def test_open_banking_headers_with_crit(self):
        for name, (_, alg) in KEYS.items():
            keys = self.keys(name)
            with self.subTest(key=name):
                d = self.client.sign_jws(name, PAYLOAD, typ="JOSE", headers=OB_HEADERS, detached=True)
                header = json.loads(base64.urlsafe_b64decode(d.jws.split(".")[0] + "=="))
                self.assertEqual(list(header), ["alg", "kid", "typ"] + [n for n, _ in OB_HEADERS])
                self.assertEqual(header[OB + "iat"], 1700000000)
                # jwcrypto, told it understands the Open Banking headers
                for form in ("jwcrypto-pem", "jwcrypto-jwk"):
                    self.jwcrypto_verify(d.jws, keys[form], alg, registry=ob_registry(), detached=PAYLOAD)
                    with self.assertRaises(jc_jws.InvalidJWSSignature):
                        self.jwcrypto_verify(d.jws, keys[form], alg, registry=ob_registry(), detached=b"{}")
                    # not told: the critical headers are refused (as RFC 7515 says)
                    with self.assertRaises(jc_jws.InvalidJWSSignature):
                        self.jwcrypto_verify(d.jws, keys[form], alg, detached=PAYLOAD)
                # PyJWT does not take extensions: it refuses crit it does not know
                with self.assertRaisesRegex(jwt.InvalidTokenError, "critical"):
                    self.pyjwt_verify(attach(d.jws, PAYLOAD), keys["pyjwt-pem"], alg)
                # kmsd's verifier: the same rule
                with self.assertRaisesRegex(JwsError, "understands"):
                    self.client.verify_jws(d.jws, PAYLOAD)
                self.client.verify_jws(d.jws, PAYLOAD, understood_crit=[n for n, _ in OB_HEADERS[:3]])

    def test_alg_confusion_and_bad_headers_are_refused(self):
        signed = self.client.sign_jws("jws.es256", PAYLOAD)
        h, p, s = signed.jws.split(".")
        header = json.loads(base64.urlsafe_b64decode(h + "=="))
        for alg in ("PS256", "EdDSA", "none", "HS256"):
            forged = b64url(json.dumps(dict(header, alg=alg)).encode())
            with self.assertRaisesRegex(JwsError, "alg"):
                self.client.verify_jws(f"{forged}.{p}.{s}")
        for bad, why in (
            ({"alg": "ES256"}, "no kid"),
            (dict(header, kid="jws.es256"), "kid"),
            (dict(header, b64=False), "b64"),
        ):
            with self.assertRaisesRegex(JwsError, why):
                self.client.verify_jws(f"{b64url(json.dumps(bad).encode())}.{p}.{s}")
        for headers, why in (
            ([("alg", "none")], "set by the helper"),
            ([("kid", "x/1")], "set by the helper"),
            ([("b64", False)], "RFC 7797"),
            ([("crit", ["missing"])], "not in the header"),
        ):
            with self.assertRaisesRegex(JwsError, why):
                self.client.sign_jws("jws.es256", PAYLOAD, headers=headers)
        with self.assertRaisesRegex(JwsError, "detached"):
            self.client.verify_jws(f"{h}..{s}")

    def test_the_kid_names_the_version_that_signed_across_a_rotation(self):
        name = "jws.rotating"
        try:
            self.client.call(
                "Keys", "CreateKey", kmsd_pb2.CreateKeyRequest(name=name, algorithm=kmsd_pb2.ED25519)
            )
        except kmsd.AlreadyExists:
            pass
        first = self.client.sign_jws(name, PAYLOAD)
        self.client.call("Keys", "RotateKey", kmsd_pb2.RotateKeyRequest(name=name))
        second = self.client.sign_jws(name, PAYLOAD)
        self.assertEqual(second.key_version, first.key_version + 1)
        self.assertEqual(second.kid, f"{name}/{second.key_version}")
        # each verifies under the version its kid names, with that version's
        # public key in a foreign library, and not under the other's
        for signed in (first, second):
            pub = self.client.call(
                "Crypto", "GetPublicKey", kmsd_pb2.GetPublicKeyRequest(key=name, key_version=signed.key_version)
            )
            jwt.api_jws.PyJWS().decode_complete(signed.jws, jwt.PyJWK(json.loads(pub.jwk)).key, algorithms=["EdDSA"])
            self.assertEqual(self.client.verify_jws(signed.jws).key_version, signed.key_version)
        old = self.client.call(
            "Crypto", "GetPublicKey", kmsd_pb2.GetPublicKeyRequest(key=name, key_version=first.key_version)
        )
        with self.assertRaises(jwt.InvalidSignatureError):
            jwt.api_jws.PyJWS().decode_complete(second.jws, jwt.PyJWK(json.loads(old.jwk)).key, algorithms=["EdDSA"])


if __name__ == "__main__":
    unittest.main()
