"""LYWNet: the authors' function reproduced (with ../shared), and its contracts (without)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medfuse_cli.errors import MedfuseError
from medfuse_cli.fusers import create_fuser, get_fuser_spec, lywnet, lywnet_authors
from medfuse_cli.fusers.lywnet import OWN_FORMAT, PER_IMAGE, PER_PAIR, ImageNorm, LYWNet, load_lywnet
from medfuse_cli.fusers.lywnet_authors import AUTHORS_FORMAT
from medfuse_cli.fusers.registry import CT, FUNCTIONAL
from medfuse_cli.io import to_integer
from medfuse_cli.pipeline import Fusion, load_pair
from medfuse_cli.weights import LoadedCheckpoint, read_checkpoint, write_checkpoint

SHARED = Path(os.environ.get("MEDFUSE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
OFFICIAL = SHARED / "reference" / "lywnet-official"
OFFICIAL_WEIGHTS = OFFICIAL / "weights.safetensors"
PAIRS = {"CT-MRI": "CT", "PET-MRI": "PET", "SPECT-MRI": "SPECT"}


def _reference_cases() -> list[tuple[str, str]]:
    return [
        (pair, npy.stem) for pair in PAIRS for npy in sorted((OFFICIAL / pair / "test" / "Y").glob("*.npy"))
    ]


needs_official = pytest.mark.skipif(
    not OFFICIAL_WEIGHTS.is_file(),
    reason=f"the authors' LYWNet reference is not at {OFFICIAL} (set MEDFUSE_SHARED)",
)


@pytest.fixture(scope="module")
def official() -> LYWNet:
    return load_lywnet(read_checkpoint(OFFICIAL_WEIGHTS))


def _inputs(pair: str, name: str) -> tuple[Path, Path]:
    test = SHARED / "data" / "harvard" / pair / "test"
    return test / "MRI" / f"{name}.png", test / PAIRS[pair] / f"{name}.png"


def _authors_y(path: Path, mode: str) -> torch.Tensor:
    """Y as the authors' test.py makes it: Pillow's 8-bit conversion ('L' for MRI, 'YCbCr' else)."""
    image = np.asarray(Image.open(path).convert(mode))
    y = image if mode == "L" else image[..., 0]
    return torch.from_numpy(y.astype(np.float32) / 255.0)[None, None]


@needs_official
def test_official_weights_reproduce_the_authors_outputs(official: LYWNet) -> None:
    """Same inputs as the authors' code -> their raw float output within 1e-4, 8-bit within 1.

    Their test.py reads the MRI with Pillow's convert('L') and takes Y from Pillow's
    convert('YCbCr') (8-bit, integer arithmetic), and turns the output into 8 bits by truncation
    (np.uint8 after clipping); the inputs here are made the same way.
    """
    cases = _reference_cases()
    assert len(cases) >= 12
    for pair, name in cases:
        mri, second = _inputs(pair, name)
        with torch.no_grad():
            fa = official.extractor(_authors_y(mri, "L"))
            fb = official.extractor(_authors_y(second, "YCbCr"))
            raw = official.reconstructor(official.fusion(fa, fb))[0, 0].numpy()
        expected = np.load(OFFICIAL / pair / "test" / "Y" / f"{name}.npy")
        assert np.squeeze(expected).shape == raw.shape  # stored as (H, W) or (1, H, W)
        assert np.abs(raw - np.squeeze(expected)).max() <= 1e-4, f"{pair}/{name}"
        ours8 = np.clip(raw * 255.0, 0, 255).astype(np.uint8).astype(int)
        theirs8 = np.asarray(Image.open(OFFICIAL / pair / "test" / "Y" / f"{name}.png")).astype(int)
        assert (np.abs(ours8 - theirs8) <= 1).mean() >= 0.999, f"{pair}/{name}"


@needs_official
def test_medfuse_fuse_path_matches_the_reference_y(official: LYWNet) -> None:
    """Through ``medfuse fuse``'s own flow (float BT.601 Y, rounding to 8 bits) on one pair per kind.

    Our Y is exact float BT.601 where theirs is Pillow's 8-bit Y, and we round where they
    truncate; both differences stay within one gray level on at least 99.9 % of pixels.
    """
    fusion = Fusion("lywnet", torch.device("cpu"), weights=OFFICIAL_WEIGHTS)
    for pair in PAIRS:
        name = next(n for p, n in _reference_cases() if p == pair)
        loaded = load_pair(name, *_inputs(pair, name))
        fused = to_integer(fusion.fuse_y(loaded.anatomical_y, loaded.functional_y, loaded.kind), 8)
        theirs = np.asarray(Image.open(OFFICIAL / pair / "test" / "Y" / f"{name}.png")).astype(int)
        assert (np.abs(fused.astype(int) - theirs) <= 1).mean() >= 0.999, f"{pair}/{name}"


# --- without ../shared --------------------------------------------------------------------------


def _random_model(seed: int = 0) -> LYWNet:
    torch.manual_seed(seed)
    model = LYWNet()
    with torch.no_grad():  # non-trivial affine BatchNorm parameters, so the mapping is tested
        for module in model.modules():
            if isinstance(module, ImageNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _pair(n: int, height: int, width: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, height, width, generator=generator), torch.rand(
        n, 1, height, width, generator=generator
    )


def test_parameter_count_is_the_forward_pass_only() -> None:
    assert sum(p.numel() for p in LYWNet().parameters()) == 413_505


@pytest.mark.parametrize("size", [(16, 16), (17, 23), (6, 5)])
def test_any_size_fuses_to_the_same_size_in_range(size: tuple[int, int]) -> None:
    anatomical, functional = _pair(2, *size)
    with torch.no_grad():
        fused = _random_model()(anatomical, functional)
    assert fused.shape == anatomical.shape
    assert fused.min() >= 0.0 and fused.max() <= 1.0


def test_too_small_or_mismatched_inputs_are_one_line_errors() -> None:
    model = _random_model()
    with pytest.raises(MedfuseError, match="at least 5x5"):
        model(*_pair(1, 4, 8))
    with pytest.raises(MedfuseError, match="of the same shape"):
        model(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 12))
    with pytest.raises(MedfuseError, match=r"in \[0, 1\]"):
        model(torch.rand(1, 1, 8, 8) * 255, torch.rand(1, 1, 8, 8))


def test_batching_never_changes_a_result() -> None:
    """Per-image statistics, one pair at a time: a pair's output bits never depend on the batch."""
    model = _random_model()
    anatomical, functional = _pair(3, 20, 24)
    with torch.no_grad():
        together = model(anatomical, functional)
        alone = torch.cat([model(anatomical[i : i + 1], functional[i : i + 1]) for i in range(3)])
    assert torch.equal(together, alone)


