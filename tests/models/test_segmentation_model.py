"""Segmentation model (encoder + neck + head) and the fine-tuned export format."""

import json

import pytest
import torch

from geofm.bands import norm_stats
from geofm.errors import CheckpointError
from geofm.models import (
    build_segmentation_model, create_model, load_finetuned, save_finetuned, save_pretrained,
)
from geofm.models.necks import tokens_to_map
from geofm.models.segmentation import SegmentationModel, default_layers, default_neck_channels

BANDS = ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tokens_to_map_puts_frames_on_channels():
    b, t, h, w, d = 2, 3, 4, 5, 7
    tokens = torch.randn(b, 1 + t * h * w, d)
    m = tokens_to_map(tokens, (t, h, w))
    assert m.shape == (b, t * d, h, w)
    # token of frame ti at (hi, wi) sits at 1 + ti*h*w + hi*w + wi; its features at channels ti*d .. ti*d+d
    ti, hi, wi = 2, 3, 1
    torch.testing.assert_close(m[1, ti * d:(ti + 1) * d, hi, wi], tokens[1, 1 + ti * h * w + hi * w + wi])


def test_defaults():
    assert default_neck_channels(16) == [256, 128, 64, 32]
    assert default_neck_channels(8) == [256, 128, 64]
    assert default_layers(12) == [2, 5, 8, 11]
    assert default_layers(24) == [5, 11, 17, 23]
    assert default_layers(4) == [0, 1, 2, 3]


@pytest.mark.parametrize("neck", ["reference", "upernet"])
def test_shapes_any_size_and_frames(neck):
    torch.manual_seed(0)
    model = build_segmentation_model("prithvi_tiny", num_classes=3, neck=neck)
    assert model(torch.randn(2, 6, 3, 64, 64)).shape == (2, 3, 64, 64)
    assert model(torch.randn(1, 6, 3, 40, 52)).shape == (1, 3, 40, 52)  # padded to 48x56, cropped back
    one = build_segmentation_model("prithvi_tiny", num_classes=2, neck=neck, num_frames=1)  # pretrained T=3
    assert one(torch.randn(1, 6, 1, 32, 32)).shape == (1, 2, 32, 32)
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(1, 6, 2, 64, 64))


def test_upernet_uses_intermediate_layers():
    torch.manual_seed(0)
    model = build_segmentation_model("prithvi_tiny", num_classes=2, neck="upernet", layers=[0, 1, 2, 3])
    model(torch.randn(2, 6, 3, 32, 32)).sum().backward()
    # each rescale branch got gradient, i.e. every listed layer feeds the output
    for branch in model.neck.rescale:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.parameters())
    assert model.layers == [0, 1, 2, 3]


def test_encoder_from_pretraining_export(tmp_path):
    torch.manual_seed(0)
    mae = create_model("prithvi_tiny")
    save_pretrained(mae, tmp_path / "pre")
    seg = build_segmentation_model(None, tmp_path / "pre", num_classes=2)
    for k, v in mae.encoder.state_dict().items():
        torch.testing.assert_close(seg.encoder.state_dict()[k], v)
    assert seg.encoder_config.img_size == 64


@pytest.mark.parametrize("neck", ["reference", "upernet"])
def test_save_load_segmentation_roundtrip(tmp_path, neck):
    torch.manual_seed(0)
    model = build_segmentation_model("prithvi_tiny", num_classes=2, neck=neck, num_frames=1).eval()
    mean, std = norm_stats("v1")
    out = save_finetuned(model, tmp_path / "export", task="segmentation", mean=mean, std=std, bands=BANDS,
                         class_names=["dry", "water"], img_size=32, extra={"dataset": "sen1floods11"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded, info = load_finetuned(out / "model.safetensors")  # the file works as well as the folder
    assert isinstance(loaded, SegmentationModel) and not loaded.training
    x = torch.randn(2, 6, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert info.task == "segmentation" and info.num_classes == 2 and info.class_names == ["dry", "water"]
    assert (info.in_chans, info.num_frames, info.img_size, info.patch_size) == (6, 1, 32, (1, 8, 8))
    assert info.mean == pytest.approx(mean) and info.std == pytest.approx(std) and info.bands == BANDS
    assert info.nodata == -9999 and info.extra == {"dataset": "sen1floods11"}


def test_imputation_export_and_plain_mae_export(tmp_path):
    torch.manual_seed(0)
    mae = create_model("prithvi_tiny").eval()
    x = torch.randn(1, 6, 3, 64, 64)
    mask = torch.zeros(1, 3 * 8 * 8)
    mask[0, :40] = 1
    with torch.no_grad():
        _, ref, _ = mae(x, mask=mask)
    custom = [100.0 * i for i in range(1, 7)]
    save_finetuned(mae, tmp_path / "imp", task="imputation", mean=custom, std=[10.0] * 6, bands=BANDS)
    save_pretrained(mae, tmp_path / "plain")
    for folder, mean in ((tmp_path / "imp", custom), (tmp_path / "plain", list(norm_stats("v1")[0]))):
        model, info = load_finetuned(folder)
        assert info.task == "imputation" and info.num_classes is None
        assert (info.num_frames, info.img_size) == (3, 64)
        assert info.mean == pytest.approx(mean)
        assert model.residual == "none"  # a bare MAE export is the paper's pure reconstruction
        with torch.no_grad():
            _, pred, _ = model.mae(x, mask=mask)
        torch.testing.assert_close(pred, ref)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"geofm export \(config.json \+ model.safetensors\)"):
        load_finetuned(tmp_path)
    model = build_segmentation_model("prithvi_tiny", num_classes=2)
    mean, std = norm_stats("v1")
    save_finetuned(model, tmp_path / "e", task="segmentation", mean=mean, std=std, bands=BANDS)
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    cfg["head"]["num_classes"] = 5
    (tmp_path / "e" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_finetuned(tmp_path / "e")
    with pytest.raises(ValueError, match="task must be"):
        save_finetuned(model, tmp_path / "f", task="flood", mean=mean, std=std, bands=BANDS)
