// poisonlab page: every value from the server or from file names goes in with textContent, never as markup.
"use strict";
const $ = (id) => document.getElementById(id);
let methods = [], picked = [], pollTimer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) if (c) e.appendChild(c);
  return e;
}

function showError(msg) {
  const box = $("error");
  box.textContent = msg;
  box.hidden = !msg;
}

function mb(n) { return (n / 1048576).toFixed(n < 1048576 ? 2 : 1) + " MB"; }

async function api(path, opts) {
  const r = await fetch(path, opts);
  let body = null;
  try { body = await r.json(); } catch (e) { body = {error: "the server answered " + r.status}; }
  if (!r.ok) throw new Error(body.error || ("error " + r.status));
  return body;
}

// ------------------------------------------------------------------ choosing files
function setPicked(list) {
  picked = list;
  const size = list.reduce((s, f) => s + f.file.size, 0);
  $("picked").textContent = list.length ? `${list.length} file${list.length > 1 ? "s" : ""} selected (${mb(size)})` : "";
  showError("");
}

async function walk(entry, prefix, out) {  // a dropped folder: keep the relative paths (class folders)
  if (entry.isFile) {
    const file = await new Promise((ok, bad) => entry.file(ok, bad));
    out.push({file, name: prefix + file.name});
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((ok, bad) => reader.readEntries(ok, bad));
      if (!batch.length) break;
      for (const e of batch) await walk(e, prefix + entry.name + "/", out);
    }
  }
}

function setupDrop() {
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    const items = [...(e.dataTransfer.items || [])].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    const out = [];
    if (items.length) { for (const it of items) await walk(it, "", out); }
    else { for (const f of e.dataTransfer.files) out.push({file: f, name: f.name}); }
    setPicked(out);
  });
  $("files").addEventListener("change", (e) => {
    setPicked([...e.target.files].map((f) => ({file: f, name: f.webkitRelativePath || f.name})));
  });
}

// ------------------------------------------------------------------ methods
function renderMethods() {
  const box = $("methods");
  box.textContent = "";
  methods.forEach((m, i) => {
    const input = el("input", {type: "radio", name: "method", value: m.name});
    if (i === 0) input.checked = true;
    input.addEventListener("change", updateOptions);
    const label = el("label", {class: "method", "data-method": m.name}, input,
      el("strong", {text: " " + m.label}),
      el("span", {class: "desc", text: "Protects against: " + m.protects + (m.needs_labels ? " Needs one folder per class." : " Works without class folders.")}),
      el("span", {class: "time", text: "Time: " + m.time}));
    box.appendChild(label);
  });
  updateOptions();
}

function currentMethod() {
  const c = document.querySelector("input[name=method]:checked");
  return methods.find((m) => c && m.name === c.value);
}

function updateOptions() {
  const m = currentMethod();
  if (!m) return;
  $("eps").disabled = m.norm !== "linf";
  const p = $("preset");
  p.textContent = "";
  m.presets.forEach((name) => p.appendChild(el("option", {value: name, text: name})));
  if (m.presets.includes("standard")) p.value = "standard";
  p.disabled = m.presets.length < 2;
}

// ------------------------------------------------------------------ submitting
function submit(e) {
  e.preventDefault();
  showError("");
  if (!picked.length) { showError("Choose or drop some images (or a .zip) first."); return; }
  const m = currentMethod();
  const data = new FormData();
  for (const p of picked) data.append("files", p.file, p.name);
  data.append("method", m.name);
  if (m.norm === "linf") data.append("eps", $("eps").value);
  data.append("preset", $("preset").value);
  data.append("resize", $("resize").value.trim());
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/jobs");
  xhr.setRequestHeader("X-Poisonlab", "1");
  $("submit").disabled = true;
  xhr.upload.onprogress = (ev) => {
    if (ev.lengthComputable) $("submit").textContent = `Uploading ${Math.round(100 * ev.loaded / ev.total)}%`;
  };
  xhr.onloadend = () => {
    $("submit").disabled = false;
    $("submit").textContent = "Protect my images";
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (err) { body = {error: "the upload failed (" + (xhr.status || "no answer") + ")"}; }
    if (xhr.status !== 201) { showError("Upload refused: " + (body.error || xhr.status)); return; }
    history.pushState({}, "", "/job/" + body.id);
    watch(body.id).then(() => $("job").scrollIntoView({behavior: "smooth"}));
    loadJobs();
  };
  xhr.send(data);
}

// ------------------------------------------------------------------ a job
function fmtSeconds(s) {
  s = Math.max(0, Math.round(s));
  return s < 60 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s";
}

