// dossr serve's page: plain JS over the HTTP API (README, /openapi.json); no framework, no build step.
"use strict";

const TOKEN_KEY = "dossr.token";
const $ = (selector, root = document) => root.querySelector(selector);

const state = {
  model: null,
  picked: [],      // File objects chosen but not yet sent
  waiting: [],     // cards waiting for a free slot on the server
  inFlight: 0,
  maxInFlight: 4,  // jobs this page keeps queued or running on the server at once (batches form from these)
  results: [],     // {name, blob} of finished jobs, for "Download all"
};

// ---- requests: every one carries the token; a 401 asks for it once and retries ----

let tokenPrompt = null;

function askToken(reason) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = $("#token-dialog");
  $("#token-reason").textContent = reason;
  $("#token-input").value = "";
  tokenPrompt = new Promise((resolve, reject) => {
    dialog.addEventListener("close", () => {
      tokenPrompt = null;
      const token = $("#token-input").value.trim();
      if (dialog.returnValue === "ok" && token) {
        localStorage.setItem(TOKEN_KEY, token);
        resolve(token);
      } else {
        reject(new Error(reason));
      }
    }, { once: true });
  });
  dialog.returnValue = "";
  dialog.showModal();
  return tokenPrompt;
}

async function api(path, options = {}) {
  for (;;) {
    const token = localStorage.getItem(TOKEN_KEY);
    const headers = new Headers(options.headers || {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    await askToken(await errorText(response));
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch (_) { /* not JSON: fall through */ }
  return `the server answered ${response.status} ${response.statusText}`.trim();
}

function filenameFrom(response, fallback) {
  const header = response.headers.get("Content-Disposition") || "";
  const star = /filename\*\s*=\s*UTF-8''([^;]+)/i.exec(header);
  if (star) return decodeURIComponent(star[1].trim());
  const plain = /filename\s*=\s*"((?:[^"\\]|\\.)*)"|filename\s*=\s*([^;]+)/i.exec(header);
  if (plain) return (plain[1] !== undefined ? plain[1].replace(/\\(.)/g, "$1") : plain[2].trim());
  return fallback;
}

// ---- Server-Sent Events over fetch (EventSource cannot send the Authorization header) ----

async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { id: null, name: "message", data: [] };
      for (const line of block.split("\n")) {
        if (line === "" || line.startsWith(":")) continue;  // keep-alive comments
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event.name = text;
        else if (field === "data") event.data.push(text);
        else if (field === "id") event.id = Number(text);
      }
      if (event.data.length) yield { id: event.id, name: event.name, data: JSON.parse(event.data.join("\n")) };
    }
  }
}

const TERMINAL = new Set(["done", "failed", "cancelled"]);

// Follows a job's events to its terminal one; the server replays from the start, so a dropped stream
// is simply reopened and the events already seen are skipped.
async function followJob(card, jobId) {
  let lastId = 0;
  for (let attempt = 0; attempt < 5; attempt++) {
    const response = await api(`/v1/jobs/${jobId}/events`, { headers: { Accept: "text/event-stream" } });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const event of readEvents(response)) {
      if (event.id !== null && event.id <= lastId) continue;
      if (event.id !== null) lastId = event.id;
      onEvent(card, event.name, event.data);
      if (TERMINAL.has(event.name)) return event;
    }
    await sleep(500);
  }
  throw new Error("lost the job's event stream; reload the page to see whether it finished");
}

// ---- cards ----

function makeCard(file) {
  const node = $("#card-template").content.firstElementChild.cloneNode(true);
  const card = { file, node, jobId: null, status: "waiting", cancelled: false, beforeUrl: URL.createObjectURL(file) };
  $('[data-testid="card-name"]', node).textContent = file.name;
  $('[data-testid="progress"]', node).setAttribute("aria-label", `Progress of ${file.name}`);
  const cancelButton = $('[data-testid="cancel"]', node);
  cancelButton.setAttribute("aria-label", `Cancel ${file.name}`);
  cancelButton.addEventListener("click", () => cancel(card));
  $("#cards").append(node);
  return card;
}

function setStatus(card, status, text) {
  card.status = status;
  card.node.dataset.status = status;
  $('[data-testid="status"]', card.node).textContent = text;
  if (TERMINAL.has(status)) $('[data-testid="cancel"]', card.node).hidden = true;
}

function setProgress(card, fraction) {
  $('[data-testid="progress"]', card.node).value = Math.max(0, Math.min(1, fraction));
}

