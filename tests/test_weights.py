"""Checkpoints: strict safetensors loading, checksums, and the Hub path against a local server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from medfuse_cli.errors import CheckpointError, MedfuseError
from medfuse_cli.weights import load_state_strict, read_checkpoint, write_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _tiny_checkpoint(path: Path) -> str:
    write_checkpoint(path, {"weight": torch.arange(6.0).reshape(2, 3)}, {"network": "tiny"})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_metadata_and_tensors_round_trip(tmp_path: Path) -> None:
    sha = _tiny_checkpoint(tmp_path / "c.safetensors")
    loaded = read_checkpoint(tmp_path / "c.safetensors", sha)
    assert loaded.metadata == {"network": "tiny"}
    torch.testing.assert_close(loaded.tensors["weight"], torch.arange(6.0).reshape(2, 3))


def test_pickle_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(MedfuseError, match="pickle"):
        read_checkpoint(path)


def test_truncated_and_checksum_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    sha = _tiny_checkpoint(path)
    with pytest.raises(MedfuseError, match="checksum"):
        read_checkpoint(path, "0" * 64)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(MedfuseError, match="not a valid safetensors"):
        read_checkpoint(path)
    with pytest.raises(MedfuseError, match="checksum"):
        read_checkpoint(path, sha)


def test_damaged_tensor_bytes_are_refused(tmp_path: Path) -> None:
    """A flipped bit in the tensor data keeps the file valid safetensors; the header's digest
    still tells: without it a --weights file damaged in transfer would fuse with wrong weights."""
    path = tmp_path / "c.safetensors"
    _tiny_checkpoint(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last float of "weight" (tensor data end the file)
    path.write_bytes(bytes(data))
    with pytest.raises(MedfuseError, match="do not match the tensors_sha256 its header records"):
        read_checkpoint(path)


def test_damaged_weights_stop_a_folder_run_with_one_line(examples: Path, tmp_path: Path, run_cli) -> None:
    """--weights is read once, before any pair: not the same failure repeated for each pair."""
    from medfuse_cli.fusers import get_fuser_spec
    from medfuse_cli.weights import bundled_path

    record = get_fuser_spec("lwnet").checkpoints[0]
    original = read_checkpoint(bundled_path(record))
    path = tmp_path / "copy.safetensors"
    write_checkpoint(path, original.tensors, original.metadata)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01
    path.write_bytes(bytes(data))
    folder = examples / "CT-MRI"
    out = tmp_path / "fused"
    result = run_cli("fuse", folder / "MRI", folder / "CT", "-o", out, "-m", "lwnet", "--weights", path)
    assert result.code == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith(
        "error: "
    )
    assert "tensors_sha256" in result.stderr and not out.exists()


def test_a_file_without_a_digest_is_read(tmp_path: Path) -> None:
    """Checkpoints converted elsewhere carry no digest: read as they are, not refused."""
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.ones(2)}, str(path), metadata={"network": "foreign"})
    loaded = read_checkpoint(path)
    assert loaded.metadata == {"network": "foreign"}
    assert torch.equal(loaded.tensors["weight"], torch.ones(2))


def test_8_bit_float_tensors_are_checked_for_finiteness(tmp_path: Path) -> None:
    """torch has no isfinite for float8: the check must not crash on such a file."""
    path = tmp_path / "f8.safetensors"
    write_checkpoint(path, {"weight": torch.ones(3).to(torch.float8_e4m3fn)}, {})
    assert read_checkpoint(path).tensors["weight"].dtype == torch.float8_e4m3fn
    write_checkpoint(path, {"weight": torch.full((3,), float("nan")).to(torch.float8_e4m3fn)}, {})
    with pytest.raises(MedfuseError, match="weight holds NaN"):
        read_checkpoint(path)


def test_strict_loading_names_missing_and_unexpected(tmp_path: Path) -> None:
    module = torch.nn.Linear(3, 2)
    with pytest.raises(MedfuseError, match=r"missing bias.*unexpected extra"):
        load_state_strict(module, {"weight": torch.zeros(2, 3), "extra": torch.zeros(1)}, "x")
    with pytest.raises(MedfuseError, match=r"weight has shape \(3, 3\)"):
        load_state_strict(module, {"weight": torch.zeros(3, 3), "bias": torch.zeros(2)}, "x")
    load_state_strict(module, {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, "x")
    assert module.weight.sum().item() == 6


class _FakeHub(BaseHTTPRequestHandler):
    """Answers ``/<repo>/resolve/<revision>/<file>`` like the Hub: ETag, commit, length."""

    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []

    def _serve(self, with_body: bool) -> None:
        self.requests.append(f"{self.command} {self.path}")
        body = self.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    _FakeHub.files.clear()
    _FakeHub.requests.clear()


_RESOLVE = """
import json, sys
from medfuse_cli.errors import MedfuseError
from medfuse_cli.fusers.registry import Checkpoint
from medfuse_cli.weights import resolve_checkpoint
spec = Checkpoint(fuser="tiny", tag="t", filename="tiny.safetensors", sha256=sys.argv[1], applies_to=None,
                  meta={}, hub_repo="medfuse/test-weights", hub_revision=sys.argv[2])
