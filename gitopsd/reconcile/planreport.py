"""The three faces of a change report (`reconcile/changeplan.py`): text for a terminal, markdown for a pull-request
comment, JSON for programs (schema `gitopsd.plan/v1`, shipped beside this module as `plan.schema.json`). Pure.

Everything a repository wrote is untrusted, and a plan is posted on pull requests from any branch: model paths,
spec messages, labels and alias names must not inject markdown or HTML into the comment (a table cell split by
`|`, an `<img>` that calls home, a `<!--` that hides the rest, a code span broken by a backtick, an `@team`
mention, a newline that starts a heading). `md()` makes any text one inert line; the terminal gets the same
text with control characters written out. A comment is bounded (GitHub refuses more than 65,536 characters): the
per-model details are cut first, with a line saying how many were left out, and the summary stays.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gitopsd.errors import SpecProblem, printable, problem_count
from gitopsd.reconcile.changeplan import AliasChange, ChangePlan, Entry, Totals, Verdict
from gitopsd.source.redact import redact_text

SCHEMA = "gitopsd.plan/v1"
#: The first line of every markdown plan: what a CI job looks for to update its one comment.
MARKER = "<!-- gitopsd:plan -->"
#: GitHub's limit on a comment body (characters); GitLab's is larger. Counted in UTF-8 bytes, to be safe.
MAX_MARKDOWN = 65_536
#: Refusals listed by name in the summary; more are counted.
MAX_REFUSALS_SHOWN = 50

_Item = TypeVar("_Item")

_ICONS = {
    Verdict.TRAIN: "🚀 train",
    Verdict.REFUSED: "⛔ refused",
    Verdict.WAIT: "⏳ wait",
    Verdict.SUSPEND: "⏸️ suspended",
    Verdict.REMOVE: "🗑️ removed",
    Verdict.NONE: "no training",
}
# What means something inline, wherever a line puts the text: emphasis, code, links and images ([ ] < >), table
# cells (|), strikethrough (~), math ($), escapes themselves. A colon before a word or a slash (an emoji
# shortcode, an autolink's scheme), "www." (an autolink), and a list or heading marker at the start (a list
# item's text) are escaped where they occur; everything else reads as it is. Mentions and issue references are
# found by the forge in the rendered text, where no escape survives: a zero-width space after "@" and "#"
# breaks them and shows nothing.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]|~$])")
_COLON = re.compile(r":(?=[\w/])")
_WWW = re.compile(r"(?i)\b(www)\.")
_LEADING = re.compile(r"^(\s*)(?:([-+])|(\d+)([.)]))")
_ZWSP = "\u200b"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")


def md(text: object) -> str:
    """`text` as one line of inert markdown: no HTML, no markup, no mention, no line break."""
    line = _CONTROL.sub(" ", redact_text(str(text)))
    line = _MD_SPECIAL.sub(r"\\\1", line)
    line = _COLON.sub(r"\\:", line)
    line = _WWW.sub(r"\1\\.", line)
    line = _LEADING.sub(_leading, line)
    line = line.replace("@", "@" + _ZWSP).replace("#", "\\#" + _ZWSP).replace("->", "→")
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # html.escape, quote=False


def _leading(match: re.Match[str]) -> str:
    space, sign, number, dot = match.groups()
    return f"{space}\\{sign}" if sign else f"{space}{number}\\{dot}"


def term(text: object) -> str:
    """`text` for a terminal: one line, control characters written out, credentials in URLs redacted."""
    line = str(text)
    if line.isascii() and line.isprintable() and "://" not in line:
        return line  # nothing to write out or redact: most of the ten thousand names and reasons of a plan
    return printable(redact_text(line))


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "nothing"


def _hours(value: float) -> str:
    return f"{value:.1f}"


def _entry_hours(entry: Entry) -> str:
    if not entry.gpus:
        return "0"
    return "unbounded (no timeout)" if entry.gpu_hours is None else _hours(entry.gpu_hours)


def cost_line(totals: Totals) -> str:
    """The totals for people: trainings, GPUs, GPU-hours bounded by timeouts, and what has no bound."""
    if not totals.trainings:
        return "no training"
    words = f"{totals.trainings} training(s), {totals.gpus} GPU(s)"
    if not totals.gpus:
        return words
    if totals.unbounded:
        return f"{words}, at least {_hours(totals.gpu_hours)} GPU-hours, unbounded for: {_names(totals.unbounded)}"
    return f"{words}, at most {_hours(totals.gpu_hours)} GPU-hours by their timeouts"


def _names(names: tuple[str, ...], shown: int = 20) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _alias_text(change: AliasChange) -> str:
    if change.from_version is not None:
        before = f"v{change.from_version}"
    elif change.from_target is not None:
        before = f"{change.from_target} (declared)"
    else:
        before = "nothing"
    if change.to_new:
        after = "the version this change trains"
    elif change.to_version is not None:
        after = f"v{change.to_version}"
    elif change.to_target is not None:
        after = f"{change.to_target} (declared)"
    else:
        after = "nothing (removed)"
    refused = f": refused, {change.refused}" if change.refused else ""
    return f"alias {change.alias}: {before} -> {after}{refused}"


def _headline(entry: Entry) -> str:
    """The one sentence of the summary: the verdict's main reason."""
    if entry.verdict is Verdict.REFUSED:
        return entry.refused
    return "; ".join([r.text for r in entry.reasons]) or entry.change


