"""`medfuse fuse --backend onnxruntime`: the network's ONNX export in ONNX Runtime, from a user cache.

What is checked: its images are those of the torch backend within one 8-bit level (equal for
nearly every pixel: ONNX Runtime and torch round float32 differently, by ~5e-7); the same
inputs give the same bytes whatever the batch (a folder run equals single runs); the export is
made once per checkpoint and cached (``$MEDFUSE_CACHE``, a temporary folder here, never the real
home), a second run does not export, a corrupt cached file is exported again and never used;
what cannot work is one ``error:`` line before any work.

Every test points ``MEDFUSE_CACHE`` at a temporary folder. Real exports (10–20 s each for LWNet)
happen three times in the module: the two shipped LWNet checkpoints once for every test, and
the corrupt-file test's re-export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")  # the onnx extra, part of the test extra
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from medfuse_cli import onnx_runtime  # noqa: E402
from medfuse_cli.errors import InputError, MedfuseError  # noqa: E402
from medfuse_cli.fusers.registry import CT, FUNCTIONAL  # noqa: E402
from medfuse_cli.pipeline import Fusion, load_pair  # noqa: E402

ORT = ("--backend", "onnxruntime")
FOLDERS = (("SPECT-MRI", "SPECT"), ("PET-MRI", "PET"), ("CT-MRI", "CT"))
LOGGER = logging.getLogger("medfuse_cli")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints come from the bundled folder only: tests never touch the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class _Notices(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A cache holding both LWNet checkpoints' exports, made through ``Fusion`` as ``fuse`` makes
    them: ``folder``, ``files`` (pair kind -> cached file) and the ``notices`` each export gave."""
    folder = tmp_path_factory.mktemp("onnx-cache")
    handler, level = _Notices(), LOGGER.level
    files, notices = {}, {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv(onnx_runtime.CACHE_ENV, str(folder))
        LOGGER.addHandler(handler)
        LOGGER.setLevel(logging.INFO)
        try:
            fusion = Fusion("lwnet", "cpu", backend="onnxruntime")
            for kind in (FUNCTIONAL, CT):
                before = set(folder.iterdir())
                fusion.session_for(kind)
                (files[kind],) = set(folder.iterdir()) - before
                notices[kind], handler.messages = handler.messages, []
        finally:
            LOGGER.removeHandler(handler)
            LOGGER.setLevel(level)
    return {"folder": folder, "files": files, "notices": notices}


@pytest.fixture
def cli(run_cli, monkeypatch: pytest.MonkeyPatch, cache: dict):
    """``run_cli`` with ``MEDFUSE_CACHE`` at the shared cache, and the notice handler the CLI
    installs reset before each call (``main`` adds one per call: in one process, lines repeat)."""
    monkeypatch.setenv(onnx_runtime.CACHE_ENV, str(cache["folder"]))
    handlers = list(LOGGER.handlers)

    def run(*args: object):
        LOGGER.handlers[:] = handlers
        return run_cli(*args)

    yield run
    LOGGER.handlers[:] = handlers


@pytest.fixture
def no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any export fails the test: everything must come from the cache."""

    monkeypatch.setattr(onnx_runtime, "export_with_metadata", _refuse)


def one_line_error(result) -> str:
    assert result.code == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0, result.stderr
    return result.stderr


def notices(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("notice: ")]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int32)


def pair_paths(examples: Path, folder: str, modality: str, name: str) -> tuple[Path, Path]:
    return examples / folder / "MRI" / f"{name}.png", examples / folder / modality / f"{name}.png"


def names(examples: Path, folder: str) -> list[str]:
    return sorted(p.stem for p in (examples / folder / "MRI").glob("*.png"))


# --- the cache --------------------------------------------------------------------------------


def test_each_checkpoint_is_exported_once_with_one_notice_naming_the_cache(cache: dict) -> None:
    folder = cache["folder"]
    for kind, checkpoint in ((FUNCTIONAL, "lwnet.functional"), (CT, "lwnet.ct")):
        (message,) = cache["notices"][kind]
        assert message.startswith(f"exporting lwnet ({checkpoint}) to ONNX for --backend onnxruntime")
        assert str(folder) in message
        path = cache["files"][kind]
        model, key, sha256 = path.stem.split("-")
        assert model == "lwnet" and len(key) == 16
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256  # the name holds the file's sha256
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert props["checkpoint.name"] == checkpoint  # the same file `medfuse export` writes
    assert sorted(folder.iterdir()) == sorted(cache["files"].values())  # no temporary file left


def test_a_second_run_exports_nothing_and_writes_the_same_bytes(cli, examples, tmp_path, no_export) -> None:
    mri, spect = pair_paths(examples, "SPECT-MRI", "SPECT", "10018")
    outputs = [tmp_path / "first.png", tmp_path / "second.png"]
    for output in outputs:
        result = cli("fuse", mri, spect, "-o", output, *ORT)
        assert result.code == 0, result.stderr
        assert notices(result.stderr) == []  # no export, no notice
        assert "on cpu (onnxruntime), 1 thread(s)" in result.stderr  # the summary says the backend
    assert outputs[0].read_bytes() == outputs[1].read_bytes()


def test_a_corrupt_cached_file_is_exported_again_never_used(
    cli, cache, examples, tmp_path, monkeypatch
) -> None:
    mri, spect = pair_paths(examples, "SPECT-MRI", "SPECT", "10018")
    reference = tmp_path / "reference.png"
    assert cli("fuse", mri, spect, "-o", reference, *ORT, "-q").code == 0
    own = tmp_path / "cache"
    own.mkdir()
    good = cache["files"][FUNCTIONAL]
    corrupt = own / good.name
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights: ONNX Runtime would load it
    corrupt.write_bytes(bytes(data))
    monkeypatch.setenv(onnx_runtime.CACHE_ENV, str(own))
    output = tmp_path / "fused.png"
    result = cli("fuse", mri, spect, "-o", output, *ORT)
    assert result.code == 0, result.stderr
    (notice,) = notices(result.stderr)
    assert (
        f"the cached {corrupt} is corrupt" in notice
        and "exporting lwnet (lwnet.functional) to ONNX again" in notice
    )
    assert output.read_bytes() == reference.read_bytes()
    assert [p.name for p in own.iterdir()] == [good.name]  # replaced by a good export of the same bytes
    assert corrupt.read_bytes() == good.read_bytes()


def test_a_cached_file_from_other_weights_is_not_used(cache, tmp_path, monkeypatch) -> None:
    """A file whose bytes match its name but whose metadata names other weights (a file copied
    under the wrong key) is removed and the network exported again."""
    own = tmp_path / "cache"
    own.mkdir()
    ct_file = cache["files"][CT]
    functional_key = cache["files"][FUNCTIONAL].stem.split("-")[1]
    wrong = own / f"lwnet-{functional_key}-{ct_file.stem.split('-')[2]}.onnx"
    shutil.copy(ct_file, wrong)
    monkeypatch.setenv(onnx_runtime.CACHE_ENV, str(own))
    exported = []

    def counting(*args, **kwargs):
        exported.append(args[1].name)
        return onnx.load(str(cache["files"][FUNCTIONAL]))  # what the real export gives, without the wait

    monkeypatch.setattr(onnx_runtime, "export_with_metadata", counting)
    Fusion("lwnet", "cpu", backend="onnxruntime").session_for(FUNCTIONAL)
    assert exported == ["lwnet"]
    assert [p.name for p in own.iterdir()] == [cache["files"][FUNCTIONAL].name]


def test_an_unwritable_cache_serves_the_run_with_a_notice(
    cli, cache, examples, tmp_path, monkeypatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(onnx_runtime.CACHE_ENV, str(blocker / "onnx"))
    monkeypatch.setattr(
        onnx_runtime, "export_with_metadata", lambda *a, **k: onnx.load(str(cache["files"][FUNCTIONAL]))
    )
    mri, spect = pair_paths(examples, "SPECT-MRI", "SPECT", "10018")
    result = cli("fuse", mri, spect, "-o", tmp_path / "fused.png", *ORT)
    assert result.code == 0, result.stderr
    (notice,) = notices(result.stderr)
    assert "for this run only (not cached: cannot write" in notice


def test_weights_files_are_keyed_by_their_sha256(cli, examples, tmp_path, monkeypatch) -> None:
    """``--weights`` with a copy of ``lwnet.ct`` is that checkpoint's cached export (same sha256);
    a file that differs in one byte is another export."""
    from medfuse_cli.weights import BUNDLED_DIR, read_checkpoint, write_checkpoint

    copy = tmp_path / "mine.safetensors"
    shutil.copy(BUNDLED_DIR / "lwnet-ct.safetensors", copy)
    mri, ct = pair_paths(examples, "CT-MRI", "CT", "2004")
    outputs = {}
    for choice in (("--checkpoint", "ct"), ("--weights", str(copy))):
        outputs[choice[0]] = tmp_path / f"{choice[0].strip('-')}.png"
        with monkeypatch.context() as patch:
            patch.setattr(onnx_runtime, "export_with_metadata", _refuse)
            result = cli("fuse", mri, ct, "-o", outputs[choice[0]], *ORT, *choice, "--json")
        assert result.code == 0 and notices(result.stderr) == [], result.stderr
    used = json.loads(result.stdout)["pairs"][0]
    assert used["checkpoint"] == f"--weights {copy}"
    assert used["checkpoint_sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert outputs["--checkpoint"].read_bytes() == outputs["--weights"].read_bytes()

    # other weights in a valid checkpoint (a damaged copy with lwnet.ct's header would be refused)
    loaded = read_checkpoint(copy)
    last = sorted(loaded.tensors)[-1]
    loaded.tensors[last] = loaded.tensors[last] * 1.001
    write_checkpoint(copy, loaded.tensors, loaded.metadata | {"command": "a fine-tune of lwnet.ct"})
    exported = []

    def seen(network, spec, record, *args, **kwargs):
        exported.append(record.name)
        raise InputError("stop here")

    monkeypatch.setattr(onnx_runtime, "export_with_metadata", seen)
    result = cli("fuse", mri, ct, "-o", tmp_path / "other.png", *ORT, "--weights", copy)
    assert result.code == 1 and result.stderr.splitlines()[-1] == "error: stop here"
    (notice,) = notices(result.stderr)
    assert notice.startswith(f"notice: exporting lwnet (--weights {copy}) to ONNX")
    assert exported == [f"--weights {copy}"]


def test_the_cache_key_is_the_digest_of_the_bytes_loaded(cache, tmp_path, monkeypatch) -> None:
    """A ``--weights`` file replaced after the fusion read it: the session is the export of the
    weights read (keyed by their bytes' sha256), not of the file now at that path."""
    from medfuse_cli.fusers import get_fuser_spec
    from medfuse_cli.weights import BUNDLED_DIR

    monkeypatch.setenv(onnx_runtime.CACHE_ENV, str(cache["folder"]))
    monkeypatch.setattr(onnx_runtime, "export_with_metadata", _refuse)  # both are cached
    mine = tmp_path / "mine.safetensors"
    shutil.copy(BUNDLED_DIR / "lwnet-ct.safetensors", mine)
    fusion = Fusion("lwnet", "cpu", weights=mine, backend="onnxruntime")
    shutil.copy(BUNDLED_DIR / "lwnet-functional.safetensors", mine)
    session = fusion.session_for(CT)
    read = get_fuser_spec("lwnet").checkpoint("ct").sha256
    assert session.get_modelmeta().custom_metadata_map["checkpoint.sha256"] == read
    assert fusion.checkpoint_sha256(CT) == read


def _refuse(*_args, **_kwargs):
    raise AssertionError("exported although the cache holds the file")


# --- the images -------------------------------------------------------------------------------


def _resized_pair_folder(examples: Path, root: Path) -> tuple[Path, Path]:
    """One SPECT pair at 203×181 (sides that are not multiples of 4: the networks pad them)."""
    mri_dir, spect_dir = root / "MRI", root / "SPECT"
    mri_dir.mkdir(parents=True)
    spect_dir.mkdir()
    mri, spect = pair_paths(examples, "SPECT-MRI", "SPECT", "10018")
    for source, folder in ((mri, mri_dir), (spect, spect_dir)):
        Image.open(source).resize((203, 181), Image.Resampling.BICUBIC).save(folder / "odd.png")
    return mri_dir, spect_dir


@pytest.mark.parametrize("pairs", [*FOLDERS, ("odd", "SPECT")], ids=["SPECT", "PET", "CT", "SPECT-203x181"])
def test_images_are_within_one_level_of_torch(cli, examples, tmp_path, no_export, pairs) -> None:
    folder, modality = pairs
    if folder == "odd":
        mri_dir, second_dir = _resized_pair_folder(examples, tmp_path / "in")
    else:
        mri_dir, second_dir = examples / folder / "MRI", examples / folder / modality
    for backend in ("torch", "onnxruntime"):
        result = cli("fuse", mri_dir, second_dir, "-o", tmp_path / backend, "--backend", backend, "-q")
        assert result.code == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "torch").iterdir())
    assert written and written == sorted(p.name for p in (tmp_path / "onnxruntime").iterdir())
    for name in written:
        torch_image, ort_image = pixels(tmp_path / "torch" / name), pixels(tmp_path / "onnxruntime" / name)
        assert torch_image.shape == ort_image.shape
        differs = np.abs(torch_image - ort_image)
        assert differs.max() <= 1, name
        assert (differs > 0).mean() < 1e-3, name  # ~5e-7 apart in float: a level moves rarely


