"""Train LWNet with SPI, structural-similarity pseudo-label iteration (our reading of the paper).

1. Patches of the training pairs are split, reproducibly, into a labelled and an unlabelled half.
2. Every patch is scored against each candidate label (crops of whole-image fusions by named
   fusers and by other tools' folders) with s(F) = SSIM(F, MRI) + SSIM(F, functional), plus
   ``detail_weight`` × a detail score (ours: by s alone the averaging rule wins most patches
   and its weak edges are what the network learns); a labelled patch starts with its best
   candidate (``training.labels``).
3. Each iteration trains ``epochs`` epochs on every patch that has a label (L1 + 1 − SSIM toward
   the label, plus ``gradient_weight`` × an edge term, see ``losses.fusion_loss``), then runs
   the network on every patch: an unlabelled patch whose output scores ≥ ``admit`` × its best
   candidate's score gets the output as its pseudo label; a label is displaced by the output
   when the output scores ≥ ``displace`` × the label's score.
4. Each iteration's log (labels added and replaced, mean label score, validation metrics on
   held-out training pairs) is emitted as a message and kept in the checkpoints' metadata.

The run (folder, resume, budget, provenance, events) is ``training.run.Run``. State is saved
after every epoch and after every label update, so a resume continues exactly: per-epoch
shuffles come from (seed, epoch), and a pending label update is recomputed from the saved
weights, which gives the same labels.

Under torchrun (``training.distributed``) every process holds the pairs, the candidates and the
initial labels (computed alike on each: deterministic), trains on its share of each global
batch, and runs the network on its share of the patches at a label update; the outputs and their
scores are gathered so that every process offers the same outputs in the same order and holds the
same label set. Validation runs on rank 0, which alone writes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from medfuse_cli.errors import InputError
from medfuse_cli.fusers.lwnet import CHECKPOINT_FORMAT, LWNet
from medfuse_cli.metrics.balance import peak_retention
from medfuse_cli.metrics.gradient import qabf
from medfuse_cli.metrics.structural import ssim_source_term
from medfuse_cli.metrics.visual import vif
from medfuse_cli.training.config import SPIConfig
from medfuse_cli.training.events import Listener, StepDone, ignore
from medfuse_cli.training.labels import (
    SCORE_BATCH,
    LabelSet,
    candidate_labels,
    initial_labels,
    read_labels,
    save_labels,
)
from medfuse_cli.training.losses import fusion_loss, label_score
from medfuse_cli.training.patches import PairSet, Patches, load_pairs, make_patches
from medfuse_cli.training.run import Run, RunFiles, RunSettings

STATE_FILE = "train-state.safetensors"
LABELS_FILE = "spi-labels.safetensors"
WEIGHTS_FILE = "lwnet.safetensors"
RUN_FILES = RunFiles(state=STATE_FILE, weights=WEIGHTS_FILE, config_key="config")


def train_lwnet(config: SPIConfig, settings: RunSettings, on_event: Listener = ignore) -> Path:
    """Run (or resume) SPI training of LWNet in ``settings.out``.

    Args:
        config: what the run learns (see ``SPIConfig``; values from a recipe).
        settings: how this session runs: folder, data, device, threads, budget, resume.
        on_event: receives the run's events (``training.events``).

    Returns:
        The weights file (``lwnet.safetensors`` in the run folder), rewritten after every epoch.

    Raises:
        InputError: bad data or label folders, a run that cannot be started or resumed as
            asked (see ``Run``), or a budget that allows no epoch.
        CheckpointError: a label fuser's checkpoint or the run's saved files cannot be read.
    """
    with Run(settings, RUN_FILES, config, on_event) as run:
        torch.manual_seed(config.seed)
        pairs = load_pairs(run.data)
        train_images, val_images = split_images(len(pairs.names), config.val_fraction, config.seed)
        patches = make_patches(pairs, train_images, config.patch_size, config.stride, config.min_mean)
        candidates, names = candidate_labels(pairs, config.label_fusers, config.label_dirs, run.device)
        run.message(
            f"{len(pairs.names)} pairs ({len(train_images)} train, {len(val_images)} validation), "
            f"{len(patches)} patches of {config.patch_size}², candidates: {', '.join(names)}"
        )
        labels = initial_labels(
            pairs,
            patches,
            candidates,
            config.detail_weight,
            config.labelled_fraction,
            config.seed,
            run.device,
        )
        labelled = int(labels.labelled.sum())
        run.message(f"{labelled} labelled and {len(patches) - labelled} unlabelled patches")
        run.progress.setdefault("log", [])
        run.progress.setdefault("losses", [])
        run.progress["initial_wins"] = {name: int((labels.source == k).sum()) for k, name in enumerate(names)}

        model = LWNet().to(run.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        run.restore(model, optimizer)
        if run.resumed and (run.out / LABELS_FILE).is_file():
            labels, log = read_labels(run.out / LABELS_FILE, labels.best_candidate)
            if len(log) > len(run.progress["log"]):  # the update was saved, the state after it not
                run.progress["log"] = log

        network = run.distribute(model)
        spi = _SPI(run, config, pairs, patches, candidates, labels, model, network, optimizer, val_images)
        return run.train(
            model,
            optimizer,
            config.iterations * config.epochs,
            spi.train_epoch,
            spi.metadata,
            spi.between_epochs,
        )


def split_images(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out a reproducible share of the training pairs for validation metrics.

    Returns:
        The indices of the training pairs and of the held-out ones, each sorted.

    Raises:
        InputError: the share leaves no training pair.
    """
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    held = round(count * val_fraction)
    if held and count - held < 1:
        raise InputError("--val-fraction leaves no training pairs")
    return sorted(order[held:]), sorted(order[:held])


