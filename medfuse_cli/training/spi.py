"""Train LWNet with SPI, structural-similarity pseudo-label iteration (our reading of the paper).

1. Patches of the training pairs are split, reproducibly, into a labelled and an unlabelled half.
2. Every patch is scored against each candidate label (crops of whole-image fusions by named
   fusers and by other tools' folders) with s(F) = SSIM(F, MRI) + SSIM(F, functional), plus
   ``detail_weight`` × a detail score (ours: by s alone the averaging rule wins most patches
   and its weak edges are what the network learns); a labelled patch starts with its best
   candidate.
3. Each iteration trains ``epochs`` epochs on every patch that has a label (L1 + 1 − SSIM toward
   the label, plus ``gradient_weight`` × an edge term, see ``losses.fusion_loss``), then runs
   the network on every patch: an unlabelled patch whose output scores ≥ ``admit`` × its best
   candidate's score gets the output as its pseudo label; a label is displaced by the output
   when the output scores ≥ ``displace`` × the label's score.
4. Each iteration's log (labels added and replaced, mean label score, validation metrics on
   held-out training pairs) is printed and kept in the checkpoints' metadata.

State is saved after every epoch and after every label update, so ``resume`` continues exactly:
per-epoch shuffles come from (seed, epoch), and a pending label update is recomputed from the
saved weights, which gives the same labels.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors import safe_open
from torch import Tensor

from medfuse_cli.errors import MedfuseError
from medfuse_cli.fusers.lwnet import CHECKPOINT_FORMAT, LWNet
from medfuse_cli.fusers.registry import get_fuser_spec
from medfuse_cli.metrics.gradient import qabf
from medfuse_cli.metrics.structural import ssim as ssim_metric
from medfuse_cli.metrics.visual import vif
from medfuse_cli.training.losses import fusion_loss, label_score
from medfuse_cli.training.patches import PairSet, Patches, load_pairs, make_patches, read_label_folder
from medfuse_cli.training.provenance import git_commit
from medfuse_cli.training.resume import load_training_state, save_training_state
from medfuse_cli.weights import resolve_checkpoint, write_checkpoint

STATE_FILE = "train-state.safetensors"
LABELS_FILE = "spi-labels.safetensors"
WEIGHTS_FILE = "lwnet.safetensors"
NETWORK_LABEL = -2  # label source of a pseudo label (a network output); -1 means no label
_SCORE_BATCH = 64
_RUNTIME_FIELDS = ("out", "resume", "quiet", "max_minutes")


@dataclass
class SPIConfig:
    """Everything that defines an SPI run; stored in the checkpoints so a resume reuses it."""

    data: list[str]
    out: str
    label_fusers: list[str] = field(default_factory=list)
    label_dirs: dict[str, str] = field(default_factory=dict)
    iterations: int = 10
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 1e-3
    patch_size: int = 120
    stride: int = 68
    labelled_fraction: float = 0.5
    val_fraction: float = 0.1
    displace: float = 1.10
    admit: float = 1.00
    # Defaults: the shipped checkpoints' recipe (weights/MODEL_CARD.md). 1.0 / 0 / 0.25 trained
    # the current network to copy the MRI.
    gradient_weight: float = 0.5  # edge loss; 0 gives the plain L1 + (1 - SSIM) recipe
    intensity_weight: float = 2.0  # loss toward max(MRI, functional); 0 leaves it out
    detail_weight: float = 0.1  # detail term of the label score; 0 gives the paper's SSIM sum
    min_mean: float = 0.02
    seed: int = 0
    command: str = ""
    max_minutes: float | None = None
    resume: bool = False
    quiet: bool = False


@dataclass
class LabelSet:
    """Per patch: its label image (a crop or a stored network output), source and score."""

    source: Tensor  # (P,) int64: candidate index, NETWORK_LABEL, or -1 for none
    score: Tensor  # (P,) float32: label score of the current label (-inf when none)
    best_candidate: Tensor  # (P,) float32: the best candidate's score, the bar for admission
    pseudo: dict[int, Tensor]  # patch row -> (1, S, S) network output used as its label
    version: int = 0  # number of SPI updates applied


def train_lwnet(config: SPIConfig) -> Path:
    """Run (or resume) SPI training; returns the path of the weights file in ``config.out``."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True, quiet=config.quiet)
    state_path = out / STATE_FILE
    progress: dict = {"epochs_done": 0, "seconds": 0.0, "log": [], "losses": [], "initial_wins": {}}
    if config.resume:
        if not state_path.is_file():
            raise MedfuseError(f"nothing to resume: {state_path} does not exist")
        saved = load_training_state(state_path)
        progress = saved.progress
        stored = SPIConfig(**progress["config"])
        config = SPIConfig(**{**asdict(stored), **{k: getattr(config, k) for k in _RUNTIME_FIELDS}})
        console.print(f"resuming {out} after epoch {progress['epochs_done']}")
    elif state_path.exists():
        raise MedfuseError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    _check(config)
    progress["config"] = asdict(config)

    torch.manual_seed(config.seed)
    pairs = load_pairs([Path(d) for d in config.data])
    train_images, val_images = _split_images(len(pairs.names), config.val_fraction, config.seed)
    patches = make_patches(pairs, train_images, config.patch_size, config.stride, config.min_mean)
    candidates, candidate_names = _candidates(pairs, config)
    console.print(
        f"{len(pairs.names)} pairs ({len(train_images)} train, {len(val_images)} validation), "
        f"{len(patches)} patches of {config.patch_size}², candidates: {', '.join(candidate_names)}"
    )
    labels = _initial_labels(pairs, patches, candidates, config, console)
    progress["initial_wins"] = {
        name: int((labels.source == k).sum()) for k, name in enumerate(candidate_names)
    }

    model = LWNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    if config.resume:
        model.load_state_dict(saved.model)
        optimizer.load_state_dict(saved.optimizer)
        labels = _load_labels(out / LABELS_FILE, labels, progress)

    run = _Run(config, pairs, patches, candidates, labels, model, optimizer, progress, console, out)
    run.loop()
    return out / WEIGHTS_FILE


