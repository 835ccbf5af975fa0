"""Bad definitions give one clear line naming the file, the line and the field."""

import re

import pytest

from distbuild.definitions import Definitions, DirectorySource, build_graph
from distbuild.errors import DefinitionsError
from tests.conftest import run_distbuild
from tests.defs_tree import BASE_FILES, write_tree

A = BASE_FILES["strata/base/a.morph"]
BASE = BASE_FILES["strata/base.morph"]
APPS = BASE_FILES["strata/apps.morph"]
SYSTEM = BASE_FILES["systems/s.morph"]

# (case id, files changed, expected "where", expected message pattern)
CASES = [
    ("yaml-syntax", {"strata/base/a.morph": "name: a\nkind: chunk\nbuild-commands: [make\n"},
     "strata/base/a.morph:4", r"YAML syntax error"),
    ("unknown-field-typo", {"strata/base/a.morph": A + "instal-commands: [x]\n"},
     "strata/base/a.morph:7", r"instal-commands: unknown field; did you mean 'install-commands'\?$"),
    ("unknown-spec-field", {"strata/base.morph": BASE.replace("  ref: master\n- name: b",
                                                              "  ref: master\n  rpeo: x\n- name: b")},
     "strata/base.morph:8", r"chunks\[0\]\.rpeo: unknown field; did you mean 'repo'\?$"),
    ("wrong-type-list", {"strata/base/a.morph": A.replace("build-commands:\n- make\n",
                                                          "build-commands: make\n")},
     "strata/base/a.morph:3", r"build-commands: must be a list of strings, not a string"),
    ("wrong-type-item", {"strata/base/a.morph": A.replace("- make\ninstall", "- [make]\ninstall")},
     "strata/base/a.morph:4", r"build-commands\[0\]: must be a string, not a list"),
    ("chunks-not-list", {"strata/apps.morph": "name: apps\nkind: stratum\nchunks: c\n"},
     "strata/apps.morph:3", r"chunks: must be a non-empty list of chunks"),
    ("missing-chunk-morph", {"strata/base/a.morph": None},
     "strata/base.morph:5", r"chunks\[0\]\.morph: strata/base/a\.morph does not exist"),
    ("missing-stratum-file", {"strata/apps.morph": None},
     "systems/s.morph:8", r"strata\[1\]\.morph: strata/apps\.morph does not exist"),
    ("missing-system-file", {"systems/s.morph": None},
     "systems/s.morph", r"no such file in"),
    ("unknown-build-system", {"strata/base.morph": BASE.replace("autotools", "autotool")},
     "strata/base.morph:11",
     r"chunks\[1\]\.build-system: unknown build-system 'autotool' \(known: autotools, manual\)"),
    ("unknown-build-system-in-chunk", {"strata/base/a.morph": A + "build-system: scons\n"},
     "strata/base/a.morph:7", r"build-system: unknown build-system 'scons'"),
    ("build-depends-no-sibling", {"strata/base.morph": BASE.replace("  - a\n", "  - z\n")},
     "strata/base.morph:13",
     r"chunks\[1\]\.build-depends\[0\]: chunk 'b' build-depends on 'z', which is not a chunk "
     r"of stratum 'base'"),
    ("chunk-cycle", {"strata/base.morph": BASE.replace(
        "  repo: upstream:a\n", "  repo: upstream:a\n  build-depends: [b]\n")},
     "strata/base.morph:", r"chunk build-depends form a cycle in stratum 'base': (a -> b -> a|b -> a -> b)"),
    ("stratum-cycle", {"strata/base.morph": BASE.replace(
        "kind: stratum\n", "kind: stratum\nbuild-depends:\n- morph: strata/apps.morph\n")},
     "strata/apps.morph:4",
     r"strata build-depends form a cycle: strata/base\.morph -> strata/apps\.morph -> "
     r"strata/base\.morph"),
    ("unsupported-version", {"VERSION": "version: 5\n"},
     "VERSION:1", r"version: definitions version 5 is not supported \(supported: 6, 7, 8\)"),
    ("version-not-number", {"VERSION": "version: eight\n"},
     "VERSION:1", r"version: must be a whole number"),
    ("missing-version", {"VERSION": None},
     "/VERSION", r"no VERSION file"),
    ("system-no-strata", {"systems/s.morph": "name: s\nkind: system\narch: x86_64\nstrata: []\n"},
     "systems/s.morph:4", r"strata: system 's' has no strata"),
    ("system-unknown-arch", {"systems/s.morph": SYSTEM.replace("x86_64", "x86-64")},
     "systems/s.morph:3", r"arch: unknown arch 'x86-64'"),
    ("v6-spec-needs-morph-or-build-system",
     {"VERSION": "version: 6\n", "strata/apps.morph": APPS.replace("  build-system: manual\n", "")},
     "strata/apps.morph:6", r"chunks\[0\]: chunk 'c' needs 'morph' or 'build-system'"),
    ("submodules-before-v8",
     {"VERSION": "version: 7\n",
      "strata/apps.morph": APPS + "  submodules:\n    lib:\n      url: upstream:lib\n"},
     "strata/apps.morph:10", r"submodules need definitions version 8 \(this tree is 7\)"),
    ("morph-and-build-system", {"strata/base.morph": BASE.replace(
        "  morph: strata/base/a.morph\n", "  morph: strata/base/a.morph\n  build-system: manual\n")},
     "strata/base.morph:6", r"chunk 'a' gives both 'morph' and 'build-system'"),
    ("unknown-build-mode", {"strata/apps.morph": APPS + "  build-mode: boostrap\n"},
     "strata/apps.morph:10", r"unknown build-mode 'boostrap' \(known: staging, bootstrap, test\)"),
    ("relative-prefix", {"strata/apps.morph": APPS + "  prefix: usr\n"},
     "strata/apps.morph:10", r"chunks\[0\]\.prefix: must be an absolute path, not 'usr'"),
    ("bad-split-regex", {"strata/base/a.morph": A + "products:\n- artifact: a-x\n  include: ['(usr']\n"},
     "strata/base/a.morph:9", r"products\[0\]\.include\[0\]: '\(usr' is not a valid regular expression"),
    ("kind-mismatch", {"systems/s.morph": SYSTEM.replace("morph: strata/apps.morph",
                                                         "morph: strata/base/a.morph")},
     "systems/s.morph:8", r"strata/base/a\.morph is a chunk, not a stratum"),
    ("max-jobs-not-number", {"strata/base/a.morph": A + "max-jobs: lots\n"},
     "strata/base/a.morph:7", r"max-jobs: must be a whole number of at least 1, not 'lots'"),
    ("duplicate-chunk", {"strata/base.morph": BASE.replace("- name: b\n", "- name: a\n")
                         .replace("  - a\n", "")},
     "strata/base.morph:8", r"chunk 'a' is listed twice in stratum 'base'"),
    ("missing-repo", {"strata/apps.morph": APPS.replace("  repo: upstream:c\n", "")},
     "strata/apps.morph:6", r"chunks\[0\]: required field 'repo' is missing"),
    ("missing-defaults-v7", {"VERSION": "version: 7\n", "DEFAULTS": None},
     "DEFAULTS", r"definitions version 7 needs a DEFAULTS file"),
    ("two-strata-one-name", {"strata/apps.morph": APPS.replace("name: apps", "name: base")},
     "systems/s.morph", r"two strata are named 'base': strata/base\.morph and strata/apps\.morph"),
    ("morphology-not-mapping", {"strata/base/a.morph": "- just\n- a list\n"},
     "strata/base/a.morph", r"a morphology must be a mapping, not a list"),
    ("missing-kind", {"strata/base/a.morph": "name: a\n"},
     "strata/base.morph:5", r"strata/base/a\.morph is a file with no kind, not a chunk"),
    ("stratum-listed-twice", {"systems/s.morph": SYSTEM + "- morph: strata/base.morph\n"},
     "systems/s.morph:9", r"strata\[2\]\.morph: strata/base\.morph is listed twice"),
]