function onEvent(card, name, data) {
  if (name === "queued") setStatus(card, "queued", "queued");
  else if (name === "started") setStatus(card, "running", "running");
  else if (name === "progress") {
    const { step, steps, tile, tiles } = data;
    setProgress(card, (tile + (steps ? step / steps : 0)) / Math.max(tiles, 1));
    const tilePart = tiles > 1 ? `, tile ${Math.min(tile + 1, tiles)} of ${tiles}` : "";
    setStatus(card, "running", `step ${step} of ${steps}${tilePart}`);
  } else if (name === "note") {
    const note = document.createElement("p");
    note.className = "hint note";
    note.textContent = `note: ${data.message}`;
    $('[data-testid="status"]', card.node).after(note);
  } else if (name === "failed") setStatus(card, "failed", data.error || "failed");
  else if (name === "cancelled") setStatus(card, "cancelled", "cancelled");
}

async function cancel(card) {
  card.cancelled = true;
  if (card.jobId === null) {
    if (state.waiting.includes(card)) {
      state.waiting.splice(state.waiting.indexOf(card), 1);
      setStatus(card, "cancelled", "cancelled");
    }
    return;  // an upload in progress is cancelled as soon as its job id comes back
  }
  const response = await api(`/v1/jobs/${card.jobId}`, { method: "DELETE" });
  if (!response.ok && response.status !== 404) setStatus(card, "failed", await errorText(response));
}

async function submit(card, fields) {
  for (;;) {
    const form = new FormData();
    form.append("image", card.file, card.file.name);
    for (const [name, value] of fields) form.append(name, value);
    setStatus(card, "uploading", "uploading");
    const response = await api("/v1/jobs", { method: "POST", body: form });
    if (response.status === 429) {  // the server's queue is full: wait as long as it asks
      const wait = Math.max(1, Number(response.headers.get("Retry-After")) || 2);
      setStatus(card, "waiting", `server queue full; retrying in ${wait} s`);
      await sleep(wait * 1000);
      if (card.cancelled) return null;
      continue;
    }
    if (!response.ok) throw new Error(await errorText(response));
    return response.json();
  }
}

async function run(card, fields) {
  const started = performance.now();
  try {
    const job = await submit(card, fields);
    if (job === null) return setStatus(card, "cancelled", "cancelled");
    card.jobId = job.id;
    card.node.dataset.jobId = job.id;
    if (card.cancelled) await cancel(card);
    const last = await followJob(card, job.id);
    if (last.name === "done") await showResult(card, last.data, started);
  } catch (error) {
    setStatus(card, "failed", error.message);
  }
}

async function showResult(card, job, started) {
  const response = await api(job.result || `/v1/jobs/${job.id}/result`);
  if (!response.ok) throw new Error(await errorText(response));
  const [width, height] = job.output_size;
  const name = filenameFrom(response, `${card.file.name.replace(/\.[^.]*$/, "")}_x4.${job.format || "png"}`);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  state.results.push({ name, blob });
  $("#download-all").hidden = false;

  setProgress(card, 1);
  const seconds = job.seconds ?? (performance.now() - started) / 1000;
  setStatus(card, "done", `done in ${seconds.toFixed(1)} s · ${width}×${height} ${job.format || ""}`.trim());
  const link = $('[data-testid="download"]', card.node);
  link.href = url;
  link.download = name;
  link.textContent = `Download ${name}`;
  link.hidden = false;
  showTrust(card, job.trust);
  showComparison(card, url, width, height);
}

// How far to trust the result (dossr_cli/trust.py): a flagged image says why, so it is checked first.
function showTrust(card, trust) {
  if (!trust) return;
  const line = $('[data-testid="trust"]', card.node);
  const invented = `invented detail ${trust.invented_rms.toFixed(3)} RMS`;
  const departure = `departs from the input: ${trust.departure_psnr_db.toFixed(1)} dB PSNR, ` +
    `${(trust.departure_share * 100).toFixed(1)}% of pixels`;
  line.textContent = trust.flagged ? `check this one: ${trust.flag_reasons.join("; ")} · ${invented}`
    : `${departure} · ${invented}`;
  line.classList.toggle("flagged", trust.flagged);
  card.node.dataset.flagged = String(trust.flagged);
  line.hidden = false;
}

// ---- before/after comparison: the input stretched to the output's size, a divider to drag ----

