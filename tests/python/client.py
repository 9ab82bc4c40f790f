#!/usr/bin/env python3
"""A kmsd client in Python (grpcio), to show that any gRPC client works.

Generate the stubs once:
    python3 -m grpc_tools.protoc -I proto --python_out=OUT --grpc_python_out=OUT proto/kmsd/v1/kmsd.proto
Then:
    PYTHONPATH=OUT python3 tests/python/client.py KEY_NAME
It reads KMSD_ADDR (unix:/path or host:port), KMSD_CA, KMSD_CERT, KMSD_KEY,
creates KEY_NAME if missing, encrypts, decrypts, checks error codes,
batches, redaction (unary and bidirectional streaming) and tokens, and
prints the round trip.
"""
import os
import sys

import grpc
from kmsd.v1 import kmsd_pb2, kmsd_pb2_grpc


def main():
    key = sys.argv[1] if len(sys.argv) > 1 else "python-demo"
    read = lambda var: open(os.environ[var], "rb").read()
    creds = grpc.ssl_channel_credentials(
        root_certificates=read("KMSD_CA"),
        private_key=read("KMSD_KEY"),
        certificate_chain=read("KMSD_CERT"),
    )
    addr = os.environ["KMSD_ADDR"]
    # The dev server certificate is issued for "localhost".
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(addr, creds, options=options) as channel:
        keys = kmsd_pb2_grpc.KeysStub(channel)
        crypto = kmsd_pb2_grpc.CryptoStub(channel)
        try:
            keys.CreateKey(kmsd_pb2.CreateKeyRequest(name=key))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        plaintext = b"GB82 WEST 1234 5698 7654 32"
        enc = crypto.Encrypt(kmsd_pb2.EncryptRequest(key=key, plaintext=plaintext, associated_data=b"customer-17"))
        dec = crypto.Decrypt(
            kmsd_pb2.DecryptRequest(key=key, ciphertext=enc.ciphertext, associated_data=b"customer-17")
        )
        assert dec.plaintext == plaintext, "round trip mismatch"
        try:
            crypto.Decrypt(kmsd_pb2.DecryptRequest(key=key, ciphertext=enc.ciphertext, associated_data=b"other"))
            raise SystemExit("wrong associated data was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
        # Batches: one bad item (an unknown key) gets its own error.
        batch = crypto.EncryptBatch(
            kmsd_pb2.EncryptBatchRequest(
                items=[
                    kmsd_pb2.EncryptRequest(key=key, plaintext=b"a"),
                    kmsd_pb2.EncryptRequest(key=key + "-missing", plaintext=b"b"),
                ]
            )
        )
        assert batch.items[0].WhichOneof("result") == "ok", batch
        assert batch.items[1].WhichOneof("result") == "error", batch
        assert batch.items[1].error.code == grpc.StatusCode.NOT_FOUND.value[0], batch.items[1].error
        # Unknown key on a single call: NOT_FOUND.
        try:
            crypto.Encrypt(kmsd_pb2.EncryptRequest(key=key + "-missing", plaintext=b"x"))
            raise SystemExit("unknown key was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()

        mask = kmsd_pb2_grpc.MaskStub(channel)
        red = mask.Redact(kmsd_pb2.RedactRequest(text="card=4111 1111 1111 1111 order=ORD-1"))
        assert red.text == "card=**** **** **** 1111 order=ORD-1", red.text
        assert [f.kind for f in red.findings] == [kmsd_pb2.PAN], red.findings
        # Bidirectional streaming: lines in, redacted lines out, in order.
        lines = [f"line {i} email=user{i}@example.com" for i in range(50)]
        out = [r.text for r in mask.RedactStream(kmsd_pb2.RedactRequest(text=t) for t in lines)]
        assert out == [f"line {i} email=u***@example.com" for i in range(50)], out[:3]
        # Format-preserving tokens round-trip.
        tok = mask.Tokenize(kmsd_pb2.TokenizeRequest(key=key, value="4111111111111111", kind=kmsd_pb2.PAN))
        assert len(tok.token) == 16 and tok.token.isdigit() and tok.token.endswith("1111"), tok.token
        back = mask.Detokenize(
            kmsd_pb2.DetokenizeRequest(key=key, token=tok.token, kind=kmsd_pb2.PAN, key_version=tok.key_version)
        )
        assert back.value == "4111111111111111", back.value
        print(f"ok key={key} version={enc.key_version} ciphertext_bytes={len(enc.ciphertext)} batch+redact+stream+tokens")


if __name__ == "__main__":
    main()
