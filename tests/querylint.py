"""Rules a real MongoDB server enforces and mongomock does not, checked on recorded calls.

`lint(call)` returns the list of violations of one recorded call (empty when clean).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from balance_refill.testing import Call

UPDATE_OPERATORS = {"$set", "$setOnInsert", "$inc", "$max", "$min", "$unset", "$push"}
PUSH_MODIFIERS = {"$each", "$slice"}
FILTER_OPERATORS = {
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$ne",
    "$in",
    "$nin",
    "$exists",
    "$or",
    "$and",
    "$not",
    "$regex",  # only ensure_indexes' constant, anchored pattern for hex-string user ids
}
PIPELINE_STAGES = {"$set"}
EXPRESSION_OPERATORS = {
    "$cond",
    "$and",
    "$gte",
    "$eq",
    "$in",
    "$ifNull",
    "$subtract",
    "$add",
    "$literal",
    "$slice",
    "$concatArrays",
    "$max",
}
AGGREGATE_STAGES = {"$match", "$group", "$sort", "$limit", "$project"}
FORBIDDEN_STRINGS = ("$$NOW", "$$CLUSTER_TIME")


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk(v)


def _keys(value: Any) -> Iterator[str]:
    for node in _walk(value):
        if isinstance(node, Mapping):
            yield from (str(k) for k in node)


def _conflicts(paths: Sequence[str]) -> list[str]:
    out = []
    for i, a in enumerate(paths):
        for b in paths[i + 1 :]:
            if a == b or a.startswith(b + ".") or b.startswith(a + "."):
                out.append(f"two operators on one path: {a!r} and {b!r}")
    return out


def _lint_filter(filter_: Any) -> list[str]:
    return [
        f"filter operator {key} is not allowed"
        for key in _keys(filter_)
        if key.startswith("$") and key not in FILTER_OPERATORS
    ]


def _lint_expression(expr: Any) -> list[str]:
    problems = []
    if isinstance(expr, Mapping):
        for key, value in expr.items():
            if key == "$literal":
                continue
            if str(key).startswith("$") and key not in EXPRESSION_OPERATORS:
                problems.append(f"expression operator {key} is not allowed")
            for arg in value if isinstance(value, list) else []:
                # The mock does not evaluate expressions inside array literals.
                if isinstance(arg, list) and any(isinstance(x, Mapping) for x in arg):
                    problems.append(f"expression inside an array literal under {key}: use $literal")
            problems.extend(_lint_expression(value))
    elif isinstance(expr, list):
        for item in expr:
            problems.extend(_lint_expression(item))
    return problems


def _lint_pipeline(update: list[Any], upsert: bool) -> list[str]:
    problems = []
    if upsert:
        problems.append("pipeline update with upsert (results differ between mock and server)")
    for stage in update:
        for name, body in stage.items():
            if name not in PIPELINE_STAGES:
                problems.append(f"pipeline stage {name} is not allowed")
            for field, expr in body.items():
                if str(field).startswith("$"):
                    problems.append(f"pipeline field {field} looks like an operator")
                problems.extend(_lint_expression(expr))
    return problems


def _lint_update(update: Any, upsert: bool) -> list[str]:
    if isinstance(update, list):
        return _lint_pipeline(update, upsert)
    if not isinstance(update, Mapping) or not update:
        return ["update must be a non-empty document or pipeline"]
    problems: list[str] = []
    paths: list[str] = []
    for op, fields in update.items():
        if op not in UPDATE_OPERATORS:
            problems.append(f"update operator {op} is not allowed")
            continue
        for path, value in fields.items():
            if str(path).startswith("$"):
                problems.append(f"field name {path!r} starts with $")
            paths.append(str(path))
            if op == "$push" and isinstance(value, Mapping) and set(value) - PUSH_MODIFIERS:
                problems.append(
                    f"$push modifiers {sorted(set(value) - PUSH_MODIFIERS)} are not allowed"
                )
    problems.extend(_conflicts(paths))
    return problems


def _lint_write(call: Call) -> list[str]:
    upsert = bool(call.kwargs.get("upsert"))
    filter_: Any = call.args[0]  # documents as sent: any shape
    update: Any = call.args[1]
    problems = _lint_filter(filter_) + _lint_update(update, upsert)
    if upsert:
        if "$expr" in set(_keys(filter_)):
            problems.append("$expr in an upsert filter (server error 224)")
        if "_id" in filter_ and len(filter_) > 1:
            problems.append("upsert with a conditional filter on _id (DuplicateKeyError)")
        if (
            isinstance(update, Mapping)
            and "_id" in update.get("$setOnInsert", {})
            and "_id" in filter_
        ):
            problems.append("$setOnInsert of _id with an _id filter")
    return problems


def _lint_insert(call: Call) -> list[str]:
    docs: Any = call.args[0] if call.method == "insert_many" else [call.args[0]]
    bad = [k for doc in docs for k in _keys(doc) if k.startswith("$")]
    return [f"inserted document has operator-like keys {bad}"] if bad else []


def _lint_aggregate(call: Call) -> list[str]:
    pipeline: Any = call.args[0]
    return [
        f"aggregate stage {name} is not allowed"
        for stage in pipeline
        for name in stage
        if name not in AGGREGATE_STAGES
    ]


def _lint_read(call: Call) -> list[str]:
    return _lint_filter(call.args[0]) if call.args else []


def _lint_bulk(call: Call) -> list[str]:
    from pymongo import InsertOne, UpdateOne

    problems = []
    requests: Any = call.args[0]
    for request in requests:
        if isinstance(request, UpdateOne):
            upsert = {"upsert": True} if request._upsert else {}
            problems += _lint_write(
                Call(call.collection, "update_one", (request._filter, request._doc), upsert)
            )
        elif isinstance(request, InsertOne):
            problems += _lint_insert(Call(call.collection, "insert_one", (request._doc,), {}))
        else:
            problems.append(f"bulk request {type(request).__name__} is not covered by the lint")
    return problems


LINTERS: dict[str, Callable[[Call], list[str]]] = {
    "bulk_write": _lint_bulk,
    "find_one_and_update": _lint_write,
    "update_one": _lint_write,
    "update_many": _lint_write,
    "insert_one": _lint_insert,
    "insert_many": _lint_insert,
    "aggregate": _lint_aggregate,
    "find_one": _lint_read,
    "find": _lint_read,
    "count_documents": _lint_read,
    "delete_one": _lint_read,
    "create_index": lambda call: [],
}


def lint(call: Call) -> list[str]:
    """Violations of real-server rules in one recorded call."""
    problems = [
        f"{node} is ignored by the mock: pass the time from Python"
        for node in _walk((call.args, call.kwargs))
        if isinstance(node, str) and any(s in node for s in FORBIDDEN_STRINGS)
    ]
    linter = LINTERS.get(call.method)
    if linter is None:
        return [*problems, f"method {call.method} is not covered by the lint"]
    return problems + linter(call)
