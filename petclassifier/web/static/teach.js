// The teaching part of the page: classes of photos go to POST /api/train; GET /api/train/ID is read every
// 400 ms while it trains (1.5 s while it waits its turn), each epoch's losses and accuracy drawn as they arrive; then photos are tried on the
// taught model (its job) and its checkpoint downloaded. Uses app.js's el, chart, readable, post, answer, addPhotos
// and dropZone.
"use strict";

const teachClasses = document.getElementById("teach-classes");
const trainButton = document.getElementById("train");
const trainStatus = document.getElementById("train-status");
const classes = []; // {name input, files}
let taughtJob = null;
let taughtFiles = []; // the photos of the job, in upload order: the doctor's findings name them by place

function addClass(name) {
  const entry = { files: [] };
  const input = el("input", { className: "class-name", value: name, placeholder: "class name", maxLength: 100 });
  const files = el("input", { type: "file", accept: "image/*,.heic,.heif", multiple: true });
  const count = el("span", { className: "hint count", textContent: "no photos yet" });
  const thumbs = el("div", { className: "thumbs" });
  const remove = el("button", { type: "button", className: "remove", title: "remove this class", textContent: "×" });
  const zone = el("div", { className: "class drop" }, el("div", { className: "class-head" }, input, remove),
                  el("p", {}, el("label", { className: "button" }, "add photos", files), " or drop them here ", count),
                  thumbs);
  entry.input = input;
  dropZone(zone, files, (chosen) => {
    entry.files.push(...chosen);
    for (const file of chosen.slice(0, Math.max(0, 24 - thumbs.children.length))) {
      const img = el("img", { alt: file.name, title: file.name, src: URL.createObjectURL(file) });
      img.onerror = () => img.remove();
      thumbs.append(img);
    }
    count.textContent = `${entry.files.length} photo${entry.files.length === 1 ? "" : "s"}`;
  });
  remove.onclick = () => {
    classes.splice(classes.indexOf(entry), 1);
    zone.remove();
  };
  classes.push(entry);
  teachClasses.append(zone);
}

async function train() {
  const names = classes.map((c) => c.input.value.trim());
  const twice = names.find((n, i) => n && names.indexOf(n) !== i);
  if (twice) {  // their photos would become one class
    trainStatus.textContent = `two classes are named "${twice}": give each its own name`;
    return;
  }
  const form = new FormData();
  for (const c of classes) for (const file of c.files) form.append("file", file, file.name);
  form.append("labels", JSON.stringify(classes.flatMap((c, i) => c.files.map(() => names[i]))));
  for (const key of ["epochs", "batch_size", "lr"]) form.append(key, document.getElementById(`set-${key}`).value);
  trainButton.disabled = true;
  trainStatus.textContent = "sending the photos…";
  try {
    const reply = await answer(await post("/api/train", form));
    if (reply.error) throw new Error(reply.error);
    taughtJob = reply.job;
    taughtFiles = classes.flatMap((c) => c.files);
    document.getElementById("taught").hidden = true;
    document.getElementById("progress").hidden = false;
    await follow(reply.job);
  } catch (e) {
    trainStatus.textContent = `cannot train: ${e.message}`;
  } finally {
    trainButton.disabled = false;
  }
}

// read the job's state until it ends, drawing each epoch as it arrives
async function follow(job) {
  for (;;) {
    const report = await answer(await fetch(`/api/train/${job}`));
    if (report.error && !report.status) throw new Error(report.error);
    showProgress(report);
    if (report.status === "failed") throw new Error(report.error);
    if (report.status === "done") return showTaught(report);
    // a waiting job only moves up the line: asked after less often, so thirty learners leave the server free
    await new Promise((done) => setTimeout(done, report.status === "queued" ? 1500 : 400));
  }
}

