"""AtlasVLA model: shapes through every block, bad input, flow determinism, VGGT key mapping."""

from __future__ import annotations

import importlib

import pytest

torch = importlib.import_module("torch")  # the test extras install it; a missing one fails
importlib.import_module("transformers")  # installed by `make test`

from safetensors.torch import save_file  # noqa: E402

from atlasva.vla.aggregator import Aggregator  # noqa: E402
from atlasva.vla.model import AtlasVLA, build_model, count_parameters, make_geometry  # noqa: E402
from atlasva.vla.vggt_weights import load_vggt_weights  # noqa: E402

torch.set_num_threads(1)

SMALL = dict(image_size=32, patch_size=8, vision_dim=32, dim=32, heads=2, text_hidden=32, text_heads=2,
             text_kv_heads=1, text_intermediate=64, decoder_dim=32, decoder_heads=2, decoder_layers=1, chunk=4)
# the smallest model that still has every part, for the tests that train for a few hundred steps
FIT = dict(image_size=24, patch_size=8, vision_dim=16, dim=16, heads=2, depth=1, mlp_ratio=2.0, num_register_tokens=1,
           text_hidden=16, text_layers=1, text_heads=2, text_kv_heads=1, text_intermediate=32, decoder_dim=32,
           decoder_heads=2, decoder_layers=1, chunk=1, action_dim=2)


@pytest.fixture(scope="module")
def tiny() -> AtlasVLA:
    return build_model(make_geometry("tiny"), seed=0).eval()


def test_libero_layout_shapes_through_every_block(tiny: AtlasVLA) -> None:
    g = tiny.geometry
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ids, mask = tiny.text.tokenize(["put the bowl on the plate", "open the top drawer"])
    with torch.no_grad():
        x = tiny.check_images(images)
        assert x.shape == (2, 1, 3, 224, 224) and x.dtype == torch.float32
        vis = tiny.vision((x[:, 0] - tiny.pixel_mean) / tiny.pixel_std)
        assert vis.shape == (2, 196, g.vision_dim)
        text = tiny.text(ids, mask)
        assert text.shape == (2, ids.shape[1], g.text_hidden)
        layers = tiny.aggregator(tiny.vision_adapter(vis)[:, None], tiny.grid)
        assert len(layers) == g.depth
        assert layers[-1].shape == (2, 1, 1 + g.num_register_tokens + 196, 2 * g.dim)
        context, pad, query, points = tiny.encode(images, ids, mask)
        assert query is None and points is None  # no keypoint path
        assert context.shape == (2, 1 + g.num_register_tokens + 196 + ids.shape[1], g.decoder_dim)
        assert pad.dtype == torch.bool and pad.shape == context.shape[:2]
        actions = tiny.predict(images, ["put the bowl on the plate", "open the top drawer"])
    assert actions.shape == (2, 8, 7) and actions.dtype == torch.float32
    assert torch.isfinite(actions).all()


def test_multi_frame_input_and_uint8() -> None:
    model = build_model(make_geometry("tiny", **SMALL), seed=1).eval()
    frames = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    out = model.predict(frames, ["a", "b"])
    assert out.shape == (2, 4, 7)


def test_conv_stem_keeps_the_patch_grid_and_sees_a_single_pixel() -> None:
    model = build_model(make_geometry("tiny", **{**SMALL, "vision": "conv"}), seed=0).eval()
    stem = model.vision.stem
    assert sum(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in stem) == 3  # log2(patch 8)
    x = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        tokens = model.vision(x)
        assert tokens.shape == (1, 16, 32)  # (32/8)^2 tokens, like the patch embedding
        lit = x.clone()
        lit[0, 0, 11, 19] = 1.0  # one red pixel inside patch row 1, column 2 (rows 8-15, columns 16-23)
        moved = (model.vision(lit) - tokens).abs().sum(-1)[0].view(4, 4)
    # local: the pixel's own token changes; a token beyond the stem's receptive field hardly does
    # (GroupNorm's statistics are the only path there)
    assert moved[1, 2] > 5 * moved[3, 0]
    assert model.predict(torch.rand(1, 3, 32, 32), ["x"]).shape == (1, 4, 7)
    with pytest.raises(ValueError, match="power-of-two patch_size"):
        make_geometry("tiny", vision="conv", image_size=42, patch_size=14)


