"""The training-run skeleton, the recipes and ``medfuse train``'s shared options.

The skeleton is driven with a toy trainer and a clock the test moves, so the time budget is
tested without waiting for, or depending on, the real clock.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from medfuse_cli.errors import InputError
from medfuse_cli.training.config import LYWNetConfig, SPIConfig, config_from_json
from medfuse_cli.training.events import EpochFinished, EpochStarted, Event, Message, StepDone
from medfuse_cli.training.lywnet_trainer import WEIGHTS_FILE as LYWNET_WEIGHTS
from medfuse_cli.training.recipes import RECIPES
from medfuse_cli.training.run import Run, RunFiles, RunSettings
from medfuse_cli.training.spi import WEIGHTS_FILE as LWNET_WEIGHTS
from medfuse_cli.weights import BUNDLED_DIR, read_checkpoint

TOY_FILES = RunFiles(state="toy-state.safetensors", weights="toy.safetensors", config_key="options")
TOY_CONFIG = replace(RECIPES["lywnet-authors"].config, epochs=4)


class EpochClock:
    """A clock under the test's control: every epoch takes exactly one minute.

    Pass it as ``RunSettings.clock`` and ``listen`` as the listener: the clock moves when an
    epoch starts, so the skeleton measures 60 s per epoch.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.events: list[Event] = []

    def __call__(self) -> float:
        return self.now

    def listen(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, EpochStarted):
            self.now += 60.0


def _toy_run(out: Path, clock: EpochClock, config: LYWNetConfig = TOY_CONFIG, **settings: object) -> Path:
    """Train a one-weight model for TOY_CONFIG.epochs epochs of two steps each; a ``config``
    with ``init`` records that file's sha256, as the LYWNet trainer does."""
    options = {"data": ("toy-data",), "command": "toy", "clock": clock, **settings}
    with Run(RunSettings(out=out, **options), TOY_FILES, config, clock.listen) as run:
        if config.init and not run.resumed:
            run.progress["init_sha256"] = hashlib.sha256(Path(config.init).read_bytes()).hexdigest()
        torch.manual_seed(0)
        model = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run.restore(model, optimizer)

        def train_epoch(epoch: int) -> dict[str, float]:
            for step in (1, 2):
                loss = (model(torch.ones(1, 1)) - 1.0).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                run.emit(StepDone(epoch, step, 2, loss.item(), 1.0))
            return {"loss": loss.item()}

        return run.train(model, optimizer, TOY_CONFIG.epochs, train_epoch, lambda: {"network": "toy"})


def test_budget_stops_between_epochs_once_the_next_would_overrun(tmp_path: Path) -> None:
    clock = EpochClock()
    weights = _toy_run(tmp_path / "run", clock, max_minutes=2.5)
    # epochs 1 and 2 end at 60 s and 120 s; a third would end at 180 s > 150 s
    assert read_checkpoint(weights).metadata["epochs"] == "2"
    assert isinstance(clock.events[-1], Message) and "stopping before epoch 3" in clock.events[-1].text

    again = EpochClock()  # a new session: its own budget
    _toy_run(tmp_path / "run", again, max_minutes=2.5, resume=True)
    assert read_checkpoint(weights).metadata["epochs"] == "4"
    assert again.events[-1] == Message("done: 4 epochs in 4.0 min")


def test_a_budget_too_small_for_any_epoch_is_an_error(tmp_path: Path) -> None:
    clock = EpochClock()
    with pytest.raises(InputError, match="no epoch finished"):
        _toy_run(tmp_path / "run", clock, max_minutes=0.0)
    assert not any(isinstance(event, EpochStarted) for event in clock.events)


@pytest.mark.parametrize("budget", [-1.0, float("nan"), float("inf")])
def test_a_budget_that_is_not_a_number_of_minutes_is_refused_up_front(tmp_path: Path, budget: float) -> None:
    clock = EpochClock()
    with pytest.raises(
        InputError, match=r"--max-minutes must be a finite number of at least 0 \(leave it out for no limit\)"
    ):
        _toy_run(tmp_path / "run", clock, max_minutes=budget)
    assert not clock.events


def test_events_come_in_order(tmp_path: Path) -> None:
    clock = EpochClock()
    _toy_run(tmp_path / "run", clock)
    kinds = [type(event).__name__ for event in clock.events]
    per_epoch = ["EpochStarted", "StepDone", "StepDone", "EpochFinished"]
    assert kinds == per_epoch * 4 + ["Message"]
    finished = [event for event in clock.events if isinstance(event, EpochFinished)]
    assert [(e.epoch, e.epochs, e.seconds) for e in finished] == [(n, 4, 60.0) for n in (1, 2, 3, 4)]
    assert set(finished[0].metrics) == {"loss"}


