"""Released fine-tuned Prithvi models, as published, with random weights in each layout.

v1 (hls-foundation-os): the test writes an mmcv checkpoint + mmseg config and checks geofm's logits
against a reference forward pass written here from the published design (functional torch ops).
v2 (TerraTorch): golden logits made once by TerraTorch (bench/make_released_golden.py, peer venv),
written back in the published layouts (Lightning checkpoint, Hugging Face folder, old key spelling).
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from geofm.errors import CheckpointError
from geofm.models import load_finetuned
from geofm.models.checkpoints import load_torch_file
from geofm.models.released.config_files import UNKNOWN, read_python_config
from geofm.models.released import find_layout, load_released
from geofm.models.released.load import SEN1FLOODS11_MEANS, SEN1FLOODS11_STDS

DATA = Path(__file__).parent / "data"

# --------------------------------------------------------------------------- v1 files
V1_CONFIG = '''
import os

custom_imports = dict(imports=["geospatial_fm"])
num_classes = {num_classes}
num_frames = {num_frames}
img_size = 32
CLASSES = {classes}
img_norm_cfg = dict(means={means}, stds={stds})
bands = {bands}
tile_size = img_size
image_nodata = -9999
image_nodata_replace = 0
constant = {constant}
num_layers = 2
patch_size = 8
embed_dim = 32
num_heads = 4
work_dir = os.path.join("<project>", "exp")
splits = {{k: os.path.abspath(v) for (k, v) in dict(train="a.txt").items()}}
marker = open({marker!r}, "w")  # must never run
test_pipeline = [
    dict(type="LoadGeospatialImageFromFile", to_float32=False, nodata=image_nodata,
         nodata_replace=image_nodata_replace),
    {bands_step}
    {constant_step}
    dict(type="ToTensor", keys=["img"]),
    dict(type="TorchPermute", keys=["img"], order=(2, 0, 1)),
    dict(type="TorchNormalize", **img_norm_cfg),
    dict(type="Reshape", keys=["img"], new_shape=(6, num_frames, -1, -1), look_up={{"2": 1, "3": 2}}),
]
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    type="TemporalEncoderDecoder",
    frozen_backbone=False,
    backbone=dict(type="TemporalViTEncoder", pretrained=None, img_size=img_size, patch_size=patch_size,
                  num_frames=num_frames, tubelet_size=1, in_chans=6, embed_dim=embed_dim, depth=num_layers,
                  num_heads=num_heads, mlp_ratio=4.0, norm_pix_loss=False),
    neck=dict(type="ConvTransformerTokensToEmbeddingNeck", embed_dim=embed_dim * num_frames,
              output_embed_dim=embed_dim * num_frames, drop_cls_token=True, Hp=img_size // patch_size,
              Wp=img_size // patch_size),
    decode_head=dict(num_classes=num_classes, in_channels=embed_dim * num_frames, type="FCNHead", in_index=-1,
                     channels=16, num_convs=1, concat_input=False, dropout_ratio=0.1, norm_cfg=norm_cfg,
                     align_corners=False),
    auxiliary_head=dict(num_classes=num_classes, in_channels=embed_dim * num_frames, type="FCNHead", in_index=-1,
                        channels=16, num_convs=2, concat_input=False, dropout_ratio=0.1, norm_cfg=norm_cfg),
    train_cfg=dict(),
    test_cfg=dict(mode="slide", stride=(int(tile_size / 2), int(tile_size / 2)), crop_size=(tile_size, tile_size)),
)
'''
FLOOD_MEANS = [0.14245495, 0.13921481, 0.12434631, 0.31420089, 0.20743526, 0.12046503]
FLOOD_STDS = [0.04036231, 0.04186983, 0.05267646, 0.0822221, 0.06834774, 0.05294205]
CROP_MEANS = [494.905781, 815.239594, 924.335066, 2968.881459, 2634.621962, 1739.579917]
CROP_STDS = [284.925432, 357.84876, 575.566823, 896.601013, 951.900334, 921.407808]
D, DEPTH, P, IMG = 32, 2, 8, 32


def v1_state_dict(num_frames: int, num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Keys and shapes of a hls-foundation-os TemporalEncoderDecoder, random values (BN statistics too)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1, offset=0.0):
        return torch.randn(shape, generator=g) * scale + offset

    e = D * num_frames
    L = num_frames * (IMG // P) ** 2
    from geofm.models.vit import sincos_3d

    sd = {"backbone.cls_token": r(1, 1, D), "backbone.patch_embed.proj.weight": r(D, 6, 1, P, P),
          "backbone.patch_embed.proj.bias": r(D),
          "backbone.pos_embed": torch.from_numpy(sincos_3d(D, (num_frames, IMG // P, IMG // P))).float()[None]}
    assert sd["backbone.pos_embed"].shape == (1, 1 + L, D)
    for i in range(DEPTH):
        b = f"backbone.blocks.{i}."
        sd.update({b + "norm1.weight": r(D, offset=1.0), b + "norm1.bias": r(D), b + "attn.qkv.weight": r(3 * D, D),
                   b + "attn.qkv.bias": r(3 * D), b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
                   b + "norm2.weight": r(D, offset=1.0), b + "norm2.bias": r(D), b + "mlp.fc1.weight": r(4 * D, D),
                   b + "mlp.fc1.bias": r(4 * D), b + "mlp.fc2.weight": r(D, 4 * D), b + "mlp.fc2.bias": r(D)})
    sd.update({"backbone.norm.weight": r(D, offset=1.0), "backbone.norm.bias": r(D)})
    for name in ("fpn1", "fpn2"):
        sd.update({f"neck.{name}.0.weight": r(e, e, 2, 2), f"neck.{name}.0.bias": r(e),
                   f"neck.{name}.1.ln.weight": r(e, offset=1.0), f"neck.{name}.1.ln.bias": r(e),
                   f"neck.{name}.3.weight": r(e, e, 2, 2), f"neck.{name}.3.bias": r(e)})

    def fcn(prefix, convs):
        for j in range(convs):
            c_in = e if j == 0 else 16
            sd.update({f"{prefix}.convs.{j}.conv.weight": r(16, c_in, 3, 3, scale=0.05),
                       f"{prefix}.convs.{j}.bn.weight": r(16, offset=1.0), f"{prefix}.convs.{j}.bn.bias": r(16),
                       f"{prefix}.convs.{j}.bn.running_mean": r(16),
                       f"{prefix}.convs.{j}.bn.running_var": torch.rand(16, generator=g) + 0.5,
                       f"{prefix}.convs.{j}.bn.num_batches_tracked": torch.tensor(100)})
        sd.update({f"{prefix}.conv_seg.weight": r(num_classes, 16, 1, 1), f"{prefix}.conv_seg.bias": r(num_classes)})

    fcn("decode_head", 1)
    fcn("auxiliary_head", 2)
    return sd


def v1_reference(sd: dict[str, torch.Tensor], x: torch.Tensor, num_heads: int = 4) -> torch.Tensor:
    """The published v1 forward pass, functional: x (B, 6, T, H, W) as the released pipeline feeds it."""
    b, _, t, H, W = x.shape
    tok = F.conv3d(x, sd["backbone.patch_embed.proj.weight"], sd["backbone.patch_embed.proj.bias"], stride=(1, P, P))
    tok = tok.flatten(2).transpose(1, 2) + sd["backbone.pos_embed"][:, 1:]
    cls = (sd["backbone.cls_token"] + sd["backbone.pos_embed"][:, :1]).expand(b, -1, -1)
    h = torch.cat([cls, tok], 1)
    for i in range(DEPTH):
        p = f"backbone.blocks.{i}."
        y = F.layer_norm(h, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-5)
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(b, -1, 3, num_heads, D // num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // num_heads), dim=-1)
        y = (a @ v).transpose(1, 2).reshape(b, -1, D)
        h = h + F.linear(y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        y = F.layer_norm(h, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-5)
        y = F.linear(F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        h = h + y
    h = F.layer_norm(h, (D,), sd["backbone.norm.weight"], sd["backbone.norm.bias"], eps=1e-5)
    m = h[:, 1:].permute(0, 2, 1).reshape(b, -1, H // P, W // P)
    for name in ("fpn1", "fpn2"):
        n = f"neck.{name}."
        m = F.conv_transpose2d(m, sd[n + "0.weight"], sd[n + "0.bias"], stride=2)
        m = F.layer_norm(m.permute(0, 2, 3, 1), (m.shape[1],), sd[n + "1.ln.weight"], sd[n + "1.ln.bias"],
                         eps=1e-6).permute(0, 3, 1, 2)
        m = F.conv_transpose2d(F.gelu(m), sd[n + "3.weight"], sd[n + "3.bias"], stride=2)
    f = F.conv2d(m, sd["decode_head.convs.0.conv.weight"], padding=1)
    f = F.batch_norm(f, sd["decode_head.convs.0.bn.running_mean"], sd["decode_head.convs.0.bn.running_var"],
                     sd["decode_head.convs.0.bn.weight"], sd["decode_head.convs.0.bn.bias"], eps=1e-5)
    out = F.conv2d(F.relu(f), sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])
    # TemporalEncoderDecoder.encode_decode: resize to the input size (a no-op for 16-pixel patches)
    return F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)


def mmcv_checkpoint(sd: dict) -> dict:
    """An mmcv checkpoint as hls-foundation-os saved it: numpy scalars and a dtype in ``meta``."""
    return {"meta": {"mmseg_version": "0.30.0", "CLASSES": (0, 1), "epoch": 100, "iter": 1000,
                     "hook_msgs": {"best_score": np.float64(0.887), "best_iter": np.int64(1000),
                                   "dtype": np.dtype("float32")}},
            "state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-5, "weight_decay": 0.05}]}}


def write_v1(folder: Path, kind: str = "flood", seed: int = 0) -> tuple[dict, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "flood":
        opts = dict(num_classes=2, num_frames=1, classes="(0, 1)", means=FLOOD_MEANS, stds=FLOOD_STDS,
                    bands=[1, 2, 3, 8, 11, 12], constant=0.0001,
                    bands_step='dict(type="BandsExtract", bands=bands),',
                    constant_step='dict(type="ConstantMultiply", constant=constant),')
    else:  # multi-temporal crop: 18-band frame-major chips, statistics repeated per frame, no band extraction
        opts = dict(num_classes=4, num_frames=3, classes='("Corn", "Soybeans", "Forest", "Other")',
                    means=CROP_MEANS * 3, stds=CROP_STDS * 3, bands=[0, 1, 2, 3, 4, 5], constant=1.0,
                    bands_step="", constant_step="")
    marker = folder / "EXECUTED"
    (folder / f"{kind}.py").write_text(V1_CONFIG.format(marker=str(marker), **opts))
    sd = v1_state_dict(opts["num_frames"], opts["num_classes"], seed)
    torch.save(mmcv_checkpoint(sd), folder / f"{kind}.pth")
    return sd, marker


def test_v1_flood_folder_matches_the_published_design(tmp_path):
    sd, marker = write_v1(tmp_path / "flood")
    model, info = load_finetuned(tmp_path / "flood")
    assert not marker.exists(), "the config file was executed"
    assert info.layout == "hls_foundation" and info.num_classes == 2 and info.class_names == ["0", "1"]
    assert info.stacked_bands == [[2, 3, 4, 9, 12, 13]]  # 0-based [1,2,3,8,11,12] of the 13-band stack
    np.testing.assert_allclose(info.mean, [m / 1e-4 for m in FLOOD_MEANS], rtol=1e-6)
    np.testing.assert_allclose(info.std, [s / 1e-4 for s in FLOOD_STDS], rtol=1e-6)
    # nodata -> 0 before x1e-4 and normalization, as the released pipeline
    np.testing.assert_allclose(info.nodata_fill, [-m / s for m, s in zip(FLOOD_MEANS, FLOOD_STDS)], rtol=1e-6)
    assert info.img_size == 32 and info.extra["slide_stride"] == [16, 16]
    x = torch.randn(2, 6, 1, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, ref = model(x), v1_reference(sd, x)
    assert got.shape == (2, 2, IMG, IMG)
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-3
    # the .pth alone finds its .py beside it
    model2, _ = load_finetuned(tmp_path / "flood" / "flood.pth")
    with torch.no_grad():
        torch.testing.assert_close(model2(x), got)


def test_v1_crop_model_sees_the_released_reshape_quirk(tmp_path):
    sd, _ = write_v1(tmp_path / "crop", kind="crop", seed=3)
    model, info = load_finetuned(tmp_path / "crop")
    assert info.num_frames == 3 and info.class_names == ["Corn", "Soybeans", "Forest", "Other"]
    assert info.stacked_bands == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18]]
    np.testing.assert_allclose(info.mean, CROP_MEANS)  # 18 repeated values -> 6 per band
    x = torch.randn(1, 6, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))  # x[c, t] = band c of frame t
    chip = x.transpose(1, 2).reshape(1, 18, IMG, IMG)  # the 18-band file: band 6t + c
    released_in = chip.reshape(1, 6, 3, IMG, IMG)  # the pipeline's Reshape: model x[c, t] = file band 3c + t
    with torch.no_grad():
        got, ref = model(x), v1_reference(sd, released_in)
        plain = v1_reference(sd, x)
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-3
    assert (got - plain).abs().max() > 1e-2  # the quirk matters


def test_v1_burn_scars_statistics_in_reflectance_scale_the_input(tmp_path):
    """burn_scars.py has no ConstantMultiply and means in reflectance (0..1): the chips held reflectance."""
    burn_means = [0.033349706741586264, 0.05701185520536176, 0.05889748132001316, 0.2323245113436119,
                  0.1972854853760658, 0.11944914225186566]
    write_v1(tmp_path / "burn")
    text = (tmp_path / "burn" / "flood.py").read_text()
    text = text.replace(repr(FLOOD_MEANS), repr(burn_means)).replace(
        'dict(type="ConstantMultiply", constant=constant),', "").replace("bands = [1, 2, 3, 8, 11, 12]",
                                                                        "bands = [0, 1, 2, 3, 4, 5]")
    (tmp_path / "burn" / "flood.py").write_text(text)
    _, info = load_finetuned(tmp_path / "burn")
    np.testing.assert_allclose(info.mean, [m * 1e4 for m in burn_means], rtol=1e-6)
    assert info.stacked_bands == [[1, 2, 3, 4, 5, 6]] and info.extra["input_scale"] == 1e-4


def test_v1_config_is_parsed_not_executed(tmp_path):
    write_v1(tmp_path / "flood")
    env = read_python_config(tmp_path / "flood" / "flood.py")
    assert not (tmp_path / "flood" / "EXECUTED").exists()
    assert env["marker"] is UNKNOWN and env["work_dir"] is UNKNOWN and env["splits"] is UNKNOWN
    assert env["model"]["neck"]["Hp"] == 4 and env["model"]["test_cfg"]["stride"] == (16, 16)
    assert env["test_pipeline"][-2]["means"] == FLOOD_MEANS  # dict(type=..., **img_norm_cfg)


def _legacy_pickle_with_numpy1_names(obj, path: Path) -> None:
    """torch.save (legacy format) with numpy 1 module names (``numpy.core.multiarray``), as old files have."""
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    if b"numpy._core.multiarray" in data:
        path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def test_restricted_unpickling_accepts_mmcv_meta_and_refuses_code(tmp_path):
    ckpt = mmcv_checkpoint({"w": torch.ones(2)})
    _legacy_pickle_with_numpy1_names(ckpt, tmp_path / "old.pth")
    raw = load_torch_file(tmp_path / "old.pth")
    assert float(raw["meta"]["hook_msgs"]["best_score"]) == pytest.approx(0.887)
    assert raw["meta"]["hook_msgs"]["dtype"] == np.dtype("float32")
    torch.save(ckpt, tmp_path / "new.pth")
    assert load_torch_file(tmp_path / "new.pth")["state_dict"]["w"].sum() == 2
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": {"w": torch.ones(1)}, "x": Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_torch_file(tmp_path / "evil.pth")
    assert not marker.exists()


def test_key_mismatch_names_the_layout_and_key_groups(tmp_path):
    sd, _ = write_v1(tmp_path / "flood")
    del sd["decode_head.conv_seg.weight"]
    sd["decode_head.extra.weight"] = torch.ones(1)
    torch.save(mmcv_checkpoint(sd), tmp_path / "flood" / "flood.pth")
    with pytest.raises(CheckpointError, match="hls_foundation") as e:
        load_finetuned(tmp_path / "flood")
    assert "missing key groups: decode_head.conv_seg" in str(e.value)
    assert "unexpected key groups: decode_head.extra" in str(e.value)


def test_unknown_layout_lists_the_layouts_tried(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="hls-foundation-os v1.*TerraTorch v2"):
        find_layout(tmp_path / "m")


# --------------------------------------------------------------------------- v2 (TerraTorch golden)
def golden(name: str):
    tensors = load_file(str(DATA / f"terratorch_{name}.safetensors"))
    args = json.loads((DATA / f"terratorch_{name}.json").read_text())["model_args"]
    sd = {k: v for k, v in tensors.items() if not k.startswith("__")}
    return sd, args, tensors


def write_v2(folder: Path, name: str, layout: str) -> Path:
    sd, args, _ = golden(name)
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "old_keys":  # before TerraTorch moved UperNet's scale modules into a neck
        sd = {k.replace("neck.2.", "decoder."): v for k, v in sd.items()}
        args = dict(args, necks=[n for n in args["necks"] if n["name"] != "LearnedInterpolateToPyramidal"],
                    decoder_scale_modules=True)
        assert any(k.startswith("decoder.fpn1.") for k in sd) and any(k.startswith("decoder.fpn_convs.") for k in sd)
    wrapped = {"model." + k: v for k, v in sd.items()}
    wrapped["model.aux_heads.aux.head.weight"] = torch.ones(1)  # training-only, ignored
    if layout == "hf_folder":
        import yaml

        cfg = {"model": {"class_path": "terratorch.tasks.SemanticSegmentationTask",
                         "init_args": {"model_factory": "EncoderDecoderFactory", "model_args": args}},
               "data": {"class_path": "terratorch.datamodules.Sen1Floods11NonGeoDataModule",
                        "init_args": {"bands": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"],
                                      "constant_scale": 0.0001, "no_data_replace": 0}}}
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
        torch.save({"state_dict": wrapped}, folder / "model.pt")
        return folder
    torch.save({"state_dict": wrapped, "hyper_parameters": {"model_args": args, "model_factory": "EncoderDecoderFactory",
                                                              "loss": "ce"},
                "epoch": 3, "global_step": 10}, folder / "best.ckpt")
    return folder / "best.ckpt"


@pytest.mark.parametrize("name,layout", [("tl_upernet", "lightning"), ("tl_upernet", "hf_folder"),
                                         ("tl_upernet", "old_keys"), ("unet_t2", "lightning")])
def test_v2_matches_terratorch_golden_logits(tmp_path, name, layout):
    path = write_v2(tmp_path / layout, name, layout)
    model, info = load_finetuned(path)
    assert info.layout == "terratorch"
    _, _, t = golden(name)
    with torch.no_grad():
        got = model(t["__input__"], t.get("__temporal_coords__"), t.get("__location_coords__"))
    ref = t["__logits__"]
    assert got.shape == ref.shape
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-3
    if layout == "hf_folder":  # Sen1Floods11 datamodule: S2 stack bands, x1e-4, its means/stds
        assert info.stacked_bands == [[2, 3, 4, 9, 12, 13]]
        np.testing.assert_allclose(info.mean, [SEN1FLOODS11_MEANS[b] / 1e-4 for b in info.bands], rtol=1e-6)
        np.testing.assert_allclose(info.std, [SEN1FLOODS11_STDS[b] / 1e-4 for b in info.bands], rtol=1e-6)


@pytest.mark.parametrize("name", ["model.pt", "best.ckpt"])
def test_v2_lightning_checkpoint_alone_in_a_folder_describes_itself(tmp_path, name):
    """No config.yaml: the checkpoint's hyper_parameters.model_args are the description (CLI and library)."""
    from geofm.cli import main

    ckpt = write_v2(tmp_path / "dl", "unet_t2", "lightning")
    folder = tmp_path / "model"
    folder.mkdir()
    ckpt.rename(folder / name)
    (folder / "notes.pt").write_bytes(b"not a checkpoint")  # other files beside it do not matter
    assert find_layout(folder) == ("terratorch", {"weights": folder / name})
    assert main(["convert", str(folder), str(tmp_path / "out")]) == 0
    _, _, t = golden("unet_t2")
    for model, info in (load_finetuned(folder), load_finetuned(tmp_path / "out")):
        assert info.layout == "terratorch"
        with torch.no_grad():
            got = model(t["__input__"], t.get("__temporal_coords__"), t.get("__location_coords__"))
        assert ((got - t["__logits__"]).abs().max() / t["__logits__"].abs().max()).item() <= 1e-3