# ---- text ---------------------------------------------------------------------------------------------------

#: What a model's line says it does, before its reason.
_WHAT = {verdict: verdict.value for verdict in Verdict} | {Verdict.TRAIN: "trains", Verdict.NONE: "no training"}


def render_text(plan: ChangePlan) -> str:
    """The change report for a terminal: one line per model that changes, its aliases, then the cost line."""
    lines = [f"change {_short(plan.base_commit)}..{_short(plan.head_commit)} "
             f"(base: {term(plan.base_label)}, head: {term(plan.head_label)}):"]  # fmt: skip
    if plan.error:
        lines.append(f"  ! {term(plan.error)}")
    if plan.problems:
        count = problem_count(plan.problems)
        lines.append(f"  ! the head commit is invalid: {count} problem(s) in its spec files, listed above")
    quiet, paused = plan.omitted
    for entry in plan.entries:  # ten thousand in a large plan: each step here is paid per model
        if not entry.interesting:
            quiet += 1
            paused += entry.verdict is Verdict.SUSPEND
            continue
        what = _WHAT[entry.verdict]
        cost = ""
        if entry.gpus and entry.verdict is Verdict.TRAIN:
            cost = f" [{entry.gpus} GPU(s), {_entry_hours(entry)} GPU-hours]"
        headline = _headline(entry)
        said = f"{what}{cost}: " if not headline.startswith(what) else ""  # not "refused: refused by policy: ..."
        lines.append(f"  {term(entry.model)}: {said}{term(headline)}")
        if entry.aliases or entry.cancels or entry.continues or entry.notes:
            lines += [f"      {term(_alias_text(a))}" for a in entry.aliases]
            lines += [f"      cancels {term(c)}" for c in entry.cancels]
            lines += [f"      continues: {term(c)}" for c in entry.continues]
            lines += [f"      note: {term(n)}" for n in entry.notes]
    if quiet:
        of_them = f"; {paused} of them suspended" if paused else ""
        lines.append(f"  ({quiet} unchanged model(s) not shown{of_them})")
    lines += [f"  ! {term(note)}" for note in plan.notes]
    totals = plan.totals
    if plan.valid:
        refused = f"; {totals.refused} refused" if totals.refused else ""
        if totals.gpus:
            lines.append(f"cost: {totals.gpus} GPU(s) for the new trainings{_text_bound(totals)}{refused}")
        else:
            lines.append(f"cost: {cost_line(totals)}{refused}")
    return "\n".join(lines)


def _text_bound(totals: Totals) -> str:
    if totals.unbounded:
        return f", at least {_hours(totals.gpu_hours)} GPU-hours, unbounded for: {_names(totals.unbounded)}"
    return f", at most {_hours(totals.gpu_hours)} GPU-hours by their timeouts"


# ---- JSON ---------------------------------------------------------------------------------------------------