function renderJob(j) {
  $("job").hidden = false;
  $("job-id").textContent = j.id;
  $("job-summary").textContent = `${j.label}, ${j.images} image${j.images === 1 ? "" : "s"}` +
    (j.labelled ? ` in ${j.classes.length} classes` : " (no class folders)") + (j.eps ? `, strength ${j.eps}` : "") +
    (j.preset && j.preset !== "default" ? `, effort ${j.preset}` : "") + (j.upload_name ? ` from ${j.upload_name}` : "");
  const st = $("job-state");
  st.textContent = j.state;
  st.className = "state " + j.state;
  const p = j.progress || {};
  $("job-stage").textContent = j.state === "done" ? "" : (p.stage || "");
  const bar = $("job-progress");
  if (p.fraction === null || p.fraction === undefined) bar.removeAttribute("value"); else bar.value = p.fraction;
  bar.hidden = !["queued", "running"].includes(j.state);
  const since = j.started || j.created;
  $("job-time").textContent = j.finished ? `took ${fmtSeconds(j.finished - since)}` : (j.state === "running" ? `running for ${fmtSeconds(j.now - since)}` : "");
  $("job-error").hidden = j.state !== "failed";
  $("job-error").textContent = j.error ? "Failed: " + j.error : "";
  $("job-done").hidden = j.state !== "done";
  $("delete-row").hidden = !["done", "failed", "cancelled"].includes(j.state);
  $("cancel").hidden = !["queued", "running"].includes(j.state);
  $("cancel").dataset.job = j.id;
  $("delete").dataset.job = j.id;
  if (j.state === "done" && !$("job-done").dataset.shown) {
    $("job-done").dataset.shown = j.id;
    renderDone(j);
  }
}

function renderDone(j) {
  const b = j.budget || {};
  const bound = j.bound || {};
  const promised = bound.eps_text || (bound.norm === "none" ? "no pixel budget" : `${bound.norm} ${bound.eps}`);
  $("job-budget").textContent = (b.ok ? "Budget kept: " : "Budget check FAILED: ") + `promised ${promised}; ` +
    Object.entries(b).filter(([k]) => k !== "ok" && k !== "images").map(([k, v]) => `${k}: ${v}`).join("; ") + ".";
  $("job-budget").className = b.ok ? "ok" : "bad";
  const box = $("previews");
  box.textContent = "";
  for (let k = 0; k < (j.previews || 0); k++) {
    const trio = el("div", {class: "trio"});
    for (const kind of ["before", "after", "noise"]) {
      trio.appendChild(el("figure", {}, el("img", {src: `/api/jobs/${j.id}/preview/${k}/${kind}.png`, alt: kind}),
                         el("figcaption", {text: kind})));
    }
    box.appendChild(el("div", {class: "preview"}, trio, el("div", {class: "name", text: (j.preview_names || [])[k] || ""})));
  }
  $("download").href = `/api/jobs/${j.id}/download`;
  $("report").href = `/api/jobs/${j.id}/report`;
  const links = $("secret-links");
  links.textContent = "";
  const names = {"noise.npy": "Download the noise (private)", "cuda-key": "Download the key (private)"};
  for (const s of j.secrets || []) {
    if (names[s]) links.appendChild(el("a", {href: `/api/jobs/${j.id}/secret/${s}`, download: "", class: "secret-link", text: names[s]}));
  }
}

async function watch(id) {
  clearTimeout(pollTimer);
  $("job-done").dataset.shown = "";
  const tick = async () => {
    let j;
    try { j = await api("/api/jobs/" + encodeURIComponent(id)); }
    catch (err) { showError(err.message); return; }
    renderJob(j);
    if (j.state === "queued" || j.state === "running") pollTimer = setTimeout(tick, 700);
    else loadJobs();
  };
  await tick();
}

async function loadJobs() {
  const {jobs} = await api("/api/jobs");
  const ul = $("jobs");
  ul.textContent = "";
  if (!jobs.length) ul.appendChild(el("li", {text: "none yet"}));
  for (const j of jobs) {
    const a = el("a", {href: "/job/" + j.id, text: `${new Date(j.created * 1000).toLocaleString()}: ${j.label}, ${j.images} images`});
    a.addEventListener("click", (e) => { e.preventDefault(); history.pushState({}, "", "/job/" + j.id); watch(j.id); });
    ul.appendChild(el("li", {}, a, el("span", {class: "state " + j.state, text: j.state})));
  }
}

async function deleteJob() {
  const id = $("delete").dataset.job;
  if (!id || !confirm("Delete this job, its images and its secret from this computer?")) return;
  try {
    await api("/api/jobs/" + encodeURIComponent(id), {method: "DELETE", headers: {"X-Poisonlab": "1"}});
  } catch (err) { showError(err.message); return; }
  clearTimeout(pollTimer);
  history.pushState({}, "", "/");
  $("job").hidden = true;
  loadJobs();
}

async function cancelJob() {
  const id = $("cancel").dataset.job;
  try {
    await api("/api/jobs/" + encodeURIComponent(id) + "/cancel", {method: "POST", headers: {"X-Poisonlab": "1"}});
  } catch (err) { showError(err.message); }
}

async function init() {
  setupDrop();
  $("delete").addEventListener("click", deleteJob);
  $("cancel").addEventListener("click", cancelJob);
  $("protect-form").addEventListener("submit", submit);
  try {
    const info = await api("/api/methods");
    methods = info.methods;
    const L = info.limits;
    $("limits").textContent = `${L.max_upload_mb} MB per upload, ${L.max_files} images, ${(L.max_pixels / 1e6).toFixed(1)} megapixels per image`;
    renderMethods();
    await loadJobs();
  } catch (err) { showError(err.message); }
  const m = location.pathname.match(/^\/job\/([A-Za-z0-9_-]{16})$/);
  if (m) watch(m[1]);
}
window.addEventListener("popstate", () => {
  const m = location.pathname.match(/^\/job\/([A-Za-z0-9_-]{16})$/);
  if (m) watch(m[1]); else $("job").hidden = true;
});
document.addEventListener("DOMContentLoaded", init);
