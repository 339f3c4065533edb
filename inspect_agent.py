"""Instrument panel of a saved agent: what it sees and does, where it loses, how it trained.

    python inspect_agent.py runs/<run>                   # a run of any script, saved with --save-model
    python inspect_agent.py runs/<run> --episodes 200 --max-steps 500 --seed 3 --out /tmp/panel
    python inspect_agent.py --help                       # every option

Writes <run>/inspect/ (or --out):
- panel.mp4, and panel.png (6 of its frames): one evaluation episode. Left, the screen as a person
  sees it (Atari: the RGB frame; MinAtar: the channels in colour; CartPole: the cart and pole drawn
  from the state) under the saliency: |d (chosen action's logit; DQN: its Q-value) / d input|, max
  over the frame stack or channels, normalized per frame (CartPole: one bar per observation
  dimension). Right, the action probabilities (DQN: Q-values), the value estimate so far (DQN:
  max Q) with rewards and losses marked, step and score.
- failures.png: where things were on the last frame before each loss (a terminated episode; on Atari
  also a lost life) over --episodes episodes: MinAtar, one heatmap per object channel; Atari, the
  mean last frame and its mean change from the frame before (moving objects stand out); CartPole,
  cart position x pole angle. With the counts and the episode-length histogram.
- training.png: every scalar the run logged to TensorBoard, on one page.
- inspect.json: the numbers behind the pictures and the time each part took.

The agent acts as in its script's evaluation (DQN: epsilon-greedy with the evaluation epsilon; A2C and
PPO: sampled actions). The script is read from summary.json (or the checkpoint's name); this tool
imports that script's own pieces (network, environment builder, action selection) and rebuilds the
network from the args saved in the checkpoint. The scripts never import this tool. CPU only, headless.
"""

import dataclasses
import importlib
import itertools
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

TOOL = Path(__file__).name
DEFAULT_EPISODES = {"cartpole": 100, "atari": 30, "minatar": 1000}
MINATAR_CHANNELS = {  # gymnax's channel order (the docstrings of gymnax/environments/minatar/*.py)
    "Asterix-MinAtar": ["player", "enemy", "trail", "gold"],
    "Breakout-MinAtar": ["paddle", "ball", "trail", "brick"],
    "Freeway-MinAtar": ["chicken", "car", "speed1", "speed2", "speed3", "speed4", "speed5"],
    "Seaquest-MinAtar": [
        "sub_front",
        "sub_back",
        "friendly_bullet",
        "trail",
        "enemy_bullet",
        "enemy_fish",
        "enemy_sub",
        "oxygen_gauge",
        "diver_gauge",
        "diver",
    ],
    "SpaceInvaders-MinAtar": ["cannon", "alien", "alien_left", "alien_right", "friendly_bullet", "enemy_bullet"],
}
MINATAR_ACTIONS = ["NOOP", "LEFT", "UP", "RIGHT", "DOWN", "FIRE"]  # MinAtar's full set; games use a subset
CARTPOLE_DIMS = ["cart position", "cart velocity", "pole angle", "pole ang. velocity"]
CART_EDGES = np.linspace(-2.4, 2.4, 25)  # CartPole terminates past |x| = 2.4 m ...
ANGLE_EDGES = np.linspace(-12, 12, 25)  # ... or past |angle| = 12 degrees
FIG_SIZE, DPI, FPS = (12, 6), 80, 15  # 960x480 pixels: multiples of 16, as H.264 encoders want
SHEET_FRAMES = 6


# ==== Arguments ====
@dataclass
class Args:
    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """run directory of a script run with --save-model (runs/<run-name>)"""
    episodes: int | None = None
    """episodes of the failure map (default: 1000 MinAtar, run at once; 30 Atari games; 100 CartPole)"""
    seed: int = 1
    """seed of the panel episode and of the failure episodes"""
    max_steps: int | None = None
    """cap on the panel episode, in agent steps (default: the episode's own end)"""
    out: str | None = None
    """output directory (default: <run>/inspect)"""


def fail(message: str) -> None:
    """Bad input: one line naming the problem and the fix, exit code 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class Ticker:
    """A progress line every few seconds during a long part."""

    def __init__(self, label: str, total: int | None, every_s: float = 5.0):
        self.label, self.total, self.every_s = label, total, every_s
        self.start = self.last = time.time()

    def __call__(self, done: int) -> None:
        now = time.time()
        if now - self.last >= self.every_s:
            self.last = now
            of = f"/{self.total:,}" if self.total else ""
            print(f"[{TOOL}] {self.label}: {done:,}{of} ({now - self.start:.0f} s)", flush=True)


# ==== Loading ====
def find_checkpoint(run_dir: Path) -> tuple:
    """(script, checkpoint path) of a run of any script, a modified copy included: the script named by
    summary.json, else by the checkpoint's name (--save-model writes <script stem>.pt or .msgpack)."""
    if not run_dir.is_dir():
        fail(f"run directory {run_dir} does not exist; pass runs/<run-name> of a run trained with --save-model")
    script = None
    try:
        script = json.loads((run_dir / "summary.json").read_text()).get("script")
    except (OSError, ValueError, AttributeError):
        pass  # no summary (a run still training): the checkpoint's name tells the script
    found = sorted(p for p in run_dir.glob("*") if p.suffix in (".pt", ".msgpack") and script in (None, p.stem + ".py"))
    if not found:
        names = f"{Path(script).stem}.pt or .msgpack" if script else "<script>.pt or <script>.msgpack"
        fail(f"no checkpoint in {run_dir} (looked for {names}); train the run with --save-model")
    return found[0].stem + ".py", found[0]


