"""Segmentation models as ONNX files, and their prediction with ONNX Runtime.

>>> export_onnx("runs/flood/export", "flood.onnx")                      # doctest: +SKIP
>>> model, info = load_onnx("flood.onnx")                                 # doctest: +SKIP
>>> predictor = model.predictor(temporal_coords=None, location_coords=None)  # doctest: +SKIP

The graph is the whole network (encoder, neck, decoder, head) in fp32: input ``x`` (B, C, T, H, W)
normalized reflectance with B, H and W dynamic (H, W multiples of ``geofm_multiple`` px, the
patch size or twice it for TerraTorch models that pad), T and C fixed by the model; output
``logits`` (B, K, H, W). A model with EO-2.0 temporal / location encoders takes them as inputs
``temporal_coords`` (B, T, 2) year and day of year and ``location_coords`` (B, 2) lat/lon in
degrees. The file carries what prediction needs besides the graph in its metadata
(``geofm_info``: the :class:`~geofm.models.segmentation.FinetunedInfo` as JSON: bands, mean/std,
classes, nodata handling), so ``geofm predict --checkpoint model.onnx`` needs nothing else.
Needs the optional extra ``geofm[onnx]`` (onnx, onnxruntime; onnxscript for torch's exporter).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from geofm.errors import CheckpointError, ConfigError
from geofm.io import atomic_path

log = logging.getLogger(__name__)

#: the opset of the export unless asked otherwise, and the oldest torch's exporter writes
DEFAULT_OPSET = MIN_OPSET = 18
INSTALL_HINT = "install the optional extra: pip install 'geofm[onnx]'"


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{module} is not installed ({e}); {INSTALL_HINT}") from e


def coords_inputs(model: nn.Module) -> list[str]:
    """The TL coordinate inputs the model uses: a sublist of ["temporal_coords", "location_coords"]."""
    encoder = model.encoder
    names = []
    if getattr(encoder, "temporal_embed_enc", None) is not None:
        names.append("temporal_coords")
    if getattr(encoder, "location_embed_enc", None) is not None:
        names.append("location_coords")
    return names


def size_multiple(model: nn.Module, info) -> int:
    """H and W of an exported graph must be multiples of this (the patch; twice it for padding v2 models)."""
    p = int(info.patch_size[1])
    cfg = getattr(model, "config", None)
    return 2 * p if getattr(cfg, "padding", None) else p


class _Graph(nn.Module):
    """The network with the coordinate inputs it uses as positional arguments (what the exporter traces)."""

    def __init__(self, model: nn.Module, inputs: list[str]):
        super().__init__()
        self.model = model
        self.inputs = inputs

    def forward(self, x: torch.Tensor, first: torch.Tensor | None = None,
                second: torch.Tensor | None = None) -> torch.Tensor:
        given = dict(zip(self.inputs, (first, second)))
        return self.model(x, given.get("temporal_coords"), given.get("location_coords"))


class _AdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` whose bins are computed from the input's (symbolic) size inside the graph.

    ONNX has no adaptive pooling and torch's decomposition bakes the bins of the example size in,
    so a graph with dynamic H and W gets this instead: bin i of n px covers [floor(i n / s),
    ceil((i + 1) n / s)), averaged from a cumulative sum.
    """

    def __init__(self, output_size):
        super().__init__()
        s = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        self.output_size = tuple(int(v) for v in s)

    @staticmethod
    def _pool(x: torch.Tensor, s: int, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        i = torch.arange(s, device=x.device)
        start, end = (i * n) // s, ((i + 1) * n + s - 1) // s
        csum = torch.cumsum(x, dim)
        csum = torch.cat([torch.zeros_like(csum.narrow(dim, 0, 1)), csum], dim)  # (..., n + 1, ...)
        total = csum.index_select(dim, end) - csum.index_select(dim, start)
        shape = [1] * x.ndim
        shape[dim] = s
        return total / (end - start).to(x.dtype).reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(self._pool(x, self.output_size[0], 2), self.output_size[1], 3)


def _exportable(model: nn.Module) -> nn.Module:
    """``model`` with its adaptive average pools replaced by :class:`_AdaptiveAvgPool2d` (same outputs)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(module, name, _AdaptiveAvgPool2d(child.output_size))
    return model


def example_inputs(info, inputs: list[str], height: int, width: int, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Seeded example tensors of the graph's inputs: x (batch, C, T, height, width) and the coordinates."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, info.in_chans, info.num_frames, height, width, generator=g)
    out = [x]
    if "temporal_coords" in inputs:
        out.append(torch.tensor([[[2020.0, 30.0 + 40 * t] for t in range(info.num_frames)]] * batch))
    if "location_coords" in inputs:
        out.append(torch.tensor([[38.8, -90.1]] * batch))
    return tuple(out)


def export_onnx(checkpoint: str | os.PathLike, out_path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                size: int | None = None, coords: list[str] | None = None, check: bool = True) -> dict:
    """Write a segmentation export or released fine-tune as an ONNX file (see the module docstring).

    ``size``: the H of the example input the graph is traced with (W = H + one multiple: distinct
    sizes keep the two axes apart; default: the model's training tile). The graph then takes any
    H, W that are multiples of :func:`size_multiple`, from twice it up. The file is checked with
    ``onnx.checker`` and its logits compared with torch's (``check``) on the example and on another
    size and batch, before it is renamed onto ``out_path``. Returns a summary (inputs, opset, max
    relative error).
    ``coords``: the TL inputs to keep (default: all the model uses); a graph without
    ``temporal_coords`` predicts as torch does without dates (no temporal encoding).
    """
    from geofm.models.finetuned import load_finetuned

    from geofm.io import check_output_file

    out = Path(out_path)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"OUT '{out}' must be an ONNX file path ending in .onnx")
    check_output_file(out, "OUT")
    onnx = _require("onnx")
    _require("onnxscript")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"--opset must be between {MIN_OPSET} and {newest} (this onnx), got {opset}")
    model, info = load_finetuned(checkpoint)
    if info.task != "segmentation":
        raise ConfigError(f"'{checkpoint}' is an {info.task} model: export-onnx takes segmentation models")
    model = model.float().eval()
    inputs = coords_inputs(model)
    if coords is not None:
        unknown = set(coords) - set(inputs)
        if unknown:
            raise ConfigError(f"--coords {','.join(sorted(unknown))}: the model '{checkpoint}' takes only "
                              f"{', '.join(inputs) or 'no coordinates'}")
        inputs = [c for c in inputs if c in coords]
    multiple = size_multiple(model, info)
    size = int(size or info.img_size)
    if size % multiple:
        raise ConfigError(f"--size {size} must be a multiple of {multiple} px for '{checkpoint}'")
    size = max(size, 2 * multiple)
    graph = _Graph(_exportable(model), inputs)
    example = example_inputs(info, inputs, size, size + multiple)
    meta_info = dataclasses.asdict(info)
    meta_info["extra"] = {k: v for k, v in info.extra.items() if k != "files"}
    metadata = {"geofm_info": json.dumps(meta_info), "geofm_multiple": str(multiple),
                "geofm_source": str(checkpoint)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        _torch_export(graph, example, inputs, Path(tmp), opset, multiple)
        proto = onnx.load(str(tmp))
        for k, v in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        err = None
        if check:  # the example and another size and batch: the graph is right and really dynamic
            session = OnnxSegmenter(tmp)
            err = 0.0
            for inp in (example, example_inputs(info, inputs, size + 2 * multiple, size, batch=1)):
                with torch.inference_mode():
                    ref = graph(*inp).numpy()
                got = session.run(*inp)
                err = max(err, float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12)))
            if not np.isfinite(err) or err > 1e-3:
                raise CheckpointError(f"the ONNX graph of '{checkpoint}' disagrees with torch: max relative "
                                      f"error {err:.2e} on the example inputs")
    log.info("exported %s -> %s (opset %d, inputs %s)", checkpoint, out, opset, ["x", *inputs])
    return {"path": str(out), "inputs": ["x", *inputs], "opset": opset, "size_multiple": multiple,
            "max_rel_error": err, "bytes": out.stat().st_size}


def _torch_export(graph: nn.Module, example: tuple, inputs: list[str], path: Path, opset: int,
                  multiple: int) -> None:
    """torch.onnx.export (torch.export + onnxscript) with batch, H and W dynamic (H, W multiples of ``multiple``)."""
    import warnings

    from torch.export import Dim

    batch, height, width = Dim("batch", min=1), multiple * Dim("rows", min=2), multiple * Dim("cols", min=2)
    shapes = {"x": {0: batch, 3: height, 4: width}}
    shapes.update({arg: {0: batch} for arg, _ in zip(("first", "second"), inputs)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, example, input_names=["x", *inputs], output_names=["logits"],
                                    dynamic_shapes=shapes, opset_version=opset,
                                    dynamo=True, external_data=False, verbose=False)
        program.save(str(path))


class OnnxSegmenter:
    """An ONNX segmentation graph in an ONNX Runtime session: ``run(x, *coords) -> logits`` (numpy, fp32)."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        ort = _require("onnxruntime")
        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise CheckpointError(f"cannot load ONNX file '{self.path}': {e}") from e
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, x: torch.Tensor, *coords: torch.Tensor) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(t.detach().float().cpu().numpy())
                 for name, t in zip(self.inputs, (x, *coords))}
        return self.session.run(["logits"], feeds)[0]

    def predictor(self, temporal_coords: torch.Tensor | None = None,
                  location_coords: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """x (B, C, T, h, w) normalized -> class probabilities (B, K, h, w), as
        :func:`~geofm.infer.predict.segmentation_predictor` (softmax in fp32)."""
        given = {"temporal_coords": temporal_coords, "location_coords": location_coords}
        missing = [n for n in self.inputs[1:] if given.get(n) is None]
        if missing:
            raise ConfigError(f"the ONNX model '{self.path}' takes {', '.join(missing)}, which these inputs do "
                              "not give (dates in the file names or a georeferenced grid)")

        def predict(x: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            coords = [given["temporal_coords"].expand(b, -1, -1) if n == "temporal_coords"
                      else given["location_coords"].expand(b, -1) for n in self.inputs[1:]]
            return torch.softmax(torch.from_numpy(self.run(x, *coords)), dim=1)

        return predict


def load_onnx(path: str | os.PathLike, device: str = "cpu"):
    """(:class:`OnnxSegmenter`, :class:`~geofm.models.segmentation.FinetunedInfo`) of a file of :func:`export_onnx`."""
    from geofm.models.export import FinetunedInfo

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--checkpoint '{path}': no such ONNX file")
    model = OnnxSegmenter(path, device)
    raw = model.metadata.get("geofm_info")
    if raw is None:
        raise CheckpointError(f"'{path}' carries no geofm_info metadata: write it with geofm export-onnx")
    d = json.loads(raw)
    d["patch_size"] = tuple(d["patch_size"])
    d["extra"] = {**(d.get("extra") or {}), "files": [str(path)], "onnx_size_multiple": int(model.metadata.get(
        "geofm_multiple", d["patch_size"][1]))}
    return model, FinetunedInfo(**d)


__all__ = ["DEFAULT_OPSET", "OnnxSegmenter", "coords_inputs", "export_onnx", "load_onnx", "size_multiple"]
