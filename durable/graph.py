"""Build workflow graphs in Python: the same envelope JSON text as the SQL DSL.

Every builder returns a :class:`Node`; ``str(node)`` is the envelope JSON text
that the SQL DSL (``df.sql``, ``df.seq``, ``~>``, ...) gives for the same
expression, byte for byte, so a node can go straight to ``df.start`` or to
:meth:`durable.Client.start`::

    from durable import graph as g

    wf = (g.sql("SELECT 1") >> "SELECT 2").as_("last")
    str(wf)   # the text of: SELECT 'SELECT 1' ~> 'SELECT 2' |=> 'last';
    durable.connect(dsn).start(wf)

Builders and their SQL twins:

================================================  ===========================================
Python                                            SQL
================================================  ===========================================
``sql(q)``                                        ``df.sql(q)``
``a >> b``, ``seq(a, b)``                         ``a ~> b``, ``df.seq(a, b)``
``a.as_("name")``                                 ``a |=> 'name'``, ``df.as(a, 'name')``
``a & b``, ``join(a, b)``                         ``a & b``, ``df.join(a, b)``
``join(a, b, c)``                                 ``df.join3(a, b, c)``
``a | b``, ``race(a, b)``                         ``a | b``, ``df.race(a, b)``
``if_(c, t, e)``                                  ``df.if(c, t, e)``, ``c ?> t !> e``
``if_rows(name, t, e)``                           ``df.if_rows(name, t, e)``
``loop(body)``, ``loop(body, condition)``         ``df.loop(body)``, ``@> body``
``break_()``, ``break_(value)``                   ``df.break()``, ``df.break(value)``
``sleep(s)``                                      ``df.sleep(s)``
``wait_for_schedule(cron)``                       ``df.wait_for_schedule(cron)``
``wait_for_signal(name, timeout_seconds)``        ``df.wait_for_signal(name, timeout_seconds)``
``http(url, method, body, headers, timeout)``     ``df.http(...)``
``http_multipart(url, method, parts, headers,     ``df.http_multipart(...)``
timeout)``
``step(text)``                                    what any step argument of the SQL DSL does
                                                  to a text (see below)
================================================  ===========================================

Operands.  Wherever a step is expected, a plain ``str`` is auto-wrapped as the
SQL DSL does it: a text that is a workflow envelope (a JSON object with one of
the twelve node types) is that envelope, re-serialised at its top level only
(its children are kept byte for byte); a JSON object with a string
``node_type`` that does not deserialise raises ``Invalid Durofut JSON: ...``;
anything else (plain SQL, JSON without ``node_type``, an unknown node type) is
one SQL step with that text as its query.  ``step(text)`` applies the same rule
explicitly, which is how to name a plain-text step (``step("SELECT 1").as_("x")``)
or how to start a chain from two plain texts (``seq("SELECT 1", "SELECT 2")``;
``"SELECT 1" >> "SELECT 2"`` is Python's own TypeError since neither side is a
node).  ``break_`` takes a literal value, never a step.

Operator precedence differs from SQL.  PostgreSQL parses ``~> |=> & |`` at one
precedence level, left to right; Python gives ``>>`` a higher precedence than
``&``, and ``&`` a higher one than ``|`` (each left-associative), and a method
call such as ``.as_()`` binds tightest of all:

==========================  ==========================  ==========================
Python                      groups as (Python)          the SQL with the same text
==========================  ==========================  ==========================
``a >> b >> c``             ``(a >> b) >> c``           same: ``(a ~> b) ~> c``
``a >> b & c``              ``(a >> b) & c``            same: ``(a ~> b) & c``
``a & b >> c``              ``a & (b >> c)``            ``(a & b) ~> c``
``a | b & c``               ``a | (b & c)``             ``(a | b) & c``
``a & b | c``               ``(a & b) | c``             same: ``(a & b) | c``
``a >> b.as_("x")``         ``a >> (b.as_("x"))``       ``(a ~> b) |=> 'x'``
==========================  ==========================  ==========================

Write the parentheses whenever operators mix: ``(a & b) >> c``,
``(a >> b).as_("x")``; they make the intent explicit in both languages.
``a & b & c`` is ``join(join(a, b), c)`` as in SQL; a flat three-way join is
``join(a, b, c)``.  Never combine nodes with ``and``/``or``: a node has no truth
value, so they raise TypeError instead of silently dropping a branch.

The jsonb arguments of ``http``/``http_multipart`` (``headers``, ``parts``)
take Python values (dicts, lists, str, int, float, bool, None) or, as a
``str``, JSON text as SQL would; either way they come out as PostgreSQL's jsonb
and serde_json would print them (keys shorter first then bytewise, ``1.50`` as
``1.5``, duplicate keys: the last wins).

Errors are :class:`durable.errors.InvalidInputError` with the SQL builders'
message texts.  Text that PostgreSQL cannot hold (U+0000, lone surrogates) is
refused here, before it could reach the database.  Method names and URL
schemes are upper-/lower-cased in ASCII only, as PostgreSQL does in a database
with the C locale.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, NamedTuple, TypeAlias

from durable.engine.jsontext import format_f64
from durable.errors import InvalidInputError

__all__ = [
    "Node",
    "StepLike",
    "break_",
    "http",
    "http_multipart",
    "if_",
    "if_rows",
    "join",
    "loop",
    "race",
    "seq",
    "sleep",
    "sql",
    "step",
    "wait_for_schedule",
    "wait_for_signal",
]

NODE_TYPES: Final = frozenset({"SQL", "THEN", "IF", "JOIN", "LOOP", "BREAK", "RACE", "SLEEP", "WAIT_SCHEDULE",
                               "HTTP", "HTTP_MULTIPART", "SIGNAL"})
_FIELDS: Final = frozenset({"node_type", "left_node", "right_node", "condition_node", "extra_nodes", "query",
                            "result_name"})
_INT4_MIN, _INT4_MAX = -(2**31), 2**31 - 1
_INT8_MIN, _INT8_MAX = -(2**63), 2**63 - 1
_RESULT_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_WS: Final = " \t\n\r"


class Node:
    """One workflow step (and the steps below it): an envelope, immutable.

    Made by the builders of this module, never directly.  ``str(node)`` is the
    envelope JSON text.
    """

    __slots__ = ("_node_type", "_left", "_right", "_condition", "_extra", "_query", "_result_name", "_json")
    _node_type: str
    _left: str | None
    _right: str | None
    _condition: str | None
    _extra: tuple[str, ...]
    _query: str | None
    _result_name: str | None
    _json: str

    def __init__(self) -> None:
        raise TypeError("durable.graph.Node is made by the builders (sql, seq, step, ...), not directly")

    @classmethod
    def _make(cls, node_type: str, *, left: str | None = None, right: str | None = None,
              condition: str | None = None, extra: tuple[str, ...] = (), query: str | None = None,
              result_name: str | None = None) -> Node:
        # Children are envelope texts kept byte for byte; query and result_name
        # are JSON string literals (pg_durable's R-CHILD and R-KEYS).
        node = object.__new__(cls)
        node._node_type = node_type
        node._left = left
        node._right = right
        node._condition = condition
        node._extra = extra
        node._query = query
        node._result_name = result_name
        parts = ['{"node_type":', _jstr(node_type)]
        if left is not None:
            parts += [',"left_node":', left]
        if right is not None:
            parts += [',"right_node":', right]
        if condition is not None:
            parts += [',"condition_node":', condition]
        if extra:
            parts += [',"extra_nodes":[', ",".join(extra), "]"]
        if query is not None:
            parts += [',"query":', query]
        if result_name is not None:
            parts += [',"result_name":', result_name]
        parts.append("}")
        node._json = "".join(parts)
        return node

    @property
    def node_type(self) -> str:
        """SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART or SIGNAL."""
        return self._node_type

    @property
    def result_name(self) -> str | None:
        """The name its result is kept under (``as_``), if any."""
        return None if self._result_name is None else str(json.loads(self._result_name))

    def to_json(self) -> str:
        """The envelope JSON text (the same as ``str(node)``)."""
        return self._json

    def as_(self, name: str) -> Node:
        """This step with its result kept under ``name`` (``|=>`` / ``df.as``); a name it had is replaced."""
        _check_result_name(name)
        return Node._make(self._node_type, left=self._left, right=self._right, condition=self._condition,
                          extra=self._extra, query=self._query, result_name='"' + name + '"')

    def __str__(self) -> str:
        return self._json

    def __repr__(self) -> str:
        return f"step({self._json!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Node):
            return self._json == other._json
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._json)

    def __bool__(self) -> bool:
        raise TypeError("a workflow node has no truth value: combine nodes with >> (seq), & (join) and | (race), "
                        "not with and/or")

    def __rshift__(self, other: StepLike) -> Node:
        if not isinstance(other, Node | str):
            return NotImplemented
        return seq(self, other)

    def __rrshift__(self, other: StepLike) -> Node:
        if not isinstance(other, Node | str):
            return NotImplemented
        return seq(other, self)

    def __and__(self, other: StepLike) -> Node:
        if not isinstance(other, Node | str):
            return NotImplemented
        return join(self, other)

    def __rand__(self, other: StepLike) -> Node:
        if not isinstance(other, Node | str):
            return NotImplemented
        return join(other, self)

    def __or__(self, other: StepLike) -> Node:
        if not isinstance(other, Node | str):
            return NotImplemented
        return race(self, other)

    def __ror__(self, other: StepLike) -> Node:
        if not isinstance(other, Node | str):
            return NotImplemented
        return race(other, self)


StepLike: TypeAlias = Node | str
"""A step argument: a node, or a text auto-wrapped as the SQL DSL does (see :func:`step`)."""


# ----- Builders (sql/src/30_dsl.sql) -------------------------------------------------------------------

def step(value: StepLike) -> Node:
    """The step a text stands for, as every step argument of the SQL DSL reads it.

    An envelope text is that envelope (top level re-serialised, children kept
    byte for byte); a JSON object with a string ``node_type`` that does not
    deserialise raises InvalidInputError; any other text is one SQL step.  A
    node is returned as it is.
    """
    if isinstance(value, Node):
        return value
    if not isinstance(value, str):
        raise TypeError(f"a workflow step must be a durable.graph.Node or a str, not {type(value).__name__}")
    text = _text(value, "a step")
    head = text[:1]
    if head in ("{", " ", "\t", "\n", "\r"):
        parsed = _parse_envelope(text)
        if parsed.kind == "envelope":
            return Node._make(parsed.node_type, left=parsed.left, right=parsed.right, condition=parsed.condition,
                              extra=parsed.extra, query=parsed.query, result_name=parsed.result_name)
        if parsed.kind == "malformed":
            raise InvalidInputError("Invalid Durofut JSON: failed to deserialize workflow step: " + parsed.detail)
    return Node._make("SQL", query=_jstr(text))


def sql(query: str) -> Node:
    """One SQL step; the query is taken verbatim (``df.sql``)."""
    return Node._make("SQL", query=_jstr(_text(query, "query")))


def seq(a: StepLike, b: StepLike) -> Node:
    """``a`` then ``b`` (``df.seq``, ``a ~> b``; in Python also ``a >> b``)."""
    return Node._make("THEN", left=_child(a), right=_child(b))


def join(a: StepLike, b: StepLike, c: StepLike | None = None) -> Node:
    """``a`` and ``b`` (and ``c``) in parallel, waiting for all (``df.join``, ``df.join3``; ``a & b``)."""
    left, right = _child(a), _child(b)
    if c is None:
        return Node._make("JOIN", left=left, right=right)
    return Node._make("JOIN", left=left, right=right, extra=(_child(c),))


def race(a: StepLike, b: StepLike) -> Node:
    """``a`` and ``b`` in parallel, the first to finish wins (``df.race``, ``a | b``)."""
    return Node._make("RACE", left=_child(a), right=_child(b))


def if_(condition: StepLike, then_branch: StepLike, else_branch: StepLike) -> Node:
    """``then_branch`` when the result of the ``condition`` step is true, else ``else_branch`` (``df.if``)."""
    cond = _child(condition)
    return Node._make("IF", left=_child(then_branch), right=_child(else_branch), condition=cond)


def if_rows(result_name: str, then_branch: StepLike, else_branch: StepLike) -> Node:
    """``then_branch`` when the named result has rows, else ``else_branch`` (``df.if_rows``).

    The name is checked when the IF runs, not here (as in SQL)."""
    name = _text(result_name, "result_name")
    config = '{"condition_type":"result_has_rows","result_name":' + _jstr(name) + "}"
    return Node._make("IF", left=_child(then_branch), right=_child(else_branch), query=_jstr(config))


def loop(body: StepLike, condition: StepLike | None = None) -> Node:
    """Run ``body`` again and again, while ``condition`` (when given) is true (``df.loop``, ``@> body``)."""
    if body is None:
        raise InvalidInputError("df.loop: body cannot be NULL")
    left = _child(body)
    return Node._make("LOOP", left=left, condition=None if condition is None else _child(condition))


def break_(value: str | None = None) -> Node:
    """Leave the enclosing loop, whose result becomes ``value`` (``df.break``).

    The value is a literal kept as a string here; it is read as JSON (else as a
    string) only when the BREAK runs."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"break value must be a str or None, not {type(value).__name__}")
    inner = "null" if value is None else _jstr(_text(value, "break value"))
    return Node._make("BREAK", query=_jstr('{"break_value":' + inner + "}"))


