"""corral: a self-hosted runtime for long-running AI agents."""

__version__ = "0.1.0"
