"""What error messages repeat of a caller's names and values: JSON's spelling, and never more than a little."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import SHOWN_CHARS, quoted, shown


@pytest.mark.parametrize(("value", "expected"), [
    (True, "true"), (False, "false"), (None, "null"), ("soon", '"soon"'), ("it's", '"it\'s"'), (1.5, "1.5"),
    (-7, "-7"), ([1, "a", None, [2.5]], '[1, "a", null, [2.5]]'), ({"a": 1}, "an object with 1 key"),
    ({"a": 1, "b": 2}, "an object with 2 keys"), ("line\nbreak", '"line\\nbreak"'),
    ("\u00e9t\u00e9", '"\u00e9t\u00e9"'),
])
def test_values_are_spelled_as_the_caller_wrote_them_in_json(value: Any, expected: str) -> None:
    assert shown(value) == expected


def test_a_long_string_shows_its_start_and_its_length() -> None:
    text = shown("k" * 1_000_000)
    assert text == '"' + "k" * SHOWN_CHARS + '..." (1,000,000 characters)'


def test_a_long_or_deep_list_shows_its_first_items_and_its_length() -> None:
    assert shown(list(range(100_000))).endswith(", ...] (100,000 items)")
    assert len(shown(list(range(100_000)))) < 2 * SHOWN_CHARS
    deep: Any = 1
    for _ in range(6):  # 8**6 = 262,144 leaves, six levels deep
        deep = [deep] * 8
    text = shown(deep)
    assert text.startswith("[[[...], [...],") and len(text) < 4 * SHOWN_CHARS


def test_a_huge_integer_is_described_not_printed() -> None:
    """``str`` of an integer past 4,300 digits raises ValueError (Python 3.11+). orjson refuses such numbers in
    a body, but a message must not depend on that to be writable at all."""
    assert shown(10**5000) == f"an integer of over {SHOWN_CHARS} digits"
    assert shown(-(10**5000)) == f"an integer of over {SHOWN_CHARS} digits"


def test_names_are_quoted_whole_when_short_and_cut_when_long() -> None:
    assert quoted("features") == "'features'"
    assert quoted("n" * SHOWN_CHARS) == "'" + "n" * SHOWN_CHARS + "'"
    assert quoted("n" * 20_000) == "'" + "n" * SHOWN_CHARS + "...' (20,000 characters)"
