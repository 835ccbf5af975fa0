"""The example system's build graph as StepSpecs, for worker tests.

Built by hand from morphs/ (commands from the chunk morphologies and
DEFAULTS) so that the worker can be tested on its own; cache keys are
sha256 over the node id and its sources, enough for distinct file names.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from distbuild.examples import MORPHS
from distbuild.worker.spec import SplitRule, StepSpec

PHASES = ("configure", "build", "test", "install", "strip")


def _defaults() -> dict:
    return yaml.safe_load((MORPHS / "DEFAULTS").read_text())


def split_rules(kind: str, name: str) -> tuple[SplitRule, ...]:
    return tuple(SplitRule(name + r["artifact"], tuple(r["include"]))
                 for r in _defaults()["split-rules"][kind])


def chunk_commands(morph: dict | None, build_system: str) -> tuple:
    system = _defaults()["build-systems"][build_system]
    out = []
    for phase in PHASES:
        for prefix in ("pre-", "", "post-"):
            key = f"{prefix}{phase}-commands"
            cmds = (morph or {}).get(key)
            if cmds is None and not prefix:
                cmds = system.get(key, [])
            out.append((f"{prefix}{phase}", tuple(cmds or ())))
    return tuple(out)


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def example_graph(repos: Path, commits: dict[str, str], salt: str = "") -> dict[str, StepSpec]:
    """Nodes of systems/example-system-x86_64.morph, chunk repos under `repos`."""
    nodes: dict[str, StepSpec] = {}
    strata = ["strata/example-core.morph", "strata/example-apps.morph"]
    for path in strata:
        stratum = yaml.safe_load((MORPHS / path).read_text())
        sname = stratum["name"]
        stratum_deps = tuple(f"stratum:{yaml.safe_load((MORPHS / d['morph']).read_text())['name']}"
                             for d in stratum.get("build-depends", []))
        chunk_ids = []
        for spec in stratum["chunks"]:
            morph = (yaml.safe_load((MORPHS / spec["morph"]).read_text())
                     if "morph" in spec else None)
            cid = f"chunk:{sname}/{spec['name']}"
            deps = stratum_deps + tuple(f"chunk:{sname}/{d}"
                                        for d in spec.get("build-depends", []))
            integration = {a: {n: tuple(c) for n, c in s.items()}
                           for a, s in (morph or {}).get("system-integration", {}).items()}
            nodes[cid] = StepSpec(
                id=cid, kind="chunk", name=spec["name"], arch="x86_64", stratum=sname,
                depends=deps, cache_key=_key(cid, commits[spec["name"]], salt),
                repo=str(repos / spec["name"]), ref="master", commit=commits[spec["name"]],
                commands=chunk_commands(morph, spec.get("build-system", "manual")),
                system_integration=integration,
                split_rules=split_rules("chunk", spec["name"]))
            chunk_ids.append(cid)
        sid = f"stratum:{sname}"
        nodes[sid] = StepSpec(id=sid, kind="stratum", name=sname, arch="x86_64",
                              depends=stratum_deps + tuple(chunk_ids),
                              cache_key=_key(sid, *(nodes[c].cache_key for c in chunk_ids)),
                              split_rules=split_rules("stratum", sname))
    system = StepSpec(id="system:example-system-x86_64", kind="system",
                      name="example-system-x86_64", arch="x86_64",
                      depends=("stratum:example-core", "stratum:example-apps"),
                      cache_key=_key("system", nodes["stratum:example-apps"].cache_key,
                                     nodes["stratum:example-core"].cache_key),
                      strata_artifacts={"example-core": None, "example-apps": None})
    nodes[system.id] = system
    return nodes


def build_order(nodes: dict[str, StepSpec]) -> list[str]:
    order: list[str] = []

    def visit(nid: str) -> None:
        if nid in order:
            return
        for dep in nodes[nid].depends:
            visit(dep)
        order.append(nid)

    for nid in nodes:
        visit(nid)
    return order


def chunk_node(repo: Path, commit: str, commands: dict[str, tuple[str, ...]], *,
               name: str = "testchunk", depends: tuple[str, ...] = (),
               build_mode: str = "staging", stratum: str = "tests",
               key: str = "") -> StepSpec:
    """A one-off chunk node for failure tests; `commands` maps phase -> commands."""
    return StepSpec(
        id=f"chunk:{stratum}/{name}", kind="chunk", name=name, arch="x86_64",
        stratum=stratum, depends=depends, cache_key=key or _key(name, commit, repr(commands)),
        repo=str(repo), ref="master", commit=commit, build_mode=build_mode,
        commands=tuple(commands.items()), split_rules=split_rules("chunk", name))