try:
    loaded = resolve_checkpoint(spec)
except MedfuseError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"source": loaded.source, "sum": float(loaded.tensors["weight"].sum())}))
"""


def _resolve(tmp_path: Path, endpoint: str, sha: str, revision: str = COMMIT) -> tuple[dict, str]:
    """Resolve a checkpoint in a fresh interpreter, as a user's process would, with HF_ENDPOINT set."""
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp_path / "hf-home"),
        "MEDFUSE_WEIGHTS_DIR": str(tmp_path / "bundled"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run(
        [sys.executable, "-c", _RESOLVE, sha, revision], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_hub_download_is_pinned_and_verified(tmp_path: Path, fake_hub: str) -> None:
    sha = _tiny_checkpoint(tmp_path / "tiny.safetensors")
    _FakeHub.files[f"/medfuse/test-weights/resolve/{COMMIT}/tiny.safetensors"] = (
        tmp_path / "tiny.safetensors"
    ).read_bytes()
    result, _ = _resolve(tmp_path, fake_hub, sha)
    assert result["sum"] == 15.0 and "hf-home" in result["source"]
    assert any(r.startswith("GET ") and COMMIT in r for r in _FakeHub.requests)


def test_hub_file_with_wrong_checksum_is_refused(tmp_path: Path, fake_hub: str) -> None:
    _tiny_checkpoint(tmp_path / "tiny.safetensors")
    _FakeHub.files[f"/medfuse/test-weights/resolve/{COMMIT}/tiny.safetensors"] = (
        tmp_path / "tiny.safetensors"
    ).read_bytes()
    result, _ = _resolve(tmp_path, fake_hub, "f" * 64)
    assert "checksum mismatch" in result["error"]


def test_a_bundled_file_with_the_pinned_checksum_is_used_without_asking_the_hub(
    tmp_path: Path, fake_hub: str
) -> None:
    (tmp_path / "bundled").mkdir()
    sha = _tiny_checkpoint(tmp_path / "bundled" / "tiny.safetensors")
    _FakeHub.files[f"/medfuse/test-weights/resolve/{COMMIT}/tiny.safetensors"] = b"never served"
    result, stderr = _resolve(tmp_path, fake_hub, sha)
    assert result["sum"] == 15.0 and "bundled" in result["source"]
    assert _FakeHub.requests == [] and stderr == ""


def test_a_corrupt_bundled_file_is_never_loaded(tmp_path: Path) -> None:
    (tmp_path / "bundled").mkdir()
    sha = _tiny_checkpoint(tmp_path / "bundled" / "tiny.safetensors")
    with open(tmp_path / "bundled" / "tiny.safetensors", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x7f\x7f\x7f\x7f")
    result, stderr = _resolve(tmp_path, "http://127.0.0.1:9", sha)
    assert (
        "bundled file cannot be used (checksum mismatch" in result["error"]
        and "$MEDFUSE_WEIGHTS_DIR points at" in result["error"]
        and "--weights" in result["error"]
    )
    assert stderr.count("\n") == 1 and "Hub unavailable" in stderr


def test_unreachable_hub_without_bundled_file_is_an_error(tmp_path: Path) -> None:
    result, _ = _resolve(tmp_path, "http://127.0.0.1:9", "0" * 64)
    assert "--weights" in result["error"]


def test_non_finite_tensors_are_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "nan.safetensors"
    write_checkpoint(path, {"ok": torch.zeros(2), "bad": torch.tensor([1.0, float("nan")])}, {})
    with pytest.raises(MedfuseError, match="tensor bad holds NaN or infinite"):
        read_checkpoint(path)


def test_safetensors_whose_header_length_looks_like_pickle_still_loads(tmp_path: Path) -> None:
    """A 640-byte header is stored as 80 02 00 ...: pickle's magic, yet a valid safetensors file."""
    path = tmp_path / "c.safetensors"
    for padding in range(700):
        write_checkpoint(path, {"weight": torch.zeros(2)}, {"pad": "x" * padding})
        if path.read_bytes()[:2] == b"\x80\x02":
            break
    else:
        pytest.fail("no padding produced a header length starting with 80 02")
    assert read_checkpoint(path).metadata["pad"] == "x" * padding


def test_checkpoints_are_written_with_the_umasks_permissions(tmp_path: Path) -> None:
    """Colleagues on a shared cluster read the weights: not safetensors' own 0600."""
    from medfuse_cli.weights import write_checkpoint

    umask = os.umask(0o022)
    try:
        write_checkpoint(tmp_path / "w.safetensors", {"x": torch.zeros(2)}, {"format": "test"})
    finally:
        os.umask(umask)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_folder_or_a_missing_path_given_as_checkpoint_is_said_as_such(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint is a folder, not a file"):
        read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "none.safetensors")
    os.mkfifo(tmp_path / "pipe.safetensors")  # never opened: reading it would wait for a writer
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_checkpoint(tmp_path / "pipe.safetensors")


def test_a_loaded_checkpoint_carries_the_sha256_of_the_bytes_it_was_read_from(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    write_checkpoint(path, {"x": torch.arange(4.0)}, {"format": "test"})
    loaded = read_checkpoint(path)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.metadata == {"format": "test"} and torch.equal(loaded.tensors["x"], torch.arange(4.0))


def test_a_damaged_copy_of_a_shipped_lwnet_file_is_refused_by_its_header(
    run_cli, examples: Path, tmp_path: Path
) -> None:
    """The shipped LWNet files record no tensor digest; their header says which pinned sha256
    a copy must have."""
    from medfuse_cli.weights import BUNDLED_DIR

    data = bytearray((BUNDLED_DIR / "lwnet-functional.safetensors").read_bytes())
    data[-8] ^= 0x01  # one bit of the last tensor
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(bytes(data))
    mri, spect = (examples / "SPECT-MRI" / modality / "10018.png" for modality in ("MRI", "SPECT"))
    result = run_cli("fuse", mri, spect, "-o", tmp_path / "f.png", "-m", "lwnet", "--weights", copy)
    assert result.code == 1 and not (tmp_path / "f.png").exists()
    assert result.stderr.startswith(f"error: {copy} has the header of the shipped lwnet.functional but not")
    whole = tmp_path / "whole.safetensors"
    whole.write_bytes((BUNDLED_DIR / "lwnet-functional.safetensors").read_bytes())
    assert run_cli("fuse", mri, spect, "-o", tmp_path / "f.png", "-m", "lwnet", "--weights", whole).code == 0
