"""Render manifest values and template files with Jinja, sandboxed and strict (docs/manifest.md#rendering).

In scope: ``env``, ``inputs`` and, in a forEach, ``item``; undefined variables are errors naming what is
missing, never a value. In template files every ``{{ ... }}`` output becomes a random placeholder, the
text is parsed as YAML and the values are put back: data never changes the structure of the body.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import secrets
import traceback
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import jinja2
from jinja2.sandbox import SecurityError

from ..errors import Location, Problem, UserError
from .sandbox import BudgetedSandbox, BudgetExceeded, template_line_now
from .yamlload import (
    CURLY_QUOTES,
    DEFAULT_MAX_BYTES,
    EnvRef,
    YDict,
    YList,
    decode_text,
    load_yaml,
    read_capped,
)

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)
_HAS_JINJA = re.compile(r"\{[{%#]")
_NOWHERE = Location()  # an inline value's problem, located by the caller


class RenderError(Exception):
    """A value or template could not be rendered; carries the problem to report (an inline value's
    without a location: ``at`` gives it the caller's, built only when something failed)."""

    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem

    def at(self, where: Location) -> Problem:
        return replace(self.problem, location=where)


class EnvMapping(dict):
    """The process environment in templates (read-only in the sandbox); its values are never listed."""

    def __repr__(self) -> str:
        return f"<environment: {len(self)} variables>"


class _Undefined(jinja2.StrictUndefined):
    """StrictUndefined whose message says which environment variable or input is missing, given as
    its hint (Jinja's documented way to word an undefined value's error)."""

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = jinja2.utils.missing,
        name: str | None = None,
        exc: type[jinja2.TemplateRuntimeError] = jinja2.UndefinedError,
    ):
        super().__init__(hint or _missing_message(obj, name), obj, name, exc)  # a hint: the sandbox refused


def _missing_message(obj: Any, name: Any) -> str | None:
    if name is None:
        return None
    if isinstance(obj, EnvMapping):
        return f"environment variable {name} is not set"
    if isinstance(obj, Mapping):
        keys = sorted(map(str, obj))
        close = difflib.get_close_matches(str(name), keys, n=1, cutoff=0.6)
        more = f"did you mean {close[0]!r}?" if close else f"keys there: {', '.join(keys[:10]) or 'none'}"
        return f"key {name!r} is not defined ({more})"
    if obj is not jinja2.utils.missing:
        return f"{'list' if isinstance(obj, list) else type(obj).__name__} has no attribute {name!r}"
    return f"{name!r} is undefined"


class _ConfinedLoader(jinja2.BaseLoader):
    """Loads template files only from inside one directory (symlinks resolved), as UTF-8 text."""

    def __init__(self, root: str, max_bytes: int):
        self.root = os.path.realpath(root)
        self.max_bytes = max_bytes

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        path = os.path.realpath(os.path.join(self.root, template))
        if os.path.isabs(template) or os.path.commonpath([path, self.root]) != self.root:
            hint = "templates must live in the manifest's directory or below it"
            raise UserError(f"template path {template!r} is outside the manifest's directory", hint=hint)
        if not os.path.lexists(path):
            raise jinja2.TemplateNotFound(template)
        try:
            raw = read_capped(path, self.max_bytes)
        except UserError as exc:
            raise UserError(f"template file {template!r}: {exc.problem.message}", hint=exc.problem.hint) from None
        text, problems = decode_text(raw, template)
        if text is None:
            raise RenderError(problems[0])
        mtime = os.path.getmtime(path)
        return text, template, lambda: os.path.getmtime(path) == mtime