def test_checkpoints_carry_the_provenance(tmp_path: Path) -> None:
    _toy_run(tmp_path / "run", EpochClock(), max_minutes=1.0)
    _toy_run(tmp_path / "run", EpochClock(), resume=True, command="toy --resume", threads=1)
    meta = read_checkpoint(tmp_path / "run" / TOY_FILES.weights).metadata
    assert meta["network"] == "toy" and meta["command"] == "toy" and json.loads(meta["data"]) == ["toy-data"]
    assert meta["epochs"] == "4" and meta["wall_time_minutes"] == "4.0" and meta["device"] == "cpu"
    assert meta["git_commit"] and meta["threads"] == "1" and meta["recipe"] == ""
    assert config_from_json(type(TOY_CONFIG), json.loads(meta["options"]), "test") == TOY_CONFIG
    (session,) = json.loads(meta["resumed"])
    assert session["command"] == "toy --resume" and session["after_epoch"] == 1 and session["git_commit"]


def test_a_run_folder_is_never_reused_and_resume_needs_a_state(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing to resume"):
        _toy_run(tmp_path / "none", EpochClock(), resume=True)
    _toy_run(tmp_path / "run", EpochClock(), max_minutes=1.0)
    with pytest.raises(InputError, match=r"already holds a run.*pass --resume"):
        _toy_run(tmp_path / "run", EpochClock())
    with pytest.raises(InputError, match="trains on toy-data"):
        _toy_run(tmp_path / "run", EpochClock(), resume=True, data=("other",))
    with pytest.raises(InputError, match="recipe"):
        _toy_run(tmp_path / "run", EpochClock(), resume=True, recipe="lywnet-cpu")


def test_resume_refuses_options_that_contradict_the_run(tmp_path: Path) -> None:
    _toy_run(tmp_path / "run", EpochClock(), max_minutes=1.0)
    settings = RunSettings(out=tmp_path / "run", resume=True, clock=EpochClock())
    with pytest.raises(InputError, match=r"--lr 0\.5 \(the run's: 0\.0001\)"):
        Run(settings, TOY_FILES, replace(TOY_CONFIG, learning_rate=0.5))
    with Run(settings, TOY_FILES, replace(TOY_CONFIG, epochs=9)) as run:  # LYWNet's epochs may change
        assert run.progress["epochs_done"] == 1


def test_resume_names_conflicts_as_they_are_typed(tmp_path: Path) -> None:
    _toy_run(tmp_path / "run", EpochClock(), max_minutes=1.0)
    settings = RunSettings(out=tmp_path / "run", resume=True, clock=EpochClock())
    with pytest.raises(InputError, match=r"--monitor a, b \(the run's: none\)"):
        Run(settings, TOY_FILES, replace(TOY_CONFIG, monitor=("a", "b")))
    with pytest.raises(InputError, match=r"--lr 1e-6 \(the run's: 0\.0001\)"):
        Run(settings, TOY_FILES, replace(TOY_CONFIG, learning_rate=1e-6))


def test_resume_compares_init_by_its_file_not_its_path_text(tmp_path: Path, monkeypatch) -> None:
    start, other = tmp_path / "start.safetensors", tmp_path / "other.safetensors"
    start.write_bytes(b"the weights the run started from")
    other.write_bytes(b"other weights")
    config = replace(TOY_CONFIG, init=str(start))
    _toy_run(tmp_path / "run", EpochClock(), config, max_minutes=1.0)
    settings = RunSettings(out=tmp_path / "run", resume=True, clock=EpochClock())
    monkeypatch.chdir(tmp_path)
    with Run(settings, TOY_FILES, replace(config, init="./start.safetensors")) as run:
        assert run.progress["epochs_done"] == 1
    for given in (str(other), "missing.safetensors"):
        with pytest.raises(InputError, match=rf"--init {given} \(the run's: {start}\)"):
            Run(settings, TOY_FILES, replace(config, init=given))


# --- recipes ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lwnet-functional", "lwnet-ct"])
def test_lwnet_recipes_are_the_shipped_checkpoints_recipes(name: str) -> None:
    recipe = RECIPES[name]
    path = BUNDLED_DIR / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert config_from_json(SPIConfig, json.loads(metadata["config"]), str(path)) == recipe.config
    assert metadata["recipe"] == name and metadata["threads"] == "1" and recipe.threads == 1
    assert recipe.reproduces == "lwnet." + name.removeprefix("lwnet-")


def test_recipe_values_apply_and_explicit_options_win(examples: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "run"
    tiny = ["--iterations", "1", "--patch-size", "64", "--stride", "96", "--val-fraction", "0"]
    result = run_cli(
        "train",
        examples / "CT-MRI",
        "--recipe",
        "lwnet-ct",
        "-o",
        out,
        "-q",
        *tiny,
        "--label-fuser",
        "average",
    )
    assert result.code == 0, result.stderr
    meta = read_checkpoint(out / LWNET_WEIGHTS).metadata
    config = json.loads(meta["config"])
    assert meta["recipe"] == "lwnet-ct" and meta["threads"] == "1"  # the recipe's threads
    assert config["epochs"] == 3 and config["detail_weight"] == 0.1 and config["displace"] == 1.1  # recipe
    assert config["iterations"] == 1 and config["patch_size"] == 64  # given
    assert config["label_fusers"] == ["average"] and config["label_dirs"] == {}  # candidates replaced
    assert meta["epochs"] == "3"


def test_recipe_label_folders_that_do_not_exist_name_the_option(
    examples: Path, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # ../shared/labels is not beside this folder
    result = run_cli("train", examples / "CT-MRI", "--model", "lwnet", "-o", tmp_path / "run", "-q")
    assert result.code == 1
    assert result.stderr.startswith("error: --label-dir IFCNN-MAX=../shared/labels/IFCNN-MAX:")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--recipe", "nope"], "error: unknown recipe 'nope' (choose from lwnet-functional, lwnet-ct,"),
        (["--model", "lywnet", "--recipe", "lwnet-ct"], "error: recipe lwnet-ct trains lwnet, not lywnet"),
        (["--model", "lwnet", "--monitor", "x"], "error: --monitor applies to --model lywnet only"),
        (["--model", "lywnet", "--lr-schedule", "steps"], "error: unknown --lr-schedule 'steps'"),
        (["--model", "nonet"], "error: cannot train 'nonet' (trainable: lwnet, lywnet)"),
        ([], "error: say what to train"),
    ],
)
def test_bad_training_options_are_one_error_line(
    examples: Path, tmp_path: Path, run_cli, args: list[str], message: str
) -> None:
    result = run_cli("train", examples / "CT-MRI", "-o", tmp_path / "run", *args)
    assert result.code == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "run").exists()


# --- the shared options: --device, --threads; resume from the command line ---------------


def test_train_on_cpu_then_resume_with_nothing_but_resume(examples: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "run"
    options = ["--model", "lywnet", "--epochs", "1", "--device", "cpu", "--threads", "1"]
    first = run_cli("train", examples / "CT-MRI", "-o", out, *options)
    assert first.code == 0, first.stderr
    assert first.stdout == f"weights: {out / LYWNET_WEIGHTS}\n"
    lines = first.stderr.splitlines()
    assert lines[0] == "4 training images" and lines[1].startswith("epoch 1/1: loss ")
    assert lines[-1].startswith("done: 1 epochs in ")
    meta = read_checkpoint(out / LYWNET_WEIGHTS).metadata
    assert meta["device"] == "cpu" and meta["recipe"] == "lywnet-authors" and meta["threads"] == "1"

    contradicting = run_cli("train", "-o", out, "--resume", "--lr", "0.5")
    assert contradicting.code == 1 and contradicting.stderr.count("\n") == 1
    assert "--lr 0.5 (the run's: 0.0001)" in contradicting.stderr

    resumed = run_cli("train", "-o", out, "--resume", "--epochs", "2", "-q")  # the run's own threads
    assert resumed.code == 0, resumed.stderr
    assert resumed.stdout == resumed.stderr == ""
    meta = read_checkpoint(out / LYWNET_WEIGHTS).metadata
    assert (
        meta["epochs"] == "2"
        and meta["threads"] == "1"
        and json.loads(meta["data"]) == [str(examples / "CT-MRI")]
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_train_on_absent_cuda_is_one_error_line(examples: Path, tmp_path: Path, run_cli) -> None:
    result = run_cli(
        "train", examples / "CT-MRI", "--model", "lywnet", "-o", tmp_path / "run", "--device", "cuda"
    )
    assert result.code == 1
    assert result.stderr.startswith("error: CUDA was requested") and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()
