"""Tests of dqn_atari.py: the replay buffer against real AtariVectorEnv stacks, the life-loss and autoreset
bookkeeping, reward clipping, the evaluation protocol, a smoke run on Breakout, bad input."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import assert_bad_input, check_run_contract, read_scalars, run_script

import dqn_atari as d

SCRIPT = "dqn_atari.py"
CPU = torch.device("cpu")


class ConstantQ(nn.Module):
    """A 'network' whose greedy action is always `action` (deterministic policies for the protocol tests)."""

    def __init__(self, n_actions: int, action: int):
        super().__init__()
        self.q = torch.zeros(n_actions)
        self.q[action] = 1.0

    def forward(self, x):
        return self.q.expand(len(x), -1)


def is_reset_stack(obs):
    return not obs[:-1].any() and obs[-1].any()


# ---- environment ids -------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id, game", [
    ("BreakoutNoFrameskip-v4", "breakout"), ("PongNoFrameskip-v4", "pong"), ("ALE/Breakout-v5", "breakout"),
    ("SpaceInvadersNoFrameskip-v4", "space_invaders"), ("ALE/MontezumaRevenge-v5", "montezuma_revenge"),
    ("Breakout-v4", "breakout"), ("CartPole-v1", None), ("Breakout", None), ("ALE/NoSuchGame-v5", None),
    ("BreakoutNoFrameskip-v4-ram", None),
])
def test_env_id_maps_to_rom(env_id, game):
    assert d.game_name(env_id) == game


# ---- replay buffer ---------------------------------------------------------------------------------
def test_buffer_bytes_per_transition():
    rb = d.ReplayBuffer(50_000, 1, CPU)
    per_transition = rb.nbytes / rb.capacity
    assert rb.capacity == 50_000
    assert per_transition == 84 * 84 + 8  # one frame, action, raw reward, terminal, history, real
    assert d.ReplayBuffer.nbytes_for(1_000_000, 1) == per_transition * 1_000_000 <= 7.1e9
    assert d.ReplayBuffer.nbytes_for(1_000_000, 8) <= 7.1e9


def collect(game, num_envs, steps, capacity, seed, max_frames):
    """Random play through transition_flags + ReplayBuffer.add exactly as train() does. Returns the buffer and
    the ground truth: every real transition (by an independent reset detector: the ALE episode frame
    number drops only at a reset) keyed by the bytes of its obs stack."""
    envs, obs, info = d.make_envs(game, num_envs, seed, max_frames)
    rb = d.ReplayBuffer(capacity, num_envs, CPU)
    rng = np.random.default_rng(seed)
    lives, efn = info["lives"], info["episode_frame_number"]
    autoreset = np.zeros(num_envs, dtype=bool)
    truth, counts = {}, {"life_loss": 0, "game_over": 0, "cut": 0, "first": 0}
    for _ in range(steps):
        actions = rng.integers(0, envs.single_action_space.n, size=num_envs)
        next_obs, rewards, term, trunc, info = envs.step(actions)
        live, td_terminal, episode_end = d.transition_flags(term, trunc, info["lives"], lives, autoreset)
        was_reset = info["episode_frame_number"] < efn
        assert np.array_equal(live, ~was_reset), "a reset step was taken for a transition (or the reverse)"
        for i in np.flatnonzero(live):
            # A list per stack: static screens (e.g. Breakout waiting for FIRE) repeat the same stack.
            truth.setdefault(obs[i].tobytes(), []).append((actions[i], rewards[i], td_terminal[i], next_obs[i]))
            counts["life_loss"] += td_terminal[i] and not term[i]
            counts["game_over"] += term[i]
            counts["cut"] += trunc[i] and not td_terminal[i]
            counts["first"] += is_reset_stack(obs[i])
        rb.add(np.flatnonzero(live), obs[live], actions[live], rewards[live], next_obs[live],
               td_terminal[live], trunc[live], episode_end[live])
        lives, efn, autoreset, obs = info["lives"], info["episode_frame_number"], episode_end, next_obs
    envs.close()
    return rb, truth, counts


@pytest.fixture(scope="module")
def filled_buffer():
    # 2 envs, 150 slots each, ~1,600 transitions: wrapped ~5 times; a 640-frame cap (160 steps) cuts most games.
    return collect("breakout", 2, 800, 300, seed=3, max_frames=640)


def all_slots(rb):
    env = torch.arange(rb.num_envs).repeat_interleave(rb.slots)
    age = torch.arange(rb.slots).repeat(rb.num_envs)
    return rb.gather(env, age)


def test_rebuilt_stacks_equal_env_stacks(filled_buffer):
    rb, truth, counts = filled_buffer
    assert rb.size.sum() == rb.capacity and len(truth) > 3 * rb.capacity, "buffer did not wrap around"
    assert counts["life_loss"] and counts["game_over"] and counts["cut"] and counts["first"], counts
    obs, actions, rewards, next_obs, terminated, valid = all_slots(rb)
    valid = valid.bool()
    assert valid.sum() >= rb.capacity - rb.num_envs * 5  # only newest / history-less / cut-marker slots drop
    seen_first = 0
    for k in np.flatnonzero(valid.numpy()):
        key = obs[k].numpy().tobytes()
        assert key in truth, "a rebuilt stack matches no env observation (crossed an episode start or wraparound)"
        # s' is only used (and only guaranteed) when the TD target bootstraps.
        assert any(actions[k] == a and rewards[k] == r and bool(terminated[k]) == t
                   and (t or np.array_equal(next_obs[k].numpy(), n)) for a, r, t, n in truth[key]), \
            "stored transition differs from the env's (action, reward, terminal or next stack)"
        seen_first += is_reset_stack(obs[k].numpy())
    assert seen_first > 0, "no stack right after a reset was checked"


def test_truncated_transitions_bootstrap_from_their_real_next_obs(filled_buffer):
    rb, truth, _ = filled_buffer
    obs, _, _, next_obs, terminated, valid = all_slots(rb)
    cut_slots = ~rb.real.flatten()  # markers written after a frame-cap cut
    assert cut_slots.any()
    # The transition just before each marker is the cut one: non-terminal, next obs = the env's last obs.
    before = torch.nonzero(cut_slots).flatten() - 1
    checked = 0
    for k in before.tolist():
        if valid[k] and obs[k].numpy().tobytes() in truth:
            assert terminated[k] == 0
            assert any(np.array_equal(next_obs[k].numpy(), n) for *_, n in truth[obs[k].numpy().tobytes()])
            checked += 1
    assert checked > 0


def test_sample_is_uniform_over_valid_slots_and_seeded(filled_buffer):
    rb = filled_buffer[0]
    b1 = rb.sample(4096, torch.Generator().manual_seed(0))
    b2 = rb.sample(4096, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(b1, b2))
    assert b1[-1].mean() > 0.95  # almost every draw is a usable transition
    assert len({o.numpy().tobytes() for o in b1[0][:512]}) > 200  # spread over the buffer


def test_sample_and_update_never_read_the_device(filled_buffer, monkeypatch):
    """With the buffer on a GPU, sampling and the update must not wait on the host: any read of a tensor's
    value into Python (item, bool, numpy, ...) or a boolean-mask index (its size depends on the data)
    is a device sync. Here every such read raises, so one slipping into the hot path fails the test."""
    rb, _, _ = filled_buffer
    q_network, target_network = d.QNetwork(4), d.QNetwork(4)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-4, fused=True)  # as the script builds it
    generator = torch.Generator().manual_seed(0)

    def forbid(name):
        def read(*args, **kwargs):
            raise AssertionError(f"host read in the hot path: Tensor.{name}")
        return read

    for name in ("item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbid(name))
    getitem = torch.Tensor.__getitem__

    def no_mask_getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        assert not any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts), "boolean-mask index"
        return getitem(self, index)

    monkeypatch.setattr(torch.Tensor, "__getitem__", no_mask_getitem)
    for double_q in (False, True):
        loss, q_mean = d.dqn_update(q_network, target_network, optimizer, rb.sample(32, generator), 0.99, double_q)
    monkeypatch.undo()
    assert np.isfinite(loss.item()) and np.isfinite(q_mean.item())


def test_no_transition_across_autoreset():
    # The step after a finished game returns the reset obs with reward 0 and no flags: not a transition.
    term, trunc = np.array([True, False, False]), np.array([False, True, False])
    lives, prev = np.array([0, 3, 3]), np.array([1, 3, 3])
    live, _, end = d.transition_flags(term, trunc, lives, prev, autoreset=np.zeros(3, bool))
    assert live.all() and end.tolist() == [True, True, False]
    live, td, end = d.transition_flags(np.zeros(3, bool), np.zeros(3, bool), np.array([5, 5, 3]), lives,
                                       autoreset=end)
    assert live.tolist() == [False, False, True] and not td.any() and not end.any()


def test_life_loss_ends_td_chain_but_not_the_episode():
    """td_terminal must equal ALE's own life-loss termination signal; the episode must run to game over."""
    steps, seed = 600, 7
    envs, obs, info = d.make_envs("breakout", 2, seed)
    ref = d.AtariVectorEnv("breakout", 2, life_loss_info=True, reward_clipping=False, noop_max=d.NOOP_MAX)
    ref.reset(seed=seed)
    rng = np.random.default_rng(0)
    lives, autoreset, life_losses, game_overs = info["lives"], np.zeros(2, bool), 0, 0
    for _ in range(steps):
        actions = rng.integers(0, 4, size=2)
        _, rewards, term, trunc, info = envs.step(actions)
        _, ref_rewards, ref_term, _, _ = ref.step(actions)
        live, td_terminal, episode_end = d.transition_flags(term, trunc, info["lives"], lives, autoreset)
        assert np.array_equal(td_terminal, ref_term & live) and np.array_equal(rewards, ref_rewards)
        life_losses += (td_terminal & ~episode_end).sum()
        game_overs += episode_end.sum()
        assert (info["lives"][episode_end] == 0).all(), "episode ended before the game was over"
        lives, autoreset = info["lives"], episode_end
    assert life_losses >= 4 * game_overs > 0