def sleep(seconds: int) -> Node:
    """Wait ``seconds`` seconds (``df.sleep``); 0 is allowed."""
    n = _int(seconds, "seconds", _INT8_MIN, _INT8_MAX, "bigint out of range")
    if n < 0:
        raise InvalidInputError("Sleep duration must be non-negative")
    return Node._make("SLEEP", query='"' + str(n) + '"')


def wait_for_schedule(cron_expr: str) -> Node:
    """Wait for the next time the cron expression matches (``df.wait_for_schedule``).

    Standard cron: minute hour day-of-month month day-of-week [year]."""
    expr = _text(cron_expr, "cron_expr")
    if not _cron_valid(expr):
        raise InvalidInputError(f"Invalid cron expression '{expr}': Invalid expression: Invalid cron expression.")
    return Node._make("WAIT_SCHEDULE", query=_jstr('{"cron_expr":' + _jstr(expr) + "}"))


def wait_for_signal(name: str, timeout_seconds: int | None = None) -> Node:
    """Wait for the signal ``name`` (``df.signal``), at most ``timeout_seconds`` (``df.wait_for_signal``)."""
    timeout = None if timeout_seconds is None else _int(timeout_seconds, "timeout_seconds", _INT4_MIN, _INT4_MAX,
                                                         "integer out of range")
    if name is None:
        raise InvalidInputError("df.wait_for_signal: name cannot be NULL")
    text = _text(name, "name")
    if text == "":
        raise InvalidInputError("Signal name cannot be empty")
    if timeout is not None and timeout <= 0:
        raise InvalidInputError("Timeout must be positive")
    config = '{"signal_name":' + _jstr(text) + ',"timeout_seconds":' + ("null" if timeout is None else str(timeout))
    return Node._make("SIGNAL", query=_jstr(config + "}"))


