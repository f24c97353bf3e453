// The JSON API client: GET only, same origin (the session cookie goes along), errors sorted into what the page
// does about them: Unreachable (network failure, or 502/503/504 from a proxy: show the banner and retry with
// backoff), any other error status (show the server's message in the page: 404 unknown model, 400 bad query,
// 500 a server fault the gitopsd log explains), 401 (go to the login page).

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The daemon or `gitopsd ui` did not answer, or answered with a server error: worth retrying. */
export class Unreachable extends ApiError {}

const TIMEOUT_MS = 15000;

export async function getJSON(path) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  let resp;
  try {
    resp = await fetch(path, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
      cache: "no-store",
      signal: ctl.signal,
    });
  } catch (err) {
    throw new Unreachable(0, err && err.name === "AbortError" ? "request timed out" : "network error");
  } finally {
    clearTimeout(timer);
  }
  if (resp.status === 401) {
    // The session ended: log in again, then come back to this page (the server only follows /ui/ paths).
    location.assign(`/ui/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new ApiError(401, "login needed");
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (_) {
    body = null;
  }
  // A proxy or a tunnel with nothing behind it: the daemon is away (restarting), worth the banner and a retry.
  if (resp.status === 502 || resp.status === 503 || resp.status === 504) {
    throw new Unreachable(resp.status, `HTTP ${resp.status}`);
  }
  if (!resp.ok) {
    const message = body && typeof body.error === "string" ? body.error : `HTTP ${resp.status}`;
    throw new ApiError(resp.status, message);
  }
  return body;
}
