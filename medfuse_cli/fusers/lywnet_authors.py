"""The LYWNet authors' checkpoint, read into our module names (for the identity proof).

The authors' 2023 code (GitHub 177659/LYWNet, commit a33ed69) names its modules differently from
ours and saves tensors its forward pass never uses, and BatchNorm statistics that its inference
never reads (it normalised per image, see ``medfuse_cli.fusers.lywnet``). This module maps their
names to ours, so strict loading still reports anything unexpected.
"""

from __future__ import annotations

import torch
from torch import nn

AUTHORS_FORMAT = "lywnet-authors-2023"

# The authors' module names -> ours (prefix rewrite; the rest of each name is unchanged).
_AUTHORS_NAMES = {
    "Extraction.conv0.": "extractor.preprocessor.conv_a.",
    "Extraction.conv1.": "extractor.preprocessor.conv_b.",
    "Extraction.conv2.": "extractor.preprocessor.conv_c.",
    "Extraction.conv3.": "extractor.preprocessor.conv_merge.",
    "Extraction.bn.": "extractor.preprocessor.norm.",
    "Extraction.block.norm.": "extractor.block.norm.",
    "Extraction.block.block1.conv1.": "extractor.block.pyramid.conv.",
    "Extraction.block.block1.norm.": "extractor.block.pyramid.norm.",
    "Extraction.block.block2.basicblock.": "extractor.block.basic.block.",
    "Extraction.block.block3.bottleneck.": "extractor.block.bottleneck.block.",
    "Extraction.block.ppm.conv0.": "extractor.block.ppm.proj.",
    "Extraction.block.ppm.conv1.": "extractor.block.ppm.conv.",
    "Extraction.block.ppm.conv2.": "extractor.block.ppm.merge.",
    "Extraction.block.ppm.norm.": "extractor.block.ppm.norm.",
    "Reconstruction.conv0.": "reconstructor.conv1.",
    "Reconstruction.conv1.": "reconstructor.conv2.",
    "Reconstruction.conv2.": "reconstructor.conv3.",
}
# Modules the authors defined but never call in the forward pass.
_AUTHORS_UNUSED_MODULES = (
    "Extraction.block.conv0.",
    "Extraction.block.conv1.",
    "Extraction.block.bag.conv1.",
    "Extraction.block.bag.norm.",
)
# BatchNorm buffers: statistics their inference never used (it normalised per image).
_BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def from_authors_names(tensors: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename the authors' tensors to ``model``'s, dropping the ones their forward pass never uses.

    Only listed names are dropped: a name that is neither mapped nor listed is passed through
    unchanged, so strict loading reports it as unexpected. ``model`` is a ``LYWNet``: its
    normalisation modules (``nn.BatchNorm2d`` subclasses) are where statistics are dropped.
    """
    norms = {name for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)}
    renamed = {}
    for name, tensor in tensors.items():
        if name.startswith(_AUTHORS_UNUSED_MODULES):
            continue
        prefix = next((p for p in _AUTHORS_NAMES if name.startswith(p)), None)
        ours = _AUTHORS_NAMES[prefix] + name[len(prefix) :] if prefix else name
        module, _, leaf = ours.rpartition(".")
        if leaf in _BATCHNORM_BUFFERS and module in norms:
            continue
        renamed[ours] = tensor
    return renamed
