"""JWS (RFC 7515) signed by a kmsd key that never leaves the daemon: compact
serialisation and the detached form of RFC 7515 Appendix F
(``header..signature``, Open Banking's ``x-jws-signature``). The same rules
as the Rust client's ``kmsd_client::jws``:

- ``alg`` from the key's algorithm: ``ES256`` (ECDSA_P256_SHA256, the
  signature asked for in IEEE P1363 form ``r || s``), ``PS256``
  (RSA_PSS_3072/4096_SHA256), ``EdDSA`` (ED25519); ``kid`` is
  ``"<key>/<version>"`` as ``GetPublicKey`` names it; then ``typ`` and the
  caller's parameters in order.
- The version in ``kid`` is the one that signed: the helper reads the primary
  version, signs, and if the key rotated in between (the response names
  another version) signs again with the new ``kid`` (at most
  :data:`SIGN_ATTEMPTS` times).
- ES256 and PS256 send kmsd the SHA-256 digest of the signing input; Ed25519
  signs the signing input itself.
- Verification reads ``kid``, refuses an ``alg`` that is not the key's and a
  ``crit`` parameter the caller does not understand, then asks kmsd to verify
  under that version.
- Refused: ``b64`` (RFC 7797), a caller-set ``alg`` or ``kid``.
"""
import base64
import hashlib
import json
from collections import namedtuple

from .errors import JwsError
from .v1 import kmsd_pb2

SIGN_ATTEMPTS = 3
MAX_EXTRA_PARAMETERS = 64
MAX_HEADER_BYTES = 16 * 1024
_RESERVED = ("alg", "kid", "b64")
_REGISTERED = ("alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit", "enc", "zip")

SignedJws = namedtuple("SignedJws", "jws kid key_version alg")
VerifiedJws = namedtuple("VerifiedJws", "header payload key key_version")

