"""Train LYWNet the authors' way: an autoencoder on single Y images, no fusion while training.

Recipe (NOTES.md, from the authors' train.py): every Y image of the training pairs (the MRI and
the second modality alike) is, each epoch, rotated by a random multiple of 90 degrees, rescaled
by s ~ U(0.5, 1) (bicubic) and resized to 32 px on its short side (bilinear); the network
reconstructs it under MSE + 25 (1 - cosine similarity of the flattened images)
+ 4 MSE(|Sx * out|, |Sx * in|), Sx the horizontal Sobel kernel without padding; Adam, lr 1e-4,
batch 16. BatchNorm uses batch statistics while training, as theirs did; inference normalises
each image by its own statistics (see ``medfuse_cli.fusers.lywnet``), so the checkpoint's
metadata says ``normalization: per-image``.

Our choices where their code gives none that fits: images are shuffled each epoch (their loader
did not shuffle); a non-square image is cropped at random to 32 x 32 after resizing (theirs were
all square); augmentation and order come from a generator seeded by (seed, epoch), so a resumed
run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from medfuse_cli.errors import MedfuseError
from medfuse_cli.fusers.lywnet import OWN_FORMAT, PER_IMAGE, LYWNet
from medfuse_cli.training.patches import load_pairs
from medfuse_cli.training.provenance import git_commit
from medfuse_cli.training.resume import load_training_state, save_training_state
from medfuse_cli.weights import read_checkpoint, write_checkpoint

STATE_FILE = "lywnet-state.safetensors"
WEIGHTS_FILE = "lywnet.safetensors"
LOSS_WEIGHTS = (1.0, 25.0, 4.0)
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)


@dataclass
class LYWNetTrainingOptions:
    """Everything that defines a run; stored in the checkpoint so the run can be repeated."""

    epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"  # or "cosine": from learning_rate down to min_lr over all epochs
    min_lr: float = 0.0
    size: int = 32
    seed: int = 0
    device: str = "cpu"
    monitor: list[str] = field(default_factory=list)  # pair folders for a held-out loss per epoch
    max_minutes: float | None = None
    resume: bool = False
    command: str = ""
    data: list[str] = field(default_factory=list)


def autoencoder_loss(out: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
    """The authors' three-term loss with weights 1, 25, 4, and its parts for the log."""
    mse = F.mse_loss(out, target)
    cosine = 1 - F.cosine_similarity(out.flatten(1), target.flatten(1), dim=1).mean()
    sobel = _SOBEL_X.to(out)
    edge = F.mse_loss(F.conv2d(out, sobel).abs(), F.conv2d(target, sobel).abs())
    w_mse, w_cos, w_edge = LOSS_WEIGHTS
    total = w_mse * mse + w_cos * cosine + w_edge * edge
    return total, {"mse": mse.item(), "cosine": cosine.item(), "edge": edge.item()}


