"""The cloud-gap imputer: temporal baseline, zero-initialised correction, pixel-level fill, export round trip."""

import pytest
import torch

from geofm.bands import MODEL_BANDS
from geofm.models import create_model, load_finetuned, save_finetuned
from geofm.models.imputer import Imputer, day_numbers, hidden_patches, temporal_baseline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**kw):
    return create_model("prithvi_tiny", img_size=32, **kw)


def test_temporal_baseline_interpolates_between_nearest_clear_dates():
    x = torch.tensor([0.0, 10.0, 20.0, 30.0, 40.0]).view(1, 1, 5, 1, 1)
    hidden = torch.tensor([False, True, True, False, True]).view(1, 5, 1, 1)
    base, dist = temporal_baseline(x, hidden)
    # frame 1, 2: between clear frames 0 and 3; frame 4: only frame 3 before (nearest at the end);
    # frame 0 and 3 (clear): the leave-this-frame-out value from the other clear frames
    assert base.flatten().tolist() == pytest.approx([30.0, 10.0, 20.0, 0.0, 30.0])
    inf = float("inf")  # undated frames count FRAME_DAYS (16) apart; inf: no clear date on that side
    assert dist[0, 0, :, 0, 0].tolist() == [inf, 16, 32, 48, 16]  # days since the last clear one
    assert dist[0, 1, :, 0, 0].tolist() == [48, 32, 16, inf, inf]
    nearest, _ = temporal_baseline(x, hidden, linear=False)
    assert nearest.flatten().tolist() == [30.0, 0.0, 30.0, 0.0, 30.0]


def test_baseline_weights_come_from_days_not_from_the_frame_index():
    """2015-07-11, 2015-08-30, 2015-09-09: the middle date is 50 days after the first and 10 before the last."""
    coords = torch.tensor([[[2015, 192], [2015, 242], [2015, 252]]], dtype=torch.float32)  # (year, day of year)
    days = day_numbers(coords, 1, 3)
    assert days.tolist() == [[0.0, 50.0, 60.0]]
    x = torch.tensor([0.0, 99.0, 60.0]).view(1, 1, 3, 1, 1)
    hidden = torch.tensor([False, True, False]).view(1, 3, 1, 1)
    base, dist = temporal_baseline(x, hidden, days=days)
    assert float(base[0, 0, 1]) == pytest.approx(60.0 * 5 / 6)  # w = 50 / 60 = 5/6, not 1/2
    assert dist[0, :, 1, 0, 0].tolist() == [50.0, 10.0]
    nearest, _ = temporal_baseline(x, hidden, linear=False, days=days)
    assert float(nearest[0, 0, 1]) == 60.0  # 10 days away beats 50
    # across a year end and a leap day: 2023-12-31 -> 2024-03-01 is 61 days
    assert day_numbers(torch.tensor([[[2023, 365], [2024, 61]]]), 1, 2).tolist() == [[0.0, 61.0]]
    # a sample with a NaN date is equally spaced, the dated one of the same batch is not
    mixed = torch.tensor([[[2015, 192], [2015, 242], [2015, 252]], [[float("nan")] * 2] * 3])
    assert day_numbers(mixed, 2, 3).tolist() == [[0.0, 50.0, 60.0], [0.0, 16.0, 32.0]]
    # the imputer (untrained: the baseline) interpolates by day as well
    imputer = Imputer(tiny(), residual="linear").eval()
    xi = torch.zeros(1, 6, 3, 32, 32)
    xi[:, :, 2] = 1.0
    hid = torch.zeros(1, 3, 32, 32, dtype=torch.bool)
    hid[0, 1] = True
    with torch.no_grad():
        out = imputer(xi, hid, coords)
    torch.testing.assert_close(out[:, :, 1], torch.full((1, 6, 32, 32), 5 / 6))


