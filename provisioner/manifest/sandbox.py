"""The Jinja sandbox, with a budget per rendering: wall-clock time, and the size of what it builds
(docs/manifest.md#rendering), through the hooks a sandbox subclass may override. The deadline is checked
on every lookup, call, filter and operator; what can build a large value in one step is bounded before it
runs, and every value a call or filter returns is measured; ``~`` and captured output are joined by
``concat`` (``~`` through ``code_generator_class``, Jinja's documented hook on compiled code).
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import string
import time
from collections.abc import Callable, Iterable, Sized
from typing import Any

from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum

from .yamlload import DEFAULT_MAX_BYTES

RENDER_SECONDS = 2.0  # wall-clock budget of one rendering (one value, or one template file)
MAX_POWER_BITS = 14_000  # ** and * on integers: refuse results past this many bits (4,300 digits: what Python prints)
PRODUCED_FACTOR = 4  # all the values one rendering builds, in multiples of max_bytes
MAX_LIPSUM_WORDS = 10_000
_GROWING = frozenset({"center", "ljust", "rjust", "zfill", "indent", "expandtabs", "replace", "format", "format_map"})
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")


class BudgetExceeded(Exception):
    """A rendering ran past its time or size budget (a runaway loop, a huge repetition).
    ``lineno`` is the template line being rendered when it was found (as Jinja's errors have)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.lineno = template_line_now()


def template_line_now() -> int | None:
    """The template line being rendered, read from the compiled template's frame as Jinja's tracebacks do."""
    frame = inspect.currentframe()
    while frame is not None:
        template = frame.f_globals.get("__jinja_template__")
        if template is not None:
            return template.get_corresponding_lineno(frame.f_lineno)
        frame = frame.f_back
    return None


class _CappedConcat(CodeGenerator):
    """``a ~ b`` joins through ``environment.concat`` (Jinja's own ``str_join`` has no cap)."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.concat(map(str, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


class BudgetedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with the budget of the rendering in progress: a deadline and the bytes built so
    far. One environment per Renderer, rendering in one thread: the budget is its state."""

    intercepted_binops = frozenset(["*", "**", "+", "%"])
    code_generator_class = _CappedConcat
    deadline = math.inf
    max_bytes = DEFAULT_MAX_BYTES
    produced = 0

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.filters = {name: self._capped(name, f) for name, f in self.filters.items()}
        # the globals travel in each render's variables (Renderer.context): Jinja copies them key by key
        self.variables: dict[str, Any] = {**self.globals, "lipsum": self._lipsum}
        self.globals.clear()

    def within_budget(self, render: Callable[[], Any]) -> Any:
        """``render()`` with a budget of its own."""
        self.deadline, self.produced = time.monotonic() + RENDER_SECONDS, 0
        try:
            return render()
        finally:
            self.deadline = math.inf

    def check_budget(self) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"rendering took longer than {RENDER_SECONDS:g} s")

    def built(self, value: Any) -> Any:
        """Count a value just built against the budget: one value, and all of them."""
        size = size_of(value, self.max_bytes)
        self.produced += size
        if size > self.max_bytes:
            raise BudgetExceeded(f"a value larger than {self.max_bytes} bytes")
        if self.produced > PRODUCED_FACTOR * self.max_bytes:
            raise BudgetExceeded(f"the values built add up to more than {PRODUCED_FACTOR * self.max_bytes} bytes")
        return value

    def bound(self, size: int, what: str) -> None:
        if size > self.max_bytes:
            raise BudgetExceeded(f"{what} would build a value larger than {self.max_bytes} bytes")

    def joinable(self, separator: str, items: Any) -> Any:
        """The items of a join, bounded before it runs (an iterator, read once, is listed to be measured)."""
        if not isinstance(items, (Sized, str)) and isinstance(items, Iterable):
            items = list(items)
        count = len(items) if isinstance(items, Sized) else 0
        self.bound(size_of(items, DEFAULT_MAX_BYTES * 2) + count * len(separator), "join")
        return items

    def concat(self, parts: Iterable[str]) -> str:  # Jinja joins captured output with it ("".join)
        parts = list(parts)
        self.bound(sum(map(len, parts)), "joining this output")
        return "".join(parts)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``a.b`` of a mapping or list as of a plain dict or list: never the loader's own ``YDict.line``."""
        self.check_budget()
        plain = dict if isinstance(obj, dict) else list if isinstance(obj, list) else None
        if plain is None or hasattr(plain, attribute):
            return super().getattr(obj, attribute)
        try:
            return obj[attribute]
        except (TypeError, LookupError):
            return self.undefined(obj=obj, name=attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.check_budget()
        return super().getitem(obj, argument)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's signature
        __self.check_budget()
        method = getattr(__obj, "__wrapped__", __obj)  # str.format, as the sandbox wraps it
        subject, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
        if isinstance(subject, str) and name == "join" and args:
            args = (__self.joinable(subject, args[0]), *args[1:])
        elif isinstance(subject, str) and name in _GROWING:
            __self.bound(_grown(name, subject, args, kwargs), f"str.{name}")
        return __self.built(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.check_budget()
        ints = isinstance(left, int) and isinstance(right, int)
        bits = abs(left).bit_length() if ints else 0  # more than 1: abs(left) > 1
        if operator == "**" and bits > 1 and right > 0 and right * bits > MAX_POWER_BITS:
            raise BudgetExceeded(f"the power {left} ** {right} is too large")
        if operator == "*" and ints and left.bit_length() + right.bit_length() > MAX_POWER_BITS:
            raise BudgetExceeded("the product of these numbers is too large")
        for seq, count in ((left, right), (right, left)) if operator == "*" else ():
            if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
                self.bound(size_of(seq, self.max_bytes) * count, f"repeating a value {count} times")
        if operator == "+" and not ints:
            self.bound(size_of(left, self.max_bytes) + size_of(right, self.max_bytes), "adding these values")
        if operator == "%" and isinstance(left, str):
            values = right if isinstance(right, tuple) else (right,)
            self.bound(_format_size(left, values), "formatting with %")
        return self.built(super().call_binop(context, operator, left, right))

    def render_capped(self, template: Any, scope: dict[str, Any]) -> str:
        """Render through Jinja's streaming API, refusing output past the size budget."""
        parts: list[str] = []
        size = 0
        for chunk in template.generate(scope):
            size += len(chunk)
            self.bound(size, "the output")
            parts.append(chunk)
            if len(parts) % 4096 == 0:
                self.check_budget()
        return "".join(parts)

    def _capped(self, name: str, f: Callable) -> Callable:
        """A filter whose growth is bounded before it runs and whose result is counted."""
        skip = 1 if getattr(f, "jinja_pass_arg", None) else 0  # the context Jinja passes first

        @functools.wraps(f)
        def capped(*args: Any, **kwargs: Any) -> Any:
            self.check_budget()
            value, rest = (args[skip], args[skip + 1 :]) if len(args) > skip else (None, ())
            if name == "join":
                separator = rest[0] if rest else kwargs.get("d", "")
                args = (*args[:skip], self.joinable(separator if isinstance(separator, str) else "", value), *rest)
            elif name in _GROWING:
                self.bound(_grown(name, value, rest, kwargs), f"the {name} filter")
            return self.built(f(*args, **kwargs))

        return capped

    def _lipsum(self, n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 - Jinja's names
        """Jinja's lipsum, refused past ``MAX_LIPSUM_WORDS`` words (it runs in one uninterruptible call)."""
        if not all(isinstance(v, int) for v in (n, min, max)) or n * max > MAX_LIPSUM_WORDS:
            raise BudgetExceeded(f"lipsum({n}, max={max}) makes more than {MAX_LIPSUM_WORDS} words")
        return str(generate_lorem_ipsum(n, html, min, max))


def size_of(value: Any, limit: int) -> int:
    """Characters of a value as text, counting items of lists, tuples, sets and mappings (a list of
    a thousand references to one long string is a thousand long strings). Stops past ``limit``."""
    total, todo = 0, [value]
    while todo and total <= limit:
        item = todo.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            total += 2 * len(item) + 2
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 2 * len(item) + 2
            todo.extend(item)
        else:
            total += 8
    return total


def _number(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _grown(name: str, subject: Any, args: tuple, kwargs: dict) -> int:
    """An upper bound of the size of what filter or string method ``name`` builds from ``subject``."""
    text = subject if isinstance(subject, str) else ""
    first = args[0] if args else next(iter(kwargs.values()), None)
    if name == "indent":
        width = len(first) if isinstance(first, str) else (4 if first is None else _number(first))
        return len(text) + (text.count("\n") + 1) * width
    if name == "expandtabs":
        return len(text) + text.count("\t") * (8 if first is None else _number(first))
    if name == "replace":
        old, new = (*args, None, None)[:2]
        if not isinstance(old, str) or not isinstance(new, str):
            return len(text)
        return len(text) + (text.count(old) if old else len(text) + 1) * len(new)
    if name in ("format", "format_map"):
        values = list(first.values()) if name == "format_map" and isinstance(first, dict) else [*args, *kwargs.values()]
        return _format_size(text, values)
    return len(text) + _number(first)  # center, ljust, rjust, zfill: the width


def _format_size(template: str, values: Iterable[Any]) -> int:
    """An upper bound of ``template % values`` or ``template.format(...)``: the template, every
    width and precision, and each field as large as the largest value (a width from a value too)."""
    values = list(values)
    largest = max((max(size_of(v, DEFAULT_MAX_BYTES * 2), _number(v)) for v in values), default=0)
    numbers: list[str] = []
    fields = 0
    for width, precision in _PERCENT_SPEC.findall(template):
        numbers += [width, precision]
        fields += 1
    try:
        for _, field, spec, _ in string.Formatter().parse(template):
            if field is not None:
                fields += 1 + (spec or "").count("{")
                numbers += re.findall(r"\d+", spec or "")
    except ValueError:
        pass  # not a str.format template: formatting it fails on its own
    widths = sum(largest if n == "*" else int(n) for n in numbers if n and (n == "*" or len(n) < 20))
    return len(template) + widths + fields * largest
