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
run continues exactly as an uninterrupted one would; optionally a cosine learning-rate schedule,
a held-out loss per epoch, a start from one of our checkpoints (``init``) and per-image
normalisation while training (``train_norm="image"``: the network trained is then the one that
fuses, where batch statistics train a slightly different one) or per-pair normalisation
(``train_norm="pair"``: the two Y images of a training pair go through the network together,
with the same augmentation draws, and share their statistics, as they do when the checkpoint,
``normalization: per-pair``, fuses them; the loss is still each image's own reconstruction)
(``LYWNetConfig``). The run (folder, resume, budget, provenance,
events) is ``training.run.Run``.

Under torchrun (``training.distributed``) every process draws the order and the augmentation of
the whole global batch from the same generator and augments only its share; the batch statistics
of ``train_norm="batch"`` are those of the global batch, summed over the processes
(``DistributedImageNorm``), so K processes train what one does, up to float rounding. The
held-out loss is computed on rank 0.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medfuse_cli.errors import CheckpointError, InputError
from medfuse_cli.fusers.lywnet import (
    MIN_SIZE,
    OWN_FORMAT,
    PER_IMAGE,
    PER_PAIR,
    ImageNorm,
    LYWNet,
    checkpoint_normalization,
    pad_to_multiple,
)
from medfuse_cli.training.config import LYWNetConfig
from medfuse_cli.training.distributed import SINGLE, World, sum_over_processes
from medfuse_cli.training.events import Listener, StepDone, ignore
from medfuse_cli.training.patches import load_pairs
from medfuse_cli.training.run import Run, RunFiles, RunSettings
from medfuse_cli.weights import load_state_strict, read_checkpoint, write_checkpoint

STATE_FILE = "lywnet-state.safetensors"
WEIGHTS_FILE = "lywnet.safetensors"
RUN_FILES = RunFiles(state=STATE_FILE, weights=WEIGHTS_FILE, config_key="options")
LOSS_WEIGHTS = (1.0, 25.0, 4.0)
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)


