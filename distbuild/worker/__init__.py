"""The worker: turns one node of the build graph into artifacts.

`step.run_step` is the whole machinery for one node, usable without a
controller (`distbuild build-step`); the worker service that talks to a
controller calls the same function for each step it is given.
"""
