"""Pair layouts on disk: pair sets, train/test splits, and other tools' fused images.

Every folder here is a few 8x8 synthetic images; the last tests check that ``evaluate`` and
training both go through these rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfuse_cli.errors import MedfuseError
from medfuse_cli.pairs import PairFiles, PairSet, find_fused, find_pair_sets
from medfuse_cli.training.patches import load_pairs, read_label_folder


def _image(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def _pair_set(folder: Path, modality: str = "CT", names: tuple[str, ...] = ("a", "b")) -> Path:
    for name in names:
        _image(folder / "MRI" / f"{name}.png")
        _image(folder / modality / f"{name}.png")
    return folder


def _harvard(root: Path) -> Path:
    """``root/<PAIR>/{train,test}/`` as ../shared/data/harvard lays it out (distinct stems per split)."""
    for kind, modality in (("CT-MRI", "CT"), ("SPECT-MRI", "SPECT")):
        _pair_set(root / kind / "train", modality, ("1", "2"))
        _pair_set(root / kind / "test", modality, ("9",))
    return root


def _folders(sets: list[PairSet], root: Path) -> list[str]:
    return [s.folder.relative_to(root).as_posix() for s in sets]


def test_a_single_pair_set_pairs_its_files_by_stem(tmp_path: Path) -> None:
    root = _pair_set(tmp_path / "mine", "PET", ("b", "a"))
    sets, parent = find_pair_sets(root, "test")
    assert not parent
    assert [(s.kind, s.label, s.folder) for s in sets] == [("PET-MRI", "PET-MRI", root)]
    assert sets[0].pairs == (
        PairFiles("a", root / "MRI" / "a.png", root / "PET" / "a.png"),
        PairFiles("b", root / "MRI" / "b.png", root / "PET" / "b.png"),
    )


def test_a_parent_holds_one_pair_set_per_kind(tmp_path: Path) -> None:
    _pair_set(tmp_path / "ct", "CT")
    _pair_set(tmp_path / "spect", "SPECT")
    (tmp_path / ".hidden").mkdir()
    _pair_set(tmp_path / ".hidden" / "pet", "PET")  # hidden folders are never searched
    sets, parent = find_pair_sets(tmp_path, "test")
    assert parent
    assert [(s.kind, s.label) for s in sets] == [("CT-MRI", "CT-MRI"), ("SPECT-MRI", "SPECT-MRI")]


@pytest.mark.parametrize("split", ["train", "test"])
def test_where_train_and_test_sit_side_by_side_the_requested_split_is_taken(
    tmp_path: Path, split: str
) -> None:
    root = _harvard(tmp_path / "harvard")
    _pair_set(root / "SPECT-MRI" / "extra", "SPECT", ("7",))  # neither split: always kept
    sets, parent = find_pair_sets(root, split)
    assert parent
    assert _folders(sets, root) == [f"CT-MRI/{split}", "SPECT-MRI/extra", f"SPECT-MRI/{split}"]
    # One level up from the splits (harvard/SPECT-MRI) the same rule holds.
    sets, parent = find_pair_sets(root / "SPECT-MRI", split)
    assert parent and _folders(sets, root) == ["SPECT-MRI/extra", f"SPECT-MRI/{split}"]
    # A split folder given directly is read whatever its name.
    (only,), parent = find_pair_sets(root / "CT-MRI" / "train", "test")
    assert not parent and only.folder == root / "CT-MRI" / "train"


def test_labels_are_kinds_or_relative_paths_when_a_kind_repeats(tmp_path: Path) -> None:
    for split in ("train", "test"):
        _pair_set(tmp_path / "SPECT-MRI" / split, "SPECT")
    _pair_set(tmp_path / "CT-MRI", "CT")
    _pair_set(tmp_path / "more" / "ct-again", "CT")
    sets, parent = find_pair_sets(tmp_path, "test")
    assert parent
    assert [(s.kind, s.label) for s in sets] == [
        ("CT-MRI", "CT-MRI"),
        ("SPECT-MRI", "SPECT-MRI"),
        ("CT-MRI", "more/ct-again"),
    ]
    assert sets[1].folder.name == "test"


def test_unpaired_files_are_an_error(tmp_path: Path) -> None:
    _pair_set(tmp_path, "CT", ("a",))
    _image(tmp_path / "CT" / "z.png")
    with pytest.raises(MedfuseError, match=r"do not pair up by file name: 1 only in .*CT \(e\.g\. z\)"):
        find_pair_sets(tmp_path, "test")


def test_two_functional_folders_are_an_error(tmp_path: Path) -> None:
    _pair_set(tmp_path, "PET")
    _pair_set(tmp_path, "SPECT")
    with pytest.raises(MedfuseError, match=r"exactly one of SPECT/, PET/, CT/ \(found SPECT/, PET/\)"):
        find_pair_sets(tmp_path, "test")


def test_missing_folder_and_no_pairs_are_errors(tmp_path: Path) -> None:
    with pytest.raises(MedfuseError, match="pair folder not found"):
        find_pair_sets(tmp_path / "nothing", "test")
    _image(tmp_path / "a" / "b" / "c" / "MRI" / "x.png")  # three levels down: too deep
    with pytest.raises(MedfuseError, match="no pairs in"):
        find_pair_sets(tmp_path, "train")


def _spect_test_set(root: Path) -> PairSet:
    """harvard/SPECT-MRI/test/ with pairs a and b, found from harvard/ as evaluate finds it."""
    _pair_set(root / "harvard" / "SPECT-MRI" / "test", "SPECT")
    (pair_set,), _ = find_pair_sets(root / "harvard", "test")
    return pair_set


@pytest.mark.parametrize(
    "layout",
    [
        "{a}.png",  # the images directly in DIR
        "SPECT-MRI/test/{a}.png",  # DIR/<the pair set's path below the folder evaluated>
        "SPECT-MRI/{a}.png",  # DIR/<kind>
        "test/{a}.png",  # DIR/<split>
    ],
)
def test_fused_images_are_found_in_each_layout(tmp_path: Path, layout: str) -> None:
    pair_set = _spect_test_set(tmp_path)
    fused = tmp_path / "fused"
    expected = [_image(fused / layout.format(a=name)) for name in ("a", "b")]
    _image(fused / "CT-MRI" / "test" / "a.png")  # another kind's image of the same stem: ignored
    assert find_fused(fused, pair_set, "test") == expected


def test_a_mirrored_label_folder_serves_a_training_folder_given_directly(tmp_path: Path) -> None:
    """``train SPECT-MRI/`` with ``--label-dir labels/GeSeNet`` (holding SPECT-MRI/train/, and
    other kinds' and splits' images with the same stems)."""
    data = _pair_set(tmp_path / "data" / "SPECT-MRI", "SPECT")
    (pair_set,), _ = find_pair_sets(data, "train")
    labels = tmp_path / "labels" / "GeSeNet"
    expected = [_image(labels / "SPECT-MRI" / "train" / f"{name}.png") for name in ("a", "b")]
    for other in ("CT-MRI/train", "SPECT-MRI/test", "PET-MRI"):
        _image(labels / other / "a.png")
    assert find_fused(labels, pair_set, "train") == expected


def test_the_deepest_copy_of_a_stem_wins(tmp_path: Path) -> None:
    pair_set = _spect_test_set(tmp_path)
    fused = tmp_path / "fused"
    for name in ("a", "b"):
        _image(fused / f"{name}.png")
    deeper = _image(fused / "SPECT-MRI" / "test" / "a.png")
    assert find_fused(fused, pair_set, "test") == [deeper, fused / "b.png"]


def test_two_equally_specific_copies_are_ambiguous(tmp_path: Path) -> None:
    pair_set = _spect_test_set(tmp_path)
    fused = tmp_path / "fused"
    for name in ("a", "b"):
        _image(fused / "SPECT-MRI" / f"{name}.png")
    _image(fused / "test" / "a.png")
    with pytest.raises(
        MedfuseError, match=r"several fused images for a in .*fused: SPECT-MRI/a\.png, test/a\.png"
    ):
        find_fused(fused, pair_set, "test")


def test_missing_fused_images_are_counted(tmp_path: Path) -> None:
    pair_set = _spect_test_set(tmp_path)
    fused = tmp_path / "fused"
    _image(fused / "a.png")
    _image(fused / "CT-MRI" / "b.png")  # not this pair set's
    with pytest.raises(MedfuseError, match=r"1 fused image\(s\) missing in .*fused \(e\.g\. b\)"):
        find_fused(fused, pair_set, "test")
    with pytest.raises(MedfuseError, match="folder not found"):
        find_fused(tmp_path / "nowhere", pair_set, "test")


def test_training_reads_only_the_train_split(tmp_path: Path) -> None:
    """What ``medfuse train`` finds: a split folder as before; a parent of train/ and test/
    (which used to mix in the test pairs) or of several kinds gives the train pairs only."""
    root = _harvard(tmp_path / "harvard")
    direct = load_pairs([root / "SPECT-MRI" / "train"])
    assert direct.names == [f"{root}/SPECT-MRI/train/1", f"{root}/SPECT-MRI/train/2"]
    assert load_pairs([root / "SPECT-MRI"]).names == direct.names
    assert [name.rsplit("/", 2)[1] for name in load_pairs([root]).names] == ["train"] * 4


def test_training_labels_come_from_the_mirrored_folder_of_each_pair_set(tmp_path: Path) -> None:
    root = _harvard(tmp_path / "harvard")
    labels = tmp_path / "labels"
    for kind, value in (("CT-MRI", 10), ("SPECT-MRI", 20)):  # same stems in both kinds
        for name in ("1", "2"):
            _image(labels / kind / "train" / f"{name}.png", value)
    found = read_label_folder(labels, load_pairs([root]))
    assert [round(float(label.mean()) * 255) for label in found] == [10, 10, 20, 20]


def test_evaluate_reads_each_pair_sets_images_from_its_own_folder(run_cli, tmp_path: Path) -> None:
    root = _harvard(tmp_path / "harvard")
    fused = tmp_path / "fused"
    _image(fused / "CT-MRI" / "test" / "9.png", 0)  # equals the sources: PSNR is inf (null)
    _image(fused / "SPECT-MRI" / "9.png", 40)  # DIR/<kind>, off by 40 levels
    result = run_cli("evaluate", root, "--fused", f"x={fused}", "--metrics", "PSNR", "--json", "-q")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)["pairs"]
    assert doc["CT-MRI"]["methods"]["x"]["per_image"]["9.png"]["PSNR"] is None
    assert doc["SPECT-MRI"]["methods"]["x"]["per_image"]["9.png"]["PSNR"] == pytest.approx(
        10 * np.log10(255**2 / 40**2)
    )


def test_training_refuses_a_pair_of_two_sizes_and_gives_both(tmp_path: Path) -> None:
    folder = _pair_set(tmp_path / "CT-MRI" / "train", names=("a",))
    _image(folder / "CT" / "a.png", size=12)
    with pytest.raises(
        MedfuseError, match=r"training pair a: .*MRI/a.png is 8x8 but .*CT/a.png is 12x12 pixels"
    ):
        load_pairs([folder])


def test_a_broken_link_among_the_images_is_a_failed_pair_not_a_missing_one(run_cli, tmp_path: Path) -> None:
    """An image name that cannot be read is reported; leaving it out would shrink the run silently."""
    root = _pair_set(tmp_path / "set", names=("a",))
    for modality in ("MRI", "CT"):
        (root / modality / "b.png").symlink_to(tmp_path / "nowhere.png")
    result = run_cli("fuse", root / "MRI", root / "CT", "-o", tmp_path / "out", "-m", "average", "-q")
    assert result.code == 1
    assert result.stderr == f"failed b: file not found: {root / 'MRI' / 'b.png'}\n"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]
