"""docs/protocol.md holds exactly the message tables the code generates."""

from distbuild.protocol import PROTOCOL_VERSION
from distbuild.protocol.table import markdown
from tests.conftest import PROJECT

DOC = (PROJECT / "docs" / "protocol.md").read_text()


def test_message_tables_match_the_code():
    assert DOC.endswith(markdown()), "regenerate with: python -m distbuild.protocol.table"


def test_version_in_title_matches_code():
    assert DOC.startswith(f"# The distbuild protocol, version {PROTOCOL_VERSION}\n")