def test_untrained_residual_imputer_equals_the_linear_baseline_and_keeps_clear_pixels():
    torch.manual_seed(0)
    imputer = Imputer(tiny(), residual="linear").eval()
    x = torch.randn(2, 6, 3, 32, 32)
    hidden = torch.zeros(2, 3, 32, 32, dtype=torch.bool)
    hidden[:, 1, 4:20, 6:13] = True  # pixel-level gaps, not patch-aligned
    hidden[1, 2, 30:, :] = True
    with torch.no_grad():
        out = imputer(x, hidden)
    base, _ = temporal_baseline(x, hidden)
    h = hidden.unsqueeze(1).expand_as(x)
    assert torch.equal(out[~h], x[~h])  # clear pixels of a hidden patch are kept
    torch.testing.assert_close(out[h], base[h])  # zero-initialised correction head
    # after one optimizer step the correction is no longer zero, and only hidden pixels move
    opt = torch.optim.SGD(imputer.parameters(), lr=0.1)
    imputer.train()
    loss = ((imputer(x, hidden) - (x + 1.0)) ** 2)[h].mean()
    loss.backward()
    opt.step()
    with torch.no_grad():
        out2 = imputer.eval()(x, hidden)
    assert torch.equal(out2[~h], x[~h]) and not torch.allclose(out2[h], base[h])


def test_pure_reconstruction_masks_patches_over_the_threshold_and_fills_pixels():
    hidden = torch.zeros(1, 3, 16, 16, dtype=torch.bool)
    hidden[0, 0, :8, :8] = True  # a whole patch
    hidden[0, 1, 0, 15] = True  # one pixel of patch (1, 0, 1)
    assert hidden_patches(hidden, (1, 8, 8)).flatten().tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert hidden_patches(hidden, (1, 8, 8), 0.5).sum() == 1
    assert hidden_patches(torch.ones(1, 1, 16, 16, dtype=torch.bool), (1, 8, 8)).sum() == 3  # one stays visible
    torch.manual_seed(0)
    imputer = Imputer(tiny(), residual="none").eval()
    x = torch.randn(1, 6, 3, 32, 32)
    gaps = torch.zeros(1, 3, 32, 32, dtype=torch.bool)
    gaps[0, 1, 3:9, 3:9] = True
    with torch.no_grad():
        out = imputer(x, gaps)
    g = gaps.unsqueeze(1).expand_as(x)
    assert torch.equal(out[~g], x[~g]) and not torch.allclose(out[g], x[g])
    x2 = x.clone()
    x2[g] = 99.0  # what a cloud looks like: the gap's own values never reach the model
    with torch.no_grad():
        torch.testing.assert_close(imputer(x2, gaps)[g], out[g])


def test_imputer_export_round_trip(tmp_path):
    torch.manual_seed(0)
    imputer = Imputer(tiny(), residual="linear")
    torch.nn.init.normal_(imputer.mae.decoder.decoder_pred.weight, std=0.01)  # as if trained
    imputer.eval()
    save_finetuned(imputer, tmp_path / "imp", task="imputation", mean=[1000.0] * 6, std=[500.0] * 6,
                   bands=MODEL_BANDS, img_size=32)
    model, info = load_finetuned(tmp_path / "imp")
    assert isinstance(model, Imputer) and model.residual == "linear" and info.img_size == 32
    x = torch.randn(1, 6, 3, 32, 32)
    hidden = torch.rand(1, 3, 32, 32) > 0.7
    with torch.no_grad():
        torch.testing.assert_close(model(x, hidden), imputer(x, hidden))


def test_an_export_from_before_the_gate_loads_with_the_gate_open(tmp_path):
    """An imputer export without ``residual_gate`` tensors fills as it did: baseline + gain x local residuals."""
    from safetensors.torch import load_file, save_file

    from geofm.models.imputer import local_residual

    torch.manual_seed(0)
    imputer = Imputer(tiny(), residual="linear").eval()
    with torch.no_grad():
        imputer.residual_gain.copy_(torch.linspace(-0.05, 0.05, imputer.residual_gain.numel()))
    folder = save_finetuned(imputer, tmp_path / "old", task="imputation", mean=[1000.0] * 6, std=[500.0] * 6,
                            bands=MODEL_BANDS, img_size=32)
    weights = folder / "model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if not k.startswith("residual_gate.")}, weights)
    model, _ = load_finetuned(folder)
    x = torch.randn(1, 6, 3, 32, 32)
    hidden = torch.zeros(1, 3, 32, 32, dtype=torch.bool)
    hidden[:, 1, 5:20, 3:25] = True
    base, _ = temporal_baseline(x, hidden)
    gains = Imputer.GAIN_SCALE * imputer.residual_gain.detach().view(len(Imputer.RESIDUAL_WINDOWS), 1, -1, 1, 1, 1)
    old = base + sum(g * local_residual(x, base, hidden, k) for g, k in zip(gains, Imputer.RESIDUAL_WINDOWS))
    h = hidden.unsqueeze(1).expand_as(x)
    with torch.no_grad():
        torch.testing.assert_close(model(x, hidden)[h], old[h])


