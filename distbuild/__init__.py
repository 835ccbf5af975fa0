"""distbuild: distributed builds of whole Linux systems from Baserock-style definitions."""

__version__ = "0.1.0"
