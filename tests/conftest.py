import os
import sys

# tests import small helpers (e.g. the tiny prior) from this folder
sys.path.insert(0, os.path.dirname(__file__))
