// The version page: a registered version's metrics, gates, artifact and its lineage as a graph: commit -> spec
// -> run -> job -> artifact -> version -> base version -> the base's own chain. Nodes are HTML boxes laid out in
// ranks (longest path from a source), the arrows an SVG drawn behind them from the boxes' positions; the graph
// reads top to bottom without the arrows too (each box says what it comes from). Nothing polls here: a version
// never changes (the shell only checks the server's heartbeat).

import { getJSON } from "./api.js";
import { bytes, chips, crumbs, fmtTime, h, link, num, replace, seg, timeEl } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const MAX_NODES = 500;

/** Rank (row) of each node: the longest path from a source, then every node pulled down next to the node it
 *  leads to (so a fine-tuned run's own commit and spec sit beside the base's chain, not at the top); cycles are
 *  cut by a visit guard. */
export function ranks(nodes, edges) {
  const ids = new Set(nodes.map((n) => n.id));
  const incoming = new Map(nodes.map((n) => [n.id, []]));
  const outgoing = new Map(nodes.map((n) => [n.id, []]));
  for (const e of edges) {
    if (!ids.has(e.from) || !ids.has(e.to) || e.from === e.to) continue;
    incoming.get(e.to).push(e.from);
    outgoing.get(e.from).push(e.to);
  }
  const rank = new Map();
  const visiting = new Set();
  const rankOf = (id) => {
    if (rank.has(id)) return rank.get(id);
    if (visiting.has(id)) return 0; // a cycle: cut here
    visiting.add(id);
    let r = 0;
    for (const from of incoming.get(id)) r = Math.max(r, rankOf(from) + 1);
    visiting.delete(id);
    rank.set(id, r);
    return r;
  };
  for (const n of nodes) rankOf(n.id);
  const order = nodes.map((n) => n.id).sort((a, b) => rank.get(b) - rank.get(a));
  for (const id of order) {
    const below = outgoing.get(id).map((to) => rank.get(to)).filter((r) => r > rank.get(id));
    if (below.length) rank.set(id, Math.min(...below) - 1);
  }
  return { rank, incoming };
}

/** Nodes grouped by rank, each row ordered by where its predecessors sit in the row above (fewer crossings). */
export function rows(nodes, edges) {
  const { rank, incoming } = ranks(nodes, edges);
  const byRank = [];
  for (const n of nodes) (byRank[rank.get(n.id)] ||= []).push(n);
  const position = new Map();
  const out = byRank.filter(Boolean);
  for (const row of out) {
    const key = (n) => {
      const at = incoming.get(n.id).filter((id) => position.has(id)).map((id) => position.get(id));
      return at.length ? at.reduce((a, b) => a + b, 0) / at.length : Infinity;
    };
    const keyed = row.map((n, i) => [key(n), i, n]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    row.splice(0, row.length, ...keyed.map((k) => k[2]));
    row.forEach((n, i) => position.set(n.id, i));
  }
  return out;
}

/** A detail value: epoch seconds under a time-like key shown as a local time (the raw value in its title). */
function detailValue(key, value) {
  const s = String(value);
  if (/(^|_)(at|time)$/.test(key) && /^\d{9,11}(\.\d+)?$/.test(s)) return h("span", { title: s }, fmtTime(Number(s)));
  return s;
}

function nodeBox(n, incoming) {
  const label = n.url ? link(n.url, n.label, { class: "node-link" }) : h("span", null, n.label);
  const detail = Object.entries(n.detail || {});
  return h(
    "li",
    { class: `node node-${String(n.kind).replace(/[^a-z]/g, "")}`, "data-testid": "lineage-node", "data-kind": n.kind, "data-node": n.id },
    h("div", { class: "node-kind" }, n.kind),
    h("div", { class: "node-label" }, label),
    detail.length ? h("dl", { class: "node-detail" }, detail.map(([k, v]) => [h("dt", null, k), h("dd", null, detailValue(k, v))])) : null,
    incoming.length ? h("p", { class: "sr-only" }, `from ${incoming.map((e) => `${e.fromLabel} (${e.label || "edge"})`).join(", ")}`) : null,
  );
}

function drawEdges(graphEl, svg, edges) {
  const box = graphEl.getBoundingClientRect();
  svg.setAttribute("width", String(graphEl.scrollWidth));
  svg.setAttribute("height", String(graphEl.scrollHeight));
  svg.replaceChildren();
  const defs = document.createElementNS(SVG, "defs");
  const marker = document.createElementNS(SVG, "marker");
  for (const [k, v] of Object.entries({ id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "8", markerHeight: "8", orient: "auto-start-reverse" }))
    marker.setAttribute(k, v);
  const tip = document.createElementNS(SVG, "path");
  tip.setAttribute("d", "M 0 0 L 10 5 L 0 10 z");
  tip.setAttribute("class", "edge-tip");
  marker.appendChild(tip);
  defs.appendChild(marker);
  svg.appendChild(defs);
  const find = (id) => graphEl.querySelector(`[data-node="${CSS.escape(id)}"]`);
  for (const e of edges) {
    const a = find(e.from);
    const b = find(e.to);
    if (!a || !b) continue;
    const ra = a.getBoundingClientRect();
    const rb = b.getBoundingClientRect();
    const x1 = ra.left + ra.width / 2 - box.left;
    const y1 = ra.bottom - box.top;
    const x2 = rb.left + rb.width / 2 - box.left;
    const y2 = rb.top - box.top;
    const path = document.createElementNS(SVG, "path");
    const my = (y1 + y2) / 2;
    path.setAttribute("d", `M ${x1} ${y1} C ${x1} ${my}, ${x2} ${my}, ${x2} ${y2 - 1}`);
    path.setAttribute("class", "edge");
    path.setAttribute("marker-end", "url(#arrow)");
    svg.appendChild(path);
    if (e.label) {
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", String((x1 + x2) / 2 + 8));
      text.setAttribute("y", String(my + 4));
      text.setAttribute("class", "edge-label");
      text.textContent = e.label;
      svg.appendChild(text);
    }
  }
}

export function lineageGraph(graph) {
  const nodes = (graph && graph.nodes ? graph.nodes : []).slice(0, MAX_NODES);
  const edges = graph && graph.edges ? graph.edges : [];
  if (!nodes.length) return { el: h("p", { class: "muted", "data-testid": "lineage-graph" }, "No lineage recorded."), redraw: () => {} };
  const labels = new Map(nodes.map((n) => [n.id, `${n.kind} ${n.label}`]));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "edges");
  svg.setAttribute("aria-hidden", "true");
  const el = h(
    "div",
    { class: "graph", "data-testid": "lineage-graph" },
    svg,
    h(
      "ol",
      { class: "ranks", "aria-label": "Lineage: how the version was made, from the oldest base down to this version" },
      rows(nodes, edges).map((row) =>
        h(
          "li",
          { class: "rank" },
          h(
            "ul",
            { class: "rank-nodes" },
            row.map((n) =>
              nodeBox(
                n,
                edges.filter((e) => e.to === n.id && labels.has(e.from)).map((e) => ({ ...e, fromLabel: labels.get(e.from) })),
              ),
            ),
          ),
        ),
      ),
    ),
  );
  return { el, redraw: () => drawEdges(el, svg, edges) };
}

