// The cluster page: the GPU inventory with leases and MIG instances (what `gitopsd gpus` shows), the backends
// with their availability, and the queue of runs waiting for one, each with its pending reason. Polled every 5 s.

import { getJSON } from "./api.js";
import { h, link, modelHref, replace, table, timeEl } from "./dom.js";

const mb = (v) => (v === null || v === undefined ? "-" : `${Math.round(v).toLocaleString("en")} MiB`);

function gpuRow(d, mig) {
  const procs = d.processes === null || d.processes === undefined ? "?" : d.processes.map((p) => p.pid).join(", ") || "-";
  const migText = mig ? `MIG ${d.mig_slot || ""}`.trim() : d.mig_enabled ? `MIG enabled (${(d.mig_devices || []).length})` : "-";
  return h(
    "tr",
    { class: mig ? "mig" : null, "data-testid": mig ? "mig-row" : "gpu-row", "data-uuid": d.uuid },
    h("th", { scope: "row" }, mig ? h("span", { class: "indent", "aria-hidden": "true" }, "└ ") : null, d.label ?? String(d.index ?? "-")),
    h("td", null, d.name || "-"),
    h("td", null, h("code", null, d.uuid || "-")),
    h("td", null, d.error ? h("span", { class: "error" }, `error: ${d.error}`) : `${mb(d.memory_used_mb)} / ${mb(d.memory_total_mb)}`),
    h("td", null, d.utilization_pct === null || d.utilization_pct === undefined ? "-" : `${Math.round(d.utilization_pct)}%`),
    h("td", null, procs),
    h("td", { "data-testid": "leased-by" }, d.leased_by ? h("code", null, d.leased_by) : h("span", { class: "muted" }, "free")),
    h("td", null, migText),
  );
}

function gpusSection(doc) {
  const body = [];
  if (!doc.gpus) {
    body.push(h("p", { class: "muted" }, `No GPU inventory: ${doc.gpus_error || "no NVIDIA driver on this host"}.`));
  } else {
    const g = doc.gpus;
    const t = table(
      `GPUs (driver ${g.driver_version || "?"}, CUDA ${g.cuda_version || "?"})`,
      ["Device", "Name", "UUID", "Memory used", "Util", "Processes", "Leased by", "MIG"],
    );
    const frag = document.createDocumentFragment();
    for (const gpu of g.gpus || []) {
      frag.appendChild(gpuRow(gpu, false));
      for (const m of gpu.mig_devices || []) frag.appendChild(gpuRow(m, true));
    }
    if (!(g.gpus || []).length) frag.appendChild(h("tr", null, h("td", { colspan: "8", class: "muted" }, "No GPU found.")));
    t.tbody.appendChild(frag);
    body.push(h("p", { class: "muted" }, "Read ", timeEl(g.read_at), "."), t.table);
    if (doc.gpus_error) body.push(h("p", { class: "error" }, doc.gpus_error));
  }
  return h("section", { "aria-labelledby": "h-gpus", "data-testid": "gpus" }, h("h2", { id: "h-gpus" }, "GPUs and leases"), body);
}

function backendsSection(doc) {
  const t = table("Backends", ["Name", "Type", "Available", "Message"]);
  for (const b of doc.backends || []) {
    const avail = b.available === true ? ["yes", "ok"] : b.available === false ? ["no", "bad"] : ["unknown", "none"];
    t.tbody.appendChild(
      h(
        "tr",
        { "data-testid": "backend-row", "data-backend": b.name, "data-available": String(b.available) },
        h("th", { scope: "row" }, b.name),
        h("td", null, b.type || "-"),
        h("td", null, h("span", { class: `badge badge-${avail[1]}` }, avail[0])),
        h("td", { class: "message" }, b.message || "-"),
      ),
    );
  }
  if (!(doc.backends || []).length) t.tbody.appendChild(h("tr", null, h("td", { colspan: "4", class: "muted" }, "No backend configured here (gitopsd ui without a daemon config).")));
  return h("section", { "aria-labelledby": "h-backends", "data-testid": "backends" }, h("h2", { id: "h-backends" }, "Backends"), t.table);
}

function queueSection(doc) {
  const t = table("Runs waiting, oldest first", ["Model", "Run", "Backend · job", "Phase", "Waiting since", "Pending reason"]);
  for (const q of doc.queue || []) {
    t.tbody.appendChild(
      h(
        "tr",
        { "data-testid": "queue-row", "data-run": q.run_id },
        h("th", { scope: "row" }, link(modelHref(q.repository, q.model), q.model), h("div", { class: "muted" }, q.repository)),
        h("td", null, h("code", null, q.run_id)),
        h("td", null, [q.backend, q.job_id ? `job ${q.job_id}` : null].filter(Boolean).join(" · ") || "-"),
        h("td", null, q.phase),
        h("td", null, timeEl(q.since)),
        h("td", { class: "message" }, q.reason ? h("strong", null, q.reason) : null, q.message ? h("div", null, q.message) : null),
      ),
    );
  }
  if (!(doc.queue || []).length) t.tbody.appendChild(h("tr", null, h("td", { colspan: "6", class: "muted" }, "No run is waiting.")));
  return h("section", { "aria-labelledby": "h-queue", "data-testid": "queue" }, h("h2", { id: "h-queue" }, "Queue"), t.table);
}

export function clusterPage(ctx) {
  let sig = null;
  let sections = null;
  function render(doc) {
    const next = JSON.stringify([doc.gpus && { ...doc.gpus, read_at: null }, doc.gpus_error, doc.backends, doc.queue]);
    if (next === sig) return;
    sig = next;
    const fresh = h("div", null, gpusSection(doc), backendsSection(doc), queueSection(doc));
    replace(sections, ...fresh.children);
  }
  return {
    async load() {
      ctx.setTitle("Cluster");
      const doc = await getJSON("/ui/api/cluster");
      sections = h("div");
      replace(ctx.main, h("h1", { tabindex: "-1" }, "Cluster"), sections);
      render(doc);
    },
    async refresh() {
      render(await getJSON("/ui/api/cluster"));
    },
    interval: () => 5000,
    destroy() {},
  };
}
