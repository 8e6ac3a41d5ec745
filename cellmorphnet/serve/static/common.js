// Shared by the cellmorphnet pages (index.html, review.html): the token, API calls, and building elements.
"use strict";

const $ = (id) => document.getElementById(id);

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

const WHITE_CELLS = ["basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil"];