def to_json(plan: ChangePlan) -> dict[str, Any]:
    """The plan as a `gitopsd.plan/v1` document (docs/pull-requests.md says what each field means)."""
    if plan.omitted.models:
        raise ValueError("a brief plan counts some models instead of listing them: JSON lists every model")
    totals = plan.totals
    return {
        "schema": SCHEMA,
        "base": {"commit": plan.base_commit, "label": plan.base_label},
        "head": {"commit": plan.head_commit, "label": plan.head_label},
        "valid": plan.valid,
        "exit_code": plan.exit_code,
        "error": redact_text(plan.error),
        "problems": [
            {"file": p.file, "line": p.line, "field": p.field, "message": redact_text(p.message)} for p in plan.problems
        ],
        "notes": [redact_text(n) for n in plan.notes],
        "totals": {
            "models": totals.models,
            "trainings": totals.trainings,
            "gpus": totals.gpus,
            "gpu_hours": round(totals.gpu_hours, 3),
            "gpu_hours_unbounded": list(totals.unbounded),
            "refused": totals.refused,
            "waiting": totals.waiting,
            "removed": totals.removed,
            "suspended": totals.suspended,
            "cancelled": totals.cancelled,
            "alias_moves": totals.alias_moves,
        },
        "models": [_entry_json(e) for e in plan.entries],
    }


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "name": entry.model,
        "path": entry.path,
        "action": entry.verdict.value,
        "trains": entry.trains,
        "change": entry.change,
        "reasons": [{"code": r.code.value, "text": redact_text(r.text)} for r in entry.reasons],
        "backend": entry.backend,
        "gpus": entry.gpus,
        "gpu_hours": None if entry.gpu_hours is None else round(entry.gpu_hours, 3),
        "timeout_s": entry.timeout_s,
        "retries": entry.retries,
        "attempt": entry.attempt,
        "refused": redact_text(entry.refused),
        "cancels": [redact_text(c) for c in entry.cancels],
        "continues": list(entry.continues),
        "aliases": [_alias_json(a) for a in entry.aliases],
        "notes": [redact_text(n) for n in entry.notes],
    }


def _alias_json(change: AliasChange) -> dict[str, Any]:
    return {
        "alias": change.alias,
        "from": change.from_version,
        "from_declared": change.from_target,
        "to": change.to_version,
        "to_declared": change.to_target,
        "to_new": change.to_new,
        "refused": change.refused,
    }


def render_json(plan: ChangePlan, *, indent: int | None = 2) -> str:
    """The `gitopsd.plan/v1` document; `indent` None: on one line (what a program reads, written by the C encoder,
    several times faster on ten thousand models than the indented form)."""
    return json.dumps(to_json(plan), indent=indent, ensure_ascii=False)


# ---- markdown -----------------------------------------------------------------------------------------------


def render_markdown(plan: ChangePlan, *, limit: int = MAX_MARKDOWN) -> str:
    """A pull-request comment: the marker line, a title with the commit range, the summary (totals, refusals, a
    table of every model that changes), then one collapsed `<details>` per model; at most `limit` characters."""
    head = [MARKER, f"### gitopsd plan: {md(_short(plan.base_commit))} → {md(_short(plan.head_commit))}", ""]
    head.append(f"Base: {md(plan.base_label)} · head: {md(plan.head_label)}")
    head.append("")
    if not plan.valid:
        head += _invalid(plan)
        return _fit(head, _PROBLEMS, plan.problems, _problem_row, None, limit)
    totals = plan.totals
    summary = [f"**{md(cost_line(totals))}**" + _counts(totals), ""]
    refused = [e for e in plan.entries if e.verdict is Verdict.REFUSED]
    if refused:
        summary.append(f"**⛔ {len(refused)} refused: this change cannot merge as it is**")
        summary.append("")
        summary += [f"- **{md(e.model)}**: {md(e.refused)}" for e in refused[:MAX_REFUSALS_SHOWN]]
        if len(refused) > MAX_REFUSALS_SHOWN:
            summary.append(f"- … and {len(refused) - MAX_REFUSALS_SHOWN} more (see `gitopsd plan --format json`)")
        summary.append("")
    summary += [f"> {md(note)}" for note in plan.notes]
    if plan.notes:
        summary.append("")
    shown = [e for e in plan.entries if e.interesting]
    quiet = len(plan.entries) - len(shown) + plan.omitted.models
    tail = [f"{quiet} unchanged model(s) not shown.", ""] if quiet else []
    return _fit(head + summary, _TABLE, shown, _row, _details, limit, tail)


def _counts(totals: Totals) -> str:
    parts = [(totals.refused, "refused"), (totals.waiting, "waiting"), (totals.removed, "removed"),
             (totals.suspended, "suspended"), (totals.cancelled, "run(s) cancelled"),
             (totals.alias_moves, "alias move(s)")]  # fmt: skip
    return "".join(f" · {count} {what}" for count, what in parts if count)


