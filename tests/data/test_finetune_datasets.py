"""Fine-tuning datasets: official layouts (generated, real CRS), the real sample chips, bad inputs."""

import numpy as np
import pytest
import rasterio
import torch

from geofm.bands import NORMALIZED_NODATA
from geofm.data.datasets import burn_scars, crops, sen1floods11
from geofm.data.datasets.base import GeoSegmentationDataset, seeded_split, subsample, tile_origins
from geofm.data.datasets.synthetic_layouts import write_burn_scars, write_crops, write_sen1floods11
from geofm.data.transforms import RandomDihedral
from geofm.errors import DataError
from geofm.io import write_geotiff

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_tif(path, arr, crs, transform, nodata=None):
    return write_geotiff(path, arr, crs=crs, transform=transform, nodata=nodata)


def test_tiles_splits_subsample():
    assert tile_origins(512, 64) == list(range(0, 512, 64))
    assert tile_origins(100, 64) == [0, 36]
    tr, va, te = seeded_split(20, 0.15, 0.15, seed=1)
    assert (len(tr), len(va), len(te)) == (14, 3, 3)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(20))
    assert np.array_equal(seeded_split(20, 0.15, 0.15, 1)[1], va)  # seeded
    assert len(subsample(40, 0.1, 0)) == 4 and np.array_equal(subsample(40, 0.1, 0), subsample(40, 0.1, 0))
    assert not np.array_equal(subsample(40, 0.5, 0), subsample(40, 0.5, 1))
    with pytest.raises(ValueError):
        subsample(10, 0.0, 0)


def test_sen1floods11_official_splits(tmp_path):
    ids = write_sen1floods11(tmp_path, n_chips=4, size=64,
                             splits={"train": [0, 1], "valid": [2], "test": [3], "bolivia": [1, 3]})
    dm = sen1floods11.Sen1Floods11DataModule(tmp_path, batch_size=2, predict_split="bolivia")
    assert [p.id for p in dm.train_set.pairs] == ids[:2] and [p.id for p in dm.test_set.pairs] == ids[3:]
    assert [p.id for p in dm.predict_set.pairs] == [ids[1], ids[3]]  # the paper's Bolivia hold-out slot
    s = dm.val_set[0]
    assert s["image"].shape == (6, 1, 64, 64) and s["mask"].dtype == torch.int64
    with rasterio.open(tmp_path / "S2Hand" / f"{ids[2]}_S2Hand.tif") as src:
        b8a = src.read(9).astype(np.float32)  # 0-based index 8 = B8A, the 4th model band
        tf = src.transform
    expect = (b8a - sen1floods11.MEAN[3]) / sen1floods11.STD[3]
    np.testing.assert_allclose(s["image"][3, 0].numpy(), expect, rtol=1e-5, atol=1e-4)
    assert s["mask"][0, 0] == -1 and set(s["mask"].unique().tolist()) == {-1, 0, 1}
    crs, transform, cid = dm.val_set.geo(0)
    assert crs.to_epsg() == 4326 and transform == tf and cid == ids[2]


def test_sen1floods11_official_nesting(tmp_path):
    root = tmp_path / "v1.1" / "data" / "flood_events" / "HandLabeled"
    ids = write_sen1floods11(root, n_chips=3, size=32, splits={"train": [0], "valid": [1], "test": [2]})
    (tmp_path / "v1.1" / "splits").mkdir()  # the official place: v1.1/splits/flood_handlabeled
    (root / "splits" / "flood_handlabeled").rename(tmp_path / "v1.1" / "splits" / "flood_handlabeled")
    dm = sen1floods11.Sen1Floods11DataModule(root)
    assert [p.id for p in dm.val_set.pairs] == [ids[1]] and [p.id for p in dm.test_set.pairs] == [ids[2]]


