"""AtomVLA's action-conditioned latent world model and its energies (``atlasva vla worldmodel CONFIG``).

* **Encoder E** (frozen): ``policy`` — the SFT VLA's own vision tower (its soft-argmax keypoints of every
  view, or mean-pooled vision tokens without a keypoint path); or ``vjepa2`` — the V-JEPA 2 architecture of
  ``transformers`` (``VJEPA2Model``): real weights from a local folder (``atom.worldmodel.vjepa2_path``), or a
  tiny one trained here by V-JEPA's masked latent objective on the dataset's own frames (context tokens
  through the encoder, the predictor regresses the masked tokens of an EMA target encoder, L1). Latents are
  standardised per dimension on the training demos, so an L1 distance weighs every dimension alike.
* **Predictor P**: ẑ_{t+k}, ŝ_{t+k} = P(E(o_t), proprio_t, a_{t:t+k}) — an MLP with residual outputs,
  trained with teacher forcing (L1 to E(o_{t+k}) and proprio_{t+k}) plus an autoregressive rollout L1 over
  ``rollout_steps`` chunks (P fed its own ẑ, ŝ), as V-JEPA 2-AC trains its predictor.
* **Energies** (mean absolute latent difference): subgoal E_sub = ‖P(…) − E(g_k)‖₁ with g_k the boundary
  frame of the current subtask of that demo; final goal E_goal = ‖P(…) − E(g_final)‖₁.
* **Sanity gates** on demos held out of the predictor's training: the Spearman ρ of the predicted
  final-goal energy against time along each expert trajectory (it should fall: ρ < 0), and how often the
  expert chunk has a lower subgoal energy than a uniformly random chunk and than another demo's chunk
  (goal ≥ 90 %). Both are printed and stored in the run's ``summary.json``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atlasva.vla.atom.config import WorldModelSection
from atlasva.vla.atom.subtask_data import SubtaskLabels, load_subtask_labels

ENCODERS = ("policy", "vjepa2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- demos
@dataclass
class DemoData:
    """The logged demos the world model and post-training read, frames in dataset order."""

    images: np.ndarray  # uint8 [N, S, H, W, 3]
    actions: np.ndarray  # float32 [N, A], normalised as the SFT policy's
    states: np.ndarray | None  # float32 [N, sd], normalised
    episode: np.ndarray  # int64 [N]
    last: np.ndarray  # int64 [N]: the last frame of each frame's episode
    tasks: list[str]  # high-level instructions
    task_id: np.ndarray  # int64 [N]
    labels: SubtaskLabels
    normalizer: Any  # the SFT policy's (atlasva.vla.data.Normalizer)

    def normalize_actions(self, raw: np.ndarray) -> np.ndarray:
        from atlasva.vla.sim import ACTION_KEY

        return self.normalizer.normalize(ACTION_KEY, raw)

    def chunks(self, idx: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Expert chunks [B, horizon, A] from each frame (the last action repeated past the episode's end)
        and their validity [B, horizon]."""
        steps = idx[:, None] + np.arange(horizon)[None]
        valid = steps <= self.last[idx][:, None]
        return self.actions[np.minimum(steps, self.last[idx][:, None])], valid.astype(np.float32)


def load_demos(cfg: Any, normalizer: Any) -> DemoData:
    """The training demos of ``cfg`` with their subtask labels, normalised by the SFT policy's statistics."""
    from atlasva.vla.data import ChunkData, load_training_data
    from atlasva.vla.sim import ACTION_KEY, STATE_KEY, training_image_keys

    path = cfg.data.path or cfg.collect.dataset  # the data the SFT policy trained on
    images, actions, states, episodes, tasks, task_ids = load_training_data(
        path, training_image_keys(cfg), cfg.data.action_key, cfg.data.state_key, cfg.libero.image_transform,
        cfg.model.image_size)
    if images.ndim == 4:
        images = images[:, None]
    labels = load_subtask_labels(path)
    if len(labels) != len(actions):
        raise ValueError(f"{path}: {len(labels)} subtask labels for {len(actions)} frames; re-run segment")
    norm_actions = normalizer.normalize(ACTION_KEY, actions)
    norm_states = normalizer.normalize(STATE_KEY, states) if STATE_KEY in normalizer.stats else None
    last = ChunkData(images[:, :0], norm_actions, episodes, task_ids, tasks).last
    return DemoData(images, norm_actions, norm_states, episodes, last, tasks, task_ids, labels, normalizer)


