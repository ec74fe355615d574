"""`poisonlab serve`: safe uploads (zip slip, bombs, links, layouts), the JSON API (limits, CSRF and host
checks, jobs that survive a restart), and the page itself in headless Chromium: upload, progress, reload,
preview, download, the secret, and an error for a bad upload (screenshots in docs/screenshots/)."""

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import launch_browser, screenshot
from poisonlab import PoisonlabError
from poisonlab.web.limits import Limits
from poisonlab.web.uploads import SINGLE_CLASS, clean_parts, extract_upload

FAST_EM = {"method": "em", "preset": "quick", "eps": "8"}


def png(size=32, seed=0, mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(entries) -> bytes:
    """entries: [(name, bytes)] or [(ZipInfo, bytes)]."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def class_zip(n=12, classes=3, size=32, top="photos") -> bytes:
    return make_zip([(f"{top}/class{i % classes}/img{i:03d}.png", png(size, i)) for i in range(n)])


def extract(tmp_path, entries, limits=Limits()):
    return extract_upload([("up.zip", io.BytesIO(make_zip(entries)))], tmp_path / "in", limits)


# ------------------------------------------------------------------ uploads
def test_zip_layouts_class_folders_and_label_free(tmp_path):
    got = extract(tmp_path, [("top/cat/a.png", png(seed=1)), ("top/dog/b.jpg", png(seed=2)),
                             ("__MACOSX/top/cat/._a.png", b"junk"), ("top/.DS_Store", b"x"), ("top/notes.txt", b"hi")])
    assert got.labelled and got.classes == ["cat", "dog"] and got.images == 2
    assert (tmp_path / "in/cat/a.png").read_bytes() == png(seed=1)
    flat = extract_upload([("a.png", io.BytesIO(png(seed=1))), ("b.png", io.BytesIO(png(seed=2)))], tmp_path / "flat")
    assert not flat.labelled and flat.classes == [SINGLE_CLASS] and sorted(os.listdir(tmp_path / "flat" / SINGLE_CLASS)) == ["a.png", "b.png"]
    with pytest.raises(PoisonlabError, match="mixes loose images with class folders"):
        extract(tmp_path / "m", [("a.png", png()), ("cat/b.png", png())])
    with pytest.raises(PoisonlabError, match="same name"):
        extract(tmp_path / "d", [("cat/a.png", png()), ("cat/a.jpg", png())])


@pytest.mark.parametrize("name", ["../evil.png", "cat/../../evil.png", "/etc/evil.png", "C:/evil.png", "..\\evil.png"])
def test_zip_slip_refused_and_nothing_written_outside(tmp_path, name):
    with pytest.raises(PoisonlabError, match="unsafe path"):
        extract(tmp_path, [("cat/ok.png", png()), (name, png())])
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_symlink_member_refused(tmp_path):
    info = zipfile.ZipInfo("cat/link.png")
    info.external_attr = (0o120777 << 16)  # S_IFLNK
    with pytest.raises(PoisonlabError, match="symbolic link"):
        extract(tmp_path, [("cat/a.png", png()), (info, b"/etc/passwd")])


def test_zip_bomb_and_size_limits(tmp_path):
    bomb = [("cat/a.png", png()), ("cat/bomb.png", b"\0" * (8 << 20))]  # 8 MiB of zeros packs to ~8 KiB
    with pytest.raises(PoisonlabError, match="zip bomb"):
        extract(tmp_path / "b", bomb)
    with pytest.raises(PoisonlabError, match="larger than"):
        extract(tmp_path / "s", [("cat/a.png", png(64))], Limits(max_file_bytes=1000))
    with pytest.raises(PoisonlabError, match="limit is 3"):
        extract(tmp_path / "n", [(f"c{i % 2}/{i}.png", png(8, i)) for i in range(4)], Limits(max_files=3))


def test_pixel_bomb_and_non_images_refused(tmp_path):
    with pytest.raises(PoisonlabError, match="pixels is more than the limit"):
        extract(tmp_path / "p", [("cat/a.png", png(8)), ("cat/big.png", png(100))], Limits(max_pixels=64 * 64))
    with pytest.raises(PoisonlabError, match="not a readable image"):
        extract(tmp_path / "f", [("cat/a.png", png()), ("cat/fake.png", b"this is not a png")])
    with pytest.raises(PoisonlabError, match="not an image file"):
        extract_upload([("a.png", io.BytesIO(png())), ("run.sh", io.BytesIO(b"rm -rf /"))], tmp_path / "x")
    with pytest.raises(PoisonlabError, match="cannot be read"):
        extract_upload([("a.zip", io.BytesIO(b"PK\3\4 broken"))], tmp_path / "z")


def test_clean_parts():
    assert clean_parts("a/./b/c.png") == ["a", "b", "c.png"]
    assert clean_parts("a/.hidden/c.png") is None
    with pytest.raises(PoisonlabError):
        clean_parts("a/\x00.png")


# ------------------------------------------------------------------ the API, without a browser
@pytest.fixture
def client_factory(tmp_path):
    from fastapi.testclient import TestClient
    from poisonlab.web.app import create_app
    clients = []

    def make(run_jobs=True, limits=Limits()):
        env = {"POISONLAB_THREADS": "1", "POISONLAB_CACHE": str(tmp_path / "cache")}
        c = TestClient(create_app(tmp_path / "root", limits=limits, run_jobs=run_jobs, worker_env=env),
                       base_url="http://127.0.0.1")
        c.__enter__()
        clients.append(c)
        return c
    yield make
    for c in clients:
        c.__exit__(None, None, None)


def post_job(client, data: bytes, name="up.zip", headers={"X-Poisonlab": "1"}, **fields):
    return client.post("/api/jobs", files=[("files", (name, data, "application/zip"))],
                       data={"method": "random", "eps": "8", **fields}, headers=headers)


def wait_done(client, job_id, timeout=120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        j = client.get(f"/api/jobs/{job_id}").json()
        if j["state"] in ("done", "failed", "cancelled"):
            return j
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {j}")


def test_api_guards(client_factory):
    c = client_factory(run_jobs=False, limits=Limits(max_upload_bytes=50_000))
    assert post_job(c, class_zip(), headers={}).status_code == 403  # a cross-site form cannot set the header
    assert c.get("/api/methods", headers={"Host": "evil.example:8765"}).status_code == 400  # DNS rebinding
    r = post_job(c, class_zip(n=30, size=32))
    assert r.status_code == 413 and "larger than the limit" in r.json()["error"]
    def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(20):
            yield b"x" * 10_000
    r = c.post("/api/jobs", content=chunks(), headers={"X-Poisonlab": "1", "Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413, r.text
    r = post_job(c, class_zip(), method="nope")
    assert r.status_code == 400 and "unknown method" in r.json()["error"]
    r = post_job(c, make_zip([("a.png", png()), ("b.png", png(seed=1))]), method="cuda")
    assert r.status_code == 400 and "one folder per class" in r.json()["error"]
    for path in ("/api/jobs/..%2F..%2Fetc", "/api/jobs/AAAAAAAAAAAAAAAA", "/api/jobs/AAAAAAAAAAAAAAAA/download",
                 "/api/jobs/AAAAAAAAAAAAAAAA/secret/noise.npy"):
        assert c.get(path).status_code == 404
    page = c.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    names = [m["name"] for m in c.get("/api/methods").json()["methods"]]
    assert names[0] == "minmaxmin" and "random" in names


def test_job_runs_survives_restart_and_serves_downloads(client_factory, tmp_path):
    c = client_factory(run_jobs=False)
    r = post_job(c, class_zip(n=9, classes=3, size=16))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    r = post_job(c, class_zip(n=6, classes=2, size=16), method="cuda")
    assert r.status_code == 201, r.text
    cuda_id = r.json()["id"]
    # The server "dies" while the job runs: state 'running', no worker (its lock is free).
    job_file = tmp_path / "root" / "jobs" / job_id / "job.json"
    job_file.write_text(json.dumps({**json.loads(job_file.read_text()), "state": "running"}))
    (tmp_path / "root" / "jobs" / ".AAAAAAAAAAAAAAAA.upload" / "input").mkdir(parents=True)  # an upload cut off
    c2 = client_factory(run_jobs=True)  # a new server on the same folder picks it up
    assert not (tmp_path / "root" / "jobs" / ".AAAAAAAAAAAAAAAA.upload").exists()
    j = wait_done(c2, job_id)
    assert j["state"] == "done", j
    assert j["budget"]["ok"] and j["budget"]["largest change (levels of 255)"] <= 8 and j["secrets"] == ["noise.npy"]
    z = zipfile.ZipFile(io.BytesIO(c2.get(f"/api/jobs/{job_id}/download").content))
    names = z.namelist()
    assert "protected/manifest.json" in names and sum(n.endswith(".png") for n in names) == 9
    assert not any("noise" in n or n.endswith(".npy") for n in names)  # the secret never ships with the images
    noise = np.load(io.BytesIO(c2.get(f"/api/jobs/{job_id}/secret/noise.npy").content), allow_pickle=False)
    assert noise.shape == (9, 3, 16, 16) and np.abs(noise).max() <= 8
    assert c2.get(f"/api/jobs/{job_id}/preview/0/noise.png").headers["content-type"] == "image/png"
    report = c2.get(f"/api/jobs/{job_id}/report").text
    assert "within budget" in report and "Private report" in report
    # CUDA's secret is a key: downloadable on its own, never in the zip or the manifest.
    j = wait_done(c2, cuda_id)
    assert j["state"] == "done" and sorted(j["secrets"]) == ["cuda-key", "noise.npy"], j
    key = c2.get(f"/api/jobs/{cuda_id}/secret/cuda-key")
    assert key.status_code == 200 and "PRIVATE-" in key.headers["content-disposition"]
    key_text = key.content.decode().strip()
    z = zipfile.ZipFile(io.BytesIO(c2.get(f"/api/jobs/{cuda_id}/download").content))
    assert len(key_text) >= 16 and not any(key_text.encode() in z.read(n) for n in z.namelist())
    assert c2.delete(f"/api/jobs/{job_id}", headers={"X-Poisonlab": "1"}).status_code == 200
    assert c2.get(f"/api/jobs/{job_id}").status_code == 404


def test_cancel_a_running_job_then_the_next_one_runs(client_factory):
    c = client_factory(run_jobs=True)
    slow = post_job(c, class_zip(n=12, classes=3, size=32), method="em", preset="standard").json()["id"]
    quick = post_job(c, class_zip(n=6, classes=2, size=16)).json()["id"]
    t0 = time.monotonic()
    while c.get(f"/api/jobs/{slow}").json()["state"] != "running" and time.monotonic() - t0 < 120:
        time.sleep(0.2)
    assert c.post(f"/api/jobs/{slow}/cancel").status_code == 403  # without the page's header
    assert c.post(f"/api/jobs/{slow}/cancel", headers={"X-Poisonlab": "1"}).status_code == 200
    assert wait_done(c, quick)["state"] == "done"
    j = c.get(f"/api/jobs/{slow}").json()
    assert j["state"] == "cancelled" and not j["previews"], j


def test_mixed_sizes_fail_with_the_reason_then_resize_works(client_factory):
    c = client_factory(run_jobs=True)
    data = make_zip([("a/1.png", png(16, 1)), ("a/2.png", png(16, 2)), ("b/3.png", png(24, 3)), ("b/4.png", png(16, 4))])
    j = wait_done(c, post_job(c, data).json()["id"])
    assert j["state"] == "failed" and "differ in size" in j["error"] and "Resize all to" in j["error"]
    r = post_job(c, data, resize="12x12")
    assert r.status_code == 201 and r.json()["resize"] == "12x12"
    j = wait_done(c, r.json()["id"])
    assert j["state"] == "done" and j["images"] == 4, j
    z = zipfile.ZipFile(io.BytesIO(c.get(f"/api/jobs/{j['id']}/download").content))
    assert Image.open(io.BytesIO(z.read("protected/b/3.png"))).size == (12, 12)
    assert post_job(c, data, resize="12 by 12").json()["error"].startswith("--resize: write HxW")


def test_serve_cli_errors_cleanly(tmp_path, capsys):
    from poisonlab.cli import main
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--root", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("poisonlab: error: cannot listen on 127.0.0.1:")
    assert main(["serve", "--max-upload-mb", "0"]) == 2


# ------------------------------------------------------------------ the page, in a real browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`poisonlab serve` as a user starts it, on a free loopback port."""
    root = tmp_path_factory.mktemp("webroot")
    port = free_port()
    env = {**os.environ, "POISONLAB_THREADS": "1", "POISONLAB_CACHE": str(root / "cache")}
    log = open(root / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "poisonlab", "serve", "--port", str(port), "--root", str(root / "jobs"),
                             "--max-upload-mb", "5"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # a loaded 2-core machine takes long to import torch
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/api/methods", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError((root / "serve.log").read_text())
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(20)
    log.close()


@pytest.fixture(scope="module")
def browser():
    pw, b = launch_browser()
    yield b
    b.close()
    pw.stop()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)  # the CSP stays on
    p = ctx.new_page()
    p.set_default_timeout(120_000)  # generous: CI machines are loaded; the waits end as soon as the page is ready
    yield p
    ctx.close()


def bundled_zip(per_class=4, classes=3) -> bytes:
    """Real photos for the screenshots: the first images of a few classes of the bundled CIFAR-10 subset."""
    from poisonlab.data import load_dataset
    ds = load_dataset("bundled", "train")
    entries = []
    for k in range(classes):
        for i in (ds.labels == k).nonzero().flatten()[:per_class].tolist():
            buf = io.BytesIO()
            Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()).save(buf, format="PNG")
            entries.append((f"my photos/{ds.classes[k]}/{Path(ds.names[i]).stem}.png", buf.getvalue()))
    return make_zip(entries)


