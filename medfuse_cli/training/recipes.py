"""Named training recipes: the one place for training defaults (torchvision's ``meta["recipe"]``).

A recipe is a complete config for one trainer plus the thread count it was run with.
``medfuse train --recipe NAME`` starts from it and every option given on the command line
replaces the recipe's value; without ``--recipe`` each network has a default recipe
(``DEFAULT_RECIPES``). ``lwnet-functional`` and ``lwnet-ct`` are the recipes of the shipped
LWNet checkpoints (their ``config`` metadata; a test checks they agree), so
``medfuse train ../shared/data/harvard/CT-MRI/train --recipe lwnet-ct -o runs/x`` retrains
``lwnet.ct`` (bit for bit only with the code it was trained with: since then the ``laplacian``
rule and LWNet's eval-mode forward have changed, which moves SPI's later label updates a little).

Folders in a recipe (SPI's label folders, LYWNet's monitor folders) are relative to the folder
the command runs in: the project's checkout beside ``../shared``, where the shipped runs were
made. Elsewhere, give ``--label-dir`` or ``--monitor``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from medfuse_cli.errors import InputError
from medfuse_cli.training.config import Config, LYWNetConfig, SPIConfig

_LABELS = "../shared/labels"
_TEST_SPLITS = tuple(f"../shared/data/harvard/{pair}-MRI/test" for pair in ("SPECT", "PET", "CT"))


@dataclass(frozen=True)
class Recipe:
    """A named, complete set of training defaults.

    Attributes:
        name: what ``--recipe`` takes.
        model: the network it trains (``--model``).
        summary: one line: what it is for and where its values come from.
        config: the trainer's config.
        threads: torch CPU threads the recipe runs with (None: torch's default, all cores).
        reproduces: the shipped checkpoint it trained (``medfuse models``), or None.
    """

    name: str
    model: str
    summary: str
    config: Config
    threads: int | None = None
    reproduces: str | None = None


_LWNET_FUNCTIONAL = SPIConfig(
    label_fusers=("average", "laplacian", "maximum"),
    label_dirs={"IFCNN-MAX": f"{_LABELS}/IFCNN-MAX", "GeSeNet": f"{_LABELS}/GeSeNet"},
    iterations=5,
    epochs=3,
    batch_size=8,
    learning_rate=1e-3,
    patch_size=120,
    stride=68,
    labelled_fraction=0.5,
    val_fraction=0.1,
    displace=1.10,
    admit=1.00,
    # Intensity 2.0 and detail 0.1: the design log's run e9 (MODEL_CARD.md); gradient 1.0,
    # intensity 0, detail 0.25 trained this network to copy the MRI. Peak 0.5 with the gradient
    # term off: issue 15's run f-p05g0, which keeps the SPECT hot spots (PeakRetention 0.56 ->
    # 0.93 on the validation pairs) and gives the functional image its share of SSIM without
    # falling below the laplacian rule's Qabf.
    gradient_weight=0.0,
    intensity_weight=2.0,
    detail_weight=0.1,
    min_mean=0.02,
    seed=0,
    balance_weight=0.0,
    peak_weight=0.5,
)
_LYWNET_AUTHORS = LYWNetConfig(
    epochs=1000,
    batch_size=16,
    learning_rate=1e-4,
    lr_schedule="constant",
    min_lr=0.0,
    size=32,
    seed=0,
    monitor=(),
    train_norm="batch",
    init="",
    crop_scale="whole",
)

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "lwnet-functional",
            "lwnet",
            "SPI, 5 iterations x 3 epochs on SPECT-MRI train: the shipped lwnet.functional",
            _LWNET_FUNCTIONAL,
            threads=1,
            reproduces="lwnet.functional",
        ),
        Recipe(
            "lwnet-ct",
            "lwnet",
            "SPI, 4 iterations x 3 epochs on CT-MRI train: the shipped lwnet.ct",
            # Issue 15's run c-b1p1i0: the intensity term toward max(MRI, CT) made large bright
            # CT areas hide the MRI; the balance term and the peak term (which keeps the bone)
            # replace it.
            replace(
                _LWNET_FUNCTIONAL,
                iterations=4,
                gradient_weight=0.5,
                intensity_weight=0.0,
                balance_weight=1.0,
                peak_weight=1.0,
            ),
            threads=1,
            reproduces="lwnet.ct",
        ),
        Recipe(
            "lywnet-authors",
            "lywnet",
            "the authors' schedule: 1000 epochs, Adam 1e-4 constant, batch 16, 32 px (a GPU's job: "
            "--device cuda)",
            _LYWNET_AUTHORS,
        ),
        Recipe(
            "lywnet-cpu",
            "lywnet",
            "ours for a CPU: 16 epochs, cosine from 1e-3 to 1e-5, held-out loss on the Harvard test splits "
            "(the shipped lywnet.harvard's first 16 epochs; the model card has the commands that continued it)",
            replace(
                _LYWNET_AUTHORS,
                epochs=16,
                learning_rate=1e-3,
                lr_schedule="cosine",
                min_lr=1e-5,
                monitor=_TEST_SPLITS,
            ),
            threads=1,
        ),
    )
}

DEFAULT_RECIPES = {"lwnet": "lwnet-functional", "lywnet": "lywnet-authors"}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        InputError: no recipe has that name (the message lists them).
    """
    if name not in RECIPES:
        raise InputError(f"unknown recipe '{name}' (choose from {', '.join(RECIPES)})")
    return RECIPES[name]