def http(url: str, method: str = "POST", body: str | None = None, headers: Mapping[str, Any] | str | None = None,
         timeout_seconds: int = 30) -> Node:
    """One outbound HTTP request (``df.http``).

    ``headers`` is a mapping, or JSON text as in SQL; its keys end up in
    jsonb's order (shorter first, then bytewise).  The allow-list and the
    caller's privilege are checked when the step runs."""
    headers_value = None if headers is None else _jsonb(headers, json_text=isinstance(headers, str))
    timeout = None if timeout_seconds is None else _int(timeout_seconds, "timeout_seconds", _INT4_MIN, _INT4_MAX,
                                                         "integer out of range")
    if url is None or method is None or timeout is None:
        raise InvalidInputError("df.http: url, method and timeout_seconds cannot be NULL")
    url = _text(url, "url")
    method = _text(method, "method")
    body_text = None if body is None else _text(body, "body")
    upper = method.translate(_ASCII_UPPER)
    if upper not in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        raise InvalidInputError(f"Invalid HTTP method: {method}. Must be GET, POST, PUT, DELETE, or PATCH")
    if timeout <= 0:
        raise InvalidInputError("Timeout must be positive")
    _check_scheme(url)
    config = ('{"url":' + _jstr(url) + ',"method":' + _jstr(upper)
              + ',"body":' + ("null" if body_text is None else _jstr(body_text))
              + ',"headers":' + ("null" if headers_value is None else _jsonb_compact(headers_value))
              + ',"timeout_seconds":' + str(timeout) + "}")
    return Node._make("HTTP", query=_jstr(config))


