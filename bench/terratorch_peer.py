"""Import TerraTorch's model code in the peer venv (bench/setup_peer.sh) without its package ``__init__``.

``import terratorch`` pulls datasets, Lightning, albumentations, rasterio, torchgeo ...; the peer
venv holds only torch, torchvision, timm, segmentation_models_pytorch and terratorch itself
(--no-deps). This module registers empty parent packages so that the model modules
(backbones, necks, decoders, heads, PixelWiseModel, tiled_inference) import alone. torchvision's
compiled ops may not load next to a CPU torch: its meta registrations are skipped (geofm never
calls those ops). Run it with the peer venv's python only.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
import types
import warnings


def _package_root() -> str:
    spec = importlib.util.find_spec("terratorch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("terratorch is not installed in this interpreter (see bench/setup_peer.sh)")
    return list(spec.submodule_search_locations)[0]


def _stub(name: str, root: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = [os.path.join(root, *name.split(".")[1:])]
    sys.modules[name] = mod
    return mod


def import_terratorch() -> types.SimpleNamespace:
    """Returns the TerraTorch pieces the benchmarks and golden files use."""
    warnings.filterwarnings("ignore")
    root = _package_root()
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    for pkg in ("terratorch", "terratorch.models", "terratorch.tasks", "terratorch.models.decoders",
                "terratorch.models.backbones", "terratorch.registry", "terratorch.datasets"):
        _stub(pkg, root)
    # The band enums and generate_bands_intervals only (datasets/utils.py imports rasterio and sklearn).
    utils_path = os.path.join(root, "datasets", "utils.py")
    tree = ast.parse(open(utils_path).read())
    keep = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))
            and n.name in ("HLSBands", "OpticalBands", "SARBands", "generate_bands_intervals")]
    ns: dict = {}
    exec("from enum import Enum\nfrom typing import Any\n", ns)  # noqa: S102 - the installed package's own code
    exec(compile(ast.Module(body=keep, type_ignores=[]), utils_path, "exec"), ns)  # noqa: S102
    utils = types.ModuleType("terratorch.datasets.utils")
    utils.HLSBands, utils.generate_bands_intervals = ns["HLSBands"], ns["generate_bands_intervals"]
    sys.modules["terratorch.datasets.utils"] = utils
    for name in ("HLSBands", "OpticalBands", "SARBands"):
        setattr(sys.modules["terratorch.datasets"], name, ns[name])
    reg = importlib.import_module("terratorch.registry.registry")
    for k in dir(reg):
        if k.isupper() or k in ("Registry", "MultiSourceRegistry"):
            setattr(sys.modules["terratorch.registry"], k, getattr(reg, k))
    importlib.import_module("terratorch.models.backbones.prithvi_vit")
    importlib.import_module("terratorch.models.necks")
    importlib.import_module("terratorch.models.decoders.upernet_decoder")
    importlib.import_module("terratorch.models.decoders.unet_decoder")
    factory = importlib.import_module("terratorch.models.encoder_decoder_factory")
    tiled = importlib.import_module("terratorch.tasks.tiled_inference")
    import terratorch.models.backbones.prithvi_mae as prithvi_mae  # noqa: E402

    version = "unknown"
    try:
        from importlib.metadata import version as _v

        version = _v("terratorch")
    except Exception:  # metadata missing: only used in reports
        pass
    return types.SimpleNamespace(EncoderDecoderFactory=factory.EncoderDecoderFactory,
                                 tiled_inference=tiled.tiled_inference, prithvi_mae=prithvi_mae, version=version)
