"""The test suite: one package, so every test and harness imports its helpers one way,
``from tests.helpers import ...`` (see tests/conftest.py)."""