def autoencoder_loss(out: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
    """The authors' three-term loss with weights 1, 25, 4, and its parts for the log."""
    mse = F.mse_loss(out, target)
    cosine = 1 - F.cosine_similarity(out.flatten(1), target.flatten(1), dim=1).mean()
    sobel = _SOBEL_X.to(out)
    edge = F.mse_loss(F.conv2d(out, sobel).abs(), F.conv2d(target, sobel).abs())
    w_mse, w_cos, w_edge = LOSS_WEIGHTS
    total = w_mse * mse + w_cos * cosine + w_edge * edge
    return total, {"mse": mse.item(), "cosine": cosine.item(), "edge": edge.item()}


def augment(y: Tensor, size: int, generator: torch.Generator, native: bool = False) -> Tensor:
    """(C, H, W) Y images -> (C, size, size): random 90-degree turn, rescale, resize, crop.

    C is 1 (one image) or 2 (a pair, which gets the same draws, so it stays co-registered).

    ``native`` skips the resize to ``size`` (``crop_scale="native"``): the crop then comes from
    the rescaled image, at 0.5 to 1 times its own scale (training refuses images whose half is
    smaller than ``size``; here such an image is resized up to ``size``).
    """
    turns, rescaled, resized, top, left = augmentation_draws(y.shape, size, generator, native)
    y = torch.rot90(y, turns, dims=(1, 2))
    y = F.interpolate(y[None], size=rescaled, mode="bicubic", antialias=True, align_corners=False)
    if resized != rescaled:
        y = F.interpolate(y, size=resized, mode="bilinear", antialias=True, align_corners=False)
    return y[0, :, top : top + size, left : left + size].clamp(0.0, 1.0)


def augmentation_draws(
    shape: torch.Size, size: int, generator: torch.Generator, native: bool = False
) -> tuple[int, tuple[int, int], tuple[int, int], int, int]:
    """``augment``'s random draws for an image of ``shape``, and the sizes they give: quarter
    turns, the rescaled and the resized (height, width), the crop's top and left.

    Drawing them without the pixel work moves ``generator`` as ``augment`` would: a process that
    augments only its share of a batch draws the others' images this way.
    """
    turns = int(torch.randint(4, (1,), generator=generator))
    scale = 0.5 + 0.5 * float(torch.rand((), generator=generator))
    height, width = shape[-2:] if turns % 2 == 0 else (shape[-1], shape[-2])
    rescaled = (max(1, int(height * scale)), max(1, int(width * scale)))
    short = min(rescaled)
    target = size if not native else max(size, short)
    resized = (max(size, round(rescaled[0] * target / short)), max(size, round(rescaled[1] * target / short)))
    top = int(torch.randint(resized[0] - size + 1, (1,), generator=generator))
    left = int(torch.randint(resized[1] - size + 1, (1,), generator=generator))
    return turns, rescaled, resized, top, left


def learning_rate_at(config: LYWNetConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total_steps``.

    ``constant``: the authors' fixed rate. ``cosine``: half a cosine from ``learning_rate`` to
    ``min_lr`` over the planned steps (Loshchilov & Hutter, SGDR, ICLR 2017, without restarts),
    our change to reach the authors' reconstruction loss in far fewer epochs on a CPU.
    """
    if config.lr_schedule == "constant":
        return config.learning_rate
    progress = min(step / max(total_steps, 1), 1.0)
    return config.min_lr + 0.5 * (config.learning_rate - config.min_lr) * (1 + math.cos(math.pi * progress))


def held_out_images(images: list[Tensor], size: int, native: bool = False) -> list[Tensor]:
    """Fixed (no randomness) versions of held-out Y images, each (1, 1, h, w) float32 in [0, 1].

    Whole scale (the authors' training resolution without their random augmentation): each
    image resized (bilinear, antialiased) to ``size`` on its short side, its top-left size×size
    corner kept. ``native``: each image whole, at its own size, as it is fused.
    """
    fixed = []
    for y in images:
        if not native:
            height, width = y.shape[-2:]
            scale = size / min(height, width)
            shape = (max(size, round(height * scale)), max(size, round(width * scale)))
            y = F.interpolate(y[None], size=shape, mode="bilinear", antialias=True, align_corners=False)[0]
            y = y[:, :size, :size]
        fixed.append(y[None].clamp(0.0, 1.0))
    return fixed


@torch.inference_mode()
def held_out_loss(model: LYWNet, images: list[Tensor]) -> dict[str, float]:
    """The authors' loss with the model's inference normalisation, averaged over the images.

    ``images``: (1, 1, h, w) images, or (2, 1, h, w) pairs for a ``per-pair`` model. Each is
    reconstructed on its own, padded as ``LYWNet`` pads it to fuse and scored on its own
    pixels, so images of any size (at least ``MIN_SIZE``) are scored whole; for images of one
    size the mean equals the loss of the whole batch. Logged every epoch next to the same
    number for a reference checkpoint, it tells how far the run is from the authors' weights
    without fusing a test image.
    """
    was_training = model.training
    model.eval()
    totals = {"loss": 0.0, "mse": 0.0, "cosine": 0.0, "edge": 0.0}
    for y in images:
        height, width = y.shape[-2:]
        out = model.autoencode(pad_to_multiple(y))[..., :height, :width]
        loss, parts = autoencoder_loss(out, y)  # a pair's: the mean of its two images' losses
        for key, value in {"loss": loss.item(), **parts}.items():
            totals[key] += value * len(y)
    model.train(was_training)
    count = sum(len(y) for y in images)
    return {key: round(value / count, 6) for key, value in totals.items()}


def training_images(data_dirs: list[Path]) -> list[Tensor]:
    """Every Y image of the pairs under ``data_dirs``: both modalities, (1, H, W) float32 in [0, 1].

    Raises:
        InputError: the folders hold no pairs, or what ``patches.load_pairs`` refuses.
    """
    pairs = load_pairs([Path(d) for d in data_dirs])
    images = pairs.anatomical + pairs.functional
    if not images:
        raise InputError("no training images found")
    return images


def training_units(images: list[Tensor], pairs: bool) -> list[Tensor]:
    """What one index of the shuffled order draws: each (1, H, W) image of ``training_images``,
    or (``pairs``) each pair as one (2, H, W) tensor, the MRI first (its list's two halves)."""
    if not pairs:
        return images
    half = len(images) // 2
    return [
        torch.cat([anatomical, functional])
        for anatomical, functional in zip(images[:half], images[half:], strict=True)
    ]


def train_lywnet(config: LYWNetConfig, settings: RunSettings, on_event: Listener = ignore) -> Path:
    """Train (or resume) LYWNet as an autoencoder in ``settings.out``.

    Args:
        config: what the run learns (see ``LYWNetConfig``; values from a recipe).
        settings: how this session runs: folder, data, device, threads, budget, resume.
        on_event: receives the run's events (``training.events``).

    Returns:
        The weights file (``lywnet.safetensors`` in the run folder), rewritten after every epoch.

    Raises:
        InputError: bad data or monitor folders (the message names ``--monitor``), a run that
            cannot be started or resumed as asked (see ``Run``), or a budget that allows no epoch.
        CheckpointError: the run's saved files cannot be read.
    """
    with Run(settings, RUN_FILES, config, on_event) as run:
        images = training_images(run.data)
        _check_crop_fits(images, config)
        monitor = [y.to(run.device) for y in _held_out(config)] if config.monitor else None
        run.message(
            f"{len(images)} training images"
            + (
                f", {sum(map(len, monitor))} held-out images for the loss per epoch"
                if monitor is not None
                else ""
            )
        )
        units = training_units(images, config.pairs)
        torch.manual_seed(config.seed)
        model = LYWNet(normalization=PER_PAIR if config.pairs else PER_IMAGE)
        if config.init and not run.resumed:
            run.progress["init_sha256"], init_normalization = _load_own_checkpoint(model, Path(config.init))
            run.message(f"starting from {config.init} (sha256 {run.progress['init_sha256']})")
            if init_normalization != model.normalization:
                run.message(
                    f"note: the --init checkpoint fuses with {init_normalization} statistics; with "
                    f"--train-norm {config.train_norm} this run's checkpoint will fuse with "
                    f"{model.normalization} statistics (--train-norm pair keeps per-pair)"
                )
        for norm in model.modules():
            if isinstance(norm, ImageNorm):
                norm.batch_statistics_in_training = config.train_norm == "batch"
        if run.world.distributed:
            distributed_norms(model)
        model = model.train().to(run.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        run.restore(model, optimizer)
        run.progress.setdefault("log", [])
        run.progress.setdefault("images", len(images))
        network = run.distribute(Autoencoder(model))

        def train_epoch(epoch: int) -> dict[str, float]:
            entry = _train_epoch(network, optimizer, units, config, epoch, run.emit, run.world)
            if monitor is not None:
                entry["held_out"] = run.world.agree(lambda: held_out_loss(model, monitor), main_only=True)
            run.progress["log"].append(entry)
            return _summary(entry)

        return run.train(
            model, optimizer, config.epochs, train_epoch, lambda: _metadata(model, config, run.progress)
        )


def _load_own_checkpoint(model: LYWNet, path: Path) -> tuple[str, str]:
    """Load one of our LYWNet checkpoints (``medfuse-lywnet-1``) into ``model``.

    Only our own format: the authors' weights carry no licence, so no checkpoint we ship may
    descend from them.

    Returns:
        The file's sha256 and its ``normalization`` (how it infers; the run may change it).

    Raises:
        CheckpointError: beginning ``--init:``, the file is unreadable, not our format, has no
            known ``normalization``, or does not fit the network.
    """
    try:
        loaded = read_checkpoint(path)
        if loaded.metadata.get("format") != OWN_FORMAT:
            raise CheckpointError(f"{path} is not one of our LYWNet checkpoints (format {OWN_FORMAT!r})")
        normalization = checkpoint_normalization(loaded)  # refused here as `medfuse fuse` would refuse it
        load_state_strict(model, loaded.tensors, str(path))
    except CheckpointError as exc:
        raise CheckpointError(f"--init: {exc}") from None
    # sha256 of the bytes loaded: the file is not read a second time
    return loaded.sha256, normalization


def _held_out(config: LYWNetConfig) -> list[Tensor]:
    """The monitor folders' images at the training crops' scale (``held_out_images``).

    Raises:
        InputError: a folder is missing or holds no pairs, or (native scale) an image is smaller
            than LYWNet fuses, naming ``--monitor``.
    """
    try:
        images = training_images([Path(folder) for folder in config.monitor])
    except InputError as exc:
        raise InputError(f"--monitor: {exc}") from None
    small = [y for y in images if min(y.shape[-2:]) < MIN_SIZE] if config.native_crops else []
    if small:
        height, width = small[0].shape[-2:]
        raise InputError(
            f"--monitor: {len(small)} image(s) smaller than LYWNet fuses ({width}x{height}; at least "
            f"{MIN_SIZE} px on each side)"
        )
    fixed = held_out_images(images, config.size, config.native_crops)
    return [unit[:, None] for unit in training_units([y[0] for y in fixed], config.pairs)]


def _check_crop_fits(images: list[Tensor], config: LYWNetConfig) -> None:
    """Native crops come from images rescaled to 0.5-1x: refuse a crop larger than half an image's
    short side, which would have to be made by enlarging the image (a scale the option excludes).

    Raises:
        InputError: naming the smallest image's size and the largest crop that fits.
    """
    if not config.native_crops:
        return
    short = min(min(y.shape[-2:]) for y in images)
    if config.size > short // 2:
        largest = short // 2 // 4 * 4
        instead = f"--crop-size {largest} or less, or " if largest >= 8 else ""
        raise InputError(
            f"--crop-size {config.size} does not fit --crop-scale native: the smallest training image is "
            f"{short} px on its short side, and crops come from it rescaled to 0.5-1x (use {instead}"
            f"--crop-scale whole)"
        )


class Autoencoder(nn.Module):
    """LYWNet's training task as a module (``forward`` = ``LYWNet.autoencode``), for DDP, which
    synchronises gradients through ``forward`` only. Its state is the network's under ``network.``."""

    def __init__(self, network: LYWNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, y: Tensor) -> Tensor:
        """(N, 1, H, W) Y images, H and W multiples of 4 -> their reconstructions, same shape."""
        return self.network.autoencode(y)


class DistributedImageNorm(ImageNorm):
    """``ImageNorm`` for a run in several processes.

    Batch statistics in training are the global batch's: each process sums its share's values
    per channel, the sums are added over the processes (differentiably, so gradients flow
    through the shared statistics as in one process), then the mean and, in a second pass, the
    biased variance of all the values normalise the share. An empty share (a last batch smaller
    than the number of processes) adds nothing and passes through, also with per-image
    statistics (which ``F.instance_norm`` cannot take empty). Otherwise as ``ImageNorm``.
    """

    def forward(self, x: Tensor) -> Tensor:
        """As ``ImageNorm.forward``; batch statistics are over every process's share of the batch."""
        channels = x.shape[1]
        weight, bias = self.weight.view(1, channels, 1, 1), self.bias.view(1, channels, 1, 1)
        if not (self.training and self.batch_statistics_in_training):
            return x * weight + bias if x.numel() == 0 else super().forward(x)
        count = x.new_tensor([x.numel() // channels])
        sums = sum_over_processes(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        mean = (sums[:channels] / sums[channels]).view(1, channels, 1, 1)
        centred = x - mean
        variance = sum_over_processes(centred.pow(2).sum(dim=(0, 2, 3))) / sums[channels]
        return centred * torch.rsqrt(variance + self.eps).view(1, channels, 1, 1) * weight + bias


def distributed_norms(model: nn.Module) -> None:
    """Make every ``ImageNorm`` of ``model`` a ``DistributedImageNorm`` with the same parameters
    (the same tensors, names and order, so the state and the optimizer are unchanged), for a run
    in several processes. A norm shared between modules stays shared."""
    replacements: dict[int, DistributedImageNorm] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not ImageNorm:
                continue
            if id(child) not in replacements:
                norm = DistributedImageNorm(child.num_features)
                norm.weight, norm.bias, norm.eps = child.weight, child.bias, child.eps
                norm.batch_statistics_in_training = child.batch_statistics_in_training
                norm.group = child.group
                norm.train(child.training)
                replacements[id(child)] = norm
            setattr(parent, name, replacements[id(child)])


def _train_epoch(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    units: list[Tensor],
    config: LYWNetConfig,
    epoch: int,
    emit: Listener,
    world: World = SINGLE,
) -> dict:
    """One pass over every training unit (image or pair, ``training_units``) in a seeded random
    order; returns the epoch's log entry. A step takes ``batch_size`` images.

    ``network`` is the ``Autoencoder`` (in DDP under torchrun: then each process trains on its
    share of every batch, see ``_step``).
    """
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    order = torch.randperm(len(units), generator=generator).tolist()
    per_unit = units[0].shape[0]
    images = len(order) * per_unit
    totals = {"loss": 0.0, "mse": 0.0, "cosine": 0.0, "edge": 0.0}
    started = time.monotonic()
    device = next(network.parameters()).device
    units_per_step = config.batch_size // per_unit
    steps = math.ceil(len(order) / units_per_step)
    for step, start in enumerate(range(0, len(order), units_per_step)):
        lr = learning_rate_at(config, (epoch - 1) * steps + step, config.epochs * steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        chunk = order[start : start + units_per_step]
        if world.distributed:
            for key, value in _step(network, optimizer, units, chunk, config, generator, world).items():
                totals[key] += value
        else:
            crops = [augment(units[i], config.size, generator, config.native_crops) for i in chunk]
            batch = torch.cat(crops)[:, None].to(device)
            loss, parts = autoencoder_loss(network(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in {"loss": loss.item(), **parts}.items():
                totals[key] += value * len(batch)
        done = (start + len(chunk)) * per_unit
        emit(StepDone(epoch, step + 1, steps, totals["loss"] / done, done / (time.monotonic() - started)))
    seconds = time.monotonic() - started
    entry = {key: value / images for key, value in totals.items()}
    entry.update(epoch=epoch, seconds=round(seconds, 1), images_per_second=round(images / seconds, 2), lr=lr)
    return entry


def _step(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    units: list[Tensor],
    chunk: list[int],
    config: LYWNetConfig,
    generator: torch.Generator,
    world: World,
) -> dict[str, float]:
    """One Adam step of one of several processes on its share of the global batch ``chunk``.

    The augmentation of the whole batch is drawn (only the share's pixels are computed), so the
    generator moves as in one process. The share's mean loss is weighted so that DDP's average
    of the gradients is the whole batch's; an empty share runs an empty batch with a zero loss.

    Returns:
        The batch's loss and its parts, each summed over its images (as one process sums them).
    """
    device = next(network.parameters()).device
    size, native = config.size, config.native_crops
    crops = []
    for position, index in enumerate(chunk):
        if position % world.size == world.rank:
            crops.append(augment(units[index], size, generator, native))
        else:
            augmentation_draws(units[index].shape, size, generator, native)
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    if crops:
        batch = torch.cat(crops)[:, None].to(device)
        loss, parts = autoencoder_loss(network(batch), batch)
        sums += torch.tensor(
            [loss.item(), parts["mse"], parts["cosine"], parts["edge"]], device=device
        ) * len(batch)
        loss = loss * world.loss_weight(len(crops), len(chunk))
    else:
        loss = network(torch.zeros(0, 1, size, size, device=device)).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return dict(zip(("loss", "mse", "cosine", "edge"), world.sum(sums).tolist(), strict=True))


def _summary(entry: dict) -> dict[str, float]:
    """An epoch's log entry as the flat numbers of ``EpochFinished``, in the order shown."""
    summary = {key: entry[key] for key in ("loss", "mse", "cosine", "edge")}
    if "held_out" in entry:
        summary["held_out_loss"] = entry["held_out"]["loss"]
    summary.update(lr=entry["lr"], images_per_second=entry["images_per_second"])
    return summary


def finalize_checkpoint(run_weights: Path, out_path: Path, test_metrics: dict, lineage: str = "") -> None:
    """Publish a run's weights at ``out_path`` with its test-split metrics in the metadata.

    ``test_metrics`` is what ``medfuse evaluate --json`` reported for the run's fused test
    images; the tensors and the training metadata are copied unchanged. A run started with
    ``--init`` records only its own epochs and wall time: ``lineage`` (stored when given) says
    what came before, e.g. the total epochs and hours from scratch, so ``medfuse models`` does
    not present the last step as the whole training.

    Raises:
        CheckpointError: ``run_weights`` cannot be read.
        OSError: ``out_path`` cannot be written.
    """
    loaded = read_checkpoint(run_weights)
    metadata = loaded.metadata | {"test_metrics": json.dumps(test_metrics, sort_keys=True)}
    if lineage:
        metadata["lineage"] = lineage
    write_checkpoint(out_path, loaded.tensors, metadata)


def _metadata(model: LYWNet, config: LYWNetConfig, progress: dict) -> dict[str, str]:
    """LYWNet's checkpoint metadata (the run adds provenance, options, epochs, wall time)."""
    schedule = f"{config.lr_schedule} to {config.min_lr}" if config.lr_schedule == "cosine" else "constant"
    start = f", from {config.init} (sha256 {progress['init_sha256']})" if config.init else ""
    return {
        "network": "LYWNet",
        "format": OWN_FORMAT,
        "normalization": model.normalization,
        "parameters": str(sum(p.numel() for p in model.parameters())),
        "images": str(progress["images"]),
        "schedule": (
            f"autoencoder, {progress['epochs_done']} of {config.epochs} epochs over {progress['images']} Y "
            f"images, Adam lr {config.learning_rate} ({schedule}), batch {config.batch_size}, {config.size} px "
            f"crops at {config.crop_scale} scale, "
            f"loss weights {LOSS_WEIGHTS}, {config.train_norm} statistics in training{start}"
        ),
        "training_log": json.dumps(progress["log"]),
    }
