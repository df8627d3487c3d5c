"""Fixtures of the pruning tests."""

from __future__ import annotations

import pytest

from prunescope.pruning import METHODS
from tests.helpers import TOY, toy_plugin


@pytest.fixture
def toy_method():
    """The toy method registered for one test (study, sweep and prune see it too), unregistered after."""
    plugin = toy_plugin()
    with METHODS.registered(plugin):
        yield plugin
    assert TOY not in METHODS