export function versionPage(ctx) {
  const [repo, model, number] = ctx.params;
  let graph = null;
  const onResize = () => graph && graph.redraw();
  return {
    async load() {
      const doc = await getJSON(`/ui/api/versions/${seg(repo)}/${seg(model)}/${seg(number)}`);
      ctx.setTitle(`${doc.model}@${doc.number}`);
      graph = lineageGraph(doc.graph);
      const a = doc.artifact || {};
      replace(
        ctx.main,
        crumbs(
          link("/ui/", "Overview"),
          h("span", null, repo),
          link(`/ui/models/${seg(repo)}/${seg(model)}`, doc.model),
          h("span", { "aria-current": "page" }, `v${doc.number}`),
        ),
        h("h1", { tabindex: "-1" }, `${doc.model}@${doc.number}`),
        h(
          "dl",
          { class: "facts" },
          h("dt", null, "Created"),
          h("dd", null, timeEl(doc.created_at)),
          h("dt", null, "Metrics"),
          h("dd", null, chips(doc.metrics, num)),
          h("dt", null, "Gates"),
          h(
            "dd",
            null,
            (doc.gates || []).length
              ? h(
                  "ul",
                  { class: "plain" },
                  doc.gates.map((g) =>
                    h("li", { class: g.passed ? "gate-passed" : "gate-failed" }, `${g.passed ? "✓" : "✗"} ${g.gate}`, g.value !== undefined && g.value !== null ? ` (${num(g.value)})` : ""),
                  ),
                )
              : "-",
          ),
          h("dt", null, "Artifact"),
          h("dd", null, h("code", { class: "wrap" }, a.sha256 ? `sha256:${a.sha256}` : "-"), h("div", { class: "muted" }, `${bytes(a.size)} · `, h("code", { class: "wrap" }, a.uri || "-"))),
        ),
        h("section", { "aria-labelledby": "h-lineage" }, h("h2", { id: "h-lineage" }, "Lineage"), graph.el),
        h(
          "details",
          { class: "raw" },
          h("summary", null, "Raw lineage record"),
          h("pre", { class: "log", tabindex: "0" }, JSON.stringify(doc.lineage, null, 2)),
        ),
      );
      graph.redraw();
      addEventListener("resize", onResize);
    },
    async refresh() {},
    interval: () => null,
    destroy() {
      removeEventListener("resize", onResize);
    },
  };
}
