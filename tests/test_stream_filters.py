"""Lambda's event filter patterns on stream records: which records a mapping's function gets."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from fileproc.streams.filtering import compile_filters, decode_data, record_document
from fileproc.streams.sources import Record


def matches(pattern: dict[str, Any], document: dict[str, Any]) -> bool:
    return compile_filters([pattern]).matches(document)


def data(**fields: Any) -> dict[str, Any]:
    """A Kinesis-shaped document whose data is ``fields``."""
    return {"partitionKey": "k", "sequenceNumber": "1-0", "data": fields}


# --- every matcher, matching and not ---------------------------------------------------------------------------

@pytest.mark.parametrize(("matcher", "value", "expected"), [
    # exact values: equal, type and all
    ("shipped", "shipped", True),
    ("shipped", "Shipped", False),
    ("5", 5, False),
    (5, 5, True),
    (5, 5.0, True),
    (5, "5", False),
    (1, True, False),
    (True, 1, False),
    (True, True, True),
    (False, False, True),
    (None, None, True),
    (None, "null", False),
    ("", "", True),
    ("", None, False),
    # prefix, suffix, and their ignore-case forms
    ({"prefix": "us-"}, "us-east-1", True),
    ({"prefix": "us-"}, "eu-west-1", False),
    ({"prefix": "1"}, 12, False),
    ({"prefix": {"equals-ignore-case": "EVENTB"}}, "EventBridge", True),
    ({"prefix": {"equals-ignore-case": "EVENTB"}}, "Lambda", False),
    ({"suffix": ".png"}, "cat.png", True),
    ({"suffix": ".png"}, "cat.PNG", False),
    ({"suffix": {"equals-ignore-case": ".png"}}, "cat.PNG", True),
    ({"suffix": ".png"}, "cat.png.txt", False),
    # equals-ignore-case
    ({"equals-ignore-case": "alice"}, "ALICE", True),
    ({"equals-ignore-case": "alice"}, "alicia", False),
    ({"equals-ignore-case": "alice"}, None, False),
    # anything-but: a list, one value, numbers, and the operator forms
    ({"anything-but": ["Raining", "Snowing"]}, "Sunny", True),
    ({"anything-but": ["Raining", "Snowing"]}, "Snowing", False),
    ({"anything-but": "Raining"}, "Raining", False),
    ({"anything-but": "Raining"}, "raining", True),
    ({"anything-but": [100, 200]}, 150, True),
    ({"anything-but": [100, 200]}, 200, False),
    ({"anything-but": ["x"]}, None, True),
    ({"anything-but": ["x"]}, True, True),
    ({"anything-but": [1]}, True, True),
    ({"anything-but": {"prefix": "us-"}}, "eu-west-1", True),
    ({"anything-but": {"prefix": "us-"}}, "us-east-1", False),
    ({"anything-but": {"suffix": ".png"}}, "cat.jpg", True),
    ({"anything-but": {"suffix": ".png"}}, "cat.png", False),
    ({"anything-but": {"equals-ignore-case": ["initializing", "stopped"]}}, "INITIALIZING", False),
    ({"anything-but": {"equals-ignore-case": ["initializing", "stopped"]}}, "Stopped", False),
    ({"anything-but": {"wildcard": ["*.png", "*.jpg"]}}, "a.jpg", False),
    ({"anything-but": {"wildcard": ["*.png", "*.jpg"]}}, "a.gif", True),
    ({"anything-but": {"equals-ignore-case": "initializing"}}, "running", True),
    ({"anything-but": {"wildcard": "*/lib/*"}}, "/usr/lib/x", False),
    ({"anything-but": {"wildcard": "*/lib/*"}}, "/usr/bin/x", True),
    # numeric: equality, one bound, ranges; never on strings or booleans
    ({"numeric": ["=", 100]}, 100, True),
    ({"numeric": ["=", 100]}, 100.0, True),
    ({"numeric": ["=", 100]}, 101, False),
    ({"numeric": ["=", 100]}, "100", False),
    ({"numeric": [">", 0]}, 0, False),
    ({"numeric": [">=", 0]}, 0, True),
    ({"numeric": ["<", 0]}, -0.5, True),
    ({"numeric": ["<=", 0]}, 0.001, False),
    ({"numeric": [">", 10, "<=", 20]}, 20, True),
    ({"numeric": [">", 10, "<=", 20]}, 10, False),
    ({"numeric": [">", 10, "<=", 20]}, 20.5, False),
    ({"numeric": ["<", 20, ">=", 10]}, 10, True),
    ({"numeric": [">", 0]}, True, False),
    ({"numeric": [">", 0, "<", 5]}, True, False),
    # exists: any leaf value, null included
    ({"exists": True}, "x", True),
    ({"exists": True}, None, True),
    ({"exists": True}, 0, True),
    ({"exists": False}, "x", False),
    ({"exists": False}, None, False),
    # cidr
    ({"cidr": "10.0.0.0/24"}, "10.0.0.17", True),
    ({"cidr": "10.0.0.0/24"}, "10.0.1.17", False),
    ({"cidr": "10.0.0.0/24"}, "not an address", False),
    ({"cidr": "10.0.0.0/24"}, 167772161, False),
    ({"cidr": "2001:db8::/32"}, "2001:db8::1", True),
    ({"cidr": "2001:db8::/32"}, "10.0.0.1", False),
    # wildcard
    ({"wildcard": "*.png"}, "dir/cat.png", True),
    ({"wildcard": "*.png"}, "cat.png.bak", False),
    ({"wildcard": "us-*-1"}, "us-east-1", True),
    ({"wildcard": "us-*-1"}, "us-east-2", False),
    ({"wildcard": "a*b*c"}, "abc", True),
    ({"wildcard": "a*b*c"}, "axxbyyc\nz", False),
    ({"wildcard": "a*c"}, "a\nb\nc", True),
    ({"wildcard": r"a\*b"}, "a*b", True),
    ({"wildcard": r"a\*b"}, "axb", False),
    ({"wildcard": "a.c"}, "abc", False),
])
def test_each_matcher(matcher: Any, value: Any, expected: bool) -> None:
    assert matches({"data": {"field": [matcher]}}, data(field=value)) is expected


@pytest.mark.parametrize("matcher", [
    "x", None, {"prefix": ""}, {"anything-but": ["x"]}, {"numeric": [">", 0]}, {"exists": True},
    {"equals-ignore-case": "x"}, {"cidr": "0.0.0.0/0"}, {"wildcard": "*"},
])
def test_only_exists_false_matches_a_missing_field(matcher: Any) -> None:
    assert matches({"data": {"field": [matcher]}}, data(other=1)) is False
    assert matches({"data": {"field": [matcher, {"exists": False}]}}, data(other=1)) is True


def test_a_list_of_matchers_is_an_or_and_fields_are_an_and() -> None:
    pattern = {"data": {"type": ["Credit", "Debit"], "amount": [{"numeric": [">", 100]}]}}
    assert matches(pattern, data(type="Credit", amount=150))
    assert matches(pattern, data(type="Debit", amount=150))
    assert not matches(pattern, data(type="Cash", amount=150))
    assert not matches(pattern, data(type="Debit", amount=50))
    assert not matches(pattern, data(type="Debit"))


# --- structure: nested objects, arrays, $or, several patterns ------------------------------------------------

def test_nested_fields() -> None:
    pattern = {"data": {"session": {"device": {"os": [{"prefix": "And"}]}, "ms": [{"numeric": ["<", 100]}]}}}
    assert matches(pattern, data(session={"device": {"os": "Android 14"}, "ms": 20}))
    assert not matches(pattern, data(session={"device": {"os": "iOS 18"}, "ms": 20}))
    assert not matches(pattern, data(session={"device": {"os": "Android 14"}, "ms": 200}))
    assert not matches(pattern, data(session={"ms": 20}))
    assert not matches(pattern, data(session="Android"))


def test_a_pattern_looking_inside_a_value_that_is_not_an_object_does_not_match() -> None:
    inside = {"data": {"a": {"b": [{"exists": False}]}}}
    assert not matches(inside, data(a="text"))
    assert not matches(inside, data(a=[1, 2]))
    assert matches(inside, data(a=[]))  # nothing there: as if a were missing
    assert matches(inside, data(a=[{"c": 1}]))


def test_exists_false_holds_when_a_parent_is_missing() -> None:
    pattern = {"data": {"customer": {"coupon": [{"exists": False}]}}}
    assert matches(pattern, data(customer={"id": 1}))
    assert matches(pattern, data(other=1))
    assert not matches(pattern, data(customer={"coupon": "X"}))


def test_exists_sees_only_leaves() -> None:
    assert not matches({"data": {"c": [{"exists": True}]}}, data(c={"inner": 1}))
    assert matches({"data": {"c": [{"exists": False}]}}, data(c={"inner": 1}))
    assert not matches({"data": {"c": ["x", {"prefix": ""}]}}, data(c={"inner": 1}))


def test_an_array_matches_if_any_element_does() -> None:
    pattern = {"data": {"tags": ["sale"]}}
    assert matches(pattern, data(tags=["new", "sale"]))
    assert matches(pattern, data(tags=[["new"], ["sale"]]))
    assert not matches(pattern, data(tags=["new", "used"]))
    assert matches({"data": {"scores": [{"numeric": [">", 90]}]}}, data(scores=[12, 95]))
    assert not matches({"data": {"scores": [{"numeric": [">", 90]}]}}, data(scores=[12, 85]))
    # anything-but is per element too: one element other than "sale" is enough
    assert matches({"data": {"tags": [{"anything-but": "sale"}]}}, data(tags=["sale", "new"]))
    assert not matches({"data": {"tags": [{"anything-but": "sale"}]}}, data(tags=["sale"]))


def test_an_empty_array_is_as_good_as_no_field() -> None:
    assert matches({"data": {"tags": [{"exists": False}]}}, data(tags=[]))
    assert not matches({"data": {"tags": [{"exists": True}]}}, data(tags=[]))
    assert matches({"data": {"tags": [{"exists": True}]}}, data(tags=["x"]))
    assert not matches({"data": {"tags": [{"exists": False}]}}, data(tags=["x"]))


def test_an_array_of_objects_matches_each_object_whole() -> None:
    pattern = {"data": {"items": {"sku": ["A1"], "qty": [{"numeric": [">=", 2]}]}}}
    assert matches(pattern, data(items=[{"sku": "B2", "qty": 1}, {"sku": "A1", "qty": 3}]))
    # one element with the sku, another with the quantity: no single item matches
    assert not matches(pattern, data(items=[{"sku": "A1", "qty": 1}, {"sku": "B2", "qty": 3}]))


def test_or_across_fields() -> None:
    pattern = {"data": {"$or": [{"location": ["New York"]}, {"day": ["Monday"]}]}}
    assert matches(pattern, data(location="New York", day="Sunday"))
    assert matches(pattern, data(location="Boston", day="Monday"))
    assert not matches(pattern, data(location="Boston", day="Sunday"))


def test_or_is_anded_with_the_fields_beside_it() -> None:
    pattern = {"data": {"source": ["shop"], "$or": [{"total": [{"numeric": [">", 100]}]}, {"vip": [True]}]}}
    assert matches(pattern, data(source="shop", total=150))
    assert matches(pattern, data(source="shop", total=5, vip=True))
    assert not matches(pattern, data(source="shop", total=5, vip=False))
    assert not matches(pattern, data(source="blog", total=150))


def test_or_at_the_top_level_and_nested_within_an_alternative() -> None:
    pattern = {"$or": [{"partitionKey": ["vip"]},
                       {"data": {"$or": [{"a": [1]}, {"b": {"c": [2]}}]}}]}
    assert matches(pattern, {"partitionKey": "vip", "data": {}})
    assert matches(pattern, {"partitionKey": "k", "data": {"a": 1}})
    assert matches(pattern, {"partitionKey": "k", "data": {"b": {"c": 2}}})
    assert not matches(pattern, {"partitionKey": "k", "data": {"a": 2, "b": {"c": 1}}})


def test_several_patterns_are_ored() -> None:
    both = compile_filters([{"data": {"kind": ["click"]}}, {"data": {"ms": [{"numeric": [">", 1000]}]}}])
    assert both.matches(data(kind="click", ms=1))
    assert both.matches(data(kind="view", ms=5000))
    assert not both.matches(data(kind="view", ms=1))


def test_no_patterns_match_everything() -> None:
    none = compile_filters([])
    assert none.matches_all
    assert none.matches({})
    assert none.matches(data(anything=1))
    assert not compile_filters([{"data": {"a": [1]}}]).matches_all


def test_a_pattern_may_be_lambdas_json_text() -> None:
    text = '{ "value" : { "device_ID" : [ { "prefix": "AB" } ] } }'  # Lambda's Kafka example, as its Pattern
    f = compile_filters([text])
    assert f.matches({"value": {"device_ID": "AB1234"}})
    assert not f.matches({"value": {"device_ID": "CD1234"}})


# --- bad patterns are refused with the place and the reason -------------------------------------------------

@pytest.mark.parametrize(("pattern", "message"), [
    ({"data": {"status": "shipped"}}, 'filter 1 at data.status: expected a list of matchers (such as ["shipped"])'),
    ({"data": {"n": 5}}, "filter 1 at data.n: expected a list of matchers"),
    ({"data": {"status": []}}, "filter 1 at data.status: an empty list of matchers matches nothing"),
    ({"data": {"s": [{"begins-with": "a"}]}}, "filter 1 at data.s: unknown matcher 'begins-with' (known: prefix"),
    ({"data": {"s": [{"prefix": "a", "suffix": "b"}]}}, "filter 1 at data.s: a matcher object has exactly one"),
    ({"data": {"s": [["a"]]}}, 'filter 1 at data.s: a matcher is a string, number, true/false, null or an object'),
    ({"data": {"s": [{"prefix": 5}]}}, "filter 1 at data.s: prefix: takes a string, got 5"),
    ({"data": {"s": [{"suffix": None}]}}, "filter 1 at data.s: suffix: takes a string, got null"),
    ({"data": {"s": [{"equals-ignore-case": ["a"]}]}}, "filter 1 at data.s: equals-ignore-case: takes a string"),
    ({"data": {"s": [{"exists": "yes"}]}}, 'filter 1 at data.s: exists takes true or false, got "yes"'),
    ({"data": {"n": [{"numeric": [">", "5"]}]}}, 'filter 1 at data.n: numeric: > compares with a number, got "5"'),
    ({"data": {"n": [{"numeric": ["!=", 5]}]}}, 'filter 1 at data.n: numeric: unknown comparison "!="'),
    ({"data": {"n": [{"numeric": [">", 5, "<"]}]}}, "filter 1 at data.n: numeric: use"),
    ({"data": {"n": [{"numeric": 5}]}}, "filter 1 at data.n: numeric: use"),
    ({"data": {"n": [{"numeric": [">", 1, ">", 2]}]}}, "filter 1 at data.n: numeric: a range is one lower bound"),
    ({"data": {"n": [{"numeric": ["=", 1, "<", 2]}]}}, "filter 1 at data.n: numeric: a range is one lower bound"),
    ({"data": {"s": [{"anything-but": []}]}}, "filter 1 at data.s: anything-but: needs at least one value"),
    ({"data": {"s": [{"anything-but": ["a", 1]}]}}, "anything-but: takes strings or numbers, not both"),
    ({"data": {"s": [{"anything-but": [None]}]}}, "anything-but: takes strings or numbers, got null"),
    ({"data": {"s": [{"anything-but": {"numeric": [">", 1]}}]}}, "anything-but: takes values, or one of prefix"),
    ({"data": {"s": [{"anything-but": {"prefix": 1}}]}}, "data.s: anything-but: prefix: takes a string, got 1"),
    ({"data": {"s": [{"cidr": "10.0.0.0/99"}]}}, "filter 1 at data.s: cidr: not a network such as 10.0.0.0/24"),
    ({"data": {"s": [{"wildcard": "a**b"}]}}, "filter 1 at data.s: wildcard: consecutive wildcards (**)"),
    ({"data": {"s": [{"wildcard": r"a\b"}]}}, "filter 1 at data.s: wildcard: a backslash escapes only"),
    ({"data": {"$or": {"a": [1]}}}, "filter 1 at data.$or: $or takes a list of patterns"),
    ({"$or": [{"a": [1]}, ["b"]]}, "filter 1 at $or: each alternative of $or is an object"),
    ({"$or": [{"a": [1]}, {"b": "x"}]}, "filter 1 at b: expected a list of matchers"),
    ({}, "filter 1: an empty pattern tests nothing"),
    ({"data": {}}, "filter 1 at data: an empty pattern tests nothing"),
])
def test_a_bad_pattern_is_refused_naming_where(pattern: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        compile_filters([pattern])
    assert message in str(caught.value)


def test_the_bad_filter_is_named_by_its_number() -> None:
    with pytest.raises(ValueError, match=r"^filter 3 at value\.n: numeric: "):
        compile_filters([{"value": {"n": [1]}}, {"value": {"n": [2]}}, {"value": {"n": [{"numeric": [1]}]}}])
    with pytest.raises(ValueError, match=r"^filter 2: a pattern is a JSON object of fields, got \[1\]"):
        compile_filters([{"value": {"n": [1]}}, [1]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"^filter 1: not JSON: "):
        compile_filters(["{value: 1}"])


# --- the documents patterns see: Kinesis-shaped and Kafka -----------------------------------------------------

RECORD = Record(partition="3", position="17", data=b'{"kind": "click", "ms": 42}', key=b"user-1",
                timestamp=1545084650.987, headers=(("type", b"order"), ("trace", b"a"), ("trace", b"b")))


@pytest.mark.parametrize("engine", ["redis", "nats", "embedded"])
def test_a_kinesis_shaped_document(engine: str) -> None:
    assert record_document(RECORD, engine) == {
        "partitionKey": "user-1", "sequenceNumber": "17", "approximateArrivalTimestamp": 1545084650.987,
        "data": {"kind": "click", "ms": 42},
    }


def test_a_kinesis_record_without_a_key_has_its_partition_as_key() -> None:
    record = Record(partition="shard-0", position="1-0", data=b"{}")
    assert record_document(record, "redis")["partitionKey"] == "shard-0"


def test_a_kafka_document() -> None:
    assert record_document(RECORD, "kafka", topic="clicks") == {
        "topic": "clicks", "partition": 3, "offset": 17, "timestamp": 1545084650987,
        "timestampType": "CREATE_TIME", "key": "user-1", "value": {"kind": "click", "ms": 42},
        "headers": {"type": "order", "trace": ["a", "b"]},
    }
    bare = record_document(Record(partition="0", position="5", data=b"plain"), "kafka")
    assert "topic" not in bare
    assert bare["key"] is None and bare["value"] == "plain" and bare["headers"] == {}


def test_kafka_patterns_refer_to_value_kinesis_patterns_to_data() -> None:
    on_value = compile_filters([{"value": {"kind": ["click"]}, "partition": [3]}])
    on_data = compile_filters([{"data": {"kind": ["click"]}, "partitionKey": [{"prefix": "user-"}]}])
    kafka, kinesis = record_document(RECORD, "kafka"), record_document(RECORD, "nats")
    assert on_value.matches(kafka) and not on_value.matches(kinesis)
    assert on_data.matches(kinesis) and not on_data.matches(kafka)
    headers = compile_filters([{"headers": {"type": ["order"], "trace": ["b"]}}])
    assert headers.matches(kafka)
    assert not compile_filters([{"headers": {"type": ["refund"]}}]).matches(kafka)


def test_an_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown stream engine 'sqs'"):
        record_document(RECORD, "sqs")


# --- data that is not JSON ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "decoded"), [
    (b'{"a": [1, 2.5, null, true]}', {"a": [1, 2.5, None, True]}),
    (b"  [1]\n", [1]),
    (b'"text"', "text"),
    (b"42", 42),
    (b"ERROR disk full", "ERROR disk full"),
    (b'{"a": 1', '{"a": 1'),
    (b"NaN", "NaN"),
    (b"", ""),
    (b"\xff\xfeok", "\ufffd\ufffdok"),
    (b"[" * 100_000, "[" * 100_000),
])
def test_data_is_json_or_its_text(raw: bytes, decoded: Any) -> None:
    assert decode_data(raw) == decoded


def test_non_json_data_matches_only_patterns_not_looking_inside_it() -> None:
    record = Record(partition="0", position="9", data=b"ERROR disk full", key=b"host-1")
    document = record_document(record, "redis")
    assert document["data"] == "ERROR disk full"
    assert not compile_filters([{"data": {"level": ["ERROR"]}}]).matches(document)
    assert not compile_filters([{"data": {"level": [{"exists": False}]}}]).matches(document)
    assert compile_filters([{"partitionKey": ["host-1"]}]).matches(document)
    assert compile_filters([{"data": [{"prefix": "ERROR"}]}]).matches(document)
    kafka = record_document(record, "kafka")
    assert not compile_filters([{"value": {"level": ["ERROR"]}}]).matches(kafka)
    assert compile_filters([{"key": ["host-1"]}]).matches(kafka)


# --- speed ------------------------------------------------------------------------------------------------------

def test_filtering_keeps_up_with_a_stream() -> None:
    """Document and match on every record: far above the 50,000 records/s a worker must reach end to end."""
    records = [Record(partition="0", position=str(i), key=b"k",
                      data=json.dumps({"kind": ("click", "view", "scroll")[i % 3], "ms": i % 300,
                                       "page": f"/p/{i % 100}"}).encode())
               for i in range(20_000)]
    f = compile_filters([{"data": {"kind": ["click", "view"], "ms": [{"numeric": [">=", 10, "<", 200]}],
                                   "page": [{"prefix": "/p/1"}]}}])
    expected = sum(1 for i in range(20_000)
                   if i % 3 != 2 and 10 <= i % 300 < 200 and str(i % 100).startswith("1"))
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        matched = sum(1 for record in records if f.matches(record_document(record, "redis")))
        best = max(best, len(records) / (time.perf_counter() - started))
        assert matched == expected
    assert best > 50_000, f"{best:,.0f} records/s"
