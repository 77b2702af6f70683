"""Run the released fine-tuned Prithvi models as published: find the layout, build the network, load the
weights, and carry the released preprocessing in :class:`~geofm.models.export.FinetunedInfo`.

Layouts (see docs/formats.md):

* ``hls_foundation`` — Prithvi-EO-1.0 fine-tunes of hls-foundation-os: ``<name>.pth`` (mmcv
  checkpoint) with its mmseg config ``<name>.py`` beside it (a folder holding both, or the
  ``.pth``). The config is read with ``ast``, never executed
  (:mod:`~geofm.models.released.config_files`). Network: :mod:`~geofm.models.released.hls_foundation`.
* ``terratorch`` — Prithvi-EO-2.0 fine-tunes of TerraTorch: a Lightning checkpoint (``.ckpt``/``.pt``
  with ``state_dict`` keys ``model.*`` and ``hyper_parameters.model_args``; the file, or a folder
  holding it alone, without a config) or a Hugging Face folder (``config.yaml`` + a ``.pt``/``.ckpt``).
  Network: :mod:`~geofm.models.released.terratorch_prithvi`.
* ``geofm_released`` — what ``geofm convert`` writes from either: ``config.json`` (with a
  ``released`` section) + ``model.safetensors``.

Preprocessing is expressed in geofm's terms: ``mean``/``std`` per band in the units of the input
file (the released pipelines' ``constant`` scale is folded in: ``(raw * s - m) / d = (raw - m/s) / (d/s)``),
``nodata_fill`` (normalized value of nodata pixels, as the released pipeline's replacement gives)
and ``stacked_bands`` (1-based bands of each frame in a stacked GeoTIFF).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geofm.bands import HLS_NODATA, MODEL_BANDS, norm_stats
from geofm.errors import CheckpointError
from geofm.models.checkpoints import empty_model, load_safetensors, load_strict, load_torch_file, write_model_folder
from geofm.models.export import FinetunedInfo
from geofm.models.released.config_files import UNKNOWN, read_python_config, read_yaml_config
from geofm.models.released.hls_foundation import HLSFoundationConfig, HLSFoundationSegmenter
from geofm.models.released.terratorch_prithvi import TerraTorchConfig, TerraTorchSegmenter, adapt_keys

log = logging.getLogger(__name__)

LAYOUTS = ("hls_foundation", "terratorch", "geofm_released")
_TORCH_SUFFIXES = (".pth", ".pt", ".ckpt")

#: Sentinel-2 band order of the Sen1Floods11 S2Hand stacks (TerraTorch's ``Sen1Floods11NonGeo.all_band_names``).
SEN1FLOODS11_BANDS = ("COASTAL_AEROSOL", "BLUE", "GREEN", "RED", "RED_EDGE_1", "RED_EDGE_2", "RED_EDGE_3",
                      "NIR_BROAD", "NIR_NARROW", "WATER_VAPOR", "CIRRUS", "SWIR_1", "SWIR_2")
#: Per-band reflectance (0..1) statistics of TerraTorch's ``Sen1Floods11NonGeoDataModule``.
SEN1FLOODS11_MEANS = {"COASTAL_AEROSOL": 0.16450718, "BLUE": 0.1412956, "GREEN": 0.13795798, "RED": 0.12353792,
                      "RED_EDGE_1": 0.1481099, "RED_EDGE_2": 0.23991728, "RED_EDGE_3": 0.28587557,
                      "NIR_BROAD": 0.26345379, "NIR_NARROW": 0.30902815, "WATER_VAPOR": 0.04911151,
                      "CIRRUS": 0.00652506, "SWIR_1": 0.2044958, "SWIR_2": 0.11912015}
SEN1FLOODS11_STDS = {"COASTAL_AEROSOL": 0.06977374, "BLUE": 0.07406382, "GREEN": 0.07370365, "RED": 0.08692279,
                     "RED_EDGE_1": 0.07778555, "RED_EDGE_2": 0.09105416, "RED_EDGE_3": 0.10690993,
                     "NIR_BROAD": 0.10096586, "NIR_NARROW": 0.11798815, "WATER_VAPOR": 0.03380113,
                     "CIRRUS": 0.01463465, "SWIR_1": 0.09772074, "SWIR_2": 0.07659938}


# --------------------------------------------------------------------------- finding the layout
def find_layout(path: str | os.PathLike) -> tuple[str, dict[str, Path]]:
    """(layout, files) of ``path``; :class:`CheckpointError` naming every layout tried otherwise."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint '{path}' not found")
    folder = p if p.is_dir() else p.parent
    if p.is_dir() or p.suffix == ".safetensors" or p.name == "config.json":
        cfg = folder / "config.json"
        if cfg.is_file() and (folder / "model.safetensors").is_file():
            return "geofm", {"config": cfg, "weights": folder / "model.safetensors"}
    weights = [p] if p.is_file() and p.suffix in _TORCH_SUFFIXES else sorted(
        f for f in folder.iterdir() if f.suffix in _TORCH_SUFFIXES and f.is_file()) if p.is_dir() else []
    if p.is_file() and p.suffix in (".py", ".yaml", ".yml"):
        weights = sorted(f for f in folder.iterdir() if f.suffix in _TORCH_SUFFIXES and f.is_file())
    pys = sorted(folder.glob("*.py"))
    yaml = [f for f in (folder / "config.yaml", folder / "config.yml") if f.is_file()]
    for w in weights:
        same = w.with_suffix(".py")
        if w.suffix == ".pth" and (same.is_file() or len(pys) == 1):
            return "hls_foundation", {"weights": w, "config": same if same.is_file() else pys[0]}
    if weights and yaml:
        return "terratorch", {"weights": weights[0], "config": yaml[0]}
    if p.is_file() and p.suffix in (".ckpt", ".pt"):
        return "terratorch", {"weights": p}
    described = [w for w in weights if _describes_itself(w)]
    if len(described) == 1:  # a TerraTorch Lightning checkpoint alone: its hyper_parameters hold the model
        return "terratorch", {"weights": described[0]}
    found = sorted(f.name for f in folder.iterdir())[:12] if folder.is_dir() else []
    raise CheckpointError(
        f"'{path}' fits none of the fine-tuned layouts geofm reads: geofm export (config.json + model.safetensors), "
        f"hls-foundation-os v1 (<name>.pth + <name>.py mmseg config), TerraTorch v2 (Lightning .pt/.ckpt with "
        f"hyper_parameters.model_args, or config.yaml + .pt/.ckpt); found {found}")


