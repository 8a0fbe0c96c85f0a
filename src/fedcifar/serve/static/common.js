// Shared by both pages: the served-model badge in the header.
"use strict";

async function fetchJSON(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  return { ok: response.ok, status: response.status, body };
}

function describeModel(m) {
  if (!m || m.status !== "serving") return { text: "waiting for first round", waiting: true };
  const acc = m.test_acc == null ? "" : ` · test acc ${(100 * m.test_acc).toFixed(1)}%`;
  return { text: `model: round ${m.round}${acc}`, waiting: false };
}

function showModelBadge(m) {
  const badge = document.getElementById("model-badge");
  const d = describeModel(m);
  badge.textContent = d.text;
  badge.classList.toggle("waiting", d.waiting);
}

async function refreshModelBadge() {
  try {
    const r = await fetchJSON("/api/model");
    showModelBadge(r.body);
    return r.body;
  } catch (e) {
    document.getElementById("model-badge").textContent = "server unreachable";
    return null;
  }
}
