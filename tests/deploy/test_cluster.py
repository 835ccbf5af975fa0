"""Cluster expansion: merging, choosing deployments, subsystems, variables."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from distbuild.definitions import Cluster, ClusterSystem, Definitions, DirectorySource
from distbuild.deploy.cluster import CommandLine, expand, parse_arguments
from distbuild.deploy.errors import DeployError
from distbuild.errors import DistbuildError
from tests.deploy.conftest import load_cluster

SEED_LIKE = """\
name: net
name: test
kind: cluster
systems:
- morph: systems/build-system-x86_64.morph
  deploy-defaults:
    CONTROLLERHOST: &controllerhost $controller_url
    DISTBUILD_CONTROLLER: no
    DISTBUILD_WORKER: yes
    DISK_SIZE: 5G
    VCPUS: 2
    NOTHING: null
  deploy:
    controller:
      type: extensions/kvm
      location: kvm+ssh://user@vmhost/distbuild-controller/vm/controller.img
      DISTBUILD_CONTROLLER: yes
      DISTBUILD_WORKER: no
      HOSTNAME: *controllerhost
      WORKERS: ${worker0_url}, $worker1_url
    worker0:
      type: kvm
      location: kvm+ssh://user@vmhost/distbuild-worker0/vm/worker0.img
      HOSTNAME: $worker0_url
      PRICE: $$5
  subsystems:
  - morph: systems/initramfs-x86_64.morph
    deploy:
      initramfs:
        type: initramfs
        location: boot/initramfs.gz
        LIST: [a, $worker0_url]
