// The page: photos go to POST /api/predict one at a time (two in flight), each card fills in as its answer comes;
// "Where did it look?" asks POST /api/explain for the Grad-CAM overlay. Plain DOM, no libraries, nothing fetched
// from outside this server.
"use strict";

const results = document.getElementById("results");
const queue = [];
let inFlight = 0;
let maxUploadBytes = 32 * 2 ** 20;

const percent = (p) => `${(100 * p).toFixed(1)}%`;

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// A class name as a person writes it: "american_pit_bull_terrier" -> "American pit bull terrier" (the JSON keeps
// the raw name, shown as the label's tooltip)
function readable(name) {
  const words = name.replace(/[_-]+/g, " ").trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

// POST a form; a busy server (503 or 429) says when to come back in Retry-After: wait that long and ask again
async function post(url, form, tries = 30) {
  for (let i = 1; ; i += 1) {
    const response = await fetch(url, { method: "POST", body: form });
    if (![429, 503].includes(response.status) || i >= tries) return response;
    await new Promise((done) => setTimeout(done, 1000 * (Number(response.headers.get("Retry-After")) || 1)));
  }
}

async function answer(response) {
  // the API answers JSON, {"error": ...} when it refuses; anything else is a server fault
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return { error: `${response.status} ${response.statusText}` };
  }
}

// --- the model -------------------------------------------------------------------------------------------------

async function showModel() {
  const info = await answer(await fetch("/api/model"));
  if (info.error) {  // no model served: the page teaches one
    document.getElementById("model-line").textContent = "No model is served yet: teach one below.";
    for (const id of ["drop", "results", "model"]) document.getElementById(id).hidden = true;
    document.querySelector("header nav").hidden = true;
    return;
  }
  maxUploadBytes = info.max_upload_bytes;
  document.getElementById("limit").textContent = `${Math.round(maxUploadBytes / 2 ** 20)} MiB`;
  const task = { breed: "the breed (37 Oxford-IIIT Pet breeds) and cat or dog", species: "cat or dog",
                 folder: `one of ${info.class_names.length} classes` }[info.task];
  document.getElementById("model-line").textContent = `${info.model} tells ${task}.`;
  const accuracy = info.accuracy
    ? `${percent(info.accuracy.value)} on ${info.accuracy.photos ? info.accuracy.photos + " " : ""}` +
      `${info.accuracy.split} photos`
    : "not recorded with this checkpoint";
  const facts = [
    ["checkpoint", info.checkpoint], ["network", info.model], ["task", info.task],
    ["classes", String(info.class_names.length)], ["accuracy", accuracy],
    ["input", `${info.image_size} x ${info.image_size} px${info.flip_tta ? ", scored with its mirror image" : ""}`],
    ["not a pet", info.not_a_pet ? "flagged by the ImageNet classifier it keeps" : "cannot tell (no ImageNet head)"],
  ];
  document.getElementById("facts").append(...facts.flatMap(([k, v]) => [el("dt", { textContent: k }),
                                                                        el("dd", { textContent: v })]));
  document.getElementById("classes").textContent = info.class_names.join(", ");
  const curves = document.getElementById("curves");
  if (info.curve.length) {
    curves.append(
      chart("validation accuracy per epoch", info.curve, [["val_accuracy", "#2f6fdf"]], 0, 1),
      chart("loss per epoch: training (orange), validation (blue)", info.curve,
            [["train_loss", "#e0803a"], ["val_loss", "#2f6fdf"]], 0, null));
  } else {
    curves.append(el("p", { className: "hint", textContent: "no learning curve: metrics.jsonl is not beside the checkpoint" }));
  }
}

function chart(title, rows, series, low, high) {
  // a line chart as SVG: epochs across, each series a polyline
  const w = 300, h = 140, pad = 30;
  const values = rows.flatMap((r) => series.map(([key]) => r[key])).filter((v) => typeof v === "number");
  const top = high ?? Math.max(...values) * 1.05;
  const x = (i) => pad + (rows.length > 1 ? (i * (w - pad - 8)) / (rows.length - 1) : 0);
  const y = (v) => h - pad + 10 - ((v - low) / (top - low || 1)) * (h - pad - 4);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    svg.append(node);
  };
  add("line", { x1: pad, y1: y(low), x2: w - 8, y2: y(low), stroke: "#bbb" });
  add("line", { x1: pad, y1: y(low), x2: pad, y2: y(top), stroke: "#bbb" });
  add("text", { x: 2, y: y(top) + 4 }, high === 1 ? "100%" : top.toFixed(2));
  add("text", { x: 2, y: y(low) }, high === 1 ? "0%" : String(low));
  add("text", { x: pad, y: h - 4 }, "epoch 1");
  add("text", { x: w - 2, y: h - 4, "text-anchor": "end" }, `epoch ${rows[rows.length - 1].epoch ?? rows.length}`);
  for (const [key, colour] of series) {
    const points = rows.map((r, i) => (typeof r[key] === "number" ? `${x(i)},${y(r[key])}` : null)).filter(Boolean);
    add("polyline", { points: points.join(" "), fill: "none", stroke: colour, "stroke-width": 2 });
  }
  return el("figure", {}, svg, el("figcaption", { textContent: title }));
}

