"""The MuJoCo tabletop of the manipulation env, built as an MJCF string in code (no asset files).

A table whose top is the plane z = 0, coloured cubes (and an apple-like ball) with free joints,
optional flat goal markers, an optional cabinet with a sliding drawer, and a gripper made of three
mocap bodies (palm and two fingers) that a scripted controller moves. The gripper does not collide
with anything except through its ``pusher`` geom, which the controller switches on for pushes.
"""

from __future__ import annotations

from dataclasses import dataclass

CUBE_HALF = 0.02
APPLE_R = 0.02
TABLE_HALF = 0.32
# drawer geometry (metres): the cabinet is fixed; the drawer slides along y on a joint in [-OPEN, 0]
DRAWER_IN = 0.05  # interior half-extent (x and y)
DRAWER_WALL = 0.005
DRAWER_TOP = 0.06  # top of the drawer walls
DRAWER_OPEN = 0.10  # travel from closed (0) to open (-OPEN)
CABINET_Y = 0.20  # centre of the cabinet (and of the closed drawer)

OBJECT_RGBA = {
    "red cube": "0.85 0.15 0.15 1",
    "green cube": "0.2 0.7 0.25 1",
    "blue cube": "0.2 0.35 0.85 1",
    "apple": "0.8 0.1 0.1 1",
}
GOAL_RGBA = {"red": "0.95 0.55 0.55 1", "green": "0.55 0.9 0.6 1", "blue": "0.55 0.65 0.95 1", "grey": "0.7 0.7 0.7 1"}


@dataclass(frozen=True)
class Body:
    name: str  # "red cube", "apple", ...
    pos: tuple[float, float, float]

    @property
    def ident(self) -> str:
        return self.name.replace(" ", "_")