def check_script(path: Path, checkpoint: dict, script: str) -> None:
    written_by = checkpoint.get("script", script)  # older checkpoints do not name their script
    if written_by != script:
        fail(f"{path} was written by {written_by}, not {script}; pass a run trained with --save-model")


def saved_args(module, saved: dict):
    """The script's Args from the checkpoint's args, ignoring fields this version of the script lacks."""
    fields = {f.name for f in dataclasses.fields(module.Args)}
    return module.Args(**{k: v for k, v in saved.items() if k in fields})


@dataclass
class Agent:
    script: str
    family: str
    module: Any  # the script, imported
    args: Any  # its Args, as saved in the checkpoint
    kind: str  # "probabilities" (actor-critic) or "q_values" (DQN)
    action_names: list
    outputs: Callable  # obs batch -> (probabilities or Q-values, value estimates: V or max Q), numpy
    choose: Callable  # obs batch -> actions, picked as the script's evaluation picks them
    saliency: Callable  # (obs batch, actions) -> saliency maps, each normalized to max 1
    jax_net: Any = None  # (network, params) of a JAX agent, for the compiled failure scan


def normalize_per_frame(maps: np.ndarray) -> np.ndarray:
    peak = maps.reshape(len(maps), -1).max(1).reshape((-1,) + (1,) * (maps.ndim - 1))
    return maps / np.where(peak > 0, peak, 1.0)


def torch_saliency(head, obs, actions) -> np.ndarray:
    """|d head(obs)[i, actions[i]] / d obs[i]|, max over the frame stack of image inputs (B, stack, H, W),
    per input dimension of flat ones (B, D); normalized per frame."""
    import torch

    x = torch.as_tensor(np.asarray(obs), dtype=torch.float32).requires_grad_(True)
    # Batch rows never interact (no batch norm), so the gradient of the sum holds each row's own gradient.
    head(x).gather(1, torch.as_tensor(np.asarray(actions), dtype=torch.long)[:, None]).sum().backward()
    grad = x.grad.abs()
    return normalize_per_frame((grad.amax(1) if grad.ndim > 2 else grad).numpy())


def jax_saliency(logits, obs, actions) -> np.ndarray:
    """The same for channel-last JAX inputs (B, H, W, C): max over the channels."""
    import jax
    import jax.numpy as jnp

    chosen = lambda o: jnp.take_along_axis(logits(o), jnp.asarray(actions)[:, None], axis=1).sum()  # noqa: E731
    grad = jax.grad(chosen)(jnp.asarray(obs, jnp.float32))
    return normalize_per_frame(np.asarray(jnp.abs(grad).max(-1)))


def load_torch_agent(script: str, module, path: Path, seed: int) -> Agent:
    import torch

    try:  # weights_only: a checkpoint is data; unpickling arbitrary objects would run code from the file
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        args = saved_args(module, checkpoint["args"])
    except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, the fix is the same
        fail(
            f"{path} is not a checkpoint written by {script} --save-model ({type(e).__name__}); "
            "pass a run trained with --save-model"
        )
    check_script(path, checkpoint, script)
    # What the checkpoint holds says the kind of agent (actor-critic "agent" or DQN "q_network") and its
    # env id the family, so that a modified copy of a script loads as its original does.
    family = "cartpole" if args.env_id.startswith("CartPole") else "atari"
    weights = "agent" if "agent" in checkpoint else "q_network"
    epsilon = getattr(args, "eval_epsilon", 0.0)
    if family == "cartpole":
        if not hasattr(module, "QNetwork"):
            fail(f"{TOOL} draws CartPole for DQN only; {script} has no QNetwork")
        net, names = module.QNetwork(4, 2, args.hidden_size), ["push left", "push right"]
    else:
        from ale_py.env import AtariEnv

        game = module.game_name(args.env_id)
        names = AtariEnv(game=game).get_action_meanings()  # the minimal action set, as AtariVectorEnv's
        net = (module.ActorCritic if weights == "agent" else module.QNetwork)(len(names))
    try:
        net.load_state_dict(checkpoint[weights])
    except (KeyError, RuntimeError) as e:
        fail(f"{path} does not hold {script}'s network ({type(e).__name__}); pass a run trained with --save-model")
    net.eval()
    device = torch.device("cpu")
    if weights == "agent":
        head = lambda x: net(x)  # noqa: E731 - (logits, values)
        generator = torch.Generator().manual_seed(seed)

        def choose(obs):
            with torch.no_grad():
                return module.sample_actions(net(torch.as_tensor(obs))[0], generator).numpy()
    else:

        def head(x):  # DQN: the value estimate is max Q
            q = net(x)
            return q, q.max(1).values

        rng = np.random.default_rng(seed)
        choose = lambda obs: module.select_actions(net, obs, epsilon, rng, len(names), device)  # noqa: E731
    kind = "probabilities" if weights == "agent" else "q_values"

    def outputs(obs):
        with torch.no_grad():
            raw, values = head(torch.as_tensor(obs))
        return (raw.softmax(1) if kind == "probabilities" else raw).numpy(), values.numpy()

    return Agent(
        script,
        family,
        module,
        args,
        kind,
        names,
        outputs,
        choose,
        lambda obs, actions: torch_saliency(lambda x: head(x)[0], obs, actions),
    )


