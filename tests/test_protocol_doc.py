"""docs/protocol.md lists every message with exactly the fields the code defines."""

import dataclasses
import re

from distbuild.protocol.messages import MESSAGES
from tests.conftest import PROJECT

DOC = (PROJECT / "docs" / "protocol.md").read_text()


def test_every_message_and_field_is_documented():
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z-]+)` \| [a-z]+ \| (.*?) \|",
                                                        DOC, re.M)}
    assert set(rows) == set(MESSAGES)
    for name, cls in MESSAGES.items():
        documented = set(re.findall(r"`([a-z_]+)`\??:", rows[name]))
        assert documented == {f.name for f in dataclasses.fields(cls)}, name


def test_version_in_title_matches_code():
    from distbuild.protocol import PROTOCOL_VERSION
    assert DOC.startswith(f"# The distbuild protocol, version {PROTOCOL_VERSION}\n")
