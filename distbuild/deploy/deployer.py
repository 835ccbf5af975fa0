"""Running deployments: check all, then fetch, unpack, configure and write each.  [edge]

Every extension a deployment needs is found, and every `.check` run,
before anything is fetched or written, so a mistake in the last deployment
of a cluster does not leave the first one half done.

Not running as root, the unpacking and every configure and write extension
run in one fakeroot session per deployment, so the owners, setuid bits and
device nodes the build gave the system survive into images made by a user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from distbuild.deploy.cluster import Deployment
from distbuild.deploy.errors import DeployError
from distbuild.deploy.extensions import find_extension, require_extension, run_extension
from distbuild.deploy.fetch import fetch_system_artifact
from distbuild.deploy.systems import SystemArtifact, SystemResolver
from distbuild.errors import DistbuildError


@dataclass(frozen=True)
class Plan:
    """A deployment with everything found that it needs: artifact and extension files."""

    deployment: Deployment
    system: SystemArtifact
    configure: tuple[Path, ...]
    write: Path
    check: Path | None
    subsystems: tuple[Plan, ...]

    @property
    def where(self) -> str:
        """How errors name this deployment."""
        return f"deployment '{self.deployment.id}'"


@dataclass
class Deployer:
    """Deploys expanded deployments of systems already in the artifact cache."""

    definitions: Path
    systems: SystemResolver
    artifact_cache_url: str
    progress: Callable[[str], None] = print
    environ: Mapping[str, str] | None = None

    fakeroot: str | None = field(default_factory=lambda: _fakeroot_if_needed())

    def deploy(self, deployments: Sequence[Deployment]) -> None:
        """Deploy each deployment with its subsystems; stop at the first failure."""
        plans = [self.plan(d) for d in deployments]
        for plan in plans:
            self._check(plan)
        if os.geteuid() != 0 and self.fakeroot is None:
            self.progress("Not root and fakeroot is not installed: the deployed files will "
                          "belong to you, not to the owners the build gave them")
        for plan in plans:
            with tempfile.TemporaryDirectory(prefix="distbuild-deploy-") as scratch:
                self._deploy(plan, Path(scratch), self._session(Path(scratch)), None)
            self.progress(f"Deployed {plan.deployment.id} to {plan.deployment.location}")

    def _session(self, scratch: Path) -> tuple[str, ...]:
        """The command prefix that runs a command in this deployment's fakeroot session."""
        if self.fakeroot is None:
            return ()
        state = scratch / "fakeroot.state"
        state.touch()
        return (self.fakeroot, "-i", str(state), "-s", str(state), "--")

    def plan(self, d: Deployment) -> Plan:
        """Find `d`'s system and extensions (and its subsystems'); a missing one is an error."""
        where = f"deployment '{d.id}'"
        try:
            system = self.systems.system(d.morph)
        except DistbuildError as e:
            # The definitions name the file; say which deployment needed it too.
            raise DeployError(str(e), where, retryable=e.retryable) from None
        return Plan(
            deployment=d,
            system=system,
            configure=tuple(require_extension(name, "configure", self.definitions, where)
                            for name in system.configuration_extensions),
            write=require_extension(d.type, "write", self.definitions, where),
            check=find_extension(d.type, "check", self.definitions),
            subsystems=tuple(self.plan(sub) for sub in d.subsystems),
        )

    def _check(self, plan: Plan) -> None:
        # A subsystem's location is inside a tree that does not exist yet,
        # so only top-level deployments can be checked up front. Checks
        # change nothing, so they need no fakeroot session.
        if plan.check is not None:
            self.progress(f"Checking {plan.deployment.id} ({plan.check.name})")
            self._run(plan, plan.check, [plan.deployment.location], ())

    def _deploy(self, plan: Plan, scratch: Path, wrapper: tuple[str, ...],
                parent_tree: Path | None) -> None:
        d = plan.deployment
        tree = scratch / f"{d.id}-rootfs"
        self._unpack(plan, scratch, tree, wrapper)
        for sub in plan.subsystems:
            self._deploy(sub, scratch, wrapper, parent_tree=tree)
        for ext in plan.configure:
            self.progress(f"Configuring {d.id} with {ext.name}")
            self._run(plan, ext, [str(tree)], wrapper)
        location = d.location
        if parent_tree is not None:
            # Subsystems land inside their parent's tree, as with morph.
            inside = parent_tree / d.location.lstrip("/")
            inside.parent.mkdir(parents=True, exist_ok=True)
            location = str(inside)
        self.progress(f"Writing {d.id} with {plan.write.name} to {d.location}")
        self._run(plan, plan.write, [str(tree), location], wrapper)
        shutil.rmtree(tree, ignore_errors=True)

    def _unpack(self, plan: Plan, scratch: Path, tree: Path,
                wrapper: tuple[str, ...]) -> None:
        artifact = scratch / plan.system.filename
        self.progress(f"Fetching {plan.system.name} ({plan.system.cache_key[:12]})")
        fetch_system_artifact(self.artifact_cache_url, plan.system.filename, artifact,
                              plan.system.morph)
        tree.mkdir()
        # GNU tar keeps owners, modes, links and device nodes (as root) exactly.
        proc = subprocess.run([*wrapper, "tar", "-xzf", str(artifact), "-C", str(tree),
                               "--numeric-owner"], capture_output=True, text=True)
        artifact.unlink()
        if proc.returncode != 0:
            raise DeployError(f"cannot unpack {plan.system.filename}: "
                              f"{proc.stderr.strip() or 'tar failed'}", plan.where)

    def _run(self, plan: Plan, ext: Path, args: list[str], wrapper: tuple[str, ...]) -> None:
        run_extension(ext, args, plan.deployment.settings, cwd=self.definitions,
                      progress=self.progress, where=plan.where, base_environ=self.environ,
                      wrapper=wrapper)


def _fakeroot_if_needed() -> str | None:
    """fakeroot's path when not running as root; None as root or when it is missing."""
    return None if os.geteuid() == 0 else shutil.which("fakeroot")
