"""Shared test setup: the repository root on sys.path, so tests import ``benchmarks`` helpers; a
``one_thread`` fixture for modules that train tiny models."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (tiny models: thread start-up costs more than it saves)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