def http_multipart(url: str, method: str = "POST", parts: Sequence[Mapping[str, Any]] | str | None = None,
                   headers: Mapping[str, Any] | str | None = None, timeout_seconds: int = 30) -> Node:
    """One outbound multipart HTTP request (``df.http_multipart``).

    ``parts`` is a list of ``{"name", "data_b64", "filename"?, "content_type"?}``
    objects, or JSON text as in SQL."""
    parts_value = None if parts is None else _jsonb(parts, json_text=isinstance(parts, str))
    headers_value = None if headers is None else _jsonb(headers, json_text=isinstance(headers, str))
    timeout = None if timeout_seconds is None else _int(timeout_seconds, "timeout_seconds", _INT4_MIN, _INT4_MAX,
                                                         "integer out of range")
    if url is None or method is None or timeout is None:
        raise InvalidInputError("df.http_multipart: url, method and timeout_seconds cannot be NULL")
    url = _text(url, "url")
    method = _text(method, "method")
    upper = method.translate(_ASCII_UPPER)
    if upper not in ("POST", "PUT", "PATCH"):
        raise InvalidInputError(f"Invalid HTTP method for multipart: {method}. Must be POST, PUT, or PATCH")
    if parts is None:
        raise InvalidInputError("parts is required and cannot be NULL")
    if not isinstance(parts_value, list) or any(not isinstance(p, dict) for p in parts_value):
        raise InvalidInputError("parts must be a JSON array of part objects")
    if not parts_value:
        raise InvalidInputError("parts must contain at least one part")
    if timeout <= 0:
        raise InvalidInputError("Timeout must be positive")
    _check_scheme(url)
    config = ('{"url":' + _jstr(url) + ',"method":' + _jstr(upper)
              + ',"parts":' + _jsonb_compact(parts_value)
              + ',"headers":' + ("null" if headers_value is None else _jsonb_compact(headers_value))
              + ',"timeout_seconds":' + str(timeout) + "}")
    return Node._make("HTTP_MULTIPART", query=_jstr(config))


