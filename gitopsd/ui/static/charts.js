// Metric curves of a model's runs: one uPlot chart per metric, the chosen runs overlaid (their points joined on
// a shared x axis), the gate thresholds of that metric drawn as dashed horizontal lines, convergence verdicts as
// dashed vertical markers at their step. Points arrive already downsampled by the server; live runs append the
// points after their last byte offset, and the charts are updated in place (setData), never rebuilt per poll.

import { h, replace } from "./dom.js";

// Ten line colours, each at least 3:1 against the light and the dark chart background; runs 11-20 reuse them
// dashed.
export const PALETTE = [
  "#1f6feb",
  "#cf222e",
  "#1a7f37",
  "#8250df",
  "#bc4c00",
  "#0a7f8f",
  "#bf3989",
  "#6e7781",
  "#9a6700",
  "#4d7c0f",
];

export function runStyle(index) {
  return { stroke: PALETTE[index % PALETTE.length], dash: index >= PALETTE.length ? [5, 3] : undefined };
}

const HEIGHT = 260;
const MAX_POINTS_PER_RUN = 20000;

function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

/** Text on a background box, so a label stays readable over the curves; fillStyle is the text colour. */
function label(ctx, text, x, y, align, dpr) {
  const colour = ctx.fillStyle;
  const w = ctx.measureText(text).width;
  const x0 = align === "right" ? x - w : x;
  ctx.fillStyle = cssVar("--bg", "#ffffff");
  ctx.globalAlpha = 0.85;
  ctx.fillRect(x0 - 2 * dpr, y - 12 * dpr, w + 4 * dpr, 16 * dpr);
  ctx.globalAlpha = 1;
  ctx.fillStyle = colour;
  ctx.textAlign = align;
  ctx.fillText(text, x, y);
}

/** uPlot plugin: gate thresholds (horizontal dashed lines, labelled) and verdict markers (vertical). */
function overlays(getGates, getVerdicts) {
  return {
    hooks: {
      draw: [
        (u) => {
          const { ctx } = u;
          const { left, top, width, height } = u.bbox;
          const dpr = devicePixelRatio || 1;
          ctx.save();
          ctx.font = `${12 * dpr}px system-ui, sans-serif`;
          ctx.lineWidth = 1.5 * dpr;
          for (const gate of getGates()) {
            const y = u.valToPos(gate.threshold, "y", true);
            if (!Number.isFinite(y) || y < top || y > top + height) continue;
            ctx.strokeStyle = cssVar("--gate", "#a35200");
            ctx.fillStyle = ctx.strokeStyle;
            ctx.setLineDash([8 * dpr, 5 * dpr]);
            ctx.beginPath();
            ctx.moveTo(left, y);
            ctx.lineTo(left + width, y);
            ctx.stroke();
            ctx.setLineDash([]);
            label(ctx, `gate ${gate.text}`, left + width - 4 * dpr, y - 4 * dpr, "right", dpr);
          }
          getVerdicts().forEach((v, i) => {
            const x = u.valToPos(v.step, "x", true);
            if (!Number.isFinite(x) || x < left || x > left + width) return;
            ctx.strokeStyle = v.color;
            ctx.setLineDash([3 * dpr, 3 * dpr]);
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
            ctx.setLineDash([]);
            ctx.fillStyle = v.color;
            label(ctx, `${v.kind === "divergence" ? "✕" : "■"} ${v.kind} (${v.run})`, x + 4 * dpr, top + (14 + 16 * (i % 6)) * dpr, "left", dpr);
          });
          ctx.restore();
        },
      ],
    },
  };
}

/** Sorted x/y arrays of one run's series, nulls for non-finite values. */
function columns(points) {
  const xs = new Array(points.length);
  const ys = new Array(points.length);
  for (let i = 0; i < points.length; i++) {
    xs[i] = Number(points[i][0]);
    const y = Number(points[i][1]);
    ys[i] = Number.isFinite(y) ? y : null;
  }
  return [xs, ys];
}

export class MetricCharts {
  /** container: where the charts go; gates: [{metric, threshold, text}] of the current spec. */
  constructor(container, gates) {
    this.container = container;
    this.gates = gates || [];
    this.runs = []; // [{id, label, verdict}] in display order
    this.data = new Map(); // run id -> {xAxis, series: {name: [[x, y]]}, offset, live}
    this.charts = new Map(); // metric -> {figure, plot, key, holder}
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(container);
  }

  setGates(gates) {
    this.gates = gates || [];
  }

  setRuns(runs) {
    this.runs = runs;
    for (const id of [...this.data.keys()]) if (!runs.some((r) => r.id === id)) this.data.delete(id);
  }

  /** A metrics answer: the first one of a run, or the points after the last offset (append). */
  put(runId, doc, append) {
    const old = this.data.get(runId);
    if (!append || !old) {
      this.data.set(runId, {
        xAxis: doc.x,
        series: Object.fromEntries(Object.entries(doc.series || {}).map(([k, v]) => [k, v.slice()])),
        offset: doc.offset,
        live: doc.live,
        downsampled: doc.downsampled,
      });
      return;
    }
    for (const [name, points] of Object.entries(doc.series || {})) {
      const into = (old.series[name] ||= []);
      const last = into.length ? into[into.length - 1][0] : -Infinity;
      for (const p of points) if (p[0] > last || !into.length) into.push(p);
    }
    old.offset = doc.offset;
    old.live = doc.live;
  }

  needsReload(runId) {
    const d = this.data.get(runId);
    return !!d && Object.values(d.series).some((s) => s.length > MAX_POINTS_PER_RUN);
  }

