// aevb explore: the page's script. Plain JavaScript, no library, no build step: everything is
// drawn on <canvas> elements, and every decode is one small JSON request to the server, which
// runs the run's own model (see docs/EXPLORE.md).
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];
const MAP_SIZE = 560;
const state = {
  info: null, points: null, projection: null, view: null,
  cursor: null, hovered: -1, a: null, b: null, nextPick: "a",
  path: null, sliderPoint: null, grid: null, gridImages: null, layer: null,
};
const timings = [];  // one record per decode shown: {fetch, total} in ms (performance.now)
window.aevbExplore = { state, timings, ready: false, decodes: 0 };

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ requests
async function api(path, params) {
  const q = new URLSearchParams(params || {}).toString();
  const res = await fetch("/api/" + path + (q ? "?" + q : ""), { cache: "no-store" });
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

function showError(e) {
  const s = $("status");
  s.textContent = String(e.message || e);
  s.hidden = false;
}

function clearError() { $("status").hidden = true; }

function projParams() { return { projection: state.projection }; }

function fmt(v, digits) { return Number(v).toFixed(digits === undefined ? 3 : digits); }

// ------------------------------------------------------------------ drawing data
function imageShape() {
  const s = state.info.image_shape;
  return s.length === 3 ? s : [s[0], s[1], 1];
}

function imageCanvas(payload, size) {
  const [h, w, c] = imageShape();
  const off = document.createElement("canvas");
  off.width = w;
  off.height = h;
  const ctx = off.getContext("2d");
  const img = ctx.createImageData(w, h);
  const px = payload.pixels;
  for (let k = 0; k < w * h; k++) {
    const r = c === 3 ? px[3 * k] : px[k];
    img.data[4 * k] = r;
    img.data[4 * k + 1] = c === 3 ? px[3 * k + 1] : r;
    img.data[4 * k + 2] = c === 3 ? px[3 * k + 2] : r;
    img.data[4 * k + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  const out = document.createElement("canvas");
  const scale = Math.max(1, Math.floor(size / Math.max(w, h)));
  out.width = w * scale;
  out.height = h * scale;
  const octx = out.getContext("2d");
  octx.imageSmoothingEnabled = false;
  octx.drawImage(off, 0, 0, out.width, out.height);
  return out;
}

const MAX_COLUMNS = 40;

function valuesTable(rows, rowNames) {
  const cols = state.info.columns;
  const shown = Math.min(cols.length, MAX_COLUMNS);
  const table = document.createElement("table");
  table.className = "values";
  const head = table.insertRow();
  head.appendChild(document.createElement("th"));
  for (let k = 0; k < shown; k++) {
    const th = document.createElement("th");
    th.textContent = cols[k];
    head.appendChild(th);
  }
  if (shown < cols.length) head.appendChild(document.createElement("th")).textContent = "…";
  rows.forEach((payload, r) => {
    const tr = table.insertRow();
    const th = document.createElement("th");
    th.textContent = rowNames[r];
    tr.appendChild(th);
    for (let k = 0; k < shown; k++) tr.insertCell().textContent = Number(payload.values[k]).toPrecision(4);
    if (shown < cols.length) tr.insertCell().textContent = `+${cols.length - shown}`;
  });
  const wrap = document.createElement("div");
  wrap.className = "table-wrap";
  wrap.appendChild(table);
  return wrap;
}

function isImage() { return state.info.kind === "image"; }

function showOne(el, payload, size) {
  el.replaceChildren(isImage() ? imageCanvas(payload, size) : valuesTable([payload], ["decoded"]));
}

// ------------------------------------------------------------------ the map
function fitView() {
  const xs = state.points.x, ys = state.points.y;
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (!(x1 > x0)) { x0 -= 1; x1 += 1; }
  if (!(y1 > y0)) { y0 -= 1; y1 += 1; }
  const px = 0.06 * (x1 - x0), py = 0.06 * (y1 - y0);
  state.view = { x0: x0 - px, x1: x1 + px, y0: y0 - py, y1: y1 + py };
}

function toScreen(x, y) {
  const v = state.view;
  return [(x - v.x0) / (v.x1 - v.x0) * MAP_SIZE, MAP_SIZE - (y - v.y0) / (v.y1 - v.y0) * MAP_SIZE];
}

function toMap(sx, sy) {
  const v = state.view;
  return [v.x0 + sx / MAP_SIZE * (v.x1 - v.x0), v.y0 + (MAP_SIZE - sy) / MAP_SIZE * (v.y1 - v.y0)];
}

function labelColour(code) {
  if (code === null || code === undefined) return "#3b6fb6";
  return code < PALETTE.length ? PALETTE[code] : `hsl(${(code * 47) % 360} 60% 45%)`;
}

function mapContext() {
  const canvas = $("map");
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== MAP_SIZE * dpr) {
    canvas.width = MAP_SIZE * dpr;
    canvas.height = MAP_SIZE * dpr;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return ctx;
}

function drawGridBehind(ctx) {
  if (!state.gridImages || !$("grid-toggle").checked) return;
  const n = state.grid.n, cell = MAP_SIZE / n;
  ctx.globalAlpha = 0.45;
  ctx.imageSmoothingEnabled = false;
  state.gridImages.forEach((im, k) => {
    ctx.drawImage(im, (k % n) * cell, Math.floor(k / n) * cell, cell, cell);
  });
  ctx.globalAlpha = 1;
}

function drawAxes(ctx) {
  const v = state.view;
  ctx.strokeStyle = "#e3e7ec";
  ctx.lineWidth = 1;
  if (v.x0 < 0 && v.x1 > 0) {
    const [sx] = toScreen(0, 0);
    ctx.beginPath(); ctx.moveTo(sx, 0); ctx.lineTo(sx, MAP_SIZE); ctx.stroke();
  }
  if (v.y0 < 0 && v.y1 > 0) {
    const [, sy] = toScreen(0, 0);
    ctx.beginPath(); ctx.moveTo(0, sy); ctx.lineTo(MAP_SIZE, sy); ctx.stroke();
  }
  const axes = state.points.projection.axes;
  ctx.fillStyle = "#5d6875";
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillText(`${axes[0]} →  [${fmt(v.x0, 2)}, ${fmt(v.x1, 2)}]`, 8, MAP_SIZE - 8);
  ctx.save();
  ctx.translate(14, MAP_SIZE - 40);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(`${axes[1]} →  [${fmt(v.y0, 2)}, ${fmt(v.y1, 2)}]`, 0, 0);
  ctx.restore();
}

function drawMarker(ctx, u, colour, label) {
  const [sx, sy] = toScreen(u[0], u[1]);
  ctx.strokeStyle = colour;
  ctx.lineWidth = 2;
  ctx.beginPath(); ctx.arc(sx, sy, 7, 0, 2 * Math.PI); ctx.stroke();
  if (label) {
    ctx.fillStyle = colour;
    ctx.font = "bold 13px system-ui, sans-serif";
    ctx.fillText(label, sx + 9, sy - 8);
  }
}

function pointsLayer() {
  // the grid, axes and points, drawn once per view into an offscreen canvas: a cursor move
  // then only copies it and draws the markers
  if (state.layer) return state.layer;
  const dpr = window.devicePixelRatio || 1;
  const layer = document.createElement("canvas");
  layer.width = MAP_SIZE * dpr;
  layer.height = MAP_SIZE * dpr;
  const ctx = layer.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, MAP_SIZE, MAP_SIZE);
  drawGridBehind(ctx);
  drawAxes(ctx);
  const p = state.points, labels = p.labels;
  const radius = p.x.length < 1000 ? 3.5 : 2.6;
  ctx.globalAlpha = 0.75;
  for (let k = 0; k < p.x.length; k++) {
    const [sx, sy] = toScreen(p.x[k], p.y[k]);
    ctx.fillStyle = labelColour(labels ? labels[k] : null);
    ctx.beginPath(); ctx.arc(sx, sy, radius, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.globalAlpha = 1;
  state.layer = layer;
  return layer;
}

function drawMap() {
  if (!state.points) return;
  const ctx = mapContext();
  ctx.drawImage(pointsLayer(), 0, 0, MAP_SIZE, MAP_SIZE);
  const p = state.points;
  if (state.path) {
    ctx.strokeStyle = "#111";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    state.path.p.forEach((u, k) => {
      const [sx, sy] = toScreen(u[0], u[1]);
      if (k) ctx.lineTo(sx, sy); else ctx.moveTo(sx, sy);
    });
    ctx.stroke();
  }
  if (state.a !== null) drawMarker(ctx, [p.x[state.a], p.y[state.a]], "#111", "A");
  if (state.b !== null) drawMarker(ctx, [p.x[state.b], p.y[state.b]], "#111", "B");
  if (state.sliderPoint) drawMarker(ctx, state.sliderPoint, "#7c3aed", "t");
  if (state.hovered >= 0) drawMarker(ctx, [p.x[state.hovered], p.y[state.hovered]], "#0f766e");
  if (state.cursor) {
    const [sx, sy] = toScreen(state.cursor[0], state.cursor[1]);
    ctx.strokeStyle = "#c2410c";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(sx - 10, sy); ctx.lineTo(sx + 10, sy); ctx.moveTo(sx, sy - 10); ctx.lineTo(sx, sy + 10);
    ctx.stroke();
  }
}

function nearestPoint(sx, sy, radius) {
  const p = state.points;
  let best = -1, bestD = radius * radius;
  for (let k = 0; k < p.x.length; k++) {
    const [px, py] = toScreen(p.x[k], p.y[k]);
    const d = (px - sx) ** 2 + (py - sy) ** 2;
    if (d <= bestD) { best = k; bestD = d; }
  }
  return best;
}

function eventXY(ev) {
  const r = $("map").getBoundingClientRect();
  return [(ev.clientX - r.left) * MAP_SIZE / r.width, (ev.clientY - r.top) * MAP_SIZE / r.height];
}

// ------------------------------------------------------------------ decode at the cursor
let decodeBusy = false;
let decodePending = null;

function requestDecode(u) {
  decodePending = u;
  if (!decodeBusy) pumpDecode();
}

async function pumpDecode() {
  decodeBusy = true;
  while (decodePending) {
    const u = decodePending;
    decodePending = null;
    const t0 = performance.now();
    try {
      const r = await api("decode", { p: `${u[0]},${u[1]}`, ...projParams() });
      const t1 = performance.now();
      showOne($("decoded"), r.data, 224);
      const t2 = performance.now();
      timings.push({ fetch: t1 - t0, total: t2 - t0 });
      window.aevbExplore.decodes += 1;
      $("decoded").dataset.version = String(window.aevbExplore.decodes);
      $("cursor-info").textContent = `map (${fmt(u[0])}, ${fmt(u[1])})  z = [${r.z.map((v) => fmt(v, 2)).join(", ")}]`;
      showLatency();
      clearError();
    } catch (e) { showError(e); }
  }
  decodeBusy = false;
}

function showLatency() {
  const f = timings.map((t) => t.fetch).sort((a, b) => a - b);
  const med = f[Math.floor(f.length / 2)];
  const last = timings[timings.length - 1];
  $("latency").textContent = `decode round trip ${fmt(last.fetch, 1)} ms (median ${fmt(med, 1)} ms over ${f.length}); drawn in ${fmt(last.total - last.fetch, 1)} ms`;
}

// ------------------------------------------------------------------ hover and pick
const pointCache = new Map();

async function showPoint(i) {
  try {
    let r = pointCache.get(i);
    if (!r) {
      r = await api("point", { i });
      pointCache.set(i, r);
    }
    if (state.hovered !== i) return;
    const el = $("hovered");
    if (isImage()) {
      const fig = (payload, caption) => {
        const f = document.createElement("figure");
        f.appendChild(imageCanvas(payload, 140));
        f.appendChild(document.createElement("figcaption")).textContent = caption;
        return f;
      };
      el.replaceChildren(fig(r.data, "datapoint"), fig(r.reconstruction, "reconstruction"));
    } else {
      el.replaceChildren(valuesTable([r.data, r.reconstruction], ["datapoint", "reconstruction"]));
    }
    const label = r.label_name !== null ? `, label ${r.label_name}` : "";
    $("hover-info").textContent = `point ${i} (row ${r.row} of ${state.info.split})${label}; z = [${r.z.map((v) => fmt(v, 2)).join(", ")}]`;
  } catch (e) { showError(e); }
}

function pick(i) {
  if (state.nextPick === "a") { state.a = i; state.nextPick = "b"; $("point-a").value = i; }
  else { state.b = i; state.nextPick = "a"; $("point-b").value = i; }
  loadPath();
}

let drag = null;

function onPointerDown(ev) {
  const [sx, sy] = eventXY(ev);
  drag = { sx, sy, moved: false };
  $("map").setPointerCapture(ev.pointerId);
}

function onPointerMove(ev) {
  const [sx, sy] = eventXY(ev);
  if (drag) {
    if (Math.abs(sx - drag.sx) + Math.abs(sy - drag.sy) > 3) drag.moved = true;
    if (drag.moved) {
      state.cursor = toMap(sx, sy);
      requestDecode(state.cursor);
      drawMap();
    }
    return;
  }
  const k = nearestPoint(sx, sy, 7);
  if (k !== state.hovered) {
    state.hovered = k;
    drawMap();
    if (k >= 0) showPoint(k);
  }
}

function onPointerUp(ev) {
  if (!drag) return;
  const [sx, sy] = eventXY(ev);
  const k = drag.moved ? -1 : nearestPoint(sx, sy, 7);
  if (!drag.moved) {
    if (k >= 0) pick(k);
    else { state.cursor = toMap(sx, sy); requestDecode(state.cursor); }
  }
  drag = null;
  drawMap();
}

// ------------------------------------------------------------------ interpolation
function pathParams() {
  return { a: state.a, b: state.b, method: $("method").value, ...projParams() };
}

async function loadPath() {
  const n = state.points.x.length;
  const ok = (v) => Number.isInteger(v) && v >= 0 && v < n;
  if (!ok(state.a) || !ok(state.b)) {
    $("interp-note").textContent = "Click two points of the map (or type their numbers).";
    return;
  }
  try {
    const steps = Math.min(64, Math.max(2, parseInt($("steps").value, 10) || 10));
    const r = await api("path", { ...pathParams(), steps });
    state.path = r;
    const strip = $("strip");
    if (isImage()) {
      strip.replaceChildren(...r.data.map((payload, k) => {
        const f = document.createElement("figure");
        f.appendChild(imageCanvas(payload, 72));
        f.appendChild(document.createElement("figcaption")).textContent = fmt(r.t[k], 2);
        return f;
      }));
    } else {
      strip.replaceChildren(valuesTable(r.data, r.t.map((t) => `t=${fmt(t, 2)}`)));
    }
    $("interp-note").textContent = `${r.method} path from point ${state.a} to point ${state.b} between their encoder means (in all ${state.info.latent_dim} latent dimensions; the line on the map is its projection)`;
    strip.dataset.frames = String(r.data.length);
    await onSlider();
    drawMap();
    clearError();
  } catch (e) { showError(e); }
}

let sliderBusy = false;
let sliderPending = false;

async function onSlider() {
  if (state.a === null || state.b === null) return;
  sliderPending = true;
  if (sliderBusy) return;
  sliderBusy = true;
  while (sliderPending) {
    sliderPending = false;
    const t = Number($("slider").value) / 1000;
    $("slider-t").textContent = `t = ${fmt(t)}`;
    try {
      const r = await api("path", { ...pathParams(), t });
      state.sliderPoint = r.p[0];
      showOne($("slider-view"), r.data[0], 160);
      $("slider-view").dataset.t = String(t);
      highlightFrame(t);
      drawMap();
    } catch (e) { showError(e); }
  }
  sliderBusy = false;
}

function highlightFrame(t) {
  if (!state.path) return;
  const k = Math.round(t * (state.path.t.length - 1));
  const items = isImage() ? $("strip").querySelectorAll("figure") : $("strip").querySelectorAll("tr");
  items.forEach((el, j) => el.classList.toggle("current", isImage() ? j === k : j === k + 1));
}

// ------------------------------------------------------------------ projection and grid
async function loadPoints() {
  state.points = await api("points", projParams());
  state.layer = null;
  state.path = null;
  state.sliderPoint = null;
  state.cursor = null;
  fitView();
  describeProjection();
  await loadGrid();
  drawMap();
  if (state.a !== null && state.b !== null) loadPath();
}

function others(n, what) { return n === 1 ? `${what} is` : `${n} ${what}s are`; }

function describeProjection() {
  const info = state.info, pr = state.points.projection;
  let note;
  if (info.latent_dim === 1) note = "N_z = 1: the horizontal axis is z; the vertical one is unused.";
  else if (info.latent_dim === 2) note = "The map is the latent space itself (N_z = 2).";
  else if (pr.name === "pca") {
    note = `PCA of the encoder means: PC1 and PC2 explain ${fmt(100 * pr.explained[0], 1)} % and ${fmt(100 * pr.explained[1], 1)} % of their variance. A map point decodes at its pre-image: the mean encoder mean plus its PCA components; the other ${others(info.latent_dim - 2, "direction")} held at the mean.`;
  } else {
    note = `Latent axes ${pr.axes[0]} and ${pr.axes[1]}; a map point decodes with the other ${others(info.latent_dim - 2, "coordinate")} held at their mean over the points.`;
  }
  const thinned = info.thinned ? ` Showing ${info.points} of ${info.total} points (evenly spaced).` : "";
  $("map-note").textContent = `${info.points} ${info.split} points, their encoder means. ${note}${thinned}`;
  $("map").dataset.points = String(state.points.x.length);
}

async function loadGrid() {
  state.gridImages = null;
  state.layer = null;
  if (!isImage() || !$("grid-toggle").checked) return;
  const v = state.view, n = 16;
  try {
    state.grid = await api("grid", { n, x: `${v.x0},${v.x1}`, y: `${v.y0},${v.y1}`, ...projParams() });
    state.gridImages = state.grid.data.map((payload) => imageCanvas(payload, 32));
  } catch (e) { showError(e); }
  state.layer = null;
}

function setUpProjection() {
  const info = state.info, sel = $("projection");
  const add = (el, value, text) => {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    el.appendChild(o);
  };
  if (info.latent_dim <= 2) {
    add(sel, "latent", "the latent space");
    sel.disabled = true;
  } else {
    add(sel, "pca", "PCA");
    add(sel, "axes", "two latent axes");
    for (let k = 1; k <= info.latent_dim; k++) {
      add($("axis-i"), k, `z${k}`);
      add($("axis-j"), k, `z${k}`);
    }
    $("axis-j").value = "2";
  }
  state.projection = info.default_projection;
  const change = () => {
    const axes = sel.value === "axes";
    $("axes-pick").hidden = !axes;
    if (axes && $("axis-i").value === $("axis-j").value) return showError(new Error("choose two different axes"));
    state.projection = axes ? `z${$("axis-i").value},z${$("axis-j").value}` : sel.value;
    loadPoints().catch(showError);
  };
  sel.addEventListener("change", change);
  $("axis-i").addEventListener("change", change);
  $("axis-j").addEventListener("change", change);
}

// ------------------------------------------------------------------ the run
function drawChart(canvas, series, opts) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 58, R = 10, T = 10, B = 30;
  ctx.clearRect(0, 0, W, H);
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) {
    ctx.fillStyle = "#5d6875";
    ctx.fillText(opts.empty || "nothing logged", L, H / 2);
    return;
  }
  const logx = opts.logx && pts.every((p) => p[0] > 0);
  const fx = (x) => (logx ? Math.log10(x) : x);
  let x0 = Math.min(...pts.map((p) => fx(p[0]))), x1 = Math.max(...pts.map((p) => fx(p[0])));
  let y0 = Math.min(...pts.map((p) => p[1])), y1 = Math.max(...pts.map((p) => p[1]));
  if (!(x1 > x0)) x1 = x0 + 1;
  if (!(y1 > y0)) { y0 -= 1; y1 += 1; }
  const sx = (x) => L + (fx(x) - x0) / (x1 - x0) * (W - L - R);
  const sy = (y) => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  ctx.strokeStyle = "#98a2ad";
  ctx.strokeRect(L, T, W - L - R, H - T - B);
  ctx.fillStyle = "#5d6875";
  ctx.font = "11px system-ui, sans-serif";
  for (let k = 0; k <= 4; k++) {
    const y = y0 + (y1 - y0) * k / 4;
    ctx.fillText(y.toPrecision(4), 2, sy(y) + 4);
  }
  const xl = (v) => Math.round(logx ? 10 ** v : v).toLocaleString("en");
  ctx.fillText(xl(x0), L, H - 12);
  const right = xl(x1);
  ctx.fillText(right, W - R - ctx.measureText(right).width, H - 12);
  ctx.fillText(opts.xlabel || "training samples", W / 2 - 40, H - 2);
  series.forEach((s) => {
    ctx.strokeStyle = s.colour;
    ctx.setLineDash(s.dash || []);
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    s.points.forEach((p, k) => (k ? ctx.lineTo(sx(p[0]), sy(p[1])) : ctx.moveTo(sx(p[0]), sy(p[1]))));
    ctx.stroke();
  });
  ctx.setLineDash([]);
  let ly = T + 12;
  series.forEach((s) => {
    ctx.strokeStyle = s.colour;
    ctx.setLineDash(s.dash || []);
    ctx.beginPath(); ctx.moveTo(L + 8, ly - 4); ctx.lineTo(L + 30, ly - 4); ctx.stroke();
    ctx.fillStyle = s.colour;
    ctx.fillText(s.name, L + 36, ly);
    ly += 13;
  });
  ctx.setLineDash([]);
}

const DASH = { train: [], test: [6, 4], valid: [2, 3] };

function curveSeries(key, colour, prefix) {
  const curves = state.info.curves.filter((r) => r.samples_seen > 0);
  return ["train", "test", "valid"].map((split) => ({
    name: `${prefix || ""}${split}`,
    colour,
    dash: DASH[split],
    points: curves.filter((r) => r[`${split}_${key}`] !== undefined).map((r) => [r.samples_seen, r[`${split}_${key}`]]),
  })).filter((s) => s.points.length);
}

function drawRun() {
  const info = state.info;
  drawChart($("curves"), curveSeries("bound", "#1f77b4"), { logx: true, empty: "no bound logged" });
  drawChart($("recon"), curveSeries("reconstruction", "#2ca02c"), { logx: true, empty: "not logged by this run" });
  drawChart($("kl"), curveSeries("kl", "#d62728"), { logx: true, empty: "not logged by this run" });
  const act = info.active;
  if (act) {
    const bars = act.kl_per_dim;
    const canvas = $("active"), ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, L = 40, B = 24, T = 10;
    const top = Math.max(...bars, 1e-9);
    ctx.clearRect(0, 0, W, H);
    const bw = (W - L - 10) / bars.length;
    bars.forEach((v, k) => {
      const active = act.activity ? act.activity[k] > 0.01 : v > 0.01;
      ctx.fillStyle = active ? "#1f77b4" : "#c5ccd4";
      const h = v / top * (H - T - B);
      ctx.fillRect(L + k * bw + 1, H - B - h, Math.max(1, bw - 2), h);
    });
    ctx.fillStyle = "#5d6875";
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillText(fmt(top, 2), 2, T + 8);
    ctx.fillText("0", 2, H - B);
    ctx.fillText(`latent dimension 1 … ${bars.length}`, L, H - 6);
    ctx.strokeStyle = "#98a2ad";
    ctx.strokeRect(L, T, W - L - 10, H - T - B);
    const units = act.active_units !== null && act.active_units !== undefined ? `${act.active_units} of ${bars.length} dimensions active` : "";
    $("active-caption").textContent = `KL per latent dimension (nats, ${act.split} split, at ${act.samples_seen.toLocaleString()} samples); ${units} (blue: Cov_x E_q[z_d|x] > 0.01)`;
  } else {
    $("active-caption").textContent = "Active units: not logged by this run";
  }
  $("card").textContent = info.card;
}

function drawLegend() {
  const info = state.info, el = $("legend");
  el.replaceChildren();
  if (!state.points.labels) return;
  const counts = new Map();
  state.points.labels.forEach((c) => counts.set(c, (counts.get(c) || 0) + 1));
  [...counts.keys()].sort((a, b) => a - b).forEach((c) => {
    const span = document.createElement("span");
    const dot = document.createElement("i");
    dot.style.background = labelColour(c);
    span.appendChild(dot);
    const name = info.label_names && info.label_names[c] !== undefined ? info.label_names[c] : String(c);
    span.appendChild(document.createTextNode(`${name} (${counts.get(c)})`));
    el.appendChild(span);
  });
}

// ------------------------------------------------------------------ start
async function start() {
  try {
    state.info = await api("info");
    const info = state.info;
    $("run-name").textContent = info.name;
    const shape = info.image_shape ? info.image_shape.join("×") + " images" : `${info.columns.length} columns`;
    const trained = info.trained_on !== info.data ? ` of a model trained on ${info.trained_on}` : "";
    $("run-line").textContent = `${info.data} ${info.split} split (${shape})${trained}; ${info.likelihood} likelihood, N_z = ${info.latent_dim}, ${info.posterior} posterior, ${info.prior} prior; run ${info.run}`;
    if (!info.spherical) $("method").querySelector("[value=spherical]").disabled = true;
    if (!isImage()) $("grid-toggle").disabled = true;
    setUpProjection();
    await loadPoints();
    drawLegend();
    drawRun();
    for (const id of ["point-a", "point-b"]) {
      $(id).max = info.points - 1;
      $(id).addEventListener("change", () => {
        const v = parseInt($(id).value, 10);
        state[id === "point-a" ? "a" : "b"] = Number.isInteger(v) ? v : null;
        loadPath();
      });
    }
    $("method").addEventListener("change", loadPath);
    $("steps").addEventListener("change", loadPath);
    $("slider").addEventListener("input", onSlider);
    $("grid-toggle").addEventListener("change", async () => { await loadGrid(); drawMap(); });
    const map = $("map");
    map.addEventListener("pointerdown", onPointerDown);
    map.addEventListener("pointermove", onPointerMove);
    map.addEventListener("pointerup", onPointerUp);
    map.addEventListener("pointerleave", () => { if (!drag && state.hovered >= 0) { state.hovered = -1; drawMap(); } });
    window.aevbExplore.ready = true;
  } catch (e) { showError(e); }
}

if (performance.setResourceTimingBufferSize) performance.setResourceTimingBufferSize(10000);
start();
