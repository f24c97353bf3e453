// The model page: its condition, the metric curves of the chosen runs (?runs=id1,id2; default the newest 5),
// the runs table with gate results and verdicts, the versions, the alias timeline and the log tail of one run.
// Polled every 2 s while a run is live (metrics with since=, so only new points travel), every 10 s otherwise
// to notice a new run.

import { ApiError, getJSON, Unreachable } from "./api.js";
import { MetricCharts, runStyle } from "./charts.js";
import {
  badge,
  bytes,
  chips,
  commitEl,
  crumbs,
  duration,
  h,
  link,
  num,
  replace,
  seg,
  shortSha,
  table,
  timeEl,
  versionHref,
} from "./dom.js";

const TERMINAL = new Set(["Registered", "Failed", "Cancelled"]);
const DEFAULT_RUNS = 5;
const MAX_RUNS = 20;
const LIVE_MS = 2000;
const IDLE_MS = 10000;
const LOG_BYTES = 16384;

export const isLive = (run) => !!run && !TERMINAL.has(run.phase);

export function phaseBadge(phase) {
  const cls = { Registered: "ok", Failed: "bad", Cancelled: "none" }[phase] || "busy";
  return h("span", { class: `badge badge-${cls}`, "data-testid": "phase" }, phase || "-");
}

function gateResult(g) {
  const value = g.value === null || g.value === undefined ? "no value recorded" : `${g.metric || "value"} = ${num(g.value)}`;
  if (g.passed) return h("li", { class: "gate-passed" }, `✓ ${g.gate}`, h("span", { class: "muted" }, ` (${value})`));
  return h("li", { class: "gate-failed", "data-testid": "gate-failed" }, `✗ ${g.gate} failed: ${value}`);
}

function gateList(gates, run) {
  const list = (gates || []).filter((g) => g && g.gate);
  if (run && run.reason === "GateFailed" && !list.some((g) => g.passed === false)) {
    return h(
      "ul",
      { class: "plain" },
      h("li", { class: "gate-failed", "data-testid": "gate-failed" }, `✗ ${run.reason}: ${run.message || "a gate failed"}`),
    );
  }
  if (!list.length) return h("span", { class: "muted" }, "-");
  return h(
    "ul",
    { class: "plain" },
    list.map(gateResult),
  );
}

function verdictEl(v) {
  if (!v) return h("span", { class: "muted" }, "-");
  const at = Number.isFinite(Number(v.step)) && v.step !== null ? ` at step ${num(v.step)}` : "";
  const mark = v.kind === "divergence" ? "✕" : v.kind === "plateau" ? "■" : "●";
  return h(
    "span",
    { class: `verdict verdict-${v.kind}`, "data-testid": "verdict", "data-kind": v.kind },
    `${mark} ${v.kind}${at}`,
    v.reason || v.message ? h("span", { class: "muted" }, `: ${[v.reason, v.message].filter(Boolean).join(" — ")}`) : null,
  );
}