@pytest.mark.parametrize(("files", "where", "message"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_definitions_error(tmp_path, files, where, message):
    write_tree(tmp_path, {**BASE_FILES, **files})
    with pytest.raises(DefinitionsError) as info:
        # Strict: unknown fields are errors too; everything else is an error either way.
        build_graph(Definitions(DirectorySource(tmp_path), strict=True), "systems/s.morph")
    err = info.value
    assert err.where and (err.where.endswith(where) or err.where.startswith(where)), (
        f"where={err.where!r}")
    assert re.search(message, str(err)), str(err)
    assert "\n" not in str(err)


def test_at_least_twenty_kinds():
    assert len(CASES) >= 20


def test_base_tree_is_valid(tmp_path):
    write_tree(tmp_path, BASE_FILES)
    graph = build_graph(Definitions(DirectorySource(tmp_path)), "systems/s.morph")
    assert graph.nodes["chunk:base/b"].depends == ("chunk:base/a",)
    assert graph.nodes["chunk:apps/c"].depends == ("stratum:base",)


def test_duplicate_deployment_in_cluster(tmp_path):
    write_tree(tmp_path, {**BASE_FILES, "clusters/c.morph": (
        "name: c\nkind: cluster\nsystems:\n"
        "- morph: systems/s.morph\n  deploy:\n    one: {type: tar, location: /tmp/x}\n"
        "  subsystems:\n  - morph: systems/s.morph\n    deploy:\n"
        "      one: {type: tar, location: /tmp/y}\n")})
    with pytest.raises(DefinitionsError, match=r"deployment 'one' is already defined") as info:
        Definitions(DirectorySource(tmp_path)).cluster("clusters/c.morph")
    assert info.value.where == "clusters/c.morph:10"


@pytest.mark.parametrize("case", ["unknown-field-typo", "missing-stratum-file", "chunk-cycle"])
def test_cli_prints_one_line_and_no_traceback(tmp_path, case):
    files = next(c[1] for c in CASES if c[0] == case)
    write_tree(tmp_path, {**BASE_FILES, **files})
    proc = run_distbuild("graph", "--offline", "--strict", "--definitions", str(tmp_path),
                         "systems/s.morph")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distbuild: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
