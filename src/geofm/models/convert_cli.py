"""``geofm convert IN OUT``: export any supported checkpoint to safetensors + config.json.

``IN`` is a pretrained encoder/MAE checkpoint (any layout :func:`geofm.models.read_checkpoint`
reads) or a released fine-tune as published (hls-foundation-os ``.pth`` + ``.py``, TerraTorch
Lightning checkpoint or Hugging Face folder): the latter becomes a geofm export that
``geofm predict --checkpoint OUT`` runs with the same preprocessing.
"""

from __future__ import annotations

import argparse
from pathlib import Path



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="checkpoint file (.pt/.pth/.ckpt/.safetensors), model folder, cached repo id, or "
                                 "a released fine-tune (hls-foundation-os .pth + .py, TerraTorch .ckpt / HF folder)")
    p.add_argument("output", help="output folder (model.safetensors + config.json)")
    p.add_argument("--model", help="preset to build, e.g. prithvi_eo_v1_100m (default: from the checkpoint)")
    p.add_argument("--encoder-only", action="store_true", help="export (or accept) the encoder alone")


def _released_layout(source: str) -> tuple[str | None, object]:
    """(layout of a released fine-tune or None, the torch file's object if it had to be read to tell)."""
    from geofm.errors import CheckpointError
    from geofm.models.released import find_layout

    if not Path(source).expanduser().exists():
        return None, None
    try:
        layout, _ = find_layout(source)
    except CheckpointError:
        return None, None
    if layout == "terratorch" and Path(source).suffix in (".pt", ".ckpt"):  # a pretrained .pt is not a fine-tune
        from geofm.models.checkpoints import load_torch_file

        raw = load_torch_file(source)
        if not (isinstance(raw, dict) and isinstance(raw.get("hyper_parameters"), dict)
                and "model_args" in raw["hyper_parameters"]):
            return None, raw
        return layout, raw
    return (None if layout == "geofm" else layout), None


def run(args: argparse.Namespace) -> int:
    from geofm.io import check_output_dir
    from geofm.models.checkpoints import load_into, read_checkpoint, save_pretrained
    from geofm.models.mae import PrithviMAE
    from geofm.models.presets import build_config, infer_config

    if args.model:
        build_config(args.model)  # an unknown name stops here, before anything is read or written
    check_output_dir(args.output, "OUT")
    layout, raw = _released_layout(args.input)  # raw: a torch file read to tell the layout, not read again
    if layout is not None:
        from geofm.models.released import load_released, save_released

        model, info = load_released(args.input, preloaded=raw)
        out = save_released(model, info, args.output)
        n = sum(v.numel() for v in model.state_dict().values())
        print(f"wrote {out}/model.safetensors ({n / 1e6:.1f} M values) and {out}/config.json "
              f"({layout} fine-tune, {info.num_classes} classes, {info.num_frames} frame(s) x {info.in_chans} bands)")
        return 0
    ckpt = read_checkpoint(args.input, preloaded=raw)
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
