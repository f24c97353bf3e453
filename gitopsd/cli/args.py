"""The command line's grammar, declared: commands, their arguments and options, built into argparse parsers.

Why not a framework: `gitopsd --help` and `gitopsd status` must start in tens of milliseconds on a login node,
and the standard library's argparse costs a fraction of a CLI framework's import time. Each command module
declares its commands here with `command(...)`, `arg(...)` and `opt(...)` (plain data, nothing built), and
keeps its implementation's imports inside the handler. `build_parser()` turns the declarations into parsers
when `main()` runs; `dispatch()` calls the chosen handler with a `Context` and its options as keyword
arguments. What argparse lacks, this adds: an option's default from an environment variable (a required option
is satisfied by it), `[default: ...]` in the help, repeatable options as tuples, paragraphs kept in help texts,
and usage errors a handler finds itself (`UsageError`), reported like argparse's own: `error: ...`, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from gitopsd.daemon.config import DaemonConfig, RepositoryConfig

PROG = "gitopsd"
MAX_WIDTH = 110  # help is wrapped to the terminal, but no wider than this


# Plain classes, not dataclasses: `dataclasses` imports `inspect`, milliseconds that every start would pay.


class Context:
    """What the top-level options give every command: the state directory, the operator's configuration file
    (None: the default one, if it exists), --verbose, and that configuration once loaded."""

    __slots__ = ("config", "loaded_config", "state_dir", "verbose")

    def __init__(self, state_dir: Path, config: Path | None = None, verbose: bool = False) -> None:
        self.state_dir = state_dir
        self.config = config
        self.verbose = verbose
        self.loaded_config: tuple[DaemonConfig | None, RepositoryConfig | None] | None = None


class UsageError(Exception):
    """A command line that parses but makes no sense (e.g. --verify-since alone): exit 2, like a parse error.
    `option` names the option at fault, as argparse names it in its own errors."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(f"argument {option}: {message}" if option else message)


class Param:
    """One argument or option: argparse's `add_argument` parameters, plus `envvar` (the default when the
    option is not given; empty counts as unset) and `multiple` (repeatable; the values as a tuple)."""

    __slots__ = ("envvar", "flags", "kwargs", "multiple")

    def __init__(self, flags: tuple[str, ...], kwargs: dict[str, Any], envvar: str | None = None,
                 multiple: bool = False) -> None:  # fmt: skip
        self.flags = flags
        self.kwargs = kwargs
        self.envvar = envvar
        self.multiple = multiple

    @property
    def dest(self) -> str:
        if "dest" in self.kwargs:
            return str(self.kwargs["dest"])
        name = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        return name.lstrip("-").replace("-", "_")


def arg(name: str, *, optional: bool = False, **kwargs: Any) -> Param:
    """A positional argument; `optional`: it may be left out (then its `default`, else None)."""
    if optional:
        kwargs["nargs"] = "?"
    kwargs.setdefault("metavar", name.upper())
    return Param((name,), kwargs)


def opt(*flags: str, envvar: str | None = None, multiple: bool = False, show_default: bool = False,
        **kwargs: Any) -> Param:  # fmt: skip
    """An option. `flag=True` makes it a switch (False unless given); `show_default` adds `[default: ...]`."""
    if kwargs.pop("flag", False):
        kwargs.update(action="store_true")
    if multiple:
        kwargs.update(action="append")
    if show_default:
        kwargs["help"] = f"{kwargs.get('help', '')}  [default: {kwargs['default']}]".strip()
    return Param(flags, kwargs, envvar=envvar, multiple=multiple)


def config_opt(help: str, *, envvar: str | None = None) -> Param:
    """`--config FILE`: the configuration file this command reads (as `config_path`; it must not be a folder)."""
    return opt("--config", dest="config_path", metavar="FILE", type=path_arg(dir_okay=False), envvar=envvar, help=help)


Handler = Callable[..., None]


class Command:
    """A command: `gitopsd NAME` or, in a group, `gitopsd GROUP NAME`; its help is the handler's docstring."""

    __slots__ = ("group", "handler", "logs", "name", "params")

    def __init__(self, name: str, handler: Handler, params: tuple[Param, ...], group: str | None = None,
                 logs: bool = True) -> None:  # fmt: skip
        self.name = name
        self.handler = handler
        self.params = params
        self.group = group
        self.logs = logs

    @property
    def path(self) -> str:
        return f"{self.group} {self.name}" if self.group else self.name


class Grammar:
    """Every command and group declared so far, in declaration order; the group "" is the whole command line."""

    __slots__ = ("commands", "groups")

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self.groups: dict[str, str] = {}


GRAMMAR = Grammar()


def group(name: str, doc: str) -> str:
    """Declare the group `gitopsd NAME ...` with its help text; returns its name for `command(group=...)`."""
    GRAMMAR.groups[name] = doc
    return name


def command(name: str, *params: Param, group: str | None = None, logs: bool = True) -> Callable[[Handler], Handler]:
    """Declare the decorated function as the handler of `gitopsd [GROUP] NAME`, called as
    `handler(ctx, **options)`; its docstring is the command's help. `logs=False`: the command imports nothing
    that logs, so the logging set-up (milliseconds of imports) is left out; the handler calls
    `main.setup_logging(ctx)` itself before any path that may log (tests/test_startup.py checks the rest)."""

    def declare(handler: Handler) -> Handler:
        GRAMMAR.commands.append(Command(name=name, handler=handler, params=params, group=group, logs=logs))
        return handler

    return declare


@lru_cache(maxsize=1)
def _width() -> int:
    """The help's width: the terminal's, at most MAX_WIDTH; asked once (argparse makes a formatter per option)."""
    try:  # what shutil.get_terminal_size says, without importing shutil (and its compression modules)
        columns = int(os.environ.get("COLUMNS", "0")) or os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        columns = 80
    return min(MAX_WIDTH, columns - 2)