/** Build-once-update-if-changed: rebuild el's content only when its data changed (keeps focus and scroll). */
const signatures = new WeakMap();
function update(el, data, build) {
  const sig = JSON.stringify(data);
  if (signatures.get(el) === sig) return;
  signatures.set(el, sig);
  const focused = el.contains(document.activeElement) ? document.activeElement.getAttribute("data-focus-key") : null;
  build();
  if (focused) {
    const again = el.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

export function modelPage(ctx) {
  const [repo, name] = ctx.params;
  const base = `/ui/api/models/${seg(repo)}/${seg(name)}`;
  const runBase = `/ui/api/runs/${seg(repo)}/`;
  let doc = null;
  let charts = null;
  let selected = [];
  let explicit = ctx.query.has("runs");
  let logRun = null;
  let logLive = false;
  const done = new Set(); // runs whose metrics are complete: not polled again
  const missing = new Set(); // runs the metrics API does not know
  const els = {};

  function chooseRuns() {
    const ids = doc.runs.map((r) => r.id);
    if (explicit) {
      const wanted = (ctx.query.get("runs") || "")
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean);
      return [...new Set(wanted)].slice(0, MAX_RUNS);
    }
    return ids.slice(0, DEFAULT_RUNS);
  }

  function runById(id) {
    return doc.runs.find((r) => r.id === id);
  }

  function chartRuns() {
    return selected.map((id) => {
      const r = runById(id);
      return { id, label: r ? `${id} (${r.phase})` : id, verdict: r ? r.verdict : null };
    });
  }

  async function fetchMetrics(id, append) {
    const d = charts.get(id);
    const since = append && d ? d.offset : 0;
    try {
      const m = await getJSON(`${runBase}${seg(id)}/metrics?points=1000${since ? `&since=${since}` : ""}`);
      charts.put(id, m, append && !!d);
      if (append && charts.needsReload(id)) charts.put(id, await getJSON(`${runBase}${seg(id)}/metrics?points=1000`), false);
      const run = runById(id);
      if (!m.live && !isLive(run)) done.add(id);
      else done.delete(id);
    } catch (err) {
      if (err instanceof ApiError && !(err instanceof Unreachable)) {
        missing.add(id);
        done.add(id);
      } else throw err;
    }
  }

  async function syncMetrics() {
    const work = [];
    for (const id of selected) {
      if (missing.has(id)) continue;
      if (!charts.get(id)) work.push(fetchMetrics(id, false));
      else if (!done.has(id)) work.push(fetchMetrics(id, true));
    }
    await Promise.all(work);
    charts.setRuns(chartRuns());
    charts.render();
    renderMissing();
  }

  function renderMissing() {
    const gone = selected.filter((id) => missing.has(id));
    replace(els.chartNote, gone.length ? `No metrics for ${gone.join(", ")}.` : "");
  }

  function setUrl() {
    const q = new URLSearchParams(location.search);
    if (explicit) q.set("runs", selected.join(","));
    else q.delete("runs");
    const s = q.toString();
    history.replaceState(history.state, "", location.pathname + (s ? `?${s}` : ""));
  }

  function skeleton() {
    els.header = h("div", { class: "page-head" });
    els.gates = h("div");
    els.picker = h("fieldset", { class: "run-picker" });
    els.charts = h("div", { class: "charts" });
    els.chartNote = h("p", { class: "muted", "aria-live": "polite" });
    const runsT = table("Runs, newest first", [
      "Run",
      "Phase",
      "Started",
      "Backend · job",
      "Commit",
      "Version",
      "Metrics",
      "Gates",
      "Verdict",
      "Reason",
      "Log",
    ], { "data-testid": "runs" });
    els.runs = runsT.tbody;
    els.runsMore = h("p", { class: "muted" });
    const versT = table("Versions, newest first", [
      "Version",
      "Aliases",
      "Created",
      "Run",
      "Commit",
      "Artifact",
      "Metrics",
      "Gates",
      "Base",
    ], { "data-testid": "versions" });
    els.versions = versT.tbody;
    els.aliasHistory = h("ol", { class: "timeline", "data-testid": "alias-history" });
    els.logSelect = h("select", { id: "log-run", on: { change: () => showLog(els.logSelect.value, true) } });
    els.logInfo = h("p", { class: "muted" });
    els.log = h("pre", { class: "log", "data-testid": "log-tail", tabindex: "0", "aria-label": "Training log tail" });
    replace(
      ctx.main,
      crumbs(link("/ui/", "Overview"), h("span", null, repo), h("span", { "aria-current": "page" }, name)),
      els.header,
      h("section", { "aria-labelledby": "h-curves" }, h("h2", { id: "h-curves" }, "Training curves"), els.gates, els.picker, els.chartNote, els.charts),
      h("section", { "aria-labelledby": "h-runs" }, h("h2", { id: "h-runs" }, "Runs"), runsT.table, els.runsMore),
      h(
        "section",
        { "aria-labelledby": "h-log" },
        h("h2", { id: "h-log" }, "Training log"),
        h("p", null, h("label", { for: "log-run" }, "Run "), els.logSelect),
        els.logInfo,
        els.log,
      ),
      h("section", { "aria-labelledby": "h-versions" }, h("h2", { id: "h-versions" }, "Versions"), versT.table),
      h("section", { "aria-labelledby": "h-aliases" }, h("h2", { id: "h-aliases" }, "Alias history"), els.aliasHistory),
    );
    charts = new MetricCharts(els.charts, doc.gates);
  }

  function renderHeader() {
    update(els.header, [doc.condition, doc.reason, doc.message, doc.labels, doc.latest_version, doc.aliases, doc.backend, doc.spec_path], () => {
      replace(
        els.header,
        h("h1", { tabindex: "-1" }, doc.name, " ", badge(doc.condition)),
        doc.reason || doc.message
          ? h("p", { class: "reason-line" }, h("strong", null, doc.reason || ""), doc.message ? `: ${doc.message}` : "")
          : null,
        h(
          "dl",
          { class: "facts" },
          h("dt", null, "Repository"),
          h("dd", null, repo),
          h("dt", null, "Spec"),
          h("dd", null, h("code", null, doc.spec_path || "-")),
          h("dt", null, "Backend"),
          h("dd", null, doc.backend || "-"),
          h("dt", null, "Latest version"),
          h("dd", null, doc.latest_version ? link(versionHref(repo, name, doc.latest_version), `v${doc.latest_version}`) : "-"),
          h("dt", null, "Aliases"),
          h("dd", null, aliasLinks(doc.aliases)),
          h("dt", null, "Labels"),
          h("dd", null, chips(doc.labels)),
        ),
      );
    });
  }

  function aliasLinks(aliases) {
    const entries = Object.entries(aliases || {});
    if (!entries.length) return h("span", { class: "muted" }, "-");
    return h(
      "ul",
      { class: "chips" },
      entries.map(([alias, v]) => h("li", null, h("span", { class: "chip-key" }, alias), " → ", link(versionHref(repo, name, v), `v${v}`))),
    );
  }

  function renderGates() {
    update(els.gates, doc.gates, () => {
      const gates = (doc.gates || []).filter((g) => g && g.text);
      replace(
        els.gates,
        gates.length
          ? h(
              "ul",
              { class: "gate-lines", "aria-label": "Gates of the current spec (dashed lines on the charts)" },
              gates.map((g) =>
                h(
                  "li",
                  { "data-testid": "gate-line", "data-metric": g.metric, "data-threshold": g.threshold },
                  h("span", { class: "gate-swatch", "aria-hidden": "true" }),
                  `gate ${g.text}`,
                ),
              ),
            )
          : h("p", { class: "muted" }, "No gates in the current spec."),
      );
    });
  }

  function renderPicker() {
    update(els.picker, [doc.runs.map((r) => [r.id, r.phase, r.created_at]), selected], () => {
      const items = doc.runs.map((r) => {
        const on = selected.includes(r.id);
        const idx = selected.indexOf(r.id);
        const style = on ? runStyle(idx) : null;
        const box = h("input", {
          type: "checkbox",
          id: `pick-${r.id}`,
          value: r.id,
          checked: on,
          "data-focus-key": `pick-${r.id}`,
          on: { change: onPick },
        });
        return h(
          "li",
          null,
          box,
          h(
            "label",
            { for: `pick-${r.id}` },
            h("span", {
              class: "swatch",
              "aria-hidden": "true",
              style: style ? `border-color:${style.stroke};${style.dash ? "border-top-style:dashed" : ""}` : "border-color:transparent",
            }),
            r.id,
            " ",
            h("span", { class: "muted" }, `${r.phase} · `, timeEl(r.created_at)),
          ),
        );
      });
      replace(
        els.picker,
        h("legend", null, `Runs on the charts (at most ${MAX_RUNS})`),
        items.length ? h("ul", { class: "picker-list" }, items) : h("p", { class: "muted" }, "No runs yet."),
      );
    });
  }

  async function onPick() {
    const boxes = [...els.picker.querySelectorAll("input[type=checkbox]")];
    let ids = boxes.filter((b) => b.checked).map((b) => b.value);
    // Keep the order of the table (newest first), then runs named in the URL that are not in the table.
    const extra = selected.filter((id) => !runById(id));
    ids = [...ids, ...extra].slice(0, MAX_RUNS);
    selected = ids;
    explicit = true;
    setUrl();
    renderPicker();
    try {
      await syncMetrics();
    } catch (_) {
      /* the next poll retries and shows the banner */
    }
  }

  function renderRuns() {
    update(els.runs, doc.runs, () => {
      const frag = document.createDocumentFragment();
      for (const r of doc.runs) {
        const where = [r.backend, r.job_id ? `job ${r.job_id}` : null].filter(Boolean).join(" · ");
        const extra = [r.segment !== null && r.segment !== undefined ? `segment ${r.segment}` : null, r.node ? `node ${r.node}` : null]
          .filter(Boolean)
          .join(" · ");
        frag.appendChild(
          h(
            "tr",
            { "data-testid": "run-row", "data-run": r.id, "data-phase": r.phase },
            h("th", { scope: "row" }, h("code", null, r.id), r.attempt > 1 ? h("span", { class: "muted" }, ` (attempt ${r.attempt})`) : null),
            h("td", null, phaseBadge(r.phase)),
            h("td", null, timeEl(r.started_at ?? r.created_at), h("div", { class: "muted" }, duration(r.started_at, r.ended_at))),
            h("td", null, where || "-", extra ? h("div", { class: "muted" }, extra) : null),
            h("td", null, commitEl(r.commit, null)),
            h("td", null, r.version ? link(versionHref(repo, name, r.version), `v${r.version}`) : "-"),
            h("td", null, chips(r.metrics, num)),
            h("td", null, gateList(r.gates, r)),
            h("td", null, verdictEl(r.verdict)),
            h(
              "td",
              null,
              r.reason ? h("strong", null, r.reason) : null,
              r.message ? h("div", { class: "message" }, r.message) : null,
              r.stop_reason ? h("div", { class: "muted" }, `stop: ${r.stop_reason}`) : null,
              r.exit_code !== null && r.exit_code !== undefined ? h("div", { class: "muted" }, `exit ${r.exit_code}`) : null,
            ),
            h(
              "td",
              null,
              h(
                "button",
                { type: "button", class: "small", "data-focus-key": `log-${r.id}`, on: { click: () => showLog(r.id, true, true) } },
                "Log",
                h("span", { class: "sr-only" }, ` of ${r.id}`),
              ),
            ),
          ),
        );
      }
      if (!doc.runs.length) frag.appendChild(h("tr", null, h("td", { colspan: "11", class: "muted" }, "No runs yet.")));
      replace(els.runs, frag);
      replace(els.runsMore, doc.more ? "Showing the newest 100 runs; `gitopsd history` lists them all." : "");
    });
  }

  function renderVersions() {
    update(els.versions, [doc.versions, doc.aliases], () => {
      const byVersion = {};
      for (const [alias, v] of Object.entries(doc.aliases || {})) (byVersion[v] ||= []).push(alias);
      const frag = document.createDocumentFragment();
      for (const v of doc.versions) {
        frag.appendChild(
          h(
            "tr",
            { "data-testid": "version-row", "data-version": v.number },
            h("th", { scope: "row" }, link(versionHref(repo, name, v.number), `v${v.number}`)),
            h("td", null, byVersion[v.number] ? h("ul", { class: "chips" }, byVersion[v.number].map((a) => h("li", null, a))) : "-"),
            h("td", null, timeEl(v.created_at)),
            h("td", null, v.run_id ? h("code", null, v.run_id) : "-"),
            h("td", null, commitEl(v.commit, null)),
            h("td", null, h("code", { title: v.artifact_sha256 || "" }, shortSha(v.artifact_sha256)), h("div", { class: "muted" }, bytes(v.artifact_size))),
            h("td", null, chips(v.metrics, num)),
            h("td", null, gateList(v.gates, null)),
            h(
              "td",
              null,
              v.base ? link(versionHref(repo, v.base.model, v.base.version), `${v.base.model}@${v.base.version}`) : "-",
            ),
          ),
        );
      }
      if (!doc.versions.length) frag.appendChild(h("tr", null, h("td", { colspan: "9", class: "muted" }, "No versions registered yet.")));
      replace(els.versions, frag);
    });
  }

  function renderAliasHistory() {
    update(els.aliasHistory, doc.alias_history, () => {
      const items = (doc.alias_history || []).map((e) => {
        const kind = String(e.kind || "moved");
        const cls = kind.replace(/[^A-Za-z0-9]+/g, "_");
        const move =
          e.previous !== null && e.previous !== undefined
            ? `v${e.previous} → ${e.version === null || e.version === undefined ? "removed" : `v${e.version}`}`
            : e.version !== null && e.version !== undefined
              ? `→ v${e.version}`
              : "";
        return h(
          "li",
          { "data-testid": "alias-event", "data-kind": kind, class: `alias-${cls}` },
          h("div", { class: "when" }, timeEl(e.at)),
          h(
            "div",
            { class: "what" },
            h("span", { class: `kind kind-${cls}` }, kind.replace(/_/g, " ")),
            " ",
            h("strong", null, e.alias),
            " ",
            move,
            e.commit ? h("span", { class: "muted" }, " · ", h("code", null, shortSha(e.commit))) : null,
            e.subject ? h("div", { class: "subject" }, e.subject) : null,
            e.message ? h("div", { class: "message" }, e.message) : null,
          ),
        );
      });
      replace(els.aliasHistory, items.length ? items : h("li", { class: "muted" }, "No alias has been set."));
    });
  }

  function renderLogSelect() {
    update(els.logSelect, [doc.runs.map((r) => r.id), logRun], () => {
      const ids = doc.runs.map((r) => r.id);
      if (logRun && !ids.includes(logRun)) ids.unshift(logRun);
      replace(
        els.logSelect,
        ids.map((id) => h("option", { value: id, selected: id === logRun }, id)),
      );
      els.logSelect.value = logRun || "";
    });
  }

  async function showLog(id, userChoice = false, focus = false) {
    if (!id) {
      replace(els.log, "");
      replace(els.logInfo, "No run yet.");
      return;
    }
    const changed = id !== logRun;
    logRun = id;
    renderLogSelect();
    if (focus) els.log.focus();
    try {
      const l = await getJSON(`${runBase}${seg(id)}/log?bytes=${LOG_BYTES}`);
      if (logRun !== id) return;
      const atBottom = changed || els.log.scrollHeight - els.log.scrollTop - els.log.clientHeight < 30;
      if (els.log.textContent !== l.text) els.log.textContent = l.text;
      if (atBottom) els.log.scrollTop = els.log.scrollHeight;
      logLive = isLive(runById(id));
      replace(els.logInfo, `Run ${id}: ${l.truncated ? `the last ${LOG_BYTES / 1024} KiB` : "the whole log"}${logLive ? ", updated while it runs" : ""}.`);
    } catch (err) {
      if (err instanceof ApiError && !(err instanceof Unreachable)) {
        replace(els.log, "");
        replace(els.logInfo, `No log for ${id}: ${err.message}`);
        logLive = false;
      } else if (userChoice) {
        replace(els.logInfo, `Could not read the log of ${id}; retrying.`);
      } else throw err;
    }
  }

  function renderAll() {
    renderHeader();
    renderGates();
    renderPicker();
    renderRuns();
    renderVersions();
    renderAliasHistory();
    renderLogSelect();
  }

  function anyLive() {
    return doc && (doc.runs.some(isLive) || selected.some((id) => !done.has(id) && !missing.has(id)));
  }

  return {
    async load() {
      doc = await getJSON(base);
      ctx.setTitle(doc.name);
      selected = chooseRuns();
      skeleton();
      renderAll();
      logRun = selected[0] || (doc.runs[0] && doc.runs[0].id) || null;
      await Promise.all([syncMetrics(), showLog(logRun)]);
    },
    async refresh() {
      const next = await getJSON(base);
      const wasLive = new Set(doc.runs.filter(isLive).map((r) => r.id));
      doc = next;
      charts.setGates(doc.gates);
      if (!explicit) {
        const chosen = chooseRuns();
        if (chosen.join() !== selected.join()) selected = chosen;
      }
      // A run that just ended: one more metrics read picks up its last points.
      for (const id of wasLive) if (!isLive(runById(id))) done.delete(id);
      renderAll();
      await syncMetrics();
      if (logRun && (logLive || wasLive.has(logRun) || isLive(runById(logRun)))) await showLog(logRun);
    },
    interval: () => (anyLive() ? LIVE_MS : IDLE_MS),
    destroy() {
      if (charts) charts.destroy();
    },
  };
}
