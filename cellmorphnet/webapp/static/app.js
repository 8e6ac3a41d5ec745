// The cellmorphnet web page: plain JavaScript, no build step, no network beyond this server.
"use strict";

const CHUNK = 16;          // files per request: each request is one set, as one `infer` call
const TOP_K = 3;
const IMAGE_EXT = /\.(jpe?g|png|bmp|tiff?)$/i;
const $ = (id) => document.getElementById(id);

const state = { classes: [], items: [], queue: [], busy: false };

function token() { return sessionStorage.getItem("cellmorphnet-token") || ""; }
function headers() { return token() ? { Authorization: `Bearer ${token()}` } : {}; }

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (res.status === 401) { showAuth("The token was refused."); throw new Error("not authorised"); }
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(`${res.status}: ${detail}`);
  }
  return res;
}

function showAuth(message) {
  $("auth").hidden = false;
  $("auth-error").textContent = token() ? message : "";
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function pct(p) { return `${(100 * p).toFixed(1)}%`; }

async function loadModel() {
  let card;
  try { card = await (await api("/v1/model")).json(); } catch (e) {
    $("model-name").textContent = `model unavailable (${e.message})`;
    return;
  }
  $("auth").hidden = true;
  state.classes = card.classes;
  $("model-name").textContent = `${card.run} · ${card.classes.length} classes · ${card.input_size} px`;
  const dl = $("card");
  dl.replaceChildren();
  const add = (term, value) => { dl.append(el("dt", { text: term }), el("dd", { text: value })); };
  add("Run", card.run);
  add("Architecture", `${card.architecture}, ${card.input_size} px input, epoch ${card.epoch}`);
  // an unverified source is not the registry's official file (the shipped model: this project's PBC rebuild)
  add("Trained on", card.datasets.map((d) => `${d.title || d.name} (${d.size} px${d.licence ? `, ${d.licence}` : ""}${d.verified === false ? ", not the official file: see the model card" : ""})`).join("; "));
  add("Classes", card.classes.join(", "));
  if (card.test_metrics) {
    for (const [name, m] of Object.entries(card.test_metrics)) {
      add(`Test metrics (${name})`, `accuracy ${pct(m.accuracy)}, balanced accuracy ${pct(m.balanced_accuracy)}, macro-F1 ${m.macro_f1.toFixed(3)}`);
    }
  } else {
    add("Test metrics", "not evaluated yet (cellmorphnet eval)");
  }
  const p = card.preprocessing;
  const colours = p.stain_norm ? `stain normalisation: on; stain contrast: ${p.stain_contrast ? "on" : "off"}`
    : `stain normalisation: off; colour match: ${p.colour_match ? "on" : "off"}`;
  add("Preprocessing", `crop: ${p.crop}; ${colours}; 8-view average: ${p.tta ? "on" : "off"}; temperature ${Number(p.temperature).toFixed(2)}`);
  add("Checkpoint", `${card.checkpoint} sha256 ${card.checkpoint_sha256.slice(0, 12)}…`);
}

function threshold() {
  const v = parseFloat($("threshold").value);
  return Number.isFinite(v) ? Math.min(Math.max(v, 0), 1) : 0;
}

function addFiles(files) {
  const fresh = files.filter((f) => IMAGE_EXT.test(f.name) || (f.type || "").startsWith("image/"));
  for (const file of fresh) {
    const item = { file, name: file.webkitRelativePath || file.name, result: null, node: null };
    item.node = renderPending(item);
    $("results").append(item.node);
    state.items.push(item);
    state.queue.push(item);
  }
  updateToolbar();
  pump();
}

function renderPending(item) {
  const img = el("img", { alt: item.name, loading: "lazy" });
  img.src = URL.createObjectURL(item.file);
  const node = el("article", { class: "result pending", "data-name": item.name },
    img, el("div", { class: "name", title: item.name, text: item.name }),
    el("div", { class: "cls", text: "classifying…" }), el("div", { class: "conf" }), el("div", { class: "flag" }), el("ol"));
  node.addEventListener("click", () => { if (item.result && item.result.status === "ok") showGradcam(item); });
  return node;
}

function renderResult(item) {
  const r = item.result;
  const node = item.node;
  node.classList.remove("pending");
  node.querySelector(".cls").textContent = r.status === "ok" ? r.predicted : "could not be read";
  node.classList.toggle("error", r.status !== "ok");
  if (r.status !== "ok") {
    node.querySelector(".conf").textContent = r.error || "";
    return;
  }
  node.querySelector(".conf").textContent = `confidence ${pct(r.confidence)}`;
  node.classList.toggle("low", r.confidence < threshold());
  const ol = node.querySelector("ol");
  ol.replaceChildren(...r.top_k.map((t) => el("li", { text: `${t.class} ${pct(t.probability)}` })));
  node.title = "Click for the Grad-CAM view";
}

async function pump() {
  if (state.busy) return;
  state.busy = true;
  try {
    while (state.queue.length) {
      const chunk = state.queue.splice(0, CHUNK);
      const form = new FormData();
      for (const item of chunk) form.append("files", item.file, item.name);
      let results;
      try {
        const res = await api(`/v1/predict?top_k=${TOP_K}&min_confidence=${threshold()}`, { method: "POST", body: form });
        results = (await res.json()).results;
      } catch (e) {
        results = chunk.map(() => ({ status: "error", error: e.message, top_k: [] }));
      }
      chunk.forEach((item, i) => { item.result = { ...results[i], file: item.name }; renderResult(item); });
      updateToolbar();
    }
  } finally {
    state.busy = false;
  }
}

function updateToolbar() {
  const total = state.items.length;
  const done = state.items.filter((i) => i.result).length;
  $("progress").textContent = total ? `${done} of ${total} images classified` : "";
  $("download").disabled = done === 0 || done < total;
  $("clear").disabled = total === 0 || done < total;
  renderSummary();
}

function renderSummary() {
  const ok = state.items.filter((i) => i.result && i.result.status === "ok");
  $("summary").hidden = ok.length === 0;
  const counts = new Map(state.classes.map((c) => [c, 0]));
  for (const i of ok) counts.set(i.result.predicted, (counts.get(i.result.predicted) || 0) + 1);
  const max = Math.max(1, ...counts.values());
  const rows = [...counts.entries()].map(([c, n]) => {
    const fill = el("div", { class: "fill" });
    fill.style.width = `${(100 * n) / max}%`;
    return el("div", { class: "bar", "data-class": c }, el("span", { text: c }), el("div", {}, fill), el("span", { class: "n", text: String(n) }));
  });
  const failed = state.items.filter((i) => i.result && i.result.status !== "ok").length;
  if (failed) rows.push(el("p", { class: "error", text: `${failed} file(s) could not be read.` }));
  $("chart").replaceChildren(...rows);
}

async function showGradcam(item) {
  const dialog = $("cam-dialog");
  $("cam-title").textContent = `Grad-CAM: ${item.name} → ${item.result.predicted} (${pct(item.result.confidence)})`;
  $("cam-body").replaceChildren(el("p", { class: "muted", text: "computing…" }));
  dialog.showModal();
  try {
    const form = new FormData();
    form.append("file", item.file, item.name);
    const blob = await (await api("/v1/gradcam", { method: "POST", body: form })).blob();
    const img = el("img", { id: "cam-image", alt: `Grad-CAM of ${item.name}` });
    img.src = URL.createObjectURL(blob);
    $("cam-body").replaceChildren(img);
  } catch (e) {
    $("cam-body").replaceChildren(el("p", { class: "error", text: e.message }));
  }
}

// The columns of `cellmorphnet infer --out results.csv` (top 3), with the same conventions.
function csvText() {
  const header = ["path", "status", "predicted", "confidence"];
  for (let i = 1; i <= TOP_K; i++) header.push(`top${i}`, `top${i}_probability`);
  header.push("framing", "colour_step", "stain_contrast", "colour_distance", "unlike_training", "low_confidence", "error");
  // a cell that a spreadsheet would read as a formula (=, +, -, @, tab, CR first) gets a leading ', as infer writes it
  const safe = (v) => (/^[=+\-@\t\r]/.test(v) ? `'${v}` : v);
  const quote = (v) => (/[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);
  const lines = [header.join(",")];
  const limit = threshold();
  for (const { name, result: r } of state.items) {
    const ok = r.status === "ok";
    const row = [name, ok ? "ok" : "skipped", ok ? r.predicted : "", ok ? r.confidence.toFixed(6) : ""];
    for (let i = 0; i < TOP_K; i++) {
      const t = ok ? r.top_k[i] : null;
      row.push(t ? t.class : "", t ? t.probability.toFixed(6) : "");
    }
    row.push(ok ? r.framing || "" : "", ok ? r.colour_step || "" : "", ok && r.stain_contrast != null ? r.stain_contrast.toFixed(3) : "",
      ok && r.colour_distance != null ? r.colour_distance.toFixed(2) : "",
      ok ? (r.unlike_training ? "yes" : "no") : "", ok ? (r.confidence < limit ? "yes" : "no") : "", ok ? "" : r.error || "");
    lines.push(row.map((v) => quote(safe(String(v)))).join(","));
  }
  return lines.join("\r\n") + "\r\n";
}

function download() {
  const url = URL.createObjectURL(new Blob([csvText()], { type: "text/csv" }));
  const a = el("a", { href: url, download: "cellmorphnet-predictions.csv" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// Dropped folders arrive as entries; walk them.
async function filesOfEntry(entry, prefix = "") {
  if (entry.isFile) {
    const file = await new Promise((ok, fail) => entry.file(ok, fail));
    return [prefix ? new File([file], `${prefix}${file.name}`, { type: file.type }) : file];
  }
  if (!entry.isDirectory) return [];
  const reader = entry.createReader();
  const out = [];
  for (;;) {
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (!batch.length) break;
    for (const e of batch) out.push(...(await filesOfEntry(e, `${prefix}${entry.name}/`)));
  }
  return out;
}

function setUp() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const entries = [...(e.dataTransfer.items || [])].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    if (entries.length) {
      const files = [];
      for (const entry of entries) files.push(...(await filesOfEntry(entry)));
      addFiles(files);
    } else {
      addFiles([...e.dataTransfer.files]);
    }
  });
  for (const id of ["pick-files", "pick-folder"]) {
    $(id).addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
  }
  $("threshold").addEventListener("change", () => { state.items.filter((i) => i.result).forEach(renderResult); });
  $("download").addEventListener("click", download);
  $("clear").addEventListener("click", () => {
    state.items.forEach((i) => URL.revokeObjectURL(i.node.querySelector("img").src));
    state.items = [];
    $("results").replaceChildren();
    updateToolbar();
  });
  $("auth").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("cellmorphnet-token", $("token").value.trim());
    loadModel();
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", setUp);
