// The dashboard shell: routes location.pathname to a page (every page URL can be shared), navigates internal
// links with pushState (no reload), runs the polling loop of the current page, and keeps the page alive across
// a daemon restart: a failed request shows the connection banner and retries after 1, 2, 4 ... 30 s; when the
// server answers again the banner goes and the page refreshes. Pages without live data poll the cheap
// /ui/api/version heartbeat and refresh when the server restarted.

import { ApiError, getJSON, Unreachable } from "./api.js";
import { clusterPage } from "./cluster.js";
import { h, link, replace } from "./dom.js";
import { modelPage } from "./model.js";
import { overviewPage } from "./overview.js";
import { versionPage } from "./version.js";

const IDLE_MS = 10000;
const MAX_BACKOFF_S = 30;

const main = document.getElementById("main");
const banner = document.querySelector('[data-testid="conn-banner"]');
const bannerText = banner.querySelector(".conn-text");
const retryButton = banner.querySelector(".conn-retry");

let page = null;
let timer = null;
let failures = 0;
let countdown = null;
let startedAt = null;
let staleAfterOutage = false;

function setTitle(name) {
  document.title = `${name} · gitopsd`;
}

function decode(part) {
  try {
    return decodeURIComponent(part);
  } catch (_) {
    return null;
  }
}

/** The page for a path: [factory, params, nav key] or null. */
function match(pathname) {
  const parts = pathname.replace(/\/+$/, "").split("/").slice(1).map(decode);
  if (parts[0] !== "ui" || parts.some((p) => p === null || p === "")) return null;
  const rest = parts.slice(1);
  if (rest.length === 0) return [overviewPage, [], "overview"];
  if (rest[0] === "cluster" && rest.length === 1) return [clusterPage, [], "cluster"];
  if (rest[0] === "models" && rest.length === 3) return [modelPage, rest.slice(1), null];
  if (rest[0] === "versions" && rest.length === 4) return [versionPage, rest.slice(1), null];
  return null;
}

function notFoundPage(ctx) {
  return {
    async load() {
      ctx.setTitle("Not found");
      replace(
        ctx.main,
        h("h1", { tabindex: "-1" }, "Not found"),
        h("p", null, "The dashboard has no page at this address. ", link("/ui/", "Go to the overview"), "."),
      );
    },
    async refresh() {},
    interval: () => null,
    destroy() {},
  };
}

function showPageError(p, err) {
  setTitle(err.status === 404 ? "Not found" : "Error");
  replace(
    main,
    h("h1", { tabindex: "-1" }, err.status === 404 ? "Not found" : "Cannot show this page"),
    h("p", { class: "error", "data-testid": "page-error" }, err.message),
    err.status >= 500 ? h("p", { class: "muted" }, `Trying again every ${IDLE_MS / 1000} s.`) : null,
    h("p", null, link("/ui/", "Back to the overview")),
  );
  // A server fault may pass (a database being migrated): load the page again on the next cycle. A 404 stays
  // until the server restarts (heartbeat).
  if (err.status >= 500) p.loaded = false;
  else p.failed = true;
}

// -- connection banner ------------------------------------------------------------------------------------------

function connectionLost() {
  failures += 1;
  staleAfterOutage = true;
  const wait = Math.min(MAX_BACKOFF_S, 2 ** (failures - 1));
  let left = wait;
  const say = () => {
    bannerText.textContent = `gitopsd unreachable, retrying in ${left}s`;
  };
  say();
  banner.hidden = false;
  clearInterval(countdown);
  countdown = setInterval(() => {
    left = Math.max(0, left - 1);
    say();
  }, 1000);
  return wait * 1000;
}

function connectionBack() {
  failures = 0;
  clearInterval(countdown);
  countdown = null;
  if (!banner.hidden) {
    banner.hidden = true;
    bannerText.textContent = "";
  }
}

retryButton.addEventListener("click", () => {
  bannerText.textContent = "gitopsd unreachable, retrying now";
  schedule(0);
});

// -- polling loop -----------------------------------------------------------------------------------------------

function schedule(ms) {
  clearTimeout(timer);
  timer = setTimeout(cycle, ms);
}

async function heartbeat(p) {
  const v = await getJSON("/ui/api/version");
  const restarted = startedAt !== null && v.started_at !== startedAt;
  startedAt = v.started_at;
  if ((restarted || staleAfterOutage) && !p.failed) await p.refresh();
}

async function cycle() {
  const p = page;
  try {
    if (!p.loaded) {
      await p.load();
      p.loaded = true;
      // For benchmarks and browser tests: when the page had its data on screen, in ms since navigation start.
      performance.mark("gitopsd:page-loaded", { detail: location.pathname });
      if (p.focusAfterLoad) {
        const h1 = main.querySelector("h1");
        if (h1) h1.focus({ preventScroll: true });
      }
    } else if (p.failed || p.interval() === null) {
      await heartbeat(p);
    } else {
      await p.refresh();
    }
    if (p !== page) return;
    staleAfterOutage = false;
    connectionBack();
    schedule(p.failed ? IDLE_MS : (p.interval() ?? IDLE_MS));
  } catch (err) {
    if (p !== page) return;
    if (err instanceof Unreachable) {
      schedule(connectionLost());
    } else if (err instanceof ApiError) {
      if (err.status === 401) return; // on its way to the login page
      connectionBack();
      p.loaded = true;
      showPageError(p, err);
      schedule(IDLE_MS);
    } else {
      // A bug in this page's code: say so instead of failing silently, and keep the shell alive.
      console.error(err);
      connectionBack();
      p.loaded = true;
      showPageError(p, { status: 0, message: `The page failed to render: ${err && err.message ? err.message : err}` });
      schedule(IDLE_MS);
    }
  }
}

// -- routing ----------------------------------------------------------------------------------------------------

function route(focus) {
  clearTimeout(timer);
  if (page) {
    try {
      page.destroy();
    } catch (err) {
      console.error(err);
    }
  }
  const found = match(location.pathname);
  const ctx = { main, query: new URLSearchParams(location.search), setTitle, params: found ? found[1] : [] };
  page = found ? found[0](ctx) : notFoundPage(ctx);
  page.focusAfterLoad = focus;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (found && a.getAttribute("data-nav") === found[2]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  replace(main, h("p", { class: "muted" }, "Loading…"));
  cycle();
}

function navigate(href) {
  history.pushState({}, "", href);
  route(true);
  scrollTo(0, 0);
}

document.addEventListener("click", (e) => {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const a = e.target instanceof Element ? e.target.closest("a[href]") : null;
  if (!a || a.target || a.hasAttribute("download")) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || (!url.pathname.startsWith("/ui/") && url.pathname !== "/ui")) return;
  if (url.pathname.startsWith("/ui/static/") || url.pathname.startsWith("/ui/login") || url.pathname.startsWith("/ui/api/")) return;
  if (url.pathname === location.pathname && url.search === location.search && url.hash) return; // in-page anchor
  e.preventDefault();
  navigate(url.pathname + url.search);
});

// The skip link moves keyboard focus to the page's content, not only the scroll position.
document.querySelector(".skip-link").addEventListener("click", (e) => {
  e.preventDefault();
  main.focus();
  main.scrollIntoView();
});

addEventListener("popstate", () => route(true));

route(false);
