// imgzoo web page: the model zoo (from /models and /metrics) and image classification through
// /predict. Plain JavaScript, no dependencies. Text from the server is only ever set as
// textContent, never as HTML.
"use strict";

const COMPARE_ALL = "__all__";
const REFRESH_MS = 5000;

const state = {
  config: { api_key_required: false, default_top_k: 5, version: "" },
  models: [], // entries of GET /models
  latency: new Map(), // "dataset/model" -> mean end-to-end ms from /metrics
  file: null,
  running: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, String(value));
    else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

// ---------------------------------------------------------------- formatting

function percent(p, digits = 2) {
  return `${(p * 100).toFixed(digits)}%`;
}

function accuracy(value) {
  return value === null || value === undefined ? "—" : percent(value, 1);
}

function count(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return String(n);
}

function bytes(n) {
  if (n === undefined || n === null) return "—";
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

function ms(value) {
  return value === null || value === undefined ? "—" : `${value.toFixed(1)} ms`;
}

function shortProvider(provider) {
  return provider.replace("ExecutionProvider", "");
}

// ---------------------------------------------------------------- HTTP

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) {
      return typeof body.error === "string" ? body.error : body.error.message;
    }
  } catch (_) {
    // not JSON: fall through
  }
  return `HTTP ${response.status}`;
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

// Mean end-to-end latency per model from the Prometheus histogram (sum / count, stage=total).
function parseLatency(text) {
  const sums = new Map();
  const counts = new Map();
  const line = /^imgzoo_request_duration_seconds_(sum|count)\{([^}]*)\}\s+(\S+)/;
  for (const row of text.split("\n")) {
    const match = line.exec(row);
    if (!match) continue;
    const labels = Object.fromEntries(
      [...match[2].matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]),
    );
    if (labels.stage !== "total") continue;
    const key = `${labels.dataset}/${labels.model}`;
    (match[1] === "sum" ? sums : counts).set(key, Number(match[3]));
  }
  const means = new Map();
  for (const [key, n] of counts) {
    if (n > 0 && sums.has(key)) means.set(key, (sums.get(key) / n) * 1000);
  }
  return means;
}

// ---------------------------------------------------------------- the zoo

function datasets() {
  const names = [...new Set(state.models.map((m) => m.dataset))];
  return names.sort();
}

function modelsOf(dataset) {
  return state.models.filter((m) => m.dataset === dataset);
}

function defaultVersion(model) {
  return model.versions.find((v) => v.version === model.default_version) || model.versions[0];
}

function renderZoo() {
  const zoo = $("zoo");
  zoo.replaceChildren();
  if (!state.models.length) {
    zoo.append(el("p", { class: "muted", text: "No model is loaded." }));
  }
  for (const dataset of datasets()) {
    const models = modelsOf(dataset);
    const classes = defaultVersion(models[0]).labels.length;
    zoo.append(
      el(
        "h3",
        { class: "dataset-title" },
        dataset,
        " ",
        el("span", { class: "muted", text: `· ${classes} classes · ${models.length} model(s)` }),
      ),
    );
    const head = el(
      "tr",
      {},
      ...[
        ["Model", ""],
        ["Versions", ""],
        ["Val acc", "num"],
        ["Test acc", "num"],
        ["Params", "num"],
        ["ONNX size", "num"],
        ["Provider", ""],
        ["Inference", "num"],
        ["End-to-end", "num"],
        ["Requests", "num"],
      ].map(([text, cls]) => el("th", { class: cls, text })),
    );
    const body = el("tbody");
    for (const model of models) {
      const v = defaultVersion(model);
      const requests = model.versions.reduce((n, x) => n + x.counters.requests, 0);
      const row = el(
        "tr",
        { "data-model": `${model.dataset}/${model.model}` },
        el("td", { class: "model-name" }, model.model, graphNote(v)),
        el("td", {
          text: model.versions.map((x) => `v${x.version}`).join(", "),
          title: `default: v${model.default_version}`,
        }),
        el("td", { class: "num", text: accuracy(v.metrics.val_accuracy) }),
        el("td", { class: "num", text: accuracy(v.metrics.test_accuracy) }),
        el("td", { class: "num", text: count(v.metrics.parameters) }),
        el("td", { class: "num", text: bytes(v.metrics.file_sizes["model.onnx"]) }),
        el("td", { text: shortProvider(v.provider) }),
        el("td", { class: "num", text: ms(v.counters.mean_inference_ms) }),
        el("td", { class: "num", text: ms(state.latency.get(`${model.dataset}/${model.model}`)) }),
        el("td", { class: "num", text: String(requests) }),
      );
      body.append(row);
    }
    zoo.append(el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, head), body)));
  }
}