def test_a_folder_run_writes_what_single_runs_write(cli, examples, tmp_path, no_export) -> None:
    for folder, modality in (("SPECT-MRI", "SPECT"), ("CT-MRI", "CT")):
        out = tmp_path / folder
        result = cli(
            "fuse", examples / folder / "MRI", examples / folder / modality, "-o", out, *ORT, "--json"
        )
        assert result.code == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["backend"] == "onnxruntime" and summary["device"] == "cpu" and summary["written"] == 2
        for name in names(examples, folder):
            single = tmp_path / f"single-{folder}-{name}.png"
            alone = cli("fuse", *pair_paths(examples, folder, modality, name), "-o", single, *ORT, "--json")
            assert json.loads(alone.stdout)["backend"] == "onnxruntime"
            assert (out / f"{name}.png").read_bytes() == single.read_bytes(), (folder, name)


def test_fuse_y_is_batch_invariant_and_keeps_its_checks(cache, monkeypatch) -> None:
    monkeypatch.setenv(onnx_runtime.CACHE_ENV, str(cache["folder"]))
    from medfuse_cli.bench.plan import EXAMPLE_PAIRS, example_paths

    pairs = [load_pair(p[2], *example_paths(p)) for p in EXAMPLE_PAIRS if p[1] != "CT"]
    anatomical = np.stack([p.anatomical_y for p in pairs])
    functional = np.stack([p.functional_y for p in pairs])
    fusion = Fusion("lwnet", "cpu", backend="onnxruntime")
    batched = fusion.fuse_y(anatomical, functional, FUNCTIONAL)
    alone = np.stack([fusion.fuse_y(a, b, FUNCTIONAL) for a, b in zip(anatomical, functional, strict=True)])
    assert batched.dtype == np.float32 and np.array_equal(batched, alone)
    torch_y = Fusion("lwnet", "cpu").fuse_y(anatomical, functional, FUNCTIONAL)
    assert np.abs(batched - torch_y).max() < 1e-5
    # check_fuser_inputs runs before the session: values outside [0, 1] or not finite
    for bad in (anatomical * 2, np.where(anatomical > 0.5, np.nan, anatomical).astype(np.float32)):
        with pytest.raises(InputError, match=r"needs finite values in \[0, 1\]"):
            fusion.fuse_y(bad, functional, FUNCTIONAL)
    # and the output's check after it
    session = fusion.session_for(FUNCTIONAL)
    monkeypatch.setattr(fusion, "session_for", lambda kind: _Nan(session))
    with pytest.raises(MedfuseError, match="produced NaN or infinite values"):
        fusion.fuse_y(anatomical[0], functional[0], FUNCTIONAL)


