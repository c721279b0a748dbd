"""Navigation: reach a described object in a procedurally generated house, seen first person."""

from atlasva.envs.navigation.env import NavigationEnv
from atlasva.envs.navigation.render import Raycaster, render_map
from atlasva.envs.navigation.scene import INSTRUCTION_SETS, Scene, generate_scene, scene_from_rows

__all__ = ["INSTRUCTION_SETS", "NavigationEnv", "Raycaster", "Scene", "generate_scene", "render_map", "scene_from_rows"]
