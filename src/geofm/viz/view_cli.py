"""``geofm view PATHS... [--port 8765] [--host 127.0.0.1] [--open] [--basemap URL]``: a local web map."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="GeoTIFFs (geofm predict outputs, HLS band files, stacked GeoTIFFs) or folders of them "
                        "(e.g. a geofm demo output folder)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only; another one shows the layers to "
                        "every machine that reaches it)")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    p.add_argument("--basemap", metavar="URL",
                   help="XYZ tile URL of a background map, e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png "
                        "(the page then requests tiles from that host; without it, nothing outside this server)")


def check_installed() -> None:
    """:class:`~geofm.errors.ConfigError` unless the viewer's packages (``geofm[view]``) are installed."""
    import importlib.util

    from geofm.errors import ConfigError

    missing = [m for m in ("rio_tiler", "starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"the viewer needs {', '.join(missing)}: pip install 'geofm[view]'")


def view(paths, *, port: int = 8765, host: str = "127.0.0.1", open_browser: bool = False,
         basemap: str | None = None) -> int:
    """Serve ``paths`` until Ctrl-C, printing the layers and the address (and opening it if asked)."""
    from geofm.errors import ConfigError

    check_installed()
    from geofm.viz.layers import discover
    from geofm.viz.server import ViewServer, check_basemap

    check_basemap(basemap)
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: expected 0..65535")
    layers = discover(paths)
    server = ViewServer(layers, host=host, port=port, basemap=basemap).start()
    for la in layers:
        dates = f", {len(la.dates)} dates" if len(la.dates) > 1 else ""
        print(f"  {la.kind:<13} {la.name}{dates}  ({la.path})")
    print(f"serving {len(layers)} layer(s) at {server.url}  (Ctrl-C to stop)", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    server.wait()
    return 0


def run(args: argparse.Namespace) -> int:
    return view(args.paths, port=args.port, host=args.host, open_browser=args.open, basemap=args.basemap)
