// The review view: the cells of a case laid out by predicted class; confirm or reassign each with one key.
"use strict";

const CHUNK = 16;
// enough: reviewed cells of a type from which train --init adapts well (the server says how many)
const state = { classes: [], enough: Infinity, case: null, cells: [], tiles: new Map(), typed: "", typedAt: 0 };

const pct = (p) => `${(100 * p).toFixed(1)}%`;
const current = (c) => c.reviewed || c.predicted;

// The keys: digits 1-9 (and 0 for the tenth), or the shortest unique start of a class's name.
function shortcut(cls) {
  for (let n = 1; n <= cls.length; n++) {
    const p = cls.slice(0, n);
    if (state.classes.filter((c) => c.startsWith(p)).length === 1) return p;
  }
  return cls;
}

async function loadCases() {
  const body = await (await api("/v1/cases")).json();
  state.classes = body.classes;
  state.enough = body.enough_per_type;
  $("cases").replaceChildren(...body.cases.map((c) => el("option", { value: c.name, text: `${c.reviewed} of ${c.cells} reviewed` })));
  $("keys").textContent = "Keys: " + state.classes.map((c, i) => `${i < 10 ? (i + 1) % 10 : "-"} or ${shortcut(c)} = ${c}`).join(" · ")
    + " · Enter = confirm the prediction · u or Backspace = undo · arrows = move · Space = enlarge (g: Grad-CAM)";
  const card = await (await api("/v1/model")).json();
  $("model-name").textContent = `${card.run} · ${card.classes.length} classes`;
  $("auth").hidden = true;
  renderAdaptCases(body.cases);
}

// Who is signed in: an account's name is the reviewer (the box is locked); its role decides the buttons.
async function loadMe() {
  const me = await (await api("/v1/me")).json();
  state.rights = me.rights;
  $("signed-in").textContent = me.name ? `Signed in as ${me.name} (${me.role}).` : "No account: reviews carry the name typed.";
  if (me.name) { $("reviewer").value = me.name; $("reviewer").disabled = true; }
  $("adapt").disabled = !me.rights.includes("adapt");
  $("rollback").hidden = !me.rights.includes("promote");
  if (!me.rights.includes("review")) $("pick-files").disabled = true;
}

async function loadServed() {
  const res = await api("/v1/served").catch(() => null);
  if (!res) return;
  const body = await res.json();
  const last = body.switches[0];
  $("served").textContent = `Serving ${body.run}` + (last ? ` (${last.action} ${last.created.slice(0, 16).replace("T", " ")}${last.by ? ` by ${last.by}` : ""}).` : ".");
  const card = await (await api("/v1/model")).json();
  $("model-name").textContent = `${card.run} · ${card.classes.length} classes`;
}

function renderAdaptCases(cases) {
  const box = $("adapt-cases");
  const ticked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  if (!ticked.size && state.case) ticked.add(state.case);
  box.replaceChildren(el("legend", { text: "Reviewed cells of" }), ...cases.filter((c) => c.reviewed > 0).map((c) => {
    const input = el("input", { type: "checkbox", value: c.name });
    input.checked = ticked.has(c.name);
    return el("label", {}, input, ` ${c.name} (${c.reviewed})`);
  }));
}

const pctOrDash = (x) => (x === null || x === undefined ? "—" : pct(x));

function showJob(job) {
  const secs = Math.round(job.seconds);
  const status = {
    running: `${job.phase}${job.steps ? ` · step ${job.step} of ${job.steps}` : ""} · ${secs} s`,
    failed: `The adaptation failed: ${job.error}`,
    done: `${job.run} is ready (${secs} s; trained on ${job.cells.train} cells, ${job.cells.held_out} held out).`,
  }[job.state];
  $("adapt-status").textContent = status;
  $("adapt").disabled = job.state === "running" || !(state.rights || []).includes("adapt");
  if (job.state !== "done" || job.scores.length < 2) { $("adapt-scores").hidden = true; $("promote").hidden = true; return; }
  const [served, fresh] = job.scores;
  const types = [...new Set([...Object.keys(served.per_type), ...Object.keys(fresh.per_type)])].sort();
  const share = (s, t) => { const v = s.per_type[t]; return v ? `${v.agree} of ${v.cells}` : "—"; };
  $("adapt-scores").querySelector("tbody").replaceChildren(
    ...types.map((t) => el("tr", {}, el("td", { text: t }), el("td", { text: share(served, t) }), el("td", { text: share(fresh, t) }))),
    el("tr", { class: "total" }, el("td", { text: "all" }), el("td", { text: pctOrDash(served.agreement) }), el("td", { text: pctOrDash(fresh.agreement) })),
    el("tr", {}, el("td", { text: `PBC reference (${served.reference_images})` }), el("td", { text: pctOrDash(served.reference_accuracy) }),
      el("td", { text: pctOrDash(fresh.reference_accuracy) })));
  $("adapt-scores").hidden = false;
  $("promote").hidden = !(state.rights || []).includes("promote");
  $("promote").dataset.run = job.run;
}

