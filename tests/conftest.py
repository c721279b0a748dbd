"""Session-wide test settings."""

import os

# MuJoCo picks its GL backend at first import: make every test that renders use CPU OSMesa,
# whichever test module happens to import mujoco first.
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
