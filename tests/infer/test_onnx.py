"""``geofm export-onnx`` and ``geofm predict`` on ONNX Runtime: the golden released models and a geofm export."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geofm import cli
from geofm.bands import MODEL_BANDS, NORM_STATS
from geofm.data import synthetic
from geofm.models import build_segmentation_model, load_finetuned, save_finetuned

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from geofm.infer.onnx_model import load_onnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from test_released import golden, write_v2  # noqa: E402

pytestmark = pytest.mark.slow  # each export traces the model with torch.export (tens of seconds)
MEAN, STD = NORM_STATS["v1"]["mean"], NORM_STATS["v1"]["std"]


def rel_err(got: np.ndarray, ref: torch.Tensor) -> float:
    ref = ref.detach().numpy()
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (torch checkpoint, ONNX file) of the two golden TerraTorch models, exported by the CLI."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name in ("tl_upernet", "unet_t2"):
        ckpt = write_v2(root / name, name, "lightning")
        assert cli.main(["export-onnx", str(ckpt), str(root / f"{name}.onnx")]) == 0
        out[name] = (ckpt, root / f"{name}.onnx")
    return out


def test_the_tl_model_graph_is_checked_dynamic_and_equals_the_golden_logits(exported, capsys):
    ckpt, path = exported["tl_upernet"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert list(inputs) == ["x", "temporal_coords", "location_coords"]
    b, c, t, h, w = inputs["x"]
    assert isinstance(b, str) and isinstance(h, str) and isinstance(w, str) and (c, t) == (6, 1)  # frames fixed
    session, info = load_onnx(path)
    assert info.num_classes == 2 and info.layout == "terratorch" and info.extra["onnx_size_multiple"] == 16
    _, _, g = golden("tl_upernet")
    got = session.run(g["__input__"], g["__temporal_coords__"], g["__location_coords__"])
    assert rel_err(got, g["__logits__"]) <= 1e-4
    model, _ = load_finetuned(ckpt)  # another batch and a non-square size: the same graph
    x = torch.randn(3, 6, 1, 64, 48)
    tc, lc = g["__temporal_coords__"][:1].expand(3, -1, -1), g["__location_coords__"][:1].expand(3, -1)
    with torch.no_grad():
        ref = model(x, tc, lc)
    assert rel_err(session.run(x, tc, lc), ref) <= 1e-4


def test_the_unet_model_equals_torch_at_other_sizes(exported):
    ckpt, path = exported["unet_t2"]
    session, info = load_onnx(path)
    assert session.inputs == ["x"] and info.num_frames == 2
    model, _ = load_finetuned(ckpt)
    for shape in ((1, 6, 2, 32, 32), (2, 6, 2, 48, 80)):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(shape[-1]))
        with torch.no_grad():
            ref = model(x)
        assert rel_err(session.run(x), ref) <= 1e-4


def test_predict_on_onnx_runtime_writes_the_map_torch_writes(tmp_path):
    synthetic.write_time_series(tmp_path / "hls", size=96, seed=4, cloud_cover=0.0)
    torch.manual_seed(0)
    model = build_segmentation_model("prithvi_tiny", num_classes=2, neck="upernet")
    export = save_finetuned(model, tmp_path / "export", task="segmentation", mean=MEAN, std=STD, bands=MODEL_BANDS,
                            class_names=["land", "water"], img_size=64)
    onnx_file = tmp_path / "flood.onnx"
    assert cli.main(["export-onnx", str(export), str(onnx_file), "--opset", "18"]) == 0
    common = ["--inputs", str(tmp_path / "hls"), "--tile", "64", "--overlap", "16", "--probabilities",
              "--no-overviews"]
    assert cli.main(["predict", "--checkpoint", str(export), "--precision", "fp32", "--out",
                     str(tmp_path / "torch.tif"), *common]) == 0
    assert cli.main(["predict", "--checkpoint", str(onnx_file), "--out", str(tmp_path / "ort.tif"), *common]) == 0
    with rasterio.open(tmp_path / "torch.tif") as a, rasterio.open(tmp_path / "ort.tif") as b:
        assert a.profile == b.profile and b.descriptions == ("p_land", "p_water")
        assert b.tags()["geofm_runtime"] == "onnxruntime"
        pa, pb = a.read(), b.read()
    assert np.abs(pa - pb).max() <= 1e-4 and (pa >= 0).any()
    assert cli.main(["predict", "--checkpoint", str(onnx_file), "--out", str(tmp_path / "bad.tif"), *common[:2],
                     "--tile", "40"]) == 2  # 40 px is not a multiple of the patch (16)
    assert not (tmp_path / "bad.tif").exists()