def test_a_pretrained_checkpoint_alone_in_a_folder_is_no_finetune(tmp_path):
    (tmp_path / "m").mkdir()
    torch.save({"state_dict": {"model.x": torch.ones(1)}, "hyper_parameters": {"lr": 1e-4}}, tmp_path / "m" / "a.ckpt")
    with pytest.raises(CheckpointError, match="fits none of the fine-tuned layouts"):
        find_layout(tmp_path / "m")


def test_v2_tl_coordinates_change_the_logits(tmp_path):
    model, _ = load_finetuned(write_v2(tmp_path, "tl_upernet", "lightning"))
    _, _, t = golden("tl_upernet")
    with torch.no_grad():
        with_tl = model(t["__input__"], t["__temporal_coords__"], t["__location_coords__"])
        without = model(t["__input__"])
    assert (with_tl - without).abs().max() > 1e-3


def test_convert_released_to_geofm_export(tmp_path):
    from geofm.cli import main

    sd, _ = write_v1(tmp_path / "flood")
    assert main(["convert", str(tmp_path / "flood"), str(tmp_path / "out_v1")]) == 0
    assert main(["convert", str(write_v2(tmp_path / "v2", "tl_upernet", "lightning")), str(tmp_path / "out_v2")]) == 0
    x = torch.randn(1, 6, 1, IMG, IMG, generator=torch.Generator().manual_seed(5))
    for src, out in ((tmp_path / "flood", tmp_path / "out_v1"), (tmp_path / "v2" / "best.ckpt", tmp_path / "out_v2")):
        (m1, i1), (m2, i2) = load_released(src), load_finetuned(out)
        assert (out / "model.safetensors").is_file()
        assert (i2.mean, i2.std, i2.stacked_bands, i2.nodata_fill, i2.layout) == \
            (i1.mean, i1.std, i1.stacked_bands, i1.nodata_fill, i1.layout)
        with torch.no_grad():
            torch.testing.assert_close(m2(x), m1(x))


