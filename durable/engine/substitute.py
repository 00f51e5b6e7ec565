"""Text substitution of SQL steps: ``{var}`` variables, then ``$name`` results.

Variables (``{ident}``, ``{sys_instance_id}``, ``{sys_label}``) are inserted raw,
in one pass, anywhere (PGD_REFERENCE 2.6).  Results are substituted by a pass
that lexes the statement as PostgreSQL does (standard_conforming_strings on),
so that no value can change the statement's shape (CONTRACT 3):

- in code position a value becomes a literal: strings and JSON objects/arrays
  ``'...'`` with quotes doubled, numbers bare (negative ones, and any that
  could merge with a neighbouring token, parenthesised), ``true``/``false``,
  ``NULL``; ``$n.*`` becomes an inline ``(VALUES ...) AS "n"(...)`` relation;
- inside a string literal the value's text goes in with quotes (and, in
  ``E''``/``U&''`` strings, backslashes) doubled and no surrounding quotes;
- inside a dollar-quoted body the body is lexed again as code, and the result
  is kept only if the body's closing delimiter does not appear earlier than
  before; otherwise the step fails;
- comments and quoted identifiers are left alone, and so is a ``$`` that is
  part of an identifier (``a$b``), a positional parameter or a dollar quote.

Lookup rules and messages follow PGD_REFERENCE 2.5.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from durable.engine import jsontext
from durable.engine.jsontext import RawNumber

MAX_EXPAND_ROWS = 10000

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_COL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SubstitutionError(Exception):
    """A ``$name`` reference cannot be substituted; the step fails with this message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _ident_start(c: str) -> bool:
    return c.isascii() and (c.isalpha() or c == "_") or (not c.isascii() and c != "")


def _ident_cont(c: str) -> bool:
    return _ident_start(c) or c.isdigit() and c.isascii() or c == "$"


