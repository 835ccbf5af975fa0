"""Definitions semantics: versions, DEFAULTS, commands, split rules, aliases, git trees."""

import json
import subprocess

import pytest

from distbuild.definitions import (
    Aliases,
    Definitions,
    DirectorySource,
    GitSource,
    build_graph,
    split_artifact,
)
from distbuild.errors import ConfigError, DefinitionsError
from tests.conftest import MORPHS, run_distbuild
from tests.defs_tree import BASE_FILES, write_tree


def graph_of(tmp_path, **changes):
    write_tree(tmp_path, {**BASE_FILES, **changes})
    return build_graph(Definitions(DirectorySource(tmp_path)), "systems/s.morph")


def test_chunk_commands_replace_build_system_lists_and_pre_post_wrap_them(tmp_path):
    graph = graph_of(tmp_path, **{"strata/base/a.morph": (
        "name: a\nkind: chunk\nbuild-system: autotools\n"
        "pre-configure-commands: [./prep]\nbuild-commands: [make all]\n"
        "post-install-commands: [rm -rf \"$DESTDIR\"/share/info]\n")})
    steps = dict(graph.nodes["chunk:base/a"].commands)
    assert list(steps) == ["pre-configure", "configure", "build", "install", "post-install"]
    assert steps["configure"] == ('./configure --prefix="$PREFIX"',)  # from DEFAULTS
    assert steps["build"] == ("make all",)  # the chunk's own list replaces autotools' make
    assert steps["install"] == ('make DESTDIR="$DESTDIR" install',)


def test_spec_build_system_without_morph(tmp_path):
    b = graph_of(tmp_path).nodes["chunk:base/b"]
    assert b.build_system == "autotools"
    assert dict(b.commands)["build"] == ("make",)
    assert b.prefix == "/usr" and b.build_mode == "staging"


def test_version_6_uses_built_in_defaults(tmp_path):
    graph = graph_of(tmp_path, VERSION="version: 6\n", DEFAULTS=None)
    b = graph.nodes["chunk:base/b"]
    # Version 6's autotools: no bootstrap checks, no --sysconfdir.
    configure = dict(b.commands)["configure"]
    assert configure[-1] == './configure --prefix="$PREFIX"'
    assert "bootstrap" not in configure[0]
    assert b.artifact_names == ("b-bins", "b-libs", "b-devel", "b-doc", "b-locale", "b-misc")


def test_version_6_has_no_python3_distutils(tmp_path):
    stratum = BASE_FILES["strata/apps.morph"].replace("build-system: manual",
                                                      "build-system: python3-distutils")
    with pytest.raises(DefinitionsError, match="unknown build-system 'python3-distutils'"):
        graph_of(tmp_path, VERSION="version: 6\n", DEFAULTS=None,
                 **{"strata/apps.morph": stratum})


def test_version_7_and_8_read_defaults(tmp_path):
    for version in (7, 8):
        b = graph_of(tmp_path, VERSION=f"version: {version}\n").nodes["chunk:base/b"]
        assert dict(b.commands)["configure"] == ('./configure --prefix="$PREFIX"',)


def test_products_replace_default_rule_of_same_name_and_come_first(tmp_path):
    a_morph = BASE_FILES["strata/base/a.morph"] + (
        "products:\n- artifact: a-devel\n  include: [.*]\n- artifact: a-extra\n  include: [opt/.*]\n")
    a = graph_of(tmp_path, **{"strata/base/a.morph": a_morph}).nodes["chunk:base/a"]
    assert a.artifact_names == ("a-devel", "a-extra", "a-bins", "a-libs", "a-doc", "a-locale",
                                "a-misc")
    assert split_artifact("usr/bin/a", a.split_rules) == "a-devel"  # first match wins


def test_default_split_rules_place_files(tmp_path):
    rules = graph_of(tmp_path).nodes["chunk:base/a"].split_rules
    assert split_artifact("usr/bin/hello", rules) == "a-bins"
    assert split_artifact("usr/lib/libgreet.so.1", rules) == "a-libs"
    assert split_artifact("usr/include/greet.h", rules) == "a-devel"
    assert split_artifact("usr/share/man/man1/hello.1", rules) == "a-doc"
    assert split_artifact("etc/motd", rules) == "a-misc"


def test_stratum_rules_and_system_artifact_names(tmp_path):
    graph = graph_of(tmp_path)
    base = graph.nodes["stratum:base"]
    assert base.artifact_names == ("base-devel", "base-runtime")
    assert split_artifact("a-devel", base.split_rules) == "base-devel"
    assert split_artifact("a-bins", base.split_rules) == "base-runtime"
    assert graph.system.artifact_names == ("s-rootfs",)
    assert graph.system.artifact_filenames() == (f"{graph.system.cache_key}.system.s-rootfs",)


