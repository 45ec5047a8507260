"""Fixtures shared by the test-suite (plain helper functions are in tests/helpers.py).

The thread fixtures are opt-in, per module: ``pytestmark = pytest.mark.usefixtures("single_thread")``.
"""

from __future__ import annotations

import pytest
from helpers import torch_threads


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module's tests, the previous count restored after its last test.

    Tiny tensors gain nothing from a second thread, and on a shared 2-core machine an OpenMP thread
    waiting for a descheduled peer makes every op ~50x slower (measured: 35 ms vs 0.6 ms per conv)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def restore_threads():
    """The torch thread count restored after a module's last test, for tests whose runs set it
    themselves (``engine.threads=1``)."""
    with torch_threads(None):
        yield