def substitute_vars(template: str, vars: Mapping[str, str], sys: Mapping[str, str]) -> str:
    """Replace ``{ident}`` with a variable's raw value; unknown braces stay as they are."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in sys:
            return sys[name]
        if name in vars:
            return vars[name]
        return m.group(0)

    return _VAR.sub(repl, template)


def render(
    template: str,
    results: Mapping[str, str],
    vars: Mapping[str, str],
    sys: Mapping[str, str],
) -> str:
    """The SQL text of a step: variables first, then ``$`` results (lexer-aware).

    ``results`` maps result names to stored result text (JSON with column order
    kept).  Raises :class:`SubstitutionError` with pg_durable's messages.
    """
    return substitute_results(substitute_vars(template, vars, sys), results)


def substitute_results(sql: str, results: Mapping[str, str]) -> str:
    if "$" not in sql or not results:
        return sql
    sub = _Substituter(results)
    out, _ = sub.code(sql, 0, len(sql))
    return out


# --- values ---------------------------------------------------------------------------


class _Null:
    """SQL NULL from a ``?`` reference."""


_NULL = _Null()


@dataclass(frozen=True)
class _RawText:
    """A result that is not JSON: its text."""

    text: str


@dataclass(frozen=True)
class _Whole:
    """A whole object/array result: substituted as its stored JSON text."""

    text: str


@dataclass(frozen=True)
class _Ref:
    name: str
    col: str | None  # None: bare; "*": the row set
    optional: bool
    end: int  # index just past the reference in the source
    source: str  # the reference as written


_MISSING = object()


def _nul_check(ref: _Ref, text: str) -> str:
    if "\x00" in text:
        raise SubstitutionError(f"${ref.name} contains a NUL character, which SQL text cannot hold")
    return text


class _Substituter:
    def __init__(self, results: Mapping[str, str]) -> None:
        self.results = results
        self.names = sorted(results, key=lambda n: (-len(n), n))
        self._parsed: dict[str, tuple[bool, Any]] = {}

    # -- reference parsing -------------------------------------------------------------

    def match(self, s: str, i: int, stop: int) -> _Ref | None:
        """The reference starting at ``s[i] == '$'``, longest known name first."""
        for name in self.names:
            j = i + 1 + len(name)
            if j > stop or s[i + 1 : j] != name:
                continue
            if s.startswith(".*", j) and j + 2 <= stop:
                return _Ref(name, "*", False, j + 2, s[i : j + 2])
            if j < stop and s[j] == "." and j + 1 < stop:
                m = _COL.match(s, j + 1, stop)
                if m:
                    k = m.end()
                    if k < stop and s[k] == "?":
                        return _Ref(name, m.group(0), True, k + 1, s[i : k + 1])
                    return _Ref(name, m.group(0), False, k, s[i:k])
            if j < stop and s[j] == "?":
                return _Ref(name, None, True, j + 1, s[i : j + 1])
            if j >= stop or s[j] not in _NAME_CHARS:
                return _Ref(name, None, False, j, s[i:j])
        return None

    def _parse(self, name: str) -> tuple[bool, Any]:
        if name not in self._parsed:
            self._parsed[name] = jsontext.try_loads(self.results[name])
        return self._parsed[name]

    def lookup(self, ref: _Ref) -> Any:
        """The value of a bare or dotted reference; _MISSING when the field does not exist."""
        text = self.results[ref.name]
        ok, value = self._parse(ref.name)
        label = f"${ref.name}" if ref.col is None else f"${ref.name}.{ref.col}"
        if not ok:
            if ref.col is not None:
                raise SubstitutionError(f"{label}: result is neither a row set nor a JSON object")
            return _RawText(text)
        if isinstance(value, dict) and isinstance(value.get("rows"), list):
            rows = value["rows"]
            if not rows:
                if ref.optional:
                    return _NULL
                raise SubstitutionError(f"${ref.name} has no rows — query returned zero results")
            row = rows[0]
            if not isinstance(row, dict):
                raise SubstitutionError(f"{label}: result is neither a row set nor a JSON object")
            if ref.col is None:
                v = next(iter(row.values())) if row else None
            elif ref.col in row:
                v = row[ref.col]
            else:
                return _MISSING
        elif isinstance(value, dict):
            if ref.col is None:
                return _Whole(text.strip())
            if ref.col not in value:
                return _MISSING
            v = value[ref.col]
        else:
            if ref.col is not None:
                raise SubstitutionError(f"{label}: result is neither a row set nor a JSON object")
            if isinstance(value, list):
                return _Whole(text.strip())
            v = value
        if v is None:
            if ref.optional:
                return _NULL
            hint = f"${ref.name}?" if ref.col is None else f"${ref.name}.{ref.col}?"
            raise SubstitutionError(f"{label} is NULL — use {hint} to substitute SQL NULL")
        return v

    # -- rendering ---------------------------------------------------------------------

    def star_relation(self, ref: _Ref) -> str:
        ok, value = self._parse(ref.name)
        if not (ok and isinstance(value, dict) and isinstance(value.get("rows"), list)):
            raise SubstitutionError(f"${ref.name}.* — invalid result format")
        rows = value["rows"]
        alias = _quote_ident(ref.name)
        if not rows:
            return f"(SELECT NULL WHERE false) AS {alias}"
        if len(rows) > MAX_EXPAND_ROWS:
            raise SubstitutionError(
                f"${ref.name}.* — {len(rows)} rows is more than the {MAX_EXPAND_ROWS} rows that can be expanded"
            )
        if not all(isinstance(r, dict) for r in rows) or not rows[0]:
            raise SubstitutionError(f"${ref.name}.* — invalid result format")
        cols = list(rows[0].keys())
        tuples = []
        for r in rows:
            cells = []
            for c in cols:
                v = r.get(c)
                if v is None:
                    cells.append("NULL")
                elif v is True or v is False:
                    cells.append("true" if v else "false")
                elif isinstance(v, RawNumber):
                    cells.append(str(v))
                elif isinstance(v, str):
                    cells.append(_quote_literal(v) + "::text")
                else:
                    cells.append(_quote_literal(jsontext.dumps(v)) + "::text")
            tuples.append("(" + ",".join(cells) + ")")
        names = ",".join(_quote_ident(c) for c in cols)
        return f"(VALUES {','.join(tuples)}) AS {alias}({names})"

    def code_value(self, ref: _Ref, prev: str, prev2: str, nxt: str) -> str | None:
        """The literal for a reference in code position; None keeps the reference text."""
        if ref.col == "*":
            return self.star_relation(ref)
        v = self.lookup(ref)
        if v is _MISSING:
            return None
        glued = prev in ".$" or _ident_cont(prev) or nxt == "." or _ident_cont(nxt)
        if isinstance(v, RawNumber):
            text = str(v)
            return f"({text})" if text.startswith("-") or glued else text
        if v is _NULL or v is True or v is False:
            word = "NULL" if v is _NULL else ("true" if v else "false")
            return f"({word})" if glued else word
        if isinstance(v, str):
            lit = _quote_literal(v)
        elif isinstance(v, _RawText | _Whole):
            lit = _quote_literal(v.text)
        else:
            lit = _quote_literal(jsontext.dumps(v))
        if prev == "'" or nxt == "'" or (prev == "&" and prev2 in "uU" and prev2 != ""):
            return f"({lit})"
        return lit

    def text_value(self, ref: _Ref) -> str | None:
        """The plain text of a reference, for insertion inside a string literal."""
        if ref.col == "*":
            ok, value = self._parse(ref.name)
            if not (ok and isinstance(value, dict) and isinstance(value.get("rows"), list)):
                raise SubstitutionError(f"${ref.name}.* — invalid result format")
            return jsontext.dumps(value["rows"])
        v = self.lookup(ref)
        if v is _MISSING:
            return None
        if v is _NULL:
            return "NULL"
        if v is True or v is False:
            return "true" if v else "false"
        if isinstance(v, str):
            return v
        if isinstance(v, _RawText | _Whole):
            return v.text
        return jsontext.dumps(v)

    # -- the lexer ---------------------------------------------------------------------

    def code(self, s: str, start: int, stop: int) -> tuple[str, list[str]]:
        """Substitute in ``s[start:stop]`` lexed as code; returns (text, names used)."""
        out: list[str] = []
        used: list[str] = []
        i = start

        def last(k: int = 1) -> str:
            tail = "".join(out[-4:]) if out else ""
            return tail[-k] if len(tail) >= k else ""

        while i < stop:
            c = s[i]
            if c == "-" and s.startswith("--", i) and i + 1 < stop:
                j = s.find("\n", i, stop)
                j = stop if j < 0 else j + 1
                out.append(s[i:j])
                i = j
            elif c == "/" and s.startswith("/*", i) and i + 1 < stop:
                j = _block_comment_end(s, i, stop)
                out.append(s[i:j])
                i = j
            elif c == '"':
                j = _quoted_end(s, i, stop, '"')
                out.append(s[i:j])
                i = j
            elif c == "'":
                j, text = self.string(s, i, stop, escapes=False, used=used)
                out.append(text)
                i = j
            elif _ident_start(c):
                j = i + 1
                while j < stop and _ident_cont(s[j]):
                    j += 1
                word = s[i:j]
                out.append(word)
                i = j
                if i < stop and s[i] == "'" and word in ("E", "e"):
                    i, text = self.string(s, i, stop, escapes=True, used=used)
                    out.append(text)
                elif word in ("U", "u") and s.startswith("&'", i) and i + 2 <= stop:
                    out.append("&")
                    i, text = self.string(s, i + 1, stop, escapes=False, used=used, unicode=True)
                    out.append(text)
            elif c == "$":
                m = _DOLLAR_TAG.match(s, i, stop)
                if m:
                    delim = m.group(0)
                    body_start = m.end()
                    close = s.find(delim, body_start, stop)
                    body_stop = stop if close < 0 else close
                    inner, inner_used = self.code(s, body_start, body_stop)
                    if inner_used and (inner + delim).find(delim) != len(inner):
                        raise SubstitutionError(
                            f"${inner_used[0]} cannot be substituted inside the dollar-quoted body "
                            f"{delim}...{delim}: the result would contain its closing delimiter {delim}"
                        )
                    used.extend(inner_used)
                    out.append(delim + inner + (delim if close >= 0 else ""))
                    i = stop if close < 0 else close + len(delim)
                    continue
                ref = self.match(s, i, stop)
                if ref is None:
                    out.append("$")
                    i += 1
                    continue
                nxt = s[ref.end] if ref.end < stop else ""
                lit = self.code_value(ref, last(1), last(2), nxt)
                if lit is None:
                    out.append(ref.source)
                else:
                    out.append(_nul_check(ref, lit))
                    used.append(ref.name)
                i = ref.end
            else:
                j = i + 1
                while j < stop and s[j] not in _SPECIAL and not _ident_start(s[j]):
                    j += 1
                out.append(s[i:j])
                i = j
        return "".join(out), used

    def string(
        self, s: str, i: int, stop: int, *, escapes: bool, used: list[str], unicode: bool = False
    ) -> tuple[int, str]:
        """A single-quoted literal starting at ``s[i] == "'"``: (end, substituted text).

        ``escapes``: an E'' string (backslash escapes the next character);
        ``unicode``: a U&'' string (backslash starts a Unicode escape).  In both
        an inserted backslash is doubled so that it stays a backslash.
        """
        out = ["'"]
        j = i + 1
        while j < stop:
            c = s[j]
            if c == "'":
                if j + 1 < stop and s[j + 1] == "'":
                    out.append("''")
                    j += 2
                    continue
                out.append("'")
                return j + 1, "".join(out)
            if c == "\\" and escapes:
                out.append(s[j : min(j + 2, stop)])
                j += 2
                continue
            if c == "$":
                ref = self.match(s, j, stop)
                if ref is not None:
                    text = self.text_value(ref)
                    if text is None:
                        out.append(ref.source)
                    else:
                        text = _nul_check(ref, text).replace("'", "''")
                        if escapes or unicode:
                            text = text.replace("\\", "\\\\")
                        out.append(text)
                        used.append(ref.name)
                    j = ref.end
                    continue
            out.append(c)
            j += 1
        return stop, "".join(out)  # unterminated: PostgreSQL will refuse it anyway


_SPECIAL = frozenset("-/\"'$")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")


def _block_comment_end(s: str, i: int, stop: int) -> int:
    depth = 0
    j = i
    while j < stop:
        if s.startswith("/*", j) and j + 1 < stop:
            depth += 1
            j += 2
        elif s.startswith("*/", j) and j + 1 < stop:
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    return stop


def _quoted_end(s: str, i: int, stop: int, q: str) -> int:
    j = i + 1
    while j < stop:
        if s[j] == q:
            if j + 1 < stop and s[j + 1] == q:
                j += 2
                continue
            return j + 1
        j += 1
    return stop


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