def build_mjcf(
    objects: list[Body],
    goals: list[tuple[str, tuple[float, float]]],
    drawer_x: float | None,
    *,
    width: int,
    height: int,
    timestep: float = 0.004,
) -> str:
    """The scene's MJCF. ``goals`` are (colour, (x, y)) flat markers; ``drawer_x`` adds a cabinet."""
    bodies = []
    for ob in objects:
        x, y, z = ob.pos
        if ob.name == "apple":
            geom = f'<geom name="{ob.ident}" type="sphere" size="{APPLE_R}" rgba="{OBJECT_RGBA[ob.name]}" mass="0.05" condim="6" friction="1 0.01 0.01"/>'
        else:
            geom = f'<geom name="{ob.ident}" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" rgba="{OBJECT_RGBA[ob.name]}" mass="0.05" friction="1 0.01 0.001"/>'
        bodies.append(f'<body name="{ob.ident}" pos="{x:.5f} {y:.5f} {z:.5f}"><freejoint name="{ob.ident}"/>{geom}</body>')
    markers = [
        f'<geom name="goal_{i}" type="box" size="0.025 0.025 0.0005" pos="{gx:.5f} {gy:.5f} 0.0005" '
        f'rgba="{GOAL_RGBA[colour]}" contype="0" conaffinity="0"/>'
        for i, (colour, (gx, gy)) in enumerate(goals)
    ]
    cabinet = ""
    if drawer_x is not None:
        cx, cy, w, t = drawer_x, CABINET_Y, DRAWER_IN, DRAWER_WALL
        outer = w + 2 * t
        wood, dark = "0.55 0.4 0.25 1", "0.4 0.28 0.18 1"
        cabinet = f"""
    <body name="cabinet" pos="{cx:.5f} {cy:.5f} 0">
      <geom type="box" size="{outer + 0.012:.4f} {outer + 0.01:.4f} 0.006" pos="0 0.01 0.071" rgba="{wood}"/>
      <geom type="box" size="0.006 {outer + 0.01:.4f} 0.035" pos="{-(outer + 0.008):.4f} 0.01 0.035" rgba="{wood}"/>
      <geom type="box" size="0.006 {outer + 0.01:.4f} 0.035" pos="{outer + 0.008:.4f} 0.01 0.035" rgba="{wood}"/>
      <geom type="box" size="{outer + 0.012:.4f} 0.006 0.035" pos="0 {outer + 0.016:.4f} 0.035" rgba="{wood}"/>
    </body>
    <body name="drawer" pos="{cx:.5f} {cy:.5f} 0">
      <joint name="drawer" type="slide" axis="0 1 0" range="{-DRAWER_OPEN} 0" damping="8" armature="0.05"/>
      <geom name="drawer_bottom" type="box" size="{outer:.4f} {outer:.4f} {t / 2:.4f}" pos="0 0 {t / 2 + 0.001:.4f}" rgba="{dark}" mass="0.2"/>
      <geom type="box" size="{t / 2:.4f} {outer:.4f} {DRAWER_TOP / 2:.4f}" pos="{-(w + t / 2):.4f} 0 {DRAWER_TOP / 2:.4f}" rgba="{wood}" mass="0.05"/>
      <geom type="box" size="{t / 2:.4f} {outer:.4f} {DRAWER_TOP / 2:.4f}" pos="{w + t / 2:.4f} 0 {DRAWER_TOP / 2:.4f}" rgba="{wood}" mass="0.05"/>
      <geom type="box" size="{outer:.4f} {t / 2:.4f} {DRAWER_TOP / 2:.4f}" pos="0 {w + t / 2:.4f} {DRAWER_TOP / 2:.4f}" rgba="{wood}" mass="0.05"/>
      <geom name="drawer_front" type="box" size="{outer + 0.006:.4f} {t:.4f} {DRAWER_TOP / 2 + 0.004:.4f}" pos="0 {-(w + t):.4f} {DRAWER_TOP / 2 + 0.002:.4f}" rgba="{dark}" mass="0.05"/>
      <geom type="box" size="0.02 0.006 0.005" pos="0 {-(w + 2 * t + 0.006):.4f} 0.035" rgba="0.8 0.8 0.8 1" mass="0.01"/>
    </body>"""
    return f"""<mujoco model="atlasva_tabletop">
  <compiler angle="radian"/>
  <option timestep="{timestep}" integrator="implicitfast" gravity="0 0 -9.81"/>
  <visual>
    <global offwidth="{max(width, 640)}" offheight="{max(height, 480)}"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.55 0.55 0.55" specular="0.1 0.1 0.1"/>
  </visual>
  <default><geom solref="0.004 1" solimp="0.95 0.99 0.001"/></default>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.82 0.78 0.7" rgb2="0.78 0.74 0.66" width="256" height="256"/>
    <material name="table" texture="grid" texrepeat="6 6"/>
  </asset>
  <worldbody>
    <light pos="0 -0.3 1.2" dir="0 0.25 -1" diffuse="0.5 0.5 0.5"/>
    <geom name="floor" type="plane" size="2 2 0.1" pos="0 0 -0.75" rgba="0.35 0.35 0.4 1"/>
    <geom name="table" type="box" size="{TABLE_HALF} {TABLE_HALF} 0.02" pos="0 0 -0.02" material="table"/>
    <camera name="front" pos="0 -0.5 0.5" xyaxes="1 0 0 0 0.7 0.714" fovy="48"/>
    <camera name="top" pos="0 0 0.9" xyaxes="1 0 0 0 1 0" fovy="45"/>
    {''.join(markers)}
    {''.join(bodies)}
    {cabinet}
    <body name="gripper" mocap="true" pos="0 0 0.2">
      <geom type="box" size="0.035 0.012 0.012" pos="0 0 0.05" rgba="0.25 0.25 0.28 1" contype="0" conaffinity="0"/>
      <geom type="cylinder" size="0.008 0.05" pos="0 0 0.11" rgba="0.5 0.5 0.55 1" contype="0" conaffinity="0"/>
      <geom name="pusher" type="sphere" size="0.012" pos="0 0 0.012" rgba="0.3 0.3 0.32 1" contype="0" conaffinity="0"/>
    </body>
    <body name="finger_l" mocap="true" pos="-0.03 0 0.2">
      <geom type="box" size="0.004 0.01 0.025" pos="0 0 0.025" rgba="0.3 0.3 0.32 1" contype="0" conaffinity="0"/>
    </body>
    <body name="finger_r" mocap="true" pos="0.03 0 0.2">
      <geom type="box" size="0.004 0.01 0.025" pos="0 0 0.025" rgba="0.3 0.3 0.32 1" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  {'<contact><exclude body1="cabinet" body2="drawer"/></contact>' if drawer_x is not None else ''}
</mujoco>"""