class _Formatter(argparse.HelpFormatter):
    """argparse's help, with a help text's paragraphs kept (each one re-wrapped) and at most MAX_WIDTH wide."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_width(), max_help_position=28)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
        return "\n\n".join(super(_Formatter, self)._fill_text(p, width, indent) for p in paragraphs if p)


class _Version(argparse.Action):
    """--version: the installed gitopsd's version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="Show the version and exit.")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        from importlib.metadata import version

        print(f"{PROG}, version {version('gitopsd')}")
        parser.exit()


def path_arg(*, exists: bool = False, dir_okay: bool = True, file_okay: bool = True) -> Callable[[str], Path]:
    """An argument type: a Path; `exists` refuses one that does not exist, `dir_okay=False` a directory and
    `file_okay=False` a file (each only when it exists)."""

    def convert(text: str) -> Path:
        found = Path(text)
        if exists and not found.exists():
            raise argparse.ArgumentTypeError(f"path {text!r} does not exist")
        if not dir_okay and found.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a directory")
        if not file_okay and found.exists() and not found.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a file")
        return found

    return convert


def at_least_zero(text: str) -> float:
    """An argument type: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not in the range x>=0")
    return value


def summary(doc: str | None) -> str:
    """The first sentence of a help text: what the command list shows."""
    first = " ".join((doc or "").strip().split("\n\n")[0].split())
    end = first.find(". ")
    return first[: end + 1] if end >= 0 else first


def _description(doc: str | None) -> str:
    """A docstring as help text: its lines stripped (the formatter re-wraps each paragraph anyway)."""
    return "\n".join(line.strip() for line in (doc or "").strip().splitlines())


def _add(parser: argparse.ArgumentParser, param: Param) -> None:
    kwargs = dict(param.kwargs)
    if param.envvar:
        value = os.environ.get(param.envvar)
        if value:
            kwargs["default"] = value  # a str: argparse converts it with the option's type, errors included
            kwargs.pop("required", None)
    if "dest" in kwargs and not param.flags[0].startswith("-"):
        kwargs.pop("dest")
    parser.add_argument(*param.flags, **kwargs)


def _translate_once() -> None:
    """argparse translates each of its own phrases ("options", "show this help message and exit") through
    gettext at every use, and gettext looks for catalogues on disk every time it finds none: dozens of
    look-ups for one parser. Remember each translation instead; the words are the same."""
    translate = getattr(argparse, "_")  # noqa: B009 (argparse declares no `_`)
    if not hasattr(translate, "cache_info"):
        setattr(argparse, "_", lru_cache(maxsize=None)(translate))  # noqa: B010 (argparse declares no `_`)


def chosen(args: Sequence[str], top: Sequence[Param]) -> str | None:
    """The command `args` name (its first word after the top-level options), or None when they name none."""
    with_value = {f for p in top if p.kwargs.get("action") is None for f in p.flags}
    words = iter(args)
    for word in words:
        if word in with_value:
            next(words, None)
        elif word == "--" or not word.startswith("-"):
            return None if word == "--" else word
    return None


def build_parser(top: Sequence[Param], only: str | None = None) -> argparse.ArgumentParser:
    """The parser of the whole command line: the top-level options `top`, then one subparser per command
    (in a group's own subparsers for a grouped one), each knowing its Command as `_command`. With `only`, the
    arguments and options of the other commands are left out: parsing a command line needs only its own."""
    _translate_once()
    parser = argparse.ArgumentParser(prog=PROG, description=_description(GRAMMAR.groups.get("")),
                                     formatter_class=_Formatter, allow_abbrev=False)  # fmt: skip
    for param in top:
        _add(parser, param)
    parser.add_argument("--version", action=_Version)
    subs = parser.add_subparsers(title="commands", metavar="COMMAND", dest="_name")
    grouped: dict[str, argparse._SubParsersAction[Any]] = {}
    entries: list[tuple[str, Command | None]] = [(c.group or c.name, c) for c in GRAMMAR.commands]
    entries += [(name, None) for name in GRAMMAR.groups if name]
    for top_name, cmd in sorted(entries, key=lambda e: (e[0], e[1] is not None, e[1].name if e[1] else "")):
        if cmd is None:  # a group: its subparser holds its commands
            group_doc = GRAMMAR.groups[top_name]
            gp = subs.add_parser(top_name, help=summary(group_doc), description=_description(group_doc),
                                 formatter_class=_Formatter, allow_abbrev=False)  # fmt: skip
            grouped[top_name] = gp.add_subparsers(title="commands", metavar="COMMAND", dest="_sub")
            continue
        target = grouped[cmd.group] if cmd.group else subs
        doc = cmd.handler.__doc__
        sp = target.add_parser(cmd.name, help=summary(doc), description=_description(doc),
                               formatter_class=_Formatter, allow_abbrev=False)  # fmt: skip
        for param in cmd.params if only is None or only == top_name else ():
            _add(sp, param)
        sp.set_defaults(_command=cmd)
    return parser


def options_of(cmd: Command, namespace: argparse.Namespace) -> dict[str, Any]:
    """The handler's keyword arguments: each parameter's value, a repeatable one's as a tuple."""
    values: dict[str, Any] = {}
    for param in cmd.params:
        dest = param.dest if param.flags[0].startswith("-") else param.flags[0]
        value = getattr(namespace, dest)
        values[dest] = tuple(value or ()) if param.multiple else value
    return values


def subparser(parser: argparse.ArgumentParser, path: str) -> argparse.ArgumentParser:
    """The parser of the command `path` ("status", "registry list"), to report a handler's usage error."""
    for name in path.split():
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser
