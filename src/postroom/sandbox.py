"""Rendering limits for untrusted templates: a Jinja sandbox that bounds size, iterations and CPU.

Template authors are not trusted with the worker: a template must not read server state (the
Jinja sandbox), nor stop the process from serving (this module). Five mechanisms:

1. Output of each part is streamed and counted; ``max_output_chars`` ends it.
2. Everything that can build a large value is checked *before* it runs: the operators
   ``+ * ** %``, ``~`` (a code generator routes it through ``join_checked``), every call
   (``str`` methods are allow-listed, the size-taking ones checked), the filters that take a
   size, ``str.format`` fields, and the joins of captured blocks. Values are measured by
   :func:`weight`, which counts shared references as often as ``str()`` would print them.
   Every result is also charged to a per-render allocation budget, so many medium-sized values
   cannot add up to a large memory footprint either.
3. ``range()`` is capped per call and per render.
4. A CPU deadline: while rendering, the thread's trace function ticks on every line executed by
   compiled template code, and past ``max_seconds`` of thread CPU time raises from that line.
5. Nesting of calls (recursive macros) is capped well below Python's recursion limit.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MappingView
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import update_wrapper
from types import BuiltinMethodType, FrameType, MethodType
from typing import Any, TypeVar, cast

from jinja2 import StrictUndefined, nodes, pass_context
from jinja2 import Template as JinjaTemplate
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import Namespace
from markupsafe import Markup

# Jinja compiles each template with the filename we give it; the tracer recognises template
# frames by this prefix, so everything else the thread runs is left alone.
FILENAME_PREFIX = "<postroom-template "
MAX_INT_BITS = 65_536  # ~20,000 digits: more than any email needs, still fast to multiply
ALLOCATION_FACTOR = 20  # a render may allocate this many times its output limit in total
MAX_ROUND_DIGITS = 100
_TICKS_PER_CLOCK_READ = 32  # reading the thread CPU clock is a syscall; lines are cheaper

# Methods of str/bytes/Markup whose result is at most a few times the size of the string.
_SIZE_BOUNDED_METHODS = frozenset(
    {
        "capitalize",
        "casefold",
        "count",
        "decode",
        "encode",
        "endswith",
        "find",
        "hex",
        "index",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "isidentifier",
        "islower",
        "isnumeric",
        "isprintable",
        "isspace",
        "istitle",
        "isupper",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "rfind",
        "rindex",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "striptags",
        "swapcase",
        "title",
        "unescape",
        "upper",
    }
)
_SIZED_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join"})
_T = TypeVar("_T")
_PRINTF = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-#0 +]*(?P<width>\*|\d+)?"
    r"(?:\.(?P<precision>\*|\d+))?[hlL]?(?P<kind>.)",
    re.DOTALL,
)


class LimitExceeded(Exception):
    """A rendering limit was hit; not a ValueError, so no Jinja filter can swallow it."""


@dataclass(frozen=True)
class RenderLimits:
    """Bounds on one render: output per part, CPU seconds, ``range()`` sizes and call nesting."""

    max_output_chars: int = 1_000_000
    max_seconds: float = 2.0
    max_range: int = 10_000
    max_range_total: int = 100_000
    max_call_depth: int = 50


@dataclass
class _Budget:
    limits: RenderLimits
    deadline: float
    allocated: int = 0
    range_items: int = 0
    depth: int = 0
    ticks: int = 0

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks % _TICKS_PER_CLOCK_READ == 0 and time.thread_time() > self.deadline:
            raise LimitExceeded(f"rendering used more than {self.limits.max_seconds:g} s of CPU")

    def charge(self, chars: int) -> None:
        self.allocated += chars
        if self.allocated > self.limits.max_output_chars * ALLOCATION_FACTOR:
            raise LimitExceeded("rendering built too much text in total")


_budget: ContextVar[_Budget | None] = ContextVar("postroom_render_budget", default=None)


def weight(value: Any, limit: int) -> int:
    """Roughly how many characters ``str(value)`` takes, counted no further than past ``limit``."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes | bytearray):
            total += len(item)
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, Namespace):
            stack.append(getattr(item, "_Namespace__attrs", None))
        elif isinstance(item, list | tuple | set | frozenset | Mapping | MappingView):
            total += 2 + len(item)
            if total > limit:
                break
            stack.extend(cast(Iterable[Any], item))
            if isinstance(item, Mapping):
                stack.extend(item.values())
        else:
            total += 1  # other objects print themselves; their size is the caller's business
    return total


def _printf_size(template: str, args: Any, limit: int) -> int:
    """An upper estimate of ``len(template % args)``, counted before anything is formatted."""
    positional = iter(args if isinstance(args, tuple) else (args,))
    total = len(template)
    for match in _PRINTF.finditer(template):
        if match["kind"] == "%":
            continue
        for spec in (match["width"], match["precision"]):
            size = next(positional, 0) if spec == "*" else _spec_number(spec, limit)
            total += abs(size) if isinstance(size, int) else 0
        key = match["key"]
        value = args.get(key) if key is not None and isinstance(args, Mapping) else None
        total += weight(next(positional, None) if key is None else value, limit)
        if total > limit:
            break
    return total


def _spec_number(digits: str | None, limit: int) -> int:
    # int() of a 5,000-digit width would itself fail; anything this long is over the limit.
    return 0 if not digits else int(digits) if len(digits) < 10 else limit + 1


def _check(size: int, what: str, limit: int) -> None:
    if size > limit:
        raise LimitExceeded(f"{what} would exceed {limit:,} characters")


def _account(value: _T, what: str, limit: int) -> _T:
    # Hot path (every output and call): plain numbers and None cost nothing to print.
    if value is None or type(value) in (int, float, bool):
        return value
    size = len(value) if isinstance(value, str) else weight(value, limit)
    if size > limit:
        raise LimitExceeded(f"{what} would exceed {limit:,} characters")
    budget = _budget.get()
    if budget is not None:
        budget.charge(size)
    return value


class _SizedFormatting(SandboxedFormatter):
    """``str.format`` whose widths, precisions and fields together stay within the limit."""

    _produced = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        limit = self._env.limits.max_output_chars  # type: ignore[attr-defined]
        for digits in re.findall(r"\d+", format_spec):
            _check(_spec_number(digits, limit), "a format width", limit)
        _check(weight(value, limit), "a formatted value", limit)
        result = super().format_field(value, format_spec)
        self._produced += len(result)
        _check(self._produced, "str.format()", limit)
        return result


class _SizedEscapeFormatting(_SizedFormatting, SandboxedEscapeFormatter):
    """The escaping variant used for ``Markup.format``."""