@jinja2.pass_context
def _placeholder_finalize(context: jinja2.runtime.Context, value: Any) -> Any:
    """In template files, each output becomes a placeholder; the value is kept aside, with the
    template line it came from (so that an error can show the user's text, never a placeholder)."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # raises the undefined value's error (StrictUndefined)
    if isinstance(context.environment, BudgetedSandbox):
        context.environment.check_budget()
    collector = context.get("__provisioner_values")
    if collector is None:
        return value
    collector.append(value)
    context.get("__provisioner_lines").append(template_line_now())
    return f"{context.get('__provisioner_nonce')}{len(collector) - 1}_"


class Renderer:
    """Renders inline manifest values and template files for one manifest."""

    def __init__(
        self,
        base_dir: str,
        environ: Mapping[str, str],
        inputs: Mapping[str, Any],
        max_file_bytes: int = DEFAULT_MAX_BYTES,
    ):
        self.env = EnvMapping(environ)
        self.inputs = inputs
        self._loader = _ConfinedLoader(base_dir, max_file_bytes)
        self._jinja = BudgetedSandbox(
            undefined=_Undefined,
            autoescape=False,
            keep_trailing_newline=True,
            loader=self._loader,
            finalize=_placeholder_finalize,
        )
        self._jinja.max_bytes = max_file_bytes
        # Run-owned caches, by source text: each distinct string or file is compiled once (a forEach
        # renders one compiled template per item), and a string without ``item`` renders once.
        self._compiled: dict[tuple[str, str], Callable[[dict[str, Any]], Any]] = {}
        self._invariant: dict[str, Any] = {}
        self._exhausted: dict[str, Problem] = {}  # sources that ran out of budget once: fail at once
        self._sources: dict[str, list[str]] = {}
        self._scrub_values: list[str] | None = None

    def context(self, item: Any = jinja2.utils.missing) -> dict[str, Any]:
        scope = {**self._jinja.variables, "env": self.env, "inputs": self.inputs}
        if item is not jinja2.utils.missing:
            scope["item"] = item
        return scope

    # -- inline values -------------------------------------------------------------------------

    def value(self, raw: Any, scope: dict[str, Any]) -> Any:
        """Render one manifest value: strings are templates, containers are rendered item by item. A
        failure raises a RenderError the caller locates (``exc.at(where)``)."""
        if isinstance(raw, EnvRef):  # !env NAME; unset, the error an unset {{ env.NAME }} gives
            value = self.env.get(raw)
            if value is None:
                hint = f"set the variable in the environment: export {raw}=..."
                raise RenderError(Problem(f"environment variable {raw} is not set", hint=hint))
            return value
        if isinstance(raw, str):
            return self._string(raw, scope)
        if isinstance(raw, dict):
            return {key: self.value(v, scope) for key, v in raw.items()}
        if isinstance(raw, list):
            return [self.value(v, scope) for v in raw]
        return raw

    def scrub(self, problem: Problem) -> Problem:
        """Hide environment values in a rendering problem: an expression like
        ``inputs.map[env.PASSWORD]`` would otherwise echo a secret as the missing key."""
        if self._scrub_values is None:  # longest first: a value containing another is hidden whole
            names = set(self.env)
            self._scrub_values = sorted(
                {v for v in self.env.values() if len(v) >= 4 and v not in names}, key=len, reverse=True
            )
        message = problem.message
        for value in self._scrub_values:
            if value in message:
                message = message.replace(value, "(value from the environment)")
        return problem if message == problem.message else Problem(message, problem.location, problem.hint)

    def _string(self, raw: str, scope: dict[str, Any]) -> Any:
        if not _HAS_JINJA.search(raw):
            return raw  # no Jinja syntax: not a template, the text is the value
        invariant = "item" not in raw  # env and inputs are fixed for the run: such a string renders once
        if invariant and raw in self._invariant:
            return self._invariant[raw]
        value = self._budgeted(raw, _NOWHERE, None, lambda: self._compile("string", raw)(scope))
        if invariant:
            self._invariant[raw] = value
        return value

    def _budgeted(self, source: str, where: Location, template: str | None, render: Callable[[], Any]) -> Any:
        """``render()`` within the rendering budget; any Jinja failure becomes a located problem, and a
        source that ran out of budget once fails at once the next time (a forEach renders it per item)."""
        known = self._exhausted.get(source)
        if known is not None:
            where = replace(where, template=known.location.template, template_line=known.location.template_line)
            raise RenderError(Problem(known.message, where, known.hint))
        try:
            return self._jinja.within_budget(render)
        except RenderError:
            raise
        except Exception as exc:  # noqa: BLE001 - every Jinja failure becomes a located problem
            problem = self.scrub(_problem_from(exc, where, template))
            if isinstance(exc, BudgetExceeded):
                self._exhausted[source] = problem
            raise RenderError(problem) from None

    def _compile(self, kind: str, source: str) -> Callable[[dict[str, Any]], Any]:
        """A string's or template file's rendering, a function of the scope compiled once per run; a string
        that is a single expression keeps its value's type."""
        key = (kind, source)
        if key not in self._compiled:
            match = _SINGLE_EXPRESSION.match(source) if kind == "string" else None
            if match and "{{" not in match["expr"] and "}}" not in match["expr"]:
                expression = self._jinja.compile_expression(match["expr"], undefined_to_none=False)
                self._compiled[key] = lambda scope: _defined(expression(scope))
            else:
                template = self._jinja.get_template(source) if kind == "file" else self._jinja.from_string(source)
                self._compiled[key] = functools.partial(self._jinja.render_capped, template)
        return self._compiled[key]

    def template_lines(self, name: str) -> list[str]:
        """The lines of a template file as the loader reads it (empty if it cannot be read), for messages."""
        if name not in self._sources:
            try:
                self._sources[name] = self._loader.get_source(self._jinja, name)[0].splitlines()
            except Exception:  # noqa: BLE001 - only for messages
                self._sources[name] = []
        return self._sources[name]

    # -- template files ------------------------------------------------------------------------

    def template_file(self, name: str, scope: dict[str, Any], where: Location) -> dict:
        """Render a template file into a mapping; values are substituted after YAML parsing."""
        try:
            render = self._compile("file", name)
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(_problem_from(exc, where, name)) from None
        except (UserError, jinja2.TemplateNotFound) as exc:
            raise RenderError(_problem_from(exc, where)) from None
        nonce = f"__pv{secrets.token_hex(6)}_"
        collected: list[Any] = []
        lines: list[int | None] = []
        variables = {"__provisioner_values": collected, "__provisioner_lines": lines, "__provisioner_nonce": nonce}
        text = self._budgeted("file:" + name, where, name, lambda: render({**scope, **variables}))
        outputs = _Outputs(nonce, collected, lines, self.template_lines(name), text)

        def located(rendered_line: int | None) -> Location:
            return Location(where.file, where.line, name, outputs.template_line(rendered_line), where.instance)

        loaded = load_yaml(text, name)
        if loaded.problems:
            line = loaded.problems[0].location.line
            message = outputs.described(loaded.problems[0].message.removeprefix("not valid YAML: "))
            hint = "quote the value around this line, or emit structured values with a single {{ expression }}"
            message = f"template output is not valid YAML: {message}{outputs.quote_line(line)}"
            raise RenderError(Problem(message, located(line), hint))
        try:
            data = outputs.put_back(loaded.data)
        except _BadKey as exc:
            key, reason = map(str, exc.args)
            message = f"key {outputs.described(key)!r} {reason}"
            index = text.find(key)
            line = text.count("\n", 0, index) + 1 if index >= 0 else None
            raise RenderError(Problem(message, located(line), "give each key of a mapping a distinct name")) from None
        if data is not None and not isinstance(data, dict):
            message = f"template must render a YAML mapping, got {type(data).__name__}"
            raise RenderError(Problem(message, located(None), "render keys such as configuration: and tags:"))
        return data or {}