# ---- loss ------------------------------------------------------------------------------------------
def test_rewards_clipped_only_in_the_loss():
    rb = d.ReplayBuffer(64, 1, CPU)
    frames = np.random.default_rng(0).integers(0, 255, (3, 4, 84, 84), dtype=np.uint8)
    rb.add(np.array([0]), frames[:1], np.array([2]), np.array([4.0]), frames[1:2], np.array([True]),
           np.array([False]), np.array([False]))
    rb.add(np.array([0]), frames[1:2], np.array([0]), np.array([0.0]), frames[2:3], np.array([False]),
           np.array([False]), np.array([False]))
    batch = rb.sample(8, torch.Generator().manual_seed(0))
    assert (batch[2] == 4.0).all(), "the buffer must keep raw rewards"
    net = d.QNetwork(3)
    nn.init.zeros_(net.net[-1].weight), nn.init.zeros_(net.net[-1].bias)  # Q = 0 everywhere
    loss, _ = d.dqn_update(net, d.QNetwork(3), torch.optim.SGD(net.parameters(), lr=0.0), batch, 0.99, False)
    assert loss.item() == pytest.approx(0.5)  # Huber(0 - clip(4)=1) = 0.5; unclipped it would be 3.5


def test_invalid_slots_carry_no_weight():
    q = torch.nn.Linear(1, 2)
    obs = torch.zeros(2, 1)
    batch = (obs, torch.tensor([0, 0]), torch.tensor([1.0, 1000.0]), obs, torch.ones(2), torch.tensor([1.0, 0.0]))
    nn.init.zeros_(q.weight), nn.init.zeros_(q.bias)
    loss, _ = d.dqn_update(q, q, torch.optim.SGD(q.parameters(), lr=0.0), batch, 0.99, False)
    assert loss.item() == pytest.approx(0.5)