def test_sen1floods11_real_sample_chip_tiles(sample_dir):
    dm = sen1floods11.Sen1Floods11DataModule(sample_dir / "sen1floods11", tile_size=64, augment=False, seed=0)
    sets = [dm.train_set, dm.val_set, dm.test_set]
    windows = [w for ds in sets for w in ds.windows]
    assert len(windows) == 64 and len(set(windows)) == 64  # 8x8 tiles of the 512x512 chip, disjoint splits
    counts = {-1: 0, 0: 0, 1: 0}
    for ds in sets:
        for i in range(len(ds)):
            vals, n = np.unique(ds[i]["mask"].numpy(), return_counts=True)
            for v, c in zip(vals, n):
                counts[int(v)] += int(c)
    assert counts == {-1: 99, 0: 192010, 1: 70035}  # the chip's label counts (../shared/data/SOURCES.md)


def test_sen1floods11_bad_inputs(tmp_path):
    ids = write_sen1floods11(tmp_path, n_chips=3, size=32)
    (tmp_path / "LabelHand" / f"{ids[1]}_LabelHand.tif").unlink()
    with pytest.raises(DataError, match=f"{ids[1]}_LabelHand.tif' of image .* does not exist"):
        sen1floods11.Sen1Floods11DataModule(tmp_path)
    # label of another size
    lab = tmp_path / "LabelHand" / f"{ids[1]}_LabelHand.tif"
    with rasterio.open(tmp_path / "S2Hand" / f"{ids[1]}_S2Hand.tif") as src:
        crs, tf = src.crs, src.transform
    write_tif(lab, np.zeros((16, 32), np.int16), crs, tf)
    with pytest.raises(DataError, match="is 16x32 px but image"):
        sen1floods11.Sen1Floods11DataModule(tmp_path)
    write_tif(lab, np.zeros((32, 32), np.int16), "EPSG:32630", tf)
    with pytest.raises(DataError, match="has CRS EPSG:32630 but image"):
        sen1floods11.Sen1Floods11DataModule(tmp_path)
    write_tif(lab, np.full((32, 32), 3, np.int16), crs, tf)  # unexpected class value
    ds = GeoSegmentationDataset(sen1floods11.all_pairs(tmp_path), sen1floods11.LAYOUT, sen1floods11.MEAN,
                                sen1floods11.STD)
    with pytest.raises(DataError, match=r"unexpected label value\(s\) \[3\] in .*" + ids[1]):
        [ds[i] for i in range(len(ds))]
    # wrong band count
    write_tif(lab, np.ones((32, 32), np.int16), crs, tf)
    img = tmp_path / "S2Hand" / f"{ids[2]}_S2Hand.tif"
    write_tif(img, np.ones((4, 32, 32), np.int16), crs, tf)
    with pytest.raises(DataError, match=f"expected 13 bands, got 4 in '.*{ids[2]}_S2Hand.tif'"):
        sen1floods11.Sen1Floods11DataModule(tmp_path)


def test_burn_scars_crops_and_full_eval(tmp_path):
    write_burn_scars(tmp_path, n_train=3, n_val=1, size=64, float_reflectance=True)
    dm = burn_scars.BurnScarsDataModule(tmp_path, crop_size=32, batch_size=2)
    torch.manual_seed(0)
    a, b = dm.train_set[0], dm.train_set[0]
    assert a["image"].shape == (6, 1, 32, 32) and b["mask"].shape == (32, 32)
    assert not torch.equal(a["image"], b["image"])  # random crops / flips
    full = dm.val_set[0]
    assert full["image"].shape == (6, 1, 64, 64)  # whole chip at evaluation
    # float reflectance (0..1) files are scaled to x10000: the NIR mean normalizes near 0 on unburned pixels
    nir = full["image"][3, 0][full["mask"] == 0]
    assert abs(float(nir.mean())) < 1.0


