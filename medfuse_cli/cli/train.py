"""``medfuse train``: fit a network to training pairs; one trainer per model, chosen by ``--model``.

Options shared by every trainer come first; the SPI options only concern ``--model lwnet``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import torch
import typer

from medfuse_cli.cli import options
from medfuse_cli.devices import resolve_device
from medfuse_cli.errors import MedfuseError


def train(
    data: list[Path] = typer.Argument(
        ...,
        help="Training folder(s) laid out like harvard/<PAIR>/train/ (MRI/ + SPECT|PET|CT/), or their parent.",
    ),
    model: str = typer.Option(..., "--model", "-m", help="Network to train: lwnet or lywnet."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: training state and the weights file."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (per SPI iteration for lwnet)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Batch size."),
    learning_rate: float | None = typer.Option(None, "--lr", min=0.0, help="Adam learning rate."),
    seed: int = typer.Option(0, "--seed", help="Seed for splits, initialisation and shuffles."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved in --out."),
    max_minutes: float | None = typer.Option(
        None, "--max-minutes", min=0.0, help="Stop (after the current epoch) once this much time has passed."
    ),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for torch."),
    iterations: int = typer.Option(10, "--iterations", min=1, help="[lwnet] SPI iterations."),
    label_fuser: list[str] = typer.Option(
        [],
        "--label-fuser",
        help="[lwnet] A registered fuser whose outputs are candidate labels (repeatable).",
    ),
    label_dir: list[str] = typer.Option(
        [],
        "--label-dir",
        help="[lwnet] NAME=DIR: fused images of the training pairs by another tool (repeatable).",
    ),
    patch_size: int = typer.Option(120, "--patch-size", min=16, help="[lwnet] Patch side in pixels."),
    stride: int = typer.Option(
        68, "--stride", min=1, help="[lwnet] Step between patches (the paper's density is ~23)."
    ),
    labelled_fraction: float = typer.Option(
        0.5, "--labelled-fraction", help="[lwnet] Share of patches labelled at the start."
    ),
    val_fraction: float = typer.Option(
        0.1, "--val-fraction", help="[lwnet] Share of pairs held out for validation."
    ),
    displace: float = typer.Option(
        1.10, "--displace", help="[lwnet] An output replaces a label when it scores ≥ this × the label."
    ),
    admit: float = typer.Option(
        1.00,
        "--admit",
        help="[lwnet] An output becomes a pseudo label when it scores ≥ this × the best candidate.",
    ),
    gradient_weight: float = typer.Option(
        0.5,
        "--gradient-weight",
        min=0.0,
        help="[lwnet] Weight of the edge loss toward the stronger source gradient (0: the plain recipe).",
    ),
    intensity_weight: float = typer.Option(
        2.0,
        "--intensity-weight",
        min=0.0,
        help="[lwnet] Weight of the intensity loss toward max(MRI, functional) (0: left out).",
    ),
    detail_weight: float = typer.Option(
        0.1,
        "--detail-weight",
        min=0.0,
        help="[lwnet] Weight of the detail term in the label score (0: SSIM sum only, as in the paper).",
    ),
    lr_schedule: str = typer.Option(
        "constant", "--lr-schedule", help="[lywnet] constant (the authors') or cosine (down to --min-lr)."
    ),
    min_lr: float = typer.Option(
        0.0, "--min-lr", min=0.0, help="[lywnet] Last learning rate of a cosine schedule."
    ),
    monitor: list[Path] = typer.Option(
        [],
        "--monitor",
        help="[lywnet] Pair folder whose images give a held-out loss each epoch (repeatable).",
    ),
    device: str = options.DEVICE,
    quiet: bool = options.QUIET,
) -> None:
    """Train a fusion network; state is saved after every epoch, so a run can be resumed."""
    if threads is not None:
        torch.set_num_threads(threads)
    command = shlex.join(["medfuse", *sys.argv[1:]])
    if model == "lwnet":
        from medfuse_cli.training.spi import SPIConfig, train_lwnet

        config = SPIConfig(
            data=[str(d) for d in data],
            out=str(out),
            label_fusers=list(label_fuser),
            label_dirs=_named_folders(label_dir),
            iterations=iterations,
            epochs=epochs or 10,
            batch_size=batch_size or 8,
            learning_rate=learning_rate or 1e-3,
            patch_size=patch_size,
            stride=stride,
            labelled_fraction=labelled_fraction,
            val_fraction=val_fraction,
            displace=displace,
            admit=admit,
            gradient_weight=gradient_weight,
            intensity_weight=intensity_weight,
            detail_weight=detail_weight,
            seed=seed,
            command=command,
            max_minutes=max_minutes,
            resume=resume,
            quiet=quiet,
        )
        weights = train_lwnet(config)
    elif model == "lywnet":
        from medfuse_cli.training.lywnet_trainer import LYWNetTrainingOptions, train_lywnet

        lywnet_options = LYWNetTrainingOptions(
            epochs=epochs or 5,
            batch_size=batch_size or 16,
            learning_rate=learning_rate or 1e-4,
            lr_schedule=lr_schedule,
            min_lr=min_lr,
            monitor=[str(m) for m in monitor],
            device=str(resolve_device(device)),
            seed=seed,
            max_minutes=max_minutes,
            resume=resume,
            command=command,
        )
        weights = train_lywnet(data, out, lywnet_options, quiet=quiet)
    else:
        raise MedfuseError(f"cannot train '{model}' (trainable: lwnet, lywnet)")
    if not quiet:
        print(f"weights: {weights}")


def _named_folders(pairs: list[str]) -> dict[str, str]:
    """Parse repeated NAME=DIR options into {NAME: DIR}."""
    named = {}
    for item in pairs:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise MedfuseError(f"--label-dir expects NAME=DIR, got '{item}'")
        if name in named:
            raise MedfuseError(f"--label-dir name '{name}' given twice")
        named[name] = folder
    return named
