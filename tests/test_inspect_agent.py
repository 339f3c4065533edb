"""Tests of inspect_agent.py: saliency against hand-computed gradients, the failure tally on scripted
episodes (the frame recorded is the one before the loss), the panel video, the tool end to end on tiny
--save-model runs of all five scripts, bad input."""

import json
from types import SimpleNamespace

import imageio_ffmpeg
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from conftest import assert_bad_input, run_script

import inspect_agent as ia
import ppo_minatar_jax as mlp

TOOL = "inspect_agent.py"


# ---- saliency -------------------------------------------------------------------------------------
def test_torch_saliency_of_a_linear_layer_is_its_weight_row():
    # Flat inputs (CartPole): one value per input dimension, |W[a]| scaled to max 1.
    linear = torch.nn.Linear(4, 2)
    obs, actions = np.random.default_rng(0).normal(size=(2, 4)), np.array([1, 0])
    w = linear.weight.detach().numpy()
    expected = np.abs(w[actions]) / np.abs(w[actions]).max(1, keepdims=True)
    np.testing.assert_allclose(ia.torch_saliency(linear, obs, actions), expected, rtol=1e-6)
    # Frame stacks (B, 4, 2, 2): max over the stack, then each frame scaled to max 1 on its own.
    stack = torch.nn.Linear(16, 3)
    with torch.no_grad():
        stack.weight[2] *= 10.0  # a frame whose raw gradient is 10x larger must still peak at 1
    head = lambda x: stack(x.flatten(1))  # noqa: E731
    obs, actions = np.zeros((2, 4, 2, 2)), np.array([2, 0])
    raw = np.abs(stack.weight.detach().numpy()[actions]).reshape(2, 4, 2, 2).max(1)
    np.testing.assert_allclose(ia.torch_saliency(head, obs, actions), raw / raw.max((1, 2), keepdims=True), rtol=1e-6)


def test_jax_saliency_of_a_linear_layer_is_its_weight_column():
    # Channel-last MinAtar-like inputs (B, 2, 2, 3): logits = flat(obs) @ W, max over the channels.
    w = jax.random.normal(jax.random.PRNGKey(0), (12, 3)) * jnp.array([1.0, 1.0, 10.0])
    logits = lambda o: o.reshape(len(o), -1) @ w  # noqa: E731
    actions = np.array([0, 2])
    raw = np.abs(np.asarray(w)[:, actions].T).reshape(2, 2, 2, 3).max(-1)
    np.testing.assert_allclose(
        ia.jax_saliency(logits, np.ones((2, 2, 2, 3)), actions), raw / raw.max((1, 2), keepdims=True), rtol=1e-6
    )


def test_compose_screen_puts_saliency_on_its_own_cell():
    screen = np.zeros((10, 10, 3), np.uint8)
    saliency = np.zeros((10, 10))
    saliency[2, 7] = 1.0  # row 2, column 7: one white dot there, nowhere else
    img = ia.compose_screen(screen, saliency, 100, 100)
    rows, cols = np.nonzero(img.max(-1) == 255)
    assert rows.min() >= 20 and rows.max() < 30 and cols.min() >= 70 and cols.max() < 80
    # Atari: the 84x84 map stretched over the 210x160 frame; its top-right corner lands on the frame's.
    atari = np.zeros((84, 84))
    atari[0, 83] = 1.0
    img = ia.compose_screen(np.zeros((210, 160, 3), np.uint8), atari, 210, 160)
    rows, cols = np.nonzero(img.max(-1) > 0)
    assert rows.max() < 210 / 84 + 1 and cols.min() > 160 - 160 / 84 - 1


# ---- failure tally --------------------------------------------------------------------------------
RESET = 99.0  # what an env shows right after a finished episode: the next episode's start


def scripted_episodes():
    """3 envs x 6 steps. frames[t, i] is what env i shows before step t: 10 t + i + 1, or RESET after an
    episode end. env 0 loses at t=1 (its next episode loses again at t=3: not counted); env 1 is truncated
    at t=2; env 2 loses a life at t=0 (Atari) and the game at t=4."""
    T, n = 6, 3
    lost, terminated, truncated = (np.zeros((T, n), bool) for _ in range(3))
    lost[1, 0] = terminated[1, 0] = lost[3, 0] = terminated[3, 0] = True
    truncated[2, 1] = True
    lost[0, 2] = lost[4, 2] = terminated[4, 2] = True
    frames = 10.0 * np.arange(T)[:, None] + np.arange(n)[None, :] + 1
    for t, i in zip(*np.nonzero(terminated | truncated)):
        if t + 1 < T:
            frames[t + 1, i] = RESET
    return frames[:, :, None, None, None].astype(np.float32), lost, terminated, truncated


def check_scripted_tally(tally):
    frames = scripted_episodes()[0]
    assert float(np.asarray(tally["frames"]).squeeze()) == frames[1, 0] + frames[0, 2] + frames[4, 2] == 11 + 3 + 43
    assert int(tally["losses"]) == 3 and int(tally["terminations"]) == 2 and int(tally["truncations"]) == 1
    assert np.asarray(tally["lengths"]).tolist() == [2, 3, 5]