def load_jax_agent(script: str, module, path: Path, seed: int) -> Agent:
    module.select_platform(False)  # before JAX makes any array: CPU, and the scripts' XLA flag
    import flax
    import jax

    try:
        state = flax.serialization.msgpack_restore(path.read_bytes())
        args = saved_args(module, json.loads(state["args"]))
        saved = state["runner"]["params"] if "runner" in state else state["params"]  # newer: whole runner state
    except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, the fix is the same
        fail(
            f"{path} is not a checkpoint written by {script} --save-model ({type(e).__name__}); "
            "pass a run trained with --save-model"
        )
    check_script(path, state, script)
    env, env_params = module.make_env(args.env_id)
    n_actions = env.action_space(env_params).n
    net = module.ActorCritic(*module.make_networks(args, n_actions))
    obs, _ = env.reset(jax.random.PRNGKey(0), env_params)
    template = jax.eval_shape(net.init, jax.random.PRNGKey(0), obs[None])  # the structure, nothing computed
    try:
        params = flax.serialization.from_state_dict(template, saved)
        # from_state_dict checks names, not shapes: other layer sizes would load without a word.
        fits = jax.tree.map(lambda x: tuple(x.shape), params) == jax.tree.map(lambda x: x.shape, template)
    except (KeyError, ValueError, TypeError) as e:
        fits = f"({type(e).__name__})"
    if fits is not True:
        fail(
            f"{path} does not hold {script}'s network for its saved args {fits or ''}; "
            "pass a run trained with --save-model"
        )
    outputs = jax.jit(lambda o: (jax.nn.softmax(net.logits(params, o)), net.values(params, o)))
    sample = jax.jit(lambda k, o: jax.random.categorical(k, net.logits(params, o)))
    key, steps = jax.random.PRNGKey(seed), itertools.count()
    names = [MINATAR_ACTIONS[int(a)] for a in env.action_set]
    return Agent(
        script,
        "minatar",
        module,
        args,
        "probabilities",
        names,
        lambda o: tuple(map(np.asarray, outputs(o))),
        lambda o: np.asarray(sample(jax.random.fold_in(key, next(steps)), o)),
        lambda o, a: jax_saliency(lambda x: net.logits(params, x), o, a),
        (net, params),
    )


def load_agent(script: str, path: Path, seed: int) -> Agent:
    if not (Path(__file__).parent / script).is_file():
        fail(f"{path} was written by {script}, which is not beside {TOOL}; put the script in {Path(__file__).parent}")
    module = importlib.import_module(Path(script).stem)  # the scripts sit beside this file, on sys.path[0]
    load = load_jax_agent if path.suffix == ".msgpack" else load_torch_agent
    return load(script, module, path, seed)


# ==== Environments ====
# Vector envs of the scripts' own builders, one episode per env. step(actions) -> (rewards, lost, terminated,
# truncated); `lost` is a loss: the episode terminated, or on Atari a life was lost.
class CartPoleEnvs:
    def __init__(self, agent: Agent, n: int, seed: int):
        self.envs, self.obs = agent.module.make_envs(
            agent.args.env_id, n, seed, getattr(agent.args, "sticky_action_prob", 0.0)
        )
        self.lives = None

    def screen(self) -> np.ndarray:
        return draw_cartpole(self.obs[0])

    def frame(self) -> np.ndarray:
        """Each env's state as a one-hot cell of (pole angle, cart position): summed, a 2-D histogram."""
        n, (na, nx) = len(self.obs), (len(ANGLE_EDGES) - 1, len(CART_EDGES) - 1)
        cells = np.zeros((n, 1, na, nx), np.float32)
        angle = np.clip(np.digitize(np.degrees(self.obs[:, 2]), ANGLE_EDGES) - 1, 0, na - 1)
        x = np.clip(np.digitize(self.obs[:, 0], CART_EDGES) - 1, 0, nx - 1)
        cells[np.arange(n), 0, angle, x] = 1.0
        return cells

    def step(self, actions):
        self.obs, rewards, terminated, truncated, _ = self.envs.step(actions)
        return rewards, terminated, terminated, truncated


class AtariEnvs:
    """The policy's 84x84 gray stacks; with `rgb`, a second env with the same seed and actions (ALE is
    deterministic) gives the RGB frames a person sees, as in the scripts' record_video."""

    def __init__(self, agent: Agent, n: int, seed: int, rgb: bool = False):
        self.module, game, cap = agent.module, agent.module.game_name(agent.args.env_id), agent.args.eval_max_frames
        sticky = getattr(agent.args, "sticky_action_prob", None)  # None: the id's meaning (older checkpoints too)
        sticky = (0.0 if agent.args.env_id.endswith("-v4") else 0.25) if sticky is None else sticky
        self.envs, self.obs, info = self.module.make_envs(game, n, seed, sticky, cap)
        self.lives = info["lives"]
        self.rgb_envs, self.rgb, _ = self.module.make_envs(game, n, seed, sticky, cap, rgb=True) if rgb else (None,) * 3

    def screen(self) -> np.ndarray:
        return self.rgb[0, 0]

    def frame(self) -> np.ndarray:
        """The newest frame of each stack and its change from the frame before (moving objects)."""
        last, before = self.obs[:, -1].astype(np.float32), self.obs[:, -2].astype(np.float32)
        return np.stack([last, np.abs(last - before)], axis=1)

    def step(self, actions):
        self.obs, rewards, terminated, truncated, info = self.envs.step(actions)
        if self.rgb_envs is not None:
            self.rgb = self.rgb_envs.step(actions)[0]
        # The scripts' rule: td_terminal = game over or a life lost (lives read from info["lives"]).
        _, lost, _ = self.module.transition_flags(
            terminated, truncated, info["lives"], self.lives, np.zeros(len(actions), bool)
        )
        self.lives = info["lives"]
        return rewards, lost, terminated, truncated