class _Nan:
    def __init__(self, session) -> None:
        self.session = session

    def run(self, names, feeds):
        (fused,) = self.session.run(names, feeds)
        fused[..., 0, 0] = np.nan
        return [fused]


def test_volumes_go_through_the_session(cli, examples, tmp_path, no_export) -> None:
    volumes = examples / "volumes"
    result = cli(
        "fuse",
        volumes / "t1.nii.gz",
        volumes / "pet.nii.gz",
        "--kind",
        "pet",
        "-o",
        tmp_path / "f.nii.gz",
        *ORT,
        "--json",
    )
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["backend"] == "onnxruntime" and summary["checkpoint"] == "lwnet.functional"


def test_threads_are_the_sessions_intra_op_threads(cli, examples, tmp_path, monkeypatch, no_export) -> None:
    asked = []
    session = onnx_runtime.ort_session

    def recording(model, threads: int = 1):
        asked.append(threads)
        return session(model, threads)

    monkeypatch.setattr(onnx_runtime, "ort_session", recording)
    mri, spect = pair_paths(examples, "SPECT-MRI", "SPECT", "10018")
    for threads in (None, 2):
        option = () if threads is None else ("--threads", str(threads))
        result = cli("fuse", mri, spect, "-o", tmp_path / f"{threads}.png", *ORT, *option, "--json")
        assert json.loads(result.stdout)["threads"] == (threads or 1)  # LWNet's default: 1, as for torch
    assert asked == [1, 2]


