"""The ``geofm`` command line. Thin: it parses arguments, then calls library functions.

Each subcommand lives in the module that owns the work and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``. They are imported lazily, so that
``geofm --help`` stays fast and a subcommand's heavy imports are paid only when used.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys

# name -> (module with add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("geofm.models.convert_cli", "export a checkpoint to safetensors + config.json"),
    "demo": ("geofm.demo", "run the end-to-end demo on the bundled sample data"),
    "search": ("geofm.data.remote.search_cli", "find HLS granules in NASA CMR-STAC -> STAC manifest (+ summary, quicklook)"),
    "fetch": ("geofm.data.remote.fetch_cli", "download a manifest's band files (Earthdata Login, resumable, https or s3)"),
    "ingest": ("geofm.data.ingest_cli", "HLS scenes -> filtered chips in a Zarr store (Dask, resumable)"),
    "explore": ("geofm.data.explore", "summary statistics and plots of a chip store"),
    "sample": ("geofm.data.sampling", "stratified sample of a chip store -> index for the loader"),
    "pretrain": ("geofm.tasks.pretrain_cli", "MAE pretraining on a chip store (Lightning: DDP/FSDP, exact resume)"),
    "finetune": ("geofm.tasks.finetune", "fine-tune on a downstream task (fit/validate/test/predict) from a YAML"),
    "experiment": ("geofm.tasks.experiment", "data-efficiency grid: strategies x label fractions x seeds -> CSV + plots"),
    "predict": ("geofm.infer.predict_cli", "predict a whole scene with a fine-tuned model -> GeoTIFF (COG)"),
    "map": ("geofm.infer.map_cli", "map a region and a season: many granules -> tiles on Dask -> mosaic + STAC"),
    "export-onnx": ("geofm.infer.export_onnx_cli", "export a segmentation model to ONNX (for ONNX Runtime)"),
    "view": ("geofm.viz.view_cli", "a local web map of predictions and inputs (MapLibre, offline)"),
    "evaluate-imputation": ("geofm.tasks.evaluate_imputation_cli",
                            "score a gap filler vs linear / nearest interpolation on fixed real cloud masks"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``geofm`` parser; only ``command``'s module is imported to add its arguments.

    Every subcommand is listed (name and help line) without importing anything, so
    ``geofm --help`` and a mistyped command answer at once.
    """
    parser = argparse.ArgumentParser(prog="geofm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv``: the first word that is not an option (``geofm -v ingest ...``)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


_NUMBER_LIST = re.compile(r"-\d*\.?\d+(?:[eE][-+]?\d+)?(?:,-?\d*\.?\d+(?:[eE][-+]?\d+)?)+")


def glue_number_lists(argv: list[str]) -> list[str]:
    """``--opt -1.5,2,...`` -> ``--opt=-1.5,2,...``: argparse takes a value that starts with ``-`` and is
    not one number for an option, so ``--bbox -122.5,37.1,-121.9,37.6`` would fail as typed."""
    out: list[str] = []
    for i, word in enumerate(argv):
        if word == "--":  # the rest are positional values
            return out + argv[i:]
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NUMBER_LIST.fullmatch(word):
            out[-1] = f"{out[-1]}={word}"
        else:
            out.append(word)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = glue_number_lists(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:  # engines that configure their own INFO handlers: keep their chatter for -vv
        from geofm.runtime import quiet_engine_logs

        quiet_engine_logs(max(level, logging.WARNING))
        # distributed sets its loggers' levels from its config when first imported (later, lazily)
        os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "warning")
    if args.command is None:
        parser.print_help()
        return 2
    from geofm.errors import GeofmError

    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except GeofmError as e:  # bad input or config: a clear message, no traceback (-vv shows it)
        if args.verbose >= 2:
            raise
        print(f"geofm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
