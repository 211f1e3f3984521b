"""Score fusion methods on folders of pairs: the core of ``medfuse evaluate``.

A pair folder holds ``MRI/`` and one of ``SPECT/``, ``PET/`` or ``CT/`` with images paired by
file name. A method is a registered fuser (run here) or a folder of images another tool fused
(same file names). Every metric sees 8-bit planes on 0..255:

- A: the MRI, B: the Y of the functional image (BT.601 full range from ``medfuse_cli.color``,
  rounded to the nearest level) or the CT;
- F: the Y of the fused image *as its 8-bit file holds it*. For a fuser run here the fused Y
  is put back together with the functional chroma and quantised exactly as ``medfuse fuse``
  writes it, so ``--model X`` and ``--fused X=<folder medfuse fuse wrote>`` give the same numbers.

Our Y rounds to the nearest level; PIL's ``convert('YCbCr')``, which the metric reference anchors
use, truncates, so on coloured pixels our B and F are often one level above PIL's (never more).
Both the sources and every method's output go through the same conversion, so comparisons
between methods are unaffected.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medfuse_cli.atomic import write_atomically
from medfuse_cli.color import split_luma
from medfuse_cli.errors import MedfuseError
from medfuse_cli.fusers.registry import get_fuser_spec, list_fusers
from medfuse_cli.io import list_images, pair_folders, read_image, to_integer
from medfuse_cli.metrics import LWNET_METRICS, LYWNET_METRICS, METRICS, compute_metrics, resolve_metric_names
from medfuse_cli.pipeline import Fusion, Pair, compose, load_pair

MODALITIES = ("SPECT", "PET", "CT")
# The default: every metric either paper reports, LWNet's order first.
PAPER_METRICS = tuple(dict.fromkeys(LWNET_METRICS + LYWNET_METRICS))
METRIC_PRESETS = {
    "paper": PAPER_METRICS,
    "lwnet": LWNET_METRICS,
    "lywnet": LYWNET_METRICS,
    "all": tuple(METRICS),
}
FUSE_BATCH = 8


@dataclass(frozen=True)
class PairSet:
    """One folder of pairs: its kind ("SPECT-MRI"), the label results are keyed by, its pairs."""

    kind: str
    label: str
    folder: Path
    pairs: tuple[tuple[str, Path, Path], ...]  # (stem, MRI file, functional file)


@dataclass(frozen=True)
class Method:
    """A registered fuser to run, or a folder of images fused elsewhere."""

    label: str
    model: str | None = None
    fused_dir: Path | None = None


@dataclass
class MethodScores:
    """Per-image scores of one method on one pair set, keyed by the MRI's file name."""

    per_image: dict[str, dict[str, float]] = field(default_factory=dict)

    def values(self, metric: str) -> np.ndarray:
        """The finite scores of one metric (NaN/inf, e.g. PSNR of a perfect copy, are left out)."""
        v = np.array([scores[metric] for scores in self.per_image.values()], dtype=np.float64)
        return v[np.isfinite(v)]

    def mean(self, metric: str) -> float:
        v = self.values(metric)
        return float(v.mean()) if v.size else math.nan

    def std(self, metric: str) -> float:
        """Sample standard deviation over images (N - 1, as MATLAB's ``std``); 0 for one image."""
        v = self.values(metric)
        return float(v.std(ddof=1)) if v.size > 1 else (0.0 if v.size else math.nan)


