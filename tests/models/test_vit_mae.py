"""Correctness of the Prithvi ViT-MAE: shapes, patches, position embeddings, masking, losses."""

import math

import numpy as np
import pytest
import torch

from geofm.errors import ConfigError
from geofm.models import create_model, patchify, unpatchify
from geofm.models.mae import random_masking
from geofm.models.vit import interpolate_pos_embed, sincos_3d


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_model("prithvi_tiny")


def test_forward_shapes(tiny):
    x = torch.randn(2, 6, 3, 64, 64)
    loss, pred, mask = tiny(x)
    L = 3 * 8 * 8
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert pred.shape == (2, L, 8 * 8 * 6)
    assert mask.shape == (2, L)
    assert tiny.encode(x).shape == (2, 1 + L, 64)
    layers = tiny.encode(x, return_layers=[0, -1])
    assert [t.shape for t in layers] == [(2, 1 + L, 64)] * 2
    # the last block's output, normed, is the plain encoding
    torch.testing.assert_close(tiny.encoder.norm(layers[1]), tiny.encode(x))


def test_presets_parameter_counts():
    enc = {name: sum(p.numel() for p in create_model(name).encoder.parameters())
           for name in ("prithvi_eo_v1_100m",)}
    # ViT-B/16 with a 3D patch embedding: 85.8 M encoder parameters (+ 0.8 k for the 6-band patch conv)
    assert 85e6 < enc["prithvi_eo_v1_100m"] < 87e6


def test_unknown_preset_and_option():
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("prithvi_huge")
    with pytest.raises(ConfigError, match="unknown model option"):
        create_model("prithvi_tiny", embed_width=3)


@pytest.mark.parametrize("patch", [(1, 8, 8), (2, 4, 4)])
def test_patchify_layout_and_inverse(patch):
    u, p, q = patch
    x = torch.randn(2, 3, 4, 16, 24)
    patches = patchify(x, patch)
    t, h, w = 4 // u, 16 // p, 24 // q
    assert patches.shape == (2, t * h * w, u * p * q * 3)
    # b c (t u) (h p) (w q) -> b (t h w) (u p q c), checked element by element on a few positions
    rng = np.random.default_rng(0)
    for _ in range(50):
        b, c = rng.integers(2), rng.integers(3)
        ti, hi, wi = rng.integers(t), rng.integers(h), rng.integers(w)
        uu, pp, qq = rng.integers(u), rng.integers(p), rng.integers(q)
        token = (ti * h + hi) * w + wi
        elem = ((uu * p + pp) * q + qq) * 3 + c
        assert patches[b, token, elem] == x[b, c, ti * u + uu, hi * p + pp, wi * q + qq]
    torch.testing.assert_close(unpatchify(patches, patch, x.shape[1:]), x, rtol=0, atol=0)