# ----- Argument checks -----------------------------------------------------------------------------------

_ASCII_UPPER: Final = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _text(value: str, what: str) -> str:
    """A str PostgreSQL's text can hold."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInputError(f"{what} contains U+0000, which PostgreSQL text cannot hold")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{what} contains a lone surrogate, which is not valid Unicode") from exc
    return value


def _int(value: int, what: str, low: int, high: int, out_of_range: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidInputError(out_of_range)
    return value


def _check_result_name(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"result name must be a str, not {type(name).__name__}")
    if name == "":
        raise InvalidInputError("df.as: result name cannot be empty")
    if not _RESULT_NAME.fullmatch(name):
        raise InvalidInputError(
            f"df.as: result name '{name}' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*")


def _check_scheme(url: str) -> None:
    # A url with {var} is only complete at run time, where it is checked again.
    if "{" in url:
        return
    scheme = url.split("://", 1)[0].translate(_ASCII_LOWER)
    if scheme not in ("http", "https"):
        raise InvalidInputError(f"Blocked: unsupported URL scheme '{scheme}'. Only http and https are allowed.")


def _child(value: StepLike) -> str:
    """The envelope text a composer embeds for a step argument."""
    if isinstance(value, Node):
        return value._json
    return step(value)._json


def _jstr(s: str) -> str:
    """A JSON string literal as PostgreSQL's to_json(text) writes it (= serde_json's compact form)."""
    return json.dumps(s, ensure_ascii=False)


# ----- Cron (df._cron_valid_v1) ------------------------------------------------------------------------

_CRON_ITEM = re.compile(r"(?:(\*)|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/([0-9]+))?")
_CRON_MIN: Final = (0, 0, 1, 1, 0, 1970)
_CRON_MAX: Final = (59, 23, 31, 12, 7, 2099)
_MONTHS: Final = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS: Final = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


def _cron_valid(expr: str) -> bool:
    """Standard cron: minute hour day-of-month month day-of-week [year]; comma lists of *, n, a-b with an
    optional /step >= 1; JAN-DEC and SUN-SAT in any case; day-of-week 0-7; ranges must not run backwards."""
    fields = re.split(r"[ \t\n\r]+", expr.strip(_WS))
    if len(fields) not in (5, 6):
        return False
    for i, field in enumerate(fields):
        for item in field.split(","):
            m = _CRON_ITEM.fullmatch(item)
            if m is None:
                return False
            step_text = m.group(4)
            if step_text is not None and (len(step_text) > 9 or int(step_text) < 1):
                return False
            if m.group(1) is not None:
                continue
            values: list[int] = []
            for bound in (m.group(2), m.group(3)):
                if bound is None:
                    continue
                if re.fullmatch(r"[0-9]{1,9}", bound):
                    values.append(int(bound))
                elif i == 3 and bound.upper() in _MONTHS:
                    values.append(_MONTHS.index(bound.upper()) + 1)
                elif i == 4 and bound.upper() in _DAYS:
                    values.append(_DAYS.index(bound.upper()))
                else:
                    return False
            if values[0] < _CRON_MIN[i] or values[-1] > _CRON_MAX[i] or values[0] > values[-1]:
                return False
    return True


# ----- JSON text as PostgreSQL reads it ------------------------------------------------------------------

class _Problem(NamedTuple):
    """A string PostgreSQL's json type accepts but cannot turn into text (it stops at the first)."""

    pos: int
    message: str


_ZERO = "unsupported Unicode escape sequence: \\u0000 cannot be converted to text."
_LOW = "invalid input syntax for type json: Unicode low surrogate must follow a high surrogate."
_HIGH = "invalid input syntax for type json: Unicode high surrogate must not follow a high surrogate."
_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_SPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_LITERAL = re.compile(r"true|false|null")