// What one request costs a composite graph (ensemble and / or TTA): null for a plain network.
function graphNote(version) {
  const c = version.composition;
  if (!c) return null;
  const architectures = [...new Set(c.members.map((m) => m.architecture))].join(" + ");
  const tta = c.tta ? ` · TTA ${c.tta}` : "";
  const count = c.members.length > 1 ? `${c.members.length}× ` : "";
  const text = `${count}${architectures}${tta} · ${c.views} passes / image`;
  return el("div", { class: "graph", text });
}

function renderFailures(failures) {
  const box = $("failures");
  box.replaceChildren();
  box.hidden = !failures.length;
  if (!failures.length) return;
  const list = el("ul");
  for (const failure of failures) {
    list.append(el("li", {}, el("code", { text: failure.path }), ` — ${failure.reason}`));
  }
  box.append(el("h3", { text: `${failures.length} repository entries failed to load` }), list);
}

function fillSelectors() {
  const datasetSelect = $("dataset");
  const previous = datasetSelect.value;
  const names = datasets();
  datasetSelect.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
  if (names.includes(previous)) datasetSelect.value = previous;
  fillModels();
}

function fillModels() {
  const modelSelect = $("model");
  const previous = modelSelect.value;
  const models = modelsOf($("dataset").value);
  const options = models.map((m) => el("option", { value: m.model, text: m.model }));
  if (models.length > 1) {
    options.push(
      el("option", { value: COMPARE_ALL, text: `Compare all ${models.length} models` }),
    );
  }
  modelSelect.replaceChildren(...options);
  if ([...modelSelect.options].some((o) => o.value === previous)) modelSelect.value = previous;
  updateButton();
}

async function refresh() {
  try {
    const [listing, metrics] = await Promise.all([
      getJSON("/models"),
      fetch("/metrics", { cache: "no-store" }).then((r) => (r.ok ? r.text() : "")),
    ]);
    const names = (models) => models.map((m) => `${m.dataset}/${m.model}`).join(",");
    const changed = names(listing.models) !== names(state.models);
    state.models = listing.models;
    state.latency = parseLatency(metrics);
    renderZoo();
    renderFailures(listing.failures);
    if (changed) fillSelectors();
    const pill = $("status-pill");
    const versions = state.models.reduce((n, m) => n + m.versions.length, 0);
    pill.textContent = `${state.models.length} models · ${versions} versions`;
    pill.className = state.models.length ? "pill pill-ok" : "pill pill-bad";
  } catch (error) {
    const pill = $("status-pill");
    pill.textContent = "unreachable";
    pill.className = "pill pill-bad";
  }
}

// ---------------------------------------------------------------- classification