class _CodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a checked join instead of Jinja's unchecked ``str_join``."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        escaping = (
            "context.eval_ctx.autoescape"
            if frame.eval_ctx.volatile
            else repr(bool(frame.eval_ctx.autoescape))
        )
        self.write(f"environment.join_checked({escaping}, (")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """A sandbox whose operators, calls, filters and joins refuse oversized results."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, limits: RenderLimits, *, autoescape: bool) -> None:
        super().__init__(autoescape=autoescape, undefined=StrictUndefined, finalize=self._finalize)
        self.limits = limits
        self.globals["range"] = self._range
        del self.globals["lipsum"]  # builds arbitrarily long text in untraced library code
        checked = {**self.filters, **_checked_filters(self.filters, limits)}
        self.filters = {name: self._sized(func) for name, func in checked.items()}

    @property
    def _limit(self) -> int:
        return self.limits.max_output_chars

    def _finalize(self, value: Any) -> Any:
        return _account(value, "an output value", self._limit)

    def _range(self, *args: int) -> range:
        items = range(*args)
        try:
            count = len(items)
        except OverflowError:  # longer than sys.maxsize
            count = sys.maxsize
        if count > self.limits.max_range:
            raise LimitExceeded(
                f"range() of {count:,} items; the limit is {self.limits.max_range:,}"
            )
        budget = _budget.get()
        if budget is not None:
            budget.range_items += count
            if budget.range_items > self.limits.max_range_total:
                raise LimitExceeded("range() produced too many items in this render")
        return items

    def concat(self, parts: Iterable[str]) -> str:
        """Join a captured block (macro body, ``{% set %}`` block) after checking its size."""
        pieces = list(parts)
        _check(sum(map(len, pieces)), "a block's output", self._limit)
        return _account("".join(pieces), "a block's output", self._limit)

    def join_checked(self, autoescape: bool, items: tuple[Any, ...]) -> str:
        """The ``~`` operator, checked before any item is converted."""
        _check(sum(weight(item, self._limit) for item in items), "'~'", self._limit)
        return _account(markup_join(items) if autoescape else str_join(items), "'~'", self._limit)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Run ``+ * ** %`` only when the result's size, computed first, is within the limits."""
        _check(_binop_size(operator, left, right, self._limit), f"'{operator}'", self._limit)
        return _account(self.binop_table[operator](left, right), f"'{operator}'", self._limit)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Every call a template makes: checked, nested no deeper than ``max_call_depth``."""
        budget = _budget.get()
        if budget is not None:
            budget.tick()
            budget.depth += 1
        try:
            if budget is not None and budget.depth > self.limits.max_call_depth:
                raise LimitExceeded(f"calls nested deeper than {self.limits.max_call_depth}")
            owner = getattr(obj, "__self__", None)
            if isinstance(obj, MethodType | BuiltinMethodType) and isinstance(
                owner, str | bytes | bytearray | int
            ):
                result = self._call_method(obj, owner, args, kwargs)
                return _account(result, "a call", self._limit)
            return _account(super().call(context, obj, *args, **kwargs), "a call", self._limit)
        finally:
            if budget is not None:
                budget.depth -= 1

    def _call_method(
        self, method: Any, owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        name, limit = method.__name__, self._limit
        if isinstance(owner, int):
            if name == "to_bytes":
                _check(kwargs.get("length", args[0] if args else 1), "int.to_bytes()", limit)
            return method(*args, **kwargs)
        if name in _SIZE_BOUNDED_METHODS:
            return method(*args, **kwargs)
        if name not in _SIZED_METHODS:
            raise LimitExceeded(f"{type(owner).__name__}.{name}() is not available in templates")
        if name == "join" and args:
            items = list(args[0])
            size = weight(items, limit) + len(owner) * max(len(items) - 1, 0)
            _check(size, "join()", limit)
            return method(items)
        _check(_method_size(owner, name, args, kwargs), f"{name}()", limit)
        return method(*args, **kwargs)

    def _sized(self, func: Callable[..., Any]) -> Callable[..., Any]:
        # Filters run outside environment.call: check what they are given and what they return.
        # Taking the context also stops Jinja from running them at compile time, where no
        # budget or deadline applies; the original gets what it asked for.
        passes = getattr(getattr(func, "jinja_pass_arg", None), "name", None)
        limit = self._limit

        @pass_context
        def filter_(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
            _check(weight(value, limit), f"the input of |{func.__name__}", limit)
            if passes == "context":
                result = func(context, value, *args, **kwargs)
            elif passes == "eval_context":
                result = func(context.eval_ctx, value, *args, **kwargs)
            elif passes == "environment":
                result = func(context.environment, value, *args, **kwargs)
            else:
                result = func(value, *args, **kwargs)
            return _account(result, f"|{func.__name__}", limit)

        filter_.__name__ = filter_.__qualname__ = func.__name__
        filter_.__doc__ = func.__doc__
        return filter_

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format``/``format_map`` through a formatter that also checks sizes."""
        if not isinstance(value, MethodType | BuiltinMethodType) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        as_map = value.__name__ == "format_map"

        def format_(*args: Any, **kwargs: Any) -> str:
            formatter: _SizedFormatting = (
                _SizedEscapeFormatting(self, escape=owner.escape)
                if isinstance(owner, Markup)
                else _SizedFormatting(self)
            )
            if not as_map:
                return type(owner)(formatter.vformat(owner, args, kwargs))
            if kwargs or len(args) != 1:
                raise TypeError("format_map() takes exactly one mapping")
            return type(owner)(formatter.vformat(owner, (), args[0]))

        return update_wrapper(format_, value)


def _binop_size(operator: str, left: Any, right: Any, limit: int) -> int:
    ints = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and ints and right > 0 and abs(left) > 1:
        _check_bits(left.bit_length() * right)
    elif operator == "*" and ints:
        _check_bits(left.bit_length() + right.bit_length())
    elif operator == "*" and isinstance(left, int) != isinstance(right, int):
        count, sequence = (left, right) if isinstance(left, int) else (right, left)
        if isinstance(sequence, str | bytes | list | tuple):
            return weight(sequence, limit) * max(count, 0)
    elif operator == "+" and not ints:
        return weight(left, limit) + weight(right, limit)
    elif operator == "%" and isinstance(left, str):
        return _printf_size(left, right, limit)
    return 0


def _check_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise LimitExceeded(f"an integer of more than {MAX_INT_BITS:,} bits")


