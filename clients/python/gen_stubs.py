#!/usr/bin/env python3
"""Regenerates the committed gRPC stubs in src/kmsd/v1/ from proto/.

    python3 clients/python/gen_stubs.py          # rewrite the stubs
    python3 clients/python/gen_stubs.py --check  # exit 1 if they differ

The stubs are committed (not generated at install time) so that
`pip install ./clients/python` needs no protoc and no network for a build
dependency. tests/test_stubs.py checks that they still describe
proto/kmsd/v1/kmsd.proto.

grpcio-tools writes code that refuses to run on an older runtime than the
generator (a protobuf `ValidateProtobufRuntimeVersion` call, a
`GRPC_GENERATED_VERSION` check) and uses two grpcio >= 1.62 keywords
(`_registered_method=True`, `server.add_registered_method_handlers`).
Neither is needed by this code, and both would pin the package to the
newest grpcio and protobuf, which a Debian system's packages are not. This
script removes them, so the stubs run on protobuf >= 4.21 and grpcio >=
1.51 (Debian 12's python3-protobuf and python3-grpcio), the lower bounds in
pyproject.toml. The messages themselves (the serialized descriptor) are
exactly protoc's.
"""
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
PROTO_DIR = os.path.join(ROOT, "proto")
PROTO = os.path.join(PROTO_DIR, "kmsd", "v1", "kmsd.proto")
OUT = os.path.join(HERE, "src", "kmsd", "v1")
FILES = ("kmsd_pb2.py", "kmsd_pb2.pyi", "kmsd_pb2_grpc.py")
NOTE = "# Made runtime-portable by clients/python/gen_stubs.py (see its docstring).\n"


def generator_version():
    """The grpcio-tools version that generates (recorded in the stubs)."""
    try:
        from importlib import metadata

        return metadata.version("grpcio-tools")
    except Exception:  # noqa: BLE001 - only informative
        return "unknown"


def protoc(out_dir, *extra):
    """Runs grpc_tools.protoc on proto/kmsd/v1/kmsd.proto into out_dir."""
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", PROTO_DIR, *extra, PROTO]
    subprocess.run(cmd, check=True, cwd=out_dir)


def portable(name, text):
    """Removes the generator-version pins from one generated file."""
    if name == "kmsd_pb2.py":
        text = text.replace("from google.protobuf import runtime_version as _runtime_version\n", "")
        text = re.sub(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)\n", "", text)
    elif name == "kmsd_pb2_grpc.py":
        text = re.sub(
            r"GRPC_GENERATED_VERSION = .*?\n    \)\n",
            "",
            text,
            flags=re.S,
        )
        text = re.sub(r",\s*_registered_method=True\)", ")", text)
        text = re.sub(r"\n\s*server\.add_registered_method_handlers\([^)]*\)", "", text)
    lines = text.splitlines(keepends=True)
    # After the generator's own "DO NOT EDIT" line.
    lines.insert(1, NOTE + f"# grpcio-tools {generator_version()}\n")
    return "".join(lines)


def generate(out_dir):
    """Generates the portable stubs into out_dir/kmsd/v1/; returns {name: text}."""
    protoc(out_dir, f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}")
    result = {}
    for name in FILES:
        with open(os.path.join(out_dir, "kmsd", "v1", name), encoding="utf-8") as f:
            result[name] = portable(name, f.read())
    return result


def committed():
    result = {}
    for name in FILES:
        with open(os.path.join(OUT, name), encoding="utf-8") as f:
            result[name] = f.read()
    return result


def main():
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(tmp)
    if check:
        stale = [n for n in FILES if committed().get(n) != fresh[n]]
        if stale:
            print(f"stale stubs: {', '.join(stale)}: run python3 clients/python/gen_stubs.py", file=sys.stderr)
            return 1
        print("stubs up to date")
        return 0
    for name, text in fresh.items():
        with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
            f.write(text)
    print(f"wrote {', '.join(FILES)} to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
