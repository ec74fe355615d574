"""`poisonlab report RUN_OR_OUT -o report.html`: one self-contained HTML page (no network) for a protected set
(`poisonlab protect` output) or a benchmark grid (`poisonlab bench` output)."""

from pathlib import Path

from .. import PoisonlabError
from ..fileio import atomic_write
from .html import page
from .protected import protected_report
from .grid import grid_report


def render_report(path, use_noise: bool = True, original=None) -> str:
    p = Path(path).expanduser()
    if p.is_file() and p.name in ("manifest.json", "results.json"):
        p = p.parent
    if not p.is_dir():
        raise PoisonlabError(f"{p}: not found (give a protect output folder or a bench output folder)")
    if (p / "manifest.json").is_file():
        title, body = protected_report(p, use_noise=use_noise, original=original)
    elif original is not None:
        raise PoisonlabError("--original applies to a protected set (a folder with manifest.json)")
    elif (p / "results.json").is_file():
        title, body = grid_report(p)
    else:
        raise PoisonlabError(f"{p} holds neither manifest.json (protect output) nor results.json (bench output)")
    return page(title, body)


def write_report(path, out_html, use_noise: bool = True, original=None) -> Path:
    html = render_report(path, use_noise=use_noise, original=original)
    out = Path(out_html)
    with atomic_write(out, "w") as f:
        f.write(html)
    return out


__all__ = ["render_report", "write_report", "add_parser"]


def add_parser(sub):
    """`poisonlab report` (added to the CLI's subparsers)."""
    r = sub.add_parser("report", help="one self-contained HTML page for a protect or bench output")
    r.add_argument("path", metavar="RUN_OR_OUT", help="a `poisonlab protect` OUT folder or a `poisonlab bench` output folder")
    r.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    r.add_argument("--no-noise", action="store_true",
                   help="ignore the private noise file beside OUT (a report fit to share: no originals)")
    r.add_argument("--original", default=None, metavar="DATA",
                   help="the data OUT was made from: measure the budget against it (when the noise file is not at hand)")
    r.set_defaults(fn=_cmd)


def _cmd(args):
    out = write_report(args.path, args.output, use_noise=not args.no_noise, original=args.original)
    print(f"RESULT report of {args.path} -> {out}")
