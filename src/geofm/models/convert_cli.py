"""``geofm convert IN OUT``: export any supported checkpoint to safetensors + config.json."""

from __future__ import annotations

import argparse

from geofm.models.checkpoints import infer_config, load_into, read_checkpoint, save_pretrained
from geofm.models.presets import build_config, list_models
from geofm.models.mae import PrithviMAE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="checkpoint file (.pt/.pth/.ckpt/.safetensors), model folder or cached repo id")
    p.add_argument("output", help="output folder (model.safetensors + config.json)")
    p.add_argument("--model", choices=list_models(), help="preset to build (default: from the checkpoint)")
    p.add_argument("--encoder-only", action="store_true", help="export (or accept) the encoder alone")


def run(args: argparse.Namespace) -> int:
    from geofm.io import check_output_dir

    check_output_dir(args.output, "OUT")
    ckpt = read_checkpoint(args.input)
    if args.model:
        config = build_config(args.model)
    elif ckpt.config:
        config = build_config(None, ckpt.config)
    else:
        config = build_config(None, infer_config(ckpt.state_dict))
    model = PrithviMAE(config)
    has_decoder = any(k.startswith("decoder.") for k in ckpt.state_dict)
    encoder_only = args.encoder_only or not has_decoder
    load_into(model, ckpt.state_dict, strict=True, encoder_only=encoder_only, source=ckpt.source)
    out = save_pretrained(model, args.output, name=args.model, encoder_only=encoder_only)
    n = sum(v.numel() for k, v in model.state_dict().items() if not (encoder_only and k.startswith("decoder.")))
    print(f"wrote {out}/model.safetensors ({n / 1e6:.1f} M values) and {out}/config.json"
          f"{' (encoder only)' if encoder_only else ''}")
    return 0