def test_tl_encoders_embed_the_dates_in_imputation():
    """A TL encoder gets (year, day of year) as temporal coordinates: two series with the same spacing in other
    seasons are filled differently; undated (NaN) samples give it none."""
    torch.manual_seed(0)
    imputer = Imputer(tiny(coords_encoding=("time",)), residual="linear").eval()
    torch.nn.init.normal_(imputer.mae.decoder.decoder_pred.weight, std=0.05)  # a non-zero correction
    x = torch.randn(1, 6, 3, 32, 32)
    hidden = torch.zeros(1, 3, 32, 32, dtype=torch.bool)
    hidden[0, 1, 8:24, 8:24] = True
    summer = torch.tensor([[[2015, 192], [2015, 242], [2015, 252]]], dtype=torch.float32)
    winter = torch.tensor([[[2015, 2], [2015, 52], [2015, 62]]], dtype=torch.float32)  # same days apart
    undated = torch.full((1, 3, 2), float("nan"))
    with torch.no_grad():
        a, b = imputer(x, hidden, summer), imputer(x, hidden, winter)
        c, d = imputer(x, hidden, undated), imputer(x, hidden)
    assert not torch.allclose(a, b)  # the season reaches the encoder
    torch.testing.assert_close(c, d)  # no dates: no temporal embedding, equal spacing


def test_residual_gate_scales_the_local_residual_correction_per_pixel():
    """With the decoder at zero, the fill is baseline + sum over windows of gain x gate x local residual:
    a closed gate gives the baseline whatever the gains, an open one the full gained residuals, and a
    gate that reads the gap distances opens where the clear date is far and stays closed where it is near."""
    from geofm.models.imputer import local_residual

    torch.manual_seed(0)
    imputer = Imputer(tiny(), residual="linear").eval()
    x = torch.randn(1, 6, 3, 32, 32)
    hidden = torch.zeros(1, 3, 32, 32, dtype=torch.bool)
    hidden[:, 1, 8:20, 8:20] = True
    days = torch.tensor([[[2020.0, 100.0], [2020.0, 108.0], [2020.0, 156.0]]])  # 8 then 48 days
    base, _ = temporal_baseline(x, hidden, days=day_numbers(days, 1, 3))
    local = [local_residual(x, base, hidden, k) for k in Imputer.RESIDUAL_WINDOWS]
    with torch.no_grad():
        imputer.residual_gain.fill_(0.5 / Imputer.GAIN_SCALE)  # gain 0.5 per window
        h = hidden.unsqueeze(1).expand_as(x)
        imputer.residual_gate.bias.fill_(-10.0)  # closed
        torch.testing.assert_close(imputer(x, hidden, days)[h], base[h])
        imputer.residual_gate.bias.fill_(10.0)  # open
        torch.testing.assert_close(imputer(x, hidden, days)[h], (base + 0.5 * local[0] + 0.5 * local[1])[h])
        # gate of the first window from the distance before (input channel 3C): open for 48 days, shut for 8
        c = x.shape[1]
        imputer.residual_gate.bias.fill_(-10.0)
        imputer.residual_gate.weight[:c, 3 * c] = 20.0 / (48 / Imputer.DAY_SCALE)
        hidden_late = torch.zeros_like(hidden)
        hidden_late[:, 2, 8:20, 8:20] = True  # the last date: 48 days after the clear one before
        base_late, _ = temporal_baseline(x, hidden_late, days=day_numbers(days, 1, 3))
        late = local_residual(x, base_late, hidden_late, Imputer.RESIDUAL_WINDOWS[0])
        hl = hidden_late.unsqueeze(1).expand_as(x)
        torch.testing.assert_close(imputer(x, hidden_late, days)[hl], (base_late + 0.5 * late)[hl], atol=1e-4,
                                   rtol=1e-4)
        torch.testing.assert_close(imputer(x, hidden, days)[h], base[h], atol=1e-4, rtol=1e-4)
