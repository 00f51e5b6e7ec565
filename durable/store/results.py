"""SQL step results as pg_durable shapes them, column order kept.

`{"rows":[{col: value, ...}, ...],"row_count":n}`: bool and integers native,
floats native (NaN and infinities null, float4 not widened), numeric as its
exact text, timestamptz RFC 3339 in UTC, timestamp and date ISO, json/jsonb
native, text-like and uuid strings, void and NULL null; any other type fails
the step.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.adapt import Loader

# type OID -> name as pg_durable's messages spell it
SUPPORTED: dict[int, str] = {
    16: "BOOL", 21: "INT2", 23: "INT4", 20: "INT8", 700: "FLOAT4", 701: "FLOAT8", 25: "TEXT",
    1043: "VARCHAR", 1042: "BPCHAR", 19: "NAME", 1700: "NUMERIC", 2950: "UUID", 1184: "TIMESTAMPTZ",
    1114: "TIMESTAMP", 1082: "DATE", 3802: "JSONB", 114: "JSON", 2278: "VOID", 705: "TEXT",
}
_SUPPORTED_LIST = ("bool, int2, int4, int8, float4, float8, text, varchar, numeric, uuid, timestamptz, "
                   "timestamp, date, jsonb, json, void")


class UnsupportedColumn(Exception):
    pass


class _Float4Loader(Loader):
    """float4 without widening: the shortest decimal that round-trips through float32."""

    format = psycopg.pq.Format.BINARY

    def load(self, data: Any) -> Any:
        raw = bytes(data)
        (value,) = struct.unpack(">f", raw)
        if math.isfinite(value):
            for precision in range(1, 10):
                text = f"{value:.{precision}g}"
                if struct.pack(">f", float(text)) == raw:
                    return _Float4(text)
        return value


class _Float4(float):
    """A float that remembers its float4 text."""

    text: str

    def __new__(cls, text: str) -> _Float4:
        obj = super().__new__(cls, float(text))
        obj.text = text
        return obj


class _RawJsonLoader(Loader):
    """json/jsonb as text, so key order survives (json keeps the source's, jsonb its own)."""

    format = psycopg.pq.Format.BINARY

    def load(self, data: Any) -> Any:
        raw = bytes(data)
        if self.oid == 3802 and raw[:1] == b"\x01":  # binary jsonb starts with a version byte
            raw = raw[1:]
        return _RawJson(raw.decode())


class _RawJson(str):
    pass


class _VoidLoader(Loader):
    format = psycopg.pq.Format.BINARY

    def load(self, data: Any) -> Any:
        return None


def configure(conn: psycopg.Connection[Any]) -> None:
    """Loaders for step connections, whose results come in binary (the extended protocol)."""
    conn.adapters.register_loader(700, _Float4Loader)
    conn.adapters.register_loader(114, _RawJsonLoader)
    conn.adapters.register_loader(3802, _RawJsonLoader)
    conn.adapters.register_loader(2278, _VoidLoader)


def _ts_fraction(t: dt.datetime) -> str:
    if t.microsecond == 0:
        return ""
    if t.microsecond % 1000 == 0:
        return f".{t.microsecond // 1000:03d}"
    return f".{t.microsecond:06d}"


def _json_value(value: Any, oid: int) -> str:
    """One value as compact JSON text."""
    if value is None:
        return "null"
    if oid == 16:
        return "true" if value else "false"
    if oid in (21, 23, 20):
        return str(int(value))
    if oid in (700, 701):
        if not math.isfinite(value):
            return "null"
        text = getattr(value, "text", None) or repr(float(value))
        return _float_text(text)
    if oid == 1700:
        return json.dumps(_numeric_text(value))
    if oid == 1184:
        t = value.astimezone(dt.UTC)
        return json.dumps(t.strftime("%Y-%m-%dT%H:%M:%S") + _ts_fraction(t) + "+00:00")
    if oid == 1114:
        return json.dumps(value.strftime("%Y-%m-%dT%H:%M:%S") + _ts_fraction(value))
    if oid == 1082:
        return json.dumps(value.isoformat())
    if oid in (114, 3802):
        return compact_json(str(value))
    return json.dumps(str(value), ensure_ascii=False)


def _float_text(text: str) -> str:
    """Python float text as a JSON number (1e+20 -> 1e20, as ryu writes it)."""
    if "e" in text:
        mantissa, exp = text.split("e")
        return f"{mantissa}e{int(exp)}"
    return text


def _numeric_text(value: Decimal) -> str:
    if value.is_nan():
        return "NaN"
    text = format(value, "f")
    return text


def compact_json(text: str) -> str:
    """Re-emit JSON text compactly, key order kept (duplicate keys: last value, first position)."""
    return json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))


class ResultTooLarge(Exception):
    pass


def rows_json(cursor: psycopg.Cursor[Any], max_bytes: int = 64 * 1024 * 1024) -> str:
    """The result of a step's statement as order-preserving JSON text (at most `max_bytes` of it:
    a larger result fails the step instead of the worker)."""
    if cursor.description is None:
        return '{"rows":[],"row_count":0}'
    columns = [(c.name, c.type_code) for c in cursor.description]
    for name, oid in columns:
        if oid not in SUPPORTED:
            type_name = _type_name(cursor, oid)
            raise UnsupportedColumn(
                f"Unsupported column type '{type_name}' for column '{name}'. Supported types: {_SUPPORTED_LIST}."
            )
    rendered: list[str] = []
    size = 0
    while batch := cursor.fetchmany(1000):
        for row in batch:
            fields: dict[str, str] = {}
            for (name, oid), value in zip(columns, row, strict=True):
                fields[name] = _json_value(value, oid)
            text = "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{v}" for k, v in fields.items()) + "}"
            size += len(text) + 1
            if size > max_bytes:
                raise ResultTooLarge(f"the step's result is larger than {max_bytes} bytes (the max_result_bytes "
                                     "setting): return fewer rows or smaller values")
            rendered.append(text)
    return '{"rows":[' + ",".join(rendered) + '],"row_count":' + str(len(rendered)) + "}"


def _type_name(cursor: psycopg.Cursor[Any], oid: int) -> str:
    info = cursor.connection.adapters.types.get(oid)
    return info.name.upper() if info is not None else f"OID {oid}"