def test_class_map_nodata_is_never_a_class():
    from geofm.infer.scene import OutputSpec

    assert (OutputSpec.classes(2).dtype, OutputSpec.classes(2).nodata) == ("uint8", 255)
    many = OutputSpec.classes(300)
    assert (many.dtype, many.nodata) == ("uint16", 65535)


# --------------------------------------------------------------------------- geofm predict on a real chip
def test_predict_v1_flood_folder_on_a_13_band_sentinel2_chip(tmp_path, shared_data, one_torch_thread):
    import rasterio

    from geofm.cli import main
    from geofm.infer.predict import predict_checkpoint

    S2_CHIP = shared_data / "sen1floods11" / "S2Hand" / "Spain_7370579_S2Hand.tif"  # 13 bands, B1..B12
    write_v1(tmp_path / "flood")
    out = tmp_path / "flood.tif"
    rc = main(["predict", "--checkpoint", str(tmp_path / "flood"), "--inputs", str(S2_CHIP), "--out", str(out),
               "--tile", "64", "--overlap", "16", "--batch-size", "16", "--no-overviews"])
    assert rc == 0
    with rasterio.open(out) as dst, rasterio.open(S2_CHIP) as src:
        cls = dst.read(1)
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
        assert dst.dtypes[0] == "uint8" and dst.nodata == 255
        assert json.loads(dst.tags()["classes"]) == {"0": "0", "1": "1"}
        assert dst.tags()["geofm_model_layout"] == "hls_foundation"
    assert set(np.unique(cls)) <= {0, 1, 255} and len(set(np.unique(cls)) - {255}) == 2
    # the model's own bands (2,3,4,9,12,13) were used: the same as passing them, not bands 1-6
    explicit = predict_checkpoint(tmp_path / "flood", [str(S2_CHIP)], tmp_path / "b.tif", tile=64, overlap=16,
                                  batch_size=16, overviews=False, stacked_bands=(2, 3, 4, 9, 12, 13))
    first6 = predict_checkpoint(tmp_path / "flood", [str(S2_CHIP)], tmp_path / "c.tif", tile=64, overlap=16,
                                batch_size=16, overviews=False, stacked_bands=(1, 2, 3, 4, 5, 6))
    with rasterio.open(explicit.path) as a, rasterio.open(first6.path) as b:
        assert np.array_equal(a.read(1), cls)
        assert not np.array_equal(b.read(1), cls)


