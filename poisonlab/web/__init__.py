"""`poisonlab serve`: a local web page to protect a folder of images without the command line.

FastAPI + uvicorn (pinned in requirements.txt): the upload needs a streaming multipart parser and the
progress page a small JSON API, which the standard library no longer provides (cgi is gone in 3.13);
FastAPI brings both with little code of ours, and its TestClient lets the API be tested without a browser.
Jobs persist on disk and run in worker processes (see jobs.py); uploads are checked in uploads.py.
"""

from .. import PoisonlabError
from .limits import Limits


def add_parser(sub):
    """`poisonlab serve` (added to the CLI's subparsers)."""
    s = sub.add_parser("serve", help="a local web page: drop images, pick a method, download the protected set")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this computer only)")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--root", default=None,
                   help="folder for jobs (default $POISONLAB_WEB_ROOT or ~/.local/share/poisonlab/web)")
    s.add_argument("--max-upload-mb", type=float, default=Limits.max_upload_bytes / (1 << 20))
    s.add_argument("--max-images", type=int, default=Limits.max_files)
    s.add_argument("--max-megapixels", type=float, default=Limits.max_pixels / 1e6, help="per image")
    s.set_defaults(fn=_cmd)


def _cmd(args):
    if args.max_upload_mb <= 0 or args.max_images <= 0 or args.max_megapixels <= 0 or not 0 < args.port < 65536:
        raise PoisonlabError("serve: limits must be positive and the port in 1..65535")
    try:
        from .app import serve  # lazy: fastapi and uvicorn are needed only to serve (a clear error if absent)
    except ImportError as e:
        raise PoisonlabError(f"poisonlab serve needs fastapi, uvicorn and python-multipart ({e}); "
                             "pip install -r requirements.txt") from None
    serve(args.host, args.port, args.root, Limits(max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                                                  max_files=args.max_images,
                                                  max_pixels=int(args.max_megapixels * 1e6)))


__all__ = ["add_parser", "Limits"]
