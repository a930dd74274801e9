// The run page: follow the run's training events over server-sent events, draw the loss curve as inline SVG and
// append new lines to the log. Without JavaScript the page still lists the log as it was when loaded.
(function () {
  "use strict";
  const run = document.getElementById("run");
  const svg = document.getElementById("loss-chart");
  if (!run || !svg) return;
  const NS = "http://www.w3.org/2000/svg";
  const W = 640, H = 260, PAD = { l: 56, r: 16, t: 14, b: 34 };
  const train = [], evals = [];
  let total = 0;
  const log = document.getElementById("run-log");
  const shown = Number(run.dataset.count || "0");
  let seen = 0;

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function describe(e) {
    if (e.type === "train") {
      return `step ${e.step}/${e.total_steps} · loss ${e.loss.toFixed(4)} · lr ${e.lr.toExponential(2)} · ` +
        `${e.tokens_per_s.toFixed(1)} tok/s`;
    }
    if (e.type === "eval") return `eval at step ${e.step} · loss ${e.eval_loss.toFixed(4)}`;
    let text = e.type.replace(/_/g, " ");
    if (e.step !== undefined) text += ` at step ${e.step}`;
    if (e.done !== undefined) text += ` ${e.done}/${e.total}`;
    return text;
  }

  function draw() {
    for (const node of Array.from(svg.querySelectorAll("g.plot"))) node.remove();
    const g = el("g", { class: "plot" });
    const points = train.concat(evals);
    const steps = Math.max(total, ...points.map((p) => p.step), 1);
    const ys = points.map((p) => p.loss);
    let lo = ys.length ? Math.min(...ys) : 0, hi = ys.length ? Math.max(...ys) : 1;
    if (hi - lo < 1e-6) { hi += 0.5; lo = Math.max(0, lo - 0.5); }
    const x = (s) => PAD.l + (s / steps) * (W - PAD.l - PAD.r);
    const y = (v) => PAD.t + (1 - (v - lo) / (hi - lo)) * (H - PAD.t - PAD.b);
    g.appendChild(el("line", { x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b, class: "axis" }));
    g.appendChild(el("line", { x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: H - PAD.b, class: "axis" }));
    for (const v of [lo, (lo + hi) / 2, hi]) {
      g.appendChild(el("text", { x: PAD.l - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, v.toFixed(3)));
    }
    g.appendChild(el("text", { x: PAD.l, y: H - 10, class: "tick" }, "0"));
    g.appendChild(el("text", { x: W - PAD.r, y: H - 10, class: "tick", "text-anchor": "end" }, `step ${steps}`));
    if (train.length) {
      const d = train.map((p) => `${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(" ");
      g.appendChild(el("polyline", { points: d, class: "train-line", fill: "none" }));
      for (const p of train) g.appendChild(el("circle", { cx: x(p.step), cy: y(p.loss), r: 2.2, class: "train-dot" }));
    }
    for (const p of evals) g.appendChild(el("circle", { cx: x(p.step), cy: y(p.loss), r: 4.5, class: "eval-dot" }));
    svg.appendChild(g);
    svg.dataset.points = String(train.length);
    const last = train[train.length - 1];
    const summary = document.getElementById("loss-summary");
    if (summary && last) summary.textContent = ` · step ${last.step} of ${steps}, loss ${last.loss.toFixed(4)}`;
  }

  function add(e) {
    seen += 1;
    if (e.type === "train") { train.push({ step: e.step, loss: e.loss }); total = e.total_steps; }
    if (e.type === "eval") evals.push({ step: e.step, loss: e.eval_loss });
    if (seen > shown && log) {
      const li = document.createElement("li");
      li.textContent = describe(e);
      log.appendChild(li);
    }
  }

  draw();
  const source = new EventSource(run.dataset.eventsUrl);
  let pending = false;
  source.addEventListener("train-event", (msg) => {
    add(JSON.parse(msg.data));
    if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; draw(); }); }
  });
  source.addEventListener("end", (msg) => {
    source.close();
    draw();
    const end = JSON.parse(msg.data);
    const status = document.getElementById("run-status");
    if (status && run.dataset.terminal !== "true") {
      status.textContent = `${end.status} — reload for the result`;
      status.dataset.final = end.status;
      const reload = document.createElement("a");
      reload.href = window.location.pathname;
      reload.textContent = " Reload";
      status.after(reload);
    } else if (status) {
      status.dataset.final = end.status;
    }
  });
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) draw(); };
})();
