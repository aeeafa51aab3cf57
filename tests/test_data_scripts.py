"""data_scripts/prepare_lpba40.py and prepare_camus.py on tiny fake trees in the real releases' layouts."""

from __future__ import annotations

import gzip
import importlib.util
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from searchmorph_lite.data import load_dataset
from searchmorph_lite.data.camus import prepare_camus
from searchmorph_lite.data.lpba40 import prepare_lpba40
from searchmorph_lite.data.summary import summarize

SCRIPTS = Path(__file__).resolve().parents[1] / "data_scripts"


def load_script(name: str):
    """The script module at data_scripts/<name>.py, imported by path (data_scripts is not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snapshot(folder: Path) -> dict[str, bytes]:
    """Name -> bytes of every file in ``folder`` (to show a failed run changed nothing)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


# --- LPBA40 ------------------------------------------------------------------------------------------------------

LPBA_CODES = {"left": 21, "right": 22, "anterior": 41}


def fake_lpba_volume(shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Ellipsoid "brain" (x, y, z) at 2 mm: left half code 21, right half 22, a frontal (anterior) cap 41."""
    shape = (48, 60, 44)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    cx, cy, cz = 24 + shift, 30, 22
    inside = ((x - cx) / 18) ** 2 + ((y - cy) / 24) ** 2 + ((z - cz) / 16) ** 2 <= 1
    labels = np.where(inside, np.where(x < cx, LPBA_CODES["left"], LPBA_CODES["right"]), 0)
    labels = np.where(inside & (y > cy + 12), LPBA_CODES["anterior"], labels).astype(np.int16)
    image = np.where(inside, 100 + 40 * (labels == 22) + (x % 3), 0).astype(np.float32)
    return image, labels


def write_analyze_gz(path_stem: Path, data: np.ndarray) -> None:
    """LPBA40's format: X.hdr plus gzipped X.img.gz, with 2 mm RAS voxels (header written by nibabel)."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Pair(data, affine), str(path_stem) + ".hdr")
    img = Path(str(path_stem) + ".img")
    with open(img, "rb") as src, gzip.open(str(img) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    img.unlink()


@pytest.fixture
def lpba_tree(tmp_path) -> Path:
    """LPBA40/delineation_space/Sxx/ for S01 (atlas), S02, S03 (train), S31 (val), S35 (test)."""
    root = tmp_path / "LPBA40"
    for k, subject in enumerate(("S01", "S02", "S03", "S31", "S35")):
        folder = root / "delineation_space" / subject
        folder.mkdir(parents=True)
        image, labels = fake_lpba_volume(shift=k - 2)
        write_analyze_gz(folder / f"{subject}.delineation.skullstripped", image)
        write_analyze_gz(folder / f"{subject}.delineation.structure.label", labels)
    return root


def test_lpba40_prepares_splits_and_loads(lpba_tree, tmp_path, monkeypatch):
    out = tmp_path / "data"
    manifest = prepare_lpba40(lpba_tree, out)
    assert manifest["counts"] == {"train": 2, "val": 1, "test": 1}
    assert sorted(p.name for p in (out / "lpba40").iterdir()) == ["manifest.json", "test.npz", "train.npz", "val.npz"]
    monkeypatch.setenv("SEARCHMORPH_DATA", str(out))
    ds = load_dataset("lpba40", "train")
    assert len(ds) == 2 and [ds[i]["subject"] for i in range(2)] == ["S02", "S03"]
    assert ds.label_codes.tolist() == [0, 21, 22, 41]
    item = ds[0]
    assert item["moving"].shape == item["fixed"].shape == (1, 192, 160)
    assert item["moving_labels"].dtype == torch.int64
    assert 0 <= item["moving"].min() and item["moving"].max() == pytest.approx(1.0, abs=0.01)
    assert set(item["fixed_labels"].unique().tolist()) == {0, 1, 2, 3}
    assert load_dataset("lpba40", "test")[0]["subject"] == "S35"


def test_lpba40_slice_is_axial_with_anterior_up_and_left_on_the_left(lpba_tree, tmp_path, monkeypatch):
    prepare_lpba40(lpba_tree, tmp_path / "data")
    monkeypatch.setenv("SEARCHMORPH_DATA", str(tmp_path / "data"))
    labels = load_dataset("lpba40", "val")[0]["fixed_labels"][0]
    rows_of = {code: torch.nonzero(labels == code)[:, 0].float().mean() for code in (1, 3)}
    cols_of = {code: torch.nonzero(labels == code)[:, 1].float().mean() for code in (1, 2)}
    assert cols_of[1] < 80 < cols_of[2]  # code 21 (subject's left, x < centre) on the image's left
    assert rows_of[3] < rows_of[1]  # code 41 (anterior) above
    brain_rows = torch.nonzero(labels > 0)[:, 0]
    assert abs((brain_rows.min() + brain_rows.max()).item() / 2 - 95.5) < 2  # centred: 96 mm tall ellipse


def test_lpba40_reads_flat_nifti_layout(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    for k, subject in enumerate(("S01", "S05", "S32", "S40")):
        image, labels = fake_lpba_volume(shift=k)
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), src / f"{subject}.delineation.skullstripped.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), src / f"{subject}.delineation.structure.label.nii.gz")
    assert prepare_lpba40(src, tmp_path / "data")["counts"] == {"train": 1, "val": 1, "test": 1}


def test_lpba40_missing_label_file_is_named_and_nothing_is_written(lpba_tree, tmp_path):
    for part in (lpba_tree / "delineation_space" / "S03").glob("S03.delineation.structure.label.*"):
        part.unlink()
    with pytest.raises(FileNotFoundError, match="S03.delineation.structure.label"):
        prepare_lpba40(lpba_tree, tmp_path / "data")
    assert not (tmp_path / "data" / "lpba40").exists()


def test_lpba40_corrupt_file_is_named_and_previous_output_kept(lpba_tree, tmp_path):
    out = tmp_path / "data"
    prepare_lpba40(lpba_tree, out)
    before = snapshot(out / "lpba40")
    corrupt = lpba_tree / "delineation_space" / "S31" / "S31.delineation.skullstripped.img.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # truncated download
    with pytest.raises(ValueError, match="S31.delineation.skullstripped.img.gz"):
        prepare_lpba40(lpba_tree, out)
    assert snapshot(out / "lpba40") == before


def test_lpba40_script_reports_errors_and_success(lpba_tree, tmp_path, capsys):
    script = load_script("prepare_lpba40")
    assert script.main(["--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "data")]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert script.main(["--src", str(lpba_tree), "--out", str(tmp_path / "data")]) == 0
    assert "train 2, val 1, test 1" in capsys.readouterr().out


# --- CAMUS -------------------------------------------------------------------------------------------------------


def fake_camus_frames(n_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(T, H=90, W=60) images and labels: LV blood 1 in the upper part, myocardium 2 around it, LA 3 below."""
    rows, cols = np.meshgrid(np.arange(90), np.arange(60), indexing="ij")
    images, labels = [], []
    for t in range(n_frames):
        r = 14 - t  # the cavity shrinks from ED to ES
        lab = np.zeros((90, 60), np.uint8)
        d = np.hypot((rows - 35) / 1.6, cols - 30)
        lab[d < r + 5] = 2
        lab[d < r] = 1
        lab[np.hypot(rows - 70, cols - 30) < 10] = 3
        img = np.where(lab == 2, 180, 60) + rng.integers(0, 20, (90, 60))
        images.append(np.where(lab == 1, 10, img).astype(np.uint8))
        labels.append(lab)
    return np.stack(images), np.stack(labels)


def save_camus(path: Path, frames: np.ndarray) -> None:
    """Write (T, H, W) the way the release stores it: nibabel axes (W, H) or (W, H, T)."""
    data = frames[0].T if len(frames) == 1 else frames.transpose(2, 1, 0)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), np.diag([0.3, 0.15, 1.0, 1.0])), path)


@pytest.fixture
def camus_tree(tmp_path) -> Path:
    """CAMUS_public/database_nifti/patient000{1,2,3}: ED/ES (+gt) for both views; half sequences for 0001, 0002."""
    rng = np.random.default_rng(0)
    root = tmp_path / "CAMUS_public" / "database_nifti"
    for p in (1, 2, 3):
        patient = f"patient{p:04d}"
        folder = root / patient
        folder.mkdir(parents=True)
        for view in ("2CH", "4CH"):
            images, labels = fake_camus_frames(5, rng)
            for phase, t in (("ED", 0), ("ES", 4)):
                save_camus(folder / f"{patient}_{view}_{phase}.nii.gz", images[t : t + 1])
                save_camus(folder / f"{patient}_{view}_{phase}_gt.nii.gz", labels[t : t + 1])
            if p != 3:
                save_camus(folder / f"{patient}_{view}_half_sequence.nii.gz", images)
                save_camus(folder / f"{patient}_{view}_half_sequence_gt.nii.gz", labels)
    return tmp_path / "CAMUS_public"


def write_split_files(camus_tree: Path) -> None:
    split = camus_tree / "database_split"
    split.mkdir()
    for name, patients in (
        ("training", "patient0001\npatient0003\n"),
        ("validation", "patient0002\n"),
        ("testing", "patient0002\n"),
    ):
        (split / f"subgroup_{name}.txt").write_text(patients)


def test_camus_prepares_sequences_and_loads(camus_tree, tmp_path, monkeypatch):
    write_split_files(camus_tree)
    manifest = prepare_camus(camus_tree, tmp_path / "data")
    assert manifest["counts"]["train"] == {"patients": 2, "sequences": 4, "frames": 5 + 5 + 2 + 2}
    monkeypatch.setenv("SEARCHMORPH_DATA", str(tmp_path / "data"))
    ds = load_dataset("camus", "train")
    assert ds.num_sequences == 4 and len(ds) == 4 + 4 + 1 + 1  # half sequences give ED->t for t=1..4
    seq = ds.sequence(0)
    assert seq["frames"].shape == (5, 1, 160, 160) and seq["labels"].shape == (5, 1, 160, 160)
    assert seq["subject"] == "patient0001" and seq["view"] == "2CH" and seq["es_frame"] == 4
    assert ds.sequence(2)["frames"].shape[0] == 2  # patient0003 has only ED and ES
    item = ds[3]
    assert item["frame"] == 4 and item["moving"].shape == (1, 160, 160)
    assert set(item["moving_labels"].unique().tolist()) == {0, 1, 2}  # left atrium (3) became background
    blood = (seq["labels"] == 1).flatten(1).sum(1)
    assert (blood[1:] < blood[:-1]).all() and blood[-1] > 0  # cavity shrinks ED -> ES, frames kept in order


def test_camus_orientation_puts_the_probe_side_at_the_top(camus_tree, tmp_path, monkeypatch):
    prepare_camus(camus_tree, tmp_path / "data")
    monkeypatch.setenv("SEARCHMORPH_DATA", str(tmp_path / "data"))
    labels = load_dataset("camus", "test").sequence(0)["labels"][0, 0]
    blood_rows = torch.nonzero(labels == 1)[:, 0].float()
    assert blood_rows.mean() == pytest.approx(35 * 160 / 90, abs=3)  # cavity centre at row 35 of 90
    cols = torch.nonzero(labels > 0)[:, 1].float()
    assert cols.mean() == pytest.approx(79.5, abs=2)  # padded to a square with columns centred


def test_camus_without_split_files_splits_every_patient_once(camus_tree, tmp_path):
    counts = prepare_camus(camus_tree, tmp_path / "data")["counts"]
    assert [counts[s]["patients"] for s in ("train", "val", "test")] == [1, 1, 1]
    names = [np.load(tmp_path / "data" / "camus" / f"{s}.npz")["patients"].tolist() for s in ("train", "val", "test")]
    assert sorted(set(sum(names, []))) == ["patient0001", "patient0002", "patient0003"]


def test_camus_missing_file_is_named_and_nothing_is_written(camus_tree, tmp_path):
    (camus_tree / "database_nifti" / "patient0002" / "patient0002_4CH_ES_gt.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="patient0002_4CH_ES_gt.nii.gz"):
        prepare_camus(camus_tree, tmp_path / "data")
    assert not (tmp_path / "data" / "camus").exists()


def test_camus_corrupt_file_is_named_and_previous_output_kept(camus_tree, tmp_path):
    out = tmp_path / "data"
    prepare_camus(camus_tree, out)
    before = snapshot(out / "camus")
    bad = camus_tree / "database_nifti" / "patient0001" / "patient0001_4CH_half_sequence.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(ValueError, match="patient0001_4CH_half_sequence.nii.gz"):
        prepare_camus(camus_tree, out)
    assert snapshot(out / "camus") == before
    assert not list((out / "camus").glob("*.tmp"))


def test_camus_unexpected_label_value_is_an_error(camus_tree, tmp_path):
    path = camus_tree / "database_nifti" / "patient0003" / "patient0003_2CH_ED_gt.nii.gz"
    data = np.asarray(nib.load(path).dataobj).copy()
    data[0, 0] = 7
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(ValueError, match="label values"):
        prepare_camus(camus_tree, tmp_path / "data")


def test_camus_script_reports_errors_and_success(camus_tree, tmp_path, capsys):
    script = load_script("prepare_camus")
    assert script.main(["--src", str(camus_tree), "--out", str(tmp_path / "data")]) == 0
    assert "train 1 patients/10 frames" in capsys.readouterr().out
    (camus_tree / "database_nifti" / "patient0003" / "patient0003_2CH_ED.nii.gz").unlink()
    assert script.main(["--src", str(camus_tree), "--out", str(tmp_path / "data")]) == 1
    assert "patient0003_2CH_ED.nii.gz" in capsys.readouterr().err


def test_summary_reports_prepared_datasets(lpba_tree, camus_tree, tmp_path, monkeypatch):
    prepare_lpba40(lpba_tree, tmp_path / "data")
    prepare_camus(camus_tree, tmp_path / "data")
    monkeypatch.setenv("SEARCHMORPH_DATA", str(tmp_path / "data"))
    lpba = summarize("lpba40", "train")
    assert lpba["pairs"] == 2 and lpba["size"] == (192, 160) and len(lpba["label_fractions"]) == 4
    camus = summarize("camus", "train")
    assert camus["sequences"] == 2 and camus["size"] == (160, 160) and len(camus["label_fractions"]) == 3
    assert sum(camus["label_fractions"]) == pytest.approx(1.0, abs=1e-3) and camus["label_fractions"][1] > 0.01
