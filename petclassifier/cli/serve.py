"""The `cache` and `serve` commands: the cache folder's size, limit and clearing; the local web page."""

from __future__ import annotations

import argparse
import sys

from ..config import TrainConfig
from ..errors import UserError
from .output import chosen_checkpoint


def add_cache_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="the cache folder (default ~/.cache/petclassifier)")
    p.add_argument("--clear", action="store_true", help="remove everything in it; the next run decodes again")
    p.add_argument("--limit-gb", type=float, metavar="GB",
                   help="keep it within this size: the least recently used entries go first (default 20)")


def run_cache(args: argparse.Namespace) -> int:
    from ..data.cache import cache_size, clear_cache, set_cache_limit
    from ..data.store import cache_limit

    folder = TrainConfig(cache_dir=args.cache_dir).resolved().cache_dir
    if args.limit_gb is not None and args.limit_gb <= 0:
        raise UserError(f"--limit-gb {args.limit_gb:g}: give a size above 0 (or --clear to empty the cache)")
    if args.limit_gb is not None:
        set_cache_limit(folder, int(args.limit_gb * 1e9))
    sizes = cache_size(folder)
    total = sum(part["bytes"] for part in sizes.values())
    if args.clear:
        clear_cache(folder)
        print(f"removed {folder} ({total / 1e6:,.1f} MB)")
        return 0
    print(f"{folder}: {total / 1e6:,.1f} MB (limit {cache_limit(folder) / 1e9:g} GB)")
    for name, part in sizes.items():
        print(f"  {name}: {part['bytes'] / 1e6:,.1f} MB in {part['files']} files")
    return 0


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="a best.pt, or a run folder (default: the newest runs/*/best.pt; none: the "
                   "page only teaches)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0: your network too)")
    p.add_argument("--port", type=int, default=8000, help="(default 8000; 0: any free port)")
    p.add_argument("--token", help="what visitors must give (in the address: ?token=...) (default: a new random one "
                   "where other machines can reach the server, none on 127.0.0.1)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run_serve(args: argparse.Namespace) -> int:
    try:
        from ..web.app import serve
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if missing not in ("starlette", "uvicorn", "multipart", "python_multipart"):
            raise
        raise UserError(f'the web page needs the web extra ({missing} is missing): pip install -e ".[web]"') from None
    try:
        checkpoint = chosen_checkpoint(args.checkpoint)
    except UserError:
        if args.checkpoint is not None:
            raise
        checkpoint = None  # nothing trained yet: the page can teach a model
        print("no --checkpoint given and no runs/*/best.pt: the page will teach a model", file=sys.stderr)
    serve(checkpoint, args.host, args.port, args.device, args.token)
    return 0
