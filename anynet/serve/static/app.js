// anynet serve: the drawing page. Draw on #pad; the picture goes to POST /api/predict as a PNG
// (throttled while drawing, once more when the stroke ends); the answer fills #bars,
// #prediction and #seen (the 28x28 image the network was given). Plain JavaScript, no library.
//
// For tests and scripts: <body data-busy> is "1" while a stroke or a request is under way,
// "0" when the page shows the answer for what is on the canvas; data-shown counts answers.
//
// Nothing the server sends is ever parsed as markup: the model's description comes from a model
// file, which may come from a stranger. Text goes in with textContent and elements are made
// with createElement; no innerHTML, outerHTML, insertAdjacentHTML or document.write (a test
// reads this file for them).
"use strict";

const THROTTLE_MS = 150;  // at most one prediction this often while drawing
const TYPES = ["image/png", "image/jpeg"];

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const bars = document.getElementById("bars");
const message = document.getElementById("message");
const predictionEl = document.getElementById("prediction");
const confidenceEl = document.getElementById("confidence");
const votesEl = document.getElementById("votes");

let drawing = false, last = null, inked = false;
let inFlight = false, wanted = null, timer = null, lastSent = 0, generation = 0;

// --- the canvas: white paper, a thick round black stroke --------------------------------------

function setUpPad() {
  const size = Math.round(pad.getBoundingClientRect().width * (window.devicePixelRatio || 1));
  pad.width = pad.height = Math.max(size, 28);
  clearPad();
}

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  inked = false;
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return { x: (event.clientX - box.left) * pad.width / box.width,
           y: (event.clientY - box.top) * pad.height / box.height };
}

function stroke(from, to) {
  ctx.strokeStyle = "#000";
  ctx.lineWidth = pad.width * 0.065;  // about a pen's width on a digit that fills the pad
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  if (from.x === to.x && from.y === to.y) {  // a dot: a zero-length line would draw nothing
    ctx.fillStyle = "#000";
    ctx.arc(from.x, from.y, ctx.lineWidth / 2, 0, 2 * Math.PI);
    ctx.fill();
  } else {
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  }
  inked = true;
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  last = point(event);
  stroke(last, last);  // a dot
  busy();
  schedule();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of (events.length ? events : [event])) {
    const p = point(e);
    stroke(last, p);
    last = p;
  }
  schedule();
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  schedule(true);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

document.getElementById("clear").addEventListener("click", () => {
  clearPad();
  generation += 1;  // answers still on their way are for a picture that is gone
  wanted = null;
  clearTimeout(timer);
  timer = null;
  showEmpty();
  busy();
});

// --- predictions: at most one request in flight, the latest picture wins ----------------------

function schedule(now = false) {
  if (!inked) return;
  wanted = "canvas";
  const wait = now ? 0 : Math.max(0, lastSent + THROTTLE_MS - Date.now());
  clearTimeout(timer);
  timer = setTimeout(() => { timer = null; pump(); }, wait);
  busy();
}

function pump() {
  if (inFlight || wanted === null) return busy();
  const what = wanted;
  wanted = null;
  lastSent = Date.now();
  inFlight = true;  // from now: toBlob is asynchronous too
  if (what === "canvas") {
    pad.toBlob((blob) => send(blob, "image/png"), "image/png");
  } else {
    send(what, what.type);
  }
}

async function send(body, type) {
  busy();
  const mine = generation;
  try {
    const response = await fetch("/api/predict", {
      method: "POST", headers: { "Content-Type": type }, body });
    const answer = await response.json();
    if (mine !== generation) return;
    if (!response.ok) {
      showEmpty();
      message.textContent = answer.error || `the server answered ${response.status}`;
    } else {
      show(answer);
    }
  } catch (error) {
    if (mine === generation) message.textContent = `no answer from the server (${error.message})`;
  } finally {
    inFlight = false;
    if (wanted !== null && timer === null) pump();
    busy();
  }
}

function busy() {
  const active = drawing || inFlight || wanted !== null || timer !== null;
  document.body.dataset.busy = active ? "1" : "0";
}

// --- the answer ------------------------------------------------------------------------------

function makeBars(classes) {
  bars.textContent = "";
  for (let k = 0; k < classes; k++) {
    const li = document.createElement("li");
    li.dataset.class = String(k);
    const track = element("span", "track");
    track.append(element("span", "fill"));
    li.append(element("span", "label", String(k)), track, element("span", "pct"));
    bars.appendChild(li);
  }
}

// <tag class="className">text</tag>, the text as text whatever it holds
function element(tag, className, text = "") {
  const el = document.createElement(tag);
  if (className) el.className = className;
  el.textContent = text;
  return el;
}

function percent(p) {
  if (p < 0.0005) return "<0.1%";
  if (p > 0.9995) return ">99.9%";
  return (100 * p).toFixed(1) + "%";
}