function updateButton() {
  $("classify").disabled = state.running || !state.file || !$("model").value;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setFile(file) {
  if (!file) return;
  state.file = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-text").hidden = true;
  $("file-name").textContent = `${file.name} · ${bytes(file.size)}`;
  showError("");
  updateButton();
  classify();
}

function resultCard(dataset, model) {
  return el(
    "article",
    { class: "result-card pending", "data-model": `${dataset}/${model}` },
    el("div", { class: "result-head" }, el("h3", { text: model }), el("span", { class: "muted" })),
    el("p", { class: "latency", text: "running…" }),
    el("ol", { class: "predictions" }),
  );
}

function fillCard(card, body) {
  card.classList.remove("pending");
  card.setAttribute("data-version", String(body.version));
  card.querySelector(".result-head .muted").textContent =
    `v${body.version} · ${shortProvider(body.provider)}`;
  const latency = card.querySelector(".latency");
  latency.replaceChildren(
    el("strong", { text: ms(body.latency_ms.total) }),
    ` total · inference ${ms(body.latency_ms.inference)} · queue ${ms(body.latency_ms.queue)}` +
      ` · decode ${ms(body.latency_ms.decode)} · batch ${body.batch_size}`,
  );
  const list = card.querySelector(".predictions");
  list.replaceChildren(
    ...body.predictions.map((p) =>
      el(
        "li",
        {
          class: "prediction",
          "data-label": p.label,
          "data-index": p.index,
          "data-probability": p.probability,
        },
        el("span", { class: "label", text: p.label, title: p.label }),
        el(
          "span",
          { class: "track" },
          el("span", { class: "bar", style: `width: ${Math.max(0, p.probability) * 100}%` }),
        ),
        el("span", { class: "prob", text: percent(p.probability) }),
      ),
    ),
  );
}

function failCard(card, message) {
  card.classList.remove("pending");
  card.classList.add("failed");
  card.querySelector(".latency").textContent = message;
}

async function predictOne(dataset, model, file, topK) {
  const form = new FormData();
  form.append("file", file, file.name);
  const url = `/predict/${encodeURIComponent(dataset)}/${encodeURIComponent(model)}?top_k=${topK}`;
  const response = await fetch(url, { method: "POST", body: form, headers: authHeaders() });
  if (response.status === 401) {
    $("auth").hidden = false;
    $("auth").classList.add("needed");
    $("api-key").focus();
  }
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

async function classify() {
  const dataset = $("dataset").value;
  const choice = $("model").value;
  if (!state.file || !dataset || !choice || state.running) return;
  const topK = Math.max(1, Math.min(1000, Number($("top-k").value) || 5));
  const models = choice === COMPARE_ALL ? modelsOf(dataset).map((m) => m.model) : [choice];
  const results = $("results");
  const cards = models.map((model) => resultCard(dataset, model));
  results.replaceChildren(...cards);
  results.setAttribute("data-state", "running");
  showError("");
  state.running = true;
  updateButton();
  let failures = 0;
  // One model at a time: side-by-side latencies are then not inflated by each other.
  for (const [i, model] of models.entries()) {
    try {
      fillCard(cards[i], await predictOne(dataset, model, state.file, topK));
    } catch (error) {
      failures += 1;
      failCard(cards[i], error.message);
    }
  }
  state.running = false;
  updateButton();
  results.setAttribute("data-state", failures ? "failed" : "done");
  if (failures === models.length) showError(cards[0].querySelector(".latency").textContent);
  refresh();
}

// ---------------------------------------------------------------- wiring

function wire() {
  const input = $("file-input");
  input.addEventListener("change", () => setFile(input.files[0]));
  const zone = $("dropzone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    setFile(event.dataTransfer.files[0]);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  $("dataset").addEventListener("change", fillModels);
  $("model").addEventListener("change", updateButton);
  $("classify").addEventListener("click", classify);
  const key = $("api-key");
  key.value = sessionStorage.getItem("imgzoo-api-key") || "";
  key.addEventListener("input", () => {
    sessionStorage.setItem("imgzoo-api-key", key.value.trim());
    $("auth").classList.remove("needed");
  });
}

async function start() {
  wire();
  try {
    state.config = await getJSON("/ui/config");
    $("service-version").textContent = `v${state.config.version}`;
    $("top-k").value = String(Math.min(state.config.default_top_k, 10));
    $("auth").hidden = !state.config.api_key_required;
  } catch (_) {
    // an older service without /ui/config: defaults, and the key field appears on a 401
  }
  await refresh();
  document.body.setAttribute("data-ready", "true");
  setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);