def _describes_itself(weights: Path) -> bool:
    """True when ``weights`` is a Lightning checkpoint carrying ``hyper_parameters.model_args`` (TerraTorch).

    Zip checkpoints are memory-mapped, so only the pickled structure is read, not the tensors."""
    try:
        raw = load_torch_file(weights)
    except CheckpointError:
        return False
    hp = raw.get("hyper_parameters") if isinstance(raw, dict) else None
    return isinstance(hp, dict) and isinstance(hp.get("model_args"), dict)


def _state_dict_of(raw: Any, source: str) -> dict[str, torch.Tensor]:
    sd = raw.get("state_dict") if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict) else raw
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict) and "state_dict" not in raw:
        sd = sd["model"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"'{source}' does not hold a state dict of tensors")
    return sd


def reflectance_scale(mean: list[float], source: str) -> float:
    """1e-4 when the statistics are in reflectance (0..1: every mean below 1.5, e.g. the v1 burn-scar
    config, whose chips held reflectance) and nothing in the pipeline scales the input; else 1.
    geofm reads reflectance x10000 (HLS int16), so such a model gets its input scaled by 1e-4."""
    if max(abs(m) for m in mean) < 1.5:
        log.info("%s: means are reflectance (0..1); inputs (reflectance x10000) are scaled by 1e-4", source)
        return 1e-4
    return 1.0


def _per_band(values: list, n: int, what: str, source: str) -> list[float]:
    """The first ``n`` of ``values`` when the list repeats them per frame (v1 crop config: 18 = 3 × 6)."""
    vals = [float(v) for v in values]
    if len(vals) % n or any(vals[i] != vals[i % n] for i in range(len(vals))):
        raise CheckpointError(f"'{source}': {what} has {len(vals)} values, expected {n} per band "
                              "(or the same {n} repeated for every frame)")
    return vals[:n]