class _Outputs:
    """The ``{{ ... }}`` outputs of one rendered template file: put back into the parsed YAML, and
    mapped back to the user's own text for messages (each found on the template line it came from)."""

    def __init__(self, nonce: str, values: list[Any], lines: list[int | None], source: list[str], text: str):
        self.pattern = re.compile(re.escape(nonce) + r"(\d+)_")
        self.values, self.lines, self.source, self.rendered = values, lines, source, text.splitlines()

    def put_back(self, data: Any) -> Any:
        """The parsed YAML with each value where its placeholder landed."""
        if isinstance(data, str):
            whole = self.pattern.fullmatch(data)
            if whole:
                return self.values[int(whole[1])]
            return self.pattern.sub(lambda m: _as_text(self.values[int(m[1])]), data)  # true/false as YAML spells them
        if isinstance(data, dict):
            out = YDict()
            for key, value in data.items():
                real = self.put_back(key)
                try:
                    seen = real in out
                except TypeError:  # an unhashable value rendered as a key
                    raise _BadKey(key, "renders to a value that cannot be a key") from None
                if seen:
                    raise _BadKey(key, "renders to the same key as another key of this mapping")
                out[real] = self.put_back(value)
            out.line = getattr(data, "line", 0)
            return out
        if isinstance(data, list):
            out_list = YList(map(self.put_back, data))
            out_list.line = getattr(data, "line", 0)
            return out_list
        return data

    def expression(self, index: int) -> str:
        line = self.lines[index] if 0 <= index < len(self.lines) else None
        text = self.source[line - 1] if line and 0 < line <= len(self.source) else ""
        found = re.findall(r"\{\{.*?\}\}", text)
        if not found:
            return "{{ ... }}"
        earlier = sum(1 for other in self.lines[:index] if other == line)  # outputs of this line before it
        return found[earlier % len(found)]

    def described(self, message: str) -> str:
        return self.pattern.sub(lambda m: self.expression(int(m[1])), message)

    def _rendered(self, line: int | None) -> str:
        return self.rendered[line - 1] if line and 0 < line <= len(self.rendered) else ""

    def quote_line(self, line: int | None) -> str:
        """The offending rendered line in the user's terms (outputs shown as their expressions)."""
        shown = self.described(self._rendered(line)).strip()
        return f" (in: {shown[:120]!r})" if shown else ""

    def template_line(self, line: int | None) -> int | None:
        """The template line of a rendered line: that of an output on it, else the same number (no loops)."""
        match = self.pattern.search(self._rendered(line))
        return (self.lines[int(match[1])] if match else None) or line


