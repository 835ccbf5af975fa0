"""Errors a deployment can hit; each names the cluster, deployment or extension."""

from __future__ import annotations

from distbuild.errors import DistbuildError


class DeployError(DistbuildError):
    """A cluster, a deployment's settings or an extension is wrong, or a write failed."""


class NotBuiltError(DeployError):
    """The system to deploy is not in the artifact cache; deploying never builds."""