# --------------------------------------------------------------------------- v1: hls-foundation-os
def _v1_config(env: dict[str, Any], source: str) -> tuple[HLSFoundationConfig, dict[str, Any]]:
    model = env.get("model")
    if not isinstance(model, dict) or model.get("type") != "TemporalEncoderDecoder":
        raise CheckpointError(f"'{source}': expected `model = dict(type=\"TemporalEncoderDecoder\", ...)` "
                              f"(hls-foundation-os), found {type(model).__name__ if model is not UNKNOWN else 'none'}")
    bb, neck, head = model.get("backbone") or {}, model.get("neck") or {}, model.get("decode_head") or {}
    for part, want in ((bb, "TemporalViTEncoder"), (neck, "ConvTransformerTokensToEmbeddingNeck"), (head, "FCNHead")):
        if not isinstance(part, dict) or part.get("type") != want:
            raise CheckpointError(f"'{source}': expected a {want} in the model config, found "
                                  f"{part.get('type') if isinstance(part, dict) else part!r}")

    def num(d: dict, key: str, default: Any = None) -> Any:
        v = d.get(key, default)
        if v is UNKNOWN or v is None:
            raise CheckpointError(f"'{source}': cannot read {key!r} of the model config (found {v!r})")
        return v

    aux = model.get("auxiliary_head")
    cfg = HLSFoundationConfig(
        num_classes=int(num(head, "num_classes")), img_size=int(num(bb, "img_size", 224)),
        patch_size=int(num(bb, "patch_size", 16)), tubelet_size=int(num(bb, "tubelet_size", 1)),
        num_frames=int(num(bb, "num_frames", 1)), in_chans=int(num(bb, "in_chans", 6)),
        embed_dim=int(num(bb, "embed_dim", 768)), depth=int(num(bb, "depth", 12)),
        num_heads=int(num(bb, "num_heads", 12)), mlp_ratio=float(num(bb, "mlp_ratio", 4.0)),
        neck_out=int(num(neck, "output_embed_dim")), head_channels=int(num(head, "channels", 256)),
        head_convs=int(num(head, "num_convs", 1)), dropout=float(num(head, "dropout_ratio", 0.1)),
        aux_head=None if not isinstance(aux, dict) else {"num_classes": aux.get("num_classes"),
                                                         "channels": aux.get("channels", 256),
                                                         "num_convs": aux.get("num_convs", 2)})
    if int(num(neck, "embed_dim")) != cfg.embed_dim * (cfg.num_frames // cfg.tubelet_size):
        raise CheckpointError(f"'{source}': neck embed_dim {neck.get('embed_dim')} is not embed_dim x frames "
                              f"({cfg.embed_dim} x {cfg.num_frames // cfg.tubelet_size})")
    test_cfg = model.get("test_cfg") if isinstance(model.get("test_cfg"), dict) else {}
    return cfg, test_cfg


def _v1_preprocessing(env: dict[str, Any], cfg: HLSFoundationConfig, source: str) -> dict[str, Any]:
    """The test pipeline of a v1 config in geofm's terms (see the module docstring)."""
    pipeline = env.get("test_pipeline")
    steps = {d.get("type"): d for d in pipeline if isinstance(d, dict)} if isinstance(pipeline, list) else {}
    norm = steps.get("TorchNormalize") or env.get("img_norm_cfg")
    if not isinstance(norm, dict) or not isinstance(norm.get("means"), list) or not isinstance(norm.get("stds"), list):
        raise CheckpointError(f"'{source}': no TorchNormalize / img_norm_cfg means and stds found")
    c, t = cfg.in_chans, cfg.num_frames
    mean = _per_band(norm["means"], c, "means", source)
    std = _per_band(norm["stds"], c, "stds", source)
    scale = float(steps["ConstantMultiply"].get("constant", 1.0)) if "ConstantMultiply" in steps else \
        reflectance_scale(mean, source)
    load = steps.get("LoadGeospatialImageFromFile", {})
    replace = load.get("nodata_replace") if load.get("nodata") is not None else None
    nodata_value = float(replace) if isinstance(replace, (int, float)) else float(HLS_NODATA)
    fill = [(nodata_value * scale - m) / s for m, s in zip(mean, std)]
    bands = steps.get("BandsExtract", {}).get("bands")
    extracted = [int(b) for b in bands] if isinstance(bands, list) else list(range(c * t))
    if len(extracted) != c * t:
        raise CheckpointError(f"'{source}': BandsExtract gives {len(extracted)} bands, the model takes {c} x {t}")
    stacked = [[b + 1 for b in extracted[i * c:(i + 1) * c]] for i in range(t)]
    classes = env.get("CLASSES")
    names = [str(n) for n in classes] if isinstance(classes, (list, tuple)) and len(classes) == cfg.num_classes \
        else None
    return {"mean": [m / scale for m in mean], "std": [s / scale for s in std], "scale": scale,
            "nodata_fill": fill, "stacked_bands": stacked, "class_names": names,
            "ignore_index": env.get("ignore_index") if isinstance(env.get("ignore_index"), int) else None}


def _load_v1(files: dict[str, Path], block_dtype: torch.dtype | None = None) -> tuple[nn.Module, FinetunedInfo]:
    env = read_python_config(files["config"])
    cfg, test_cfg = _v1_config(env, str(files["config"]))
    pre = _v1_preprocessing(env, cfg, str(files["config"]))
    model = empty_model(HLSFoundationSegmenter, cfg)
    sd = _state_dict_of(load_torch_file(files["weights"]), str(files["weights"]))
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if model.auxiliary_head is not None and not any(k.startswith("auxiliary_head.") for k in sd):
        model.auxiliary_head = None  # a file saved without it: nothing is lost, it is never run
    load_strict(model, sd, "hls_foundation", str(files["weights"]), block_dtype=block_dtype, file=files["weights"])
    crop = test_cfg.get("crop_size")
    tile = int(crop[0]) if isinstance(crop, (list, tuple)) else cfg.img_size
    info = _info(model, "hls_foundation", files, pre, num_frames=cfg.num_frames, in_chans=cfg.in_chans,
                 img_size=tile, patch=(cfg.tubelet_size, cfg.patch_size, cfg.patch_size), family_cfg=cfg.to_dict(),
                 extra={"slide_stride": list(test_cfg.get("stride") or []) or None})
    return model, info


# --------------------------------------------------------------------------- v2: TerraTorch
def _v2_preprocessing(data: dict[str, Any], cfg: TerraTorchConfig, bands: list | None, source: str) -> dict[str, Any]:
    """The datamodule section of a TerraTorch config (Sen1Floods11 or generic) in geofm's terms."""
    init = data.get("init_args") or {}
    cls = str(data.get("class_path", ""))
    c = cfg.in_chans
    if "Sen1Floods11" in cls:
        out = [str(b) for b in (init.get("bands") or bands or [])]
        if len(out) != c or any(b not in SEN1FLOODS11_MEANS for b in out):
            raise CheckpointError(f"'{source}': Sen1Floods11 bands {out} do not name {c} Sentinel-2 bands")
        mean, std = [SEN1FLOODS11_MEANS[b] for b in out], [SEN1FLOODS11_STDS[b] for b in out]
        scale = float(init.get("constant_scale", 0.0001))
        replace = init.get("no_data_replace", 0)
        stacked = [SEN1FLOODS11_BANDS.index(b) + 1 for b in out]
    elif init.get("means") is not None and init.get("stds") is not None:
        mean, std = [float(v) for v in init["means"]], [float(v) for v in init["stds"]]
        scale = float(init["constant_scale"]) if "constant_scale" in init else reflectance_scale(mean, source)
        replace = init.get("no_data_replace")
        ds, ob = init.get("dataset_bands"), init.get("output_bands")
        stacked = [list(ds).index(b) + 1 for b in ob] if ds and ob and all(b in ds for b in ob) else \
            list(range(1, c + 1))
        out = [str(b) for b in (ob or bands or MODEL_BANDS[:c])]
        if len(mean) != c or len(std) != c:
            mean, std = _per_band(mean, c, "means", source), _per_band(std, c, "stds", source)
    else:
        raise KeyError("no statistics")
    fill = None if replace is None else [(float(replace) * scale - m) / s for m, s in zip(mean, std)]
    return {"mean": [m / scale for m in mean], "std": [s / scale for s in std], "scale": scale, "nodata_fill": fill,
            "stacked_bands": [stacked], "bands": out}  # the same bands in every frame's file


def _load_v2(files: dict[str, Path], preloaded: Any = None,
             block_dtype: torch.dtype | None = None) -> tuple[nn.Module, FinetunedInfo]:
    raw = load_torch_file(files["weights"]) if preloaded is None else preloaded
    source = str(files.get("config") or files["weights"])
    yaml_cfg = read_yaml_config(files["config"]) if "config" in files else {}
    model_args = ((yaml_cfg.get("model") or {}).get("init_args") or {}).get("model_args")
    data = yaml_cfg.get("data") if isinstance(yaml_cfg.get("data"), dict) else None
    if model_args is None and isinstance(raw, dict):
        hp = raw.get("hyper_parameters") or {}
        model_args = hp.get("model_args") if isinstance(hp, dict) else None
        dm = raw.get("datamodule_hyper_parameters")
        if data is None and isinstance(dm, dict):
            data = {"class_path": "", "init_args": dm}
    if not isinstance(model_args, dict):
        raise CheckpointError(f"'{source}' (read as layout 'terratorch'): no model_args found (expected "
                              "model.init_args.model_args in config.yaml or hyper_parameters.model_args in the "
                              "Lightning checkpoint)")
    cfg = TerraTorchConfig.from_model_args(model_args, source)
    model = empty_model(TerraTorchSegmenter, cfg)
    sd = _state_dict_of(raw, str(files["weights"]))
    if any(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    sd, ignored = adapt_keys(sd, model)
    if ignored:
        log.info("%s: %d auxiliary-head keys not loaded (training only)", files["weights"], len(ignored))
    load_strict(model, sd, "terratorch", str(files["weights"]), block_dtype=block_dtype, file=files["weights"])
    bands = model_args.get("backbone_bands")
    try:
        pre = _v2_preprocessing(data or {}, cfg, bands, source)
    except KeyError:
        mean, std = norm_stats("v2")
        log.warning("%s carries no datamodule statistics: using the Prithvi-EO-2.0 pretraining mean/std", source)
        pre = {"mean": list(mean), "std": list(std), "scale": 1.0, "nodata_fill": None,
               "stacked_bands": None, "bands": [str(b) for b in (bands or MODEL_BANDS)]}
    if len(pre["mean"]) != cfg.in_chans:
        raise CheckpointError(f"'{source}': {len(pre['mean'])} band statistics for a {cfg.in_chans}-band model")
    names = (data or {}).get("init_args", {}).get("class_names") if data else None
    pre["class_names"] = [str(n) for n in names] if isinstance(names, list) and len(names) == cfg.num_classes else None
    pre["ignore_index"] = -1
    info = _info(model, "terratorch", files, pre, num_frames=cfg.num_frames, in_chans=cfg.in_chans,
                 img_size=cfg.img_size, patch=(1, cfg.patch_size, cfg.patch_size), family_cfg=cfg.to_dict(),
                 extra={"terratorch_coords": list(cfg.coords_encoding)})
    return model, info


# --------------------------------------------------------------------------- common
def _info(model: nn.Module, layout: str, files: dict[str, Path], pre: dict[str, Any], *, num_frames: int,
          in_chans: int, img_size: int, patch: tuple, family_cfg: dict, extra: dict) -> FinetunedInfo:
    return FinetunedInfo(
        task="segmentation", num_classes=int(model.num_classes), class_names=pre.get("class_names"),
        in_chans=in_chans, num_frames=num_frames, img_size=img_size, patch_size=tuple(patch),
        mean=[float(v) for v in pre["mean"]], std=[float(v) for v in pre["std"]],
        bands=list(pre.get("bands") or MODEL_BANDS[:in_chans]), nodata=HLS_NODATA,
        ignore_index=pre.get("ignore_index"), source=str(files["weights"]), layout=layout,
        nodata_fill=pre.get("nodata_fill"), stacked_bands=pre.get("stacked_bands"),
        extra={**extra, "family_config": family_cfg, "input_scale": pre.get("scale", 1.0),
               "files": [str(f) for f in files.values()]})


def _load_export(files: dict[str, Path], raw: dict[str, Any],
                 block_dtype: torch.dtype | None = None) -> tuple[nn.Module, FinetunedInfo]:
    rel = raw["released"]
    family = rel.get("layout")
    if family == "hls_foundation":
        model: nn.Module = empty_model(HLSFoundationSegmenter, HLSFoundationConfig(**rel["config"]))
    elif family == "terratorch":
        model = empty_model(TerraTorchSegmenter, TerraTorchConfig.from_dict(rel["config"]))
    else:
        raise CheckpointError(f"'{files['config']}': released.layout must be one of hls_foundation, terratorch; "
                              f"got {family!r}")
    sd = load_safetensors(files["weights"])
    if family == "hls_foundation" and not any(k.startswith("auxiliary_head.") for k in sd):
        model.auxiliary_head = None
    load_strict(model, sd, "geofm_released", str(files["weights"]), block_dtype=block_dtype)
    d = raw.get("data") or {}
    info = FinetunedInfo(
        task="segmentation", num_classes=int(model.num_classes), class_names=d.get("class_names"),
        in_chans=int(d["in_chans"]), num_frames=int(d["num_frames"]), img_size=int(d["img_size"]),
        patch_size=tuple(d["patch_size"]), mean=d["mean"], std=d["std"], bands=d["bands"],
        nodata=d.get("nodata", HLS_NODATA), ignore_index=d.get("ignore_index"), source=str(files["weights"]),
        layout=family, nodata_fill=d.get("nodata_fill"), stacked_bands=d.get("stacked_bands"),
        extra={**(raw.get("extra") or {}), "files": [str(files["config"]), str(files["weights"])]})
    return model, info


def load_released(path: str | os.PathLike, *, preloaded: Any = None,
                  block_dtype: torch.dtype | None = None) -> tuple[nn.Module, FinetunedInfo]:
    """Load a released fine-tune (any layout of the module docstring) in eval mode, with its preprocessing.

    ``preloaded``: the TerraTorch weights file as :func:`~geofm.models.checkpoints.load_torch_file`
    returned it, when the caller has read it already (it is not read again). ``block_dtype``: the
    transformer blocks' weights are converted to it while they are read (bf16/fp16 inference;
    :func:`geofm.infer.precision.prepare_model` then finds them converted).
    """
    layout, files = find_layout(path)
    if layout == "geofm":
        raw = json.loads(files["config"].read_text())
        if "released" not in raw:
            raise CheckpointError(f"'{files['config']}' is a geofm export, not a released model: "
                                  "use geofm.models.load_finetuned")
        model, info = _load_export(files, raw, block_dtype)
    elif layout == "hls_foundation":
        model, info = _load_v1(files, block_dtype)
    else:
        model, info = _load_v2(files, preloaded, block_dtype)
    model.eval()
    log.info("loaded %s (%s layout): %d classes, %d frame(s) x %d bands", path, info.layout, info.num_classes,
             info.num_frames, info.in_chans)
    return model, info


def save_released(model: nn.Module, info: FinetunedInfo, out_dir: str | os.PathLike) -> Path:
    """Write a released model as a geofm export: ``model.safetensors`` + ``config.json`` (each atomically)."""
    if not isinstance(model, (HLSFoundationSegmenter, TerraTorchSegmenter)):
        raise TypeError(f"save_released takes a released-model network, got {type(model).__name__}")
    layout = "hls_foundation" if isinstance(model, HLSFoundationSegmenter) else "terratorch"
    config = {
        "library": "geofm", "format_version": 1, "geofm_task": "segmentation", "model_type": f"released_{layout}",
        "released": {"layout": layout, "config": model.config.to_dict()},
        "data": {"mean": info.mean, "std": info.std, "bands": info.bands, "class_names": info.class_names,
                 "img_size": info.img_size, "num_frames": info.num_frames, "in_chans": info.in_chans,
                 "patch_size": list(info.patch_size), "nodata": info.nodata, "ignore_index": info.ignore_index,
                 "nodata_fill": info.nodata_fill, "stacked_bands": info.stacked_bands},
        "extra": {k: v for k, v in info.extra.items() if k not in ("files", "family_config")}
        | {"converted_from": info.source},
    }
    return write_model_folder(out_dir, model.state_dict(), config, {"geofm_task": "segmentation"})


__all__ = ["LAYOUTS", "find_layout", "load_released", "load_strict", "save_released"]