def test_burn_scars_real_mask(tmp_path, sample_dir):
    """The real HLS burn-scar mask (custom UTM 10N WKT) paired with a generated image on its grid."""
    mask_path = sample_dir / "hls_chip" / "subsetted_512x512_HLS.S30.T10TGS.2018285.v1.4.mask.tif"
    with rasterio.open(mask_path) as src:
        crs, tf, mask = src.crs, src.transform, src.read(1)
    stem = "subsetted_512x512_HLS.S30.T10TGS.2018285.v1.4"
    write_tif(tmp_path / f"{stem}_merged.tif", np.full((6, 512, 512), 1000, np.int16), crs, tf)
    write_tif(tmp_path / f"{stem}.mask.tif", mask, crs, tf, -1)
    ds = GeoSegmentationDataset(burn_scars.pairs_in(tmp_path), burn_scars.LAYOUT, burn_scars.MEAN, burn_scars.STD)
    vals, n = np.unique(ds[0]["mask"].numpy(), return_counts=True)
    assert dict(zip(vals.tolist(), n.tolist())) == {0: 211640, 1: 50504}
    write_tif(tmp_path / f"{stem}_merged.tif", np.full((6, 512, 512), 1000, np.int16), crs,
              tf * tf.translation(1, 0))
    with pytest.raises(DataError, match="has transform"):
        GeoSegmentationDataset(burn_scars.pairs_in(tmp_path), burn_scars.LAYOUT, burn_scars.MEAN, burn_scars.STD)


def test_crops_generated_and_real_instageo(tmp_path, shared_data):
    write_crops(tmp_path, n_train=3, n_val=1, size=32)
    dm = crops.CropsDataModule(tmp_path, augment=False)
    s = dm.train_set[0]
    assert s["image"].shape == (6, 3, 32, 32) and s["mask"].min() >= -1 and s["mask"].max() <= 12
    assert (s["mask"][0, :4] == -1).all()  # CDL 0 -> ignored
    ds = GeoSegmentationDataset(crops.pairs_in(shared_data / "instageo"), crops.LAYOUT, crops.MEAN, crops.STD)
    assert [p.id for p in ds.pairs] == ["chip_178_022"]
    real = ds[0]
    vals, n = np.unique(real["mask"].numpy(), return_counts=True)  # CDL ids 1..13 -> 0..12
    assert dict(zip(vals.tolist(), n.tolist())) == {0: 112, 2: 22, 4: 4, 5: 17, 6: 9, 7: 33, 8: 554, 9: 35, 12: 238}
    assert torch.all(real["image"][:, 0] == NORMALIZED_NODATA)  # the chip's first frame is all -9999
    assert float(real["image"][:, 1:].abs().max()) < 20


def test_dihedral_is_identical_for_image_and_mask():
    mask = torch.arange(64).reshape(8, 8)
    sample = {"image": mask.float().expand(6, 2, 8, 8).clone(), "mask": mask}
    aug = RandomDihedral(("image", "mask"))
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        out = aug(sample, g)
        assert torch.equal(out["image"][3, 1].long(), out["mask"])
        seen.add(tuple(out["mask"][0, :2].tolist()))
    assert len(seen) == 8  # all eight symmetries occur


def test_eval_share_sampler_scores_each_sample_once():
    """Under DDP each rank evaluates its own share; no sample is repeated to even the ranks out."""
    from torch.utils.data import DistributedSampler

    from geofm.data.datasets.base import EvalShareSampler

    data = list(range(5))
    shares = [list(EvalShareSampler(data, 2, rank)) for rank in (0, 1)]
    assert shares == [[0, 2, 4], [1, 3]] and [len(EvalShareSampler(data, 2, r)) for r in (0, 1)] == [3, 2]
    assert isinstance(EvalShareSampler(data, 2, 0), DistributedSampler)  # Lightning does not replace it
    padded = [list(DistributedSampler(data, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sum(map(len, padded)) == 6  # what torch's sampler would have scored: sample 0 twice