_A = kmsd_pb2.Algorithm
_ALG = {
    _A.Value("ECDSA_P256_SHA256"): "ES256",
    _A.Value("RSA_PSS_3072_SHA256"): "PS256",
    _A.Value("RSA_PSS_4096_SHA256"): "PS256",
    _A.Value("ED25519"): "EdDSA",
}


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text, what):
    if not isinstance(text, str) or any(c in text for c in "=+/ \n"):
        raise JwsError(f"{what} is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise JwsError(f"{what} is not base64url") from None


def jws_alg(algorithm):
    """The JWS ``alg`` of a kmsd ``Algorithm`` value, or ``None``."""
    return _ALG.get(algorithm)


def parse_kid(kid):
    key, sep, version = kid.rpartition("/")
    if not sep or not key or not version.isdigit() or not 0 < int(version) < 2**32:
        raise JwsError(f'kid {kid!r} is not "<key>/<version>"')
    return key, int(version)


def _check_crit(crit, present):
    if not isinstance(crit, list) or not crit:
        raise JwsError("crit must be a non-empty array of header parameter names")
    out = []
    for name in crit:
        if not isinstance(name, str):
            raise JwsError("crit must be a non-empty array of header parameter names")
        if name in _REGISTERED:
            raise JwsError(f"crit names {name!r}, which RFC 7515 defines")
        if name not in present:
            raise JwsError(f"crit names {name!r}, which is not in the header")
        if name in out:
            raise JwsError(f"crit names {name!r} twice")
        out.append(name)
    return out


def _header(alg, kid, typ, extra):
    fields = [("alg", alg), ("kid", kid)]
    if typ is not None:
        fields.append(("typ", typ))
    fields.extend(extra)
    return "{" + ",".join(json.dumps(n) + ":" + json.dumps(v, separators=(",", ":")) for n, v in fields) + "}"


def _check_extra(typ, extra):
    if len(extra) > MAX_EXTRA_PARAMETERS:
        raise JwsError(f"{len(extra)} header parameters (at most {MAX_EXTRA_PARAMETERS})")
    seen = ["alg", "kid"] + (["typ"] if typ is not None else [])
    for name, _ in extra:
        if not isinstance(name, str) or not name:
            raise JwsError("an empty header parameter name")
        if name in _RESERVED:
            raise JwsError(f"header parameter {name!r} is set by the helper or not supported (b64: RFC 7797 is not)")
        if name in seen:
            raise JwsError(f"header parameter {name!r} given twice")
        seen.append(name)
    for name, value in extra:
        if name == "crit":
            _check_crit(value, seen)


def _input(alg, signing_input):
    if alg == "EdDSA":
        return {"message": signing_input}
    return {"digest": hashlib.sha256(signing_input).digest()}


def sign_jws(client, key, payload, *, typ=None, headers=(), detached=False, **opts):
    """Signs ``payload`` (bytes) with ``key``: a :class:`SignedJws` whose
    ``jws`` is ``header.payload.signature`` (``header..signature`` when
    ``detached``). ``headers``: (name, JSON value) pairs or a dict, in order."""
    extra = list(headers.items()) if isinstance(headers, dict) else list(headers)
    _check_extra(typ, extra)
    public = client.call("Crypto", "GetPublicKey", kmsd_pb2.GetPublicKeyRequest(key=key), **opts)
    alg = jws_alg(public.algorithm)
    if alg is None:
        raise JwsError(
            f"key {key} is {_A.Name(public.algorithm)}, which has no JWS signature algorithm here (ES256, PS256, EdDSA)"
        )
    version = public.key_version
    payload_b64 = b64url(payload)
    for _ in range(SIGN_ATTEMPTS):
        kid = f"{key}/{version}"
        header_b64 = b64url(_header(alg, kid, typ, extra).encode())
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        req = kmsd_pb2.SignRequest(key=key, encoding=kmsd_pb2.P1363, **_input(alg, signing_input))
        resp = client.call("Crypto", "Sign", req, **opts)
        if jws_alg(resp.algorithm) != alg:
            raise JwsError(f"key {key} signed with {_A.Name(resp.algorithm)} where {alg} was expected")
        if resp.key_version != version:
            version = resp.key_version  # rotated in between: sign again naming this version
            continue
        body = "" if detached else payload_b64
        return SignedJws(f"{header_b64}.{body}.{b64url(resp.signature)}", kid, version, alg)
    raise JwsError(f"key {key}'s primary version kept changing while signing ({SIGN_ATTEMPTS} attempts): try again")


def verify_jws(client, jws, detached_payload=None, understood_crit=(), **opts):
    """Verifies a compact JWS made with a kmsd key: a :class:`VerifiedJws`
    (header dict, payload bytes, key, version), or :class:`JwsError`."""
    parts = jws.strip().split(".")
    if len(parts) != 3:
        raise JwsError("not a compact JWS (three base64url parts separated by '.')")
    h, p, s = parts
    if len(h) > MAX_HEADER_BYTES * 4 // 3 + 4:
        raise JwsError(f"the protected header is over {MAX_HEADER_BYTES} bytes")
    try:
        header = json.loads(b64url_decode(h, "the protected header"))
    except ValueError:
        raise JwsError("the protected header is not a JSON object") from None
    if not isinstance(header, dict):
        raise JwsError("the protected header is not a JSON object")
    signature = b64url_decode(s, "the signature")
    if p == "":
        if detached_payload is None:
            raise JwsError("the JWS is detached (header..signature): give the payload")
        payload = bytes(detached_payload)
    else:
        if detached_payload is not None:
            raise JwsError("the JWS carries its payload: a detached payload was also given")
        payload = b64url_decode(p, "the payload")
    if "b64" in header:
        raise JwsError("the header has b64 (RFC 7797), which is not supported")
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str):
        raise JwsError("the header has no alg")
    if not isinstance(kid, str):
        raise JwsError("the header has no kid")
    key, version = parse_kid(kid)
    if "crit" in header:
        for name in _check_crit(header["crit"], list(header)):
            if name not in understood_crit:
                raise JwsError(f"crit names {name!r}, which this verifier was not told it understands")
    public = client.call("Crypto", "GetPublicKey", kmsd_pb2.GetPublicKeyRequest(key=key, key_version=version), **opts)
    expected = jws_alg(public.algorithm)
    if expected is None:
        raise JwsError(f"key {key} is {_A.Name(public.algorithm)}, not a JWS signing key")
    if alg != expected:
        raise JwsError(f"the header says alg {alg!r} but {kid} is {_A.Name(public.algorithm)} ({expected})")
    signing_input = f"{h}.{b64url(payload)}".encode("ascii")
    req = kmsd_pb2.VerifyRequest(
        key=key, key_version=version, signature=signature, encoding=kmsd_pb2.P1363, **_input(alg, signing_input)
    )
    if not client.call("Crypto", "Verify", req, **opts).valid:
        raise JwsError(f"the signature does not verify under {kid}")
    return VerifiedJws(header, payload, key, version)