@dataclass
class PairSetResult:
    """All methods' scores on one pair set, plus the methods that could not run and why."""

    pair_set: PairSet
    metrics: list[str]
    methods: dict[str, MethodScores] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def best(self, metric: str) -> str | None:
        """The method with the best mean for ``metric`` (direction from the registry); None
        unless at least two methods have a mean to compare."""
        means = {label: s.mean(metric) for label, s in self.methods.items() if math.isfinite(s.mean(metric))}
        if len(means) < 2:
            return None
        pick = max if METRICS[metric].higher_is_better else min
        return pick(means, key=means.__getitem__)

    def to_json(self) -> dict:
        """The ``--json`` object: metrics, and per method n, mean, std and per-image scores."""
        return {
            "metrics": list(self.metrics),
            "methods": {
                label: {
                    "n": len(scores.per_image),
                    "mean": {m: _finite_or_none(scores.mean(m)) for m in self.metrics},
                    "std": {m: _finite_or_none(scores.std(m)) for m in self.metrics},
                    "per_image": {
                        image: {m: _finite_or_none(v) for m, v in values.items()}
                        for image, values in scores.per_image.items()
                    },
                }
                for label, scores in self.methods.items()
            },
        }


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN or Infinity: those become null."""
    return float(value) if math.isfinite(value) else None


def parse_metrics(spec: str | None) -> list[str]:
    """``--metrics``: a preset (paper, lwnet, lywnet, all) or a comma-separated list of names."""
    if spec is None:
        return list(PAPER_METRICS)
    key = spec.strip().lower()
    if key in METRIC_PRESETS:
        return list(METRIC_PRESETS[key])
    return resolve_metric_names(name for name in spec.split(",") if name.strip())


def parse_fused(specs: Iterable[str]) -> list[Method]:
    """``--fused LABEL=DIR`` options as methods; the folder must exist."""
    methods = []
    for spec in specs:
        label, sep, folder = spec.partition("=")
        if not sep or not label.strip() or not folder.strip():
            raise MedfuseError(f"--fused takes LABEL=DIR, got '{spec}'")
        path = Path(folder.strip())
        if not path.is_dir():
            raise MedfuseError(f"--fused {label.strip()}: folder not found: {path}")
        methods.append(Method(label.strip(), fused_dir=path))
    return methods


def choose_methods(models: Iterable[str], fused: Iterable[str]) -> tuple[list[Method], bool]:
    """The methods to score and whether the user named them (else every registered fuser)."""
    models = list(models)
    for name in models:
        get_fuser_spec(name)  # an unknown name fails here, before any image is read
    methods = [Method(name, model=name) for name in models] + parse_fused(fused)
    labels = [m.label for m in methods]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise MedfuseError(f"method label used twice: {', '.join(duplicates)}")
    if methods:
        return methods, True
    return [Method(spec.name, model=spec.name) for spec in list_fusers()], False


def _pair_set_at(folder: Path) -> PairSet | None:
    """The pair set in ``folder`` if it holds MRI/ and exactly one functional folder."""
    if not (folder / "MRI").is_dir():
        return None
    present = [m for m in MODALITIES if (folder / m).is_dir()]
    if len(present) != 1:
        found = ", ".join(f"{m}/" for m in present) or "none"
        raise MedfuseError(f"{folder} must hold MRI/ and exactly one of SPECT/, PET/, CT/ (found {found})")
    modality = present[0]
    pairs = tuple(pair_folders(folder / "MRI", folder / modality))
    kind = f"{modality}-MRI"
    return PairSet(kind=kind, label=kind, folder=folder, pairs=pairs)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_pair_sets(root: Path) -> tuple[list[PairSet], bool]:
    """The pair sets under ``root`` and whether ``root`` is a parent of several.

    ``root`` itself, or its subfolders one or two levels down (``harvard/`` holding
    ``SPECT-MRI/test/``...). Where a folder holds both ``train/`` and ``test/`` pair sets only
    ``test/`` is scored: reported numbers come from the test split. Labels are the pair kinds,
    or the relative paths when a kind occurs twice.
    """
    root = Path(root)
    if not root.is_dir():
        raise MedfuseError(f"pair folder not found: {root}")
    direct = _pair_set_at(root)
    if direct is not None:
        return [direct], False
    found: list[PairSet] = []
    for child in _subfolders(root):
        at_child = _pair_set_at(child)
        if at_child is not None:
            found.append(at_child)
            continue
        below = [s for s in (_pair_set_at(g) for g in _subfolders(child)) if s is not None]
        names = {s.folder.name for s in below}
        if {"train", "test"} <= names:
            below = [s for s in below if s.folder.name != "train"]
        found.extend(below)
    if not found:
        raise MedfuseError(
            f"no pairs in {root}: expected MRI/ and one of SPECT/, PET/, CT/ there or one or two levels down"
        )
    kinds = [s.kind for s in found]
    relabelled = [
        s
        if kinds.count(s.kind) == 1
        else PairSet(s.kind, s.folder.relative_to(root).as_posix(), s.folder, s.pairs)
        for s in found
    ]
    return relabelled, True


def luma8(pixels: np.ndarray) -> np.ndarray:
    """Y on 0..255 (float64 integer levels) of an image in [0, 1], quantised to 8 bits first."""
    quantised = to_integer(pixels, 8).astype(np.float32) / 255.0
    y, _ = split_luma(quantised)
    return np.rint(y.astype(np.float64) * 255.0)


@dataclass(frozen=True)
class _Sources:
    pair: Pair
    a: np.ndarray  # MRI, 0..255
    b: np.ndarray  # functional Y or CT, 0..255
    file_name: str


def _load_sources(pair_set: PairSet) -> list[_Sources]:
    sources = []
    for stem, mri, functional in pair_set.pairs:
        pair = load_pair(stem, mri, functional)
        a = np.rint(pair.anatomical_y.astype(np.float64) * 255.0)
        b = np.rint(pair.functional_y.astype(np.float64) * 255.0)
        sources.append(_Sources(pair, a, b, mri.name))
    return sources


def _fused_folder_for(method: Method, pair_set: PairSet, root: Path) -> Path:
    """Where a ``--fused`` method's images for this pair set are: DIR/<relative path>, DIR/<kind>
    or DIR itself, whichever exists first."""
    base = method.fused_dir or Path()
    relative = pair_set.folder.relative_to(root) if pair_set.folder != root else Path()
    for candidate in (base / relative, base / pair_set.kind, base):
        if candidate.is_dir():
            return candidate
    return base


def _read_fused(method: Method, pair_set: PairSet, root: Path, sources: list[_Sources]) -> list[np.ndarray]:
    folder = _fused_folder_for(method, pair_set, root)
    stems = {p.stem: p for p in list_images(folder)}
    missing = [s.pair.name for s in sources if s.pair.name not in stems]
    if missing:
        raise MedfuseError(
            f"--fused {method.label}: {len(missing)} fused image(s) missing in {folder} (e.g. {', '.join(missing[:3])})"
        )
    planes = []
    for s in sources:
        image = read_image(stems[s.pair.name])
        if image.pixels.shape[:2] != s.a.shape:
            raise MedfuseError(
                f"--fused {method.label}: {image.path} is {image.size[0]}x{image.size[1]}, "
                f"its sources are {s.a.shape[1]}x{s.a.shape[0]}"
            )
        planes.append(luma8(image.pixels))
    return planes


def _fuse(fusion: Fusion, sources: list[_Sources]) -> list[np.ndarray]:
    planes = []
    for start in range(0, len(sources), FUSE_BATCH):
        batch = sources[start : start + FUSE_BATCH]
        fused = fusion.fuse_pairs([s.pair for s in batch])
        planes.extend(luma8(compose(s.pair, y)) for s, y in zip(batch, fused, strict=True))
    return planes


def evaluate(
    pair_sets: list[PairSet],
    root: Path,
    methods: list[Method],
    metrics: list[str],
    device: torch.device,
    methods_named: bool = True,
    on_progress: Callable[[int], None] = lambda images: None,
    on_skip: Callable[[str, str], None] = lambda label, reason: None,
    workers: int | None = None,
) -> list[PairSetResult]:
    """Score every method on every pair set; ``on_progress(n)`` reports n more images done.

    A fuser that cannot run (e.g. a network whose checkpoint is unavailable) is an error when
    the user named it, and is skipped, with ``on_skip(label, reason)``, when it was only part
    of the default line-up. Metrics run on worker threads (numpy releases the GIL); the
    FMI family dominates the cost at a few tenths of a second per image and variant.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    fusions: dict[str, Fusion] = {}
    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for pair_set in pair_sets:
            sources = _load_sources(pair_set)
            result = PairSetResult(pair_set, list(metrics))
            for method in methods:
                try:
                    planes = _method_planes(method, pair_set, root, sources, fusions, device)
                except MedfuseError as exc:
                    if methods_named or method.model is None:
                        raise
                    result.skipped[method.label] = str(exc)
                    on_skip(f"{method.label} on {pair_set.label}", str(exc))
                    on_progress(len(sources))
                    continue

                def score(job: tuple[_Sources, np.ndarray]) -> dict[str, float]:
                    src, f = job
                    values = compute_metrics(src.a, src.b, f, metrics)
                    on_progress(1)
                    return values

                scores = MethodScores()
                for src, values in zip(
                    sources, pool.map(score, zip(sources, planes, strict=True)), strict=True
                ):
                    scores.per_image[src.file_name] = values
                result.methods[method.label] = scores
            results.append(result)
    return results


