// The cellmorphnet web page: plain JavaScript, no build step, no network beyond this server (with common.js).
"use strict";

const CHUNK = 16;          // files per request: each request is one set, as one `infer` call
const TOP_K = 3;
const IMAGE_EXT = /\.(jpe?g|png|bmp|tiff?|webp)$/i;

const state = { classes: [], items: [], queue: [], busy: false };
const SVG = "http://www.w3.org/2000/svg";

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
  node.addEventListener("click", () => {
    if (item.result && item.result.status === "ok" && item.result.kind !== "field") showGradcam(item);
  });
  return node;
}

// Every classified cell of the page: a crop's one cell, and each cell found in a field.
function allCells() {
  const out = [];
  for (const item of state.items) {
    const r = item.result;
    if (!r || r.status !== "ok") continue;
    for (const c of r.kind === "field" ? r.cells : [r]) out.push({ item, cell: c });
  }
  return out;
}

// A field: the photo with a box per cell found (click one for its top 3 and Grad-CAM), and a line per cell.
function renderField(item) {
  const r = item.result;
  const node = item.node;
  node.classList.add("field");
  const img = node.querySelector("img");
  const figure = el("div", { class: "figure" });
  img.replaceWith(figure);
  figure.append(img);
  const draw = () => {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
    svg.setAttribute("preserveAspectRatio", "none");
    const scale = Math.max(img.naturalWidth, img.naturalHeight) / 40;  // the numbers' size: a fortieth of the field
    for (const c of r.cells) {
      const [x0, y0, x1, y1] = c.box;
      const rect = document.createElementNS(SVG, "rect");
      for (const [k, v] of Object.entries({ x: x0, y: y0, width: x1 - x0, height: y1 - y0 })) rect.setAttribute(k, v);
      rect.setAttribute("class", `box${c.edge ? " edge" : ""}${c.confidence < threshold() ? " low" : ""}`);
      rect.setAttribute("data-cell", c.cell);
      rect.style.stroke = classColour(c.predicted);  // by class, as the legend says
      const number = document.createElementNS(SVG, "text");
      for (const [k, v] of Object.entries({ x: x0 + scale * 0.3, y: y0 + scale * 1.1, "font-size": scale })) number.setAttribute(k, v);
      number.setAttribute("class", "box-number");
      number.style.fill = classColour(c.predicted);
      number.textContent = String(c.cell);
      svg.append(number);
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${c.cell}: ${c.predicted} ${pct(c.confidence)}${c.edge ? " (cut by the border)" : ""}${verdictText(c)}`;
      rect.append(title);
      rect.addEventListener("click", (e) => { e.stopPropagation(); showCell(item, c); });
      svg.append(rect);
    }
    figure.querySelector("svg")?.remove();
    figure.append(svg);
  };
  if (img.complete && img.naturalWidth) draw(); else img.addEventListener("load", draw, { once: true });
  const found = r.cells.length;
  node.querySelector(".cls").textContent = found ? `field: ${found} white cell${found > 1 ? "s" : ""}` : "field: no white cell found";
  node.querySelector(".conf").textContent = r.rbc_diameter_px ? `red cells ${Math.round(r.rbc_diameter_px)} px across` : "";
  const present = [...new Set(r.cells.map((c) => c.predicted))];
  node.querySelector(".legend")?.remove();
  node.querySelector(".conf").after(el("p", { class: "legend" }, ...present.map((cls) => {
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = classColour(cls);
    return el("span", { class: "key" }, swatch, document.createTextNode(cls));
  })));
  const ol = node.querySelector("ol");
  ol.replaceChildren(...r.cells.map((c) => {
    const li = el("li", { class: `cell${c.edge ? " edge" : ""}${c.verdict === "review" ? " review" : ""}`,
      text: `${c.predicted} ${pct(c.confidence)}${c.edge ? " (edge)" : ""}${verdictText(c)}` });
    li.addEventListener("click", (e) => { e.stopPropagation(); showCell(item, c); });
    return li;
  }));
  node.title = "Click a box for the cell's top 3 and Grad-CAM";
}

// One colour per class (the boxes of a field and their legend), in the order of the model's classes.
const PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#1f78b4", "#666666", "#b15928", "#6a3d9a"];
function classColour(cls) {
  const i = state.classes.indexOf(cls);
  return PALETTE[(i < 0 ? state.classes.length : i) % PALETTE.length];
}

// The cell's verdict (classified, or for a person to review, and why), as infer's columns give it.
function verdictText(c) {
  return c.verdict === "review" ? ` · review: ${c.review_reason || ""}` : (c.verdict === "classified" ? " · classified" : "");
}

function renderResult(item) {
  const r = item.result;
  const node = item.node;
  node.classList.remove("pending");
  if (r.kind === "field" && r.status !== "error") { renderField(item); return; }
  node.querySelector(".cls").textContent = r.status === "ok" ? r.predicted : "could not be read";
  node.classList.toggle("error", r.status !== "ok");
  if (r.status !== "ok") {
    node.querySelector(".conf").textContent = r.error || "";
    return;
  }
  node.querySelector(".conf").textContent = `confidence ${pct(r.confidence)}${verdictText(r)}`;
  node.classList.toggle("low", r.confidence < threshold());
  node.classList.toggle("review", r.verdict === "review");
  node.dataset.verdict = r.verdict || "";
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
        results = chunk.map(() => ({ status: "error", error: e.message, top_k: [], cells: [] }));
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
  const cells = allCells();
  $("summary").hidden = cells.length === 0;
  const counts = new Map(state.classes.map((c) => [c, 0]));
  for (const { cell } of cells) counts.set(cell.predicted, (counts.get(cell.predicted) || 0) + 1);
  const max = Math.max(1, ...counts.values());
  const rows = [...counts.entries()].map(([c, n]) => {
    const fill = el("div", { class: n ? "fill" : "fill zero" });  // a count of zero draws no bar
    fill.style.width = `${(100 * n) / max}%`;
    return el("div", { class: "bar", "data-class": c }, el("span", { text: c }), el("div", {}, fill), el("span", { class: "n", text: String(n) }));
  });
  const failed = state.items.filter((i) => i.result && i.result.status === "error").length;
  if (failed) rows.push(el("p", { class: "error", text: `${failed} file(s) could not be read.` }));
  $("chart").replaceChildren(...rows);
  renderDifferential(cells);
}

// The differential of everything on the page, as infer reports it: white-cell types (cells cut by a field's border
// and those below the confidence mark left out), 95% Wilson intervals, nucleated red cells per 100 white cells.
function wilson(k, n) {
  if (!n) return [0, 1];
  const z = 1.959963984540054, p = k / n, d = 1 + (z * z) / n;
  const centre = (p + (z * z) / (2 * n)) / d;
  const half = (z * Math.sqrt((p * (1 - p)) / n + (z * z) / (4 * n * n))) / d;
  return [Math.max(0, centre - half), Math.min(1, centre + half)];
}

function renderDifferential(cells) {
  const limit = threshold();
  const found = cells.filter(({ cell }) => cell.cell_found !== false);  // blank or tiny images are no cells
  const unreviewed = found.filter(({ cell }) => !cell.edge);
  const counted = unreviewed.filter(({ cell }) => cell.verdict !== "review");  // a person decides those
  const sure = counted.filter(({ cell }) => !(cell.confidence < limit));
  const white = state.classes.filter((c) => WHITE_CELLS.includes(c));
  const n = sure.filter(({ cell }) => white.includes(cell.predicted)).length;
  const table = $("differential");
  const body = white.map((c) => {
    const k = sure.filter(({ cell }) => cell.predicted === c).length;
    const [lo, hi] = wilson(k, n);
    return el("tr", { "data-class": c }, el("td", { text: c }), el("td", { text: String(k) }),
      el("td", { text: n ? (100 * k / n).toFixed(1) : "" }), el("td", { text: n ? `${(100 * lo).toFixed(1)}–${(100 * hi).toFixed(1)}` : "" }));
  });
  if (state.classes.includes("erythroblast")) {
    const k = sure.filter(({ cell }) => cell.predicted === "erythroblast").length;
    body.push(el("tr", {}, el("td", { text: "nucleated red cells" }), el("td", { text: String(k) }), el("td"),
      el("td", { text: n ? `${(100 * k / n).toFixed(1)} per 100 WBC` : "" })));
  }
  table.querySelector("tbody").replaceChildren(...body);
  const notes = [];
  const none = cells.length - found.length, edge = found.length - unreviewed.length, low = counted.length - sure.length;
  const review = unreviewed.length - counted.length;
  if (review) notes.push(`${review} cell(s) await review and are not counted`);
  if (none) notes.push(`${none} image(s) with no cell found not counted`);
  if (edge) notes.push(`${edge} cell(s) cut by a field's border left out`);
  if (low) {
    const below = counted.filter(({ cell }) => cell.confidence < limit)
      .map(({ item, cell }) => `${item.name}${cell.cell ? ` #${cell.cell}` : ""} (${cell.predicted} ${pct(cell.confidence)})`);
    notes.push(`${low} below the confidence mark counted apart: ${below.slice(0, 20).join(", ")}${below.length > 20 ? ", …" : ""}`);
  }
  $("differential-title").textContent = `Differential (${n} white cells)`;
  $("differential-notes").textContent = notes.join("; ");
}

async function showCell(item, c) {
  const dialog = $("cam-dialog");
  $("cam-title").textContent = `${item.name}, cell ${c.cell} → ${c.predicted} (${pct(c.confidence)})${c.edge ? ", cut by the border" : ""}`;
  const top = el("ol", { class: "top" }, ...c.top_k.map((t) => el("li", { text: `${t.class} ${pct(t.probability)}` })));
  $("cam-body").replaceChildren(top, el("p", { class: "muted", text: "computing…" }));
  dialog.showModal();
  try {
    const form = new FormData();
    form.append("file", item.file, item.name);
    const [x0, y0, x1, y1] = c.box;
    const query = `x0=${x0}&y0=${y0}&x1=${x1}&y1=${y1}&rbc=${item.result.rbc_diameter_px}`;
    const blob = await (await api(`/v1/gradcam?${query}`, { method: "POST", body: form })).blob();
    const img = el("img", { id: "cam-image", alt: `Grad-CAM of cell ${c.cell} of ${item.name}` });
    img.src = URL.createObjectURL(blob);
    $("cam-body").replaceChildren(top, img);
  } catch (e) {
    $("cam-body").replaceChildren(top, el("p", { class: "error", text: e.message }));
  }
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

// The columns of `cellmorphnet infer --out results.csv` (top 3), with the same conventions: one row per cell.
function csvText() {
  const header = ["path", "cell", "kind", "x0", "y0", "x1", "y1", "edge", "status", "predicted", "confidence"];
  for (let i = 1; i <= TOP_K; i++) header.push(`top${i}`, `top${i}_probability`);
  header.push("verdict", "review_reason", "typicality", "framing", "cell_found", "colour_step", "stain_contrast", "colour_distance", "unlike_training", "low_confidence",
    "rbc_diameter_px", "error");
  // a cell that a spreadsheet would read as a formula (=, +, -, @, tab, CR first) gets a leading ', as infer writes it
  const safe = (v) => (/^[=+\-@\t\r]/.test(v) ? `'${v}` : v);
  const quote = (v) => (/[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);
  const lines = [header.join(",")];
  const limit = threshold();
  const scale = (r) => (r.rbc_diameter_px != null ? r.rbc_diameter_px.toFixed(1) : "");
  const row = (name, r, kind, c, field) => {
    const ok = c && c.status === "ok";
    const place = field && c ? [String(c.cell), ...c.box.map(String), c.edge ? "yes" : "no"] : ["", "", "", "", "", ""];
    const status = r.status === "error" ? "skipped" : (c ? "ok" : "no cells");
    const out = [name, place[0], kind, ...place.slice(1), status, ok ? c.predicted : "", ok ? c.confidence.toFixed(6) : ""];
    for (let i = 0; i < TOP_K; i++) {
      const t = ok ? c.top_k[i] : null;
      out.push(t ? t.class : "", t ? t.probability.toFixed(6) : "");
    }
    out.push(ok ? c.verdict || "" : "", ok ? c.review_reason || "" : "", ok && c.typicality != null ? c.typicality.toFixed(4) : "",
      ok ? c.framing || "" : "", ok ? (c.cell_found === false ? "no" : "yes") : "", ok ? c.colour_step || "" : "", ok && c.stain_contrast != null ? c.stain_contrast.toFixed(3) : "",
      ok && c.colour_distance != null ? c.colour_distance.toFixed(2) : "",
      ok ? (c.unlike_training ? "yes" : "no") : "", ok ? (c.confidence < limit ? "yes" : "no") : "",
      field ? scale(r) : "", r.status === "error" ? r.error || "" : "");
    return out;
  };
  for (const { name, result: r } of state.items) {
    const rows = r.kind === "field" && r.status !== "error"
      ? (r.cells.length ? r.cells.map((c) => row(name, r, "field", c, true)) : [row(name, r, "field", null, true)])
      : [row(name, r, r.kind || "", r.status === "error" ? null : r, false)];
    for (const cells of rows) lines.push(cells.map((v) => quote(safe(String(v)))).join(","));
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
  $("threshold").addEventListener("change", () => {
    state.items.filter((i) => i.result && i.result.kind !== "field").forEach(renderResult);
    renderSummary();
  });
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
