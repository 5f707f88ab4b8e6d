"""Make mongomock usable with tens of thousands of documents (for `sweep_memory`).

mongomock answers every query by evaluating the filter on every document with a generic
interpreter (25-100 us a document for the sweep's filters), and a sorted, limited `find`
matches and copies every document before applying the limit. At 50,000 users a sweep
would take most of an hour, and the mock's own copies would dominate the memory
measured. `fast_mock(collection)` changes only how the mock computes its answers:

* filters made of `$and`, `$or`, equalities, `$lt/$lte/$gt/$gte/$ne/$in/$exists/$not` on
  scalar fields are compiled once into Python closures that decide as mongomock does
  (ordering only within one BSON type, a missing field matches `None`, equality by
  Python's `==`); anything else, or a document with an array or sub-document where a
  compared value is, goes to mongomock's own `filter_applies`;
* filters with an `_id` equality (or `_id: {$in: [...]}`, or an `$or` of such clauses)
  are answered from the mock's `_id`-keyed store;
* `find(..., sort=[ascending keys], limit=n)` keeps only the first `n` matches in sort
  order, never holding more than `n` documents, and copies only those.

`tests/test_bench.py` checks the answers against the mock's own.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from bson import ObjectId
from bson.int64 import Int64
from mongomock import filtering as _filtering
from mongomock import helpers as _helpers

Predicate = Callable[[Mapping[str, Any]], bool]

# mongomock is untyped: its helpers, as Any.
filter_applies: Any = _filtering.filter_applies
resolve_sort_key: Any = _filtering.resolve_sort_key
make_datetime_timezone_aware_in_document: Any = _helpers.make_datetime_timezone_aware_in_document
patch_datetime_awareness_in_document: Any = _helpers.patch_datetime_awareness_in_document

_KEY_TYPES = (str, int, ObjectId)
_MISSING = object()


class _Fallback(Exception):
    """The compiled filter cannot decide for this document: ask mongomock."""


class _Unsupported(Exception):
    """The filter uses something the compiler does not handle."""


def _kind(value: Any) -> str:
    """MongoDB's comparison type of a scalar (values of different kinds never compare)."""
    if value is None or value is _MISSING:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float | Int64):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dt.datetime):
        return "date"
    if isinstance(value, ObjectId):
        return "objectid"
    raise _Fallback


def _getter(path: str) -> Callable[[Mapping[str, Any]], Any]:
    """A function reading `path` from a document (_MISSING when absent)."""
    parts = path.split(".")

    def get(doc: Mapping[str, Any]) -> Any:
        value: Any = doc
        for part in parts:
            if isinstance(value, list):
                raise _Fallback  # array traversal: mongomock knows the rules
            if not isinstance(value, Mapping):
                return _MISSING
            value = value.get(part, _MISSING)
        if isinstance(value, list | dict):
            raise _Fallback
        return value

    if len(parts) > 1:
        return get

    def get_top(doc: Mapping[str, Any]) -> Any:
        value = doc.get(path, _MISSING)
        if isinstance(value, list | dict):
            raise _Fallback
        return value

    return get_top


def _equal(a: Any, b: Any) -> bool:
    """Equality as mongomock decides it (Python's `==`: `False == 0`, unlike a server)."""
    if b is None:
        return a is _MISSING or a is None
    if a is _MISSING or a is None:
        return False
    return bool(a == b)


_ORDER: dict[str, Callable[[Any, Any], Any]] = {
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
}


def _compile_field(path: str, cond: Any) -> Predicate:
    get = _getter(path)
    if not isinstance(cond, Mapping) or not any(str(k).startswith("$") for k in cond):
        if isinstance(cond, Mapping | list):
            raise _Unsupported(path)
        _kind(cond)  # only scalars we know
        return lambda doc: _equal(get(doc), cond)
    tests = [_compile_operator(path, get, op, arg) for op, arg in cond.items()]
    return lambda doc: all(t(doc) for t in tests)


def _compile_operator(path: str, get: Callable[[Any], Any], op: str, arg: Any) -> Predicate:
    if op in _ORDER:
        if arg is None or isinstance(arg, Mapping | list):
            raise _Unsupported(op)
        kind, compare = _kind(arg), _ORDER[op]

        def ordered(doc: Mapping[str, Any]) -> bool:
            value = get(doc)
            return value is not _MISSING and _kind(value) == kind and bool(compare(value, arg))

        return ordered
    if op == "$ne":
        if isinstance(arg, Mapping | list):
            raise _Unsupported(op)
        return lambda doc: not _equal(get(doc), arg)
    if op == "$in":
        if not isinstance(arg, list) or any(isinstance(v, Mapping | list) for v in arg):
            raise _Unsupported(op)
        return lambda doc: any(_equal(get(doc), v) for v in arg)
    if op == "$not":
        if not isinstance(arg, Mapping) or not all(str(k).startswith("$") for k in arg):
            raise _Unsupported(op)
        inner = _compile_field(path, arg)
        return lambda doc: not inner(doc)
    if op == "$exists":
        return lambda doc: (get(doc) is not _MISSING) == bool(arg)
    raise _Unsupported(op)