def test_image_norm_is_batch_of_one_batchnorm() -> None:
    """What the authors' train-mode BatchNorm did with one image, we do per image in eval."""
    norm = ImageNorm(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        norm.bias.copy_(torch.tensor([0.0, 0.1, -0.3, 0.2]))
    x = torch.randn(3, 4, 6, 7)
    per_image = torch.cat(
        [F.batch_norm(x[i : i + 1], None, None, norm.weight, norm.bias, True) for i in range(3)]
    )
    torch.testing.assert_close(norm.eval()(x), per_image, rtol=0, atol=1e-5)
    batch = F.batch_norm(x, None, None, norm.weight, norm.bias, True)
    torch.testing.assert_close(norm.train()(x), batch)


def test_pair_norm_is_batchnorm_over_each_pair() -> None:
    """Per-pair statistics: each two consecutive images normalised as a BatchNorm batch of two."""
    norm = ImageNorm(4)
    norm.group = 2
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        norm.bias.copy_(torch.tensor([0.0, 0.1, -0.3, 0.2]))
    x = torch.randn(4, 4, 6, 7)
    x[2:] *= 3.0  # the second pair on another scale: statistics must not leak between pairs
    per_pair = torch.cat(
        [F.batch_norm(x[i : i + 2], None, None, norm.weight, norm.bias, True) for i in (0, 2)]
    )
    torch.testing.assert_close(norm.eval()(x), per_pair, rtol=0, atol=1e-5)
    assert not torch.allclose(per_pair, torch.cat([F.instance_norm(x, weight=norm.weight, bias=norm.bias)]))


def test_a_per_pair_model_fuses_with_the_pairs_shared_statistics() -> None:
    """The two images share statistics (so the result differs from per-image) and nothing else
    in the batch does (so batching still never changes a result)."""
    per_image = _random_model(4)
    per_pair = LYWNet(normalization=PER_PAIR).eval()
    per_pair.load_state_dict(per_image.state_dict())
    anatomical, functional = _pair(3, 16, 20)
    with torch.no_grad():
        together = per_pair(anatomical, functional)
        alone = torch.cat([per_pair(anatomical[i : i + 1], functional[i : i + 1]) for i in range(3)])
        features = per_pair.extractor(torch.cat([anatomical[:1], functional[:1]]))
        by_hand = per_pair.reconstructor(per_pair.fusion(features[:1], features[1:])).clamp(0, 1)
        assert not torch.allclose(together, per_image(anatomical, functional), atol=1e-3)
    assert torch.equal(together, alone)
    torch.testing.assert_close(together[:1], by_hand, rtol=0, atol=1e-6)
    with pytest.raises(MedfuseError, match="unknown LYWNet normalisation 'per-batch'"):
        LYWNet(normalization="per-batch")


def _authors_tensors(model: LYWNet) -> dict[str, torch.Tensor]:
    """``model``'s tensors under the authors' names, plus the tensors their code stores unused."""
    ours_to_theirs = {ours: theirs for theirs, ours in lywnet_authors._AUTHORS_NAMES.items()}

    def theirs(name: str) -> str:
        prefix = next(p for p in ours_to_theirs if name.startswith(p))
        return ours_to_theirs[prefix] + name[len(prefix) :]

    tensors = {theirs(name): tensor.clone() for name, tensor in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, ImageNorm):
            stored = theirs(f"{name}.")
            tensors[stored + "running_mean"] = torch.zeros(module.num_features)
            tensors[stored + "running_var"] = torch.ones(module.num_features)
            tensors[stored + "num_batches_tracked"] = torch.tensor(7)
    for unused in lywnet_authors._AUTHORS_UNUSED_MODULES:
        tensors[unused + "weight"] = torch.zeros(3)
    return tensors


def _authors_checkpoint(tensors: dict[str, torch.Tensor]) -> LoadedCheckpoint:
    metadata = {"format": AUTHORS_FORMAT, "normalization": "per-image: the statistics of each image"}
    return LoadedCheckpoint(tensors=tensors, metadata=metadata, source="authors.safetensors")


def test_authors_names_are_mapped_and_their_unused_tensors_dropped() -> None:
    model = _random_model(3)
    loaded = load_lywnet(_authors_checkpoint(_authors_tensors(model)))
    anatomical, functional = _pair(1, 16, 12)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(anatomical, functional), model(anatomical, functional), rtol=0, atol=0
        )