def test_double_q_target_uses_online_argmax():
    r, term = torch.tensor([1.0]), torch.tensor([0.0])
    nq_target, nq_online = torch.tensor([[10.0, 2.0]]), torch.tensor([[0.0, 5.0]])
    assert d.td_target(r, nq_target, term, 0.5).item() == 6.0
    assert d.td_target(r, nq_target, term, 0.5, nq_online).item() == 2.0
    assert d.td_target(r, nq_target, torch.tensor([1.0]), 0.5).item() == 1.0


# ---- evaluation ------------------------------------------------------------------------------------
def test_evaluation_protocol_defaults():
    args = d.Args()
    assert (args.eval_epsilon, args.eval_max_frames, args.final_eval_episodes, d.NOOP_MAX) == (0.05, 18_000, 30, 30)


def test_evaluation_caps_games_at_18000_frames():
    # Breakout never relaunches the ball without FIRE: an always-NOOP policy plays until the frame cap.
    returns, lengths = d.evaluate(ConstantQ(4, 0), "breakout", 1, seed=0, device=CPU, epsilon=0.0)
    assert lengths == [18_000 // 4]


def test_evaluation_scores_whole_games_raw():
    # Space Invaders pays 5-30 points per alien: raw scores exceed the number of rewards.
    returns, lengths = d.evaluate(ConstantQ(6, 1), "space_invaders", 2, seed=0, device=CPU, epsilon=0.0)
    envs, _, info = d.make_envs("space_invaders", 2, 0, 18_000)
    clipped, lives_lost, running = np.zeros(2), np.zeros(2), np.ones(2, bool)
    lives = info["lives"]
    while running.any():
        _, r, term, trunc, info = envs.step(np.ones(2, dtype=np.int64))
        clipped += np.clip(r, -1, 1) * running
        lives_lost += (info["lives"] < lives) * running
        lives, running = info["lives"], running & ~(term | trunc)
    assert (np.array(returns) > 2 * clipped).all() and (clipped > 0).all()
    assert (lives_lost >= 2).all(), "an evaluation episode stopped at the first life loss"


def test_noop_starts_randomize_the_first_frame():
    _, obs, info = d.make_envs("breakout", 8, 0)
    assert len(set(info["episode_frame_number"].tolist())) > 3
    assert (info["episode_frame_number"] <= d.NOOP_MAX + 1).all()
    assert all(is_reset_stack(o) for o in obs)


# ---- end to end ------------------------------------------------------------------------------------
SMOKE = ["--env-id", "BreakoutNoFrameskip-v4", "--seed", "5", "--total-timesteps", "600", "--num-envs", "2",
         "--learning-starts", "480", "--buffer-size", "1000", "--target-network-frequency", "50",
         "--exploration-fraction", "1.0", "--end-e", "0.5",  # keep pressing FIRE often enough to finish games
         "--eval-episodes", "1", "--final-eval-episodes", "2", "--eval-max-frames", "800", "--save-model"]


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    runs = []
    for name in ("a", "b"):
        cwd = tmp_path_factory.mktemp(f"smoke_{name}")
        proc = run_script(SCRIPT, *SMOKE, "--run-name", "smoke", cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(cwd / "runs" / "smoke")
    return runs


def test_smoke_run_on_breakout(smoke_runs):
    run = smoke_runs[0]
    summary = check_run_contract(run, SCRIPT, "BreakoutNoFrameskip-v4", 5, 600)
    assert summary["updates"] == (600 - 480) // 4, "one update per 4 env steps whatever --num-envs is"
    scalars = read_scalars(run)
    lengths = [v for _, v in scalars["charts/episodic_length"]]
    # Whole games of random Breakout (5 lives) last >100 steps; a single life about 20-60.
    assert min(lengths) > 100, lengths
    checkpoint = torch.load(run / "dqn_atari.pt", map_location="cpu")
    steps = {float(s["step"]) for s in checkpoint["optimizer"]["state"].values()}
    assert steps == {float(summary["updates"])}, "Adam state lost: optimizer rebuilt during training"


def test_same_seed_same_result(smoke_runs):
    a, b = (json.loads((r / "summary.json").read_text()) for r in smoke_runs)
    assert a["final_eval"] == b["final_eval"]
    sa, sb = read_scalars(smoke_runs[0]), read_scalars(smoke_runs[1])
    for tag in ("losses/td_loss", "charts/episodic_return"):
        assert sa[tag] == sb[tag], tag
    wa = torch.load(smoke_runs[0] / "dqn_atari.pt")["q_network"]
    wb = torch.load(smoke_runs[1] / "dqn_atari.pt")["q_network"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_eval_checkpoint_without_training(smoke_runs, workdir):
    ckpt = smoke_runs[0] / "dqn_atari.pt"
    proc = run_script(SCRIPT, "--eval-checkpoint", ckpt, "--final-eval-episodes", "2", "--eval-max-frames", "800",
                      "--run-name", "ev", "--capture-video", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((workdir / "runs" / "ev" / "summary.json").read_text())
    assert summary["final_eval"]["episodes"] == 2 and summary["total_timesteps"] == 600
    assert not list((workdir / "runs" / "ev").glob("events.*")), "evaluation must not train"
    assert list((workdir / "runs" / "ev" / "videos").glob("*.mp4"))


# ---- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, mentions", [
    (["--env-id", "NoSuchGame-v9"], ["--env-id", "BreakoutNoFrameskip-v4"]),
    (["--buffer-size", "10000000"], ["--buffer-size", "GiB"]),
    (["--batch-size", "64", "--buffer-size", "32"], ["--batch-size", "--buffer-size"]),
    (["--num-envs", "0"], "--num-envs"),
])
def test_bad_input(args, mentions, workdir):
    assert_bad_input(SCRIPT, *args, cwd=workdir, mentions=mentions)
