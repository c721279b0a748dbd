"""AtlasVA visual skill memory: danger/affinity atlases, exemplars, text skills, shaping, injection."""

from atlasva.memory.atlas import Atlas, LevelGeometry
from atlasva.memory.memory import MemoryConfig, MemoryLoadError, MemorySnapshot, SkillMemory, episode_meta

__all__ = ["Atlas", "LevelGeometry", "MemoryConfig", "MemoryLoadError", "MemorySnapshot", "SkillMemory", "episode_meta"]
