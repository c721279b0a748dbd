"""AtlasVLA: VGGT-style vision-language-action policies, VLA data and the Meta-World pipeline."""

from atlasva.vla.model import SIZES, AtlasVLA, Geometry, build_model, make_geometry

__all__ = ["SIZES", "AtlasVLA", "Geometry", "build_model", "make_geometry"]
