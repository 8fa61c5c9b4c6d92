"""Vault secrets: encryption at rest (`crypto.py`), the keys (`keys.py`), `corral secrets` (`cli.py`)."""
