"""The two pages the server renders itself: the login form, and why a listener serves no dashboard.

Plain HTML with no script (the Content-Security-Policy allows none inline) and an inline style; every value
placed in it is HTML-escaped. Everything else the browser shows is drawn by the page's own script from the
JSON API.
"""

from __future__ import annotations

from html import escape

_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#16191d}"
    "main{max-width:26rem;margin:12vh auto;padding:2rem;background:#fff;border:1px solid #c9ced6;border-radius:8px}"
    "h1{font-size:1.4rem;margin-top:0}label{display:block;font-weight:600;margin-bottom:.3rem}"
    "input{width:100%;box-sizing:border-box;padding:.5rem;font:inherit;border:1px solid #6b7280;border-radius:4px}"
    "button{margin-top:1rem;padding:.5rem 1.2rem;font:inherit;background:#1d4ed8;color:#fff;border:0;"
    "border-radius:4px;cursor:pointer}"
    ":focus-visible{outline:3px solid #f59e0b;outline-offset:2px}"
    ".problem{color:#991b1b;font-weight:600}code{background:#eef0f3;padding:0 .2rem}"
)


def _page(title: str, body: str) -> bytes:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # else the browser asks the server's root for /favicon.ico: a 404
        f"<title>{escape(title)} · gitopsd</title><style>{_STYLE}</style></head>"
        f'<body><main id="main">{body}</main></body></html>\n'
    ).encode()


def login_form(*, next_path: str = "/ui/", problem: str | None = None) -> bytes:
    """The login form: one password field for the daemon's API token, posted to /ui/login."""
    said = f'<p class="problem" role="alert">{escape(problem)}</p>' if problem else ""
    return _page(
        "Log in",
        "<h1>gitopsd dashboard</h1>"
        "<p>Type the API token of this gitopsd (its <code>http.token</code>, or the file given to "
        "<code>gitopsd ui --token-file</code>). Your browser keeps a session cookie, never the token.</p>"
        f"{said}"
        '<form method="post" action="/ui/login">'
        f'<input type="hidden" name="next" value="{escape(next_path)}">'
        '<label for="token">API token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>'
        '<button type="submit">Log in</button></form>',
    )


def no_token_page() -> bytes:
    """What the token-guarded listener answers when no token is configured: why, and what to set."""
    return _page(
        "No dashboard here",
        "<h1>No dashboard on this address</h1>"
        "<p>This gitopsd has no <code>[http] token</code>, so this listener serves neither the API nor the "
        "dashboard (every user of this host can reach it). Set <code>http.token</code> to a secret of at least "
        '16 characters and log in with it, or add <code>http.local_listen = "127.0.0.1:PORT"</code> and open '
        "<code>/ui/</code> there (through an SSH tunnel from a laptop), or run <code>gitopsd ui</code>.</p>",
    )