def holdout_mask(data: DemoData, fraction: float) -> np.ndarray:
    """Frames of the last ``fraction`` of each task's demos (at least one demo of a task with two or more)."""
    from atlasva.vla.atom.progress import _split_episodes

    return _split_episodes(data.labels, fraction)


def sft_checkpoint(cfg: Any) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(run folder, tensors, state) of the SFT run this config names (``atlasva vla train``)."""
    from atlasva.runs import RunFolder
    from atlasva.vla.sim import cfg_name, run_config

    run = RunFolder.create(cfg_name(cfg), run_config(cfg), root=cfg.run.root, resume=True)
    loaded = run.load_checkpoint()
    if loaded is None:
        raise FileNotFoundError(f"no SFT checkpoint in {run.path}: run `atlasva vla train` with this config first")
    return run.path, *loaded


# ---------------------------------------------------------------------------------------------- encoders
def _to_float(images: Any) -> Any:
    """uint8 [B, S, H, W, 3] numpy → float [B, S, 3, H, W] in [0, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images))
    return x.permute(0, 1, 4, 2, 3).float().div_(255.0)


class PolicyEncoder:
    """E(o) = the SFT VLA's frozen observation features (:func:`atlasva.vla.atom.progress.observation_features`)."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def __call__(self, images: np.ndarray) -> Any:
        from atlasva.vla.atom.progress import observation_features

        return observation_features(self.model, _to_float(images))


def tiny_vjepa2_config(section: WorldModelSection, image_size: int, patch_size: int) -> Any:
    from transformers import VJEPA2Config

    return VJEPA2Config(
        crop_size=image_size, patch_size=patch_size, frames_per_clip=2, tubelet_size=2,
        hidden_size=section.vjepa2_hidden, num_hidden_layers=section.vjepa2_layers,
        num_attention_heads=section.vjepa2_heads, pred_hidden_size=section.vjepa2_hidden,
        pred_num_hidden_layers=section.vjepa2_pred_layers, pred_num_attention_heads=section.vjepa2_heads,
        num_pooler_layers=1, pred_num_mask_tokens=2,
    )


class VJEPA2Encoder:
    """E(o) from a ``transformers`` V-JEPA 2 encoder: every view resized to its crop, ImageNet-normalised,
    repeated over one tubelet; the output tokens averaged over each quarter of the patch grid (2 × 2
    pooling keeps where things are), views concatenated → [B, S·4·hidden]."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def tokens(self, images: Any) -> Any:
        """[B, N, hidden] encoder tokens of float [B, 3, H, W] frames."""
        return self.model.encoder(pixel_values_videos=vjepa2_pixels(self.model.config, images)).last_hidden_state

    def __call__(self, images: np.ndarray) -> Any:
        x = _to_float(images)
        b, s = x.shape[:2]
        tok = self.tokens(x.flatten(0, 1))  # [B*S, N, D]
        g = self.model.config.crop_size // self.model.config.patch_size
        grid = tok.reshape(b * s, g, g, -1)
        h = g // 2 or 1
        quads = [grid[:, :h, :h], grid[:, :h, h:], grid[:, h:, :h], grid[:, h:, h:]] if g > 1 else [grid]
        pooled = [q.mean(dim=(1, 2)) for q in quads if q.numel()]
        return _stack_views(pooled, b, s)


