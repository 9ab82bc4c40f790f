"""The committed stubs (src/kmsd/v1/) still describe
proto/kmsd/v1/kmsd.proto.

The check regenerates the descriptor with grpcio-tools and compares what
matters, independently of the generator's version: the messages, enums and
services (the FileDescriptorProto protoc produces from proto/, byte for
byte as a message) and every stub method (path, kind, request and response
types). Where the installed grpcio-tools is the one that generated the
stubs, it also compares the files as text (gen_stubs.py --check). Without
grpcio-tools the test is skipped, loudly, unless KMSD_REQUIRE_PYTHON is set.
"""
import os
import re
import subprocess
import sys
import tempfile
import unittest

from google.protobuf import descriptor_pb2

from kmsd.v1 import kmsd_pb2, kmsd_pb2_grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.normpath(os.path.join(HERE, ".."))
ROOT = os.path.normpath(os.path.join(PKG, "..", ".."))
PROTO = os.path.join(ROOT, "proto")


def have_grpc_tools():
    try:
        import grpc_tools  # noqa: F401

        return True
    except ImportError:
        if os.environ.get("KMSD_REQUIRE_PYTHON"):
            raise
        print("SKIPPED: grpcio-tools is not installed: the stubs are not checked against proto/", file=sys.stderr)
        return False


def normalized(fd):
    """``fd`` without the JSON names protoc adds to a descriptor set (and
    leaves out of the Python code)."""

    def strip(messages):
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            for f in m.extension:
                f.ClearField("json_name")
            strip(m.nested_type)

    strip(fd.message_type)
    return fd


class Recorder:
    """A channel that records the methods a stub registers."""

    def __init__(self):
        self.methods = {}

    def _make(kind):
        def register(self, path, request_serializer=None, response_deserializer=None, **_):
            self.methods[path] = (kind, request_serializer, response_deserializer)
            return None

        return register

    unary_unary = _make("unary_unary")
    unary_stream = _make("unary_stream")
    stream_unary = _make("stream_unary")
    stream_stream = _make("stream_stream")


class Stubs(unittest.TestCase):
    def fresh_descriptor(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "set.pb")
            subprocess.run(
                [sys.executable, "-m", "grpc_tools.protoc", "-I", PROTO, f"--descriptor_set_out={out}", "kmsd/v1/kmsd.proto"],
                check=True,
            )
            with open(out, "rb") as f:
                fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
        (fd,) = [f for f in fds.file if f.name == "kmsd/v1/kmsd.proto"]
        return normalized(fd)

    def test_descriptor_matches_proto(self):
        if not have_grpc_tools():
            return
        fresh = self.fresh_descriptor()
        committed = normalized(descriptor_pb2.FileDescriptorProto.FromString(kmsd_pb2.DESCRIPTOR.serialized_pb))
        self.assertEqual(
            committed,
            fresh,
            "src/kmsd/v1 is stale: proto/kmsd/v1/kmsd.proto changed; run python3 clients/python/gen_stubs.py",
        )

    def test_every_method_has_its_stub(self):
        if not have_grpc_tools():
            return
        fresh = self.fresh_descriptor()
        kinds = {
            (False, False): "unary_unary",
            (False, True): "unary_stream",
            (True, False): "stream_unary",
            (True, True): "stream_stream",
        }
        self.assertTrue(fresh.service)
        with open(kmsd_pb2_grpc.__file__, encoding="utf-8") as f:
            source = f.read()
        for service in fresh.service:
            ch = Recorder()
            getattr(kmsd_pb2_grpc, f"{service.name}Stub")(ch)
            expected = {}
            for m in service.method:
                expected[f"/kmsd.v1.{service.name}/{m.name}"] = (
                    kinds[(m.client_streaming, m.server_streaming)],
                    m.input_type.rsplit(".", 1)[1],
                    m.output_type.rsplit(".", 1)[1],
                )
            # The request serializer is the message's inherited method (it
            # does not name the class): read it from the stub's source.
            requests = dict(re.findall(r"'(/kmsd\.v1\.[A-Za-z]+/[A-Za-z]+)',\s*request_serializer=\w+\.(\w+)\.SerializeToString", source))
            got = {
                path: (kind, requests.get(path), de.__self__.DESCRIPTOR.name) for path, (kind, ser, de) in ch.methods.items()
            }
            self.assertEqual(got, expected, f"stubs of {service.name} are stale: run python3 clients/python/gen_stubs.py")

    def test_text_matches_when_the_generator_is_the_same(self):
        if not have_grpc_tools():
            return
        from importlib import metadata

        version = metadata.version("grpcio-tools")
        with open(os.path.join(PKG, "src", "kmsd", "v1", "kmsd_pb2_grpc.py"), encoding="utf-8") as f:
            recorded = f.read().split("# grpcio-tools ", 1)[1].split("\n", 1)[0]
        if recorded != version:
            print(f"NOTE: stubs made by grpcio-tools {recorded}, {version} installed: compared by content only", file=sys.stderr)
            return
        subprocess.run([sys.executable, os.path.join(PKG, "gen_stubs.py"), "--check"], check=True)

    def test_stubs_carry_no_generator_version_pin(self):
        # The portable form gen_stubs.py makes: the stubs import on the
        # oldest grpcio and protobuf of pyproject.toml's bounds.
        for name in ("kmsd_pb2.py", "kmsd_pb2_grpc.py"):
            with open(os.path.join(PKG, "src", "kmsd", "v1", name), encoding="utf-8") as f:
                text = f.read()
            for pin in ("ValidateProtobufRuntimeVersion", "GRPC_GENERATED_VERSION", "_registered_method", "add_registered_method_handlers"):
                self.assertNotIn(pin, text, name)


if __name__ == "__main__":
    unittest.main()
