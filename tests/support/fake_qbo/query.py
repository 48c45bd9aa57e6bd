"""The subset of Intuit's query language a sync needs, parsed the way Intuit rejects it.

``SELECT * | COUNT(*) FROM <Entity> [WHERE <cond> [AND <cond>]...] [ORDERBY <field> [ASC|DESC]]
[STARTPOSITION n] [MAXRESULTS m]``; keywords, entity and property names are case-insensitive
(Intuit's docs say so); ``ORDER BY`` is accepted as ``ORDERBY`` (Intuit's own samples write it).
Conditions: ``MetaData.LastUpdatedTime`` / ``MetaData.CreateTime`` with ``= < > <= >=`` and a
quoted ISO time; ``Id`` with ``=`` or ``IN`` (Intuit: Id takes only those); ``Active``,
``IsProject``, ``Job`` (Customer) with ``=`` or ``IN`` and unquoted ``true``/``false``.
Assumptions, the stricter reading where Intuit's docs are silent:

- Entities beyond Vendor, Customer, Bill, Purchase, VendorCredit and BillPayment are refused as a
  parse error (4000), real ones included; a property outside the list above is 4001 ``Property X
  not found for Entity Y`` (which Intuit answers for unknown ones); OR, projections, LIKE: 4000.
- STARTPOSITION before MAXRESULTS, in the documented order; STARTPOSITION 0 is read as 1 (seen in
  practice); MAXRESULTS defaults to 100 (documented), must be 1..1000; over 1000 is 4001.
- Without ORDERBY the order is by Id ascending, Ids compared as numbers; ORDERBY a time breaks
  ties by Id, so the order is stable and paging never repeats a row of an unchanged table.
- Vendor and Customer queries return only ACTIVE records unless the WHERE names ``Active``
  (Intuit's name-list behaviour: ``WHERE Active IN (true, false)`` for all); CDC returns both.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from . import timefmt

ENTITIES = ("Vendor", "Customer", "Bill", "Purchase", "VendorCredit", "BillPayment")
NAME_LISTS = ("Vendor", "Customer")
MAX_RESULTS = 1000
DEFAULT_MAX_RESULTS = 100
TIME_FIELDS = {"metadata.lastupdatedtime": "updated", "metadata.createtime": "created"}
BOOL_FIELDS = {"active": "Active", "isproject": "IsProject", "job": "Job"}
COMPARISONS = ("=", "<", ">", "<=", ">=")

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:\\.|[^'\\])*')|(?P<num>\d+)|(?P<word>[A-Za-z_][\w.]*)"
    r"|(?P<op><=|>=|!=|[=<>*(),]))"
)


class ParseError(Exception):
    """A 4000 QueryParserError; the message is the Fault's detail."""


class Invalid(Exception):
    """A 4001 QueryValidationError; the message is the Fault's detail."""


@dataclass
class Condition:
    field: str  # "updated" / "created" / "Id" / "Active" / "IsProject" / "Job"
    op: str  # one of COMPARISONS or "in"
    values: list[str | bool | float]


