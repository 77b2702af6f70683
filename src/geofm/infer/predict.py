"""Predict a scene with a fine-tuned geofm export: inputs -> frames, model -> predictor, quicklook.

>>> from geofm.infer import predict_checkpoint
>>> result = predict_checkpoint("runs/flood/export", ["scene/"], "flood.tif", quicklook=True)  # doctest: +SKIP

``predict_checkpoint`` loads the export with :func:`geofm.models.load_finetuned`
and calls :func:`geofm.infer.scene.predict_scene`: a segmentation model writes a class map
(or per-class probabilities), an imputation model (PrithviMAE) writes reconstructed
reflectance where Fmask flags cloud/shadow or the input is nodata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from geofm.data.hls import GRANULE_RE, Frame, check_same_grid, stacked_frame
from geofm.data.series import frames_from_inputs
from geofm.errors import ConfigError, DataError
from geofm.infer.scene import OutputSpec, SceneResult, predict_scene

log = logging.getLogger(__name__)


def _coords(model, frames: Sequence[Frame]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(1, T, 2) (year, day of year) and (1, 2) (lat, lon) of the scene centre, for TL encoders."""
    from geofm.infer.onnx_model import OnnxSegmenter, coords_inputs

    wanted = model.inputs[1:] if isinstance(model, OnnxSegmenter) else coords_inputs(model)
    temporal = location = None
    if "temporal_coords" in wanted and all(f.datetime for f in frames):
        temporal = torch.tensor([[[f.datetime.year, f.datetime.timetuple().tm_yday] for f in frames]],
                                dtype=torch.float32)
    if "location_coords" in wanted:
        from rasterio.warp import transform

        g = check_same_grid(frames)
        a, _, c, _, e, f = g.transform
        lon, lat = transform(g.crs, "EPSG:4326", [c + a * g.width / 2], [f + e * g.height / 2])
        location = torch.tensor([[lat[0], lon[0]]], dtype=torch.float32)
    return temporal, location


