"""AtomVLA post-training for AtlasVLA: teacher-free atomic subtasks (:mod:`.segment`), subtask-conditioned SFT
with a progress head (:mod:`.progress`), an action-conditioned latent world model (:mod:`.world_model`) and
offline GRPO against its energies (:mod:`.posttrain`), each a resumable stage of ``atlasva vla``."""