@dataclass
class Query:
    entity: str
    count: bool = False
    where: list[Condition] = field(default_factory=list)
    order_by: str = "Id"
    descending: bool = False
    start: int = 1
    max_results: int = DEFAULT_MAX_RESULTS


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.lastgroup is None:
            raise ParseError(
                f'Encountered " "{text[pos:].lstrip()[:1]}"" at line 1, column {pos + 1}.'
            )
        out.append((m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup) + 1))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def fail(self) -> ParseError:
        tok = self.peek()
        if tok is None:
            return ParseError('Encountered "<EOF>" at line 1.')
        kind = {"str": "<STRING>", "num": "<INTEGER>", "word": "<IDENTIFIER>"}.get(tok[0], "")
        return ParseError(f'Encountered " {kind} "{tok[1]} "" at line 1, column {tok[2]}.')

    def take(self, kind: str, value: str | None = None) -> str:
        tok = self.peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1].lower() != value):
            raise self.fail()
        self.i += 1
        return tok[1]

    def at(self, value: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[1].lower() == value

    def number(self) -> int:
        return int(self.take("num"))


def parse(text: str) -> Query:
    """A parsed query, or ``ParseError`` / ``Invalid`` as Intuit would refuse it."""
    p = _Parser(text)
    p.take("word", "select")
    count = False
    if p.at("count"):
        for kind, value in (("word", "count"), ("op", "("), ("op", "*"), ("op", ")")):
            p.take(kind, value)
        count = True
    else:
        p.take("op", "*")
    p.take("word", "from")
    name = p.take("word")
    entity = next((e for e in ENTITIES if e.lower() == name.lower()), None)
    if entity is None:
        raise ParseError(f"Invalid entity name: {name}")
    query = Query(entity, count=count)
    if p.at("where"):
        p.take("word")
        query.where.append(_condition(p, entity))
        while p.at("and"):
            p.take("word")
            query.where.append(_condition(p, entity))
    if p.at("orderby") or p.at("order"):
        if p.take("word").lower() == "order":
            p.take("word", "by")
        query.order_by = _order_field(p.take("word"), entity)
        if p.at("asc") or p.at("desc"):
            query.descending = p.take("word").lower() == "desc"
    if p.at("startposition"):
        p.take("word")
        query.start = max(1, p.number())
    if p.at("maxresults"):
        p.take("word")
        query.max_results = p.number()
        if query.max_results > MAX_RESULTS:
            raise Invalid(
                f"value {query.max_results} is too large. Max allowed value is {MAX_RESULTS}"
            )
        if query.max_results < 1:
            raise Invalid("MAXRESULTS must be a positive integer")
    if p.peek() is not None:
        raise p.fail()
    return query


def _order_field(name: str, entity: str) -> str:
    if name.lower() == "id":
        return "Id"
    if name.lower() in TIME_FIELDS:
        return TIME_FIELDS[name.lower()]
    raise Invalid(f"Property {name} not found for Entity {entity}")


def _condition(p: _Parser, entity: str) -> Condition:
    name = p.take("word")
    key = name.lower()
    tok = p.peek()
    if tok is None:
        raise p.fail()
    if tok[1].lower() == "in":
        p.take("word")
        op = "in"
    elif tok[0] == "op" and tok[1] in COMPARISONS:
        op = p.take("op")
    else:
        raise p.fail()
    if key in TIME_FIELDS:
        if op == "in":
            raise p.fail()
        text = p.take("str")[1:-1]
        try:
            return Condition(TIME_FIELDS[key], op, [timefmt.parse(text)])
        except ValueError:
            raise Invalid(f"Invalid date time value: {text}") from None
    if key == "id":
        if op not in ("=", "in"):
            raise Invalid(f"Operator {op} is not supported for property Id")
        return Condition("Id", "in", _values(p, op, _id_value))
    if key in BOOL_FIELDS and (entity in NAME_LISTS if key == "active" else entity == "Customer"):
        if op not in ("=", "in"):
            raise Invalid(f"Operator {op} is not supported for property {BOOL_FIELDS[key]}")
        return Condition(BOOL_FIELDS[key], "in", _values(p, op, _bool_value))
    raise Invalid(f"Property {name} not found for Entity {entity}")


def _values(p: _Parser, op: str, read: Callable[[_Parser], str | bool]) -> list[str | bool | float]:
    if op != "in":
        return [read(p)]
    p.take("op", "(")
    values: list[str | bool | float] = [read(p)]
    while p.at(","):
        p.take("op", ",")
        values.append(read(p))
    p.take("op", ")")
    return values


def _id_value(p: _Parser) -> str:
    tok = p.peek()
    if tok is not None and tok[0] == "num":
        return p.take("num")
    return p.take("str")[1:-1]


def _bool_value(p: _Parser) -> bool:
    if p.at("true") or p.at("false"):
        return p.take("word").lower() == "true"
    raise p.fail()
