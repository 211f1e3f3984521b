"""SPI's labels: candidate fusions, their scores per patch, and what each patch trains toward.

Candidates are whole-image fusions of every training pair, by registered fusers (through
``pipeline.Fusion``, which picks a network's checkpoint per pair) and by other tools (folders);
a patch's candidate is its crop. ``initial_labels`` scores every candidate on every patch with
``losses.label_score`` and gives a reproducible share of the patches their best candidate.
``LabelSet.offer`` is SPI's update rule: the network's outputs are admitted as pseudo labels of
unlabelled patches, or displace weaker labels. ``save_labels``/``read_labels`` keep the label
set beside the run's state, so a resumed run trains toward the same labels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from medfuse_cli.errors import CheckpointError, InputError
from medfuse_cli.fusers.registry import CT, FUNCTIONAL
from medfuse_cli.pipeline import Fusion
from medfuse_cli.training.losses import label_score
from medfuse_cli.training.patches import PairSet, Patches, read_label_folder
from medfuse_cli.weights import read_safetensors, write_checkpoint

NO_LABEL = -1  # label source of a patch without a label
NETWORK_LABEL = -2  # label source of a pseudo label (a network output)
SCORE_BATCH = 64  # patches scored or run per call, to bound memory


@dataclass
class LabelSet:
    """Per patch (P patches): its label's source and score, and the bar for admission.

    Attributes:
        source: (P,) int64: candidate index, ``NETWORK_LABEL`` or ``NO_LABEL``.
        score: (P,) float32: label score of the current label (-inf without one).
        best_candidate: (P,) float32: the best candidate's score, what an output must reach
            (× ``admit``) to become an unlabelled patch's pseudo label.
        pseudo: patch row -> (1, S, S) float32 network output in [0, 1] used as its label (CPU).
        version: SPI updates applied so far.
    """

    source: Tensor
    score: Tensor
    best_candidate: Tensor
    pseudo: dict[int, Tensor]
    version: int = 0

    @property
    def labelled(self) -> Tensor:
        """(P,) bool: which patches have a label."""
        return self.source != NO_LABEL

    def images(self, rows: Tensor, patches: Patches, candidates: list[list[Tensor]]) -> Tensor:
        """The labels of patches ``rows`` (all labelled): (len(rows), 1, S, S) float32, CPU."""
        images = []
        for row in rows.tolist():
            k = int(self.source[row])
            if k == NETWORK_LABEL:
                images.append(self.pseudo[row])
            else:
                images.append(patches.crop(candidates[k], torch.tensor([row]))[0])
        return torch.stack(images)

    def offer(
        self, rows: Tensor, outputs: Tensor, scores: Tensor, admit: float, displace: float
    ) -> tuple[int, int]:
        """Offer the network's outputs for patches ``rows`` as their labels.

        An unlabelled patch takes its output when it scores at least ``admit`` × the patch's
        best candidate; a labelled patch takes it when it scores at least ``displace`` × its
        label.

        Args:
            rows: (B,) int64 patch rows.
            outputs: (B, 1, S, S) float32 outputs in [0, 1] (CPU).
            scores: (B,) float32 their label scores.
            admit, displace: the thresholds above (ratios, >= 0).

        Returns:
            How many outputs were admitted and how many displaced a label.
        """
        added = replaced = 0
        for i, row in enumerate(rows.tolist()):
            unlabelled = int(self.source[row]) == NO_LABEL
            if unlabelled and scores[i] >= admit * self.best_candidate[row]:
                added += 1
            elif not unlabelled and scores[i] >= displace * self.score[row]:
                replaced += 1
            else:
                continue
            self.source[row] = NETWORK_LABEL
            self.score[row] = scores[i]
            self.pseudo[row] = outputs[i].clone()
        return added, replaced


def candidate_labels(
    pairs: PairSet,
    fusers: tuple[str, ...],
    folders: dict[str, str],
    device: torch.device,
) -> tuple[list[list[Tensor]], list[str]]:
    """Whole-image candidate labels of every training pair, and their names.

    Args:
        pairs: the training pairs.
        fusers: registered fuser names; each fuses every pair on ``device`` (with the
            session's torch threads, see ``training.run``).
        folders: NAME -> folder of another tool's fusions of the pairs (``--label-dir``).
        device: where the fusers run.

    Returns:
        Per candidate (fusers first, then folders), one (1, H, W) float32 Y tensor in [0, 1]
        per pair on the CPU; and the candidates' names.

    Raises:
        InputError: an unknown fuser, or a folder that is missing or does not hold a fused
            image of every pair (the message names ``--label-dir``).
        CheckpointError: a network fuser's checkpoint cannot be loaded.
    """
    read = {}  # folders first: a missing one fails before minutes of fusing
    for name, folder in folders.items():
        try:
            read[name] = read_label_folder(Path(folder), pairs)
        except InputError as exc:
            raise InputError(f"--label-dir {name}={folder}: {exc}") from None
    fused = [_fuse_all(Fusion(name, device), pairs) for name in fusers]
    return [*fused, *read.values()], [*fusers, *read]


@torch.inference_mode()
def _fuse_all(fusion: Fusion, pairs: PairSet) -> list[Tensor]:
    """Fuse every whole pair (networks with the checkpoint for the pair's kind)."""
    fused = []
    for a, b, color in zip(pairs.anatomical, pairs.functional, pairs.second_is_color, strict=True):
        module = fusion.module_for(FUNCTIONAL if color else CT)
        output = module(a[None].to(fusion.device), b[None].to(fusion.device))
        fused.append(output[0].clamp(0, 1).cpu())
    return fused


@torch.inference_mode()
def initial_labels(
    pairs: PairSet,
    patches: Patches,
    candidates: list[list[Tensor]],
    detail_weight: float,
    labelled_fraction: float,
    seed: int,
    device: torch.device,
) -> LabelSet:
    """Score every candidate on every patch; a reproducible share of patches takes its best.

    Args:
        pairs, patches: the training pairs and their patches.
        candidates: as ``candidate_labels`` returns them.
        detail_weight: weight of the detail term in the label score.
        labelled_fraction: share of patches labelled now, in (0, 1] (at least one patch).
        seed: the labelled patches are drawn with a generator seeded ``seed + 1``.
        device: where scores are computed.

    Returns:
        The label set: labelled patches with their best candidate, the others without.
    """
    scores = torch.empty(len(candidates), len(patches))
    for start in range(0, len(patches), SCORE_BATCH):
        rows = torch.arange(start, min(start + SCORE_BATCH, len(patches)))
        a = patches.crop(pairs.anatomical, rows).to(device)
        b = patches.crop(pairs.functional, rows).to(device)
        for k, candidate in enumerate(candidates):
            fused = patches.crop(candidate, rows).to(device)
            scores[k, rows] = label_score(fused, a, b, detail_weight).cpu()
    best, best_index = scores.max(dim=0)
    order = torch.randperm(len(patches), generator=torch.Generator().manual_seed(seed + 1))
    labelled = torch.zeros(len(patches), dtype=torch.bool)
    labelled[order[: max(1, round(len(patches) * labelled_fraction))]] = True
    source = torch.where(labelled, best_index, torch.full_like(best_index, NO_LABEL))
    score = torch.where(labelled, best, torch.full_like(best, -math.inf))
    return LabelSet(source=source, score=score, best_candidate=best, pseudo={})


def save_labels(path: Path, labels: LabelSet, log: list[dict]) -> None:
    """Write the label set and the SPI log it belongs to, atomically (safetensors + JSON).

    Raises:
        OSError: the file cannot be written.
    """
    rows = sorted(labels.pseudo)
    tensors = {"source": labels.source, "score": labels.score, "rows": torch.tensor(rows, dtype=torch.int64)}
    if rows:
        tensors["pseudo"] = torch.stack([labels.pseudo[r] for r in rows])
    write_checkpoint(path, tensors, {"version": str(labels.version), "log": json.dumps(log)})


def read_labels(path: Path, best_candidate: Tensor) -> tuple[LabelSet, list[dict]]:
    """Read what ``save_labels`` wrote; ``best_candidate`` is recomputed, not stored.

    Returns:
        The label set and the SPI log saved with it (it may be one update ahead of the
        training state's, when a run stopped between the two writes).

    Raises:
        CheckpointError: the file is missing, damaged (its tensor digest), or not a label set of
            this run (a tensor or header field missing, or sizes that do not fit the patches).
    """
    # read_safetensors, not read_checkpoint: unlabelled patches score -inf, which it refuses.
    loaded = read_safetensors(path)
    tensors, metadata = loaded.tensors, loaded.metadata
    try:
        rows = tensors["rows"].tolist()
        pseudo = dict(zip(rows, tensors["pseudo"], strict=True)) if rows else {}
        labels = LabelSet(
            source=tensors["source"],
            score=tensors["score"],
            best_candidate=best_candidate,
            pseudo=pseudo,
            version=int(metadata["version"]),
        )
        log = json.loads(metadata["log"])
    except (KeyError, ValueError) as exc:  # ValueError: zip(strict=True), int(), json
        raise CheckpointError(f"{path} is not an SPI label file medfuse wrote ({_what(exc)})") from None
    if labels.source.shape != best_candidate.shape or labels.score.shape != best_candidate.shape:
        raise CheckpointError(
            f"{path} labels {labels.source.numel()} patches, this run has {best_candidate.numel()}"
        )
    return labels, log


def _what(exc: Exception) -> str:
    """A KeyError's missing name, or another error's message."""
    return f"no {exc.args[0]}" if isinstance(exc, KeyError) else str(exc)
