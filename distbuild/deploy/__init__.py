"""Deployment: cluster morphologies expanded into deployments, run through extensions.

`cluster` is core (plain data in, plain data out); `fetch`, `extensions`,
`deployer` and `kvm` are the edge that talks to the network and the OS.
"""
