"""The shared MuJoCo offscreen renderer: the fastest correct way to get RGB frames on a CPU.

``OffscreenRenderer(model, width, height, camera).render(data) -> uint8 H×W×3``. It keeps one
``mujoco.Renderer`` (one GL context, one scene) alive and turns off what a policy does not need —
shadows, reflections, skybox — which is where OSMesa spends most of its time. On a machine without a
GPU, set ``MUJOCO_GL=osmesa`` (Debian's ``libosmesa6``); :func:`configure_headless` does so when
nothing else was chosen, and must run before ``mujoco`` is first imported.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np


def configure_headless(backend: str = "osmesa") -> str:
    """Pick a headless GL backend unless the user already chose one. Returns the backend in effect."""
    if "MUJOCO_GL" not in os.environ:
        if "mujoco" in sys.modules:
            # too late to switch: mujoco has picked its backend already
            return os.environ.get("MUJOCO_GL", "")
        os.environ["MUJOCO_GL"] = backend
    if os.environ["MUJOCO_GL"] == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    return os.environ["MUJOCO_GL"]


class OffscreenRenderer:
    """Render one camera of a MuJoCo model to uint8 RGB arrays, reusing a single GL context.

    ``camera`` is a camera name, a camera id, or -1 for the free camera. ``flip_vertical`` turns the
    frame upside down (Meta-World's corner cameras are mounted upside down)."""

    def __init__(self, model: Any, width: int, height: int, camera: str | int = -1, flip_vertical: bool = False,
                 shadows: bool = False, reflections: bool = False, skybox: bool = False) -> None:
        backend = configure_headless()
        import mujoco

        if width <= 0 or height <= 0:
            raise ValueError(f"width and height must be positive, got {width}x{height}")
        if width > model.vis.global_.offwidth or height > model.vis.global_.offheight:
            raise ValueError(
                f"{width}x{height} exceeds the model's offscreen buffer "
                f"{model.vis.global_.offwidth}x{model.vis.global_.offheight} (raise <visual><global offwidth/offheight>)"
            )
        if isinstance(camera, str):
            cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            if cam_id < 0:
                names = [model.camera(i).name for i in range(model.ncam)]
                raise ValueError(f"camera {camera!r} is not in the model; cameras: {names}")
        else:
            cam_id = int(camera)
            if not -1 <= cam_id < model.ncam:
                raise ValueError(f"camera id {cam_id} out of range (-1 .. {model.ncam - 1})")
        self.model, self.width, self.height = model, int(width), int(height)
        self.camera = cam_id
        self.flip_vertical = flip_vertical
        try:
            self._renderer = mujoco.Renderer(model, height=self.height, width=self.width)
        except Exception as exc:  # mujoco.FatalError: no GL context could be made
            raise RuntimeError(
                f"could not create an offscreen OpenGL context (MUJOCO_GL={backend or 'unset, so mujoco chose glfw'}). "
                "On a machine without a display, set MUJOCO_GL=osmesa (Debian's libosmesa6) or egl before "
                "Python starts, or import atlasva.sim.render before the first `import mujoco`."
            ) from exc
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(shadows)
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(reflections)
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = int(skybox)
        self._out = np.empty((self.height, self.width, 3), dtype=np.uint8)

    def render(self, data: Any) -> np.ndarray:
        """The current frame of ``data`` as a fresh uint8 [height, width, 3] array."""
        self._renderer.update_scene(data, camera=self.camera)
        self._renderer.render(out=self._out)
        frame = self._out[::-1] if self.flip_vertical else self._out
        return np.array(frame, copy=True)

    def close(self) -> None:
        r = self._renderer
        if r is None:
            return
        # mujoco.Renderer.close() frees the GL context first and then the MjrContext, whose GL deletes
        # (textures, framebuffers by id) then run in whichever context is current — another live
        # renderer's, which turns its frames into noise. Free our GL objects in our own context first.
        gl, mjr = getattr(r, "_gl_context", None), getattr(r, "_mjr_context", None)
        if gl is not None and mjr is not None:
            gl.make_current()
            mjr.free()
            r._mjr_context = None
        r.close()
        self._renderer = None  # type: ignore[assignment]

    def __enter__(self) -> OffscreenRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