class MinAtarEnv:
    """One Gymnax env stepped from Python (the panel); the failure map runs compiled instead."""

    def __init__(self, agent: Agent, seed: int):
        import jax

        self.env, self.env_params = agent.module.make_env(agent.args.env_id)
        self.key, k_reset = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1))
        obs, self.state = self.env.reset(k_reset, self.env_params)
        self.obs, self.lives = np.asarray(obs, np.float32)[None], None
        self._step = jax.jit(self.env.step)
        self.colours = np.array(agent.module.plt_colours(obs.shape[-1]))

    def screen(self) -> np.ndarray:
        return np.clip(self.obs[0] @ self.colours, 0, 255).astype(np.uint8)

    def step(self, actions):
        import jax

        self.key, k = jax.random.split(self.key)
        obs, self.state, reward, terminated, truncated, _ = self._step(k, self.state, actions[0], self.env_params)
        self.obs = np.asarray(obs, np.float32)[None]
        return (np.asarray(x)[None] for x in (reward, terminated, terminated, truncated))


def draw_cartpole(state, width: int = 300, height: int = 200) -> np.ndarray:
    """CartPole's state drawn as gymnasium draws it (its renderer needs pygame, which is not installed)."""
    x, _, angle, _ = state
    scale = width / 4.8  # the picture spans the track, x in [-2.4, 2.4]; the pole is 1 m long
    img = np.full((height, width, 3), 255, np.uint8)
    rows, cols = np.mgrid[0:height, 0:width]
    cx, cy = width / 2 + x * scale, 0.7 * height
    img[int(cy) + 8] = 0
    img[(np.abs(cols - cx) < 0.1 * scale) & (np.abs(rows - cy) < 0.06 * scale)] = 0
    ux, uy = np.sin(angle), -np.cos(angle)
    along = np.clip((cols - cx) * ux + (rows - cy) * uy, 0, scale)  # distance to the pole's segment:
    img[np.hypot(cols - cx - along * ux, rows - cy - along * uy) < 0.04 * scale] = (202, 152, 101)
    img[np.hypot(cols - cx, rows - cy) < 0.03 * scale] = (129, 132, 203)
    return img


# ==== Panel episode ====
class Episode(NamedTuple):
    screens: np.ndarray  # (T, H, W, 3) uint8, what a person sees before each step
    obs: np.ndarray  # (T, ...) what the agent sees
    actions: np.ndarray  # (T,)
    scores: np.ndarray  # (T, A) action probabilities or Q-values
    values: np.ndarray  # (T,) V(s) or max Q
    rewards: np.ndarray  # (T,) raw reward of each step
    lost: np.ndarray  # (T,) the step lost a life or the game
    lives: list  # (T,) lives before each step (Atari), else None
    saliency: np.ndarray  # (T, h, w) maps, or (T, D) per observation dimension; max 1 per step
    end: str  # "terminated", "truncated" or "max_steps"


def play_episode(agent: Agent, env, max_steps: int | None) -> Episode:
    """One episode of env 0, recording what the panel shows; saliency computed afterwards, in batches."""
    rec: dict = {k: [] for k in Episode._fields[:-2]}
    ticker = Ticker("panel episode, steps", max_steps)
    while True:
        obs, screen, lives = np.array(env.obs), np.array(env.screen()), env.lives
        scores, values = agent.outputs(obs)
        actions = agent.choose(obs)
        rewards, lost, terminated, truncated = env.step(actions)
        for k, v in (
            ("screens", screen),
            ("obs", obs[0]),
            ("actions", actions[0]),
            ("scores", scores[0]),
            ("values", values[0]),
            ("rewards", rewards[0]),
            ("lost", lost[0]),
            ("lives", None if lives is None else int(lives[0])),
        ):
            rec[k].append(v)
        ticker(len(rec["actions"]))
        end = "terminated" if terminated[0] else "truncated" if truncated[0] else None
        if end is None and len(rec["actions"]) == max_steps:
            end = "max_steps"
        if end:
            break
    arrays = {k: v if k == "lives" else np.asarray(v) for k, v in rec.items()}
    obs, actions = arrays["obs"], arrays["actions"]
    saliency = np.concatenate([agent.saliency(obs[i : i + 256], actions[i : i + 256]) for i in range(0, len(obs), 256)])
    return Episode(**arrays, saliency=saliency, end=end)