def augment(y: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """One (1, H, W) Y image -> (1, size, size): random 90-degree turn, rescale, resize, crop."""
    y = torch.rot90(y, int(torch.randint(4, (1,), generator=generator)), dims=(1, 2))
    scale = 0.5 + 0.5 * float(torch.rand((), generator=generator))
    height, width = y.shape[-2:]
    rescaled = (max(1, int(height * scale)), max(1, int(width * scale)))
    y = F.interpolate(y[None], size=rescaled, mode="bicubic", antialias=True, align_corners=False)
    short = min(rescaled)
    resized = (max(size, round(rescaled[0] * size / short)), max(size, round(rescaled[1] * size / short)))
    y = F.interpolate(y, size=resized, mode="bilinear", antialias=True, align_corners=False)[0]
    top = int(torch.randint(resized[0] - size + 1, (1,), generator=generator))
    left = int(torch.randint(resized[1] - size + 1, (1,), generator=generator))
    return y[:, top : top + size, left : left + size].clamp(0.0, 1.0)


def learning_rate_at(options: LYWNetTrainingOptions, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total_steps``.

    ``constant``: the authors' fixed rate. ``cosine``: half a cosine from ``learning_rate`` to
    ``min_lr`` over the planned steps (Loshchilov & Hutter, SGDR, ICLR 2017, without restarts),
    our change to reach the authors' reconstruction loss in far fewer epochs on a CPU.
    """
    if options.lr_schedule == "constant":
        return options.learning_rate
    if options.lr_schedule != "cosine":
        raise MedfuseError(f"unknown --lr-schedule '{options.lr_schedule}' (choose constant or cosine)")
    progress = min(step / max(total_steps, 1), 1.0)
    return options.min_lr + 0.5 * (options.learning_rate - options.min_lr) * (
        1 + math.cos(math.pi * progress)
    )


def held_out_batch(images: list[Tensor], size: int) -> Tensor:
    """Fixed (no randomness) size×size versions of held-out Y images: (N, 1, size, size).

    Each image is resized (bilinear, antialiased) to ``size`` on its short side and its top-left
    size×size corner kept, the authors' training resolution without their random augmentation.
    """
    fixed = []
    for y in images:
        height, width = y.shape[-2:]
        scale = size / min(height, width)
        shape = (max(size, round(height * scale)), max(size, round(width * scale)))
        resized = F.interpolate(y[None], size=shape, mode="bilinear", antialias=True, align_corners=False)
        fixed.append(resized[0, :, :size, :size].clamp(0.0, 1.0))
    return torch.stack(fixed)


@torch.inference_mode()
def held_out_loss(model: LYWNet, batch: Tensor, chunk: int = 32) -> dict[str, float]:
    """The authors' loss on ``batch`` with inference normalisation (per image), in chunks.

    Logged every epoch next to the same number for a reference checkpoint, it tells how far
    the run is from the authors' weights without fusing a test image.
    """
    was_training = model.training
    model.eval()
    totals = {"loss": 0.0, "mse": 0.0, "cosine": 0.0, "edge": 0.0}
    for start in range(0, len(batch), chunk):
        part = batch[start : start + chunk]
        loss, parts = autoencoder_loss(model.autoencode(part), part)
        for key, value in {"loss": loss.item(), **parts}.items():
            totals[key] += value * len(part)
    model.train(was_training)
    return {key: round(value / len(batch), 6) for key, value in totals.items()}


def training_images(data_dirs: list[Path]) -> list[Tensor]:
    """Every Y image of the pairs under ``data_dirs``: both modalities, as (1, H, W) tensors."""
    pairs = load_pairs([Path(d) for d in data_dirs])
    images = pairs.anatomical + pairs.functional
    if not images:
        raise MedfuseError("no training images found")
    return images


def train_lywnet(
    data_dirs: list[Path],
    out_dir: Path,
    options: LYWNetTrainingOptions,
    quiet: bool = False,
) -> Path:
    """Train (or resume) a run in ``out_dir``; returns the weights file written after each epoch.

    A rich progress bar shows loss and images/s, and a line per epoch is printed; ``quiet``
    silences both.
    """
    log: Callable[[str], None] = (lambda _: None) if quiet else print
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options.data = [str(d) for d in data_dirs]
    images = training_images(data_dirs)
    device = torch.device(options.device)
    monitor = (
        held_out_batch(training_images([Path(d) for d in options.monitor]), options.size)
        if options.monitor
        else None
    )
    torch.manual_seed(options.seed)
    model = LYWNet().train().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    state_path = out_dir / STATE_FILE
    record = {"epochs_done": 0, "seconds": 0.0, "log": [], "images": len(images), "git_commit": git_commit()}
    if options.resume:
        if not state_path.is_file():
            raise MedfuseError(f"nothing to resume: {state_path} does not exist")
        state = load_training_state(state_path)
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        record = state.progress
        log(f"resuming after epoch {record['epochs_done']} ({record['seconds'] / 60:.1f} min so far)")
    elif state_path.exists():
        raise MedfuseError(f"{state_path} exists: pass --resume to continue it, or choose another --out")

    started = time.monotonic()
    budget = None if options.max_minutes is None else options.max_minutes * 60
    steps = math.ceil(len(images) / options.batch_size)
    columns = (
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.1f} img/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=quiet) as bar:
        for epoch in range(record["epochs_done"] + 1, options.epochs + 1):
            last = record["log"][-1]["seconds"] if record["log"] else None
            spent = time.monotonic() - started
            if budget is not None and (spent >= budget or (last is not None and spent + last > budget)):
                log(f"stopping before epoch {epoch}: --max-minutes {options.max_minutes} would be exceeded")
                break
            task = bar.add_task("train", total=steps, epoch=f"{epoch}/{options.epochs}", loss=0.0, rate=0.0)
            entry = _train_epoch(model, optimizer, images, options, epoch, partial(bar.update, task))
            if monitor is not None:
                entry["held_out"] = held_out_loss(model, monitor.to(device))
            record["epochs_done"] = epoch
            record["seconds"] = record["seconds"] + entry["seconds"]
            record["log"].append(entry)
            save_training_state(state_path, model, optimizer, record)
            write_checkpoint(out_dir / WEIGHTS_FILE, model.state_dict(), _metadata(model, options, record))
            held = f", held-out loss {entry['held_out']['loss']:.4f}" if "held_out" in entry else ""
            log(
                f"epoch {epoch}: loss {entry['loss']:.4f} (mse {entry['mse']:.4f}, cosine "
                f"{entry['cosine']:.4f}, edge {entry['edge']:.4f}){held}, lr {entry['lr']:.2e}, "
                f"{entry['images_per_second']:.1f} img/s"
            )
    if record["epochs_done"] == 0:
        raise MedfuseError("no epoch finished: raise --max-minutes")
    return out_dir / WEIGHTS_FILE


def _train_epoch(
    model: LYWNet,
    optimizer: torch.optim.Optimizer,
    images: list[Tensor],
    options: LYWNetTrainingOptions,
    epoch: int,
    update: Callable[..., None],
) -> dict:
    """One pass over every image in a seeded random order; returns the epoch's mean losses."""
    generator = torch.Generator().manual_seed(options.seed * 100_003 + epoch)
    order = torch.randperm(len(images), generator=generator).tolist()
    totals = {"loss": 0.0, "mse": 0.0, "cosine": 0.0, "edge": 0.0}
    started = time.monotonic()
    device = next(model.parameters()).device
    steps = math.ceil(len(order) / options.batch_size)
    for step, start in enumerate(range(0, len(order), options.batch_size)):
        lr = learning_rate_at(options, (epoch - 1) * steps + step, options.epochs * steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        chunk = order[start : start + options.batch_size]
        batch = torch.stack([augment(images[i], options.size, generator) for i in chunk]).to(device)
        loss, parts = autoencoder_loss(model.autoencode(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in {"loss": loss.item(), **parts}.items():
            totals[key] += value * len(chunk)
        done = start + len(chunk)
        update(advance=1, loss=totals["loss"] / done, rate=done / (time.monotonic() - started))
    seconds = time.monotonic() - started
    entry = {key: value / len(order) for key, value in totals.items()}
    entry.update(
        epoch=epoch, seconds=round(seconds, 1), images_per_second=round(len(order) / seconds, 2), lr=lr
    )
    return entry


def finalize_checkpoint(run_weights: Path, out_path: Path, test_metrics: dict) -> None:
    """Publish a run's weights at ``out_path`` with its test-split metrics in the metadata.

    ``test_metrics`` is what ``medfuse evaluate --json`` reported for the run's fused test
    images; the tensors and the training metadata are copied unchanged.
    """
    loaded = read_checkpoint(run_weights)
    metadata = loaded.metadata | {"test_metrics": json.dumps(test_metrics, sort_keys=True)}
    write_checkpoint(out_path, loaded.tensors, metadata)


def _metadata(model: LYWNet, options: LYWNetTrainingOptions, record: dict) -> dict[str, str]:
    return {
        "network": "LYWNet",
        "format": OWN_FORMAT,
        "normalization": PER_IMAGE,
        "parameters": str(sum(p.numel() for p in model.parameters())),
        "command": options.command,
        "data": json.dumps(options.data),
        "images": str(record["images"]),
        "epochs": str(record["epochs_done"]),
        "schedule": (
            f"autoencoder, {record['epochs_done']} of {options.epochs} epochs over {record['images']} Y "
            f"images, Adam lr {options.learning_rate} ({options.lr_schedule}"
            f"{f' to {options.min_lr}' if options.lr_schedule == 'cosine' else ''}), batch {options.batch_size}, {options.size} px, "
            f"loss weights {LOSS_WEIGHTS}"
        ),
        "wall_time_minutes": f"{record['seconds'] / 60:.1f}",
        "git_commit": record["git_commit"],  # the code the run started from
        "training_log": json.dumps(record["log"]),
        "options": json.dumps(asdict(options)),
    }