async function pollJob() {
  const res = await api("/v1/adapt").catch(() => null);
  if (!res) return;
  const job = await res.json();
  showJob(job);
  if (job.state === "running") setTimeout(pollJob, 1000);
}

async function startAdapt() {
  const cases = [...$("adapt-cases").querySelectorAll("input:checked")].map((i) => i.value);
  if (!cases.length) { $("adapt-status").textContent = "Tick the cases whose reviewed cells to adapt on."; return; }
  try {
    showJob(await (await api("/v1/adapt", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ cases }) })).json());
    setTimeout(pollJob, 1000);
  } catch (e) { $("adapt-status").textContent = e.message; }
}

async function switchModel(path, body) {
  try {
    const sw = await (await api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) })).json();
    $("adapt-status").textContent = `Now serving ${sw.run}` + (sw.previous ? ` (was ${sw.previous}).` : ".");
    $("promote").hidden = true;
    await loadServed();
  } catch (e) { $("adapt-status").textContent = e.message; }
}

async function openCase(name) {
  const ticket = (state.opening = (state.opening || 0) + 1);  // the latest case asked for wins, whatever answers last
  state.case = name;
  localStorage.setItem("cellmorphnet-case", name);
  const res = await api(`/v1/cases/${encodeURIComponent(name)}`).catch((e) => (e.message.startsWith("404") ? null : Promise.reject(e)));
  const cells = res ? (await res.json()).cells : [];
  if (ticket !== state.opening) return;
  state.cells = cells;
  render();
}

async function cropUrl(cell) {
  const blob = await (await api(`/v1/cells/${cell.id}/crop`)).blob();
  return URL.createObjectURL(blob);
}

function tile(cell) {
  const img = el("img", { alt: `cell ${cell.id}` });
  cropUrl(cell).then((u) => { img.src = u; }).catch(() => {});
  const node = el("button", { class: "cell-tile", type: "button", "data-id": String(cell.id) }, img,
    el("span", { class: "pred", text: `${cell.predicted} ${pct(cell.confidence)}` }),
    el("span", { class: "verdict", text: cell.verdict === "review" ? `for review: ${cell.review_reason || ""}` : "" }),
    el("span", { class: "rev" }));
  node.classList.toggle("for-review", cell.verdict === "review");
  node.dataset.verdict = cell.verdict || "";
  node.addEventListener("keydown", (e) => onKey(e, cell));
  node.addEventListener("click", () => node.focus());
  node.addEventListener("dblclick", () => enlarge(cell));
  node.classList.toggle("edge", !!cell.edge);
  if (cell.edge) node.append(el("span", { class: "edge-note", text: "cut by the field's border" }));
  state.tiles.set(cell.id, node);
  paint(cell);
  return node;
}

function paint(cell) {
  const node = state.tiles.get(cell.id);
  if (!node) return;
  node.classList.toggle("done", !!cell.reviewed);
  node.classList.toggle("changed", !!cell.reviewed && cell.reviewed !== cell.predicted);
  node.querySelector(".rev").textContent = cell.reviewed ? `→ ${cell.reviewed}${cell.reviewer ? ` (${cell.reviewer})` : ""}` : "not reviewed";
  node.title = `${cell.source}${cell.cell ? ` #${cell.cell}` : ""}`;
}

// The cells the model sent to review first (the verdict), then, if asked, the least confident first.
function ordered() {
  const cells = [...state.cells];
  if ($("low-first").checked) cells.sort((a, b) => a.confidence - b.confidence);
  if ($("review-first").checked) cells.sort((a, b) => (b.verdict === "review") - (a.verdict === "review"));
  return cells;
}

// The lab's own accuracy, from the reviews of this case and of all cases (GET /v1/reviews/stats).
async function showStats() {
  const line = (s) => {
    if (!s.reviewed) return "no reviewed cells yet";
    const c = s.confirmed, v = s.by_verdict.classified;
    const kappa = s.kappa == null ? "" : `, kappa ${s.kappa.toFixed(2)}`;
    const without = v ? `; answers given without a person changed: ${v.changed} of ${v.reviewed} (${pct(v.error_rate)})` : "";
    return `${s.reviewed} reviewed, ${pct(c.share)} confirmed${kappa}${without}`;
  };
  try {
    const all = await (await api("/v1/reviews/stats")).json();
    const here = state.case ? await (await api(`/v1/reviews/stats?case=${encodeURIComponent(state.case)}`)).json() : null;
    $("stats-case").textContent = here ? `This case: ${line(here)}.` : "";
    $("stats-all").textContent = `All cases: ${line(all)}.`;
  } catch (e) {
    $("stats-all").textContent = "";
  }
}

