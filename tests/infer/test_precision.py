"""bf16 inference: the precision chosen per device, weights converted once, agreement with fp32."""

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
from geofm.errors import ConfigError
from geofm.infer.precision import (BF16_CPU_FLAGS, agreement, cpu_flags, cpu_has_native_bf16, prepare_model,
                                   resolve_precision)
from geofm.infer.predict import imputation_predictor, segmentation_predictor
from geofm.models import build_segmentation_model, create_model, load_finetuned, save_finetuned
from geofm.models.checkpoints import low_precision_modules
from geofm.models.imputer import Imputer
from geofm.models.vit import Block
from geofm.resources import sample_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from test_released import golden, write_v1, write_v2  # noqa: E402  (the golden TerraTorch models, the writers)

MEAN, STD = NORM_STATS["v1"]["mean"], NORM_STATS["v1"]["std"]
#: the agreement the issue asks of bf16 against fp32
MIN_CLASSES_EQUAL, MAX_PROB_DIFF = 0.995, 0.02


def test_cpu_flags_decide_the_default(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    old = tmp_path / "old"
    old.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert cpu_flags(x86) & BF16_CPU_FLAGS == {"avx512_bf16"}
    assert not cpu_flags(old) & BF16_CPU_FLAGS  # AVX-512 without BF16: bf16 would be emulated
    assert cpu_flags(arm) & BF16_CPU_FLAGS == {"bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision(None, "cpu") == resolve_precision("auto", "cpu")
    assert resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(ConfigError, match="--precision.*int8"):
        resolve_precision("int8", "cpu")


def test_block_weights_are_converted_once_and_the_rest_stays_fp32():
    torch.manual_seed(0)
    model = build_segmentation_model("prithvi_tiny", num_classes=3).eval()
    x = torch.randn(2, 6, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    fp32_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model = prepare_model(model, "bf16")
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert blocks and all(p.dtype == torch.bfloat16 for b in blocks for p in b.parameters())
    block_ids = {id(p) for b in blocks for p in b.parameters()}
    others = [p for p in model.parameters() if id(p) not in block_ids]
    assert others and all(p.dtype == torch.float32 for p in others)
    block_bytes = sum(p.numel() * 2 for b in blocks for p in b.parameters())
    assert sum(p.numel() * p.element_size() for p in model.parameters()) == fp32_bytes - block_bytes
    weight = blocks[0].mlp.fc1.weight
    ptr, version = weight.data_ptr(), weight._version
    predict = segmentation_predictor(model, "cpu", precision="bf16")
    first, again = predict(x), predict(x)
    assert weight.data_ptr() == ptr and weight._version == version  # no conversion per call
    assert first.dtype == torch.float32 and torch.equal(first, again)
    assert not torch.equal(first, ref.softmax(1))  # it did run in bf16
    agree = agreement(ref, torch.log(first))
    assert agree["classes_equal"] >= MIN_CLASSES_EQUAL and agree["max_prob_diff"] <= MAX_PROB_DIFF
    model = prepare_model(model, "fp32")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not blocks[0]._forward_pre_hooks and not blocks[0]._forward_hooks


@pytest.mark.parametrize("name,precision", [("tl_upernet", "bf16"), ("unet_t2", "bf16"), ("tl_upernet", "fp16")])
def test_bf16_agrees_with_fp32_on_the_released_golden_models(tmp_path, name, precision):
    model, _ = load_finetuned(write_v2(tmp_path, name, "lightning"))
    _, _, t = golden(name)
    args = (t["__input__"], t.get("__temporal_coords__"), t.get("__location_coords__"))
    with torch.no_grad():
        ref = model(*args)
        got = prepare_model(model, precision)(*args)
    agree = agreement(ref, got)
    assert agree["classes_equal"] >= MIN_CLASSES_EQUAL and agree["max_prob_diff"] <= MAX_PROB_DIFF, agree
    assert agree["max_rel_logit_diff"] > 0  # the blocks ran in low precision


@pytest.mark.parametrize("name", ["tl_upernet", "unet_t2"])
def test_blocks_read_in_bf16_give_the_same_logits_as_converting_after_loading(tmp_path, name):
    path = write_v2(tmp_path, name, "lightning")
    _, _, t = golden(name)
    args = (t["__input__"], t.get("__temporal_coords__"), t.get("__location_coords__"))
    lean, _ = load_finetuned(path, block_dtype=torch.bfloat16)
    low = {id(p) for m in low_precision_modules(lean) for p in m.parameters()}
    assert low and all((p.dtype == torch.bfloat16) == (id(p) in low) for p in lean.parameters())
    with torch.no_grad():
        after = prepare_model(load_finetuned(path)[0], "bf16")(*args)
        read = prepare_model(lean, "bf16")(*args)
    assert torch.equal(read, after)


def test_an_hls_foundation_v1_checkpoint_read_in_bf16_predicts_as_converting_after_loading(tmp_path):
    write_v1(tmp_path / "flood")
    lean, _ = load_finetuned(tmp_path / "flood", block_dtype=torch.bfloat16)
    assert {p.dtype for m in lean.modules() if isinstance(m, Block) for p in m.parameters()} == {torch.bfloat16}
    x = torch.randn(2, 6, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = load_finetuned(tmp_path / "flood")[0](x)
        after = prepare_model(load_finetuned(tmp_path / "flood")[0], "bf16")(x)
        read = prepare_model(lean, "bf16")(x)
    assert torch.equal(read, after)
    agree = agreement(ref, read)
    assert agree["classes_equal"] >= MIN_CLASSES_EQUAL and agree["max_prob_diff"] <= MAX_PROB_DIFF, agree


def test_the_decoder_in_chunks_gives_the_logits_of_the_whole_batch(tmp_path):
    model, _ = load_finetuned(write_v2(tmp_path, "tl_upernet", "lightning"))
    _, _, t = golden("tl_upernet")
    x = t["__input__"][:1].expand(5, *t["__input__"].shape[1:]) + 0.1 * torch.randn(5, *t["__input__"].shape[1:])
    coords = [c[:1].expand(5, *c.shape[1:]) if c is not None else None
              for c in (t.get("__temporal_coords__"), t.get("__location_coords__"))]
    with torch.no_grad():
        whole = model(x, *coords)
        model = prepare_model(model, "fp32")
        assert model.decoder_chunk == 2
        chunked = model(x, *coords)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_a_segmentation_export_read_in_bf16_predicts_as_converting_after_loading(tmp_path):
    torch.manual_seed(0)
    model = build_segmentation_model("prithvi_tiny", num_classes=3).eval()
    save_finetuned(model, tmp_path / "export", task="segmentation", mean=MEAN, std=STD, bands=MODEL_BANDS,
                   img_size=64)
    x = torch.randn(2, 6, 3, 64, 64)
    lean, _ = load_finetuned(tmp_path / "export", block_dtype=torch.bfloat16)
    assert {p.dtype for m in lean.modules() if isinstance(m, Block) for p in m.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        assert torch.equal(prepare_model(lean, "bf16")(x),
                           prepare_model(load_finetuned(tmp_path / "export")[0], "bf16")(x))
        assert torch.equal(load_finetuned(tmp_path / "export")[0](x), model(x))


_READ_CHILD = """
import sys, torch
from geofm.models.checkpoints import load_torch_file, own_tensors
def peak(): return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) // 1024
before = peak()
raw = load_torch_file(sys.argv[1])
sd = own_tensors(raw['state_dict'], dict.fromkeys(raw['state_dict'], torch.bfloat16), file=sys.argv[1])
del raw
peak = peak()
print(max(peak - before, 0), sum(t.numel() for t in sd.values()), {str(t.dtype) for t in sd.values()})
"""


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads the memory map of /proc (Linux)")
def test_reading_a_checkpoint_in_bf16_never_holds_its_fp32_weights(tmp_path):
    """A 192 MiB fp32 Lightning-style checkpoint (plus optimizer state never read) read into bf16: the
    peak (VmHWM: ru_maxrss would carry the parent's) grows by about the bf16 result (96 MiB), not by
    the mapped file (192 MiB more)."""
    import subprocess

    g = torch.Generator().manual_seed(0)
    sd = {f"blocks.{i}.mlp.fc1.weight": torch.randn(2048, 2048, generator=g) for i in range(12)}
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd, "optimizer_states": [{k: v.clone() for k, v in sd.items()}]}, ckpt)
    out = subprocess.run([sys.executable, "-c", _READ_CHILD, str(ckpt)], capture_output=True, text=True, check=True)
    grown, numel, dtypes = out.stdout.split(maxsplit=2)
    assert int(numel) == 12 * 2048 * 2048 and dtypes.strip() == "{'torch.bfloat16'}"
    assert int(grown) < 96 + 24, f"peak RSS grew by {grown} MiB reading 192 MiB of fp32 weights into bf16"
    # the same read without the file: copying out of the mapping touches all of it
    copy = _READ_CHILD.replace(", file=sys.argv[1])", ")")
    out = subprocess.run([sys.executable, "-c", copy, str(ckpt)], capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[0]) > 192, out.stdout


def test_bf16_imputation_error_changes_by_at_most_one_percent():
    torch.manual_seed(0)
    mae = create_model("prithvi_tiny")
    imputer = Imputer(mae, residual="linear").eval()
    with torch.no_grad():  # a correction head that is not zero, as after training
        mae.decoder.decoder_pred.weight.normal_(std=0.02)
        imputer.residual_gain.normal_(std=0.01)
    g = torch.Generator().manual_seed(1)
    coarse = torch.randn(4, 6, 3, 8, 8, generator=g)
    truth = torch.nn.functional.interpolate(coarse.flatten(1, 2), size=(64, 64), mode="bilinear").unflatten(1, (6, 3))
    truth = truth + 0.05 * torch.randn(truth.shape, generator=g)
    hidden = torch.zeros(4, 3, 64, 64, dtype=torch.bool)
    hidden[:, 1, 16:48, 8:40] = True  # a cloud in the middle frame
    maes = {}
    for precision in ("fp32", "bf16"):
        out = imputation_predictor(imputer, "cpu", precision=precision)(truth, hidden)  # (B, T*C, H, W)
        out = out.reshape(4, 3, 6, 64, 64).transpose(1, 2)
        err = (out - truth).abs()  # (B, C, T, H, W)
        maes[precision] = float(err[hidden.unsqueeze(1).expand_as(err)].mean())
    assert maes["fp32"] > 0.01 and maes["bf16"] != maes["fp32"]
    assert abs(maes["bf16"] - maes["fp32"]) / maes["fp32"] <= 0.01, maes


@pytest.mark.slow
def test_bf16_agrees_with_fp32_on_a_300m_model_on_a_real_chip():
    """Prithvi-EO-2.0-300M-TL + UperNet (random weights) on a 224 px crop of the real Sen1Floods11 S2 chip."""
    from geofm.models.released.terratorch_prithvi import TerraTorchConfig, TerraTorchSegmenter

    chip = sample_dir() / "sen1floods11" / "S2Hand" / "Spain_7370579_S2Hand.tif"
    with rasterio.open(chip) as src:
        raw = src.read([2, 3, 4, 9, 12, 13], window=((0, 224), (0, 224))).astype(np.float32)  # B, G, R, NIR, SW1, SW2
    mean, std = raw.reshape(6, -1).mean(1), raw.reshape(6, -1).std(1) + 1e-6
    x = torch.from_numpy((raw - mean[:, None, None]) / std[:, None, None])[None, :, None]  # (1, 6, 1, 224, 224)
    args = dict(backbone="prithvi_eo_v2_300_tl", backbone_pretrained=False, backbone_num_frames=1,
                backbone_bands=list(MODEL_BANDS), decoder="UperNetDecoder", decoder_channels=256, num_classes=2,
                necks=[{"name": "SelectIndices", "indices": [5, 11, 17, 23]}, {"name": "ReshapeTokensToImage"},
                       {"name": "LearnedInterpolateToPyramidal"}])
    torch.manual_seed(0)
    model = TerraTorchSegmenter(TerraTorchConfig.from_model_args(args)).eval()
    assert sum(p.numel() for p in model.encoder.parameters()) > 300e6
    tc, lc = torch.tensor([[[2019.0, 200.0]]]), torch.tensor([[40.0, -3.7]])
    with torch.no_grad():
        ref = model(x, tc, lc)
        got = prepare_model(model, "bf16")(x, tc, lc)
    agree = agreement(ref, got)
    assert agree["classes_equal"] >= MIN_CLASSES_EQUAL and agree["max_prob_diff"] <= MAX_PROB_DIFF, agree


def test_predict_cli_prints_the_precision_and_bf16_maps_agree(tmp_path):
    synthetic.write_time_series(tmp_path / "hls", size=96, seed=3, cloud_cover=0.0)
    torch.manual_seed(0)
    export = save_finetuned(build_segmentation_model("prithvi_tiny", num_classes=2), tmp_path / "export",
                            task="segmentation", mean=MEAN, std=STD, bands=MODEL_BANDS, img_size=64)
    common = ["predict", "--checkpoint", str(export), "--inputs", str(tmp_path / "hls"), "--tile", "64",
              "--overlap", "16", "--probabilities", "--no-overviews"]
    probs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.tif"
        assert cli.main([*common, "--out", str(out), "--precision", precision]) == 0
        with rasterio.open(out) as src:
            probs[precision] = src.read()
            assert src.tags()["geofm_precision"] == precision
    a, b = probs["fp32"], probs["bf16"]
    valid = a[0] >= 0
    assert (a.argmax(0) == b.argmax(0))[valid].mean() >= MIN_CLASSES_EQUAL
    assert 0 < np.abs(a - b)[:, valid].max() <= MAX_PROB_DIFF
