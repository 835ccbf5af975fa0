"""Definitions as real trees are written: unknown fields warn, duplicate build-depends are one."""

import json

import pytest

from distbuild.definitions import Definitions, DirectorySource, build_graph
from distbuild.errors import DefinitionsError
from tests.conftest import run_distbuild
from tests.defs_tree import BASE_FILES, write_tree

BASE = BASE_FILES["strata/base.morph"]
A = BASE_FILES["strata/base/a.morph"]
# The typo Baserock's definitions carried for years, and one in a chunk morphology.
TYPOS = {
    "strata/base.morph": BASE.replace("  ref: master\n- name: b",
                                      "  ref: master\n  unpretrify-ref: master\n- name: b"),
    "strata/base/a.morph": A + "instal-commands: [x]\n",
    # A second system using the same stratum: its files still warn once.
    "systems/t.morph": BASE_FILES["systems/s.morph"].replace("name: s\n", "name: t\n"),
}
WARNINGS = [
    "strata/base.morph:8: chunks[0].unpretrify-ref: unknown field; did you mean 'unpetrify-ref'?",
    "strata/base/a.morph:7: instal-commands: unknown field; did you mean 'install-commands'?",
]


def keys(graph):
    return {nid: n.cache_key for nid, n in graph.nodes.items()}


def test_unknown_fields_warn_once_and_stay_out_of_cache_keys(tmp_path):
    clean = build_graph(Definitions(DirectorySource(write_tree(tmp_path / "clean", BASE_FILES))),
                        "systems/s.morph")
    defs = Definitions(DirectorySource(write_tree(tmp_path / "typos", {**BASE_FILES, **TYPOS})))
    first = build_graph(defs, "systems/s.morph")
    build_graph(defs, "systems/t.morph")
    assert defs.warnings == WARNINGS
    assert keys(first) == keys(clean)


def test_strict_makes_an_unknown_field_an_error(tmp_path):
    write_tree(tmp_path, {**BASE_FILES, **TYPOS})
    with pytest.raises(DefinitionsError, match=r"unknown field; did you mean 'unpetrify-ref'"):
        build_graph(Definitions(DirectorySource(tmp_path), strict=True), "systems/s.morph")


def test_other_errors_stay_errors_when_not_strict(tmp_path):
    write_tree(tmp_path, {**BASE_FILES, "strata/base/a.morph": A + "max-jobs: lots\n"})
    with pytest.raises(DefinitionsError, match=r"max-jobs: must be a whole number"):
        build_graph(Definitions(DirectorySource(tmp_path)), "systems/s.morph")


def test_graph_command_prints_each_warning_once_and_goes_on(tmp_path):
    write_tree(tmp_path, {**BASE_FILES, **TYPOS})
    proc = run_distbuild("graph", "--offline", "--definitions", str(tmp_path), "systems/s.morph")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == WARNINGS
    assert "Build order:" in proc.stdout


@pytest.mark.parametrize("how", ["option", "setting"])
def test_graph_command_strict_by_option_or_setting(tmp_path, how):
    defs = write_tree(tmp_path / "defs", {**BASE_FILES, **TYPOS})
    settings = tmp_path / "settings.yaml"
    settings.write_text("strict_definitions: true\n")
    extra = ["--strict"] if how == "option" else ["--config", str(settings)]
    proc = run_distbuild("graph", "--offline", *extra, "--definitions", str(defs),
                         "systems/s.morph")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"distbuild: error: {WARNINGS[0]}"]
    assert proc.stdout == ""


def test_duplicate_build_depends_are_one_dependency(tmp_path):
    twice = {
        "strata/base.morph": BASE.replace("  - a\n", "  - a\n  - a\n"),
        "strata/apps.morph": BASE_FILES["strata/apps.morph"].replace(
            "- morph: strata/base.morph\n", "- morph: strata/base.morph\n" * 2),
    }
    clean = build_graph(Definitions(DirectorySource(write_tree(tmp_path / "clean", BASE_FILES))),
                        "systems/s.morph")
    defs = write_tree(tmp_path / "twice", {**BASE_FILES, **twice})
    graph = build_graph(Definitions(DirectorySource(defs)), "systems/s.morph")
    assert graph.nodes["chunk:base/b"].depends == ("chunk:base/a",)
    assert graph.nodes["chunk:apps/c"].depends == ("stratum:base",)
    assert graph.nodes["stratum:apps"].depends == ("chunk:apps/c", "stratum:base")
    assert keys(graph) == keys(clean)
    proc = run_distbuild("graph", "--offline", "--json", "--definitions", str(defs),
                         "systems/s.morph", check=True)
    nodes = {n["id"]: n for n in json.loads(proc.stdout)["nodes"]}
    assert nodes["chunk:base/b"]["depends"] == ["chunk:base/a"]
    assert nodes["chunk:apps/c"]["depends"] == ["stratum:base"]


def test_a_loaded_tree_is_freed_without_the_cyclic_collector(tmp_path):
    """A long-lived controller plans many trees: each must go when its plan is made,
    not wait (with the git objects it read) for the cyclic collector's rare full pass."""
    import gc
    import weakref

    write_tree(tmp_path, {**BASE_FILES, **TYPOS})
    gc.collect()
    gc.disable()
    try:
        defs = Definitions(DirectorySource(tmp_path))
        graph = build_graph(defs, "systems/s.morph")
        warnings, gone = defs.warnings, weakref.ref(defs)
        del defs
        assert gone() is None, "the definitions are only freed by a cyclic GC pass"
    finally:
        gc.enable()
    assert warnings == WARNINGS and graph.system.name == "s"