def test_strict_loading_rejects_wrong_checkpoints(tmp_path: Path) -> None:
    model = _random_model()
    extra = _authors_tensors(model) | {"Extraction.block.attention.weight": torch.zeros(1)}
    with pytest.raises(MedfuseError, match=r"unexpected Extraction\.block\.attention\.weight"):
        load_lywnet(_authors_checkpoint(extra))
    ours = {k: v for k, v in model.state_dict().items() if k != "reconstructor.conv3.bias"}
    own = {"format": OWN_FORMAT, "normalization": PER_IMAGE}
    with pytest.raises(MedfuseError, match=r"missing reconstructor\.conv3\.bias"):
        load_lywnet(LoadedCheckpoint(ours, own, "ours"))
    full = model.state_dict()
    with pytest.raises(MedfuseError, match="not a LYWNet checkpoint"):
        load_lywnet(LoadedCheckpoint(full, {"format": "medfuse-lwnet-1"}, "lwnet"))
    with pytest.raises(MedfuseError, match="normalisation 'running'"):
        load_lywnet(LoadedCheckpoint(full, {"format": OWN_FORMAT, "normalization": "running"}, "ours"))
    with pytest.raises(
        MedfuseError, match=r"not a LYWNet checkpoint \(no 'format' in its metadata, expected"
    ):
        load_lywnet(LoadedCheckpoint(full, {}, "ours"))
    with pytest.raises(MedfuseError, match="has no 'normalization' in its metadata"):
        load_lywnet(LoadedCheckpoint(full, {"format": OWN_FORMAT}, "ours"))
    assert (
        load_lywnet(
            LoadedCheckpoint(full, {"format": OWN_FORMAT, "normalization": PER_PAIR}, "ours")
        ).normalization
        == PER_PAIR
    )
    authors_per_pair = _authors_checkpoint(_authors_tensors(model))
    authors_per_pair.metadata["normalization"] = PER_PAIR  # theirs only ever ran per image
    with pytest.raises(
        MedfuseError, match="normalisation 'per-pair'; LYWNet infers with 'per-image' statistics only"
    ):
        load_lywnet(authors_per_pair)


