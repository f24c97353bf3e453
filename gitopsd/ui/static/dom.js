// DOM building without HTML parsing: every string from the API (names, labels, messages, logs: all written by a
// repository or a training, so hostile) enters the page as a text node or an attribute value set with
// setAttribute, never through innerHTML. Links are checked so that a hostile URL cannot become javascript:.

/** Create an element. attrs: {class, text, dataset-like 'data-*', on: {event: fn}, ...attributes}; children:
 *  nodes, strings (text nodes) or null/false (skipped), possibly nested in arrays. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") el.textContent = String(value);
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
      else if (key === "href") el.setAttribute("href", safeHref(value));
      else if (value === true) el.setAttribute(key, "");
      else el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** An href that is an internal /ui/ path or an http(s) URL; anything else (javascript:, data:) becomes "#". */
export function safeHref(value) {
  const s = String(value);
  if (s.startsWith("/ui/") || s === "/ui") return s;
  try {
    const u = new URL(s, location.href);
    if (u.protocol === "http:" || u.protocol === "https:") return u.href;
  } catch (_) {
    /* not a URL */
  }
  return "#";
}

/** A link: internal paths navigate in-page (app.js intercepts them); external ones open the forge. */
export function link(href, text, attrs = {}) {
  const internal = String(href).startsWith("/ui/");
  return h("a", { href, ...(internal ? {} : { rel: "noopener noreferrer external" }), ...attrs }, text);
}

/** A URL path segment: repository, model and run names are percent-encoded so "/" or "?" stay in one segment. */
export const seg = (s) => encodeURIComponent(String(s));

export const modelHref = (repo, model) => `/ui/models/${seg(repo)}/${seg(model)}`;
export const versionHref = (repo, model, n) => `/ui/versions/${seg(repo)}/${seg(model)}/${seg(n)}`;

/** Replace every child of el. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const pad = (n) => String(n).padStart(2, "0");

/** "2024-05-01 12:03:04" in local time, "-" for null. */
export function fmtTime(t) {
  if (t === null || t === undefined || !Number.isFinite(Number(t))) return "-";
  const d = new Date(Number(t) * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** "5 s ago", "3 min ago", "2 h ago", "4 d ago". */
export function ago(t) {
  if (t === null || t === undefined || !Number.isFinite(Number(t))) return "-";
  const s = Math.max(0, Date.now() / 1000 - Number(t));
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** A <time> element: relative text, absolute time in its title and datetime. */
export function timeEl(t) {
  if (t === null || t === undefined || !Number.isFinite(Number(t))) return h("span", { class: "muted" }, "-");
  return h("time", { datetime: new Date(Number(t) * 1000).toISOString(), title: fmtTime(t) }, ago(t));
}

export function duration(start, end) {
  if (!Number.isFinite(Number(start))) return "-";
  const s = Math.max(0, (end ?? Date.now() / 1000) - start);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

export const shortSha = (s) => (s ? String(s).slice(0, 12) : "-");

export function bytes(n) {
  if (!Number.isFinite(Number(n))) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

/** A metric value: up to 4 significant decimals, integers as they are. */
export function num(v) {
  if (v === null || v === undefined) return "-";
  const n = Number(v);
  if (!Number.isFinite(n)) return String(v);
  if (Number.isInteger(n)) return String(n);
  return Math.abs(n) >= 1000 ? n.toFixed(1) : String(Number(n.toPrecision(4)));
}

/** A condition badge: Ready / Reconciling / Stalled / unknown. */
export function badge(condition) {
  const c = condition || "Unknown";
  const cls = { Ready: "ok", Reconciling: "busy", Stalled: "bad" }[c] || "none";
  return h("span", { class: `badge badge-${cls}`, "data-testid": "condition", "data-condition": c }, c);
}

/** A commit, linked to the forge when the server gave a URL. */
export function commitEl(sha, url) {
  if (!sha) return h("span", { class: "muted" }, "-");
  const text = h("code", { title: String(sha) }, shortSha(sha));
  return url ? link(url, text, { title: String(sha) }) : text;
}

/** key=value chips for labels or metrics. */
export function chips(obj, fmt = (v) => String(v)) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h("span", { class: "muted" }, "-");
  return h("ul", { class: "chips" }, entries.map(([k, v]) => h("li", null, h("span", { class: "chip-key" }, k), "=", fmt(v))));
}

/** A table with a caption and <th scope="col"> headers; returns {table, tbody}. */
/** The breadcrumb trail of a page: `items` (links or text) from the overview down, the last one the page itself. */
export function crumbs(...items) {
  const parts = items.flatMap((item, i) => (i ? [" › ", item] : [item]));
  return h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, ...parts);
}

export function table(caption, headers, attrs = {}) {
  const tbody = h("tbody");
  const tableEl = h(
    "table",
    attrs,
    h("caption", null, caption),
    h("thead", null, h("tr", null, headers.map((t) => h("th", { scope: "col" }, t)))),
    tbody,
  );
  return { table: h("div", { class: "table-wrap" }, tableEl), tableEl, tbody };
}
