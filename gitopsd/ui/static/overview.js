// The overview: one card per repository (applied and fetched commit, the error that keeps a newer commit out)
// and one table row per model (condition, reason, latest version, aliases, the run in flight), filtered by team,
// backend and condition, the filters kept in the URL (?team=&backend=&condition=) so a filtered view can be
// shared. Polled every 5 s; the table is rebuilt (with a DocumentFragment) only when the data changed.

import { getJSON } from "./api.js";
import { badge, chips, commitEl, h, link, modelHref, replace, table, timeEl, versionHref } from "./dom.js";
import { isLive, phaseBadge } from "./model.js";

const FILTERS = [
  ["team", "Team", "teams", "All teams"],
  ["backend", "Backend", "backends", "All backends"],
  ["condition", "Condition", "conditions", "All conditions"],
];

function repoCard(r) {
  const blocked = r.error_reason || r.error;
  const newer = r.fetched_commit && r.fetched_commit !== r.applied_commit;
  return h(
    "article",
    { class: `card${blocked ? " card-error" : ""}`, "data-testid": "repo-card", "data-repository": r.name },
    h("h3", null, r.name),
    h("p", { class: "muted url" }, r.url || "-", r.branch ? ` · ${r.branch}` : ""),
    h(
      "dl",
      { class: "facts" },
      h("dt", null, "Applied"),
      h("dd", { "data-testid": "applied-commit" }, commitEl(r.applied_commit, r.commit_url), " ", timeEl(r.applied_at)),
      h("dt", null, "Fetched"),
      h("dd", { "data-testid": "fetched-commit" }, commitEl(r.fetched_commit, r.fetched_commit_url), " ", timeEl(r.fetched_at)),
    ),
    blocked
      ? h(
          "p",
          { class: "error", "data-testid": "repo-error" },
          h("strong", null, r.error_reason || "Error"),
          r.error ? `: ${r.error}` : "",
          newer ? h("span", { class: "block" }, "The fetched commit is not applied until this is fixed.") : null,
        )
      : null,
  );
}

function runCell(run) {
  if (!run) return h("span", { class: "muted" }, "-");
  if (!isLive(run)) {
    return h("span", { class: "muted" }, `last run ${run.phase}${run.reason && run.phase === "Failed" ? ` (${run.reason})` : ""}`);
  }
  const where = [run.backend, run.job_id ? `job ${run.job_id}` : null].filter(Boolean).join(" · ");
  const more = [
    run.segment !== null && run.segment !== undefined ? `segment ${run.segment}` : null,
    run.node ? `node ${run.node}` : null,
    run.attempt > 1 ? `attempt ${run.attempt}` : null,
  ].filter(Boolean);
  return h(
    "div",
    { "data-testid": "run-in-flight", "data-run": run.id },
    phaseBadge(run.phase),
    " ",
    where,
    more.length ? h("div", { class: "muted" }, more.join(" · ")) : null,
  );
}

/** The labels other than team (which has its own column), small under the name. */
function otherLabels(labels) {
  const rest = Object.entries(labels || {}).filter(([k]) => k !== "team");
  if (!rest.length) return null;
  return h(
    "ul",
    { class: "chips labels" },
    rest.map(([k, v]) => h("li", null, h("span", { class: "chip-key" }, k), "=", v)),
  );
}

function modelRow(m) {
  const latest = m.latest_version;
  return h(
    "tr",
    {
      "data-testid": "model-row",
      "data-model": m.name,
      "data-repository": m.repository,
      "data-condition": m.condition || "Unknown",
    },
    h(
      "th",
      { scope: "row" },
      link(modelHref(m.repository, m.name), m.name, { "data-focus-key": `${m.repository}/${m.name}` }),
      m.suspend ? h("span", { class: "tag" }, "suspended") : null,
      otherLabels(m.labels),
    ),
    h("td", null, m.repository),
    h("td", null, badge(m.condition)),
    h(
      "td",
      { class: "reason" },
      m.reason ? h("strong", null, m.reason) : null,
      m.message ? h("div", { class: "message" }, m.message) : null,
      !m.reason && !m.message ? h("span", { class: "muted" }, "-") : null,
    ),
    h(
      "td",
      { "data-testid": "latest-version" },
      latest !== null && latest !== undefined ? link(versionHref(m.repository, m.name, latest), `v${latest}`) : "-",
    ),
    h("td", null, chips(m.aliases, (v) => `v${v}`)),
    h("td", null, runCell(m.run)),
    h("td", null, m.team || h("span", { class: "muted" }, "-")),
    h("td", null, m.backend || "-"),
    h("td", null, timeEl(m.updated_at)),
  );
}