function show(answer) {
  message.textContent = "";
  const best = answer.top[0];
  predictionEl.textContent = String(answer.prediction);
  confidenceEl.textContent = percent(best.probability);
  if (bars.children.length !== answer.top.length) makeBars(answer.top.length);
  for (const { class: k, probability } of answer.top) {
    const li = bars.children[k];
    li.classList.toggle("top", k === answer.prediction);
    li.dataset.probability = String(probability);
    li.querySelector(".fill").style.width = (100 * probability).toFixed(2) + "%";
    li.querySelector(".pct").textContent = percent(probability);
  }
  const image = seen.createImageData(28, 28);
  answer.input.forEach((row, r) => row.forEach((v, c) => {
    const i = 4 * (28 * r + c), g = Math.round(255 * v);
    image.data[i] = image.data[i + 1] = image.data[i + 2] = g;
    image.data[i + 3] = 255;
  }));
  seen.putImageData(image, 0, 0);
  showVotes(answer.members);
  document.body.dataset.shown = String(Number(document.body.dataset.shown) + 1);
}

// a committee's answer: what each member read alone, said when they disagree
function showVotes(members) {
  votesEl.textContent = "";
  if (!Array.isArray(members) || members.length < 2) return;
  const classes = members.map((m) => String(m.prediction));
  votesEl.textContent = new Set(classes).size > 1
    ? `the members read ${classes.join(", ")}`
    : `all ${members.length} members read ${classes[0]}`;
}

function showEmpty() {
  message.textContent = "";
  votesEl.textContent = "";
  predictionEl.textContent = "–";
  confidenceEl.textContent = "";
  for (const li of bars.children) {
    li.classList.remove("top");
    delete li.dataset.probability;
    li.querySelector(".fill").style.width = "0";
    li.querySelector(".pct").textContent = "";
  }
  seen.fillStyle = "#000";
  seen.fillRect(0, 0, 28, 28);
}

// --- a picture from a file: dropped or chosen -----------------------------------------------

function useFile(file) {
  if (!file) return;
  if (!TYPES.includes(file.type)) {
    message.textContent = `${file.name}: not a PNG or JPEG`;
    return;
  }
  const url = URL.createObjectURL(file);
  const picture = new Image();
  picture.onload = () => {  // show it on the pad, fitted, so drawing can go on over it
    clearPad();
    const scale = Math.min(pad.width / picture.width, pad.height / picture.height);
    const w = picture.width * scale, h = picture.height * scale;
    ctx.drawImage(picture, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    URL.revokeObjectURL(url);
  };
  picture.src = url;
  inked = true;
  generation += 1;
  wanted = file;  // the file itself is classified, not its copy on the pad
  clearTimeout(timer);
  timer = null;
  pump();
}

document.getElementById("file").addEventListener("change", (event) => {
  useFile(event.target.files[0]);
  event.target.value = "";
});

const drop = document.getElementById("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("dragging");
});
drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("dragging");
  useFile(event.dataTransfer.files[0]);
});

// --- the model's description -----------------------------------------------------------------

async function describeModel() {
  const el = document.getElementById("model");
  try {
    const m = await (await fetch("/api/model")).json();
    el.textContent = "";
    if (Array.isArray(m.members)) {
      describeCommittee(el, m);
    } else {
      describeOne(el, m);
    }
    makeBars(m.classes);
  } catch (error) {
    el.textContent = `the model's description did not load (${error.message})`;
    makeBars(10);
  }
  showEmpty();
}

// one model: "784-30-10 network · test accuracy 97.46% · 30 epochs · trained ..."
function describeOne(el, m) {
  // each part: text, and a bold value (both text: they come from the model file)
  const parts = [[element("b", "", String(m.architecture)), " network"]];
  if (typeof m.test_accuracy === "number") {
    parts.push(["test accuracy ", element("b", "", (100 * m.test_accuracy).toFixed(2) + "%")]);
  }
  if (typeof m.epochs === "number") parts.push([`${m.epochs} epochs`]);
  if (typeof m.preprocessing === "string" && m.preprocessing !== "none") {
    parts.push(["digits ", element("b", "", m.preprocessing)]);
  }
  if (typeof m.trained_at === "string") {
    parts.push([`trained ${m.trained_at.replace("T", " ").replace("Z", " UTC")}`]);
  }
  parts.forEach((part, i) => el.append(...(i ? [" · "] : []), ...part));
  el.title = `${m.file}, ${m.dtype}, on ${m.backend}`;
}

// a committee: a line saying so, and one item per member under it
function describeCommittee(el, m) {
  el.append(element("b", "", `committee of ${m.members.length}`),
            " networks: the mean of their probabilities");
  el.title = `${m.dtype}, on ${m.backend}`;
  const list = document.getElementById("members");
  list.textContent = "";
  for (const member of m.members) {
    const li = element("li", "", `${member.file}: `);
    li.append(element("b", "", String(member.architecture)));
    if (typeof member.test_accuracy === "number") {
      li.append(` · test accuracy ${(100 * member.test_accuracy).toFixed(2)}%`);
    }
    if (typeof member.preprocessing === "string" && member.preprocessing !== "none") {
      li.append(` · digits ${member.preprocessing}`);
    }
    list.appendChild(li);
  }
  list.hidden = false;
}

setUpPad();
describeModel();