def test_registry_builds_from_our_checkpoint_with_the_temperature_option(tmp_path: Path) -> None:
    model = _random_model(5)
    path = tmp_path / "lywnet.safetensors"
    write_checkpoint(path, model.state_dict(), {"format": OWN_FORMAT, "normalization": PER_IMAGE})
    spec = get_fuser_spec("lywnet")
    assert spec.kind == "network"
    built = create_fuser("lywnet", weights=path, temperature=5.0)
    assert built.fusion.temperature == 5.0 and not built.training
    anatomical, functional = _pair(1, 12, 12)
    with torch.no_grad():
        expected = LYWNet(temperature=5.0).eval()
        expected.load_state_dict(model.state_dict())
        torch.testing.assert_close(
            built(anatomical, functional), expected(anatomical, functional), rtol=0, atol=0
        )
    with pytest.raises(MedfuseError, match="temperature must be a positive number"):
        create_fuser("lywnet", weights=path, temperature=0.0)
    assert (
        sum(p.numel() for p in create_fuser("lywnet", pretrained=False).parameters()) == 413_505
    )  # for `medfuse models`


def test_fds_weights_follow_the_stronger_feature() -> None:
    fds = lywnet.FDSFusion(temperature=1.0)
    fa, fb = torch.tensor([10.0, 0.0]), torch.tensor([0.0, 0.0])
    torch.testing.assert_close(fds(fa, fb), torch.tensor([10.0 * torch.sigmoid(torch.tensor(10.0)), 0.0]))


def test_each_kind_of_pair_gets_its_own_checkpoint() -> None:
    spec = get_fuser_spec("lywnet")
    assert spec.checkpoints[0].name == "lywnet.harvard"  # the default where no pair kind is known
    assert spec.checkpoint_for(FUNCTIONAL).filename == "lywnet-harvard.safetensors"
    assert spec.checkpoint_for(CT).filename == "lywnet-ct.safetensors"


@pytest.mark.parametrize("name", ["lywnet.harvard", "lywnet.ct"])
def test_bundled_checkpoint_is_ours_and_loads(name: str) -> None:
    """Each shipped file matches its registry checksum, is our format, and says how it was made."""
    from medfuse_cli.weights import bundled_path

    spec = get_fuser_spec("lywnet").checkpoint(name)
    path = bundled_path(spec)
    if not path.is_file():
        pytest.skip(f"{path} is not bundled in this checkout")
    loaded = read_checkpoint(path, spec.sha256)
    assert loaded.metadata["format"] == OWN_FORMAT and loaded.metadata["normalization"] == PER_PAIR
    assert create_fuser("lywnet", checkpoint=name).normalization == PER_PAIR  # fuses as it was trained
    assert {
        "command",
        "data",
        "epochs",
        "wall_time_minutes",
        "git_commit",
        "test_metrics",
    } <= loaded.metadata.keys()
    assert "/train" in loaded.metadata["data"] and "/test" not in loaded.metadata["data"]
    model = load_lywnet(loaded)
    with torch.no_grad():
        fused = model(*_pair(1, 16, 16))
    assert fused.shape == (1, 1, 16, 16)