function showComparison(card, afterUrl, width, height) {
  const compare = $('[data-testid="compare"]', card.node);
  const frame = $(".compare-frame", compare);
  const before = $('[data-testid="before"]', compare);
  const after = $('[data-testid="after"]', compare);
  const divider = $('[data-testid="divider"]', compare);
  frame.style.aspectRatio = `${width} / ${height}`;
  frame.style.maxWidth = `${Math.max(width, 512)}px`;
  before.alt = `${card.file.name}, the input`;
  after.alt = `${card.file.name}, upscaled to ${width}×${height}`;
  before.src = card.beforeUrl;
  after.src = afterUrl;
  after.addEventListener("error", () => {
    compare.hidden = true;  // e.g. TIFF: the browser cannot show it, the download still works
  }, { once: true });
  before.addEventListener("error", () => frame.classList.add("no-before"), { once: true });  // the result alone
  const pixelated = $('[data-testid="pixelated"]', compare);
  const applyRendering = () => frame.classList.toggle("pixelated", pixelated.checked);
  pixelated.addEventListener("change", applyRendering);
  applyRendering();

  const place = (percent) => {
    const value = Math.round(Math.max(0, Math.min(100, percent)) * 10) / 10;
    frame.style.setProperty("--position", `${value}%`);
    divider.setAttribute("aria-valuenow", String(value));
    divider.setAttribute("aria-valuetext", `${Math.round(value)}% before`);
  };
  const fromPointer = (event) => {
    const box = frame.getBoundingClientRect();
    place(((event.clientX - box.left) / box.width) * 100);
  };
  frame.addEventListener("pointerdown", (event) => {
    frame.setPointerCapture(event.pointerId);
    fromPointer(event);
    divider.focus({ preventScroll: true });
  });
  frame.addEventListener("pointermove", (event) => {
    if (frame.hasPointerCapture(event.pointerId)) fromPointer(event);
  });
  divider.addEventListener("keydown", (event) => {
    const now = Number(divider.getAttribute("aria-valuenow"));
    const stride = event.shiftKey ? 10 : 2;
    const keys = { ArrowLeft: now - stride, ArrowDown: now - stride, ArrowRight: now + stride, ArrowUp: now + stride,
                   PageDown: now - 10, PageUp: now + 10, Home: 0, End: 100 };
    if (!(event.key in keys)) return;
    event.preventDefault();
    place(keys[event.key]);
  });
  place(50);
  compare.hidden = false;
}

// ---- "Download all": one .zip, made here (stored entries: the images are compressed already) ----

function downloadAll() {
  const used = new Set();
  const files = state.results.map(({ name, blob }) => {
    let unique = name;
    for (let n = 2; used.has(unique); n++) unique = name.replace(/(\.[^.]*)?$/, ` (${n})$1`);
    used.add(unique);
    return { name: unique, blob };
  });
  window.dossrZip(files).then((zip) => {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(zip);
    link.download = "dossr-results.zip";
    link.dataset.testid = "zip-link";
    document.body.append(link);
    link.click();
    link.remove();
    // the download has its own copy once started: give the zip back, or each click keeps one in memory
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  });
}

// ---- the form ----

function formFields() {
  const form = $("#options");
  const fields = [];
  const sized = form.width.value.trim() !== "" || form.height.value.trim() !== "";
  for (const element of form.elements) {
    if (!element.name || element.value.trim() === "") continue;
    if (element.name === "scale" && sized) continue;
    fields.push([element.name, element.value.trim()]);
  }
  return fields;
}

function applyDefaults(defaults) {
  const form = $("#options");
  for (const [name, value] of Object.entries(defaults || {})) {
    const element = form.elements.namedItem(name);
    if (element && value !== null && value !== undefined) element.value = String(value);
  }
}

function pick(files) {
  state.picked.push(...files);
  const names = state.picked.map((file) => file.name);
  $("#picked").textContent = names.length
    ? `${names.length} image${names.length > 1 ? "s" : ""} chosen: ${names.join(", ")}` : "No images chosen.";
  $("#upscale-button").disabled = names.length === 0;
}

function pump() {
  while (state.inFlight < state.maxInFlight && state.waiting.length) {
    const { card, fields } = state.waiting.shift();
    state.inFlight++;
    run(card, fields).finally(() => { state.inFlight--; pump(); });
  }
}

function startUpscale(event) {
  event.preventDefault();
  const fields = formFields();
  const cards = state.picked.map(makeCard);
  for (const card of cards) state.waiting.push({ card, fields });
  if (cards.length) cards[0].node.scrollIntoView({ block: "nearest" });  // on a phone the cards are below the form
  state.picked = [];
  pick([]);
  $("#file-input").value = "";
  pump();
}

async function loadModel() {
  const line = $("#model-line");
  try {
    const response = await api("/v1/model");
    if (!response.ok) throw new Error(await errorText(response));
    const model = await response.json();
    state.model = model;
    state.maxInFlight = Math.max(2, Math.min(8, 2 * (model.batch_size || 1)));
    applyDefaults(model.defaults);
    line.textContent = `dossr ${model.version} · ${model.device} · ${model.dtype} · weights ${model.name}` +
      ` (${model.weights})`;
  } catch (error) {
    line.textContent = `model unavailable: ${error.message}`;
    line.classList.add("error");
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function init() {
  const zone = $("#drop-zone");
  $("#file-input").addEventListener("change", (event) => pick(event.target.files));
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) zone.addEventListener(name, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => { event.preventDefault(); pick(event.dataTransfer.files); });
  $("#options").addEventListener("submit", startUpscale);
  $("#download-all").addEventListener("click", downloadAll);
  loadModel();
}

init();