def test_browser_upload_progress_reload_preview_download(server, page, tmp_path):
    upload = tmp_path / "my photos.zip"
    upload.write_bytes(bundled_zip())
    page.goto(server + "/")
    page.wait_for_selector("label.method[data-method=em]")
    screenshot(page, "serve-home.png")
    page.set_input_files("#files", str(upload))
    assert "1 file selected" in page.text_content("#picked")
    page.check("label.method[data-method=em] input")
    page.select_option("#preset", "quick")
    page.click("#submit")
    page.wait_for_selector("#job:not([hidden])")
    page.wait_for_function("() => ['running', 'done', 'failed'].includes(document.querySelector('#job-state').textContent)")
    seen = page.text_content("#job-state")
    assert seen in ("running", "done")
    job_url = page.url
    assert "/job/" in job_url
    if seen == "running":
        assert page.is_visible("#cancel") and not page.is_visible("#delete") and page.is_visible("#job-progress")
    if seen != "done":
        screenshot(page, "serve-progress.png")
        page.reload()  # the job survives a reload: the page finds it again from its address
        page.wait_for_function("() => document.querySelector('#job-state').textContent !== ''")
        assert page.url == job_url and page.text_content("#job-id") == job_url.rsplit("/", 1)[1]
    page.wait_for_function("() => document.querySelector('#job-state').textContent === 'done' || "
                           "document.querySelector('#job-state').textContent === 'failed'", timeout=180_000)
    assert page.text_content("#job-state") == "done", page.text_content("#job-error")
    page.wait_for_function("() => [...document.querySelectorAll('#previews img')].length === 18 && "
                           "[...document.querySelectorAll('#previews img')].every(i => i.complete && i.naturalWidth > 0)")
    assert "Budget kept" in page.text_content("#job-budget")
    assert "Keep it private" in page.text_content("#secret")
    assert page.is_visible("#delete") and not page.is_visible("#cancel") and not page.is_visible("#job-progress")
    screenshot(page, "serve-done.png")
    with page.context.expect_page() as report:  # the job's full report, styled and scripted under its own CSP
        page.click("#report")
    rp = report.value
    rp.wait_for_load_state()
    assert rp.locator("text=within budget").count() == 1
    assert rp.evaluate("() => getComputedStyle(document.body).backgroundColor") == "rgb(246, 247, 249)"
    rp.close()
    with page.expect_download() as d:
        page.click("#download")
    z = zipfile.ZipFile(d.value.path())
    assert sum(n.endswith(".png") for n in z.namelist()) == 12 and "protected/manifest.json" in z.namelist()
    manifest = json.loads(z.read("protected/manifest.json"))
    assert manifest["method"] == "em" and str(tmp_path.parent.parent) not in json.dumps(manifest)
    with page.expect_download() as d:
        page.click("a.secret-link")
    assert d.value.suggested_filename.startswith("PRIVATE-") and d.value.suggested_filename.endswith(".noise.npy")
    noise = np.load(d.value.path(), allow_pickle=False)
    assert noise.shape == (12, 3, 32, 32) and 0 < np.abs(noise).max() <= 8