_TABLE = ["| Action | Model | Why | GPUs | GPU-hours |", "| --- | --- | --- | ---: | ---: |"]
_PROBLEMS = ["| File | Line | Field | Problem |", "| --- | ---: | --- | --- |"]


def _problem_row(problem: SpecProblem) -> str:
    return f"| {md(problem.file)} | {problem.line or ''} | {md(problem.field)} | {md(problem.message)} |"


def _row(entry: Entry) -> str:
    why = _headline(entry)
    if entry.aliases:
        why += "; " + "; ".join(_alias_text(a) for a in entry.aliases)
    hours = _entry_hours(entry) if entry.trains else "–"
    gpus = str(entry.gpus) if entry.trains else "–"
    return f"| {_ICONS[entry.verdict]} | {md(entry.model)} | {md(why)} | {gpus} | {hours} |"


def _details(entry: Entry) -> str:
    lines = [f"<details><summary>{md(entry.model)}: {md(_ICONS[entry.verdict])}</summary>", ""]
    lines.append(f"- file: {md(entry.path)}")
    lines.append(f"- change: {md(entry.change)}; backend: {md(entry.backend or 'none')}")
    lines += [f"- {md(r.code.value)}: {md(r.text)}" for r in entry.reasons]
    if entry.trains:
        timeout = f"{entry.timeout_s} s" if entry.timeout_s is not None else "none"
        lines.append(f"- cost: {entry.gpus} GPU(s), GPU-hours {_entry_hours(entry)}; timeout {timeout}; "
                     f"retries {entry.retries}" + (f"; attempt {entry.attempt}" if entry.attempt else ""))  # fmt: skip
    lines += [f"- {md(_alias_text(a))}" for a in entry.aliases]
    lines += [f"- cancels {md(c)}" for c in entry.cancels]
    lines += [f"- continues: {md(c)}" for c in entry.continues]
    lines += [f"- note: {md(n)}" for n in entry.notes]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def _invalid(plan: ChangePlan) -> list[str]:
    lines = ["**❌ The head commit cannot be planned: this change cannot merge as it is**", ""]
    if plan.error:
        lines += [md(plan.error), ""]
    if plan.problems:
        lines += [f"{problem_count(plan.problems)} problem(s) in the spec files:", ""]
    return lines


def _fit(
    top: list[str],
    header: list[str],
    items: Sequence[_Item],
    row: Callable[[_Item], str],
    detail: Callable[[_Item], str] | None,
    limit: int,
    tail: list[str] | None = None,
) -> str:
    """Join the parts within `limit` characters: each item's table `row`, then its `detail` block; the details
    are cut first, then the rows, each with a line saying how many were left out; the title and totals always
    stay. A row or a block is made only if it is reached: a comment holds a few hundred of ten thousand."""
    tail = tail or []
    text = "\n".join(top)
    budget = limit - _size(text) - 400  # room for the lines that say what was cut
    table: list[str] = []
    if items:
        table = list(header)
        used = sum(_size(line) + 1 for line in table)
        for count, item in enumerate(items):
            line = row(item)
            if used + _size(line) + 1 > budget:
                table.append(f"\n… {len(items) - count} more row(s) left out: the comment has a size limit; "
                             "`gitopsd plan --format json` lists them all.")  # fmt: skip
                detail = None
                break
            table.append(line)
            used += _size(line) + 1
        table.append("")
        budget -= used
    body = table + tail
    budget -= sum(_size(line) + 1 for line in tail)
    kept: list[str] = []
    for count, item in enumerate(items):
        if detail is None:
            break
        block = detail(item)
        if _size(block) + 1 > budget:
            kept.append(f"… details of {len(items) - count} model(s) left out: the comment has a size limit; "
                        "`gitopsd plan --format json` has them all.")  # fmt: skip
            break
        kept.append(block)
        budget -= _size(block) + 1
    out = "\n".join([text, *body, *kept]).rstrip("\n") + "\n"
    if _size(out) <= limit:
        return out
    return out.encode()[: limit - 8].decode(errors="ignore") + "…\n"  # a last resort: the parts above fit


def _size(text: str) -> int:
    """What a forge counts, at most: UTF-8 bytes (GitHub counts characters, which are never more)."""
    return len(text.encode())
