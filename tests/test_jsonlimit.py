"""The JSON nesting bound: judged on structure, never on brackets inside strings."""

import json

import pytest

from distbuild import jsonlimit


def nested(depth: int) -> str:
    """Lists and objects alternating, `depth` levels deep."""
    text = "1"
    for level in range(depth):
        text = f"[{text}]" if level % 2 else f'{{"a": {text}}}'
    return text


@pytest.mark.parametrize("depth", [1, 63, 64])
def test_a_document_at_the_limit_parses(depth):
    assert json.loads(nested(depth)) == jsonlimit.loads(nested(depth))


@pytest.mark.parametrize("depth", [65, 66, 200])
def test_a_document_past_the_limit_is_refused(depth):
    with pytest.raises(jsonlimit.TooDeep, match="deeper than 64 levels"):
        jsonlimit.loads(nested(depth))


def test_brackets_and_escaped_quotes_inside_strings_do_not_count():
    tricky = ["[" * 100, '\\"' + "{" * 80 + '"', "\\\\", '"]]]"']
    doc = json.dumps({"strings": tricky, "deep": json.loads(nested(60))})
    assert jsonlimit.loads(doc)["strings"] == tricky
    shallow_but_noisy = json.dumps([["]" * 90 + '"\\']] * 40)
    assert jsonlimit.loads(shallow_but_noisy)[0][0].startswith("]")


def test_nesting_hidden_among_noisy_strings_is_still_found():
    doc = "[" * 70 + json.dumps("]" * 200) + "]" * 70
    with pytest.raises(jsonlimit.TooDeep):
        jsonlimit.loads(doc)