def segmentation_predictor(model: torch.nn.Module, device: str | torch.device = "cpu",
                           temporal_coords: torch.Tensor | None = None,
                           location_coords: torch.Tensor | None = None,
                           precision: str | None = "auto") -> Callable[[torch.Tensor], torch.Tensor]:
    """x (B, C, T, h, w) normalized -> class probabilities (B, K, h, w) (softmax of the logits, fp32).

    ``precision`` (fp32, bf16, fp16; "auto": :func:`~geofm.infer.precision.resolve_precision`)
    converts the transformer blocks' weights once (:func:`~geofm.infer.precision.prepare_model`).
    """
    from geofm.infer.precision import prepare_model, resolve_precision

    device = torch.device(device)
    precision = resolve_precision(precision, str(device))
    model = prepare_model(model, precision, device)

    @torch.inference_mode()
    def predict(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        tc = None if temporal_coords is None else temporal_coords.to(device).expand(b, -1, -1)
        lc = None if location_coords is None else location_coords.to(device).expand(b, -1)
        return torch.softmax(model(x.to(device, non_blocking=True), tc, lc).float(), dim=1)

    return predict


def as_imputer(model: torch.nn.Module) -> torch.nn.Module:
    """An :class:`~geofm.models.imputer.Imputer` (a bare PrithviMAE is wrapped as the paper's pure reconstruction)."""
    from geofm.models.imputer import Imputer
    from geofm.models.mae import PrithviMAE

    if isinstance(model, PrithviMAE):
        model = Imputer(model, residual="none")
    if not isinstance(model, Imputer):
        raise ConfigError(f"imputation needs an Imputer or a PrithviMAE, got {type(model).__name__}")
    return model


def imputation_predictor(model: torch.nn.Module, device: str | torch.device = "cpu",
                         temporal_coords: torch.Tensor | None = None,
                         location_coords: torch.Tensor | None = None, precision: str | None = "auto",
                         use_model: Sequence[Sequence[bool]] | None = None) -> Callable:
    """Gap filling: ``(x (B, C, T, h, w), hidden (B, T, h, w)) -> (B, T*C, h, w)`` normalized reflectance (fp32).

    ``model`` is an :class:`~geofm.models.imputer.Imputer` (see :func:`as_imputer`). Hidden pixels
    (cloud, shadow, nodata) take the model's value, the others keep theirs. ``temporal_coords``
    (1, T, 2) = (year, day of year) of the frames: time in days (NaN: equally spaced).
    ``use_model`` ((T, C) bools, see :mod:`geofm.correction`; None: everywhere) picks the
    dates and bands filled by the model; the others get temporal linear interpolation by
    acquisition day. Tiles where every pixel of every frame is hidden get NaN (nothing to
    impute from: the output stays nodata there). ``precision``: as :func:`segmentation_predictor`.
    """
    from geofm.correction import blend_correction
    from geofm.infer.precision import prepare_model, resolve_precision
    from geofm.models.imputer import day_numbers, fill_hidden

    device = torch.device(device)
    precision = resolve_precision(precision, str(device))
    model = prepare_model(as_imputer(model), precision, device)
    use = None if use_model is None or np.asarray(use_model, bool).all() else np.asarray(use_model, bool)

    @torch.inference_mode()
    def predict(x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        x, hidden = x.to(device), hidden.to(device)
        empty = hidden.flatten(1).all(1)
        tc = None if temporal_coords is None else temporal_coords.to(device).expand(b, -1, -1)
        lc = None if location_coords is None else location_coords.to(device).expand(b, -1)
        hid = hidden & ~empty[:, None, None, None]
        if use is None or use.any():
            rec = model(x, hid, tc, lc).float()  # (B, C, T, h, w)
        if use is not None:
            base = fill_hidden(x, hid, True, day_numbers(tc, b, t, device)).float()
            rec = base if not use.any() else blend_correction(rec, base, use)
        rec[empty] = float("nan")
        return rec.transpose(1, 2).reshape(b, t * c, h, w)

    return predict


def _run_id(files: Sequence[Path], extra: str = "") -> str:
    """Fingerprint of the model files (size, mtime; the content of small config files) and ``extra``."""
    h = hashlib.sha256(extra.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        if f.suffix in (".json", ".yaml", ".yml", ".py"):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _model_files(checkpoint: Path, info) -> list[Path]:
    files = info.extra.get("files") if isinstance(info.extra, dict) else None
    if files:
        return [Path(f) for f in files]
    folder = checkpoint.parent if checkpoint.is_file() else checkpoint
    return [folder / "config.json", folder / "model.safetensors"]


def predict_checkpoint(checkpoint: str | os.PathLike, inputs: Sequence[str] | Sequence[Frame],
                       out_path: str | os.PathLike, *, tile: int | None = 224, overlap: int = 32,
                       batch_size: int = 8, probabilities: bool = False, device: str = "cpu",
                       block: int = 512, overviews: bool = True, resume: bool = True,
                       quicklook: bool | str | os.PathLike = False,
                       stacked_bands: Sequence[int] | None = None, stacked_fmask_band: int | None = None,
                       progress: Callable[[int, int], None] | None = None, overwrite: bool = True,
                       fmask_kind: str = "hls", loaded: tuple | None = None, correction: str = "auto",
                       equal_spacing: bool = False, precision: str | None = "auto",
                       runtime: str | None = None) -> SceneResult:
    """Predict a whole scene with a fine-tuned export and write ``out_path`` (COG GeoTIFF).

    ``inputs``: paths (HLS band files, stacked GeoTIFFs or folders; see :func:`frames_from_inputs`)
    or frames, one per time step, T = the model's ``num_frames``. Segmentation exports write a
    uint8 class map (nodata 255) or, with ``probabilities``, float32 per-class probabilities
    (nodata -1); imputation exports write int16 reflectance x10000 (T x C bands, nodata -9999).
    ``tile=None`` uses the model's training size. ``quicklook``: True (``OUT.png``) or a PNG path.
    An existing ``out_path`` is replaced (with a warning) when ``overwrite``, else refused. The
    device and the output paths are checked before the model is read.

    ``checkpoint`` may also be a released fine-tune as published (see :mod:`geofm.models.released`):
    its band selection, scaling, normalization and nodata replacement come with it, so
    ``stacked_bands=None`` takes the model's bands (e.g. Sentinel-2 bands 2,3,4,9,12,13 of a
    13-band Sen1Floods11 stack; 1-6 for geofm exports). A multi-frame model whose frames are
    consecutive bands of one stacked file (the v1 crop model's 18-band chips) takes that one file.
    ``fmask_kind``: "hls" (Fmask bits) or "cfmask" (Landsat CFmask classes) for the inputs' cloud layer.
    ``loaded``: the ``(model, info)`` that :func:`~geofm.models.finetuned.load_finetuned` returned for
    ``checkpoint``, when the caller keeps the model across scenes (``geofm map``'s workers).

    Imputation counts time in days between the inputs' dates (refused without dates unless
    ``equal_spacing``) and ``correction`` ("auto", "always", "never"; see
    :mod:`geofm.correction`) decides per date and band whether the model's correction or the
    baseline is written; the decision and its scores go into the output's ``geofm_correction*``
    tags and the log.

    ``precision``: fp32, bf16 or fp16 weights (see :mod:`geofm.infer.precision`; "auto": bf16 where
    the hardware has it natively). ``runtime``: "torch", or "onnxruntime" for an ONNX file written
    by ``geofm export-onnx`` (which carries the model's preprocessing); None picks onnxruntime for
    a ``.onnx`` checkpoint. The runtime and precision are part of the resume fingerprint.
    """
    from geofm.correction import CORRECTION_MODES
    from geofm.data.ingest import date_from_name
    from geofm.infer.precision import prepare_model, resolve_precision, weights_dtype
    from geofm.models.finetuned import load_finetuned

    if correction not in CORRECTION_MODES:
        raise ConfigError(f"--correction must be one of {', '.join(CORRECTION_MODES)}, got {correction!r}")
    check_device(device)
    check_prediction_paths(out_path, quicklook, overwrite)
    checkpoint = Path(checkpoint)
    runtime = check_runtime(runtime, checkpoint)
    if runtime == "onnxruntime":
        from geofm.infer.onnx_model import load_onnx

        model, info = load_onnx(checkpoint, device)
        precision = "fp32"
    else:
        precision = resolve_precision(precision, device)
        model, info = load_finetuned(checkpoint, block_dtype=weights_dtype(precision)) if loaded is None else loaded
    per_frame = info.stacked_bands if stacked_bands is None else None
    if stacked_bands is None:
        stacked_bands = per_frame[0] if per_frame else (1, 2, 3, 4, 5, 6)
    if inputs and isinstance(inputs[0], Frame):
        frames = list(inputs)
    elif per_frame and len(per_frame) > 1 and len(inputs) == 1 and Path(str(inputs[0])).is_file() \
            and not GRANULE_RE.search(Path(str(inputs[0])).name):
        path = str(inputs[0])  # all frames in one stacked file, frame-major
        frames = [stacked_frame(path, bands, stacked_fmask_band, datetime=date_from_name(path)) for bands in per_frame]
    else:
        frames = frames_from_inputs([str(i) for i in inputs], stacked_bands=stacked_bands,
                                    stacked_fmask_band=stacked_fmask_band)
    if len(frames) != info.num_frames:
        raise DataError(f"the model '{checkpoint}' takes {info.num_frames} frame(s), got {len(frames)}: "
                        + ", ".join(str(f.granule_id) for f in frames))
    for f in frames:
        if len(f.sources) != info.in_chans:
            raise DataError(f"frame '{f.granule_id}' has {len(f.sources)} bands, the model takes {info.in_chans}")
    if info.task == "imputation":
        missing = [str(f.granule_id) for f in frames if f.fmask is None]
        if missing:
            raise DataError(
                "an imputation model fills cloudy pixels, but these inputs carry no cloud mask: " + ", ".join(missing)
                + ". Give it with --stacked-fmask-band N (the Fmask band of each stacked GeoTIFF), a sidecar "
                "X.Fmask.tif beside each X.tif, or HLS granules with their .Fmask.tif")
        undated = next((f for f in frames if f.datetime is None), None)
        if undated is not None and not equal_spacing:
            from geofm.data.series import undated_error

            raise undated_error("inputs", undated)
    if tile is None:  # the model's training size, with an overlap that fits it
        tile = int(info.img_size)
        overlap = min(overlap, tile // 4 // info.patch_size[1] * info.patch_size[1])
    tile = int(tile)
    multiple = info.extra.get("onnx_size_multiple") if runtime == "onnxruntime" else None
    if multiple and (tile % multiple or tile < 2 * multiple):
        raise ConfigError(f"--tile {tile}: the ONNX model '{checkpoint}' takes tiles that are multiples of "
                          f"{multiple} px, from {2 * multiple} px")
    temporal, location = _coords(model, frames)
    files = _model_files(checkpoint, info)
    tags = {"geofm_checkpoint": str(checkpoint), "geofm_task": info.task, "geofm_model_layout": info.layout,
            "geofm_frames": ",".join(str(f.granule_id) for f in frames), "geofm_runtime": runtime,
            "geofm_precision": precision}
    run_extra = ""
    if info.task == "segmentation":
        spec = (OutputSpec.probabilities if probabilities else OutputSpec.classes)(info.num_classes, info.class_names)
        if runtime == "onnxruntime":
            predictor = model.predictor(temporal, location)
        else:
            predictor = segmentation_predictor(model, device, temporal, location, precision)
        pass_hidden = False
    else:
        if tile % info.patch_size[1]:
            raise ConfigError(f"imputation tiles must be a multiple of the patch size {info.patch_size[1]}, got {tile}")
        from geofm.data.series import Series, temporal_coords
        from geofm.correction import choose_correction

        spec = OutputSpec.reflectance(len(frames), info.bands, info.mean, info.std)
        model = prepare_model(as_imputer(model), precision, device)  # the correction is scored as it will run
        temporal = torch.from_numpy(temporal_coords([f.datetime for f in frames]))[None]  # (1, T, 2), NaN: undated
        series = Series.of("inputs", frames, fmask_kind, equal_spacing=True)
        choice = choose_correction(model, series, mode=correction, mean=info.mean, std=info.std, bands=info.bands,
                                   tile=tile, location_coords=location, device=device, batch_size=batch_size)
        tags.update(choice.tags())
        tags["geofm_dates"] = ",".join(f.date_str or "undated" for f in frames)
        run_extra = json.dumps(choice.tags(), sort_keys=True)
        predictor = imputation_predictor(model, device, temporal, location, precision, use_model=choice.use_model)
        pass_hidden = True
    result = predict_scene(frames, predictor, out_path, output=spec, mean=info.mean, std=info.std, tile=tile,
                           overlap=overlap, batch_size=batch_size, block=block, overviews=overviews,
                           pass_hidden=pass_hidden, resume=resume,
                           run_id=f"{_run_id(files, run_extra)}-{runtime}-{precision}", progress=progress, tags=tags, nodata_fill=info.nodata_fill, fmask_kind=fmask_kind)
    if quicklook:
        png = Path(out_path).with_suffix(".png") if quicklook is True else Path(quicklook)
        scene_quicklook(frames, out_path, png, class_names=info.class_names)
    return result


def check_runtime(runtime: str | None, checkpoint: Path) -> str:
    """The runtime that runs ``checkpoint``: "torch", or "onnxruntime" for an ONNX file (None: by its suffix)."""
    onnx_file = checkpoint.suffix.lower() == ".onnx"
    if runtime is None:
        return "onnxruntime" if onnx_file else "torch"
    if runtime not in ("torch", "onnxruntime"):
        raise ConfigError(f"--runtime must be torch or onnxruntime, got {runtime!r}")
    if runtime == "onnxruntime" and not onnx_file:
        raise ConfigError(f"--runtime onnxruntime needs an .onnx file written by geofm export-onnx as --checkpoint, "
                          f"got '{checkpoint}'")
    if runtime == "torch" and onnx_file:
        raise ConfigError(f"--checkpoint '{checkpoint}' is an ONNX file: use --runtime onnxruntime")
    return runtime


def check_device(device: str) -> None:
    """:class:`ConfigError` unless ``device`` names a torch device this build and machine have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"--device '{device}' is not a torch device name (cpu, cuda, cuda:N, mps): {e}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"--device '{device}': {why}; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device '{device}': only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device '{device}': MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device '{device}': expected cpu, cuda, cuda:N or mps")


def check_prediction_paths(out_path: str | os.PathLike, quicklook: bool | str | os.PathLike = False,
                           overwrite: bool = True) -> None:
    """The output GeoTIFF (and quicklook PNG) can be written: before any reading or computing."""
    from geofm.io import check_output_file

    out = Path(out_path)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError(f"--out '{out}' must be a GeoTIFF path ending in .tif or .tiff")
    check_output_file(out, "--out", overwrite=overwrite)
    if out.exists():
        log.warning("%s exists and will be replaced", out)
    if quicklook:
        png = out.with_suffix(".png") if quicklook is True else Path(quicklook)
        check_output_file(png, "--quicklook", overwrite=overwrite)


def _read_small(path: str, bands: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    """Decimated read of ``bands`` (1-based) to ``size`` = (h, w) (GDAL uses overviews when present)."""
    from rasterio.enums import Resampling

    from geofm.data.hls import open_raster

    with open_raster(path) as src:
        return src.read(list(bands), out_shape=(len(bands), *size), resampling=Resampling.nearest)


def scene_quicklook(frames: Sequence[Frame], prediction: str | os.PathLike, png: str | os.PathLike,
                    max_size: int = 768, frame: int = -1, class_names: Sequence[str] | None = None) -> Path:
    """PNG: RGB of one input frame | the prediction (class map, last-class probability or the
    frame's reconstructed RGB), decimated to at most ``max_size`` px, read without loading the scene."""
    from geofm.bands import HLS_NODATA
    from geofm.data.hls import open_raster
    from geofm.viz import rgb_stretch, save_panels, stretch_limits

    with open_raster(str(prediction)) as src:
        kind, n, H, W, nodata = src.tags().get("geofm_output", "raw"), src.count, src.height, src.width, src.nodata
    scale = max(H, W) / max_size if max(H, W) > max_size else 1.0
    size = (max(1, round(H / scale)), max(1, round(W / scale)))
    f = frames[frame]
    rgb_idx = (2, 1, 0)
    bands = np.stack([_read_small(f.sources[i][0], [f.sources[i][1]], size)[0] for i in rgb_idx])  # (3, h, w)
    valid = (bands != HLS_NODATA).all(0)
    limits = stretch_limits(bands, (0, 1, 2), valid=valid)
    panels = [(f"input RGB {f.date_str or f.granule_id}", rgb_stretch(bands, (0, 1, 2), valid=valid, limits=limits))]
    if kind == "classes":
        cls = _read_small(str(prediction), [1], size)[0].astype(float)
        cls[cls == nodata] = np.nan
        names = ", ".join(f"{i}={n}" for i, n in enumerate(class_names or []))
        panels.append((f"class map {names}".strip(), cls))
    elif kind == "reflectance":
        t = frame % len(frames)
        rec = _read_small(str(prediction), [6 * t + i + 1 for i in rgb_idx], size)
        panels.append(("reconstructed RGB", rgb_stretch(rec, (0, 1, 2), valid=(rec != HLS_NODATA).all(0),
                                                        limits=limits)))
    else:
        band = _read_small(str(prediction), [n], size)[0].astype(float)
        band[band == nodata] = np.nan
        panels.append((f"{kind} band {n}", band))
    return save_panels(png, panels, suptitle=Path(prediction).name, cmap="viridis")


__all__ = ["as_imputer", "frames_from_inputs", "imputation_predictor", "predict_checkpoint", "scene_quicklook",
           "segmentation_predictor"]