export function overviewPage(ctx) {
  let data = null;
  let sig = null;
  const filter = { team: ctx.query.get("team") || "", backend: ctx.query.get("backend") || "", condition: ctx.query.get("condition") || "" };
  const els = {};

  function matches(m) {
    return (
      (!filter.team || m.team === filter.team) &&
      (!filter.backend || m.backend === filter.backend) &&
      (!filter.condition || (m.condition || "Unknown") === filter.condition)
    );
  }

  function applyFilter() {
    let shown = 0;
    const rows = els.tbody.children;
    for (let i = 0; i < rows.length; i++) {
      const m = data.models[i];
      if (!m) continue;
      const ok = matches(m);
      rows[i].hidden = !ok;
      if (ok) shown++;
    }
    const total = data.models.length;
    replace(els.count, shown === total ? `${total} models` : `${shown} of ${total} models match the filters`);
    els.empty.hidden = shown !== 0 || total === 0;
  }

  function setUrl() {
    const q = new URLSearchParams(location.search);
    for (const key of Object.keys(filter)) {
      if (filter[key]) q.set(key, filter[key]);
      else q.delete(key);
    }
    const s = q.toString();
    history.replaceState(history.state, "", location.pathname + (s ? `?${s}` : ""));
  }

  function fillSelect(select, key, values, all) {
    const opts = [...(values || [])];
    if (filter[key] && !opts.includes(filter[key])) opts.push(filter[key]);
    replace(
      select,
      h("option", { value: "" }, all),
      opts.map((v) => h("option", { value: v }, v)),
    );
    select.value = filter[key];
  }

  function skeleton() {
    els.cards = h("div", { class: "cards" });
    els.selects = {};
    const controls = FILTERS.map(([key, label]) => {
      const select = h("select", {
        id: `filter-${key}`,
        name: key,
        "data-testid": `filter-${key}`,
        on: {
          change: () => {
            filter[key] = select.value;
            setUrl();
            applyFilter();
          },
        },
      });
      els.selects[key] = select;
      return h("div", { class: "field" }, h("label", { for: `filter-${key}` }, label), select);
    });
    els.count = h("p", { class: "muted count", "aria-live": "polite" });
    els.empty = h("p", { class: "muted", hidden: true }, "No model matches these filters.");
    const t = table(
      "Models",
      ["Model", "Repository", "Condition", "Reason", "Latest", "Aliases", "Run", "Team", "Backend", "Updated"],
      { "data-testid": "models", class: "models" },
    );
    els.tbody = t.tbody;
    replace(
      ctx.main,
      h("h1", { tabindex: "-1" }, "Overview"),
      h("section", { "aria-labelledby": "h-repos" }, h("h2", { id: "h-repos" }, "Repositories"), els.cards),
      h(
        "section",
        { "aria-labelledby": "h-models" },
        h("h2", { id: "h-models" }, "Models"),
        h("form", { class: "filters", role: "search", "aria-label": "Filter models", on: { submit: (e) => e.preventDefault() } }, controls),
        els.count,
        t.table,
        els.empty,
      ),
    );
  }

  function render() {
    const next = JSON.stringify([data.repositories, data.models, data.facets]);
    if (next === sig) return;
    sig = next;
    const focused = els.tbody.contains(document.activeElement) ? document.activeElement.getAttribute("data-focus-key") : null;
    const cards = document.createDocumentFragment();
    for (const r of data.repositories) cards.appendChild(repoCard(r));
    if (!data.repositories.length) cards.appendChild(h("p", { class: "muted" }, "No repository state found."));
    replace(els.cards, cards);
    for (const [key, , facet, all] of FILTERS) fillSelect(els.selects[key], key, data.facets && data.facets[facet], all);
    const rows = document.createDocumentFragment();
    for (const m of data.models) rows.appendChild(modelRow(m));
    replace(els.tbody, rows);
    applyFilter();
    if (focused) {
      const again = els.tbody.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  return {
    async load() {
      ctx.setTitle("Overview");
      data = await getJSON("/ui/api/overview");
      skeleton();
      render();
    },
    async refresh() {
      data = await getJSON("/ui/api/overview");
      render();
    },
    interval: () => 5000,
    destroy() {},
  };
}