def test_arch_is_part_of_every_key(tmp_path):
    one = graph_of(tmp_path)
    other = graph_of(tmp_path, **{"systems/s.morph": BASE_FILES["systems/s.morph"].replace(
        "x86_64", "armv7lhf")})
    assert all(one.nodes[n].cache_key != other.nodes[n].cache_key
               for n in one.nodes if not n.startswith("system:"))


def test_aliases():
    aliases = Aliases.from_config("git://127.0.0.1:9418/", ["mine=ssh://git@127.0.0.1/%s.git#x"])
    assert aliases.resolve("upstream:binutils") == "git://127.0.0.1:9418/delta/binutils"
    assert aliases.resolve("baserock:baserock/morph") == (
        "git://127.0.0.1:9418/baserock/baserock/morph")
    assert aliases.resolve("mine:proj") == "ssh://git@127.0.0.1/proj.git"
    assert aliases.resolve("git://127.0.0.2/x") == "git://127.0.0.2/x"
    assert aliases.resolve("plain-name") == "git://127.0.0.1:9418/plain-name"
    with pytest.raises(ConfigError, match="repo alias 'broken' is not"):
        Aliases.from_config(None, ["broken"])


def test_trove_url_from_config_file(tmp_path):
    write_tree(tmp_path / "defs", BASE_FILES)
    conf = tmp_path / "network.yaml"
    conf.write_text("trove_git_url: git://127.0.0.5:9999\n")
    proc = run_distbuild("graph", "--offline", "--json", "--definitions", str(tmp_path / "defs"),
                         "systems/s.morph", env={"DISTBUILD_CONFIG": str(conf)}, check=True)
    repos = {n["repo"] for n in json.loads(proc.stdout)["nodes"] if n["repo"]}
    assert repos == {f"git://127.0.0.5:9999/delta/{c}" for c in "abc"}


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@127.0.0.1",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@127.0.0.1",
                        "HOME": str(cwd), "PATH": "/usr/bin:/bin"})


def test_git_commit_source_reads_without_checkout(tmp_path):
    write_tree(tmp_path, BASE_FILES)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "one")
    first = build_graph(Definitions(DirectorySource(tmp_path)), "systems/s.morph")
    # Change the working tree: the commit still reads as it was committed.
    write_tree(tmp_path, {"strata/base/a.morph": BASE_FILES["strata/base/a.morph"] + "max-jobs: 1\n"})
    from_git = build_graph(Definitions(GitSource(tmp_path, "HEAD")), "systems/s.morph")
    from_dir = build_graph(Definitions(DirectorySource(tmp_path)), "systems/s.morph")
    assert from_git.system.cache_key == first.system.cache_key != from_dir.system.cache_key
    with pytest.raises(DefinitionsError, match="no commit 'nope'"):
        GitSource(tmp_path, "nope")
    proc = run_distbuild("graph", "--offline", "--ref", "HEAD", "--json", "--definitions",
                         str(tmp_path), "systems/s.morph", check=True)
    assert json.loads(proc.stdout)["nodes"][-1]["cache_key"] == first.system.cache_key


def test_git_source_reads_files_only(tmp_path):
    write_tree(tmp_path, BASE_FILES)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "one")
    source = GitSource(tmp_path, "HEAD")
    for path in ("strata/base/a.morph", "./strata//base/a.morph", "systems/s.morph"):
        assert source.read(path) == (tmp_path / path.replace("//", "/")).read_bytes()
    for path in ("strata/base", "strata/nope/a.morph", "strata/base/nope.morph",
                 "systems/s.morph/x", "nope", "../strata/base/a.morph"):
        assert source.read(path) is None, path


def test_paths_cannot_escape_the_tree(tmp_path):
    write_tree(tmp_path / "defs", BASE_FILES)
    (tmp_path / "secret.morph").write_text("name: x\nkind: chunk\n")
    stratum = BASE_FILES["strata/base.morph"].replace("strata/base/a.morph", "../../secret.morph")
    with pytest.raises(DefinitionsError, match=r"\.\./\.\./secret\.morph does not exist"):
        graph_of(tmp_path / "defs", **{"strata/base.morph": stratum})


def test_example_system_graph():
    graph = build_graph(Definitions(DirectorySource(MORPHS)), "systems/example-system-x86_64.morph")
    assert graph.nodes["chunk:example-apps/hello"].depends == ("stratum:example-core",)
    assert "chunk:example-core/libgreet" in graph.closure("chunk:example-apps/greeting-tool")
    lengths = graph.remaining_lengths()
    assert lengths["chunk:example-core/libgreet"] == len(graph.critical_path())
    assert lengths["system:example-system-x86_64"] == 1


def test_nodes_round_trip_through_plain_data():
    import json as _json

    from distbuild.definitions import node_from_dict, node_to_dict

    graph = build_graph(Definitions(DirectorySource(MORPHS)), "systems/example-system-x86_64.morph")
    for node in graph.nodes.values():
        wire = _json.loads(_json.dumps(node_to_dict(node)))
        back = node_from_dict(wire)
        assert back == node
        assert back.key_inputs() == node.key_inputs()