def compile_filter(spec: Mapping[str, Any]) -> Predicate | None:
    """A predicate equivalent to `filter_applies(spec, doc)`, or None if `spec` uses
    something this compiler does not handle."""
    try:
        tests = _compile(spec)
    except (_Unsupported, _Fallback):
        return None

    def predicate(doc: Mapping[str, Any]) -> bool:
        try:
            return tests(doc)
        except _Fallback:
            return bool(filter_applies(spec, doc))

    return predicate


def _junction(op: str, parts: list[Predicate]) -> Predicate:
    if op == "$and":
        return lambda doc: all(p(doc) for p in parts)
    return lambda doc: any(p(doc) for p in parts)


def _compile(spec: Any) -> Predicate:
    if not isinstance(spec, Mapping):
        raise _Unsupported("filter")
    tests: list[Predicate] = []
    for key, cond in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond:
                raise _Unsupported(key)
            tests.append(_junction(key, [_compile(c) for c in cond]))
        elif str(key).startswith("$"):
            raise _Unsupported(key)
        else:
            tests.append(_compile_field(str(key), cond))
    if len(tests) == 1:
        return tests[0]
    return lambda doc: all(t(doc) for t in tests)


def fast_mock(coll: Any) -> Any:
    """Patch one mongomock-motor collection object (see the module docstring).

    mongomock-motor hands out a new collection object on every `db[name]`: patch the
    object the code under test will use. Returns `coll`.
    """
    sync = coll.__dict__.get("_AsyncMongoMockCollection__collection")
    if sync is None:  # not the mongomock-motor we know: leave it alone
        return coll
    scan = sync._iter_documents
    find = sync.find
    store = sync._store

    def ids_of(filter_: Any) -> list[Any] | None:
        if not isinstance(filter_, dict) or "_id" not in filter_:
            return None
        wanted = filter_["_id"]
        if isinstance(wanted, _KEY_TYPES) and not isinstance(wanted, bool):
            return [wanted]
        if isinstance(wanted, dict) and set(wanted) == {"$in"}:
            values = wanted["$in"]
            if isinstance(values, list) and all(isinstance(v, _KEY_TYPES) for v in values):
                return values
        return None

    def by_id(filter_: Any) -> list[Any] | None:
        """The documents `filter_` matches, or None if it has no `_id` to look up."""
        if isinstance(filter_, dict) and set(filter_) == {"$or"} and filter_["$or"]:
            found: dict[Any, Any] = {}
            for clause in filter_["$or"]:
                docs = by_id(clause)
                if docs is None:
                    return None
                found.update((doc["_id"], doc) for doc in docs)
            return list(found.values())
        ids = ids_of(filter_)
        if ids is None:
            return None
        docs = [store[i] for i in dict.fromkeys(ids) if i in store]
        return [doc for doc in docs if filter_applies(filter_, doc)]

    def iter_documents(filter_: Any) -> Any:
        docs = by_id(filter_)
        if docs is not None:
            return iter(docs)
        predicate = compile_filter(filter_) if isinstance(filter_, Mapping) else None
        if predicate is None:
            return scan(filter_)
        return (doc for doc in store.documents if predicate(doc))

    def top_k_find(filter: Any = None, projection: Any = None, *args: Any, **kwargs: Any) -> Any:
        sort, limit = kwargs.get("sort"), kwargs.get("limit", 0)
        kwargs.pop("batch_size", None)  # how many documents per round trip: not an answer
        simple = not args and set(kwargs) <= {"sort", "limit"}
        if not (simple and sort and limit and all(d == 1 for _, d in sort)):
            return find(filter, projection, *args, **kwargs)
        keys = [k for k, _ in sort]
        spec = patch_datetime_awareness_in_document(filter or {})  # as the mock's Cursor does
        # The first `limit` matches in sort order, ties in store order (the mock's stable
        # sort gives the same); a document whose key cannot make the list is not matched.
        best: list[tuple[tuple[Any, ...], int, Any]] = []
        for i, doc in enumerate(iter_documents(spec)):
            key = tuple(resolve_sort_key(k, doc) for k in keys)
            if len(best) == limit and not key < best[-1][0]:
                continue
            bisect.insort(best, (key, i, doc))
            if len(best) > limit:
                best.pop()
        docs = [sync._copy_only_fields(doc, projection, dict) for _, _, doc in best]
        if sync.codec_options.tz_aware:
            docs = [make_datetime_timezone_aware_in_document(d) for d in docs]
        return iter(docs)

    sync._iter_documents = iter_documents
    sync.find = top_k_find
    return coll