function render() {
  state.tiles.clear();
  const groups = [];
  const cells = ordered();
  for (const cls of state.classes) {
    const mine = cells.filter((c) => c.predicted === cls);
    if (!mine.length) continue;
    groups.push(el("section", { class: "group", "data-class": cls }, el("h3", { text: `${cls} (${mine.length})` }),
      el("div", { class: "tiles" }, ...mine.map(tile))));
  }
  $("groups").replaceChildren(...groups);
  $("export").disabled = !state.cells.some((c) => c.reviewed);
  $("report").disabled = !state.cells.length;
  counts();
  showStats();
}

function counts() {
  const now = new Map(state.classes.map((c) => [c, 0]));
  const model = new Map(state.classes.map((c) => [c, 0]));
  const reviewed = new Map(state.classes.map((c) => [c, 0]));
  for (const c of state.cells) {
    now.set(current(c), (now.get(current(c)) || 0) + 1);
    model.set(c.predicted, (model.get(c.predicted) || 0) + 1);
    if (c.reviewed) reviewed.set(c.reviewed, (reviewed.get(c.reviewed) || 0) + 1);
  }
  const white = state.cells.filter((c) => WHITE_CELLS.includes(current(c)) && !c.edge).length;
  $("counts").querySelector("tbody").replaceChildren(...state.classes.map((c) => el("tr", { "data-class": c },
    el("td", { text: c }), el("td", { text: String(model.get(c)) }), el("td", { text: String(now.get(c)) }),
    el("td", { text: String(reviewed.get(c)), class: reviewed.get(c) >= state.enough ? "enough" : "" }),
    el("td", { text: WHITE_CELLS.includes(c) && white ? (100 * state.cells.filter((x) => current(x) === c && !x.edge).length / white).toFixed(1) : "" }))));
  const done = state.cells.filter((c) => c.reviewed).length;
  $("reviewed").textContent = `${done} of ${state.cells.length} cells reviewed`;
}

function move(cell, step) {
  const ids = [...state.tiles.keys()];
  const i = ids.indexOf(cell.id) + step;
  if (i >= 0 && i < ids.length) state.tiles.get(ids[i]).focus();
}

async function decide(cell, url, body) {
  try {
    const updated = await (await api(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })).json();
    Object.assign(cell, updated);
    paint(cell);
    counts();
    clearTimeout(state.statsTimer);
    state.statsTimer = setTimeout(showStats, 400);
    $("export").disabled = !state.cells.some((c) => c.reviewed);
    return true;
  } catch (e) {
    $("progress").textContent = e.message;
    return false;
  }
}

// The cell at full resolution, in a dialog; Grad-CAM on request (the stored crop sent to /v1/gradcam).
async function enlarge(cell) {
  $("zoom-title").textContent = `Cell ${cell.id}: ${cell.predicted} ${pct(cell.confidence)}`
    + (cell.verdict === "review" ? ` · for review: ${cell.review_reason || ""}` : "")
    + (cell.reviewed ? ` · reviewed: ${cell.reviewed}` : "");
  $("zoom-note").textContent = `${cell.source}${cell.cell ? ` #${cell.cell}, box ${cell.box.join(", ")}` : ""}${cell.edge ? " · cut by the field's border" : ""}`;
  $("zoom-cam").hidden = true;
  $("zoom-field").hidden = true;
  $("zoom-img").src = await cropUrl(cell);
  $("zoom-cam-button").onclick = () => gradcam(cell);
  state.zoomed = cell;
  $("zoom").showModal();
  if (cell.box) {  // where it lies in its field (kept with the case since review schema 3)
    api(`/v1/cells/${cell.id}/field`).then((r) => r.blob()).then((b) => {
      if (state.zoomed !== cell) return;
      $("zoom-field").src = URL.createObjectURL(b);
      $("zoom-field").hidden = false;
    }).catch(() => {});
  }
}

async function gradcam(cell) {
  const blob = await (await api(`/v1/cells/${cell.id}/crop`)).blob();
  const form = new FormData();
  form.append("file", blob, `cell-${cell.id}.png`);
  try {
    const cam = await (await api("/v1/gradcam", { method: "POST", body: form })).blob();
    $("zoom-cam").src = URL.createObjectURL(cam);
    $("zoom-cam").hidden = false;
  } catch (e) {
    $("zoom-note").textContent = e.message;
  }
}