def _method_size(
    owner: str | bytes | bytearray, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> int:
    try:
        if name == "expandtabs":
            tabs = owner.count("\t" if isinstance(owner, str) else b"\t")  # type: ignore[arg-type]
            return len(owner) + tabs * int(kwargs.get("tabsize", args[0] if args else 8))
        if name == "replace":
            old, new = args[0], args[1]
            found = owner.count(old)
            if len(args) > 2 and args[2] >= 0:
                found = min(found, args[2])
            return len(owner) + found * len(new)
        return max(len(owner), int(args[0]))  # center, ljust, rjust, zfill
    except (IndexError, TypeError, ValueError):
        return len(owner)  # malformed arguments: the call itself raises the right error


def _checked_filters(
    filters: Mapping[str, Callable[..., Any]], limits: RenderLimits
) -> dict[str, Callable[..., Any]]:
    """Filters whose output size depends on an argument, checked before they run."""
    limit = limits.max_output_chars

    def center(value: Any, width: int = 80) -> Any:
        _check(width, "|center", limit)
        return filters["center"](value, width)

    def indent(s: Any, width: int | str = 4, *args: Any, **kwargs: Any) -> Any:
        per_line = len(width) if isinstance(width, str) else width
        _check(weight(s, limit) + (str(s).count("\n") + 1) * per_line, "|indent", limit)
        return filters["indent"](s, width, *args, **kwargs)

    def format_(value: Any, *args: Any, **kwargs: Any) -> Any:
        _check(_printf_size(str(value), kwargs or args, limit), "|format", limit)
        return filters["format"](value, *args, **kwargs)

    def batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
        _check(linecount, "|batch", limit)
        return filters["batch"](value, linecount, fill_with)

    def slice_(value: Any, slices: int, fill_with: Any = None) -> Any:
        _check(slices, "|slice", limits.max_range)
        return filters["slice"](value, slices, fill_with)

    def round_(value: Any, precision: int = 0, method: str = "common") -> Any:
        if abs(precision) > MAX_ROUND_DIGITS:
            raise LimitExceeded(f"|round precision beyond {MAX_ROUND_DIGITS} digits")
        return filters["round"](value, precision, method)

    replaced: dict[str, Callable[..., Any]] = {
        "center": center,
        "indent": indent,
        "format": format_,
        "batch": batch,
        "slice": slice_,
        "round": round_,
    }
    replaced.update(_checked_text_filters(filters, limit))
    return {name: update_wrapper(func, filters[name]) for name, func in replaced.items()}


def _checked_text_filters(
    filters: Mapping[str, Callable[..., Any]], limit: int
) -> dict[str, Callable[..., Any]]:
    def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        items = list(value)
        _check(weight(items, limit) + len(d) * max(len(items) - 1, 0), "|join", limit)
        return filters["join"](eval_ctx, items, d, attribute)

    def replace(eval_ctx: Any, s: Any, old: str, new: str, count: int | None = None) -> Any:
        text = str(s)
        found = text.count(str(old)) if count is None else min(count, text.count(str(old)))
        _check(len(text) + max(found, 0) * len(str(new)), "|replace", limit)
        return filters["replace"](eval_ctx, s, old, new, count)

    def wordwrap(environment: Any, s: str, width: int = 79, *args: Any, **kwargs: Any) -> Any:
        wrap = kwargs.get("wrapstring") or (args[1] if len(args) > 1 else None) or "\n"
        lines = len(s.split()) + s.count("\n") + len(s) // max(width, 1) + 1
        _check(len(s) + lines * len(wrap), "|wordwrap", limit)
        return filters["wordwrap"](environment, s, width, *args, **kwargs)

    def urlize(eval_ctx: Any, value: str, *args: Any, **kwargs: Any) -> Any:
        extra = sum(len(str(v)) for v in (*args, *kwargs.values()) if isinstance(v, str))
        _check(3 * len(value) + len(value.split()) * (extra + 60), "|urlize", limit)
        return filters["urlize"](eval_ctx, value, *args, **kwargs)

    def sum_(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
        # Adding lists or strings with sum() is quadratic; templates only add numbers.
        if not isinstance(start, int | float):
            raise LimitExceeded("|sum only adds numbers in templates")
        return filters["sum"](environment, iterable, attribute, start)

    return {"join": join, "replace": replace, "wordwrap": wordwrap, "urlize": urlize, "sum": sum_}


def _tracer(budget: _Budget, previous: Any) -> Callable[[FrameType, str, Any], Any]:
    def local(frame: FrameType, event: str, arg: Any) -> Any:
        budget.tick()
        return local

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename.startswith(FILENAME_PREFIX):
            budget.tick()
            return local
        # Other code keeps whatever tracer was installed (coverage, a debugger).
        return previous(frame, event, arg) if previous is not None else None

    return trace


@contextmanager
def limited(limits: RenderLimits) -> Iterator[None]:
    """Apply ``limits`` to the template code this thread runs inside the block."""
    budget = _Budget(limits, deadline=time.thread_time() + limits.max_seconds)
    token = _budget.set(budget)
    previous = sys.gettrace()
    # settrace affects only the calling thread, so this works in any worker or server thread.
    sys.settrace(_tracer(budget, previous))
    try:
        yield
    finally:
        sys.settrace(previous)
        _budget.reset(token)


def render_limited(template: JinjaTemplate, context: Mapping[str, Any], limit: int) -> str:
    """Stream ``template`` and stop as soon as its output passes ``limit`` characters."""
    chunks: list[str] = []
    size = 0
    stream = template.generate(context)  # a generator: closed below even when abandoned
    try:
        for chunk in stream:
            size += len(chunk)
            _check(size, "the output", limit)
            chunks.append(chunk)
    finally:
        stream.close()  # type: ignore[attr-defined]
    return "".join(chunks)