def test_browser_bad_upload_shows_error_and_label_free_files_work(server, page, tmp_path):
    page.goto(server + "/")
    page.wait_for_selector("label.method[data-method=random]")
    evil = tmp_path / "evil.zip"
    evil.write_bytes(make_zip([("cat/a.png", png()), ("../../outside.png", png(seed=1))]))
    page.set_input_files("#files", str(evil))
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert "unsafe path" in page.text_content("#error")
    screenshot(page, "serve-error.png")
    # Loose images (no class folders) with a method that needs no labels.
    dialogs = []
    def on_dialog(d):
        dialogs.append(d.message)
        d.dismiss()
    page.on("dialog", on_dialog)
    # Dropped onto the page (a drop event carrying files), named with markup that must stay text.
    page.evaluate("""(files) => {
        const dt = new DataTransfer();
        files.forEach(([name, bytes]) => dt.items.add(new File([new Uint8Array(bytes)], name, {type: "image/png"})));
        document.querySelector("#drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", [[f"<img src=x onerror=alert({i})>.png", list(png(32, 10 + i))] for i in range(3)])
    page.wait_for_function("() => document.querySelector('#picked').textContent.startsWith('3 files')")
    page.check("label.method[data-method=random] input")
    page.click("#submit")
    page.wait_for_function("() => document.querySelector('#job-state').textContent === 'done'", timeout=120_000)
    page.wait_for_function("() => document.querySelectorAll('#previews img').length === 9")
    assert "<img src=x onerror=alert(0)>.png" in page.text_content("#previews")
    assert page.locator("#previews img[src=x]").count() == 0 and dialogs == []
    assert "no class folders" in page.text_content("#job-summary")
    page.remove_listener("dialog", on_dialog)
    page.once("dialog", lambda d: d.accept())  # "Delete this job ...?"
    job_id = page.text_content("#job-id")
    page.click("#delete")
    page.wait_for_function("() => document.querySelector('#job').hidden")
    assert urllib.request.urlopen(server + "/api/jobs").read().decode().count(job_id) == 0
