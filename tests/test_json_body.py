"""cds_service.json_body: the structural scan clears a body only when it is within every limit."""

import json
import random

import pytest

from cds_service.json_body import within_limits

TRICKY = ['a', '', '[', ']', '{', '}', '[[[', ']]]', '},{', ',', ',,,', '"', '\\', '\\"', '\\\\', '\\\\"[',
          'é', '\u2028', '😀', 'x' * 30, '\n', '"]}', '\\u0022', '/']


def exact(value, level=1):
    """(depth, longest string or key in characters, longest list) by walking the parsed value."""
    depth, longest, entries = level, 0, 0
    children = []
    if isinstance(value, dict):
        longest = max((len(k) for k in value), default=0)
        children = list(value.values())
    elif isinstance(value, list):
        entries = len(value)
        children = value
    for child in children:
        if isinstance(child, dict | list):
            d, s, e = exact(child, level + 1)
            depth, longest, entries = max(depth, d), max(longest, s), max(entries, e)
        elif isinstance(child, str):
            longest = max(longest, len(child))
    return depth, longest, entries


def random_value(rng: random.Random, level: int):
    kind = rng.random() if level > 1 else rng.uniform(0.35, 1)  # a body is a container
    if level > 7 or kind < 0.35:
        return rng.choice([rng.choice(TRICKY) * rng.randint(1, 4), rng.randint(-5, 10**6), 1.5, True, None])
    if kind < 0.65:
        return [random_value(rng, level + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(TRICKY) * rng.randint(1, 3) + str(i): random_value(rng, level + 1)
            for i in range(rng.randint(0, 4))}


def texts(value):
    yield json.dumps(value).encode()
    yield json.dumps(value, ensure_ascii=False).encode()
    yield json.dumps(value, indent=2, ensure_ascii=False).encode()


@pytest.mark.parametrize("seed", range(20))
def test_the_scan_never_clears_a_body_that_breaks_a_limit(seed):
    rng = random.Random(seed)
    for _ in range(50):
        value = random_value(rng, 1)
        depth, longest, entries = exact(value)
        for raw in texts(value):
            for max_depth, max_string, max_entries in [(depth, 10**6, 10**6), (depth - 1, 10**6, 10**6),
                                                       (64, longest, 10**6), (64, max(longest - 1, 0), 10**6),
                                                       (64, 10**6, entries), (64, 10**6, max(entries - 1, 0))]:
                within = depth <= max_depth and longest <= max_string and entries <= max_entries
                cleared = within_limits(raw, max_depth, max_string, max_entries)
                assert within or not cleared, (raw, max_depth, max_string, max_entries)


@pytest.mark.parametrize("seed", range(10))
def test_the_scan_measures_depth_exactly(seed):
    rng = random.Random(seed)
    for _ in range(50):
        value = random_value(rng, 1)
        depth = exact(value)[0]
        for raw in texts(value):
            assert within_limits(raw, depth, 10**9, 10**9)
            assert not within_limits(raw, depth - 1, 10**9, 10**9)


def test_brackets_and_escaped_quotes_inside_strings_are_not_structure():
    raw = json.dumps({"a": "[[[[{{{{\\\"]]]]", "b": ["\\", '"[', "}"]}).encode()
    assert within_limits(raw, 2, 100, 100)
    assert not within_limits(raw, 1, 100, 100)


def test_a_string_is_measured_in_characters_not_bytes_or_escapes():
    for text in ("é" * 10, "\n" * 10, '"' * 10, "😀" * 10):
        raw = json.dumps({"note": text}, ensure_ascii=False).encode()
        assert within_limits(raw, 64, 10, 100) or len(raw) > 10  # may ask for the exact walk, never refuse
        assert not within_limits(raw, 64, 9, 100)


def test_a_long_list_is_seen_even_when_the_body_has_many_commas_elsewhere():
    raw = json.dumps({"entry": [{"a": 1, "b": 2}] * 30, "other": ["x"] * 5}).encode()
    assert within_limits(raw, 64, 100, 30)
    assert not within_limits(raw, 64, 100, 29)