def _lex_string(text: str, i: int) -> tuple[int, int | None, _Problem | None]:
    """Lex the JSON string starting at text[i] == '"': (end, invalid_at, problem).

    ``invalid_at`` is where the json type rejects it (then ``end`` is
    meaningless); ``problem`` the first thing de-escaping would fail on
    (U+0000, a lone surrogate), found in the order PostgreSQL meets it."""
    n = len(text)
    j = i + 1
    hi = False
    problem: _Problem | None = None
    while True:
        plain_end = _end(_PLAIN, text, j)
        if plain_end > j:
            if hi and problem is None:
                problem = _Problem(j, _LOW)
            hi = False
            j = plain_end
        if j >= n:
            return j, j, problem
        c = text[j]
        if c == '"':
            if hi and problem is None:
                problem = _Problem(j, _LOW)
            return j + 1, None, problem
        if c != "\\":  # a raw control character
            return j, j, problem
        e = text[j + 1:j + 2]
        if e == "u":
            if not _HEX4.fullmatch(text, j + 2, j + 6):
                return j, j, problem
            ch = int(text[j + 2:j + 6], 16)
            if problem is None:
                if 0xD800 <= ch <= 0xDBFF:
                    if hi:
                        problem = _Problem(j, _HIGH)
                    hi = True
                elif 0xDC00 <= ch <= 0xDFFF:
                    if not hi:
                        problem = _Problem(j, _LOW)
                    hi = False
                elif hi:
                    problem = _Problem(j, _LOW)
                elif ch == 0:
                    problem = _Problem(j, _ZERO)
            j += 6
        elif e != "" and e in '"\\/bfnrt':
            if hi and problem is None:
                problem = _Problem(j, _LOW)
            hi = False
            j += 2
        else:
            return j, j, problem


def _scan_json(text: str) -> tuple[int | None, _Problem | None]:
    """Check ``text`` as PostgreSQL's json type does: (invalid_at, problem).

    ``invalid_at`` is None when json accepts the text; ``problem`` is the first
    string de-escaping would refuse (json_each, jsonb), in document order.
    Iterative, so nesting depth is no limit."""
    n = len(text)
    stack: list[str] = []
    problem: _Problem | None = None
    state = "value"  # value, value_or_end, key, key_or_end, colon, comma_or_end, done
    i = 0
    while True:
        i = _end(_SPACE, text, i)
        if i >= n:
            return (None if state == "done" else i), problem
        c = text[i]
        if state in ("value", "value_or_end"):
            if state == "value_or_end" and c == "]":
                stack.pop()
                i += 1
            elif c == "{":
                stack.append("{")
                state = "key_or_end"
                i += 1
                continue
            elif c == "[":
                stack.append("[")
                state = "value_or_end"
                i += 1
                continue
            elif c == '"':
                end, bad, p = _lex_string(text, i)
                problem = problem or p
                if bad is not None:
                    return bad, problem
                i = end
            else:
                m = _NUMBER.match(text, i) or _LITERAL.match(text, i)
                if m is None:
                    return i, problem
                i = m.end()
        elif state in ("key", "key_or_end"):
            if state == "key_or_end" and c == "}":
                stack.pop()
                i += 1
            elif c == '"':
                end, bad, p = _lex_string(text, i)
                problem = problem or p
                if bad is not None:
                    return bad, problem
                i = end
                state = "colon"
                continue
            else:
                return i, problem
        elif state == "colon":
            if c != ":":
                return i, problem
            state = "value"
            i += 1
            continue
        elif state == "comma_or_end":
            if c == ",":
                state = "key" if stack[-1] == "{" else "value"
                i += 1
                continue
            if c != ("}" if stack[-1] == "{" else "]"):
                return i, problem
            stack.pop()
            i += 1
        else:  # done: only whitespace may follow
            return i, problem
        state = "comma_or_end" if stack else "done"


_STRING_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STRUCTURE = re.compile(r'["{}\[\]]')
_SCALAR_END = re.compile(r"[ \t\n\r,}\]]")