def _check(config: SPIConfig) -> None:
    if config.iterations < 1 or config.epochs < 1:
        raise MedfuseError("--iterations and --epochs must be at least 1")
    if not 0 < config.labelled_fraction <= 1:
        raise MedfuseError("--labelled-fraction must be in (0, 1]")
    if not 0 <= config.val_fraction < 1:
        raise MedfuseError("--val-fraction must be in [0, 1)")
    if not config.label_fusers and not config.label_dirs:
        raise MedfuseError("SPI needs candidate labels: pass --label-fuser NAME and/or --label-dir NAME=DIR")


def _split_images(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out a reproducible share of the training pairs for validation metrics."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    held = round(count * val_fraction)
    if held and count - held < 1:
        raise MedfuseError("--val-fraction leaves no training pairs")
    return sorted(order[held:]), sorted(order[:held])


def _candidates(pairs: PairSet, config: SPIConfig) -> tuple[list[list[Tensor]], list[str]]:
    """Whole-image candidate labels: one list of (1, H, W) Y tensors per fuser or folder."""
    candidates, names = [], []
    for name in config.label_fusers:
        candidates.append(_fuse_all(name, pairs))
        names.append(name)
    for name, folder in config.label_dirs.items():
        candidates.append(read_label_folder(Path(folder), pairs))
        names.append(name)
    return candidates, names


@torch.inference_mode()
def _fuse_all(name: str, pairs: PairSet) -> list[Tensor]:
    """Fuse every whole pair with a registered fuser (networks with their default checkpoint)."""
    spec = get_fuser_spec(name)
    fusers: dict[bool, torch.nn.Module] = {}
    fused = []
    for a, b, color in zip(pairs.anatomical, pairs.functional, pairs.second_is_color, strict=True):
        if color not in fusers:
            loaded = resolve_checkpoint(spec.default_checkpoint(color)) if spec.needs_weights else None
            fusers[color] = spec.build(loaded, {}).eval()
        fused.append(fusers[color](a[None], b[None])[0].clamp(0, 1))
    return fused


@torch.inference_mode()
def _initial_labels(
    pairs: PairSet, patches: Patches, candidates: list[list[Tensor]], config: SPIConfig, console: Console
) -> LabelSet:
    """Score every candidate on every patch; labelled patches take their best candidate."""
    scores = torch.empty(len(candidates), len(patches))
    for start in range(0, len(patches), _SCORE_BATCH):
        rows = torch.arange(start, min(start + _SCORE_BATCH, len(patches)))
        a, b = patches.crop(pairs.anatomical, rows), patches.crop(pairs.functional, rows)
        for k, candidate in enumerate(candidates):
            scores[k, rows] = label_score(patches.crop(candidate, rows), a, b, config.detail_weight)
    best, best_index = scores.max(dim=0)
    order = torch.randperm(len(patches), generator=torch.Generator().manual_seed(config.seed + 1))
    labelled = torch.zeros(len(patches), dtype=torch.bool)
    labelled[order[: max(1, round(len(patches) * config.labelled_fraction))]] = True
    source = torch.where(labelled, best_index, torch.full_like(best_index, -1))
    score = torch.where(labelled, best, torch.full_like(best, -math.inf))
    console.print(f"{int(labelled.sum())} labelled and {int((~labelled).sum())} unlabelled patches")
    return LabelSet(source=source, score=score, best_candidate=best, pseudo={})


def _save_labels(path: Path, labels: LabelSet, log: list) -> None:
    rows = sorted(labels.pseudo)
    tensors = {"source": labels.source, "score": labels.score, "rows": torch.tensor(rows, dtype=torch.int64)}
    if rows:
        tensors["pseudo"] = torch.stack([labels.pseudo[r] for r in rows])
    write_checkpoint(path, tensors, {"version": str(labels.version), "log": json.dumps(log)})


def _load_labels(path: Path, initial: LabelSet, progress: dict) -> LabelSet:
    """The saved label set; its log may be one update ahead of the training state's."""
    if not path.is_file():
        return initial
    with safe_open(str(path), framework="pt") as handle:  # our own file: no pickle sniffing needed
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    rows = tensors["rows"].tolist()
    pseudo = dict(zip(rows, tensors["pseudo"], strict=True)) if rows else {}
    log = json.loads(metadata["log"])
    if len(log) > len(progress["log"]):
        progress["log"] = log
    return LabelSet(
        source=tensors["source"],
        score=tensors["score"],
        best_candidate=initial.best_candidate,
        pseudo=pseudo,
        version=int(metadata["version"]),
    )


class _Run:
    """One SPI run's loop: epochs, label updates, validation, checkpoints."""

    def __init__(
        self,
        config: SPIConfig,
        pairs: PairSet,
        patches: Patches,
        candidates: list[list[Tensor]],
        labels: LabelSet,
        model: LWNet,
        optimizer: torch.optim.Optimizer,
        progress: dict,
        console: Console,
        out: Path,
    ) -> None:
        self.config, self.pairs, self.patches, self.candidates = config, pairs, patches, candidates
        self.labels, self.model, self.optimizer = labels, model, optimizer
        self.progress, self.console, self.out = progress, console, out
        self.started = time.monotonic()
        self.seconds_before = progress["seconds"]
        _, self.val_images = _split_images(len(pairs.names), config.val_fraction, config.seed)
        self.commit = git_commit()  # once per session, not a git process per saved epoch

    def loop(self) -> None:
        config = self.config
        total = config.iterations * config.epochs
        stop_now = False
        while True:
            done = self.progress["epochs_done"]
            finished_iterations = done // config.epochs
            if done and done % config.epochs == 0 and len(self.progress["log"]) < finished_iterations:
                self._end_iteration(finished_iterations)
            if done >= total:
                self.console.print(f"done: {total} epochs in {self._seconds() / 60:.1f} min")
                return
            if stop_now:
                self.console.print(f"stopped after {config.max_minutes} min; continue with --resume")
                return
            loss = self._train_epoch(done)
            self.progress["epochs_done"] = done + 1
            self.progress["losses"].append(round(loss, 6))
            self._save()
            stop_now = (
                config.max_minutes is not None and self._seconds_this_session() >= config.max_minutes * 60
            )

    def _seconds_this_session(self) -> float:
        return time.monotonic() - self.started

    def _seconds(self) -> float:
        return self.seconds_before + self._seconds_this_session()

    def _train_epoch(self, epoch: int) -> float:
        """One pass over the labelled patches in an order fixed by (seed, epoch)."""
        config, patches = self.config, self.patches
        rows = torch.nonzero(self.labels.source != -1).flatten()
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        rows = rows[torch.randperm(len(rows), generator=generator)]
        self.model.train()
        total, batches = 0.0, 0
        iteration = epoch // config.epochs + 1
        with self._bar() as bar:
            task = bar.add_task(
                f"iteration {iteration}/{config.iterations} epoch {epoch % config.epochs + 1}/{config.epochs}",
                total=math.ceil(len(rows) / config.batch_size),
            )
            for start in range(0, len(rows), config.batch_size):
                batch = rows[start : start + config.batch_size]
                a = patches.crop(self.pairs.anatomical, batch)
                b = patches.crop(self.pairs.functional, batch)
                target = self._label_images(batch)
                loss = fusion_loss(
                    self.model(a, b), target, a, b, config.gradient_weight, config.intensity_weight
                )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                total, batches = total + loss.item(), batches + 1
                bar.advance(task)
        return total / max(batches, 1)

    def _label_images(self, rows: Tensor) -> Tensor:
        images = []
        for row in rows.tolist():
            k = int(self.labels.source[row])
            if k == NETWORK_LABEL:
                images.append(self.labels.pseudo[row])
            else:
                images.append(self.patches.crop(self.candidates[k], torch.tensor([row]))[0])
        return torch.stack(images)

    @torch.inference_mode()
    def _end_iteration(self, iteration: int) -> None:
        """Validation metrics, then (unless this was the last iteration) the SPI label update."""
        self.model.eval()
        entry: dict = {"iteration": iteration, "epochs": self.progress["epochs_done"]}
        if iteration < self.config.iterations:
            entry.update(self._update_labels())
        labelled = self.labels.source != -1
        entry["labelled"] = int(labelled.sum())
        entry["mean_label_score"] = round(float(self.labels.score[labelled].mean()), 5)
        entry["validation"] = self._validate()
        self.progress["log"].append(entry)
        self.labels.version = iteration
        _save_labels(self.out / LABELS_FILE, self.labels, self.progress["log"])
        self._save()
        self.console.print(_describe(entry))

    def _update_labels(self) -> dict:
        """Admit outputs as pseudo labels and displace weaker labels, per the two thresholds."""
        config, labels = self.config, self.labels
        added = replaced = 0
        for start in range(0, len(self.patches), _SCORE_BATCH):
            rows = torch.arange(start, min(start + _SCORE_BATCH, len(self.patches)))
            a = self.patches.crop(self.pairs.anatomical, rows)
            b = self.patches.crop(self.pairs.functional, rows)
            output = self.model(a, b)
            scores = label_score(output, a, b, config.detail_weight)
            for i, row in enumerate(rows.tolist()):
                unlabelled = int(labels.source[row]) == -1
                if unlabelled and scores[i] >= config.admit * labels.best_candidate[row]:
                    added += 1
                elif not unlabelled and scores[i] >= config.displace * labels.score[row]:
                    replaced += 1
                else:
                    continue
                labels.source[row] = NETWORK_LABEL
                labels.score[row] = scores[i]
                labels.pseudo[row] = output[i].clone()
        return {"added": added, "replaced": replaced}

    def _validate(self) -> dict:
        """Mean SSIM, Qabf and VIF (project metrics, 8-bit scale) on the held-out pairs, and the
        functional share Σ|F − MRI| / Σ|functional − MRI| (0: the output copies the MRI, 0.5:
        the average, 1: the functional image), which those metrics do not penalise: copying the
        MRI scores well on all three while it drops the functional signal."""
        if not self.val_images:
            return {}
        totals = {"SSIM": 0.0, "Qabf": 0.0, "VIF": 0.0}
        moved = apart = 0.0
        for i in self.val_images:
            a, b = self.pairs.anatomical[i], self.pairs.functional[i]
            fused = self.model(a[None], b[None])[0]
            moved += float((fused - a).abs().sum())
            apart += float((b - a).abs().sum())
            a8, b8, f8 = (np.rint(x[0].numpy().astype(np.float64) * 255) for x in (a, b, fused))
            totals["SSIM"] += ssim_metric(a8, b8, f8)
            totals["Qabf"] += qabf(a8, b8, f8)
            totals["VIF"] += vif(a8, b8, f8)
        means = {name: round(value / len(self.val_images), 4) for name, value in totals.items()}
        return {**means, "functional_share": round(moved / max(apart, 1e-12), 4)}

    def _bar(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=self.config.quiet,
        )

    def _save(self) -> None:
        """Training state (to resume) and the weights file (to use), after every epoch."""
        self.progress["seconds"] = round(self._seconds(), 1)
        save_training_state(self.out / STATE_FILE, self.model, self.optimizer, self.progress)
        write_checkpoint(self.out / WEIGHTS_FILE, self.model.state_dict(), self._metadata())

    def _metadata(self) -> dict[str, str]:
        config = self.config
        return {
            "network": "LWNet",
            "format": CHECKPOINT_FORMAT,
            "parameters": str(sum(p.numel() for p in self.model.parameters())),
            "data": json.dumps(config.data),
            "command": config.command,
            "schedule": (
                f"{config.iterations} SPI iterations x {config.epochs} epochs, Adam lr "
                f"{config.learning_rate}, batch {config.batch_size}, patches {config.patch_size} "
                f"stride {config.stride}, thresholds displace {config.displace} admit {config.admit}"
            ),
            "epochs": str(self.progress["epochs_done"]),
            "wall_time_minutes": f"{self._seconds() / 60:.1f}",
            "git_commit": self.commit,
            "initial_label_wins": json.dumps(self.progress["initial_wins"]),
            "spi_log": json.dumps(self.progress["log"]),
            "config": json.dumps(asdict(config)),
        }


def _describe(entry: dict) -> str:
    parts = [f"SPI iteration {entry['iteration']}:"]
    if "added" in entry:
        parts.append(f"+{entry['added']} pseudo labels, {entry['replaced']} replaced,")
    parts.append(f"{entry['labelled']} labelled, mean score {entry['mean_label_score']:.4f}")
    if entry["validation"]:
        parts.append("| validation " + " ".join(f"{k} {v:.4f}" for k, v in entry["validation"].items()))
    return " ".join(parts)