async function onKey(e, cell) {
  const reviewer = $("reviewer").value.trim() || null;
  let cls = null;
  if (e.key === " ") { e.preventDefault(); enlarge(cell); return; }
  if (e.key === "ArrowRight" || e.key === "ArrowDown") { e.preventDefault(); move(cell, 1); return; }
  if (e.key === "ArrowLeft" || e.key === "ArrowUp") { e.preventDefault(); move(cell, -1); return; }
  if (e.key === "u" || e.key === "Backspace") {
    e.preventDefault();
    if (cell.reviewed) await decide(cell, `/v1/cells/${cell.id}/undo`, { reviewer });
    return;
  }
  if (e.key === "Enter") cls = cell.predicted;
  else if (/^[0-9]$/.test(e.key)) cls = state.classes[(Number(e.key) + 9) % 10];
  else if (/^[a-z]$/i.test(e.key)) {
    const now = Date.now();
    state.typed = (now - state.typedAt < 900 ? state.typed : "") + e.key.toLowerCase();
    state.typedAt = now;
    const hits = state.classes.filter((c) => c.startsWith(state.typed));
    if (hits.length === 1) { cls = hits[0]; state.typed = ""; }
  }
  if (!cls) return;
  e.preventDefault();
  if (await decide(cell, `/v1/cells/${cell.id}/review`, { class: cls, reviewer })) move(cell, 1);
}

async function addFiles(files) {
  if (!state.case) { $("progress").textContent = "Open a case first."; return; }
  const list = [...files];
  let done = 0;
  for (let i = 0; i < list.length; i += CHUNK) {
    const form = new FormData();
    for (const f of list.slice(i, i + CHUNK)) form.append("files", f, f.name);
    try {
      const body = await (await api(`/v1/cases/${encodeURIComponent(state.case)}/cells`, { method: "POST", body: form })).json();
      state.cells = body.cells;
      done += Math.min(CHUNK, list.length - i);
      $("progress").textContent = `${done} of ${list.length} images added` + (body.skipped.length ? `; ${body.skipped.length} skipped` : "");
    } catch (e) {
      $("progress").textContent = e.message;
      return;
    }
  }
  render();
  loadCases();
}

// The case's report (self-contained HTML, to print or file), opened in a new tab.
async function openReport() {
  const blob = await (await api(`/v1/cases/${encodeURIComponent(state.case)}/report`)).blob();
  const url = URL.createObjectURL(new Blob([blob], { type: "text/html" }));
  window.open(url, "_blank");
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

async function download() {
  const blob = await (await api(`/v1/cases/${encodeURIComponent(state.case)}/export`)).blob();
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: `${state.case.replace(/[^A-Za-z0-9._-]+/g, "_")}-reviewed.zip` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function setUp() {
  $("reviewer").value = localStorage.getItem("cellmorphnet-reviewer") || "";
  $("reviewer").addEventListener("change", () => localStorage.setItem("cellmorphnet-reviewer", $("reviewer").value.trim()));
  $("case-form").addEventListener("submit", (e) => { e.preventDefault(); openCase($("case").value.trim()); });
  $("pick-files").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  $("low-first").addEventListener("change", render);
  $("review-first").addEventListener("change", render);
  $("export").addEventListener("click", download);
  $("report").addEventListener("click", openReport);
  $("adapt").addEventListener("click", startAdapt);
  $("promote").addEventListener("click", () => switchModel("/v1/served/promote", { run: $("promote").dataset.run }));
  $("rollback").addEventListener("click", () => switchModel("/v1/served/rollback"));
  $("zoom").addEventListener("keydown", (e) => { if (e.key === "g" && state.zoomed) gradcam(state.zoomed); });
  $("zoom").addEventListener("close", () => state.tiles.get(state.zoomed?.id)?.focus());
  $("auth").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("cellmorphnet-token", $("token").value.trim());
    loadCases().then(() => Promise.all([loadMe(), loadServed(), pollJob()])).catch(() => {});
  });
  loadCases().then(() => {  // reopen the last case, unless a case was opened, or one typed, while the list loaded
    const last = localStorage.getItem("cellmorphnet-case");
    if (last && !state.case && !$("case").value.trim()) { $("case").value = last; openCase(last); }
    return Promise.all([loadMe(), loadServed(), pollJob()]);
  }).catch(() => {});
}

document.addEventListener("DOMContentLoaded", setUp);