def _end(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """The end of ``pattern``'s match at ``pos``, which the caller knows is there."""
    m = pattern.match(text, pos)
    assert m is not None
    return m.end()


def _skip_value(text: str, i: int) -> int:
    """The end of the (valid) JSON value starting at text[i]."""
    c = text[i]
    if c == '"':
        return _end(_STRING_TOKEN, text, i)
    if c not in "{[":
        m = _SCALAR_END.search(text, i)
        return len(text) if m is None else m.start()
    depth = 0
    while True:
        m = _STRUCTURE.search(text, i)
        assert m is not None
        i = m.start()
        c = text[i]
        if c == '"':
            i = _end(_STRING_TOKEN, text, i)
            continue
        depth += 1 if c in "{[" else -1
        i += 1
        if depth == 0:
            return i


def _members(text: str, i: int, close: str) -> list[tuple[str, str]]:
    """The members (key, raw value text) of the valid object or array (key '') opening at text[i - 1]."""
    out: list[tuple[str, str]] = []
    i = _end(_SPACE, text, i)
    if text[i] == close:
        return out
    while True:
        key = ""
        if close == "}":
            end = _end(_STRING_TOKEN, text, i)
            key = json.loads(text[i:end])
            i = _end(_SPACE, text, end) + 1  # the colon
            i = _end(_SPACE, text, i)
        end = _skip_value(text, i)
        out.append((key, text[i:end]))
        i = _end(_SPACE, text, end)
        if text[i] == close:
            return out
        i = _end(_SPACE, text, i + 1)


# ----- Envelopes (df._parse_durofut_v1) ----------------------------------------------------------------

class _Parsed(NamedTuple):
    kind: str  # text, malformed, unknown, envelope
    node_type: str = ""
    left: str | None = None
    right: str | None = None
    condition: str | None = None
    extra: tuple[str, ...] = ()
    query: str | None = None
    result_name: str | None = None
    detail: str = ""


def _parse_envelope(text: str) -> _Parsed:
    """Read a step argument as pg_durable's Durofut::ensure does (PGD_REFERENCE.md 2.2)."""
    start = len(text) - len(text.lstrip(_WS))
    if text[start:start + 1] != "{":
        return _Parsed("text")
    invalid_at, problem = _scan_json(text)
    if invalid_at is not None:
        return _Parsed("text")
    if problem is not None:
        # PostgreSQL's json_each de-escapes every string of the document.
        raise InvalidInputError(problem.message)
    members = _members(text, start + 1, "}")
    node_type_raw = None
    for key, raw in reversed(members):  # serde_json's Value keeps the last of duplicate keys
        if key == "node_type":
            node_type_raw = raw
            break
    if node_type_raw is None or node_type_raw[0] != '"':
        return _Parsed("text")
    node_type = str(json.loads(node_type_raw))

    # Deserialise into the Durofut struct as serde derive does: members in order, a repeated field is
    # an error, unknown members are ignored, null counts as absent.
    fields: dict[str, str] = {}
    seen: set[str] = set()
    for index, (key, raw) in enumerate(members):
        if key not in _FIELDS:
            continue
        c = raw[0]
        err = where = None
        if key in seen:
            err, where = f"duplicate field `{key}`", "key"
        elif (key == "node_type" and c != '"') or (key in ("query", "result_name") and c != '"' and raw != "null"):
            err = f"invalid type: {_serde_unexpected(raw)}, expected a string"
        elif key == "extra_nodes" and c != "[":
            err = f"invalid type: {_serde_unexpected(raw)}, expected a sequence"
        if err is not None:
            where = where or ("value_start" if c in "{[" else "value_end")
            detail = err + _serde_position(text, [r for _, r in members], index, where)
            return _Parsed("malformed", node_type, detail=detail)
        seen.add(key)
        if raw != "null":
            fields[key] = raw
    if node_type not in NODE_TYPES:
        return _Parsed("unknown", node_type)
    extra_raw = fields.get("extra_nodes")
    extra = () if extra_raw is None else tuple(r for _, r in _members(extra_raw, 1, "]"))
    return _Parsed("envelope", node_type, left=fields.get("left_node"), right=fields.get("right_node"),
                   condition=fields.get("condition_node"), extra=extra,
                   query=_canonical_string(fields.get("query")),
                   result_name=_canonical_string(fields.get("result_name")))


def _canonical_string(raw: str | None) -> str | None:
    """A JSON string literal with serde_json's escapes (only \\u and \\/ can differ)."""
    if raw is None or ("\\u" not in raw and "\\/" not in raw):
        return raw
    return _jstr(json.loads(raw))


def _serde_unexpected(raw: str) -> str:
    """serde_json's description of an unexpected value ("invalid type: <this>, expected ...")."""
    head = raw[0]
    if head == '"':
        s = str(json.loads(raw)).replace("\\", "\\\\").replace('"', '\\"')
        s = s.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
        for code in range(1, 128):
            if 32 <= code <= 126 or code in (9, 10, 13):
                continue
            s = s.replace(chr(code), "\\u{" + format(code, "x") + "}")
        return f'string "{s}"'
    if head == "{":
        return "map"
    if head == "[":
        return "sequence"
    if raw in ("true", "false"):
        return f"boolean `{raw}`"
    if raw == "null":
        return "null"
    number = _serde_number(raw)
    if "." in number or "e" in number:
        return f"floating point `{number}`"
    return f"integer `{number}`"


_SPACE_COMMA = re.compile(r"[ \t\n\r,]*")
_COLON = re.compile(r"[ \t\n\r]*:[ \t\n\r]*")


def _serde_position(text: str, values: list[str], member: int, where: str) -> str:
    """serde_json's " at line L column C" for an error at member ``member`` of the top-level object:
    just after its key, at its value, or after its value.  Columns count bytes."""
    pos = text.index("{") + 1
    at = pos
    for i in range(member + 1):
        pos = _end(_SPACE_COMMA, text, pos)
        pos = _end(_STRING_TOKEN, text, pos)
        if i == member and where == "key":
            at = pos
            break
        pos = _end(_COLON, text, pos)
        if i == member and where == "value_start":
            at = pos
            break
        pos += len(values[i])
        at = pos
    prefix = text[:at]
    line = 1 + prefix.count("\n")
    column = len(prefix.rsplit("\n", 1)[-1].encode("utf-8"))
    return f" at line {line} column {column}"


# ----- jsonb arguments (headers, parts: PGD_FIXTURES.md R-JSONB-IN) -----------------------------------------

class _Numeric(str):
    """A number as PostgreSQL's numeric prints it."""

    __slots__ = ()


def _jsonb(value: Any, *, json_text: bool) -> Any:
    """A value as jsonb holds it: dicts (any order), lists, str, bool, None and _Numeric."""
    if json_text:
        text = _text(value, "JSON argument")
        invalid_at, problem = _scan_json(text)
        # jsonb de-escapes while it parses: whichever comes first in the text is the error.
        if problem is not None and (invalid_at is None or problem.pos <= invalid_at):
            raise InvalidInputError(problem.message)
        if invalid_at is not None:
            raise InvalidInputError("invalid input syntax for type json")
        return _jsonb(json.loads(text, parse_int=_numeric, parse_float=_numeric), json_text=False)
    if value is None or isinstance(value, bool | _Numeric):
        return value
    if isinstance(value, str):
        return _text(value, "a JSON string")
    if isinstance(value, int):
        return _numeric(str(value))
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidInputError(f"{value!r} is not a JSON number")
        return _numeric(repr(value))
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be str, not {type(key).__name__}")
            out[_text(key, "a JSON key")] = _jsonb(item, json_text=False)
        return out
    if isinstance(value, list | tuple):
        return [_jsonb(item, json_text=False) for item in value]
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _numeric(raw: str) -> _Numeric:
    """A JSON number's text as PostgreSQL's numeric reads and prints it (1e2 -> 100, 1.50 -> 1.50)."""
    mantissa_exp = re.split("[eE]", raw)
    if len(mantissa_exp) == 2 and abs(int(mantissa_exp[1])) > 1000:  # numeric's limit
        raise InvalidInputError(f'invalid input syntax for type numeric: "{raw}"')
    d = Decimal(raw)
    text = format(d, "f")
    if d == 0:
        text = text.lstrip("-")
    return _Numeric(text)


def _serde_number(text: str) -> str:
    """A JSON number as serde_json prints it after parsing (df._json_number_v1): integers that fit u64/i64
    unchanged, the rest through f64 (1.50 -> 1.5, 1e2 -> 100.0)."""
    if re.fullmatch(r"-?[0-9]+", text):
        if text == "-0":
            return "-0.0"
        n = int(text)
        if _INT8_MIN <= n <= 2**64 - 1:
            return str(n)
    value = float(text)
    mantissa = re.split("[eE]", text)[0]
    if value in (float("inf"), float("-inf")) or (value == 0 and re.search("[1-9]", mantissa)):
        raise InvalidInputError(f'"{text}" is out of range for type double precision')
    return format_f64(value)


def _jsonb_key(key: str) -> tuple[int, bytes]:
    b = key.encode("utf-8")
    return len(b), b


def _jsonb_compact(value: Any) -> str:
    """serde_json's compact text of a jsonb value (df._json_compact_v1): jsonb's key order, no spaces."""
    if isinstance(value, dict):
        return "{" + ",".join(_jstr(k) + ":" + _jsonb_compact(value[k]) for k in sorted(value, key=_jsonb_key)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_jsonb_compact(v) for v in value) + "]"
    if isinstance(value, _Numeric):
        return _serde_number(str(value))
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return _jstr(value)