def compose_screen(screen: np.ndarray, saliency: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """The screen scaled to height x width pixels, saliency drawn on it: where the map has the screen's grid
    (MinAtar), a white dot per cell, its radius 0.45 x saliency; else a white glow, alpha 0.8 x saliency^2
    (both squared in area, so that the diffuse small gradients do not hide the screen)."""
    rows, cols = np.arange(height) * screen.shape[0] / height, np.arange(width) * screen.shape[1] / width
    img = screen[rows.astype(int)][:, cols.astype(int)]
    if saliency is None:
        return img
    ratio = np.array(saliency.shape) / screen.shape[:2]  # Atari: the 84x84 map over the 210x160 frame
    s = saliency[(rows * ratio[0]).astype(int)][:, (cols * ratio[1]).astype(int)]
    if saliency.shape != screen.shape[:2]:
        alpha = 0.8 * s[..., None] ** 2
        return (img * (1 - alpha) + 255 * alpha).astype(np.uint8)
    from_centre = np.hypot((rows % 1 - 0.5)[:, None], (cols % 1 - 0.5)[None, :])  # in cells
    radius = 0.45 * s
    img[(from_centre < radius + 0.06) & (s > 0.02)] = 0  # a dark rim: white dots show on light objects too
    img[from_centre < radius] = 255
    return img


def render_panel(ep: Episode, agent: Agent, out: Path) -> None:
    """panel.mp4, one frame per step, and panel.png, a few of its frames. One figure: its axes are drawn
    once, each frame redraws only what changes, and the screen is pasted in as pixels."""
    import imageio_ffmpeg

    T, vector, probs = len(ep.actions), ep.saliency.ndim == 2, agent.kind == "probabilities"
    fig = plt.figure(figsize=FIG_SIZE, dpi=DPI)
    outer = fig.add_gridspec(1, 2, width_ratios=(1.2, 1), left=0.04, right=0.97, top=0.88, bottom=0.09, wspace=0.22)
    left = outer[0].subgridspec(2, 1, height_ratios=(2, 1), hspace=0.35) if vector else outer[0].subgridspec(1, 1)
    right = outer[1].subgridspec(2, 1, hspace=0.5)
    ax_screen, ax_act, ax_val = fig.add_subplot(left[0]), fig.add_subplot(right[0]), fig.add_subplot(right[1])
    ax_screen.imshow(ep.screens[0])  # sets the screen's aspect; the frames paste over it
    ax_screen.set_axis_off()
    target = "logit of the chosen action" if probs else "Q-value of the chosen action"
    changing = []
    if vector:
        ax_sal = fig.add_subplot(left[1])
        sal_bars = ax_sal.bar(range(ep.saliency.shape[1]), ep.saliency[0], color="tab:red")
        ax_sal.set_xticks(range(ep.saliency.shape[1]), CARTPOLE_DIMS[: ep.saliency.shape[1]], fontsize=9)
        ax_sal.set_ylim(0, 1.05)
        ax_sal.set_title(f"saliency: |d {target} / d input|, max 1", fontsize=10)
        ax_screen.set_title("state", fontsize=10)
        changing += list(sal_bars)
    else:
        cells = ep.saliency.shape[1:] == ep.screens.shape[1:3]
        ax_screen.set_title("screen and saliency", fontsize=10)
        ax_screen.text(
            0.5,
            -0.01,
            f"saliency ({'white dots' if cells else 'white glow'}, larger = more): "
            f"|d {target} / d input|,\nmax over the {'channels' if cells else 'frame stack'}, "
            "scaled to max 1 in each frame",
            transform=ax_screen.transAxes,
            ha="center",
            va="top",
            fontsize=8,
        )

    rows = np.arange(len(agent.action_names))
    bars = ax_act.barh(rows, ep.scores[0], color="tab:blue")
    ax_act.set_yticks(rows, agent.action_names)
    ax_act.invert_yaxis()
    lo, hi = (0.0, 1.0) if probs else (min(0.0, ep.scores.min()), max(0.0, ep.scores.max()))
    margin = 0.25 * (hi - lo) or 1.0  # room for the numbers
    ax_act.set_xlim(lo - (0 if probs else 0.05 * margin), hi + margin)
    numbers = [ax_act.text(0, i, "", va="center", fontsize=9) for i in rows]
    ax_act.set_title("action probabilities (orange: taken)" if probs else "Q-values (orange: taken)", fontsize=10)

    steps, score = np.arange(T), np.cumsum(ep.rewards)
    vlo, vhi = float(ep.values.min()), float(ep.values.max())
    pad = 0.1 * (vhi - vlo) or 1.0
    ax_val.set_xlim(0, max(T - 1, 1))
    ax_val.set_ylim(vlo - pad, vhi + pad)
    ax_val.set_xlabel("step", fontsize=9)
    ax_val.set_title("value estimate V(s)" if probs else "max_a Q(s, a)", fontsize=10, loc="left")
    (line,) = ax_val.plot([], [], color="tab:purple", lw=1.2)
    rewarded = ax_val.scatter([], [], marker="^", s=30, color="tab:green", label="reward", zorder=3)
    lost = ax_val.scatter(
        [],
        [],
        marker="X",
        s=50,
        color="tab:red",
        zorder=3,
        label="life lost" if agent.family == "atari" else "episode lost",
    )
    ax_val.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8, frameon=False, borderaxespad=0.1)
    title = fig.suptitle("", fontsize=12)
    changing += [*bars, *numbers, line, rewarded, lost, title]
    for artist in changing:
        artist.set_animated(True)
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)
    box = ax_screen.get_window_extent()  # in pixels from the bottom left, after the aspect was applied
    height_px = fig.canvas.get_width_height()[1]
    top, left_px = int(round(height_px - box.y1)), int(round(box.x0))
    size = int(round(box.height)), int(round(box.width))

    sheet_at = set(np.linspace(0, T - 1, min(SHEET_FRAMES, T)).round().astype(int).tolist())
    sheet = []
    writer = imageio_ffmpeg.write_frames(
        str(out / "panel.mp4"), fig.canvas.get_width_height(), fps=FPS, ffmpeg_log_level="error"
    )
    with warnings.catch_warnings():  # JAX warns of any fork; this one execs ffmpeg at once, which is safe
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        writer.send(None)
    ticker = Ticker("panel video, frames", T)
    for t in range(T):
        if vector:
            for bar, h in zip(sal_bars, ep.saliency[t]):
                bar.set_height(h)
        for i, (bar, v) in enumerate(zip(bars, ep.scores[t])):
            bar.set_width(v)
            bar.set_color("tab:orange" if i == ep.actions[t] else "tab:blue")
            numbers[i].set_position((max(v, 0.0) + 0.02 * margin, i))
            numbers[i].set_text(f"{v:.3f}" if probs else f"{v:.3g}")
        line.set_data(steps[: t + 1], ep.values[: t + 1])
        for marks, flags in ((rewarded, ep.rewards[: t + 1] != 0), (lost, ep.lost[: t + 1])):
            marks.set_offsets(np.c_[steps[: t + 1][flags], ep.values[: t + 1][flags]])
        lives = "" if ep.lives[t] is None else f"   lives {ep.lives[t]}"
        title.set_text(f"{agent.script} on {agent.args.env_id}   step {t + 1}/{T}   score {score[t]:g}{lives}")
        fig.canvas.restore_region(background)
        for artist in changing:
            fig.draw_artist(artist)
        frame = np.array(np.asarray(fig.canvas.buffer_rgba())[..., :3])
        frame[top : top + size[0], left_px : left_px + size[1]] = compose_screen(
            ep.screens[t], None if vector else ep.saliency[t], *size
        )
        writer.send(frame)
        if t in sheet_at:
            sheet.append(frame)
        ticker(t + 1)
    writer.close()
    plt.close(fig)
    cols = min(3, len(sheet))
    h, w, _ = sheet[0].shape
    grid = np.full((-(-len(sheet) // cols) * h, cols * w, 3), 255, np.uint8)
    for i, frame in enumerate(sheet):
        grid[i // cols * h : (i // cols + 1) * h, i % cols * w : (i % cols + 1) * w] = frame
    plt.imsave(out / "panel.png", grid)


# ==== Failures ====
def new_tally(frame_shape: tuple, n: int, xp=np) -> dict:
    """Failure counts of n episodes (numpy, or jax.numpy inside a compiled scan)."""
    zero = xp.zeros((), xp.int32)
    return {
        "frames": xp.zeros(frame_shape, xp.float32),
        "losses": zero,
        "terminations": zero,
        "truncations": zero,
        "lengths": xp.zeros(n, xp.int32),
    }


def tally_step(tally: dict, frame, lost, terminated, truncated, running):
    """Adds one step of n parallel episodes (one per env) to the tally; returns (tally, running).

    frame[i] is what env i showed BEFORE this step, the last frame before a loss; after a lost episode an
    env shows the next episode's reset frame, which says nothing about the loss (classic bug: recording
    it). lost: the step lost the game or, on Atari, a life. Only each env's first episode counts (`running`).
    """
    lost, done = lost & running, (terminated | truncated) & running
    weights = lost.reshape(lost.shape + (1,) * (frame.ndim - 1))
    tally = {
        "frames": tally["frames"] + (frame * weights).sum(0),
        "losses": tally["losses"] + lost.sum(),
        "terminations": tally["terminations"] + (done & terminated).sum(),
        "truncations": tally["truncations"] + (done & ~terminated).sum(),
        "lengths": tally["lengths"] + running,
    }
    return tally, running & ~done


def vector_failures(agent: Agent, envs, episodes: int) -> dict:
    tally, running = new_tally(envs.frame().shape[1:], episodes), np.ones(episodes, bool)
    ticker = Ticker("failure episodes finished", episodes)
    while running.any():
        frame = envs.frame()
        _, lost, terminated, truncated = envs.step(agent.choose(envs.obs))
        tally, running = tally_step(tally, frame, lost, terminated, truncated, running)
        ticker(episodes - int(running.sum()))
    return tally


def minatar_failures(agent: Agent, episodes: int, seed: int) -> dict:
    """`episodes` episodes at once: vmapped envs in one compiled lax.scan over the longest possible episode."""
    import jax
    import jax.numpy as jnp

    (net, params), (env, env_params) = agent.jax_net, agent.module.make_env(agent.args.env_id)
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    @jax.jit
    def run(key):
        k_reset, key = jax.random.split(key)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, episodes), env_params)

        def step(carry, _):
            obs, state, key, tally, running = carry
            key, k_act, k_env = jax.random.split(key, 3)
            action = jax.random.categorical(k_act, net.logits(params, obs))
            next_obs, state, _, terminated, truncated, _ = step_envs(
                jax.random.split(k_env, episodes), state, action, env_params
            )
            frame = jnp.moveaxis(obs, -1, 1).astype(jnp.float32)  # one map per channel
            tally, running = tally_step(tally, frame, terminated, terminated, truncated, running)
            return (next_obs, state, key, tally, running), None

        tally = new_tally((obs.shape[-1], *obs.shape[1:3]), episodes, jnp)
        carry = (obs, state, key, tally, jnp.ones(episodes, bool))
        return jax.lax.scan(step, carry, None, env_params.max_steps_in_episode)[0][3]

    print(f"[{TOOL}] failures: {episodes} episodes at once, compiled (no progress lines)", flush=True)
    return jax.device_get(run(jax.random.fold_in(jax.random.PRNGKey(seed), 2)))


def run_failures(agent: Agent, episodes: int, seed: int) -> tuple:
    """(tally, names of its maps)."""
    if agent.family == "minatar":
        channels = MINATAR_CHANNELS.get(agent.args.env_id, [])
        tally = minatar_failures(agent, episodes, seed)
        return tally, [channels[i] if i < len(channels) else f"channel {i}" for i in range(len(tally["frames"]))]
    if agent.family == "atari":
        return vector_failures(agent, AtariEnvs(agent, episodes, seed), episodes), [
            "last frame before a loss (mean)",
            "its change from the frame before (mean |difference|)",
        ]
    return vector_failures(agent, CartPoleEnvs(agent, episodes, seed), episodes), ["pole angle x cart position"]


def spread(heatmap) -> dict:
    """Total mass, cells holding 90% of it and entropy (bits) of the normalized map: how concentrated it is."""
    mass = np.sort(np.asarray(heatmap, np.float64).ravel())[::-1]
    total = float(mass.sum())
    if total <= 0:
        return {"total": 0.0, "cells_90": 0, "entropy_bits": 0.0}
    p = mass / total
    nonzero = p[p > 0]
    return {
        "total": total,
        "cells_90": int(np.searchsorted(np.cumsum(p), 0.9 - 1e-9) + 1),
        "entropy_bits": float(-(nonzero * np.log2(nonzero)).sum()),
    }


def failure_summary(tally: dict, names: list) -> dict:
    lengths = np.asarray(tally["lengths"])
    counts, edges = np.histogram(lengths, bins=20)
    return {
        "episodes": len(lengths),
        "losses": int(tally["losses"]),
        "terminations": int(tally["terminations"]),
        "truncations": int(tally["truncations"]),
        "episode_length": stats(lengths),
        "length_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "heatmaps": {name: spread(m) for name, m in zip(names, np.asarray(tally["frames"]))},
    }


def plot_failures(tally: dict, names: list, summary: dict, agent: Agent, path: Path) -> None:
    maps = np.asarray(tally["frames"]) / max(summary["losses"], 1)
    cols = min(len(maps) + 1, 5)
    rows = -(-(len(maps) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.9 * rows), squeeze=False)
    unit = {
        "minatar": "fraction of losses with it there",
        "atari": "mean pixel value",
        "cartpole": "fraction of losses",
    }[agent.family]
    for i, (ax, name, heatmap) in enumerate(zip(axes.flat, names, maps)):
        if agent.family == "cartpole":
            im = ax.imshow(
                heatmap,
                origin="lower",
                aspect="auto",
                cmap="magma",
                extent=(CART_EDGES[0], CART_EDGES[-1], ANGLE_EDGES[0], ANGLE_EDGES[-1]),
            )
            ax.set_xlabel("cart position (m)")
            ax.set_ylabel("pole angle (degrees)")
        else:
            im = ax.imshow(
                heatmap, cmap="gray" if agent.family == "atari" and i == 0 else "magma", interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).set_label(unit, fontsize=8)
        ax.set_title(f"{name}\n90% of the mass in {summary['heatmaps'][name]['cells_90']} cells", fontsize=10)
    ax = axes.flat[len(maps)]
    ax.hist(np.asarray(tally["lengths"]), bins=30, color="tab:blue")
    ax.set_xlabel("episode length (steps)")
    ax.set_ylabel("episodes")
    ax.set_title("episode lengths", fontsize=10)
    for ax in axes.flat[len(maps) + 1 :]:
        ax.set_axis_off()
    what = "losses (lives lost)" if agent.family == "atari" else "losses (terminated)"
    fig.suptitle(
        f"{agent.script} on {agent.args.env_id}: {summary['episodes']} episodes, {summary['losses']} "
        f"{what}, {summary['truncations']} truncated\nwhere things were on the last frame before each loss",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ==== Training curves ====
def read_scalars(run_dir: Path) -> dict:
    """Every TensorBoard scalar of the run as {tag: array of (step, value) rows}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: np.array([(e.step, e.value) for e in acc.Scalars(tag)]) for tag in acc.Tags()["scalars"]}


def training_panel(tag: str) -> tuple:
    """(order, title) of the subplot that draws a tag; tags with the same title share it."""
    if "grad_norm" in tag:
        return 9, "gradient norm per layer"
    if tag == "charts/episodic_return" or tag.startswith("eval/"):
        return 0, "return (raw score)"
    if tag == "charts/episodic_length":
        return 1, "episode length"
    return (2 if tag.startswith("losses/") else 5), tag.split("/", 1)[-1].replace("_", " ")


def plot_training(scalars: dict, title: str, path: Path) -> None:
    panels: dict = {}
    for tag in sorted(scalars):
        if scalars[tag][:, 0].any():  # a tag logged at step 0 only is a size (parameter counts), not a curve
            panels.setdefault(training_panel(tag), []).append(tag)
    grads = panels.pop((9, "gradient norm per layer"), None)
    cols = 4
    rows = max(1, -(-len(panels) // cols) + (grads is not None))
    fig = plt.figure(figsize=(4.4 * cols, 3.1 * rows + (0.9 if grads else 0)))
    gs = fig.add_gridspec(rows, cols, height_ratios=[1] * (rows - 1) + [1.3 if grads else 1])
    for i, ((_, name), tags) in enumerate(sorted(panels.items())):
        ax = fig.add_subplot(gs[i // cols, i % cols])
        for tag in tags:
            ax.plot(*scalars[tag].T, lw=1, marker="o" if len(scalars[tag]) == 1 else None, label=tag)
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=8)
        if len(tags) > 1:
            ax.legend(fontsize=7)
    if grads:
        ax = fig.add_subplot(gs[rows - 1, :])
        for tag in grads:
            name = tag.split("grad_norms/")[-1].split("grad_norm/")[-1]
            ax.plot(
                *scalars[tag].T,
                lw=1,
                marker="o" if len(scalars[tag]) == 1 else None,
                label="global" if name.endswith("grad_norm") else name,
            )
        ax.set_yscale("log")
        ax.set_title("gradient norm per layer (log scale)", fontsize=10)
        ax.set_xlabel("environment steps")
        ax.legend(fontsize=8, ncol=min(len(grads), 5), loc="upper right")
    if not scalars:
        fig.text(0.5, 0.5, "no TensorBoard scalars found in the run directory", ha="center")
    fig.suptitle(f"{title}: training curves (x: environment steps)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ==== Report ====
def stats(x) -> dict | None:
    x = np.asarray(x, np.float64)
    return {"mean": float(x.mean()), "min": float(x.min()), "max": float(x.max())} if x.size else None


def panel_summary(ep: Episode, agent: Agent) -> dict:
    n_actions = len(agent.action_names)
    summary = {
        "steps": len(ep.actions),
        "score": float(ep.rewards.sum()),
        "end": ep.end,
        "losses": int(ep.lost.sum()),
        "rewarded_steps": int((ep.rewards != 0).sum()),
        "action_names": agent.action_names,
        "action_counts": np.bincount(ep.actions.astype(int), minlength=n_actions).tolist(),
        "scores": agent.kind,
        "scores_per_action": {name: stats(ep.scores[:, i]) for i, name in enumerate(agent.action_names)},
        "value": {**stats(ep.values), "first": float(ep.values[0]), "last": float(ep.values[-1])},
    }
    if agent.kind == "probabilities":
        entropy = -(ep.scores * np.log(np.clip(ep.scores, 1e-12, 1.0))).sum(1)
        summary["entropy"] = {**stats(entropy), "uniform": float(np.log(n_actions))}  # nats
    else:  # DQN has no probabilities; how decided it is: the gap between its best and second-best Q
        top2 = np.sort(ep.scores, 1)[:, -2:]
        summary["q_gap"] = stats(top2[:, 1] - top2[:, 0])
    summary["scores_per_step"] = np.round(ep.scores, 4).tolist()
    summary["values_per_step"] = np.round(ep.values, 4).tolist()
    return summary


def main(args: Args) -> dict:
    start = time.time()
    for flag, value in (("--episodes", args.episodes), ("--max-steps", args.max_steps)):
        if value is not None and value <= 0:
            fail(f"{flag} must be positive, got {value}")
    run_dir = Path(args.run)
    script, path = find_checkpoint(run_dir)
    agent = load_agent(script, path, args.seed)  # stops on a bad checkpoint before anything is written
    out = Path(args.out) if args.out else run_dir / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    timings = {"load": time.time() - start}
    print(f"[{TOOL}] {script} on {agent.args.env_id} from {path} -> {out}", flush=True)

    t = time.time()
    if agent.family == "minatar":
        env = MinAtarEnv(agent, args.seed)
    else:
        env = AtariEnvs(agent, 1, args.seed, rgb=True) if agent.family == "atari" else CartPoleEnvs(agent, 1, args.seed)
    episode = play_episode(agent, env, args.max_steps)
    timings["panel_episode"] = time.time() - t
    t = time.time()
    render_panel(episode, agent, out)
    timings["panel_render"] = time.time() - t
    print(
        f"[{TOOL}] panel: {len(episode.actions)} steps, score {episode.rewards.sum():g} "
        f"({timings['panel_episode'] + timings['panel_render']:.1f} s)",
        flush=True,
    )

    t = time.time()
    tally, names = run_failures(agent, args.episodes or DEFAULT_EPISODES[agent.family], args.seed)
    failures = failure_summary(tally, names)
    plot_failures(tally, names, failures, agent, out / "failures.png")
    timings["failures"] = time.time() - t
    print(
        f"[{TOOL}] failures: {failures['episodes']} episodes, {failures['losses']} losses, "
        f"{failures['truncations']} truncated ({timings['failures']:.1f} s)",
        flush=True,
    )

    t = time.time()
    scalars = read_scalars(run_dir)
    plot_training(scalars, f"{script} on {agent.args.env_id}", out / "training.png")
    timings["training"] = time.time() - t
    timings["total"] = time.time() - start

    report = {
        "script": script,
        "env_id": agent.args.env_id,
        "checkpoint": str(path),
        "seed": args.seed,
        "panel": panel_summary(episode, agent),
        "failures": failures,
        "training": {"tags": {tag: len(v) for tag, v in sorted(scalars.items())}},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    (out / "inspect.json").write_text(json.dumps(report, indent=2))
    print(
        f"[{TOOL}] done in {timings['total']:.1f} s: {out}/panel.mp4, panel.png, failures.png, training.png, "
        "inspect.json",
        flush=True,
    )
    return report


if __name__ == "__main__":
    main(tyro.cli(Args))