def test_predict_v1_crop_model_on_one_18_band_chip(tmp_path, one_torch_thread):
    """The crop model's 18-band frame-major chip is one input file: frames are bands 1-6, 7-12, 13-18."""
    import rasterio
    from rasterio.transform import from_origin

    from geofm.data.hls import stacked_frame
    from geofm.infer.predict import predict_checkpoint

    write_v1(tmp_path / "crop", kind="crop", seed=3)
    rng = np.random.default_rng(0)
    chip = tmp_path / "chip_000_merged.tif"
    with rasterio.open(chip, "w", driver="GTiff", width=48, height=40, count=18, dtype="int16", crs="EPSG:32615",
                       transform=from_origin(500000, 4000000, 30, 30)) as dst:
        dst.write(rng.integers(200, 4000, size=(18, 40, 48)).astype(np.int16))
    res = predict_checkpoint(tmp_path / "crop", [str(chip)], tmp_path / "crop.tif", tile=32, overlap=8,
                             overviews=False)
    frames = [stacked_frame(str(chip), list(range(6 * t + 1, 6 * t + 7))) for t in range(3)]
    ref = predict_checkpoint(tmp_path / "crop", frames, tmp_path / "ref.tif", tile=32, overlap=8, overviews=False)
    with rasterio.open(res.path) as a, rasterio.open(ref.path) as b:
        assert a.count == 1 and a.shape == (40, 48)
        assert json.loads(a.tags()["classes"])["0"] == "Corn"
        assert np.array_equal(a.read(1), b.read(1))
        assert a.tags()["geofm_frames"].count("chip_000_merged.tif") == 3


def test_reading_checkpoints_does_not_need_the_presets():
    """models/checkpoints.py reads and adapts files; building from presets imports it, never the reverse."""
    import ast as _ast

    import geofm.models.checkpoints as ck
    import geofm.models.released.load as rel

    for mod in (ck, rel):
        tree = _ast.parse(Path(mod.__file__).read_text())
        imported = {n.module for n in _ast.walk(tree) if isinstance(n, _ast.ImportFrom) and n.module}
        imported |= {a.name for n in _ast.walk(tree) if isinstance(n, _ast.Import) for a in n.names}
        assert "geofm.models.presets" not in imported, mod.__name__
