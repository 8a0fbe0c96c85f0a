// Upload page: pick or drop an image, POST it to /api/predict, show the top 5 on the same page.
"use strict";

const form = document.getElementById("upload-form");
const input = document.getElementById("file-input");
const zone = document.getElementById("drop-zone");
const button = document.getElementById("submit");
const errorBox = document.getElementById("error");
const result = document.getElementById("result");
const preview = document.getElementById("preview");
const list = document.getElementById("predictions");
const meta = document.getElementById("result-meta");
let chosen = null;
let maxUpload = 10 * 1024 * 1024;

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

function choose(file) {
  chosen = file || null;
  document.getElementById("file-name").textContent = chosen ? `${chosen.name} (${(chosen.size / 1024).toFixed(1)} KB)` : "";
  button.disabled = !chosen;
  showError("");
  if (chosen && chosen.size > maxUpload) {
    showError(`This file is ${(chosen.size / 1048576).toFixed(1)} MB; the limit is ${(maxUpload / 1048576).toFixed(0)} MB.`);
  }
}

input.addEventListener("change", () => choose(input.files[0]));
["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (e) => {
  e.preventDefault();
  zone.classList.add("over");
}));
["dragleave", "drop"].forEach((type) => zone.addEventListener(type, (e) => {
  e.preventDefault();
  zone.classList.remove("over");
}));
zone.addEventListener("drop", (e) => {
  if (e.dataTransfer && e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
});

function render(body, file) {
  list.replaceChildren();
  for (const p of body.predictions) {
    const li = document.createElement("li");
    li.className = "prediction";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = p.label.replaceAll("_", " ");
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = `${(100 * p.probability).toFixed(1)}%`;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${Math.max(0.5, 100 * p.probability)}%`;
    fill.style.display = "block";
    track.appendChild(fill);
    li.append(name, prob, track);
    list.appendChild(li);
  }
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.onload = () => {
    // Tiny images (CIFAR's own 32x32) are shown as crisp pixels rather than a blur.
    preview.style.imageRendering = preview.naturalWidth <= 64 ? "pixelated" : "auto";
  };
  preview.src = URL.createObjectURL(file);
  meta.textContent = `answered by the model of round ${body.model_round}`;
  result.hidden = false;
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!chosen) return;
  const file = chosen;
  const data = new FormData();
  data.append("file", file, file.name);
  button.disabled = true;
  button.textContent = "Classifying…";
  showError("");
  try {
    const r = await fetchJSON("/api/predict", { method: "POST", body: data });
    if (r.ok) {
      render(r.body, file);
    } else {
      const reason = r.body && r.body.detail ? r.body.detail : `HTTP ${r.status}`;
      showError(`The server could not classify this file: ${reason}`);
    }
  } catch (err) {
    showError(`The server did not answer (${err}).`);
  } finally {
    button.disabled = false;
    button.textContent = "Classify";
  }
});

async function loop() {
  const m = await refreshModelBadge();
  if (m && m.max_upload_bytes) maxUpload = m.max_upload_bytes;
  setTimeout(loop, 5000);
}
loop();
