"""The committed covisit.v1 modules are what `make proto` generates from the .proto files."""

from pathlib import Path

from grpc_tools import protoc

PROTO = Path(__file__).resolve().parents[2] / "proto"
GENERATED = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def test_generated_code_is_fresh(tmp_path):
    sources = sorted(PROTO.glob("covisit/v1/*.proto"))
    assert {p.stem for p in sources} == {"recommend", "feedback", "admin"}
    args = ["protoc", f"-I{PROTO}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            f"--pyi_out={tmp_path}", *map(str, sources)]
    assert protoc.main(args) == 0
    for source in sources:
        for suffix in GENERATED:
            name = f"covisit/v1/{source.stem}{suffix}"
            fresh = (tmp_path / name).read_text()
            assert (PROTO / name).read_text() == fresh, f"{name} is stale: run `make proto`"


def test_every_field_and_rpc_is_commented():
    for source in PROTO.glob("covisit/v1/*.proto"):
        lines = source.read_text().splitlines()
        for i, line in enumerate(lines):
            text = line.strip()
            declares = text.startswith("rpc ") or (
                text.endswith(";") and "=" in text and not text.startswith(("syntax", "option")))
            if declares:
                assert lines[i - 1].strip().startswith("//"), f"{source.name}:{i + 1} has no comment: {text}"
