"""``medfuse train`` in two processes (torchrun, gloo over the loopback interface) trains what one does.

Two launches of ``python -m torch.distributed.run --nproc_per_node=2``:

- one runs this file as a harness (``__main__`` below): in both processes it runs several
  ``medfuse train`` commands one after the other through the console script's entry point, with
  each process's stdout and stderr in files, a record of every file it creates, renames, removes
  or opens for writing under the run folder (an audit hook), and a digest of its SPI label set
  after every label update;
- one runs ``-m medfuse_cli train`` itself, with a command that fails: one ``error:`` line in
  all, a non-zero status, no hang.

Each two-process run is compared with the same command run in this process. LWNet (SPI) trains
as it ships (float32, its Adam): a split batch changes its weights by ~3e-8. LYWNet's runs are
changed in both places alike, so that the comparison can be tight:

- float64 (images and network): LYWNet's stack of ~40 normalisations is ill-conditioned at its
  random start. With batch statistics, float32 gradients move by ~1% with the order of a sum
  (one process's batch or two processes' shares: a float64 check agrees to 2e-13), and a
  couple of steps amplify that;
- Adam's ``eps`` raised to 1e5 with ``--lr 1``: its update is then lr × (bias-corrected
  momentum) / eps, linear in the gradient. With the default eps (1e-8) the first steps move
  every weight by about ±lr whatever its gradient's size: a gradient that is 0 up to rounding (a
  bias before a normalisation) moves ±lr at random, and an error in the gradient's scale (a
  wrong loss weight) would not show at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from medfuse_cli.errors import InputError
from medfuse_cli.training import distributed
from medfuse_cli.weights import read_checkpoint

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch has no torch.distributed"
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LAUNCH_TIMEOUT = 240  # seconds; a hang fails the test instead of the suite
LINEAR_ADAM_EPS = 1e5  # max |gradient| of the tiny LYWNet runs is in the hundreds
LYWNET_CHANGES = {"adam_eps": LINEAR_ADAM_EPS, "float64": True}  # see the module docstring

SPI_OPTIONS = [
    "--model", "lwnet", "--label-fuser", "average", "--label-fuser", "maximum", "--iterations", "2",
    "--epochs", "1", "--patch-size", "32", "--stride", "112", "--val-fraction", "0.25", "--displace", "1.0",
    "--admit", "0.9", "--batch-size", "4", "--threads", "1",
]  # fmt: skip
LYWNET_OPTIONS = ["--model", "lywnet", "--batch-size", "3", "--lr", "1", "--threads", "1"]


# --- the harness: what each of the two processes runs ----------------------------------------

_current: dict = {}  # the record of the command running in this process


def _audit(event: str, args: tuple) -> None:
    """Record a file-system change under the running command's run folder."""
    watch = _current.get("watch")
    if not watch:
        return
    if event == "open":
        path, _, flags = args
        if not isinstance(flags, int) or not flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND):
            return
        paths = [path]
    elif event in ("os.mkdir", "os.rmdir", "os.remove", "os.unlink"):
        paths = [args[0]]
    elif event in ("os.rename", "os.replace", "os.link"):
        paths = [args[0], args[1]]
    else:
        return
    for path in paths:
        if isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith(watch):
            _current["writes"].append(f"{event} {os.fsdecode(path)}")


