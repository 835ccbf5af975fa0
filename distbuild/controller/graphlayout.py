"""A request's build graph drawn by graphviz's `dot`, for the dashboard.

Chunks are grouped in one cluster per stratum, with the stratum's own node
at the cluster's foot; edges implied by longer paths are dropped (transitive
reduction), so that a 255-step system stays readable. Top to bottom: the
255 steps of build-system-x86_64 come out about 2700 x 2400 pt, where left
to right they were 5800 x 1200 (a long chain of strata). Each node's SVG group
has id `step-N`, N its position in `order`, and class `step`; the browser
colours it by state. No Twisted here: the dashboard runs this in a thread.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from typing import Any

from distbuild.errors import DistbuildError

DOT_TIMEOUT = 120.0


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def reduce_edges(depends: dict[str, Iterable[str]]) -> dict[str, list[str]]:
    """Each node's dependencies without those reachable through another dependency."""
    reach: dict[str, set[str]] = {}

    def reachable(nid: str) -> set[str]:
        if nid not in reach:
            reach[nid] = set()  # a cycle (never in a valid graph) stops here
            out: set[str] = set()
            for dep in depends.get(nid, ()):
                out.add(dep)
                out |= reachable(dep)
            reach[nid] = out
        return reach[nid]

    reduced = {}
    for nid, deps in depends.items():
        deps = [d for d in deps if d in depends]
        indirect: set[str] = set()
        for dep in deps:
            indirect |= reachable(dep)
        reduced[nid] = sorted(d for d in set(deps) if d not in indirect)
    return reduced


def to_dot(nodes: list[dict[str, Any]]) -> str:
    """DOT text for `nodes` (dicts with id, kind, name, stratum, depends), in their order."""
    index = {n["id"]: i for i, n in enumerate(nodes)}
    edges = reduce_edges({n["id"]: n.get("depends", ()) for n in nodes})
    lines = ["digraph build {",
             '  graph [rankdir=TB, ranksep=0.3, nodesep=0.1, fontname="sans-serif", '
             'fontsize=11, newrank=true];',
             '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", '
             'fontname="sans-serif", fontsize=9, height=0.22, margin="0.06,0.02"];',
             '  edge [color="#9aa4b1", arrowsize=0.4, penwidth=0.7];']

    def node_line(n: dict[str, Any], indent: str) -> str:
        label = n["name"] if n["kind"] == "chunk" else f"{n['kind']} {n['name']}"
        extra = ', penwidth=1.6, fontsize=10' if n["kind"] != "chunk" else ""
        return (f'{indent}{_quote(n["id"])} [id="step-{index[n["id"]]}", class="step", '
                f'label={_quote(label)}, tooltip={_quote(n["id"])}{extra}];')

    strata: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        group = n.get("stratum") or (n["name"] if n["kind"] == "stratum" else "")
        if group:
            strata.setdefault(group, []).append(n)
        else:
            lines.append(node_line(n, "  "))
    for i, (name, members) in enumerate(strata.items()):
        lines += [f"  subgraph cluster_{i} {{",
                  f'    label={_quote(name)}; style="rounded"; color="#c8ced6"; '
                  f'id="stratum-{i}";']
        lines += [node_line(n, "    ") for n in members]
        lines.append("  }")
    for nid, deps in edges.items():
        for dep in deps:
            lines.append(f"  {_quote(dep)} -> {_quote(nid)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_svg(nodes: list[dict[str, Any]], dot: str | None = None) -> str:
    """The graph of `nodes` as SVG text, laid out by graphviz's dot."""
    program = dot or shutil.which("dot")
    if program is None:
        raise DistbuildError("graphviz's `dot` is not installed (Debian package graphviz)",
                             "dashboard")
    try:
        proc = subprocess.run([program, "-Tsvg"], input=to_dot(nodes), capture_output=True,
                              text=True, timeout=DOT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise DistbuildError(f"dot took more than {DOT_TIMEOUT:.0f} s to lay out "
                             f"{len(nodes)} steps", "dashboard") from None
    if proc.returncode != 0:
        raise DistbuildError(f"dot failed: {proc.stderr.strip()[:200]}", "dashboard")
    svg = proc.stdout
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg
