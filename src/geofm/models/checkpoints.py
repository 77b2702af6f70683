"""Read and write Prithvi checkpoints in every released layout, with no conversion scripts.

Accepted sources:

* ``.pt`` / ``.pth`` / ``.ckpt`` files, always loaded with ``torch.load(weights_only=True)``
  (a pickle carrying code is refused): the v1 flat layout (``Prithvi_100M.pt``: ``cls_token``,
  ``blocks.N.*``, ``decoder_blocks.N.*`` ...), the EO-2.0 ``encoder.``/``decoder.`` layout,
  ``{"model": state_dict}`` wrappers and Lightning checkpoints (``state_dict`` +
  ``hyper_parameters``) of our own tasks, whatever module prefix they use;
* ``.safetensors`` files;
* a local Hugging Face model folder (``config.json`` + weights), a cache entry
  (``models--org--name``) or a repo id ``org/name`` resolved from the local cache only.

geofm's own layout is the EO-2.0 one: ``encoder.*`` and ``decoder.*``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from geofm.bands import stats_for
from geofm.errors import CheckpointError
from geofm.io import atomic_path
from geofm.models.mae import PrithviConfig, PrithviMAE
from geofm.models.vit import Block, interpolate_pos_embed

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
_V1_DECODER_ROOTS = ("mask_token", "decoder_embed", "decoder_pos_embed", "decoder_blocks", "decoder_norm",
                     "decoder_pred")
_MARKERS = ("encoder.patch_embed.proj.weight", "patch_embed.proj.weight")


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] | None
    source: str


# --------------------------------------------------------------------------- locating files
def resolve_path(source: str | os.PathLike) -> Path:
    """Path of the weight file behind ``source`` (file, HF folder, HF cache entry or cached repo id)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "snapshots").is_dir():  # a cache entry models--org--name
            return resolve_path(_snapshot_of_cache_entry(path))
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
        if not found:
            raise CheckpointError(f"no weights in folder '{path}': expected model.safetensors or a "
                                  f"{'/'.join(WEIGHT_SUFFIXES)} file")
        if len(found) > 1:
            log.warning("several weight files in %s, using %s", path, found[0].name)
        return found[0]
    text = str(source)
    looks_local = text.startswith((".", "/", "~")) or path.suffix in WEIGHT_SUFFIXES or path.parent.is_dir()
    if text.startswith("hf://") or (re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not looks_local):
        return resolve_path(_snapshot_from_cache(text.removeprefix("hf://")))
    raise CheckpointError(f"checkpoint '{source}' not found: expected a file, a model folder, or a "
                          "Hugging Face repo id present in the local cache")


def _snapshot_of_cache_entry(entry: Path) -> Path:
    ref = entry / "refs" / "main"
    if ref.is_file():
        snap = entry / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    snaps = sorted((entry / "snapshots").iterdir(), key=lambda p: p.stat().st_mtime)
    if not snaps:
        raise CheckpointError(f"Hugging Face cache entry '{entry}' has no snapshot")
    return snaps[-1]


def _snapshot_from_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # huggingface_hub raises several types for "not cached"
        raise CheckpointError(
            f"checkpoint '{repo_id}' not found: no such local file or folder, and it is not in the local "
            f"Hugging Face cache (geofm does not download at load time; if it is a repo id, fetch it once with "
            f"`huggingface-cli download {repo_id}`)") from e


