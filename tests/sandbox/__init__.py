"""Tests of the sandbox backends, pool and agent toolset (real bubblewrap, real commands)."""
