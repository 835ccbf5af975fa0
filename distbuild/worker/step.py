"""One build step: a chunk, stratum or system node turned into artifacts.

A step works in a fresh temporary directory under the worker's work
directory and publishes its outputs with one rename when everything
succeeded, so a failed, cancelled or crashed step leaves nothing that a
retry could trip over (`WorkerSettings.clean` removes the leftovers of a
crash). What it publishes, in `out/CACHEKEY/`:

- the node's artifacts (`KEY.KIND.NAME`, see distbuild.worker.artifacts),
- `KEY.build-log`: the step's log (see distbuild.worker.log),
- `KEY.meta`: JSON describing the step, its inputs and every output's sha256.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distbuild import sandbox
from distbuild.runprocess import CancelToken
from distbuild.worker import artifacts
from distbuild.worker.artifacts import PackedArtifact, artifact_filename
from distbuild.worker.cache import LocalArtifactCache
from distbuild.worker.errors import CommandFailed, DiskFull, StepError
from distbuild.worker.log import LogCallback, StepLog
from distbuild.worker.sources import GitSources

META_FORMAT = "distbuild-step/1"

# Directories every assembled system has, even when no chunk installs them.
SYSTEM_DIRS = ("dev", "proc", "sys", "tmp", "run", "var", "home", "root", "mnt")

_TARGETS = {
    "x86_64": "x86_64-baserock-linux-gnu",
    "x86_32": "i686-baserock-linux-gnu",
    "armv7lhf": "armv7lhf-baserock-linux-gnueabi",
    "armv7l": "armv7l-baserock-linux-gnueabi",
    "armv8l64": "aarch64-baserock-linux-gnu",
    "armv8b64": "aarch64_be-baserock-linux-gnu",
    "ppc64": "powerpc64-baserock-linux-gnu",
}


@dataclass
class WorkerSettings:
    """How a worker runs steps (the `worker` section of the shared configuration).

    `staging_over_host`: when yes, the staging area is layered over the
    host's root read-only (see distbuild.sandbox.layer_host), so chunks
    whose definitions bring no toolchain of their own build with the host's
    compiler and tools. When no, a `staging` chunk sees only its
    dependencies, as in Baserock; `bootstrap` chunks always see the host.
    """

    work_dir: Path
    jobs: int | None = None
    staging_over_host: bool = False
    bwrap: str = "bwrap"
    log_tail_lines: int = 20

    @property
    def tmp_dir(self) -> Path:
        return self.work_dir / "tmp"

    @property
    def out_dir(self) -> Path:
        return self.work_dir / "out"

    def clean(self) -> None:
        """Remove what steps that crashed left behind (call when no step runs)."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


@dataclass
class StepResult:
    """A finished step's outputs, all in `directory`."""

    node_id: str
    cache_key: str
    directory: Path
    artifacts: list[PackedArtifact]
    log: PackedArtifact
    meta: PackedArtifact
    seconds: float
    command_seconds: float = 0.0

    @property
    def files(self) -> list[PackedArtifact]:
        """Everything to upload: the artifacts, then the log and the metadata."""
        return [*self.artifacts, self.log, self.meta]


@dataclass
class _Context:
    node: Any
    nodes: Mapping[str, Any]
    tmp: Path
    out: Path
    log: StepLog
    cancel: CancelToken
    inputs: list[dict[str, str]] = field(default_factory=list)
    extra_meta: dict[str, Any] = field(default_factory=dict)
    command_seconds: float = 0.0