// --- photos ----------------------------------------------------------------------------------------------------

// each photo a card in `target`, answered by the served model, or by a model taught in the page (`job`)
function addPhotos(files, target = results, job = null) {
  for (const file of files) {
    const preview = el("img", { alt: file.name, src: URL.createObjectURL(file) });
    const photo = file.type.startsWith("image/") || /\.(heic|heif|avif)$/i.test(file.name);
    const why = photo ? "(no preview in this browser)" : "(not an image file)";
    preview.onerror = () => preview.replaceWith(el("p", { className: "hint", textContent: why }));
    const body = el("div", {}, el("p", { className: "name", textContent: file.name }),
                    el("p", { className: "pending", textContent: "looking…" }));
    const card = el("article", { className: "card" }, el("div", { className: "pictures" }, preview), body);
    target.append(card);
    if (file.size > maxUploadBytes) {
      showError(body, `${(file.size / 2 ** 20).toFixed(1)} MiB is over the ${Math.round(maxUploadBytes / 2 ** 20)} MiB limit`);
      continue;
    }
    queue.push({ file, card, body, job });
  }
  pump();
}

function pump() {
  while (inFlight < 2 && queue.length) {
    inFlight += 1;
    predict(queue.shift()).finally(() => {
      inFlight -= 1;
      pump();
    });
  }
}

// a form with the photo, and the taught model's job when it is one of those
function photoForm(file, job) {
  const form = new FormData();
  form.append("file", file, file.name);
  if (job) form.append("job", job);
  return form;
}

async function predict({ file, card, body, job }) {
  const form = photoForm(file, job);
  try {
    const reply = await answer(await post("/api/predict", form));
    if (reply.error) return showError(body, reply.error);
    const [result] = reply;
    if (result.error) return showError(body, result.error);
    showResult(file, result, card, body, job);
  } catch (e) {
    showError(body, `no answer from the server (${e.message})`);
  }
}

function showError(body, message) {
  body.querySelector(".pending")?.remove();
  body.append(el("p", { className: "error", textContent: `cannot read it: ${message}` }));
}

function showResult(file, result, card, body, job) {
  body.querySelector(".pending")?.remove();
  const [best] = result.predictions;
  const badges = el("div", { className: "badges" });
  if (result.species?.length && !result.not_a_pet) {  // no cat or dog to name where there may be no pet
    const [likely] = result.species;
    badges.append(el("span", { className: "badge species", textContent: `${readable(likely.label)} ${percent(likely.probability)}` }));
  }
  // the ImageNet classifier the model keeps sees no cat or dog (or, for a folder model, no animal)
  if (result.not_a_pet) badges.append(el("span", { className: "badge warn not-a-pet", textContent: "not a pet?" }));
  const bars = el("ul", { className: "bars" }, ...result.predictions.map(({ label, probability }) =>
    el("li", {}, el("span", { className: "bar" }, el("span", { style: `width: ${100 * probability}%` }),
                    el("em", { textContent: readable(label), title: label })),
           el("span", { className: "p", textContent: percent(probability) }))));
  const button = el("button", { type: "button", textContent: "Where did it look?" });
  button.onclick = () => explain(file, card, button, job);
  const heading = result.not_a_pet ? `no pet here? closest: ${readable(best.label)}` : readable(best.label);
  body.append(el("p", { className: result.not_a_pet ? "label doubtful" : "label", textContent: heading }), badges,
              bars, button);
}

async function explain(file, card, button, job) {
  button.disabled = true;
  button.textContent = "looking…";
  const response = await post("/api/explain", photoForm(file, job));
  if (!response.ok) {
    button.textContent = `no map: ${(await answer(response)).error}`;
    return;
  }
  const label = readable(decodeURIComponent(response.headers.get("X-Class")));  // percent-encoded UTF-8
  const probability = Number(response.headers.get("X-Probability"));
  const overlay = el("img", { className: "overlay", alt: `Grad-CAM for ${label}`, src: URL.createObjectURL(await response.blob()) });
  card.append(el("figure", { className: "cam" }, overlay, el("figcaption", {
    textContent: `Grad-CAM: where the evidence for ${label} (${percent(probability)}) lies in the square the ` +
                 "network sees; red is strongest, blue weakest." })));
  button.remove();
}

// --- wiring ----------------------------------------------------------------------------------------------------

// photos chosen with `input` or dropped on `zone` go to onFiles(files)
function dropZone(zone, input, onFiles) {
  input.addEventListener("change", () => {
    onFiles([...input.files]);
    input.value = ""; // the same photo can be chosen again
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();
    zone.classList.remove("over");
    onFiles([...e.dataTransfer.files]);
  });
}

dropZone(document.getElementById("drop"), document.getElementById("files"), (files) => addPhotos(files));
// a photo dropped beside the zone would make the browser leave the page for it
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());
showModel();