def vjepa2_pixels(config: Any, images: Any) -> Any:
    """float [B, 3, H, W] in [0, 1] → V-JEPA 2's normalised one-frame video [B, 1, 3, crop, crop] (the
    patch embedding repeats a frame over its tubelet)."""
    import torch
    import torch.nn.functional as F

    crop = config.crop_size
    if images.shape[-1] != crop:
        images = F.interpolate(images, size=(crop, crop), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images - mean) / std)[:, None]


def _stack_views(pooled: list[Any], b: int, s: int) -> Any:
    import torch

    return torch.cat(pooled, dim=-1).reshape(b, -1) if s else torch.zeros(b, 0)


def block_mask(grid: int, ratio: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(context, target) token indices of a grid × grid frame: random rectangles become the target until
    ``ratio`` of the tokens are covered (V-JEPA's block masking, one tubelet)."""
    n = grid * grid
    target = np.zeros((grid, grid), dtype=bool)
    want = max(1, min(n - 1, int(round(ratio * n))))
    while target.sum() < want:
        h, w = rng.integers(1, grid + 1, size=2)
        r, c = rng.integers(0, grid - h + 1), rng.integers(0, grid - w + 1)
        target[r:r + h, c:c + w] = True
        if target.sum() >= n:  # never mask everything: keep one context token
            target.flat[rng.integers(n)] = False
            break
    flat = target.reshape(-1)
    return np.flatnonzero(~flat), np.flatnonzero(flat)


def vjepa2_masked_loss(model: Any, target_model: Any, frames: Any, context: Any, target: Any) -> Any:
    """V-JEPA's objective on one batch: the online encoder sees only the ``context`` tokens, the predictor
    fills in the ``target`` tokens, L1 to the EMA target encoder's tokens there (no gradient)."""
    import torch

    video = vjepa2_pixels(model.config, frames)
    b = video.shape[0]
    ctx = torch.as_tensor(context)[None].expand(b, -1)
    tgt = torch.as_tensor(target)[None].expand(b, -1)
    emb = model.encoder.embeddings(video)  # [B, N, D]
    h = torch.gather(emb, 1, ctx[..., None].expand(-1, -1, emb.shape[-1]))
    for layer in model.encoder.layer:
        h = layer(h, position_mask=ctx)[0]
    h = model.encoder.layernorm(h)
    full = torch.zeros_like(emb).scatter(1, ctx[..., None].expand(-1, -1, emb.shape[-1]), h)
    pred = model.predictor(full, [ctx], [tgt]).last_hidden_state  # [B, Nt, D]
    with torch.no_grad():
        goal = target_model.encoder(pixel_values_videos=video).last_hidden_state
        goal = torch.gather(goal, 1, tgt[..., None].expand(-1, -1, goal.shape[-1]))
    return (pred - goal).abs().mean()


def train_vjepa2(section: WorldModelSection, images: np.ndarray, patch_size: int, seed: int = 0) -> tuple[Any, list[float]]:
    """A tiny V-JEPA 2 trained on ``images`` uint8 [N, S, H, W, 3] (every view a sample) by the masked latent
    objective; returns the model and its loss curve."""
    import copy

    import torch
    from tqdm import tqdm
    from transformers import VJEPA2Model

    size = images.shape[-2]
    if size % patch_size:
        raise ValueError(f"frames of {size} px do not split into {patch_size}-px patches (model.patch_size)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VJEPA2Model(tiny_vjepa2_config(section, size, patch_size))
    target = copy.deepcopy(model).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.04)
    rng = np.random.default_rng(seed)
    flat = images.reshape(-1, *images.shape[-3:])
    grid = size // patch_size
    losses = []
    model.train()
    for _ in tqdm(range(section.vjepa2_steps), desc="vjepa2", unit="step", leave=False, disable=None):
        idx = rng.integers(0, len(flat), size=section.vjepa2_batch_size)
        frames = torch.from_numpy(flat[idx]).permute(0, 3, 1, 2).float().div_(255.0)
        context, tgt = block_mask(grid, section.vjepa2_mask_ratio, rng)
        loss = vjepa2_masked_loss(model, target, frames, context, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # EMA target, as V-JEPA
            for p, q in zip(model.parameters(), target.parameters()):
                q.mul_(0.99).add_(p.detach(), alpha=0.01)
        losses.append(loss.item())
    return model.eval(), losses


def encode_all(encoder: Any, images: np.ndarray, batch: int = 128, desc: str = "encode") -> np.ndarray:
    import torch
    from tqdm import tqdm

    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(images), batch), desc=desc, unit="batch", leave=False, disable=None):
            out.append(encoder(images[i:i + batch]).float().numpy())
    return np.concatenate(out).astype(np.float32)


# ---------------------------------------------------------------------------------------------- predictor
def build_predictor(latent_dim: int, state_dim: int, horizon: int, action_dim: int, hidden: int, layers: int) -> Any:
    """MLP [z ⊕ s ⊕ flattened chunk] → [Δz ⊕ Δs] (the residual is added by :class:`WorldModel`)."""
    from torch import nn

    dims = [latent_dim + state_dim + horizon * action_dim] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.GELU()]
    mods.append(nn.Linear(dims[-1], latent_dim + state_dim))
    nn.init.zeros_(mods[-1].weight)
    nn.init.zeros_(mods[-1].bias)
    return nn.Sequential(*mods)