def test_tally_records_the_frame_before_each_loss_numpy_and_compiled():
    frames, lost, terminated, truncated = scripted_episodes()
    tally, running = ia.new_tally((1, 1, 1), 3), np.ones(3, bool)
    for t in range(len(frames)):
        tally, running = ia.tally_step(tally, frames[t], lost[t], terminated[t], truncated[t], running)
    check_scripted_tally(tally)

    def step(carry, xs):
        (tally, running), (frame, lost, terminated, truncated) = carry, xs
        return ia.tally_step(tally, frame, lost, terminated, truncated, running), None

    carry = (ia.new_tally((1, 1, 1), 3, jnp), jnp.ones(3, bool))
    (tally, _), _ = jax.lax.scan(step, carry, tuple(map(jnp.asarray, (frames, lost, terminated, truncated))))
    check_scripted_tally(tally)


class ScriptedEnvs:
    """The env adapter protocol over scripted_episodes(): what the tool's vector loop steps."""

    def __init__(self):
        self.frames, self.lost, self.terminated, self.truncated = scripted_episodes()
        self.t, self.obs = 0, np.zeros((3, 1))

    def frame(self):
        return self.frames[self.t]

    def step(self, actions):
        t, self.t = self.t, self.t + 1
        return np.zeros(3), self.lost[t], self.terminated[t], self.truncated[t]


def test_vector_failures_take_the_frame_before_the_step():
    agent = SimpleNamespace(choose=lambda obs: np.zeros(len(obs), int))
    check_scripted_tally(ia.vector_failures(agent, ScriptedEnvs(), 3))


def test_minatar_failures_show_the_ball_at_the_bottom_not_the_reset_frame():
    # A fresh (untrained) agent on real Breakout-MinAtar: the ball ends every lost episode in the
    # bottom rows; a reset frame would show it at its start, row 3.
    args = mlp.Args(hidden_sizes=(8,))
    env, env_params = mlp.make_env(args.env_id)
    net = mlp.ActorCritic(*mlp.make_networks(args, env.action_space(env_params).n))
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 10, 10, 4)))
    agent = SimpleNamespace(jax_net=(net, params), module=mlp, args=args)
    tally = ia.minatar_failures(agent, 16, seed=0)
    summary = ia.failure_summary(tally, ia.MINATAR_CHANNELS["Breakout-MinAtar"])
    assert summary["episodes"] == 16 and summary["losses"] + summary["truncations"] == 16
    ball = np.asarray(tally["frames"])[1]
    assert ball.sum() == summary["losses"] > 0 and ball[8:].sum() == ball.sum(), ball


def test_spread_measures():
    one = np.zeros((4, 4))
    one[1, 2] = 5.0
    assert ia.spread(one) == {"total": 5.0, "cells_90": 1, "entropy_bits": 0.0}
    flat = ia.spread(np.ones(10))
    assert flat["cells_90"] == 9 and flat["entropy_bits"] == pytest.approx(np.log2(10))
    assert ia.spread(np.zeros(3))["cells_90"] == 0


# ---- panel episode and video ----------------------------------------------------------------------
class CountingEnv:
    """One env whose observation, screen and reward count its steps; it terminates at step `end`."""

    def __init__(self, end):
        self.t, self.end, self.lives = 0, end, None
        self.obs = np.zeros((1, 2, 2, 1), np.float32)

    def screen(self):
        return np.full((10, 10, 3), self.t, np.uint8)

    def step(self, actions):
        self.t += 1
        self.obs = np.full((1, 2, 2, 1), self.t, np.float32)
        ended = np.array([self.t == self.end])
        return np.array([float(self.t)]), ended, ended, np.array([False])


def counting_agent():
    return SimpleNamespace(
        outputs=lambda obs: (np.full((1, 3), 1 / 3), obs.reshape(1, -1)[:, 0]),
        choose=lambda obs: np.array([int(obs.flat[0]) % 3]),
        saliency=lambda obs, actions: np.ones((len(obs), 2, 2)),
    )


@pytest.mark.parametrize("max_steps, steps, end", [(None, 5, "terminated"), (3, 3, "max_steps")])
def test_play_episode_records_each_step_before_it_is_taken(max_steps, steps, end):
    ep = ia.play_episode(counting_agent(), CountingEnv(end=5), max_steps)
    assert len(ep.actions) == steps and ep.end == end
    assert ep.obs[:, 0, 0, 0].tolist() == ep.values.tolist() == list(range(steps))
    assert ep.screens[:, 0, 0, 0].tolist() == list(range(steps))
    assert ep.rewards.tolist() == list(range(1, steps + 1))  # the reward that followed each step's action
    assert ep.lost.tolist() == [False] * (steps - 1) + [end == "terminated"]


