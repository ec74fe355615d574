"""Report section for a `poisonlab bench` output: its tables (sortable), every cell, and its plots, each with
the command that made it."""

import json
import re
import shlex
from pathlib import Path

from .. import PoisonlabError
from ..fileio import read_json
from .html import command, esc, img, shown_path, table
from .markdown import markdown_html
from .protected import diagnostics_html, read_manifest

MAX_JSON_BYTES = 64 << 20
MAX_PNG_BYTES = 16 << 20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CELL_COLUMNS = ["experiment", "method", "budget", "defense_label", "model", "width", "fraction", "mode", "seed",
                "reported_acc", "metric", "last_acc", "best_acc", "best_epoch", "epochs", "train_seconds",
                "generation_seconds", "device"]


def _safe_file(p: Path, limit: int) -> bool:
    """A regular file inside the run (no symlink out of it) of a sane size."""
    return p.is_file() and not p.is_symlink() and p.stat().st_size <= limit


def find_config(name: str, run: Path):
    """The config file that names this grid, looked for in ./configs and beside the run; None if not found."""
    for folder in (Path("configs"), run.parent / "configs", run.parent.parent / "configs", run):
        if not folder.is_dir():
            continue
        for f in sorted(folder.glob("*.json")):
            try:
                if _safe_file(f, 1 << 20) and read_json(f).get("name") == name:
                    return f
            except (ValueError, OSError, AttributeError, UnicodeDecodeError):
                continue
    return None


def grid_report(run):
    """(title, body html) for a bench output folder (results.json, tables.md, plots/)."""
    run = Path(run)
    res_path = run / "results.json"
    if not _safe_file(res_path, MAX_JSON_BYTES):
        raise PoisonlabError(f"{run} has no readable results.json (not a poisonlab bench output)")
    try:
        res = read_json(res_path)
    except (ValueError, UnicodeDecodeError) as e:
        raise PoisonlabError(f"{res_path} is not valid JSON: {e}") from None
    if not isinstance(res, dict) or not isinstance(res.get("rows"), list):
        raise PoisonlabError(f"{res_path} has no 'rows' list (not a poisonlab bench output)")
    name = str(res.get("name", run.name))
    cfg_file = find_config(name, run)
    cfg_text = str(cfg_file) if cfg_file else f"CONFIG.json  # the config named {name!r}, shown below"
    out = shlex.quote(shown_path(run))
    run_cmd = f"poisonlab bench --config {shlex.quote(cfg_text) if cfg_file else cfg_text} --out {out}"
    report_cmd = run_cmd.replace(" --out ", " --report-only --out ", 1) if cfg_file else \
        f"poisonlab bench --config CONFIG.json --report-only --out {out}"
    rows = [r for r in res["rows"] if isinstance(r, dict)]
    cells = {r.get("key") for r in rows}
    done = {r.get("key") for r in rows if r.get("reported_acc") is not None}
    body = [f"<h1>Benchmark grid: {esc(name)}</h1>",
            f"<p>{len(done)} of {len(cells)} victim runs finished ({len(rows)} rows: a run may serve several "
            "experiments).</p>", command(run_cmd)]
    if res.get("scale"):
        body.append(f"<p><strong>Scale.</strong> {esc(res['scale'])}</p>")
    tables = run / "tables.md"
    if _safe_file(tables, MAX_JSON_BYTES):
        body.append("<h2>Tables</h2>" + command(report_cmd) + '<p class="note">Click a column header to sort.</p>')
        text = tables.read_text(encoding="utf-8", errors="replace")
        # its title and scale are already at the top of the page
        text = re.sub(r"\A# [^\n]*\n+(\*\*Scale\.\*\*[^\n]*\n)?", "", text)
        body.append(markdown_html(text))
    body.append("<h2>Every cell</h2>" + command(run_cmd) + '<p class="note">One row per victim training run '
                "(results.csv holds the same); click a column header to sort.</p>")
    body.append(table(CELL_COLUMNS, [[r.get(c) for c in CELL_COLUMNS] for r in rows]))
    plots = run / "plots"
    pngs = sorted(p for p in plots.glob("*.png") if _safe_file(p, MAX_PNG_BYTES)) if plots.is_dir() else []
    if pngs:
        body.append("<h2>Plots</h2>")
        for p in pngs:
            data = p.read_bytes()
            if not data.startswith(PNG_MAGIC):
                continue  # not a PNG, whatever its name says
            body.append(f"<figure>{img(data, p.name)}<figcaption>{esc(p.name)}</figcaption>{command(report_cmd)}</figure>")
    body.append(protections_html(run, res))
    if res.get("config") is not None:
        body.append("<h2>Config</h2><details open><summary>The grid's config as run</summary>"
                    f"<pre>{esc(json.dumps(res['config'], indent=2, ensure_ascii=False, default=str))}</pre></details>")
    if res.get("data") is not None:
        body.append(f"<p class=\"note\">Data: <code>{esc(json.dumps(res['data'], default=str))}</code></p>")
    return f"poisonlab report: grid {name}", "\n".join(body)


def protections_html(run: Path, res: dict) -> str:
    """The grid's protected sets (in its cache): settings, generation time and diagnostics over generation."""
    cfg = res.get("config") if isinstance(res.get("config"), dict) else {}
    candidates = [run / "cache"]
    if isinstance(cfg.get("cache"), str):
        candidates += [Path(cfg["cache"]), run.parent / cfg["cache"]]
    folder = next((c / "protected" for c in candidates if (c / "protected").is_dir()), None)
    if folder is None:
        return ""
    rows, details = [], []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())[:200]:
        try:
            m = read_manifest(d)
        except PoisonlabError:
            continue
        b = m.get("bound") if isinstance(m.get("bound"), dict) else {}
        diag = m.get("diagnostics") if isinstance(m.get("diagnostics"), dict) else {}
        rows.append([d.name, m.get("method"), b.get("eps_text") or b.get("eps"), m.get("num_images"),
                     m.get("generation_seconds"), json.dumps(m.get("surrogate"), default=str), "yes" if diag else ""])
        if diag:
            details.append(f"<details><summary>{esc(d.name)}</summary>"
                           f"{command('poisonlab report ' + shlex.quote(shown_path(d)))}"
                           f"{diagnostics_html(diag, '')}</details>")
    if not rows:
        return ""
    return ("<h2>Protected sets</h2>" + f"<p class=\"note\">In <code>{esc(shown_path(folder))}</code>; "
            "<code>poisonlab report FOLDER</code> gives the full page of one.</p>"
            + table(["folder", "method", "budget", "images", "generation s", "surrogate", "diagnostics"], rows)
            + "<h3>Diagnostics over generation</h3>" * bool(details) + "\n".join(details))
