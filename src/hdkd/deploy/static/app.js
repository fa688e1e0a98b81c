// hdkd serve: upload an image, show the prediction. User strings only ever go through textContent.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  let model = null;

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
  }

  function clearError() {
    $("error").textContent = "";
    $("error").hidden = true;
  }

  function size(bytes) {
    return bytes < 1024 * 1024 ? Math.round(bytes / 1024) + " KB" : (bytes / (1024 * 1024)).toFixed(1) + " MB";
  }

  function percent(p) {
    return (100 * p).toFixed(1) + " %";
  }

  function addDetail(term, value) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = value;
    $("model-details").append(dt, dd);
  }

  function formatMetric(value) {
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4);
    return JSON.stringify(value);
  }

  async function loadModel() {
    try {
      const response = await fetch("api/model");
      if (!response.ok) throw new Error(response.status + " " + response.statusText);
      model = await response.json();
    } catch (err) {
      $("model-summary").textContent = "";
      showError("Could not read the model description from the server (" + err.message + ").");
      return;
    }
    $("model-summary").textContent = model.model_name + " \u00b7 " + model.classes.length + " classes \u00b7 "
      + model.img_size + " \u00d7 " + model.img_size + " px, " + (model.in_chans === 1 ? "grey" : "RGB");
    $("upload-limit").textContent = "up to " + size(model.max_upload_bytes);
    addDetail("Classes", model.classes.join(", "));
    addDetail("Input", model.img_size + " \u00d7 " + model.img_size + " px, " + model.in_chans + " channel(s)");
    addDetail("Calibration", model.temperature === null ? "none (uncalibrated softmax)"
      : "temperature " + model.temperature.toFixed(3) + " (fitted on validation)");
    addDetail("Explanations", model.explanations ? "yes" : "no");
    if (model.training_data) addDetail("Training data", model.training_data);
    for (const [name, value] of Object.entries(model.metrics || {})) addDetail("Test " + name, formatMetric(value));
    addDetail("hdkd version", model.hdkd_version);
  }

  function renderBars(probabilities, predicted) {
    const bars = $("bars");
    bars.replaceChildren();
    for (const [name, p] of Object.entries(probabilities)) {
      const row = document.createElement("div");
      row.className = "bar-row" + (name === predicted ? " predicted" : "");
      row.setAttribute("role", "listitem");
      row.dataset.class = name;
      const label = document.createElement("span");
      label.className = "bar-label";
      label.textContent = name;
      const track = document.createElement("span");
      track.className = "bar-track";
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = Math.max(0, Math.min(100, 100 * p)) + "%";
      track.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = percent(p);
      row.append(label, track, value);
      bars.append(row);
    }
  }

  function showResult(result) {
    $("filename").textContent = result.filename || "(unnamed file)";
    $("predicted-class").textContent = result.class;
    $("predicted-probability").textContent = "(" + percent(result.probabilities[result.class]) + ")";
    renderBars(result.probabilities, result.class);
    const overlay = $("overlay");
    if (result.overlay) {
      overlay.src = result.overlay;
      overlay.hidden = false;
      $("overlay-caption").textContent = "Overlay at the model's input size (" + model.img_size + " px).";
    } else {
      overlay.removeAttribute("src");
      overlay.hidden = true;
      $("overlay-caption").textContent = "No explanation overlay for this model.";
    }
    $("result").hidden = false;
  }

  async function upload(file) {
    clearError();
    $("result").hidden = true;
    const name = file.name || "(unnamed file)";
    if (model && file.size > model.max_upload_bytes) {
      showError(name + ": " + size(file.size) + " is over the upload limit of "
        + size(model.max_upload_bytes) + ".");
      return;
    }
    const form = new FormData();
    form.append("file", file, file.name);
    $("status").textContent = "Predicting " + name + "\u2026";
    let response;
    try {
      response = await fetch("api/predict", { method: "POST", body: form });
    } catch (err) {
      $("status").textContent = "";
      showError(name + ": the upload failed (" + err.message + "). Is the server still running?");
      return;
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    $("status").textContent = "";
    if (!response.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
      showError("Error " + response.status + ": " + detail);
      return;
    }
    showResult(body);
  }

  function setUp() {
    const input = $("file-input");
    const zone = $("drop-zone");
    input.addEventListener("change", () => {
      if (input.files.length) upload(input.files[0]);
      input.value = "";  // the same file picked again still fires "change"
    });
    zone.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        input.click();
      }
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      const files = event.dataTransfer.files;
      if (files.length !== 1) {
        showError("Drop one file at a time.");
        return;
      }
      upload(files[0]);
    });
    // a file dropped beside the zone must not make the browser navigate away to it
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
    loadModel();
  }

  setUp();
})();