def label_digest(labels: object) -> str:
    """A digest of an SPI label set: sources, scores and pseudo labels."""
    digest = hashlib.sha256()
    digest.update(labels.source.numpy().tobytes())
    digest.update(labels.score.numpy().tobytes())
    for row in sorted(labels.pseudo):
        digest.update(str(row).encode())
        digest.update(labels.pseudo[row].numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def patched_training(
    digests: list[str], adam_eps: float | None = None, float64: bool = False
) -> Iterator[None]:
    """Each SPI label update's label digest appended to ``digests``; Adam with ``eps = adam_eps``
    (None: its own); with ``float64``, LYWNet's network and training images in float64."""
    from medfuse_cli.training import lywnet_trainer, spi

    adam_init, update = torch.optim.Adam.__init__, spi._SPI._update_labels
    dtype, images = torch.get_default_dtype(), lywnet_trainer.training_images

    def init(self: torch.optim.Adam, *args: object, **kwargs: object) -> None:
        adam_init(self, *args, **kwargs)
        for group in self.param_groups:
            group["eps"] = adam_eps if adam_eps is not None else group["eps"]

    def update_labels(self: spi._SPI) -> dict[str, int]:
        counts = update(self)
        digests.append(label_digest(self.labels))
        return counts

    def images_in_float64(folders: list[Path]) -> list[torch.Tensor]:
        return [image.double() for image in images(folders)]

    torch.optim.Adam.__init__, spi._SPI._update_labels = init, update_labels
    if float64:
        torch.set_default_dtype(torch.float64)
        lywnet_trainer.training_images = images_in_float64
    try:
        yield
    finally:
        torch.optim.Adam.__init__, spi._SPI._update_labels = adam_init, update
        torch.set_default_dtype(dtype)
        lywnet_trainer.training_images = images


@contextlib.contextmanager
def _output_to(stdout: Path, stderr: Path) -> Iterator[None]:
    """Send this process's file descriptors 1 and 2 to files."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with stdout.open("wb") as out, stderr.open("wb") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)


@contextlib.contextmanager
def _fail_on_rank(rank: int) -> Iterator[None]:
    """LYWNet's image loading fails on process ``rank`` alone (a file only that process cannot read)."""
    from medfuse_cli.errors import InputError
    from medfuse_cli.training import lywnet_trainer

    def images(folders: list[Path]) -> list[torch.Tensor]:
        if int(os.environ["RANK"]) == rank:
            raise InputError(f"cannot read the training images on process {rank}")
        return real(folders)

    real, lywnet_trainer.training_images = lywnet_trainer.training_images, images
    try:
        yield
    finally:
        lywnet_trainer.training_images = real


def _harness(commands_file: Path, reports: Path) -> None:
    """Run every command of ``commands_file`` as ``medfuse ARGV`` in this process; write a report."""
    from medfuse_cli.cli.entry import main

    rank = int(os.environ["RANK"])
    sys.addaudithook(_audit)
    results = []
    for number, command in enumerate(json.loads(commands_file.read_text())):
        record = {"writes": [], "labels": [], "code": None}
        out, err = (reports / f"{number}-rank{rank}.{kind}" for kind in ("out", "err"))
        failing = (
            _fail_on_rank(command["fail_on_rank"]) if "fail_on_rank" in command else contextlib.nullcontext()
        )
        changes = {key: command[key] for key in ("adam_eps", "float64") if key in command}
        with _output_to(out, err), patched_training(record["labels"], **changes), failing:
            _current.update(record, watch=command["watch"])
            sys.argv = ["medfuse", *command["argv"]]
            try:
                main()
                record["code"] = 0
            except SystemExit as exc:
                record["code"] = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            finally:
                _current.clear()
        results.append(record)
    (reports / f"rank{rank}.json").write_text(json.dumps(results))


# --- launching -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run`` with two processes on this machine's loopback interface."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "GLOO_SOCKET_IFNAME": "lo",  # gloo's connections between the processes stay on loopback
        "OMP_NUM_THREADS": "1",  # what torchrun would set, said here so it need not warn
    }
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    address = ["--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    return subprocess.run(
        [*launcher, *address, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _tiny_lywnet_data(root: Path) -> Path:
    """Two 20x20 MRI/CT pairs of smooth random images: 4 images, batches of 3 and 1 at batch size 3."""
    rng = np.random.default_rng(0)
    for modality in ("MRI", "CT"):
        (root / modality).mkdir(parents=True)
        for index in range(2):
            coarse = rng.uniform(0, 255, size=(5, 5)).astype(np.uint8)
            Image.fromarray(coarse).resize((20, 20), Image.Resampling.BILINEAR).save(
                root / modality / f"{index}.png"
            )
    return root


class TwoProcesses:
    """The harness launch: its commands' run folders, and what each process reported."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = _tiny_lywnet_data(root / "data")
        self.runs = root / "two"
        self.reports = root / "reports"
        self.reports.mkdir()
        spi_data = [str(EXAMPLES / "SPECT-MRI"), str(EXAMPLES / "PET-MRI")]
        lywnet = [str(self.data), *LYWNET_OPTIONS]
        self.commands = {
            "spi": {"argv": ["train", *spi_data, *SPI_OPTIONS, "-o", str(self.runs / "spi")]},
            "batch": {
                "argv": [
                    "train",
                    *lywnet,
                    "--train-norm",
                    "batch",
                    "--epochs",
                    "1",
                    "-o",
                    str(self.runs / "batch"),
                ],
                **LYWNET_CHANGES,
            },
            "resume": {
                "argv": ["train", "-o", str(self.runs / "batch"), "--resume", "--epochs", "2", "-q"],
                **LYWNET_CHANGES,
            },
            "image": {
                "argv": [
                    "train",
                    *lywnet,
                    "--train-norm",
                    "image",
                    "--epochs",
                    "1",
                    "-q",
                    "-o",
                    str(self.runs / "image"),
                ],
                **LYWNET_CHANGES,
            },
            "contradicting": {"argv": ["train", "-o", str(self.runs / "batch"), "--resume", "--lr", "0.5"]},
            "one fails": {
                "argv": ["train", *lywnet, "--epochs", "1", "-o", str(self.runs / "failed")],
                "fail_on_rank": 1,
            },
        }
        for command in self.commands.values():
            command["watch"] = command["argv"][command["argv"].index("-o") + 1]
        commands_file = root / "commands.json"
        commands_file.write_text(json.dumps(list(self.commands.values())))
        self.launch = _torchrun(__file__, str(commands_file), str(self.reports))
        self.results = {
            rank: dict(
                zip(self.commands, json.loads((self.reports / f"rank{rank}.json").read_text()), strict=True)
            )
            for rank in (0, 1)
            if (self.reports / f"rank{rank}.json").is_file()
        }

    def output(self, name: str, rank: int) -> tuple[str, str]:
        """What process ``rank`` printed on stdout and stderr while running command ``name``."""
        number = list(self.commands).index(name)
        out, err = (self.reports / f"{number}-rank{rank}.{kind}" for kind in ("out", "err"))
        return out.read_text(), err.read_text()


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> TwoProcesses:
    launched = TwoProcesses(tmp_path_factory.mktemp("distributed"))
    assert launched.launch.returncode == 0 and set(launched.results) == {0, 1}, (
        launched.launch.stdout[-3000:] + launched.launch.stderr[-3000:]
    )
    return launched


def _one_process(run_cli, tmp_path: Path, command: dict, out: Path) -> list[str]:
    """Run ``command`` in this process (writing to ``out``); returns its label digests."""
    argv = list(command["argv"])
    argv[argv.index("-o") + 1] = str(out)
    digests: list[str] = []
    changes = {key: command[key] for key in ("adam_eps", "float64") if key in command}
    with patched_training(digests, **changes):
        result = run_cli(*argv)
    assert result.code == 0, result.stderr
    return digests


def _assert_same_weights(two: Path, one: Path, atol: float, rtol: float) -> None:
    a, b = read_checkpoint(two), read_checkpoint(one)
    assert a.tensors.keys() == b.tensors.keys()
    for name, tensor in a.tensors.items():
        torch.testing.assert_close(
            tensor, b.tensors[name], atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}"
        )


# --- the tests -----------------------------------------------------------------------------


def test_spi_in_two_processes_equals_one(two: TwoProcesses, run_cli, tmp_path: Path) -> None:
    rank0, rank1 = two.results[0]["spi"], two.results[1]["spi"]
    assert rank0["code"] == rank1["code"] == 0
    # every process offered the same outputs in the same order: the same labels after each update
    assert len(rank0["labels"]) == 1 and rank0["labels"] == rank1["labels"]

    digests = _one_process(run_cli, tmp_path, two.commands["spi"], tmp_path / "one")
    # Float rounding of the split batches, grown by Adam (it divides by small second moments):
    # ~3e-8 on the machine that wrote this test, up to 4e-4 on a later AMD EPYC (AVX2) one, with
    # weights of ~0.1-1; the bound is for that noise, while the labels above must be identical.
    _assert_same_weights(
        two.runs / "spi" / "lwnet.safetensors", tmp_path / "one" / "lwnet.safetensors", 2e-3, 0
    )
    labels_two = load_file(two.runs / "spi" / "spi-labels.safetensors")  # scores hold -inf
    labels_one = load_file(tmp_path / "one" / "spi-labels.safetensors")
    assert torch.equal(labels_two["source"], labels_one["source"]) and len(digests) == 1
    torch.testing.assert_close(labels_two["pseudo"], labels_one["pseudo"], atol=1e-5, rtol=0)

    meta = read_checkpoint(two.runs / "spi" / "lwnet.safetensors").metadata
    log = json.loads(meta["spi_log"])
    log_one = json.loads(read_checkpoint(tmp_path / "one" / "lwnet.safetensors").metadata["spi_log"])
    assert [entry["labelled"] for entry in log] == [entry["labelled"] for entry in log_one]
    assert (log[0]["added"], log[0]["replaced"]) == (log_one[0]["added"], log_one[0]["replaced"]) == (3, 0)
    assert meta["processes"] == "2" and meta["epochs"] == "2"
    # 6 labelled patches, then 9: the last batch of 4 holds 1 and process 1's share is empty
    assert [entry["labelled"] for entry in log] == [9, 9] and log[0]["labelled"] - log[0]["added"] == 6


def test_lywnet_resumed_in_two_processes_equals_one_process_in_one_go(
    two: TwoProcesses, run_cli, tmp_path: Path
) -> None:
    """BatchNorm's batch statistics are the global batch's (``GlobalBatchNorm``), and a resume
    under torchrun continues the run: 1 epoch, then --resume for a second, equals 2 epochs."""
    for name in ("batch", "resume"):
        assert two.results[0][name]["code"] == two.results[1][name]["code"] == 0
    command = dict(two.commands["batch"])
    command["argv"] = [*command["argv"][: command["argv"].index("--epochs")], "--epochs", "2", "-o", "x"]
    _one_process(run_cli, tmp_path, command, tmp_path / "one")
    # float64 and Adam made linear (module docstring): the weights, ~0.05-1, moved by ~1e-3 per step,
    # differ by ~1e-13
    _assert_same_weights(
        two.runs / "batch" / "lywnet.safetensors", tmp_path / "one" / "lywnet.safetensors", 1e-9, 0
    )
    meta = read_checkpoint(two.runs / "batch" / "lywnet.safetensors").metadata
    assert meta["epochs"] == "2" and meta["processes"] == "2"
    assert json.loads(meta["resumed"])[0]["after_epoch"] == 1


def test_lywnet_with_image_statistics_in_two_processes_equals_one(
    two: TwoProcesses, run_cli, tmp_path: Path
) -> None:
    assert two.results[0]["image"]["code"] == two.results[1]["image"]["code"] == 0
    _one_process(run_cli, tmp_path, two.commands["image"], tmp_path / "one")
    _assert_same_weights(
        two.runs / "image" / "lywnet.safetensors", tmp_path / "one" / "lywnet.safetensors", 1e-9, 0
    )


def test_only_rank_0_writes_and_prints(two: TwoProcesses) -> None:
    for name in ("spi", "batch", "resume", "image"):
        assert two.results[1][name]["writes"] == [], name
        assert two.output(name, 1) == ("", ""), name
        assert two.results[0][name]["writes"], name  # the record works: rank 0 wrote the run
    out, err = two.output("spi", 0)
    assert out == f"weights: {two.runs / 'spi' / 'lwnet.safetensors'}\n"
    lines = err.splitlines()
    assert lines[0].startswith("4 pairs (3 train, 1 validation), 12 patches")
    assert [line.split(":")[0] for line in lines if line.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]
    assert sum(line.startswith("SPI iteration") for line in lines) == 2
    assert lines[-1].startswith("done: 2 epochs in ")
    assert sorted(path.name for path in (two.runs / "spi").iterdir()) == [
        "lwnet.safetensors",
        "spi-labels.safetensors",
        "train-state.safetensors",
    ]


def test_an_error_is_one_line_on_rank_0_and_every_process_fails(two: TwoProcesses) -> None:
    # the options checks of a resume fail alike on every process
    assert two.results[0]["contradicting"]["code"] == two.results[1]["contradicting"]["code"] == 1
    out, err = two.output("contradicting", 0)
    assert out == "" and err.count("\n") == 1
    assert err.startswith("error: resuming ") and "--lr 0.5 (the run's: 1.0)" in err
    assert two.output("contradicting", 1) == ("", "")
    assert two.results[0]["contradicting"]["writes"] == two.results[1]["contradicting"]["writes"] == []

    # a failure on process 1 alone, while setting up: process 0 does not wait for it but fails too
    assert two.results[0]["one fails"]["code"] == two.results[1]["one fails"]["code"] == 1
    out, err = two.output("one fails", 0)
    assert out == "" and err.endswith("\nerror: process 1: cannot read the training images on process 1\n")
    assert err.count("error:") == 1
    assert two.output("one fails", 1) == ("", "")
    assert not (two.runs / "failed").exists()  # rank 0 made the folder, and removed it empty


def test_torchrun_medfuse_cli_with_a_bad_command_fails_in_one_line(tmp_path: Path) -> None:
    result = _torchrun("-m", "medfuse_cli", "train", "-o", str(tmp_path / "none"), "--resume")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: nothing to resume: {tmp_path / 'none'} holds no training state "
                      "(train-state.safetensors or lywnet-state.safetensors)"]  # fmt: skip
    assert result.stdout == ""


# --- without launching: one process, and the environment torchrun sets -----------------------


def test_without_torchrun_a_session_is_a_world_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    world = distributed.start(torch.device("cpu"))
    assert world == distributed.SINGLE and not world.distributed and world.is_main
    batch = torch.arange(5)
    assert world.share(batch) is batch and world.counts(5) == [5] and world.loss_weight(5, 5) == 1.0
    assert world.all_gather(batch, [5]) is batch and world.sum(batch) is batch and world.broadcast(3) == 3
    assert world.wrap(module := torch.nn.Linear(1, 1), torch.device("cpu")) is module
    with pytest.raises(InputError, match="raised as it is"):  # no exchange: the error itself
        world.agree(lambda: (_ for _ in ()).throw(InputError("raised as it is")))
    assert world.agree(lambda: 7, main_only=True) == 7
    world.close()


def test_shares_of_a_global_batch() -> None:
    worlds = [distributed.World(rank=rank, size=3) for rank in range(3)]
    batch = torch.arange(10, 17)  # 7 samples: shares of 3, 2, 2
    shares = [world.share(batch) for world in worlds]
    assert [share.tolist() for share in shares] == [[10, 13, 16], [11, 14], [12, 15]]
    assert worlds[0].counts(7) == [3, 2, 2] and worlds[0].counts(2) == [1, 1, 0]
    # DDP averages over the 3 processes: the weighted share means average to the batch mean
    losses = [
        share.double().mean() * world.loss_weight(len(share), 7)
        for share, world in zip(shares, worlds, strict=True)
    ]
    assert sum(losses) / 3 == pytest.approx(batch.double().mean())


def test_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.environment_size() == 2 and distributed.environment_rank() == 1
    assert distributed.process_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="each process uses cuda:LOCAL_RANK: pass --device cuda"):
        distributed.process_device("cuda:0")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(InputError, match="RANK='one'"):
        distributed.environment_rank()


if __name__ == "__main__":  # a process of the harness launch (see the module docstring)
    _harness(Path(sys.argv[1]), Path(sys.argv[2]))