def test_pos_embed_matches_formula_evaluated_directly():
    model = create_model("prithvi_eo_v1_100m", depth=1, decoder_depth=1)
    D, (t, h, w) = 768, model.encoder.grid_size
    assert (t, h, w) == (3, 14, 14)

    def one_d(dim, pos):
        k = np.arange(dim // 2)
        omega = 1.0 / 10000 ** (k / (dim / 2))
        return np.concatenate([np.sin(pos * omega), np.cos(pos * omega)])

    pe = model.encoder.pos_embed[0].numpy()
    assert pe.shape == (1 + t * h * w, D)
    np.testing.assert_array_equal(pe[0], 0.0)
    for ti, hi, wi in [(0, 0, 0), (0, 0, 1), (1, 5, 3), (2, 13, 13), (2, 0, 7)]:
        token = 1 + (ti * h + hi) * w + wi
        expected = np.concatenate([one_d(288, wi), one_d(288, hi), one_d(192, ti)])
        np.testing.assert_allclose(pe[token], expected, atol=1e-6)
    dpe = model.decoder.decoder_pos_embed[0].numpy()
    token = 1 + (1 * h + 2) * w + 9
    expected = np.concatenate([one_d(192, 9), one_d(192, 2), one_d(128, 1)])
    np.testing.assert_allclose(dpe[token], expected, atol=1e-6)
    assert not model.encoder.pos_embed.requires_grad
    assert "encoder.pos_embed" in model.state_dict()


def test_pos_embed_needs_width_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        sincos_3d(72, (1, 2, 2))


def test_masking_ratio_and_reference_noise(tiny):
    x = torch.randn(3, 6, 3, 64, 64)
    L = 192
    torch.manual_seed(123)
    _, _, mask = tiny(x, mask_ratio=0.75)
    assert torch.all(mask.sum(1) == L - int(L * 0.25))
    # The reference draws noise = torch.rand(B, L) and keeps the argsort's first len_keep.
    torch.manual_seed(123)
    noise = torch.rand(3, L)
    keep = torch.argsort(noise, dim=1)[:, : int(L * 0.25)]
    expected = torch.ones(3, L)
    expected.scatter_(1, keep, 0.0)
    torch.testing.assert_close(mask, expected)
    ids_keep, m2, ids_restore = random_masking(3, L, 0.75, noise=noise)
    torch.testing.assert_close(m2, expected)
    torch.testing.assert_close(torch.gather(torch.argsort(noise, 1), 1, ids_restore), torch.arange(L).expand(3, L))


def test_loss_only_on_masked_patches(tiny):
    x = torch.randn(2, 6, 3, 64, 64)
    with torch.no_grad():
        loss, pred, mask = tiny(x)
        target = tiny.patchify(x)
        manual = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        torch.testing.assert_close(loss, manual)
        changed = pred.clone()
        changed[mask == 0] += 100.0  # visible patches: no effect
        torch.testing.assert_close(tiny.forward_loss(x, changed, mask), loss)
        changed = pred.clone()
        changed[mask == 1] += 1.0
        assert tiny.forward_loss(x, changed, mask) > loss + 0.5


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("with_valid", [False, True])
def test_training_loss_on_masked_tokens_only_equals_full_loss(norm_pix, with_valid):
    """``return_pred=False`` predicts only the masked patches: same loss and same gradients."""
    torch.manual_seed(0)
    model = create_model("prithvi_tiny", norm_pix_loss=norm_pix)
    x = torch.randn(2, 6, 3, 64, 64)
    valid = torch.rand(2, 1, 3, 64, 64) > 0.2 if with_valid else None
    noise = torch.rand(2, 3 * 8 * 8)
    results = []
    for return_pred in (True, False):
        model.zero_grad()
        loss, pred, mask = model(x, valid=valid, noise=noise, return_pred=return_pred)
        loss.backward()
        results.append((loss.detach(), pred, mask, [p.grad.clone() for p in model.parameters()]))
    (l_full, p_full, m_full, g_full), (l_part, p_part, m_part, g_part) = results
    assert p_full.shape == (2, 192, 384) and p_part is None
    torch.testing.assert_close(m_part, m_full)
    torch.testing.assert_close(l_part, l_full, rtol=1e-6, atol=1e-7)
    for a, b in zip(g_full, g_part):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_norm_pix_loss():
    torch.manual_seed(0)
    model = create_model("prithvi_tiny", norm_pix_loss=True)
    x = torch.randn(2, 6, 3, 64, 64) * 5 + 3
    with torch.no_grad():
        loss, pred, mask = model(x)
        t = model.patchify(x)
        t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
        manual = (((pred - t) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, manual)
    # a perfect normalized prediction reconstructs the input exactly
    rec = model.reconstruct(x, t, torch.ones_like(mask))
    torch.testing.assert_close(rec, x, atol=1e-4, rtol=1e-4)


def test_valid_pixels_exclude_nodata_from_loss(tiny):
    x = torch.randn(2, 6, 3, 64, 64)
    valid = torch.ones(2, 1, 3, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        torch.manual_seed(1)
        loss_all, pred, mask = tiny(x, valid=valid)
        bad = x.clone()
        bad[:, :, :, :8, :8] = 1e4  # nodata block...
        valid[:, :, :, :8, :8] = False  # ...flagged invalid
        torch.manual_seed(1)
        loss_masked, pred2, _ = tiny(bad, valid=valid)
    assert torch.isfinite(loss_masked) and loss_masked < 1e3


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = create_model("prithvi_tiny_tl")
    x = torch.randn(2, 6, 3, 64, 64)
    tc = torch.tensor([[[2020, 10], [2020, 100], [2020, 200]]] * 2, dtype=torch.float32)
    lc = torch.tensor([[38.1, -0.8], [45.0, -120.0]])
    model.eval()  # no coordinate drop-out
    loss, _, _ = model(x, temporal_coords=tc, location_coords=lc)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_bf16_autocast_close_to_fp32(tiny):
    x = torch.randn(2, 6, 3, 64, 64)
    torch.manual_seed(5)
    loss32, _, _ = tiny(x)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, pred16, _ = tiny(x)
    assert pred16.dtype == torch.bfloat16
    assert loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) / loss32.item() < 0.05
    loss16.backward()
    assert tiny.encoder.patch_embed.proj.weight.grad is not None


def test_other_input_size_interpolates_pos_embed(tiny):
    x = torch.randn(1, 6, 2, 96, 80)  # 2 frames, 12x10 patches instead of 3 frames, 8x8
    out = tiny.encode(x)
    assert out.shape == (1, 1 + 2 * 12 * 10, 64)
    loss, pred, mask = tiny(x)
    assert pred.shape == (1, 240, 384) and torch.isfinite(loss)


def test_interpolate_pos_embed_properties():
    pe = torch.from_numpy(sincos_3d(64, (2, 4, 4))).float()[None]
    assert interpolate_pos_embed(pe, (2, 4, 4), (2, 4, 4)) is pe
    out = interpolate_pos_embed(pe, (2, 4, 4), (3, 8, 6))
    assert out.shape == (1, 1 + 3 * 8 * 6, 64)
    torch.testing.assert_close(out[:, 0], pe[:, 0])
    const = torch.ones(1, 1 + 32, 16)
    torch.testing.assert_close(interpolate_pos_embed(const, (2, 4, 4), (2, 7, 7)), torch.ones(1, 1 + 98, 16))
    # upsampling by 2 then sampling the same positions keeps a smooth field close to the original
    small = torch.from_numpy(sincos_3d(16, (1, 8, 8))).float()[None]  # low frequencies only
    big = interpolate_pos_embed(small, (1, 8, 8), (1, 16, 16))[0, 1:].reshape(16, 16, 16)
    assert torch.allclose(big[1::2, 1::2].mean(), small[0, 1:].reshape(8, 8, 16).mean(), atol=0.05)


def test_temporal_and_location_encodings_change_tokens():
    torch.manual_seed(0)
    model = create_model("prithvi_tiny_tl").eval()
    x = torch.randn(2, 6, 3, 64, 64)
    tc = torch.tensor([[[2019, 30], [2019, 120], [2019, 250]]] * 2, dtype=torch.float32)
    lc = torch.tensor([[10.0, 20.0], [-30.0, 140.0]])
    base = model.encode(x)
    with_t = model.encode(x, temporal_coords=tc)
    with_l = model.encode(x, location_coords=lc)
    assert not torch.allclose(base, with_t) and not torch.allclose(base, with_l)
    # location differs per sample -> different encodings for identical images
    same = x[:1].expand(2, -1, -1, -1, -1)
    out = model.encode(same, location_coords=lc)
    assert not torch.allclose(out[0], out[1])
    assert model.encoder.temporal_embed_enc.scale.item() == pytest.approx(0.1)
    assert {"encoder.temporal_embed_enc.scale", "encoder.location_embed_enc.scale",
            "decoder.temporal_embed_dec.scale", "decoder.location_embed_dec.scale"} <= set(model.state_dict())


def test_coordinate_dropout_drops_whole_samples():
    torch.manual_seed(0)
    model = create_model("prithvi_tiny_tl", coords_drop_rate=1.0)
    x = torch.randn(2, 6, 3, 64, 64)
    tc = torch.tensor([[[2019, 30], [2019, 120], [2019, 250]]] * 2, dtype=torch.float32)
    lc = torch.tensor([[10.0, 20.0], [-30.0, 140.0]])
    model.train()
    dropped = model.encode(x, temporal_coords=tc, location_coords=lc)
    torch.testing.assert_close(dropped, model.encode(x))
    model.eval()  # no drop-out at evaluation
    assert not torch.allclose(model.encode(x, temporal_coords=tc, location_coords=lc), dropped)


def test_explicit_patch_mask_with_different_counts_per_sample(tiny):
    tiny.eval()
    x = torch.randn(2, 6, 3, 64, 64)
    L = 192
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, L)
    mask[0, torch.randperm(L, generator=g)[:100]] = 1
    mask[1, torch.randperm(L, generator=g)[:150]] = 1
    with torch.no_grad():
        loss, pred, out_mask = tiny(x, mask=mask)
        torch.testing.assert_close(out_mask, mask)
        for i in range(2):  # padding for the batch must not change any sample's result
            _, pred_i, _ = tiny(x[i:i + 1], mask=mask[i:i + 1])
            torch.testing.assert_close(pred[i], pred_i[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="every patch"):
        tiny(x, mask=torch.ones(2, L))


def test_reconstruct_keeps_visible_patches(tiny):
    x = torch.randn(1, 6, 3, 64, 64)
    with torch.no_grad():
        _, pred, mask = tiny(x)
        rec = tiny.reconstruct(x, pred, mask)
    vis = tiny.patchify(rec)[mask == 0]
    torch.testing.assert_close(vis, tiny.patchify(x)[mask == 0])
    torch.testing.assert_close(tiny.patchify(rec)[mask == 1], pred[mask == 1])
    assert math.isclose(mask.mean().item(), 0.75, abs_tol=0.01)


def test_inference_under_autocast_reuses_cast_weights_and_follows_updates(tiny, monkeypatch):
    """The kept bf16 weight copies give bitwise the plain autocast result, and are redone when weights change."""
    monkeypatch.setenv("GEOFM_ATTENTION_FP32", "0")  # the same attention kernel with and without gradients
    tiny.eval()
    x = torch.randn(2, 6, 3, 64, 64)

    def plain():  # grad enabled: autocast casts the weights itself
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return tiny.encode(x).detach()

    def inference():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return tiny.encode(x)

    first, again = inference(), inference()
    assert tiny.encoder.blocks[0].mlp.fc1.__dict__["_cast_cache"][1][0].dtype == torch.bfloat16
    assert torch.equal(first, plain()) and torch.equal(again, first)
    with torch.no_grad():
        tiny.encoder.blocks[0].mlp.fc1.weight.mul_(1.5)  # in place, as an optimizer step does
    changed = inference()
    assert not torch.equal(changed, first) and torch.equal(changed, plain())
    tiny.load_state_dict(create_model("prithvi_tiny").state_dict())  # copy_ into the same storage
    assert torch.equal(inference(), plain())


def test_fp32_attention_probe_is_cached_leaves_rng_alone_and_can_be_pinned(tiny, monkeypatch):
    from geofm.models import fast_cpu

    monkeypatch.delenv("GEOFM_ATTENTION_FP32", raising=False)
    monkeypatch.setattr(fast_cpu, "_FP32_ATTENTION", {})
    x = torch.randn(2, 6, 3, 64, 64)
    q = torch.randn(2, 4, 49, 16).bfloat16()
    assert not fast_cpu.attention_in_fp32(q.float())  # fp32 inputs: nothing to decide
    with torch.no_grad():
        assert not fast_cpu.attention_in_fp32(q)  # inference: native kernel, no probe
    assert fast_cpu._FP32_ATTENTION == {}
    state = torch.random.get_rng_state()
    choice = fast_cpu.attention_in_fp32(q)
    assert torch.equal(torch.random.get_rng_state(), state)  # the probe draws from its own generator
    assert list(fast_cpu._FP32_ATTENTION.values()) == [choice]
    calls = []
    monkeypatch.setattr(fast_cpu, "_probe_attention", lambda *a: calls.append(a) or (1.0, 1.0))
    assert fast_cpu.attention_in_fp32(q) == choice and calls == []  # cached per shape
    losses = {}
    for pinned in ("0", "1"):
        monkeypatch.setenv("GEOFM_ATTENTION_FP32", pinned)
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses[pinned] = tiny(x)[0].item()
    assert losses["0"] != losses["1"]  # the fp32 path really runs in fp32 under autocast
    assert abs(losses["0"] - losses["1"]) / losses["1"] < 0.02