class _BadKey(Exception):
    """A mapping key of a template file that is unusable once its outputs are put back: (key, reason)."""


def _defined(value: Any) -> Any:
    return str(value) if isinstance(value, jinja2.Undefined) else value  # str() raises the undefined's error


def _as_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _problem_from(exc: Exception, where: Location, template: str | None = None) -> Problem:
    """Turn a Jinja failure into a located problem; never include rendered values."""
    line = _template_line(exc, template) if template else None
    location = replace(where, template=template, template_line=line) if template else where
    if isinstance(exc, jinja2.UndefinedError):
        message = exc.message or "undefined variable"
        if message.startswith("environment variable"):
            hint = "set the variable in the environment"
        elif message == "'item' is undefined":
            hint = "item is defined only inside an instance with forEach"
        else:
            hint = "define it under inputs:, in an --inputs file, or with --set"
        return Problem(message, location, hint)
    if isinstance(exc, SecurityError):
        hint = "templates may only read env, inputs and item"
        return Problem(f"unsafe template expression refused: {exc}", location, hint)
    if isinstance(exc, jinja2.TemplateSyntaxError):
        hint = "check the {{ }} and {% %} delimiters and the expression inside"
        if any(q in (exc.message or "") for q in CURLY_QUOTES):
            hint = "replace curly quotes with straight ones (\" or ')"
        return Problem(f"template syntax error: {exc.message}", location, hint)
    if isinstance(exc, UserError):  # outside the manifest's directory, or not a file to read
        return Problem(exc.problem.message, location, exc.problem.hint)
    if isinstance(exc, jinja2.TemplateNotFound):
        hint = "paths are relative to the manifest's directory"
        return Problem(f"template file {exc.name!r} not found", location, hint)
    if isinstance(exc, RecursionError):
        return Problem("template recursion is too deep", location)
    if isinstance(exc, BudgetExceeded):
        hint = "a loop or a repetition in this template runs far too long; keep templates small "
        hint += "and loop over inputs, not over large ranges"
        return Problem(f"template exceeds its rendering budget: {exc}", location, hint)
    if isinstance(exc, MemoryError):
        hint = "a repetition or a filter in this template builds a value far too large"
        return Problem("template exceeds its rendering budget: out of memory", location, hint)
    return Problem(f"template error: {type(exc).__name__}: {exc}", location, None)


def _template_line(exc: Exception, template: str) -> int | None:
    """The line Jinja's error names, else that of the template's last frame in the traceback."""
    frames = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == template]
    return getattr(exc, "lineno", None) or next(reversed(frames), None)
