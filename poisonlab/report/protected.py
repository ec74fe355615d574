"""Report section for a `poisonlab protect` output: manifest, the budget measured again, samples, diagnostics.

The noise file beside OUT (OUT.noise.npy) is private. When it is present locally it is used to rebuild the
originals (saved - noise), checked against the manifest's hash of the original images, and to measure the
budget again; the raw array is never embedded, only a few amplified samples.
"""

import json
import re
from pathlib import Path

import numpy as np
import torch

from .. import PoisonlabError
from ..data import load_dataset
from ..fileio import read_json
from ..hashing import bytes_hash, tensor_hash
from ..protect.base import verify_bound
from ..publishing import noise_path
from .charts import X_KEYS, is_number, line_chart, series_of
from .html import command, esc, img, kv_table, shown_path
from .images import amplified, png_bytes, sample_indices

MAX_MANIFEST_BYTES = 8 << 20


def read_manifest(out_dir: Path) -> dict:
    p = Path(out_dir) / "manifest.json"
    if p.is_symlink() or not p.is_file():
        raise PoisonlabError(f"{out_dir} has no manifest.json (not a poisonlab protect output)")
    if p.stat().st_size > MAX_MANIFEST_BYTES:
        raise PoisonlabError(f"{p} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; refusing to read it")
    try:
        m = read_json(p)
    except (ValueError, UnicodeDecodeError) as e:
        raise PoisonlabError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(m, dict):
        raise PoisonlabError(f"{p} does not hold a JSON object")
    return m


def load_noise(path: Path):
    """The int noise array, or None when absent. allow_pickle=False: a .npy can carry no code."""
    if not path.is_file():
        return None
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PoisonlabError(f"cannot read the noise file {path}: {e}") from None
    if a.dtype.kind != "i" or a.ndim != 4:
        raise PoisonlabError(f"{path}: expected an integer (N,C,H,W) array, got {a.dtype} {a.shape}")
    return a


def _orders(names):
    """Candidate orders of the reloaded images that the noise rows may follow: the reload order (folders and
    archives: sorted names), and by the index in numbered names (.npz / CIFAR inputs are written as
    <class>/<index>.png, and the noise keeps the array order)."""
    yield np.arange(len(names))
    idx = [re.fullmatch(r"\d+", Path(n).stem) for n in names]
    if all(idx):
        keys = [int(m.group(0)) for m in idx]
        if len(set(keys)) == len(keys):
            yield np.argsort(keys, kind="stable")


def align(saved, noise, images_sha256):
    """(order, originals) such that saved.images[order] - noise are the original images whose hash the
    manifest records; None when no candidate order matches (the noise belongs to another run)."""
    if noise.shape != tuple(saved.images.shape):
        return None
    for order in _orders(saved.names or [str(i) for i in range(len(saved))]):
        orig = saved.images.numpy()[order].astype(np.int16) - noise.astype(np.int16)
        if orig.min() < 0 or orig.max() > 255:
            continue
        orig = orig.astype(np.uint8)
        if images_sha256 is None or bytes_hash(orig.tobytes()) == images_sha256:
            return order, orig
    return None


def measure(noise: np.ndarray, bound: dict) -> dict:
    """What the noise array shows about the promise, per norm; `ok` by the same check protect applies."""
    d = torch.from_numpy(noise.astype(np.int16))
    norm, eps = bound.get("norm", "linf"), bound.get("eps")
    flat = d.flatten(1).float()
    res = {"images": len(d), "changed pixels": f"{float((d != 0).float().mean()) * 100:.1f}%"}
    if norm == "linf":
        lv = int(d.abs().max()) if d.numel() else 0
        res["largest change (levels of 255)"] = lv
        res["mean |change| (levels)"] = round(float(d.abs().float().mean()), 3)
        if bound.get("levels"):
            res["pixels at the budget's edge"] = f"{float((d.abs() == int(bound['levels'])).float().mean()) * 100:.1f}%"
    elif norm == "l2":
        per = (flat / 255).norm(dim=1)
        res["largest L2 per image"], res["mean L2 per image"] = round(float(per.max()), 4), round(float(per.mean()), 4)
    elif norm == "l0":
        per = (d != 0).any(dim=1).flatten(1).sum(1)
        res["most pixel positions changed in an image"] = int(per.max())
    else:
        res["largest change (levels of 255)"] = int(d.abs().max()) if d.numel() else 0
    try:
        if eps is None:
            raise PoisonlabError("the manifest names no budget")
        verify_bound(torch.zeros_like(d), d, norm, float(eps))
        res["ok"] = True
    except PoisonlabError as e:
        res["ok"], res["problem"] = False, str(e)
    return res


