"""`poisonlab report`: one self-contained page for a protected set (budget measured again from the private
noise when present, samples, diagnostics) or a bench grid (sortable tables, plots, commands); data from the
run is escaped; checked in headless Chromium too (screenshots in docs/screenshots/)."""

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import launch_browser, screenshot
from conftest import make_set
from poisonlab import PoisonlabError
from poisonlab.cli import main
from poisonlab.data import ImageSet, save_imagefolder
from poisonlab.protect import protect
from poisonlab.report import render_report, write_report

EVIL = "<img src=x onerror=alert(1)>"
ROOT = Path(__file__).resolve().parent.parent


def protected(tmp_path, name="out", classes=None, method="random", **kw):
    ds = make_set(16, classes=2, size=16, seed=3)
    if classes:
        ds = ImageSet(ds.images, ds.labels, classes, [f"{classes[int(y)]}/{i:04d}.png" for i, y in enumerate(ds.labels)])
    src = tmp_path / f"{name}-src"
    save_imagefolder(ds, src)
    out = tmp_path / name
    protect(method, src, out, progress=False, **kw)
    return out


def no_network(html: str):
    """Nothing in the page may load from anywhere: no URL but data: ones, and a CSP that forbids the rest."""
    assert "default-src 'none'" in html and "img-src data:" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[a-z]+:""", html, re.I)
    assert "<link" not in html and "@import" not in html and "url(" not in html


def test_protected_report_measures_budget_shows_samples_and_escapes(tmp_path):
    out = protected(tmp_path, classes=[EVIL, "dog & cat"])
    html = render_report(out)
    no_network(html)
    assert "within budget" in html and "largest change (levels of 255)" in html
    assert html.count('alt="before: ') == html.count('alt="after: ') == html.count('alt="noise: ') == 8
    assert EVIL not in html and "&lt;img src=x onerror=alert(1)&gt;" in html and "dog &amp; cat" in html
    assert "Private report" in html and "poisonlab protect --method random" in html
    assert "k05VTVBZ" not in html  # base64 of the .npy magic: the raw noise array is never embedded
    public = render_report(out, use_noise=False)
    assert 'alt="before: ' not in public and "was not used" in public and "Private report" not in public
    assert public.count('alt="after: ') == 8


def test_noise_from_another_run_or_a_broken_budget_is_reported(tmp_path):
    a, b = protected(tmp_path, "a"), protected(tmp_path, "b", seed=1)
    shutil.copy(b.with_name("b.noise.npy"), a.with_name("a.noise.npy"))
    assert "does not match these images" in render_report(a)
    # Move one saved pixel 20 levels and record it in the noise: the originals still match, the budget not.
    c = protected(tmp_path, "c")
    noise_file = c.with_name("c.noise.npy")
    noise = np.load(noise_file)
    png = sorted(c.rglob("*.png"))[0]
    img = np.asarray(Image.open(png)).copy()
    v = int(img[0, 0, 0])
    step = 20 if v <= 200 else -20
    img[0, 0, 0] = v + step
    Image.fromarray(img).save(png)
    noise = noise.astype(np.int16)
    noise[0, 0, 0, 0] += step
    np.save(noise_file, noise)
    html = render_report(c)
    assert "BROKEN" in html and "moved" in html


def test_budget_measured_against_the_original_data(tmp_path):
    out = protected(tmp_path, subset=10)
    out.with_name("out.noise.npy").unlink()  # the noise is not at hand; the originals are
    assert "is not here" in render_report(out)
    html = render_report(out, original=tmp_path / "out-src")
    assert "within budget" in html and "loaded from the original data" in html and html.count('alt="before: ') == 8
    other = tmp_path / "other"
    save_imagefolder(make_set(16, classes=2, size=16, seed=9), other)
    assert "hash differs" in pytest.raises(PoisonlabError, render_report, out, original=other).value.args[0]


def test_npz_input_order_is_matched(tmp_path):
    """An .npz keeps array order (labels interleaved) while the reloaded tree is sorted by class."""
    ds = make_set(12, classes=3, size=16, seed=5)
    src = tmp_path / "d.npz"
    np.savez(src, train_images=ds.images.numpy(), train_labels=ds.labels.numpy())
    out = tmp_path / "out"
    protect("random", src, out, progress=False)
    html = render_report(out)
    assert "within budget" in html and html.count('alt="before: ') == 8


def test_diagnostics_series_and_scalars(tmp_path):
    out = protected(tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    m["diagnostics"] = {"edge_fraction": 0.42, "note": EVIL,
                        "heldout_curve": [{"step": s, "heldout_clean_acc": 10.0 + s, "heldout_adv_acc": 5.0 + s / 2}
                                          for s in (0, 10, 20)],
                        "loss": [2.0, 1.5, 1.1]}
    (out / "manifest.json").write_text(json.dumps(m))
    html = render_report(out)
    assert "Diagnostics over generation" in html and "edge_fraction" in html
    assert html.count('alt="diagnostics: ') == 2 and EVIL not in html


def fake_grid(tmp_path) -> Path:
    run = tmp_path / "grid"
    (run / "plots").mkdir(parents=True)
    rows = [dict(experiment="t", method=m, budget="8/255", defense_label="none", model="smallcnn", width=0.5,
                 fraction=1.0, mode="mixed", seed=0, reported_acc=acc, metric="last", last_acc=acc, best_acc=acc,
                 key=f"k{i}") for i, (m, acc) in enumerate([("clean", 47.7), ("em", 25.9), (EVIL, 9.5)])]
    (run / "results.json").write_text(json.dumps({"name": "tiny", "scale": "a test scale", "config": {"name": "tiny"},
                                                  "rows": rows}))
    (run / "tables.md").write_text(f"# Benchmark grid: tiny\n\n**Scale.** a test scale\n\n## t: a table\n\n"
                                   f"| method | none |\n|---|---|\n| Clean | 47.70 |\n| {EVIL} | 9.50 |\n")
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, format="PNG")
    (run / "plots" / "bars_t.png").write_bytes(buf.getvalue())
    (run / "plots" / "fake.png").write_text("<script>alert(1)</script>")  # not a PNG whatever its name
    outside = tmp_path / "private.png"
    outside.write_bytes(buf.getvalue())
    os.symlink(outside, run / "plots" / "link.png")  # never followed out of the run
    return run


def test_grid_report_tables_plots_commands(tmp_path):
    run = fake_grid(tmp_path)
    prot = run / "cache" / "protected" / "em-abc"
    prot.mkdir(parents=True)
    (prot / "manifest.json").write_text(json.dumps({
        "method": "em", "bound": {"eps_text": "8/255"}, "num_images": 16, "generation_seconds": 3.5,
        "diagnostics": {"edge_fraction": 0.3, "heldout_curve": [{"step": 1, "heldout_clean_acc": 20.0},
                                                                {"step": 2, "heldout_clean_acc": 25.0}]}}))
    html = render_report(run)
    assert "Protected sets" in html and "em-abc" in html and html.count('alt="diagnostics: ') == 1
    no_network(html)
    assert html.count('<table class="sortable">') == 3 and html.count("<figure>") == 2
    assert 'alt="bars_t.png"' in html and "fake.png" not in html and "link.png" not in html
    assert EVIL not in html and "<script>alert" not in html
    assert "poisonlab bench --config" in html and "--report-only" in html
    assert "2 of 3 victim runs" not in html and "3 of 3 victim runs finished" in html


def test_cli_report_writes_page_and_errors_cleanly(tmp_path, capsys):
    out = protected(tmp_path)
    target = tmp_path / "r" / "report.html"
    assert main(["report", str(out), "-o", str(target)]) == 0
    assert "RESULT report" in capsys.readouterr().out and target.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("poisonlab: error: ")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    assert main(["report", str(tmp_path / "bad")]) == 2 and "not valid JSON" in capsys.readouterr().err


def test_reports_in_browser_sort_and_load_nothing(tmp_path):
    pw, browser = launch_browser()
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        # A protected set as a user makes one: bundled CIFAR-10 images, a quick EM run (with its diagnostics).
        out = tmp_path / "cifar-em"
        protect("em", "bundled", out, subset=40, progress=False, surrogate="smallcnn", width=0.5, train_steps=2,
                pgd_steps=2, step_size=4 / 255, max_rounds=1)
        html = write_report(out, tmp_path / "protected.html")
        page.goto(html.as_uri())
        assert page.locator("text=within budget").count() == 1
        assert page.evaluate("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
        screenshot(page, "report-protected.png")
        # A grid: the repository's own CPU-scale bench output when present, else a small one.
        run = ROOT / "docs" / "bench" if (ROOT / "docs/bench/results.json").is_file() else fake_grid(tmp_path)
        html = write_report(run, tmp_path / "grid.html")
        page.goto(html.as_uri())
        table = page.locator("h2:text('Every cell') ~ table.sortable").first
        col = "reported_acc"
        idx = [t.strip() for t in table.locator("th").all_text_contents()].index(col)
        table.locator("th", has_text=col).click()
        values = [v for v in table.locator(f"tbody tr td:nth-child({idx + 1})").all_text_contents() if v.strip()]
        nums = [float(v) for v in values]
        assert nums == sorted(nums) and len(nums) >= 2
        table.locator("th", has_text=col).click()
        values = [float(v) for v in table.locator(f"tbody tr td:nth-child({idx + 1})").all_text_contents() if v.strip()]
        assert values == sorted(values, reverse=True)
        page.evaluate("() => window.scrollTo(0, 0)")
        screenshot(page, "report-grid.png", full_page=False)  # the top: the page is long
        assert all(u.startswith("file://") for u in requests), requests  # no network, no other file
    finally:
        browser.close()
        pw.stop()