class StepRunner:
    """Runs steps with one worker's settings, sources and local artifact cache."""

    def __init__(self, settings: WorkerSettings, sources: GitSources,
                 cache: LocalArtifactCache) -> None:
        self.settings = settings
        self.sources = sources
        self.cache = cache

    def run(self, node: Any, nodes: Mapping[str, Any], *, on_line: LogCallback | None = None,
            cancel: CancelToken | None = None) -> StepResult:
        """Build `node`; `nodes` must hold at least its transitive dependencies.

        Raises a StepError subclass (or runprocess.Cancelled, or
        sandbox.SandboxError) on failure, having removed everything it wrote.
        """
        started = time.monotonic()
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{node.kind}-{node.name}-",
                                    dir=self.settings.tmp_dir))
        try:
            out = tmp / "out"
            out.mkdir()
            log = StepLog(out / f"{node.cache_key}.build-log", on_line,
                          self.settings.log_tail_lines)
            ctx = _Context(node, nodes, tmp, out, log, cancel or CancelToken())
            try:
                log.line(f"Building {node.id} ({node.cache_key}) on {platform.node()}")
                produced = self._build(ctx)
                log.line(f"Finished building {node.id}")
            except StepError as e:
                log.line(f"Build of {node.id} failed: {e.what.splitlines()[0]}")
                raise
            finally:
                log.close()
            return self._publish(ctx, produced, time.monotonic() - started)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DiskFull(f"no space left on device ({e.filename or 'work directory'})",
                               node.id) from None
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _build(self, ctx: _Context) -> list[PackedArtifact]:
        builders = {"chunk": self._build_chunk, "stratum": self._build_stratum,
                    "system": self._build_system}
        if ctx.node.kind not in builders:
            raise StepError(f"unknown node kind '{ctx.node.kind}'", ctx.node.id)
        return builders[ctx.node.kind](ctx)

    # -- chunks ---------------------------------------------------------

    def _build_chunk(self, ctx: _Context) -> list[PackedArtifact]:
        node, log = ctx.node, ctx.log
        build_dir, inst_dir, root = (ctx.tmp / f"{node.name}.build",
                                     ctx.tmp / f"{node.name}.inst", ctx.tmp / "root")
        log.header("source")
        log.line(f"Checking out {node.repo} at {node.commit}")
        self.sources.checkout(node.repo, node.commit, build_dir, submodules=node.submodules,
                              on_line=log.line, cancel=ctx.cancel)
        log.header("staging")
        root.mkdir()
        for dep in staged_chunks(node, ctx.nodes):
            for name in _artifact_names(dep):
                self._unpack(ctx, artifact_filename(dep.cache_key, "chunk", name), root)
        inst_dir.mkdir()
        over_host = self.settings.staging_over_host or node.build_mode == "bootstrap"
        layout = sandbox.merged_layout(root) if over_host else ()
        binds = (*(sandbox.host_binds() if over_host else ()),
                 sandbox.Bind(build_dir, f"/{node.name}.build", writable=True),
                 sandbox.Bind(inst_dir, f"/{node.name}.inst", writable=True))
        env = self._chunk_env(node)
        for phase, commands in node.commands:
            if commands:
                log.header(f"{phase} commands")
            for command in commands:
                self._run_command(ctx, phase, command, sandbox.SandboxSpec(
                    argv=("sh", "-e", "-c", command), root=None if over_host else root,
                    layout=layout, binds=binds, env=env, cwd=f"/{node.name}.build"))
        log.header("artifacts")
        split = artifacts.split_tree(inst_dir, _rules(node))
        packed = []
        for name, paths in split.items():
            filename = artifact_filename(node.cache_key, "chunk", name)
            packed.append(artifacts.pack(inst_dir, paths, ctx.out / filename, filename))
            log.line(f"{filename}: {len(paths)} files, {packed[-1].size} bytes")
        ctx.extra_meta["source"] = {"repo": node.repo, "ref": node.ref, "commit": node.commit,
                                    "tree": node.tree}
        return packed

    def _chunk_env(self, node: Any) -> dict[str, str]:
        jobs = node.max_jobs or self.settings.jobs or os.cpu_count() or 1
        prefix = node.prefix or "/usr"
        return {
            "PATH": f"{prefix}/bin:/usr/bin:/bin:/usr/sbin:/sbin:/tools/bin"
            if prefix != "/usr" else "/usr/bin:/bin:/usr/sbin:/sbin:/tools/bin",
            "HOME": "/tmp", "LC_ALL": "C", "TERM": "dumb", "SHELL": "/bin/sh",
            "USER": "root", "USERNAME": "root", "LOGNAME": "root",
            "PREFIX": prefix, "DESTDIR": f"/{node.name}.inst",
            "MAKEFLAGS": f"-j{jobs}", "MORPH_ARCH": node.arch,
            "TARGET": _TARGETS.get(node.arch, f"{node.arch}-baserock-linux-gnu"),
            "BOOTSTRAP": "true" if node.build_mode == "bootstrap" else "false",
        }

    def _run_command(self, ctx: _Context, phase: str, command: str,
                     spec: sandbox.SandboxSpec) -> None:
        ctx.log.command(command)
        ctx.log.output_started()
        started = time.monotonic()
        status = sandbox.run(spec, on_line=ctx.log.line, cancel=ctx.cancel,
                             bwrap=self.settings.bwrap)
        ctx.command_seconds += time.monotonic() - started
        if status == 0:
            return
        tail = ctx.log.last_lines
        if any("No space left on device" in line for line in tail) or _disk_full(ctx.tmp):
            raise DiskFull(f"no space left on device while running {phase} command "
                           f"{command!r} (exit status {status})", ctx.node.id)
        raise CommandFailed(ctx.node.id, phase, command, status, tail)

    def _unpack(self, ctx: _Context, filename: str, dest: Path,
                sha256: str | None = None) -> list[str]:
        ctx.cancel.check()
        local = self.cache.fetch(filename, sha256)
        ctx.inputs.append({"filename": filename, "sha256": self.cache.sha256(filename)})
        return artifacts.extract(local, dest, filename)

    # -- strata ---------------------------------------------------------

    def _build_stratum(self, ctx: _Context) -> list[PackedArtifact]:
        node, log = ctx.node, ctx.log
        chunks = [ctx.nodes[d] for d in node.depends
                  if ctx.nodes[d].kind == "chunk" and ctx.nodes[d].stratum == node.name]
        members: dict[str, list[PackedArtifact]] = {name: [] for name in _artifact_names(node)}
        for chunk in chunks:
            for name in _artifact_names(chunk):
                target = node.artifact_overrides.get(name) or artifacts.first_match(
                    name, _rules(node))
                if target is None:
                    raise StepError(f"chunk artifact '{name}' matches no stratum split rule",
                                    node.id)
                if target not in members:
                    raise StepError(f"chunk artifact '{name}' is assigned to '{target}', "
                                    "which is not one of the stratum's artifacts", node.id)
                filename = artifact_filename(chunk.cache_key, "chunk", name)
                self.cache.fetch(filename)
                members[target].append(self.cache.describe(filename))
        packed = []
        for name, chunk_artifacts in members.items():
            filename = artifact_filename(node.cache_key, "stratum", name)
            artifacts.write_json(ctx.out / filename, artifacts.stratum_document(
                node.name, name, node.cache_key, chunk_artifacts))
            packed.append(artifacts.describe(ctx.out / filename, filename))
            log.line(f"{filename}: {len(chunk_artifacts)} chunk artifacts")
        return packed

    # -- systems --------------------------------------------------------

    def _build_system(self, ctx: _Context) -> list[PackedArtifact]:
        node, log = ctx.node, ctx.log
        rootfs = ctx.tmp / "rootfs"
        rootfs.mkdir()
        log.header("assembling")
        contents = []
        for stratum_name, selected in node.strata_artifacts.items():
            stratum = ctx.nodes[f"stratum:{stratum_name}"]
            for name in selected if selected is not None else _artifact_names(stratum):
                filename = artifact_filename(stratum.cache_key, "stratum", name)
                doc = artifacts.read_stratum(self.cache.fetch(filename), filename)
                ctx.inputs.append({"filename": filename,
                                   "sha256": self.cache.sha256(filename)})
                for chunk in doc["chunks"]:
                    self._unpack(ctx, chunk["filename"], rootfs, chunk["sha256"])
                    contents.append({"stratum": stratum_name, **chunk})
                log.line(f"{filename}: {len(doc['chunks'])} chunk artifacts")
        for d in SYSTEM_DIRS:
            (rootfs / d).mkdir(exist_ok=True)
        self._integrate(ctx, rootfs, {c["filename"] for c in contents})
        meta_dir = rootfs / "baserock"
        meta_dir.mkdir(exist_ok=True)
        artifacts.write_json(meta_dir / f"{node.name}.meta", {
            "format": artifacts.SYSTEM_META_FORMAT, "system": node.name, "arch": node.arch,
            "cache_key": node.cache_key, "contents": contents})
        log.header("packing")
        filename = artifact_filename(node.cache_key, "system", f"{node.name}-rootfs")
        everything = [str(p.relative_to(rootfs)) for p in sorted(rootfs.rglob("*"))]
        packed = artifacts.pack(rootfs, everything, ctx.out / filename, filename)
        log.line(f"{filename}: {len(everything)} entries, {packed.size} bytes")
        ctx.extra_meta["contents"] = contents
        return [packed]

    def _integrate(self, ctx: _Context, rootfs: Path, included: set[str]) -> None:
        """Run the included chunk artifacts' system-integration commands in the system root."""
        scripts: list[tuple[str, str, tuple[str, ...]]] = []
        for chunk in (n for n in ctx.nodes.values() if n.kind == "chunk"):
            for artifact, named in (chunk.system_integration or {}).items():
                if artifact_filename(chunk.cache_key, "chunk", artifact) in included:
                    scripts += [(name, artifact, tuple(cmds)) for name, cmds in named.items()]
        if not scripts:
            return
        ctx.log.header("system-integration")
        layer = sandbox.layer_host(rootfs) if self.settings.staging_over_host else None
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/tmp", "LC_ALL": "C",
               "MORPH_ARCH": ctx.node.arch}
        try:
            for name, artifact, commands in sorted(scripts):
                ctx.log.line(f"{name} (from {artifact})")
                for command in commands:
                    self._run_command(ctx, f"system-integration {name}", command,
                                      sandbox.SandboxSpec(
                                          argv=("sh", "-e", "-c", command), root=rootfs,
                                          root_writable=True,
                                          binds=layer.binds if layer else (), env=env))
        finally:
            if layer is not None:
                layer.remove()

    # -- publishing -----------------------------------------------------

    def _publish(self, ctx: _Context, produced: list[PackedArtifact],
                 seconds: float) -> StepResult:
        node = ctx.node
        log_name = f"{node.cache_key}.build-log"
        log = artifacts.describe(ctx.out / log_name, log_name)
        meta_name = f"{node.cache_key}.meta"
        artifacts.write_json(ctx.out / meta_name, {
            "format": META_FORMAT, "node": node.id, "kind": node.kind, "name": node.name,
            "cache_key": node.cache_key, "arch": node.arch, "worker": platform.node(),
            "seconds": round(seconds, 3), "inputs": ctx.inputs, **ctx.extra_meta,
            "artifacts": {a.filename: {"sha256": a.sha256, "size": a.size}
                          for a in [*produced, log]},
        })
        meta = artifacts.describe(ctx.out / meta_name, meta_name)
        final = self.settings.out_dir / node.cache_key
        self.settings.out_dir.mkdir(parents=True, exist_ok=True)
        if final.exists():
            # An earlier build of the same key: replace it whole, never merge.
            old = ctx.tmp / "replaced"
            os.rename(final, old)
        os.rename(ctx.out, final)
        moved = [PackedArtifact(a.filename, final / a.filename, a.sha256, a.size)
                 for a in [*produced, log, meta]]
        for artifact in moved[:len(produced)]:
            self.cache.add(artifact)
        return StepResult(node.id, node.cache_key, final, moved[:len(produced)],
                          moved[-2], moved[-1], seconds, ctx.command_seconds)