def protect_command(m: dict, out_dir) -> str:
    p = dict(m.get("params") or {})
    src = (m.get("source") or {})
    parts = ["poisonlab protect", "--method", str(m.get("method")), "--data", str(src.get("name") or src.get("path") or "DATA"),
             "--out", shown_path(out_dir)]
    b = m.get("bound") or {}
    eps = p.pop("eps", None)
    if eps is not None:
        parts += ["--eps", str(b.get("eps_text") or eps)]
    seed = p.pop("seed", None)
    if seed not in (None, 0):
        parts += ["--seed", str(seed)]
    p.pop("device", None)
    if src.get("subset"):
        parts += ["--subset", str(src["subset"])]
    for k, v in sorted(p.items()):
        if isinstance(v, (str, int, float, bool)) or v is None:
            parts += ["--opt", f"{k}={v}"]
    return " ".join(_quote(x) for x in parts)


def _quote(s: str) -> str:
    import shlex
    return s if s == "poisonlab protect" else shlex.quote(s)


def diagnostics_html(diag, heading="<h2>Diagnostics over generation</h2>") -> str:
    """Scalars as a table; every numeric series (over steps, epochs, rounds) as a chart."""
    if not isinstance(diag, dict) or not diag:
        return ""
    out, scalars = [heading], []
    for k, v in diag.items():
        s = series_of(v)
        if s:
            xkey = next((x for x in X_KEYS if isinstance(v, list) and v and isinstance(v[0], dict) and x in v[0]),
                        "step")
            out.append(f"<figure>{img(line_chart(s, str(k), xkey), f'diagnostics: {k}')}"
                       f"<figcaption>{esc(k)}</figcaption></figure>")
        elif is_number(v) or isinstance(v, (str, bool)) or v is None:
            scalars.append((k, v))
        else:
            scalars.append((k, json.dumps(v, default=str, ensure_ascii=False)[:2000]))
    if scalars:
        out.insert(1, kv_table(scalars))
    return "\n".join(out)


def from_originals(saved, m: dict, original):
    """(noise, (order, originals)) from the original data instead of the noise file: the source is loaded with
    the ordinary loaders (and the manifest's subset), checked against the manifest's hash of the originals,
    and paired with the saved PNGs by file name."""
    src = m.get("source") or {}
    ds = load_dataset(original, "train")
    if src.get("subset"):
        ds = ds.stratified(int(src["subset"]), seed=int(m.get("seed") or 0))
    if src.get("images_sha256") and tensor_hash(ds.images) != src["images_sha256"]:
        raise PoisonlabError(f"{original} does not hold the images this set was made from (their hash differs "
                             "from the manifest's)")
    pos = {n: i for i, n in enumerate(saved.names or [])}
    try:
        order = np.array([pos[str(Path(n).with_suffix(".png"))] for n in ds.names])
    except (KeyError, TypeError):
        raise PoisonlabError(f"the images of {original} cannot be paired with the saved PNGs by name") from None
    orig = ds.images.numpy()
    if orig.shape != tuple(saved.images.shape):
        raise PoisonlabError(f"{original}: images {orig.shape} differ in shape from the saved {tuple(saved.images.shape)}")
    noise = saved.images.numpy()[order].astype(np.int16) - orig.astype(np.int16)
    return noise, (order, orig)


