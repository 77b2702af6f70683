"""Golden logits of TerraTorch fine-tuned models, for tests/models/test_released.py (run once, in the peer venv).

    .peer-venv/bin/python bench/make_released_golden.py   # writes tests/models/data/terratorch_*.{safetensors,json}

Each case builds a tiny segmentation model with TerraTorch's own ``EncoderDecoderFactory`` (the
factory the released Prithvi-EO-2.0 fine-tunes were trained with), gives every weight and every
BatchNorm statistic a seeded random value, and stores: the state dict (TerraTorch's key names),
the input, the TL coordinates and TerraTorch's logits (``PixelWiseModel.forward`` in eval mode),
with the ``model_args`` as they appear in a ``config.yaml``. The test writes the published
layouts (Lightning checkpoint, Hugging Face folder, old key spelling) from these and checks that
geofm reproduces the logits. Widths are tiny (16) so that the files stay near 100 kB.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "tests" / "models" / "data"

CASES = {
    # Prithvi-EO-2.0-300M-TL-Sen1Floods11 architecture (TL backbone, UperNet, scale modules), tiny widths.
    "tl_upernet": dict(
        model_args=dict(backbone="prithvi_eo_v2_300_tl", backbone_pretrained=False, backbone_num_frames=1,
                        backbone_depth=4, backbone_embed_dim=16, backbone_num_heads=2, backbone_img_size=32,
                        backbone_patch_size=[1, 8, 8],
                        backbone_bands=["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"],
                        decoder="UperNetDecoder", decoder_channels=16, num_classes=2, head_dropout=0.1,
                        necks=[{"name": "SelectIndices", "indices": [0, 1, 2, 3]}, {"name": "ReshapeTokensToImage"},
                               {"name": "LearnedInterpolateToPyramidal"}]),
        input_shape=(2, 6, 1, 32, 32), coords=True),
    # A two-frame backbone with a U-Net decoder and a head with a conv block; the input is not a
    # multiple of twice the patch size (TerraTorch pads it on both sides and crops the logits) and
    # larger than the backbone's img_size (position embedding interpolated).
    "unet_t2": dict(
        model_args=dict(backbone="prithvi_eo_v2_300", backbone_pretrained=False, backbone_num_frames=2,
                        backbone_depth=4, backbone_embed_dim=16, backbone_num_heads=2, backbone_img_size=16,
                        backbone_patch_size=[1, 8, 8],
                        decoder="UNetDecoder", decoder_channels=[16, 8, 8, 4], num_classes=3,
                        head_channel_list=[4], head_dropout=0.0,
                        necks=[{"name": "SelectIndices", "indices": [0, 1, 2, 3]},
                               {"name": "ReshapeTokensToImage", "effective_time_dim": 2},
                               {"name": "LearnedInterpolateToPyramidal"}]),
        input_shape=(1, 6, 2, 32, 24), coords=False),
}


def randomize(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or name.endswith("pos_embed"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith(".scale"):  # TL encoders: make the coordinates matter
                t.fill_(0.7)
            else:
                t.add_(torch.randn(t.shape, generator=g) * 0.1)


def main() -> None:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(HERE))
    from terratorch_peer import import_terratorch

    tt = import_terratorch()
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (name, case) in enumerate(CASES.items()):
        torch.manual_seed(i)
        args = dict(case["model_args"])
        model = tt.EncoderDecoderFactory().build_model(task="segmentation", **args)
        randomize(model, 100 + i)
        model.eval()
        g = torch.Generator().manual_seed(200 + i)
        x = torch.randn(case["input_shape"], generator=g)
        tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        kwargs = {}
        if case["coords"]:
            b, t = x.shape[0], x.shape[2]
            kwargs["temporal_coords"] = torch.tensor([[[2019.0, 200.0 + 10 * j] for j in range(t)]] * b)
            kwargs["location_coords"] = torch.tensor([[38.1, -0.76]] * b)
            tensors["__temporal_coords__"] = kwargs["temporal_coords"]
            tensors["__location_coords__"] = kwargs["location_coords"]
        with torch.no_grad():
            logits = model(x, **kwargs).output
        tensors["__input__"], tensors["__logits__"] = x, logits.contiguous()
        save_file(tensors, str(OUT / f"terratorch_{name}.safetensors"),
                  metadata={"terratorch": tt.version, "torch": torch.__version__})
        (OUT / f"terratorch_{name}.json").write_text(json.dumps(
            {"model_args": args, "terratorch": tt.version, "logits_shape": list(logits.shape)}, indent=2) + "\n")
        print(f"{name}: logits {tuple(logits.shape)}, {sum(v.numel() for v in tensors.values())} values")


if __name__ == "__main__":
    main()