# --- what cannot work: one line, before any work ----------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--device", "cuda"), "--backend onnxruntime runs on the CPU: pass --device cpu, not cuda"),
        (("-m", "average"), "average is a classical rule (the rules run in torch)"),
        (("--backend", "tensorrt"), "--backend takes torch or onnxruntime, got 'tensorrt'"),
    ],
)
def test_what_cannot_run_is_one_line(cli, examples, tmp_path, args, says) -> None:
    mri, spect = pair_paths(examples, "SPECT-MRI", "SPECT", "10018")
    backend = () if "--backend" in args else ORT
    assert says in one_line_error(cli("fuse", mri, spect, "-o", tmp_path / "o.png", *backend, *args))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("package", ["onnxruntime", "onnxscript"])
def test_a_missing_onnx_package_is_one_line_naming_the_extra(
    cli, examples, tmp_path, monkeypatch, package
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # import raises ImportError
    mri, spect = pair_paths(examples, "SPECT-MRI", "SPECT", "10018")
    message = one_line_error(cli("fuse", mri, spect, "-o", tmp_path / "o.png", *ORT))
    assert f"--backend onnxruntime needs {package}" in message and "pip install 'medfuse[onnx]'" in message
    assert list(tmp_path.iterdir()) == []


def test_backend_is_declared_once_for_fuse_and_benchmark() -> None:
    import typer

    from medfuse_cli.cli.app import app

    group = typer.main.get_command(app)
    declared = [
        next(p for p in group.commands[name].params if p.name == "backend") for name in ("fuse", "benchmark")
    ]
    assert declared[0].help == declared[1].help and declared[0].default == declared[1].default == "torch"
