"""verl's dataset for atlasva: one row per level seed of a split, from the run's split manifests.

``atlasva train CONFIG engine=verl`` draws the seeds on the driver with :meth:`EnvSpec.seeds` under the
run's final env config (spec config merged with the run's overrides) — distinct levels, train and
validation disjoint by seed range and by level-content hash — and writes one manifest per split
(:func:`write_manifest`); verl's ``data.train_files`` / ``data.val_files`` name them and
``data.custom_cls`` names :class:`AtlasvaEnvDataset`. A row is what the ``atlasva`` agent loop needs to
start an episode (env, seed, env config) plus the keys verl's trainer reads (``raw_prompt``,
``data_source``, ``index``, ``agent_name``). Importable without verl (it is a plain torch Dataset).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

MANIFEST_FORMAT = "atlasva-verl-split"
AGENT_NAME = "atlasva"


def write_manifest(path: str | Path, *, env: str, env_config: dict[str, Any], split: str, seeds: Sequence[int],
                   level_hashes: Sequence[str], data_source: str | None = None) -> Path:
    """One split's levels (atomically written JSON)."""
    if len(seeds) != len(level_hashes):
        raise ValueError(f"{len(seeds)} seeds but {len(level_hashes)} level hashes")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": MANIFEST_FORMAT, "env": env, "env_config": env_config, "split": split,
           "data_source": data_source or env, "seeds": [int(s) for s in seeds],
           "level_hashes": [str(h) for h in level_hashes]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"atlasva split manifest not found: {path} (written by `atlasva train ... engine=verl`)")
    doc = json.loads(path.read_text())
    if doc.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not an atlasva split manifest (format {doc.get('format')!r})")
    return doc


def manifest_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for i, (seed, level) in enumerate(zip(doc["seeds"], doc["level_hashes"])):
        rows.append({
            "agent_name": AGENT_NAME,
            "data_source": doc["data_source"],
            "index": i,
            "env": doc["env"],
            "seed": int(seed),
            "env_config": json.dumps(doc["env_config"], sort_keys=True),  # a string: one type for every row
            "split": doc["split"],
            "level_hash": level,
            # verl sizes batches and logs prompts by raw_prompt; the real prompt is built by the agent loop
            "raw_prompt": [{"role": "user", "content": f"{doc['env']} level {level} (seed {seed})"}],
        })
    return rows


class AtlasvaEnvDataset(Dataset):
    """verl ``data.custom_cls``: ``(data_files, tokenizer, processor, config, max_samples)`` like RLHFDataset."""

    def __init__(self, data_files: str | Sequence[str], tokenizer: Any = None, processor: Any = None,
                 config: Any = None, max_samples: int = -1) -> None:
        files = [data_files] if isinstance(data_files, str | Path) else list(data_files)
        self.rows: list[dict[str, Any]] = []
        for f in files:
            self.rows.extend(manifest_rows(read_manifest(f)))
        if max_samples is not None and max_samples > 0:
            self.rows = self.rows[:max_samples]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return dict(self.rows[index])