class _SPI:
    """One SPI run's work between the skeleton's saves: epochs, label updates, validation."""

    def __init__(
        self,
        run: Run,
        config: SPIConfig,
        pairs: PairSet,
        patches: Patches,
        candidates: list[list[torch.Tensor]],
        labels: LabelSet,
        model: LWNet,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        val_images: list[int],
    ) -> None:
        self.run, self.config, self.pairs, self.patches = run, config, pairs, patches
        self.candidates, self.labels, self.model, self.optimizer = candidates, labels, model, optimizer
        self.network = network  # what training calls: ``model``, in DDP under torchrun
        self.val_images = val_images

    def _crops(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MRI and functional crops of patches ``rows`` on the run's device: (B, 1, S, S) each."""
        device = self.run.device
        a = self.patches.crop(self.pairs.anatomical, rows).to(device)
        return a, self.patches.crop(self.pairs.functional, rows).to(device)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the labelled patches in an order fixed by (seed, epoch).

        Under torchrun each process trains on its share of every batch (see ``_step``).
        """
        config = self.config
        rows = torch.nonzero(self.labels.labelled).flatten()
        # 0-based epoch in the seed, as the shipped checkpoints were trained
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch - 1)
        rows = rows[torch.randperm(len(rows), generator=generator)]
        self.network.train()
        steps = math.ceil(len(rows) / config.batch_size)
        total, seen, began = 0.0, 0, time.monotonic()
        for step, start in enumerate(range(0, len(rows), config.batch_size), 1):
            batch = rows[start : start + config.batch_size]
            total, seen = total + self._step(batch), seen + len(batch)
            rate = seen / max(time.monotonic() - began, 1e-9)
            self.run.emit(StepDone(epoch, step, steps, total / step, rate))
        mean = total / max(steps, 1)
        self.run.progress["losses"].append(round(mean, 6))
        return {"loss": mean, "patches_per_second": seen / max(time.monotonic() - began, 1e-9)}

    def _step(self, batch: torch.Tensor) -> float:
        """One Adam step on the patches ``batch``; returns the batch's mean loss.

        Under torchrun this process computes the loss of its share, weighted so that DDP's average
        of the gradients is the whole batch's; a process whose share is empty (a last batch
        smaller than the number of processes) runs the batch's first patch with weight 0, so that
        it still takes part in the gradients' exchange.
        """
        config, world = self.config, self.run.world
        share = world.share(batch)
        rows = share if len(share) else batch[:1]
        a, b = self._crops(rows)
        target = self.labels.images(rows, self.patches, self.candidates).to(self.run.device)
        loss = fusion_loss(
            self.network(a, b),
            target,
            a,
            b,
            gradient_weight=config.gradient_weight,
            intensity_weight=config.intensity_weight,
            balance_weight=config.balance_weight,
            peak_weight=config.peak_weight,
        )
        if world.distributed:
            loss = loss * world.loss_weight(len(share), len(batch))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if world.distributed:  # the batch's mean loss: the weighted shares' mean over the processes
            return world.sum(loss.detach()).item() / world.size
        return loss.item()

    def between_epochs(self) -> None:
        """After the last epoch of an iteration: its validation and label update, unless done."""
        done, per_iteration = self.run.progress["epochs_done"], self.config.epochs
        finished = done // per_iteration
        if done and done % per_iteration == 0 and len(self.run.progress["log"]) < finished:
            self._end_iteration(finished)

    @torch.inference_mode()
    def _end_iteration(self, iteration: int) -> None:
        """Validation metrics, then (unless this was the last iteration) the SPI label update."""
        self.model.eval()
        entry: dict = {"iteration": iteration, "epochs": self.run.progress["epochs_done"]}
        if iteration < self.config.iterations:
            entry.update(self._update_labels())
        labelled = self.labels.labelled
        entry["labelled"] = int(labelled.sum())
        entry["mean_label_score"] = round(float(self.labels.score[labelled].mean()), 5)
        entry["validation"] = self.run.world.agree(self._validate, main_only=True)
        self.run.progress["log"].append(entry)
        self.labels.version = iteration
        self.run.on_main(
            lambda: save_labels(self.run.out / LABELS_FILE, self.labels, self.run.progress["log"])
        )
        self.run.save(self.model, self.optimizer, self.metadata())
        self.run.message(_describe(entry))

    def _update_labels(self) -> dict[str, int]:
        """Offer the network's output on every patch as its label (``LabelSet.offer``).

        Patches are run ``SCORE_BATCH`` at a time. Under torchrun each process runs its share,
        every ``size``-th patch; each round gathers every process's outputs and scores (a
        contiguous block of ``SCORE_BATCH`` × size patches) and every process offers them in
        patch order, so all hold the same labels.
        """
        config, world, added, replaced = self.config, self.run.world, 0, 0
        total, size = len(self.patches), self.patches.size
        mine = world.share(torch.arange(total))
        everyone = [torch.arange(rank, total, world.size) for rank in range(world.size)]
        for start in range(0, math.ceil(total / world.size), SCORE_BATCH):
            rows = mine[start : start + SCORE_BATCH]
            if len(rows):
                a, b = self._crops(rows)
                output = self.model(a, b)
                scores = label_score(output, a, b, config.detail_weight)
            else:  # this process has no patch left in the last round
                output = torch.zeros(0, 1, size, size, device=self.run.device)
                scores = torch.zeros(0, device=self.run.device)
            if world.distributed:
                parts = [part[start : start + SCORE_BATCH] for part in everyone]
                counts = [len(part) for part in parts]
                rows, order = torch.cat(parts).sort()
                output = world.all_gather(output, counts)[order]
                scores = world.all_gather(scores, counts)[order]
            more, fewer = self.labels.offer(rows, output.cpu(), scores.cpu(), config.admit, config.displace)
            added, replaced = added + more, replaced + fewer
        return {"added": added, "replaced": replaced}

    def _validate(self) -> dict[str, float]:
        """Mean SSIM, Qabf, VIF, SSIM_min and PeakRetention (project metrics, 8-bit scale; a pair
        without peaks counts 0) on the held-out pairs, and the functional share
        Σ|F − MRI| / Σ|functional − MRI| (0: the output copies the MRI, 0.5: the average, 1: the
        functional image). The sums SSIM, Qabf and VIF do not penalise copying the MRI (it scores
        well on all three while it drops the functional signal); SSIM_min and PeakRetention do."""
        if not self.val_images:
            return {}
        totals = dict.fromkeys(("SSIM", "Qabf", "VIF", "SSIM_min", "PeakRetention"), 0.0)
        moved = apart = 0.0
        device = self.run.device
        for i in self.val_images:
            a, b = self.pairs.anatomical[i], self.pairs.functional[i]
            fused = self.model(a[None].to(device), b[None].to(device))[0].cpu()
            moved += float((fused - a).abs().sum())
            apart += float((b - a).abs().sum())
            a8, b8, f8 = (np.rint(x[0].numpy().astype(np.float64) * 255) for x in (a, b, fused))
            ssim_a, ssim_b = ssim_source_term(a8, f8), ssim_source_term(b8, f8)
            totals["SSIM"] += (ssim_a + ssim_b) / 2
            totals["Qabf"] += qabf(a8, b8, f8)
            totals["VIF"] += vif(a8, b8, f8)
            totals["SSIM_min"] += min(ssim_a, ssim_b)
            retention = peak_retention(a8, b8, f8)
            totals["PeakRetention"] += 0.0 if math.isnan(retention) else retention
        means = {name: round(value / len(self.val_images), 4) for name, value in totals.items()}
        return {**means, "functional_share": round(moved / max(apart, 1e-12), 4)}

    def metadata(self) -> dict[str, str]:
        """LWNet's checkpoint metadata (the run adds provenance, config, epochs, wall time)."""
        config = self.config
        return {
            "network": "LWNet",
            "format": CHECKPOINT_FORMAT,
            "parameters": str(sum(p.numel() for p in self.model.parameters())),
            "schedule": (
                f"{config.iterations} SPI iterations x {config.epochs} epochs, Adam lr "
                f"{config.learning_rate}, batch {config.batch_size}, patches {config.patch_size} "
                f"stride {config.stride}, thresholds displace {config.displace} admit {config.admit}, "
                f"loss weights gradient {config.gradient_weight} intensity {config.intensity_weight} "
                f"balance {config.balance_weight} peak {config.peak_weight}, label score detail "
                f"{config.detail_weight}"
            ),
            "initial_label_wins": json.dumps(self.run.progress["initial_wins"]),
            "spi_log": json.dumps(self.run.progress["log"]),
        }


def _describe(entry: dict) -> str:
    """One line for an SPI iteration's log entry."""
    parts = [f"SPI iteration {entry['iteration']}:"]
    if "added" in entry:
        parts.append(f"+{entry['added']} pseudo labels, {entry['replaced']} replaced,")
    parts.append(f"{entry['labelled']} labelled, mean score {entry['mean_label_score']:.4f}")
    if entry["validation"]:
        parts.append("| validation " + " ".join(f"{k} {v:.4f}" for k, v in entry["validation"].items()))
    return " ".join(parts)