@pytest.mark.filterwarnings("ignore:os.fork")  # JAX's warning; reading the video forks and execs ffmpeg
def test_panel_video_has_one_frame_per_step(tmp_path):
    T = 7
    ep = ia.play_episode(counting_agent(), CountingEnv(end=T), None)
    agent = SimpleNamespace(
        kind="probabilities",
        action_names=["NOOP", "LEFT", "RIGHT"],
        family="minatar",
        script="ppo_minatar_jax.py",
        args=SimpleNamespace(env_id="Breakout-MinAtar"),
    )
    ia.render_panel(ep, agent, tmp_path)
    frames = imageio_ffmpeg.read_frames(str(tmp_path / "panel.mp4"))
    size = next(frames)["size"]
    assert size == (960, 480) and sum(1 for _ in frames) == T
    assert plt.imread(tmp_path / "panel.png").shape[:2] == (2 * 480, 3 * 960)  # 6 frames, 3 a row


# ---- end to end ------------------------------------------------------------------------------------
PPO_TINY = [
    "--num-envs",
    8,
    "--num-steps",
    8,
    "--num-minibatches",
    1,
    "--update-epochs",
    1,
    "--total-timesteps",
    64,
    "--log-frequency",
    64,
    "--eval-frequency",
    64,
    "--eval-episodes",
    2,
    "--final-eval-episodes",
    2,
]
ATARI_TINY = ["--eval-episodes", 1, "--final-eval-episodes", 1, "--eval-max-frames", 200]
TINY_RUNS = {  # the smallest budgets that write a checkpoint
    "dqn_cartpole.py": [
        "--total-timesteps",
        300,
        "--learning-starts",
        100,
        "--buffer-size",
        300,
        "--eval-frequency",
        300,
        "--eval-episodes",
        1,
        "--final-eval-episodes",
        1,
    ],
    "dqn_atari.py": [
        "--total-timesteps",
        100,
        "--learning-starts",
        64,
        "--buffer-size",
        100,
        "--eval-frequency",
        100,
        *ATARI_TINY,
    ],
    "a2c_atari.py": ["--total-timesteps", 10, "--num-envs", 2, "--num-steps", 5, *ATARI_TINY],
    "ppo_minatar_jax.py": [*PPO_TINY, "--hidden-sizes", 16],
    "ppo_minatar_cnn_jax.py": [*PPO_TINY, "--channels", 4, "--hidden-size", 8],
}
EXPECTED_TAGS = {
    "dqn_cartpole.py": "losses/td_loss",
    "dqn_atari.py": "losses/q_values",
    "a2c_atari.py": "losses/entropy",
    "ppo_minatar_jax.py": "losses/approx_kl",
    "ppo_minatar_cnn_jax.py": "losses/explained_variance",
}
MAX_STEPS, EPISODES = 12, 3


@pytest.mark.parametrize("script", TINY_RUNS)
def test_end_to_end_on_a_tiny_run(script, workdir):
    proc = run_script(script, *TINY_RUNS[script], "--run-name", "tiny", "--save-model", "--no-cuda", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = workdir / "runs" / "tiny"
    proc = run_script(TOOL, run, "--episodes", EPISODES, "--max-steps", MAX_STEPS, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run / "inspect"
    for name in ("panel.mp4", "panel.png", "failures.png", "training.png", "inspect.json"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "inspect.json").read_text())
    assert report["script"] == script and {"panel", "failures", "training", "timings_s"} <= report.keys()
    panel, failures = report["panel"], report["failures"]
    steps = panel["steps"]
    assert 0 < steps <= MAX_STEPS and len(panel["scores_per_step"]) == len(panel["values_per_step"]) == steps
    assert imageio_ffmpeg.count_frames_and_secs(str(out / "panel.mp4"))[0] == steps
    assert panel["value"]["min"] <= panel["value"]["mean"] <= panel["value"]["max"]
    assert sum(panel["action_counts"]) == steps
    if "ppo" in script or "a2c" in script:
        entropy = panel["entropy"]
        assert 0 <= entropy["min"] <= entropy["mean"] <= entropy["max"] <= entropy["uniform"] + 1e-6
    else:
        assert panel["q_gap"]["min"] >= 0
    assert failures["episodes"] == EPISODES == failures["terminations"] + failures["truncations"]
    assert len(failures["episode_length"]) == 3 and failures["heatmaps"]
    for spread in failures["heatmaps"].values():
        assert {"total", "cells_90", "entropy_bits"} <= spread.keys()
    assert EXPECTED_TAGS[script] in report["training"]["tags"]
    assert {"load", "panel_episode", "panel_render", "failures", "training", "total"} <= report["timings_s"].keys()


# ---- bad input -------------------------------------------------------------------------------------
def test_bad_input(workdir):
    assert_bad_input(TOOL, workdir / "nowhere", cwd=workdir, mentions=["nowhere", "does not exist"])
    run = workdir / "no_checkpoint"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"script": "dqn_atari.py"}))
    assert_bad_input(TOOL, run, cwd=workdir, mentions=["no checkpoint", "dqn_atari.pt", "--save-model"])
    (run / "dqn_atari.pt").write_bytes(b"not a checkpoint")
    assert_bad_input(TOOL, run, cwd=workdir, mentions=["not a checkpoint", "--save-model"])
    assert_bad_input(TOOL, run, "--episodes", 0, cwd=workdir, mentions="--episodes")
    assert not (run / "inspect").exists(), "bad input must stop before anything is written"