function showProgress(report) {
  const rows = report.epochs;
  const last = rows[rows.length - 1];
  trainStatus.textContent = report.status === "queued"
    ? `waiting for its turn: number ${report.place} in line (${report.at_once} ${report.at_once === 1 ? "job" : "jobs"} ` +
      "train at once)…"
    : `${report.status}: ${report.seconds.toFixed(0)} s` +
      (last ? `, epoch ${last.epoch}${report.recipe ? ` of ${report.recipe.epochs}` : ""}` : "");
  // what training prints as it goes: the frozen passes, each epoch, the calibration
  document.getElementById("phase").textContent = report.status === "running" ? report.phase : "";
  const r = report.recipe;
  if (r) {
    document.getElementById("recipe").textContent =
      `${r.model} (frozen body, ${r.image_size} px), ${r.augment_views} views of each photo, batches of ` +
      `${r.batch_size}, ${r.epochs} epochs, learning rate ${r.lr}, frozen pass on ${r.backend}` +
      (report.device ? `, on the ${report.device === "cuda" ? "GPU" : "CPU"}` : "");
  }
  const curves = document.getElementById("train-curves");
  if (rows.length) {
    curves.replaceChildren(
      chart("loss per epoch: training (orange), held-out photos (blue)", rows,
            [["train_loss", "#e0803a"], ["val_loss", "#2f6fdf"]], 0, null),
      chart(`accuracy on the ${heldOut(last)} per epoch`, rows, [["val_accuracy", "#2f6fdf"]], 0, 1));
  }
}

// how many photos the held-out curve is drawn from: with few, each one moves it by a large step
function heldOut(row) {
  const n = row.val_photos;
  if (n === undefined) return "held-out photos";
  return n === 1 ? "1 held-out photo" : `${n} held-out photos (each one ${Math.round(100 / n)}%)`;
}

function showTaught(report) {
  const names = report.classes.map((c) => c.name);
  const matrix = report.cross_fitted_confusion || [];
  const rows = matrix.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0);
    return el("tr", {}, el("th", { textContent: readable(names[i]), title: names[i] }),
              el("td", { className: "accuracy", textContent: total ? percent(row[i] / total) : "–" }),
              ...row.map((n, j) => el("td", { className: i === j ? "hit" : n ? "miss" : "", textContent: String(n) })));
  });
  const head = el("tr", {}, el("th", { textContent: "class" }), el("th", { textContent: "accuracy" }),
                  ...names.map((n) => el("th", { textContent: readable(n), title: n })));
  document.getElementById("per-class").replaceChildren(el("table", { className: "confusion" }, head, ...rows));
  const download = document.getElementById("download");
  download.href = report.checkpoint;
  trainStatus.textContent = `done in ${report.seconds.toFixed(0)} s` +
    (report.calibration ? `; probabilities calibrated (temperature ${report.calibration.temperature.toFixed(2)})` : "");
  showFindings(report.doctor);
  document.getElementById("try-results").replaceChildren();
  document.getElementById("taught").hidden = false;
}

// what `petclassifier doctor` found among the job's photos: each a thumbnail and what to look at
function showFindings(found) {
  const box = document.getElementById("findings");
  if (!found) return box.replaceChildren();
  const thumb = (i) => el("img", { alt: taughtFiles[i]?.name ?? "", title: taughtFiles[i]?.name ?? "",
                                   src: taughtFiles[i] ? URL.createObjectURL(taughtFiles[i]) : "" });
  const item = (photos, text) => el("figure", { className: "finding" }, ...photos.map(thumb),
                                    el("figcaption", { textContent: text }));
  const items = [
    ...found.label_issues.map((f) => item([f.photo], `filed under ${readable(f.given)}, looks like ` +
                                                      `${readable(f.suggested)}`)),
    ...found.duplicates.map((d) => item(d.photos, d.kind === "exact" ? "the same file twice" : "the same photo twice")),
    ...found.not_pets.map((f) => item([f.photo], `no pet here? (${f.kind})`)),
  ];
  box.replaceChildren(el("h3", { textContent: "Photos to look at" }),
    el("p", { className: "hint", textContent: items.length
      ? "What the doctor found among your photos (petclassifier doctor): a photo under the wrong class, the same " +
        "photo twice or one with no pet teaches the network wrong. Fix them and train again."
      : "The doctor found nothing to fix: no photo that looks like another class, none twice, none without a pet." }),
    el("div", { className: "findings" }, ...items));
}

dropZone(document.getElementById("try"), document.getElementById("try-files"),
         (files) => addPhotos(files, document.getElementById("try-results"), taughtJob));
document.getElementById("add-class").onclick = () => addClass(`class ${classes.length + 1}`);
trainButton.onclick = train;
addClass("class 1");
addClass("class 2");