def _method_planes(
    method: Method,
    pair_set: PairSet,
    root: Path,
    sources: list[_Sources],
    fusions: dict[str, Fusion],
    device: torch.device,
) -> list[np.ndarray]:
    """The fused Y planes (0..255) of one method on one pair set: fused here, or read."""
    if method.model is None:
        return _read_fused(method, pair_set, root, sources)
    if method.model not in fusions:
        fusions[method.model] = Fusion(method.model, device)
    return _fuse(fusions[method.model], sources)


def results_json(results: list[PairSetResult], parent: bool) -> dict:
    """The ``--json`` document: one result object, or ``{"pairs": {label: object}}`` for a parent."""
    if parent:
        return {"pairs": {r.pair_set.label: r.to_json() for r in results}}
    return results[0].to_json()


def format_value(value: float) -> str:
    """A score with as many decimals as its size deserves (Qcv runs to thousands)."""
    if not math.isfinite(value):
        return "-" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    magnitude = abs(value)
    decimals = 2 if magnitude >= 100 else 3 if magnitude >= 10 else 4
    return f"{value:.{decimals}f}"


def arrow(metric: str) -> str:
    return "↑" if METRICS[metric].higher_is_better else "↓"


def _markdown(results: list[PairSetResult]) -> str:
    lines = [
        "# medfuse evaluate",
        "",
        "Mean ± standard deviation over images. ↑ higher is better, ↓ lower is better; **bold** is the best mean.",
    ]
    for r in results:
        n = len(r.pair_set.pairs)
        lines += ["", f"## {r.pair_set.label} ({n} pairs, {r.pair_set.folder})", ""]
        lines.append("| Method | " + " | ".join(f"{m} {arrow(m)}" for m in r.metrics) + " |")
        lines.append("|---" * (len(r.metrics) + 1) + "|")
        best = {m: r.best(m) for m in r.metrics}
        for label, scores in r.methods.items():
            cells = []
            for m in r.metrics:
                cell = f"{format_value(scores.mean(m))} ± {format_value(scores.std(m))}"
                cells.append(f"**{cell}**" if best[m] == label else cell)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += [f"\nSkipped {label}: {reason}" for label, reason in r.skipped.items()]
    return "\n".join(lines) + "\n"