def closure(node: Any, nodes: Mapping[str, Any]) -> list[Any]:
    """`node`'s transitive dependencies, each after its own dependencies."""
    order: list[Any] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        if node_id not in nodes:
            raise StepError(f"dependency {node_id} is not in the build graph given", node.id)
        for dep in nodes[node_id].depends:
            visit(dep)
        order.append(nodes[node_id])

    for dep in node.depends:
        visit(dep)
    return order


def staged_chunks(node: Any, nodes: Mapping[str, Any]) -> list[Any]:
    """The chunks whose artifacts make up `node`'s staging area, Baserock's way.

    A chunk sees its whole dependency closure, except that bootstrap chunks
    of other strata are left out; a bootstrap chunk sees only chunks of its
    own stratum.
    """
    chunks = [n for n in closure(node, nodes) if n.kind == "chunk"]
    if node.build_mode == "bootstrap":
        return [c for c in chunks if c.stratum == node.stratum]
    return [c for c in chunks if c.build_mode != "bootstrap" or c.stratum == node.stratum]


def _artifact_names(node: Any) -> Sequence[str]:
    return [rule.artifact for rule in node.split_rules]


def _rules(node: Any) -> Sequence[Any]:
    return node.split_rules


def _disk_full(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def load_meta(path: Path) -> dict[str, Any]:
    """Read a step's `KEY.meta` file."""
    return json.loads(path.read_text())