def test_bad_images_and_text_are_clear_errors(tiny: AtlasVLA) -> None:
    with pytest.raises(ValueError, match="channels-last"):
        tiny.predict(torch.rand(1, 224, 224, 3), ["x"])
    with pytest.raises(ValueError, match="224x224"):
        tiny.predict(torch.rand(1, 3, 128, 128), ["x"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny.predict(torch.rand(1, 3, 224, 224) * 255, ["x"])
    with pytest.raises(ValueError, match="limit of 64"):
        tiny.text.tokenize(["pick " * 40])
    with pytest.raises(ValueError, match="instructions for a batch"):
        tiny.predict(torch.rand(2, 3, 224, 224), ["only one"])


def test_state_is_required_when_configured() -> None:
    model = build_model(make_geometry("tiny", state_dim=4, **SMALL))
    ids, mask = model.text.tokenize(["a"])
    with pytest.raises(ValueError, match="proprioception"):
        model(torch.rand(1, 3, 32, 32), ids, mask)
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        model(torch.rand(1, 3, 32, 32), ids, mask, state=torch.zeros(1, 3))


def test_flow_matching_is_deterministic_under_a_seed() -> None:
    model = build_model(make_geometry("tiny", head="flow", flow_steps=4, **SMALL), seed=2).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = model.predict(images, ["a", "b"], generator=torch.Generator().manual_seed(7))
    b = model.predict(images, ["a", "b"], generator=torch.Generator().manual_seed(7))
    c = model.predict(images, ["a", "b"], generator=torch.Generator().manual_seed(8))
    assert a.shape == (2, 4, 7)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the same seed gives the same weights
    again = build_model(make_geometry("tiny", head="flow", flow_steps=4, **SMALL), seed=2).eval()
    assert torch.equal(again.predict(images, ["a", "b"], generator=torch.Generator().manual_seed(7)), a)


@pytest.mark.parametrize("head", ["l1", "flow"])
def test_losses_backpropagate(head: str) -> None:
    model = build_model(make_geometry("tiny", head=head, state_dim=3, **SMALL))
    ids, mask = model.text.tokenize(["a", "a longer instruction"])
    target = torch.randn(2, 4, 7)
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float32)
    loss = model.loss(torch.rand(2, 3, 32, 32), ids, mask, target, torch.randn(2, 3),
                      generator=torch.Generator().manual_seed(0), action_mask=valid)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert model.action_queries.grad is not None and model.action_queries.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[B, 4, 7\]"):
        model.loss(torch.rand(2, 3, 32, 32), ids, mask, torch.randn(2, 5, 7))


def test_freeze_switches() -> None:
    model = build_model(make_geometry("tiny", **SMALL))
    model.set_frozen(vision=True, text=True, aggregator=False)
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert not any(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.aggregator.parameters())
    assert model.action_queries.requires_grad


def test_checkpoint_of_another_geometry_is_refused() -> None:
    a = build_model(make_geometry("tiny", **SMALL))
    b = build_model(make_geometry("tiny", **{**SMALL, "chunk": 6}))
    b.load_tensors(a.state_dict() | {"action_queries": b.action_queries.detach()}, None)  # shapes fit: loads
    with pytest.raises(ValueError, match="another geometry.*chunk"):
        b.load_tensors(a.state_dict(), a.geometry.to_dict())
    with pytest.raises(ValueError, match="action_queries"):
        b.load_tensors(a.state_dict(), None)


def test_size_presets_geometry() -> None:
    with pytest.raises(ValueError, match="unknown model size"):
        make_geometry("huge")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        make_geometry("tiny", image_size=100)
    with torch.device("meta"):  # no memory: count the vggt-1b geometry's parameters
        agg = Aggregator(1024, 24, 16)
        model = AtlasVLA(make_geometry("vggt-1b"))
    # VGGT-1B's aggregator blocks (24 frame + 24 global ViT-L blocks with qk-norm + special tokens)
    assert count_parameters(agg) == count_parameters(model.aggregator)
    assert 600e6 < count_parameters(model.aggregator) < 610e6
    assert 300e6 < count_parameters(model.vision) < 310e6  # DINOv2 ViT-L/14 with registers
    assert 590e6 < count_parameters(model.text) < 600e6  # Qwen3-0.6B geometry


# ---------------------------------------------------------------------------------------------- VGGT
def _vggt_block(prefix: str, dim: int, hidden: int, qk_norm: bool, gen: torch.Generator) -> dict[str, torch.Tensor]:
    hd = dim // 2
    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)
    out = {
        f"{prefix}.norm1.weight": r(dim), f"{prefix}.norm1.bias": r(dim),
        f"{prefix}.attn.qkv.weight": r(3 * dim, dim), f"{prefix}.attn.qkv.bias": r(3 * dim),
        f"{prefix}.attn.proj.weight": r(dim, dim), f"{prefix}.attn.proj.bias": r(dim),
        f"{prefix}.ls1.gamma": r(dim), f"{prefix}.norm2.weight": r(dim), f"{prefix}.norm2.bias": r(dim),
        f"{prefix}.mlp.fc1.weight": r(hidden, dim), f"{prefix}.mlp.fc1.bias": r(hidden),
        f"{prefix}.mlp.fc2.weight": r(dim, hidden), f"{prefix}.mlp.fc2.bias": r(dim), f"{prefix}.ls2.gamma": r(dim),
    }
    if qk_norm:
        for n in ("q_norm", "k_norm"):
            out[f"{prefix}.attn.{n}.weight"] = r(hd)
            out[f"{prefix}.attn.{n}.bias"] = r(hd)
    return out