  get(runId) {
    return this.data.get(runId);
  }

  metricNames() {
    const names = new Set();
    for (const r of this.runs) {
      const d = this.data.get(r.id);
      if (d) for (const name of Object.keys(d.series)) names.add(name);
    }
    const order = (n) => (n === "loss" ? 0 : n === "accuracy" ? 1 : /^gpu/.test(n) ? 3 : 2);
    return [...names].sort((a, b) => order(a) - order(b) || a.localeCompare(b));
  }

  xLabel() {
    for (const r of this.runs) {
      const d = this.data.get(r.id);
      if (d) return d.xAxis || "step";
    }
    return "step";
  }

  /** Draw or update every chart. */
  render() {
    const names = this.metricNames();
    for (const [name, chart] of this.charts) {
      if (!names.includes(name)) {
        chart.plot && chart.plot.destroy();
        chart.figure.remove();
        this.charts.delete(name);
      }
    }
    if (!names.length) {
      if (!this.container.querySelector(".no-metrics"))
        replace(this.container, h("p", { class: "muted no-metrics" }, "No metrics recorded by the chosen runs yet."));
      return;
    }
    const empty = this.container.querySelector(".no-metrics");
    if (empty) empty.remove();
    names.forEach((name, position) => this.renderOne(name, position));
  }

  renderOne(name, position) {
    const runs = this.runs.filter((r) => {
      const d = this.data.get(r.id);
      return d && d.series[name] && d.series[name].length;
    });
    const tables = runs.map((r) => columns(this.data.get(r.id).series[name]));
    const first = this.runs.length ? this.data.get(this.runs[0].id) : null;
    const firstCount = first && first.series[name] ? first.series[name].length : 0;
    // The plot is rebuilt when its series change (runs, their labels with the phase, the x axis); otherwise its
    // data is replaced in place.
    const key = JSON.stringify([runs.map((r) => r.label), this.xLabel(), this.gates]);
    let chart = this.charts.get(name);
    if (!chart) {
      const holder = h("div", { class: "chart-plot" });
      const gates = this.gates.filter((g) => g.metric === name);
      const figure = h(
        "figure",
        { class: "chart", "data-testid": `chart-${name}`, "data-metric": name },
        h(
          "figcaption",
          null,
          h("span", { class: "chart-title" }, name),
          gates.length ? h("span", { class: "muted" }, ` (gate ${gates.map((g) => g.text).join(", ")})`) : null,
        ),
        holder,
      );
      chart = { figure, holder, plot: null, key: null };
      this.charts.set(name, chart);
    }
    // Keep the figures in metric order.
    const at = this.container.children[position];
    if (at !== chart.figure) this.container.insertBefore(chart.figure, at || null);
    chart.figure.setAttribute("data-points", String(firstCount));
    const data = tables.length ? uPlot.join(tables) : [[]];
    if (chart.plot && chart.key === key) {
      chart.plot.setData(data);
      return;
    }
    if (chart.plot) chart.plot.destroy();
    chart.key = key;
    chart.width = this.plotWidth(chart);
    chart.plot = this.makePlot(name, runs, data, chart.holder);
  }

  plotWidth(chart) {
    return Math.max(260, Math.floor(chart.holder.clientWidth || this.container.clientWidth || 600));
  }

  makePlot(name, runs, data, holder) {
    const text = cssVar("--fg", "#1b1f24");
    const grid = cssVar("--grid", "#d8dee4");
    const gates = this.gates.filter((g) => g.metric === name && Number.isFinite(Number(g.threshold)));
    const index = new Map(this.runs.map((r, i) => [r.id, i]));
    const verdicts = () =>
      runs
        .filter((r) => r.verdict && Number.isFinite(Number(r.verdict.step)))
        .map((r) => ({ step: Number(r.verdict.step), kind: r.verdict.kind, run: r.id, color: runStyle(index.get(r.id)).stroke }));
    const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const opts = {
      width: this.plotWidth(this.charts.get(name)),
      height: HEIGHT,
      scales: {
        x: { time: false },
        y: {
          range: (u, min, max) => {
            let lo = min;
            let hi = max;
            for (const g of gates) {
              lo = Math.min(lo ?? g.threshold, Number(g.threshold));
              hi = Math.max(hi ?? g.threshold, Number(g.threshold));
            }
            if (lo === null || hi === null) return [0, 1];
            const pad = (hi - lo) * 0.06 || Math.abs(hi) * 0.1 || 1;
            return [lo - pad, hi + pad];
          },
        },
      },
      axes: [{ ...axis, label: this.xLabel() }, { ...axis, size: 60 }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      series: [
        { label: this.xLabel() },
        ...runs.map((r) => {
          const style = runStyle(index.get(r.id));
          return {
            label: r.label,
            stroke: style.stroke,
            dash: style.dash,
            width: 1.5,
            spanGaps: true,
            points: { show: false },
            value: (u, v) => (v === null || v === undefined ? "-" : Number(v.toPrecision(5)).toString()),
          };
        }),
      ],
      plugins: [overlays(() => gates, verdicts)],
    };
    return new uPlot(opts, data, holder);
  }

  resize() {
    for (const chart of this.charts.values()) {
      if (!chart.plot) continue;
      const width = this.plotWidth(chart);
      if (Math.abs(width - chart.width) < 4) continue;
      chart.width = width;
      chart.plot.setSize({ width, height: HEIGHT });
    }
  }

  destroy() {
    this.observer.disconnect();
    for (const chart of this.charts.values()) if (chart.plot) chart.plot.destroy();
    this.charts.clear();
  }
}