class WorldModel:
    """P and the energies over standardised latents (see the module docstring)."""

    def __init__(self, predictor: Any, latent_dim: int, state_dim: int, horizon: int, action_dim: int) -> None:
        self.predictor = predictor
        self.latent_dim, self.state_dim, self.horizon, self.action_dim = latent_dim, state_dim, horizon, action_dim

    def predict(self, z: Any, s: Any | None, chunk: Any) -> tuple[Any, Any | None]:
        """(ẑ_{t+k} [B, F], ŝ_{t+k} [B, sd] or None) from z [B, F], s [B, sd], chunk [B, k, A]."""
        import torch

        if chunk.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(f"chunks must be [B, {self.horizon}, {self.action_dim}], got {tuple(chunk.shape)}")
        parts = [z] + ([s] if self.state_dim else []) + [chunk.reshape(chunk.shape[0], -1)]
        delta = self.predictor(torch.cat(parts, dim=1))
        z_next = z + delta[:, :self.latent_dim]
        s_next = s + delta[:, self.latent_dim:] if self.state_dim else None
        return z_next, s_next

    @staticmethod
    def energy(z_pred: Any, z_goal: Any) -> Any:
        """Mean absolute difference [B] (the L1 energy, per latent dimension)."""
        return (z_pred - z_goal).abs().mean(dim=-1)


def predictor_loss(wm: WorldModel, z: Any, s: Any | None, chunks: Any, z_next: Any, s_next: Any | None,
                   rollout_weight: float) -> tuple[Any, dict[str, float]]:
    """Teacher forcing on the first chunk, rollout L1 on the following ones. ``chunks`` [B, R, k, A],
    ``z_next`` [B, R, F] (targets after each chunk), ``s_next`` [B, R, sd]."""
    zp, sp = wm.predict(z, s, chunks[:, 0])
    teacher = (zp - z_next[:, 0]).abs().mean() + ((sp - s_next[:, 0]).abs().mean() if sp is not None else 0.0)
    rollout = zp.new_zeros(())
    for r in range(1, chunks.shape[1]):
        zp, sp = wm.predict(zp, sp, chunks[:, r])
        rollout = rollout + (zp - z_next[:, r]).abs().mean() + ((sp - s_next[:, r]).abs().mean() if sp is not None else 0.0)
    if chunks.shape[1] > 1:
        rollout = rollout / (chunks.shape[1] - 1)
    return teacher + rollout_weight * rollout, {"teacher": float(teacher.detach()), "rollout": float(rollout.detach())}


def rollout_windows(data: DemoData, frames: np.ndarray, horizon: int, steps: int) -> np.ndarray:
    """The frames t of ``frames`` from which ``steps`` whole chunks fit inside the episode."""
    return frames[frames + steps * horizon <= data.last[frames]]


