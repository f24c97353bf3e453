// The JSON API client: GET only, same origin (the session cookie goes along), errors sorted into what the page
// does about them: Unreachable (network failure or a 5xx: show the banner and retry with backoff), NotFound /
// BadRequest (show the server's message in the page), Unauthorized (go to the login page).

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
    location.assign("/ui/login");
    throw new ApiError(401, "login needed");
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (_) {
    body = null;
  }
  if (resp.status >= 500) {
    throw new Unreachable(resp.status, `HTTP ${resp.status}`);
  }
  if (!resp.ok) {
    const message = body && typeof body.error === "string" ? body.error : `HTTP ${resp.status}`;
    throw new ApiError(resp.status, message);
  }
  return body;
}