def write_reports(results: list[PairSetResult], parent: bool, out_dir: Path) -> list[Path]:
    """Write per_image.csv, summary.csv, summary.md and summary.json into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    per_image = io.StringIO()
    summary = io.StringIO()
    per_image_writer = csv.writer(per_image, lineterminator="\n")
    summary_writer = csv.writer(summary, lineterminator="\n")
    metrics = list(dict.fromkeys(m for r in results for m in r.metrics))
    per_image_writer.writerow(["pairs", "method", "image", *metrics])
    summary_writer.writerow(["pairs", "method", "metric", "higher_is_better", "n", "mean", "std", "best"])
    for r in results:
        for label, scores in r.methods.items():
            for image, values in scores.per_image.items():
                per_image_writer.writerow(
                    [r.pair_set.label, label, image, *(repr(values[m]) for m in metrics)]
                )
            for m in r.metrics:
                summary_writer.writerow(
                    [
                        r.pair_set.label,
                        label,
                        m,
                        METRICS[m].higher_is_better,
                        len(scores.values(m)),
                        repr(scores.mean(m)),
                        repr(scores.std(m)),
                        r.best(m) == label,
                    ]
                )
    files = {
        "per_image.csv": per_image.getvalue(),
        "summary.csv": summary.getvalue(),
        "summary.md": _markdown(results),
        "summary.json": json.dumps(results_json(results, parent), indent=2) + "\n",
    }
    written = []
    for name, text in files.items():
        path = out_dir / name
        write_atomically(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
        written.append(path)
    return written