def synthetic_vggt(dim: int = 32, depth: int = 2, patch: int = 14, pos_grid: int = 4, registers: int = 4,
                   vit_depth: int = 1) -> dict[str, torch.Tensor]:
    """A tiny checkpoint written with facebookresearch/vggt's key names (aggregator + DINOv2 + heads)."""
    gen = torch.Generator().manual_seed(123)
    sd: dict[str, torch.Tensor] = {
        "aggregator.camera_token": torch.randn(1, 2, 1, dim, generator=gen),
        "aggregator.register_token": torch.randn(1, 2, registers, dim, generator=gen),
        "aggregator.patch_embed.cls_token": torch.randn(1, 1, dim, generator=gen),
        "aggregator.patch_embed.pos_embed": torch.randn(1, 1 + pos_grid**2, dim, generator=gen),
        "aggregator.patch_embed.register_tokens": torch.randn(1, registers, dim, generator=gen),
        "aggregator.patch_embed.mask_token": torch.zeros(1, dim),
        "aggregator.patch_embed.patch_embed.proj.weight": torch.randn(dim, 3, patch, patch, generator=gen),
        "aggregator.patch_embed.patch_embed.proj.bias": torch.randn(dim, generator=gen),
        "aggregator.patch_embed.norm.weight": torch.randn(dim, generator=gen),
        "aggregator.patch_embed.norm.bias": torch.randn(dim, generator=gen),
        "camera_head.trunk.0.norm1.weight": torch.randn(2 * dim, generator=gen),
        "depth_head.projects.0.weight": torch.randn(8, 2 * dim, 1, 1, generator=gen),
        "point_head.projects.0.weight": torch.randn(8, 2 * dim, 1, 1, generator=gen),
        "track_head.feature_extractor.norm.weight": torch.randn(dim, generator=gen),
    }
    for i in range(vit_depth):
        sd.update(_vggt_block(f"aggregator.patch_embed.blocks.{i}", dim, 4 * dim, False, gen))
    for i in range(depth):
        sd.update(_vggt_block(f"aggregator.frame_blocks.{i}", dim, 4 * dim, True, gen))
        sd.update(_vggt_block(f"aggregator.global_blocks.{i}", dim, 4 * dim, True, gen))
    return sd


VIT = dict(image_size=56, patch_size=14, vision="vit", vision_dim=32, vision_depth=1, vision_heads=2, vision_pos_grid=4,
           dim=32, depth=2, heads=2, text_hidden=32, text_heads=2, text_kv_heads=1, text_intermediate=64,
           decoder_dim=32, decoder_heads=2, decoder_layers=1, chunk=4)


