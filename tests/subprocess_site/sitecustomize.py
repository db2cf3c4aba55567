"""Installs the test connect guard in Python subprocesses started by the tests (see tests/connect_guard.py)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from connect_guard import install_in_subprocess  # noqa: E402

sys.path.pop(0)
install_in_subprocess()