# ---------------------------------------------------------------------------------------------- gates
def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 for fewer than 3 points or a constant."""
    from scipy.stats import rankdata

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    rx, ry = rankdata(x), rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def gate_chunks(data: DemoData, usable: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gates' chunks at each of the ``usable`` frames: the expert's, a uniformly random one (raw actions in
    [−1, 1], normalised), and the expert chunk of a random state of another demo (of any other state when there
    is one demo only: a state of the same demo often has the same chunk, which would rank as a tie)."""
    rng = np.random.default_rng(seed)
    expert, _ = data.chunks(usable, k)
    random_chunk = data.normalize_actions(rng.uniform(-1.0, 1.0, size=expert.shape).astype(np.float32))
    episodes = data.episode[usable]
    others = np.empty_like(usable)
    for i, e in enumerate(episodes):
        pool = usable[episodes != e]
        if len(pool) == 0:
            pool = usable[usable != usable[i]] if len(usable) > 1 else usable
        others[i] = pool[rng.integers(len(pool))]
    shuffled, _ = data.chunks(others, k)
    return expert, random_chunk, shuffled


def sanity_gates(wm: WorldModel, latents: np.ndarray, data: DemoData, frames: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The world model's checks on the held-out ``frames`` (see the module docstring)."""
    import torch

    k = wm.horizon
    usable = frames[frames + k <= data.last[frames]]
    if len(usable) == 0:
        raise ValueError("no held-out frame has a whole chunk ahead of it: hold out more or longer demos")
    expert, random_chunk, shuffled = gate_chunks(data, usable, k, seed)
    z = torch.from_numpy(latents[usable])
    s = torch.from_numpy(data.states[usable]) if data.states is not None and wm.state_dim else None
    z_sub = torch.from_numpy(latents[data.labels.subgoal[usable]])
    z_fin = torch.from_numpy(latents[data.labels.final[usable]])
    with torch.no_grad():
        def energies(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            zp, _ = wm.predict(z, s, torch.from_numpy(chunk))
            return wm.energy(zp, z_sub).numpy(), wm.energy(zp, z_fin).numpy()

        e_sub, e_goal = energies(expert)
        r_sub, _ = energies(random_chunk)
        sh_sub, _ = energies(shuffled)
    rhos, rhos_encoded = [], []
    for e in np.unique(data.episode[usable]):
        sel = data.episode[usable] == e
        t = usable[sel]
        rhos.append(spearman(t.astype(float), e_goal[sel]))
        rhos_encoded.append(spearman(t.astype(float), np.abs(latents[t] - latents[data.labels.final[t]]).mean(1)))
    return {
        "heldout_states": int(len(usable)), "heldout_episodes": int(len(rhos)),
        "goal_energy_spearman_mean": float(np.mean(rhos)), "goal_energy_spearman_median": float(np.median(rhos)),
        "goal_energy_decreasing_share": float(np.mean(np.asarray(rhos) < 0)),
        "encoded_goal_distance_spearman_mean": float(np.mean(rhos_encoded)),
        "expert_beats_random": float(np.mean(e_sub < r_sub)),
        "expert_beats_shuffled": float(np.mean(e_sub < sh_sub)),
        "subgoal_energy_expert_mean": float(e_sub.mean()), "subgoal_energy_random_mean": float(r_sub.mean()),
        "subgoal_energy_shuffled_mean": float(sh_sub.mean()),
    }


# ---------------------------------------------------------------------------------------------- the stage
WM_NOT_IDENTITY = ("eval", "collect.workers", "atom.posttrain", "atom.worldmodel.num_threads")


def worldmodel_run(cfg: Any, resume: bool = True) -> Any:
    """The world model's run folder: this config without eval, worker counts and post-training settings."""
    from atlasva.config import to_dict
    from atlasva.runs import RunFolder
    from atlasva.vla.sim import cfg_name

    return RunFolder.create(f"{cfg_name(cfg)}-worldmodel", to_dict(cfg), root=cfg.run.root, resume=resume,
                            exclude=WM_NOT_IDENTITY)


def load_sft_model(tensors: dict[str, Any], state: dict[str, Any]) -> tuple[Any, Any]:
    """(AtlasVLA in eval mode, its Normalizer) of an SFT checkpoint."""
    from atlasva.vla.data import Normalizer
    from atlasva.vla.model import AtlasVLA, Geometry

    model = AtlasVLA(Geometry(**state["geometry"]))
    model.load_tensors({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}, state["geometry"])
    return model.eval(), Normalizer.from_dict(state["normalizer"])


def make_encoder(section: WorldModelSection, model: Any, tensors: dict[str, Any] | None = None,
                 state: dict[str, Any] | None = None) -> Any:
    """The frozen encoder: the SFT policy's tower, V-JEPA 2 from a local folder, or the tiny V-JEPA 2 stored
    in a world-model checkpoint (``tensors``/``state``)."""
    if section.encoder not in ENCODERS:
        raise ValueError(f"atom.worldmodel.encoder must be one of {ENCODERS}, got {section.encoder!r}")
    if section.encoder == "policy":
        return PolicyEncoder(model)
    from transformers import VJEPA2Config, VJEPA2Model

    if section.vjepa2_path:
        path = Path(section.vjepa2_path)
        if not path.exists():
            raise FileNotFoundError(f"atom.worldmodel.vjepa2_path {path} does not exist (a local transformers V-JEPA 2 "
                                    f"folder with config.json and model.safetensors)")
        return VJEPA2Encoder(VJEPA2Model.from_pretrained(str(path)))
    if tensors is None or state is None or "vjepa2_config" not in state:
        raise ValueError("no V-JEPA 2 encoder: give atom.worldmodel.vjepa2_path or train one (atlasva vla worldmodel)")
    model_v = VJEPA2Model(VJEPA2Config(**state["vjepa2_config"]))
    import torch

    model_v.load_state_dict({k[len("vjepa2/"):]: torch.as_tensor(v) for k, v in tensors.items() if k.startswith("vjepa2/")})
    return VJEPA2Encoder(model_v)


def train_world_model(cfg: Any) -> dict[str, Any]:
    """``atlasva vla worldmodel``: encoder (trained here when it is a tiny V-JEPA 2), predictor, gates."""
    import torch
    from safetensors.numpy import load_file, save_file
    from tqdm import tqdm

    from atlasva.vla.sim import _optim_tensors, _restore_optim

    sec = cfg.atom.worldmodel
    if sec.encoder not in ENCODERS:
        raise ValueError(f"atom.worldmodel.encoder must be one of {ENCODERS}, got {sec.encoder!r}")
    if sec.rollout_steps < 1:
        raise ValueError(f"atom.worldmodel.rollout_steps must be ≥ 1, got {sec.rollout_steps}")
    torch.set_num_threads(max(1, sec.num_threads))
    t0 = time.time()
    sft_path, sft_tensors, sft_state = sft_checkpoint(cfg)
    model, normalizer = load_sft_model(sft_tensors, sft_state)
    data = load_demos(cfg, normalizer)
    run = worldmodel_run(cfg, resume=cfg.run.resume)
    horizon = sec.horizon or model.geometry.chunk
    held = holdout_mask(data, sec.holdout_fraction)
    extra_tensors: dict[str, Any] = {}
    extra_state: dict[str, Any] = {}
    timings: dict[str, float] = {}

    # -- encoder (a tiny V-JEPA 2 is trained once; its weights live in the run folder)
    enc_file = run.path / "encoder.safetensors"
    if sec.encoder == "vjepa2" and not sec.vjepa2_path:
        if enc_file.exists():
            extra_tensors = dict(load_file(str(enc_file)))
            extra_state = json.loads((run.path / "encoder.json").read_text())
            _progress(f"worldmodel: reusing the V-JEPA 2 encoder in {run.path}")
        else:
            t = time.time()
            vj, curve = train_vjepa2(sec, data.images[~held], model.geometry.patch_size, sec.seed)
            extra_tensors = {f"vjepa2/{k}": v.detach().numpy() for k, v in vj.state_dict().items()}
            extra_state = {"vjepa2_config": vj.config.to_dict(), "vjepa2_loss_first": curve[0], "vjepa2_loss_last": curve[-1]}
            save_file(extra_tensors, str(enc_file))
            (run.path / "encoder.json").write_text(json.dumps(extra_state))
            timings["vjepa2_train_s"] = time.time() - t
            _progress(f"worldmodel: V-JEPA 2 trained by masked latent prediction, L1 {curve[0]:.3f} → {curve[-1]:.3f} "
                      f"({timings['vjepa2_train_s']:.0f}s)")
    encoder = make_encoder(sec, model, extra_tensors, extra_state)

    # -- latents of every frame, standardised on the training demos
    t = time.time()
    raw = encode_all(encoder, data.images, desc="latents")
    mean, std = raw[~held].mean(0), raw[~held].std(0) + 1e-4
    latents = ((raw - mean) / std).astype(np.float32)
    timings["encode_s"] = time.time() - t
    save_file({"latents": latents}, str(run.path / "latents.safetensors"))

    # -- predictor: teacher forcing + rollout L1, resumable
    sd = data.states.shape[1] if data.states is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sec.seed)
        predictor = build_predictor(latents.shape[1], sd, horizon, data.actions.shape[1], sec.hidden, sec.layers)
    wm = WorldModel(predictor, latents.shape[1], sd, horizon, data.actions.shape[1])
    opt = torch.optim.AdamW(predictor.parameters(), lr=sec.lr, weight_decay=1e-4)
    start = 0
    ckpt = run.load_checkpoint()
    if ckpt is not None:
        tensors, state = ckpt
        predictor.load_state_dict({k[len("predictor/"):]: torch.as_tensor(v) for k, v in tensors.items()
                                   if k.startswith("predictor/")})
        _restore_optim(opt, tensors, state["optimizer_groups"])
        start = int(state["step"])
        run.truncate_metrics(start)
        _progress(f"worldmodel: resuming {run.path} from step {start}")
    windows = rollout_windows(data, np.flatnonzero(~held), horizon, sec.rollout_steps)
    if len(windows) == 0:
        raise ValueError(f"no training demo is long enough for {sec.rollout_steps} chunks of {horizon} steps")
    states_t = torch.from_numpy(data.states) if data.states is not None else None

    def batch(idx: np.ndarray) -> tuple[Any, ...]:
        steps = idx[:, None] + horizon * np.arange(sec.rollout_steps + 1)[None]  # [B, R+1] chunk starts
        chunks = np.stack([data.chunks(steps[:, r], horizon)[0] for r in range(sec.rollout_steps)], axis=1)
        z = torch.from_numpy(latents[steps])
        s = states_t[torch.from_numpy(steps)] if states_t is not None else None
        return (z[:, 0], s[:, 0] if s is not None else None, torch.from_numpy(chunks), z[:, 1:],
                s[:, 1:] if s is not None else None)

    def state_json(step: int) -> dict[str, Any]:
        return {"encoder": sec.encoder, "vjepa2_path": sec.vjepa2_path, **extra_state, "latent_mean": mean.tolist(),
                "latent_std": std.tolist(), "latent_dim": int(latents.shape[1]), "state_dim": sd, "horizon": horizon,
                "action_dim": int(data.actions.shape[1]), "hidden": sec.hidden, "layers": sec.layers,
                "sft_run": str(sft_path), "optimizer_groups": _optim_tensors(opt)[1]}

    def save(step: int) -> None:
        tensors = {f"predictor/{k}": v for k, v in predictor.state_dict().items()}
        tensors.update(_optim_tensors(opt)[0])
        run.save_checkpoint(step, tensors, state_json(step))

    t = time.time()
    predictor.train()
    rows: list[dict[str, float]] = []
    bar = tqdm(range(start, sec.steps), desc="world model", unit="step", disable=None)
    for step in bar:
        rng = np.random.default_rng([sec.seed, step])
        loss, parts = predictor_loss(wm, *batch(rng.choice(windows, size=min(sec.batch_size, len(windows)))),
                                     rollout_weight=sec.rollout_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rows.append(parts)
        done = step + 1
        if done % 100 == 0 or done == sec.steps:
            means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            run.log_metrics(done, {"wm/teacher_l1": means["teacher"], "wm/rollout_l1": means["rollout"]})
            bar.set_postfix(teacher=f"{means['teacher']:.3f}", rollout=f"{means['rollout']:.3f}")
            rows = []
        if done % 1000 == 0 or done == sec.steps:
            save(done)
    if start >= sec.steps and not run.checkpoints():
        save(start)
    timings["predictor_train_s"] = time.time() - t
    predictor.eval()
    gates = sanity_gates(wm, latents, data, np.flatnonzero(held), sec.seed)
    with torch.no_grad():  # the same losses on the held-out demos: is P fitting or memorising?
        hw = rollout_windows(data, np.flatnonzero(held), horizon, sec.rollout_steps)
        gates["heldout_teacher_l1"], gates["heldout_rollout_l1"] = (
            predictor_loss(wm, *batch(hw), rollout_weight=sec.rollout_weight)[1].values() if len(hw) else (None, None))
    summary = {"gates": gates, "gates_passed": gates["expert_beats_random"] >= 0.9 and gates["expert_beats_shuffled"] >= 0.9
               and gates["goal_energy_spearman_mean"] < 0, "encoder": sec.encoder, "latent_dim": int(latents.shape[1]),
               "horizon": horizon, "train_windows": int(len(windows)), "wall_time_s": time.time() - t0, **timings}
    (run.path / "summary.json").write_text(json.dumps(summary, indent=1))
    run.plot_metrics(["wm/teacher_l1", "wm/rollout_l1"])
    run.close()
    _progress(f"worldmodel ({sec.encoder}): final-goal energy along held-out expert demos, Spearman ρ "
              f"{gates['goal_energy_spearman_mean']:+.3f} (falling in {gates['goal_energy_decreasing_share']:.0%} of "
              f"{gates['heldout_episodes']} demos); expert chunk's subgoal energy below a random chunk's in "
              f"{gates['expert_beats_random']:.1%}, below another demo's chunk in {gates['expert_beats_shuffled']:.1%} "
              f"of {gates['heldout_states']} states; gates {'passed' if summary['gates_passed'] else 'NOT passed'} "
              f"({summary['wall_time_s']:.0f}s) → {run.path}")
    return summary


@dataclass
class LoadedWorldModel:
    model: WorldModel
    latents: np.ndarray  # [N, F] standardised latents of every demo frame
    state: dict[str, Any]
    path: Path


def load_world_model(cfg: Any) -> LoadedWorldModel:
    import torch
    from safetensors.numpy import load_file

    run = worldmodel_run(cfg, resume=True)
    loaded = run.load_checkpoint()
    if loaded is None or not (run.path / "summary.json").exists():
        raise FileNotFoundError(f"no trained world model in {run.path}: run `atlasva vla worldmodel` with this config first")
    tensors, state = loaded
    predictor = build_predictor(state["latent_dim"], state["state_dim"], state["horizon"], state["action_dim"],
                                state["hidden"], state["layers"])
    predictor.load_state_dict({k[len("predictor/"):]: torch.as_tensor(v) for k, v in tensors.items() if k.startswith("predictor/")})
    predictor.eval()
    for p in predictor.parameters():
        p.requires_grad_(False)
    wm = WorldModel(predictor, state["latent_dim"], state["state_dim"], state["horizon"], state["action_dim"])
    latents = load_file(str(run.path / "latents.safetensors"))["latents"]
    return LoadedWorldModel(wm, latents, state, run.path)


__all__ = ["DemoData", "WorldModel", "load_world_model", "sanity_gates", "spearman", "train_world_model"]