def test_vggt_loader_maps_every_tensor(tmp_path) -> None:
    sd = synthetic_vggt()
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    model = build_model(make_geometry("tiny", **VIT), seed=0)
    report = load_vggt_weights(model, tmp_path)  # a folder holding model.safetensors, as on the hub
    own = model.state_dict()
    for key, value in sd.items():
        if key.startswith("aggregator.patch_embed."):
            assert torch.equal(own["vision." + key[len("aggregator.patch_embed."):]], value), key
        elif key.startswith("aggregator."):
            assert torch.equal(own[key], value), key
    assert sorted(report.skipped) == sorted(k for k in sd if k.endswith("weight") and "_head." in k)
    expected = {k for k in own if k.startswith(("aggregator.", "vision."))}
    assert set(report.loaded) == expected
    out = model.eval().predict(torch.rand(1, 3, 56, 56), ["go"])
    assert out.shape == (1, 4, 7) and torch.isfinite(out).all()


def test_vggt_loader_refuses_other_geometries(tmp_path) -> None:
    model = build_model(make_geometry("tiny", **VIT), seed=0)
    with pytest.raises(ValueError, match="no place for.*frame_blocks.2"):
        load_vggt_weights(model, synthetic_vggt(depth=3))
    with pytest.raises(ValueError, match="lacks tensors.*frame_blocks.1"):
        load_vggt_weights(model, synthetic_vggt(depth=1))
    with pytest.raises(ValueError, match=r"shape.*expects"):
        load_vggt_weights(model, synthetic_vggt(registers=2))
    with pytest.raises(ValueError, match="does not know"):
        load_vggt_weights(model, synthetic_vggt() | {"something.else": torch.zeros(1)})
    with pytest.raises(FileNotFoundError):
        load_vggt_weights(model, tmp_path / "missing.safetensors")
    # a patch-embedding model keeps its own encoder and declares VGGT's DINOv2 tensors skipped
    patch_model = build_model(make_geometry("tiny", **{**VIT, "vision": "patch"}), seed=0)
    report = load_vggt_weights(patch_model, synthetic_vggt())
    assert any(k.startswith("aggregator.patch_embed.") for k in report.skipped)
    assert not any(k.startswith("vision.") for k in report.loaded)


def test_pretrained_vit_from_a_file(tmp_path) -> None:
    from atlasva.vla.vggt_weights import load_vision_weights

    donor = build_model(make_geometry("tiny", **VIT), seed=5)
    sd = {f"backbone.{k}": v.clone() for k, v in donor.vision.state_dict().items()}
    save_file(sd, str(tmp_path / "dinov2.safetensors"))
    model = build_model(make_geometry("tiny", **VIT), seed=0)
    report = load_vision_weights(model, tmp_path / "dinov2.safetensors")
    assert len(report.loaded) == len(sd)
    for k, v in donor.vision.state_dict().items():
        assert torch.equal(model.vision.state_dict()[k], v), k
    deeper = build_model(make_geometry("tiny", **{**VIT, "vision_depth": 2}), seed=0)
    with pytest.raises(ValueError, match="missing.*blocks.1"):
        load_vision_weights(deeper, tmp_path / "dinov2.safetensors")