# --------------------------------------------------------------------------- restricted unpickling
def _numpy_allowlist() -> list:
    """numpy objects found in mmcv checkpoint ``meta`` (scalars such as a best score, dtypes), under
    the module names numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) pickle them with."""
    import codecs

    import numpy as np

    scalar = np.array(0.0)[()].__reduce__()[0]  # numpy's multiarray.scalar reconstructor
    allowed: list = [np.dtype, (np.dtype, "numpy.dtype"), codecs.encode, (codecs.encode, "_codecs.encode")]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((scalar, f"{mod}.scalar"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            cls = getattr(dtypes, name)
            if isinstance(cls, type) and name.endswith("DType"):
                allowed.append((cls, f"numpy.dtypes.{name}"))
    return allowed


def load_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` plus the numpy scalar/dtype and ``_codecs.encode`` globals that
    mmcv checkpoints (Prithvi-EO-1.0 fine-tunes) carry in their ``meta``. Any other global (a payload
    that runs code) is refused with :class:`CheckpointError`. ``weights_only`` is passed explicitly, so
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off; every checkpoint geofm reads, Lightning's
    resume included, goes through here."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        raise CheckpointError(f"cannot read checkpoint '{path}': not a PyTorch (zip or pickle) file")
    try:
        with torch.serialization.safe_globals(_numpy_allowlist()):
            # zip files are memory-mapped: tensors nobody uses (optimizer states) are never read
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:  # torch's first line advises weights_only=False: name the global instead
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0] if lines else "")
        raise CheckpointError(f"refusing to load '{path}': it carries more than tensors and plain values, "
                              f"which could run code when unpickled ({why})") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"cannot read checkpoint '{path}': {e}") from e


# --------------------------------------------------------------------------- owning tensors
def _mapped_regions(path: Path) -> list[tuple[int, int, int]]:
    """(start, end, file offset) of this process's memory mappings of ``path`` (Linux; [] elsewhere)."""
    try:
        st, real = path.stat(), os.path.realpath(path)
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    regions = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6:
            continue
        span, _, offset, dev, inode, name = parts
        major, _, minor = dev.partition(":")
        same_file = name == real or (int(inode) == st.st_ino and int(major, 16) == os.major(st.st_dev)
                                     and int(minor, 16) == os.minor(st.st_dev))
        if same_file:
            start, _, end = span.partition("-")
            regions.append((int(start, 16), int(end, 16), int(offset, 16)))
    return regions


_READ_CHUNK = 1 << 22  # bytes read at a time when a tensor changes dtype on the way in


def _readinto(f, view: memoryview, where: int) -> bool:
    f.seek(where)
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            return False
        done += got
    return True


def _read_mapped(t: torch.Tensor, dtype: torch.dtype | None, f, regions: list[tuple[int, int, int]],
                 buf: torch.Tensor) -> torch.Tensor | None:
    """``t`` (a view of a mapping of the file ``f``) read from the file as ``dtype``, or None where it is not.

    The mapped pages are never touched (so they never become part of the process's resident
    memory), except for a 16-byte check that the bytes at the computed file offset are ``t``'s; a
    tensor that changes dtype is read through ``buf`` a chunk at a time.
    """
    if not t.is_contiguous() or t.device.type != "cpu" or t.numel() == 0:
        return None
    ptr, nbytes = t.data_ptr(), t.numel() * t.element_size()
    where = next((ptr - a + off for a, b, off in regions if a <= ptr and ptr + nbytes <= b), None)
    if where is None:
        return None
    probe = min(nbytes, 16)
    f.seek(where)
    if f.read(probe) != ctypes.string_at(ptr, probe):
        return None
    out = torch.empty(t.shape, dtype=dtype or t.dtype)
    if out.dtype == t.dtype:
        return out if _readinto(f, memoryview(out.reshape(-1).view(torch.uint8).numpy()), where) else None
    step = len(buf) // t.element_size()
    chunk = buf[:step * t.element_size()].view(t.dtype)
    flat = out.reshape(-1)
    for i in range(0, t.numel(), step):
        n = min(step, t.numel() - i)
        if not _readinto(f, memoryview(buf[:n * t.element_size()].numpy()), where + i * t.element_size()):
            return None
        flat[i:i + n].copy_(chunk[:n])
    return out


def own_tensors(sd: dict[str, torch.Tensor], dtype_of: dict[str, torch.dtype] | None = None, *,
                file: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``sd`` (emptied as it goes) in this process's own memory, ``dtype_of[key]`` where given.

    ``file``: the checkpoint that :func:`load_torch_file` memory-mapped ``sd`` from. Its tensors
    are views of the file's pages: converting them in place would make the whole file resident
    (and keep it so while any one tensor lives). Each is read instead, one at a time, straight from
    the file into its new memory and cast there, so loading peaks at the result plus the largest
    tensor (a 300M model with bf16 blocks: about 0.7 GB instead of 1.9 GB). Where the mapping
    cannot be located (not Linux), mapped tensors are copied; tensors of an ``sd`` read into
    memory are only cast.
    """
    dtype_of = dtype_of or {}
    regions = _mapped_regions(Path(file)) if file is not None else []
    out: dict[str, torch.Tensor] = {}
    buf = torch.empty(_READ_CHUNK, dtype=torch.uint8)
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(file, "rb", buffering=0)) if regions else None
        for key in list(sd):
            t = sd.pop(key)
            dtype = dtype_of.get(key) if t.is_floating_point() else None
            read = _read_mapped(t, dtype, f, regions, buf) if f is not None else None
            if read is not None:
                out[key] = read
            elif file is not None:  # a view of the mapping: copy it out
                out[key] = t.to(dtype=dtype or t.dtype, copy=True)
            else:
                out[key] = t.to(dtype) if dtype is not None else t
    return out


def declares_low_precision(m: torch.nn.Module) -> bool:
    """Whether ``m``'s class declares ``low_precision = True`` (a convolutional decoder safe in bf16)."""
    return bool(getattr(type(m), "low_precision", False))


def low_precision_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose weights take the low precision in bf16/fp16 inference, outermost only: the
    transformer blocks (:class:`~geofm.models.vit.Block`) and the decoders whose class declares
    ``low_precision = True`` (UperNet)."""
    found: list[torch.nn.Module] = []
    inside: set[int] = set()
    for m in model.modules():
        if id(m) not in inside and (isinstance(m, Block) or declares_low_precision(m)):
            found.append(m)
            inside.update(id(x) for x in m.modules())
    return found


def block_dtypes(model: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.dtype]:
    """``{state-dict key: dtype}`` for every tensor of the :func:`low_precision_modules` of ``model``."""
    if dtype is None or dtype == torch.float32:
        return {}
    low = {id(m) for m in low_precision_modules(model)}
    return {f"{name}.{key}": dtype for name, m in model.named_modules() if id(m) in low for key in m.state_dict()}


def load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], layout: str, source: str, *,
                block_dtype: torch.dtype | None = None, file: str | os.PathLike | None = None) -> None:
    """Load ``sd`` into ``model``; any missing/unexpected key or shape mismatch raises, grouped by module.

    The tensors of ``sd`` become the model's (``assign``): build ``model`` on the meta device
    (:func:`empty_model`) so that the weights exist once in memory, not twice. ``block_dtype``:
    the transformer blocks' weights are converted to it while they are read (see
    :func:`own_tensors`, which also reads the tensors of a memory-mapped ``file``).
    """
    check_keys(model.state_dict(), sd,
               f"'{source}' (read as layout '{layout}') does not fit the model its config describes")
    model.load_state_dict(own_tensors(sd, block_dtypes(model, block_dtype), file=file), assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"'{source}': no values for {group_keys(left, 10)}")
    for m in model.modules():  # pos-embedding caches built on the meta device
        if isinstance(getattr(m, "_pos_cache", None), dict):
            m._pos_cache.clear()


def empty_model(build, *args, **kwargs) -> torch.nn.Module:
    """``build(*args, **kwargs)`` with parameters on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return build(*args, **kwargs)


# --------------------------------------------------------------------------- reading
def read_checkpoint(source: str | os.PathLike, *, preloaded: Any = None) -> Checkpoint:
    """Load weights (and configuration, when the source carries one) from any supported layout.

    ``preloaded``: the torch file's object as :func:`load_torch_file` returned it, when the caller
    has read it already (it is not read again).
    """
    path = resolve_path(source)
    config = None
    cfg_file = path.parent / "config.json"
    if cfg_file.is_file():
        config = config_from_json(json.loads(cfg_file.read_text()))
    if path.suffix == ".safetensors":
        raw: Any = load_safetensors(path)
    else:
        raw = load_torch_file(path) if preloaded is None else preloaded
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        hp = raw.get("hyper_parameters") or {}
        if config is None and isinstance(hp, dict) and isinstance(hp.get("model_config"), dict):
            config = dict(hp["model_config"])
        raw = raw["state_dict"]
    elif isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], dict):
        raw = raw["model"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"'{path}' does not hold a state dict of tensors")
    return Checkpoint(adapt_state_dict(raw, str(path)), config, str(path))


def config_from_json(cfg: dict[str, Any]) -> dict[str, Any]:
    """Model options from a ``config.json``: ours, the EO-2.0 (``pretrained_cfg``) or v1 (``model_args``) one."""
    inner = cfg.get("pretrained_cfg") or cfg.get("model_args") or cfg
    fields = set(PrithviConfig.__dataclass_fields__)
    out = {k: v for k, v in inner.items() if k in fields}
    if "tubelet_size" in inner and isinstance(out.get("patch_size"), int):
        out["patch_size"] = (int(inner["tubelet_size"]), out["patch_size"], out["patch_size"])
    return out


def adapt_state_dict(sd: dict[str, torch.Tensor], source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """Map any known key layout onto geofm's (``encoder.*``, ``decoder.*``).

    A wrapper prefix (``model.``, ``module.``, ``_orig_mod.``, a Lightning attribute ...) is found
    from the patch-embedding key and stripped; keys outside it are dropped.
    """
    prefix = None
    for key in sd:
        for marker in _MARKERS:
            if key.endswith(marker):
                cand = key[: -len(marker)]
                if prefix is None or len(cand) < len(prefix):
                    prefix = cand
    if prefix is None:
        raise CheckpointError(f"'{source}' is not a Prithvi checkpoint: no patch_embed.proj.weight key "
                              f"(first keys: {list(sd)[:5]})")
    out: dict[str, torch.Tensor] = {}
    dropped = 0
    for key, value in sd.items():
        if not key.startswith(prefix):
            dropped += 1
            continue
        k = key[len(prefix):].replace("_orig_mod.", "")
        if not (k.startswith("encoder.") or k.startswith("decoder.")):  # v1 flat layout
            root = k.split(".")[0]
            k = ("decoder." if root in _V1_DECODER_ROOTS else "encoder.") + k
        out[k] = value
    if dropped:
        log.debug("ignored %d keys outside prefix %r in %s", dropped, prefix, source)
    return out


# --------------------------------------------------------------------------- loading into a model
def load_into(model: PrithviMAE, state_dict: dict[str, torch.Tensor], *, strict: bool = True,
              encoder_only: bool = False, source: str = "<state dict>") -> None:
    """Load an adapted state dict into ``model``.

    Position embeddings of another grid are interpolated. With ``strict`` any missing or
    unexpected key or any shape mismatch raises :class:`CheckpointError` listing them all;
    ``encoder_only`` allows a missing (or ignores a present) decoder.
    """
    own = model.state_dict()
    sd = dict(state_dict)
    if encoder_only:
        sd = {k: v for k, v in sd.items() if not k.startswith("decoder.")}
    for key, grid_of in (("encoder.pos_embed", model.encoder.grid_size),
                         ("decoder.decoder_pos_embed", model.decoder.grid_size)):
        if key in sd and key in own and sd[key].shape != own[key].shape:
            src = guess_grid(sd[key].shape[1] - 1, grid_of, model.config.patch_size)
            if src is None or sd[key].shape[-1] != own[key].shape[-1]:
                continue  # reported as a shape mismatch below
            log.info("interpolating %s from grid %s to %s", key, src, grid_of)
            sd[key] = interpolate_pos_embed(sd[key], src, grid_of)
    missing, unexpected, mismatched = key_problems(own, sd)
    if encoder_only:
        missing = [k for k in missing if not k.startswith("decoder.")]
    problems = []
    if mismatched:
        problems.append("shape mismatches:\n  " + "\n  ".join(mismatched))
    if missing:
        problems.append(f"missing keys ({len(missing)}): {group_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {group_keys(unexpected)}")
    if problems and (strict or mismatched):
        hint = " (pass encoder_only=True to load an encoder-only checkpoint)" if any(
            k.startswith("decoder.") for k in missing) else ""
        raise CheckpointError(f"checkpoint '{source}' does not fit the model{hint}:\n" + "\n".join(problems))
    for p in problems:
        log.warning("loading %s: %s", source, p)
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def group_keys(keys: list[str], n: int = 12) -> str:
    """Key list grouped by module: ``decoder.decoder_blocks.* (24), decoder.mask_token``."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        parts = k.split(".")
        groups.setdefault(".".join(parts[:2]) if len(parts) > 2 else k, []).append(k)
    items = [g if len(ks) == 1 and ks[0] == g else (ks[0] if len(ks) == 1 else f"{g}.* ({len(ks)})")
             for g, ks in groups.items()]
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} groups)" if len(items) > n else "")


def key_problems(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, shape mismatches)`` of state dict ``sd`` against a model's ``own``."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items()
              if k in own and v.shape != own[k].shape]
    return missing, unexpected, shapes


def check_keys(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], what: str) -> None:
    """:class:`CheckpointError` ``"{what}: missing key groups: ...; unexpected ...; shape mismatches ..."``
    unless ``sd`` has exactly the keys and shapes of ``own``."""
    missing, unexpected, shapes = key_problems(own, sd)
    parts = []
    if missing:
        parts.append(f"missing key groups: {group_keys(missing, 10)}")
    if unexpected:
        parts.append(f"unexpected key groups: {group_keys(unexpected, 10)}")
    if shapes:
        parts.append("shape mismatches: " + "; ".join(shapes[:6]) + (" ..." if len(shapes) > 6 else ""))
    if parts:
        raise CheckpointError(f"{what}: " + "; ".join(parts))


def guess_grid(n_tokens: int, model_grid: tuple[int, int, int], patch: tuple[int, int, int]) -> tuple | None:
    """Token grid (t, h, w) of a square checkpoint embedding with ``n_tokens`` patch tokens."""
    for t in [model_grid[0]] + [t for t in range(1, 17) if t != model_grid[0]]:
        if n_tokens % t:
            continue
        side = round((n_tokens // t) ** 0.5)
        if side * side * t == n_tokens:
            return (t, side, side)
    return None


# --------------------------------------------------------------------------- writing
def save_pretrained(model: PrithviMAE, out_dir: str | os.PathLike, *, name: str | None = None,
                    encoder_only: bool = False) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (Hugging Face layout) into ``out_dir``."""
    sd = {k: v for k, v in model.state_dict().items() if not (encoder_only and k.startswith("decoder."))}
    cfg = model.config.to_dict()
    cfg.pop("extra", None)
    mean, std = stats_for(cfg["norm_stats"], cfg["in_chans"])
    config = {"model_type": "prithvi_mae", "architecture": name or "prithvi_mae", "library": "geofm",
              "encoder_only": encoder_only, "num_features": cfg["embed_dim"],
              "pretrained_cfg": dict(cfg, mean=mean, std=std)}
    return write_model_folder(out_dir, sd, config)


def write_model_folder(out_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor], config: dict[str, Any],
                       metadata: dict[str, str] | None = None) -> Path:
    """``out_dir/model.safetensors`` (tensors copied to contiguous CPU memory) + ``out_dir/config.json``,
    each written atomically: the one writer of every geofm model folder. Returns ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt", **(metadata or {})})
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file on the CPU; :class:`CheckpointError` naming the file if unreadable."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read safetensors file '{path}': {e}") from e