"""

VARS = {"controller_url": "ctl", "worker0_url": "w0", "worker1_url": "w1"}


def _cluster(tmp_path: Path, text: str = SEED_LIKE):
    path = tmp_path / "cluster.morph"
    path.write_text(textwrap.dedent(text))
    return load_cluster(path)


def test_defaults_then_entry_then_command_line(tmp_path):
    cluster = _cluster(tmp_path)
    line = parse_arguments(["controller.VCPUS=8", "controller.type=tar"])
    (controller, worker0) = expand(cluster, line, VARS)
    assert controller.type == "tar"
    assert controller.settings["VCPUS"] == "8"
    assert controller.settings["DISK_SIZE"] == "5G"
    assert worker0.settings["VCPUS"] == "2"
    assert controller.settings["DISTBUILD_CONTROLLER"] == "True"
    assert worker0.settings["DISTBUILD_CONTROLLER"] == "False"
    assert controller.settings["NOTHING"] == "None"
    assert "type" not in controller.settings and "location" not in controller.settings


def test_anchors_and_variables_are_substituted(tmp_path):
    controller, worker0 = expand(_cluster(tmp_path), CommandLine(), VARS)
    assert controller.settings["HOSTNAME"] == "ctl"
    assert controller.settings["CONTROLLERHOST"] == "ctl"
    assert controller.settings["WORKERS"] == "w0, w1"
    assert worker0.settings["PRICE"] == "$5"


def test_command_line_variables_win_over_environment(tmp_path):
    line = parse_arguments(["worker0", "worker0_url=cli-w0"])
    (worker0,) = expand(_cluster(tmp_path), line, VARS)
    assert worker0.settings["HOSTNAME"] == "cli-w0"


def test_command_line_values_are_literal(tmp_path):
    line = parse_arguments(["worker0", "worker0.HOSTNAME=a$b"])
    (worker0,) = expand(_cluster(tmp_path), line, VARS)
    assert worker0.settings["HOSTNAME"] == "a$b"


def test_unset_variable_names_it_and_the_deployment(tmp_path):
    env = {k: v for k, v in VARS.items() if k != "worker1_url"}
    with pytest.raises(DeployError) as e:
        expand(_cluster(tmp_path), CommandLine(), env)
    assert "$worker1_url is not set" in str(e.value)
    assert "deployment 'controller'" in str(e.value)
    assert "WORKERS" in str(e.value)


def test_unset_variable_in_unchosen_deployment_is_no_error(tmp_path):
    env = {k: v for k, v in VARS.items() if k != "worker1_url"}
    (worker0,) = expand(_cluster(tmp_path), parse_arguments(["worker0"]), env)
    assert worker0.id == "worker0"


def test_subsystems_go_with_each_parent(tmp_path):
    controller, worker0 = expand(_cluster(tmp_path), CommandLine(), VARS)
    for parent in (controller, worker0):
        (initramfs,) = parent.subsystems
        assert initramfs.morph == "systems/initramfs-x86_64.morph"
        assert initramfs.location == "boot/initramfs.gz"
        assert initramfs.settings["LIST"] == '["a", "w0"]'
    assert [d.id for d in controller.walk()] == ["controller", "initramfs"]


def test_command_line_setting_reaches_subsystem(tmp_path):
    line = parse_arguments(["initramfs.location=boot/other.gz"])
    controller, _ = expand(_cluster(tmp_path), line, VARS)
    assert controller.subsystems[0].location == "boot/other.gz"


def test_unknown_deployment_is_an_error(tmp_path):
    with pytest.raises(DeployError, match=r"no deployment named 'worker9' "
                                          r"\(deployments: controller, worker0\)"):
        expand(_cluster(tmp_path), parse_arguments(["worker9"]), VARS)


def test_subsystem_cannot_be_deployed_alone(tmp_path):
    with pytest.raises(DeployError, match="'initramfs' is a subsystem deployment"):
        expand(_cluster(tmp_path), parse_arguments(["initramfs"]), VARS)


def test_setting_for_unknown_deployment_is_an_error(tmp_path):
    with pytest.raises(DeployError, match=r"'nope.HOSTNAME=...' names no deployment"):
        expand(_cluster(tmp_path), parse_arguments(["nope.HOSTNAME=x"]), VARS)


@pytest.mark.parametrize("arg", ["=x", ".KEY=x", "ID.=x"])
def test_malformed_argument(arg):
    with pytest.raises(DeployError, match=r"is not DEPLOYMENT, ID\.KEY=VALUE or NAME=VALUE"):
        parse_arguments([arg])


def test_missing_type_names_deployment(tmp_path):
    cluster = _cluster(tmp_path, """\
        name: test
        kind: cluster
        systems:
        - morph: systems/x.morph
          deploy:
            lonely:
              location: x.tar
        """)
    with pytest.raises(DeployError, match=r"deployment 'lonely': no 'type'"):
        expand(cluster, CommandLine(), {})


def test_duplicate_deployment_id():
    """The engine refuses these when loading; expansion refuses them in any Cluster too."""
    entry = {"type": "tar", "location": "a.tar"}
    cluster = Cluster("c.morph", "c", (ClusterSystem("systems/x.morph", {}, {"a": entry}),
                                       ClusterSystem("systems/y.morph", {}, {"a": entry})))
    with pytest.raises(DeployError, match="deployment ID 'a' is used twice"):
        expand(cluster, CommandLine(), {})


@pytest.mark.parametrize("text", [
    "name: x\nkind: system\n",
    "name: x\nkind: cluster\nsystems: {}\n",
    "name: x\nkind: cluster\nsystems:\n- deploy: {}\n",
    "name: x\nkind: cluster\nsystems:\n- morph: x\n  deploy: [a]\n",
    "name: x\nkind: cluster\nsystems: [\n",
])
def test_malformed_cluster_names_the_file(tmp_path, text):
    path = tmp_path / "bad.morph"
    path.write_text(text)
    with pytest.raises(DistbuildError) as e:
        load_cluster(path)
    assert "bad.morph" in str(e.value)


def test_unknown_field_in_a_cluster_warns(tmp_path):
    (tmp_path / "VERSION").write_text("version: 6\n")
    (tmp_path / "c.morph").write_text("name: x\nkind: cluster\nsystems:\n- morph: x\n"
                                      "  color: red\n")
    defs = Definitions(DirectorySource(tmp_path))
    assert defs.cluster("c.morph").systems[0].morph == "x"
    assert defs.warnings == ["c.morph:5: systems[0].color: unknown field"]
    with pytest.raises(DistbuildError, match=r"c\.morph:5: systems\[0\]\.color: unknown field"):
        Definitions(DirectorySource(tmp_path), strict=True).cluster("c.morph")


def test_every_baserock_cluster_expands(baserock):
    """Real clusters: all load; all but the upgrade-only ones (`morph upgrade`) expand."""
    env = {"MY_TROVE": "trove.example.com"}
    expanded = 0
    defs = Definitions(DirectorySource(baserock))
    for path in sorted((baserock / "clusters").glob("*.morph")):
        cluster = defs.cluster(f"clusters/{path.name}")
        if "upgrade-type:" in path.read_text():
            with pytest.raises(DeployError, match=r"deployment '.*': no 'type'"):
                expand(cluster, CommandLine(), env)
            continue
        deployments = expand(cluster, CommandLine(), env)
        assert deployments, path
        expanded += sum(1 for d in deployments for _ in d.walk())
    assert expanded > 60


def test_baserock_distbuild_cluster_values(baserock):
    cluster = Definitions(DirectorySource(baserock)).cluster(
        "clusters/example-distbuild-cluster.morph")
    line = parse_arguments(["build-node-1"])
    (node,) = expand(cluster, line, {"MY_TROVE": "t.example"})
    assert node.type == "extensions/nfsboot"
    assert node.location == "t.example"
    assert node.settings["TROVE_ID"] == "t.example"
    assert node.settings["DISTBUILD_WORKER"] == "True"
    assert node.settings["HOSTNAME"] == "build-node-1"


@pytest.mark.parametrize("key", ["A=B", ""])
def test_setting_names_must_be_environment_names(key):
    entry = {"type": "tar", "location": "a.tar", key: "x"}
    cluster = Cluster("c.morph", "c", (ClusterSystem("systems/x.morph", {}, {"a": entry}),))
    with pytest.raises(DeployError, match=r"deployment 'a': setting name .* cannot be an "
                                          "environment variable"):
        expand(cluster, CommandLine(), {})