def protected_report(out_dir, use_noise: bool = True, samples: int = 8, original=None):
    """(title, body html) for a protect output folder. original: the source data, to measure against when the
    noise file is not at hand."""
    out_dir = Path(out_dir)
    m = read_manifest(out_dir)
    saved = load_dataset(out_dir, "train")
    noise_file = noise_path(out_dir)
    if original is not None:
        noise, aligned = from_originals(saved, m, original)
        noise_file = Path(str(original))
    else:
        noise = load_noise(noise_file) if use_noise else None
        aligned = align(saved, noise, (m.get("source") or {}).get("images_sha256")) if noise is not None else None
    method = m.get("method", "?")
    cmd = protect_command(m, out_dir)
    body = [f"<h1>Protected set: {esc(out_dir.name)}</h1>",
            f"<p>{esc(len(saved))} images, {esc(len(saved.classes))} classes, protected with <strong>{esc(method)}</strong>"
            f" on {esc(m.get('created', '?'))}.</p>", command(cmd)]
    if aligned is not None:
        what = "the original images in" if original is not None else "the private noise file"
        body.append(f'<div class="warn"><strong>Private report.</strong> Made with {what} '
                    f'<code>{esc(noise_file.name)}</code>: it shows original images next to their protected versions. '
                    'Share it only as you would share the noise (rebuild with <code>--no-noise</code> for a public '
                    'report).</div>')
    body.append("<h2>Budget, measured again</h2>")
    bound = m.get("bound") or {}
    body.append(f"<p>Promised: <code>{esc(json.dumps(bound, default=str))}</code>.</p>")
    if noise is None:
        why = "was not used (--no-noise)" if not use_noise else "is not here"
        body.append(f"<p class=\"note\">The private noise file <code>{esc(noise_file.name)}</code> {why}; the published "
                    "images alone cannot show how far they moved. <code>poisonlab protect</code> checked the budget "
                    "on the saved PNGs when it wrote them.</p>")
    elif aligned is None:
        body.append(f"<p class=\"bad\">The noise file <code>{esc(noise_file.name)}</code> does not match these images "
                    "(shape, range or the manifest's hash of the originals): it belongs to another run, or the "
                    "images were changed after protection"
                    + (", or the images were moved between class folders (this run changed labels)"
                       if m.get("labels_changed") else "") + ".</p>")
    else:
        res = measure(noise, bound)
        ok = res.pop("ok")
        problem = res.pop("problem", None)
        verdict = ('<span class="ok">within budget</span>' if ok else f'<span class="bad">BROKEN: {esc(problem)}</span>')
        how = ("loaded from the original data and matched to the manifest's hash" if original is not None else
               "rebuilt from the noise and matched to the manifest's hash")
        body.append(f"<p>Measured on the saved PNGs minus the originals ({how}): {verdict}.</p>")
        body.append(kv_table(list(res.items())))

    body.append("<h2>Samples</h2>")
    if aligned is not None:
        order, orig = aligned
        prot = saved.images.numpy()[order]
        labels = saved.labels.numpy()[order]
        names = [saved.names[i] for i in order] if saved.names else None
        body.append('<p class="note">Before, after, and the noise amplified (grey = unchanged; each image\'s largest '
                    'change at full contrast).</p><div class="samples">')
        for i in sample_indices(labels, samples):
            d = prot[i].astype(np.int16) - orig[i].astype(np.int16)
            body.append(_sample(names[i] if names else str(i), saved.classes[labels[i]],
                                [("before", orig[i]), ("after", prot[i]), ("noise", amplified(d))]))
    else:
        body.append('<p class="note">Protected images (the originals need the private noise file).</p><div class="samples">')
        for i in sample_indices(saved.labels.numpy(), samples):
            body.append(_sample(saved.names[i] if saved.names else str(i), saved.classes[int(saved.labels[i])],
                                [("after", saved.images[i].numpy())]))
    body.append("</div>")
    body.append("<h2>Manifest</h2>")
    keys = ["method", "params", "bound", "seed", "model_based", "surrogate", "num_images", "image_shape", "classes",
            "generation_seconds", "poisonlab_version", "torch", "python", "created"]
    body.append(kv_table([(k, m.get(k)) for k in keys if k in m]))
    body.append(f"<details><summary>Full manifest.json</summary><pre>{esc(json.dumps(m, indent=2, default=str, ensure_ascii=False))}</pre></details>")

    body.append(diagnostics_html(m.get("diagnostics")))
    return f"poisonlab report: {out_dir.name}", "\n".join(body)


def _sample(name, cls, pictures) -> str:
    cells = "".join(f"<div>{img(png_bytes(a), f'{label}: {name}')}{esc(label)}</div>" for label, a in pictures)
    return (f'<div class="sample"><div class="trio">{cells}</div>'
            f'<div class="name">{esc(cls)} · {esc(name)}</div></div>')