def test_text_encoder_from_a_local_transformers_folder(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    words = ["<pad>", "<unk>", "open", "the", "drawer", "reach", "goal"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(tmp_path)
    Qwen3Model(Qwen3Config(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=1, head_dim=16, intermediate_size=64)).save_pretrained(tmp_path)
    model = build_model(make_geometry("tiny", **{**SMALL, "text_path": str(tmp_path), "max_text_tokens": 4}))
    assert model.text.hidden_size == 32
    ids, mask = model.text.tokenize(["open the drawer", "reach"])
    assert ids.tolist() == [[2, 3, 4], [5, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert model.predict(torch.rand(2, 3, 32, 32), ["open the drawer", "reach"]).shape == (2, 4, 7)
    with pytest.raises(ValueError, match="limit of 4"):
        model.text.tokenize(["open the drawer open the drawer"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model(make_geometry("tiny", **{**SMALL, "text_path": str(tmp_path / "nope")}))


# ---------------------------------------------------------------------------------------------- seeing small things
def test_spatial_soft_argmax_returns_a_planted_blob() -> None:
    from atlasva.vla.encoders import spatial_soft_argmax

    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 2, 48, 40, generator=gen)  # background in [0, 1)
    blobs = [(5, 7), (30, 33), (47, 0), (0, 39), (20, 20), (11, 26)]  # (row, col) per map
    for i, (r, c) in enumerate(blobs):
        maps[i // 2, i % 2, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] += 3.0  # a bright 3×3 blob
        maps[i // 2, i % 2, r, c] += 1.0  # its peak
    points = spatial_soft_argmax(maps, temperature=0.1)
    assert points.shape == (3, 2, 2)
    for i, (r, c) in enumerate(blobs):
        x, y = points[i // 2, i % 2].tolist()
        col, row = (x + 1) / 2 * 39, (y + 1) / 2 * 47  # back to pixel units: x spans the 40 columns
        assert abs(col - c) < 0.7 and abs(row - r) < 0.7, (i, col, row, c, r)
    flat = spatial_soft_argmax(torch.zeros(1, 1, 5, 5))  # no peak: the centre
    assert torch.allclose(flat, torch.zeros(1, 1, 2), atol=1e-6)


def _blob_frames(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames with a 3×3 red blob on a noisy grey background, and the blob's (x, y) in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    frames = 0.4 + 0.1 * torch.rand(n, 3, size, size, generator=gen)
    where = torch.randint(2, size - 2, (n, 2), generator=gen)  # (row, col)
    for i, (r, c) in enumerate(where.tolist()):
        frames[i, :, r - 1:r + 2, c - 1:c + 2] = torch.tensor([1.0, 0.1, 0.1])[:, None, None]
    return frames, (where.flip(1).float() / (size - 1) * 2 - 1)


def _fit_blob_regression(geometry_overrides: dict, steps: int) -> tuple[float, float, float]:
    """(training, held-out, predict-the-mean) error of a tiny AtlasVLA regressing the blob's position."""
    model = build_model(make_geometry("tiny", **{**FIT, **geometry_overrides}), seed=0)
    train_x, train_y = _blob_frames(48, 24, seed=1)
    held_x, held_y = _blob_frames(32, 24, seed=2)
    ids, mask = model.text.tokenize(["find the blob"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        idx = torch.randint(0, 48, (16,), generator=gen)
        loss = model.loss(train_x[idx], ids.expand(16, -1), mask.expand(16, -1), train_y[idx, None])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    def err(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            pred = model(x, ids.expand(len(x), -1), mask.expand(len(x), -1))[:, 0]
        return float((pred - y).norm(dim=1).mean())

    return err(train_x, train_y), err(held_x, held_y), float((held_y - train_y.mean(0)).norm(dim=1).mean())


def test_keypoint_model_fits_a_planted_blob_regression() -> None:
    # The model without keypoints (patch tokens only; L1 or MSE) memorises some training frames but stays at
    # the mean predictor's error on held-out ones (measured: 1.1-1.2x after 300 steps); the keypoint path
    # reaches the decoder's queries directly (0.06x held-out after 200 steps).
    train, held, mean = _fit_blob_regression({"keypoints": 4, "keypoint_map": 24, "keypoint_channels": 8, "head": "mse"},
                                             steps=200)
    assert train < 0.15 * mean and held < 0.2 * mean, (train, held, mean)


def test_keypoint_path_shapes_and_checks() -> None:
    model = build_model(make_geometry("tiny", **{**SMALL, "keypoints": 3, "keypoint_map": 16, "views": 2,
                                                 "state_dim": 4, "aux_dim": 5}), seed=0).eval()
    images = torch.rand(2, 2, 3, 32, 32)
    ids, mask = model.text.tokenize(["a", "b"])
    points = model.keypoints(images)
    assert points.shape == (2, 2, 3, 2) and points.abs().max() <= 1
    enc = model.encode(images, ids, mask, torch.zeros(2, 4))
    assert enc.query is not None and enc.query.shape == (2, 32)
    assert model.aux(enc).shape == (2, 5)
    terms = model.loss_terms(images, ids, mask, torch.zeros(2, 4, 7), torch.zeros(2, 4), aux_target=torch.ones(2, 5),
                             aux_weight=0.5)
    assert set(terms) == {"loss", "action", "aux"} and all(torch.isfinite(v) and v > 0 for v in terms.values())
    assert torch.allclose(terms["loss"], terms["action"] + 0.5 * terms["aux"])
    with pytest.raises(ValueError, match=r"reads 2 view\(s\)"):
        model.encode(images[:, :1], ids, mask, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="aux_target"):
        model.loss_terms(images, ids, mask, torch.zeros(2, 4, 7), torch.zeros(2, 4), aux_target=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="must divide image_size"):
        make_geometry("tiny", **{**SMALL, "keypoints": 3, "keypoint_map": 12})
    # a model without the new parts initialises exactly as before they existed (they are created last)
    plain = build_model(make_geometry("tiny", **SMALL), seed=0)
    with_kp = build_model(make_geometry("tiny", **{**SMALL, "keypoints": 3, "keypoint_map": 16}), seed=0)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, with_kp.state_dict()[k]), k


def test_flow_times_lean_towards_noise() -> None:
    from atlasva.vla.model import flow_times

    t = flow_times(torch.rand(200_000, generator=torch.Generator().manual_seed(0)))
    assert 0.001 <= t.min() and t.max() <= 1.0
    assert abs(t.mean().item() - 0.6) < 0.005  # Beta(1.5, 1) mean 0.6 (t = 1 is noise)
    assert abs((t > 0.5).float().mean().item() - (1 - 0.5**1.5)) < 0.005


@pytest.mark.parametrize("head", ["flow", "l1"])
def test_flow_head_fits_a_bimodal_target_where_regression_averages(head: str) -> None:
    # every input has two right answers, (1, 1) and (-1, -1): the flow head's samples land on them, a
    # regression head's single answer lands between them
    model = build_model(make_geometry("tiny", **{**FIT, "head": head, "flow_steps": 10}), seed=0)
    image = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    ids, mask = model.text.tokenize(["go"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    batch = 32
    for _ in range(200):
        modes = torch.where(torch.rand(batch, 1, 1, generator=gen) < 0.5, 1.0, -1.0).expand(batch, 1, 2)
        loss = model.loss(image.expand(batch, -1, -1, -1), ids.expand(batch, -1), mask.expand(batch, -1), modes,
                          generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = model.predict(image.expand(256, -1, -1, -1), ["go"] * 256, generator=torch.Generator().manual_seed(2))[:, 0]
    near_mode = torch.minimum((out - 1).norm(dim=1), (out + 1).norm(dim=1)) < 0.35
    if head == "flow":
        assert near_mode.float().mean() > 0.6
        assert 0.2 < (out.sum(1) > 0).float().mean() < 0.8  # both modes, not one
    else:
        assert near_mode.float().mean() < 0.1


def test_aux_head_on_the_keypoints_trains_the_stem_without_the_decoder() -> None:
    geo = {**SMALL, "keypoints": 3, "keypoint_map": 16, "state_dim": 4, "aux_dim": 2}
    images = torch.rand(2, 1, 3, 32, 32)
    ids, mask = build_model(make_geometry("tiny", **SMALL)).text.tokenize(["a", "b"])

    def aux_grads(source: str) -> dict[str, float]:
        model = build_model(make_geometry("tiny", **{**geo, "aux_source": source}), seed=0)
        enc = model.encode(images, ids, mask, torch.zeros(2, 4))
        model.aux(enc).pow(2).sum().backward()
        return {part: sum(float(p.grad.abs().sum()) for p in getattr(model, part).parameters() if p.grad is not None)
                for part in ("keypoint_encoder", "decoder", "aggregator")}

    direct, through = aux_grads("keypoints"), aux_grads("decoder")
    # the keypoint read-out cannot use the hand position (a shortcut to the goal late in a demo)
    model = build_model(make_geometry("tiny", **{**geo, "aux_source": "keypoints"}), seed=0).eval()
    with torch.no_grad():
        a = model.aux(model.encode(images, ids, mask, torch.zeros(2, 4)))
        b = model.aux(model.encode(images, ids, mask, torch.ones(2, 4)))
    assert torch.equal(a, b)
    assert direct["keypoint_encoder"] > 0 and direct["decoder"] == 0 and direct["aggregator"] == 0, direct
    assert through["keypoint_encoder"] > 0 and through["decoder"] > 0 and through["aggregator"] > 0, through
    with pytest.raises(ValueError, match="aux_source='keypoints' reads the keypoint path"):
        make_geometry("tiny", **{**SMALL, "aux_dim": 2, "aux_source": "keypoints"})
    with pytest.raises(ValueError, match="unknown aux_source"):
        make_geometry("tiny", **{**SMALL, "aux_source": "pixels"})
