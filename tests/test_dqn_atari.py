"""Tests of dqn_atari.py: the replay buffer against real AtariVectorEnv stacks, the life-loss and autoreset
bookkeeping, reward clipping, the evaluation protocol, a smoke run on Breakout, bad input, checkpoints and
--resume, non-finite stops, the memory check, the environment as run (sticky actions)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import (
    assert_available_memory,
    assert_bad_input,
    assert_kill_resume_equal,
    assert_layer_grad_norms,
    assert_nonfinite_stops,
    assert_rejects_checkpoint,
    bad_torch_checkpoints,
    check_run_contract,
    load_script,
    read_scalars,
    run_script,
    weight_layers,
)
from scipy.stats import chisquare

SCRIPT, d = load_script("dqn_atari.py")  # or the copy given by --script
CHECKPOINT = f"{Path(SCRIPT).stem}.pt"  # what --save-model writes
CPU = torch.device("cpu")


class ConstantQ(nn.Module):
    """A 'network' whose greedy action is always `action` (deterministic policies for the protocol tests)."""

    def __init__(self, n_actions: int, action: int):
        super().__init__()
        self.q = torch.zeros(n_actions)
        self.q[action] = 1.0

    def forward(self, x):
        return self.q.expand(len(x), -1)


class PixelSumQ(nn.Module):
    """A deterministic policy that still varies with the screen: greedy action = pixel sum mod n_actions."""

    def __init__(self, n_actions: int):
        super().__init__()
        self.n_actions = n_actions

    def forward(self, x):
        return nn.functional.one_hot(x.flatten(1).long().sum(1) % self.n_actions, self.n_actions).float()


def is_reset_stack(obs):
    return not obs[:-1].any() and obs[-1].any()


# ---- environment ids -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env_id, game",
    [
        ("BreakoutNoFrameskip-v4", "breakout"),
        ("PongNoFrameskip-v4", "pong"),
        ("ALE/Breakout-v5", "breakout"),
        ("SpaceInvadersNoFrameskip-v4", "space_invaders"),
        ("ALE/MontezumaRevenge-v5", "montezuma_revenge"),
        ("Breakout-v4", "breakout"),
        ("CartPole-v1", None),
        ("Breakout", None),
        ("ALE/NoSuchGame-v5", None),
        ("BreakoutNoFrameskip-v4-ram", None),
    ],
)
def test_env_id_maps_to_rom(env_id, game):
    assert d.game_name(env_id) == game


# ---- replay buffer ---------------------------------------------------------------------------------
def test_buffer_bytes_per_transition():
    rb = d.ReplayBuffer(50_000, 1, CPU)
    tensors = (rb.frames, rb.actions, rb.rewards, rb.terminated, rb.history, rb.real)
    per_transition = sum(t.numel() * t.element_size() for t in tensors) / rb.capacity
    assert rb.capacity == 50_000
    assert per_transition == 84 * 84 + 8  # one frame, action, raw reward, terminal, history, real
    assert d.ReplayBuffer.nbytes_for(1_000_000, 1) == per_transition * 1_000_000 <= 7.1e9
    assert d.ReplayBuffer.nbytes_for(1_000_000, 8) <= 7.1e9


def collect(game, num_envs, steps, capacity, seed, max_frames):
    """Random play through transition_flags + ReplayBuffer.add exactly as train() does. Returns the buffer and
    the ground truth: every real transition (by an independent reset detector: the ALE episode frame
    number drops only at a reset) keyed by the bytes of its obs stack."""
    envs, obs, info = d.make_envs(game, num_envs, seed, max_frames=max_frames)
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
            cut = trunc[i] and not td_terminal[i]
            truth.setdefault(obs[i].tobytes(), []).append((actions[i], rewards[i], td_terminal[i], next_obs[i], cut))
            counts["life_loss"] += td_terminal[i] and not term[i]
            counts["game_over"] += term[i]
            counts["cut"] += cut
            counts["first"] += is_reset_stack(obs[i])
        rb.add(
            np.flatnonzero(live),
            obs[live],
            actions[live],
            rewards[live],
            next_obs[live],
            terminated=td_terminal[live],
            truncated=trunc[live],
            episode_end=episode_end[live],
        )
        lives, efn, autoreset, obs = info["lives"], info["episode_frame_number"], episode_end, next_obs
    envs.close()
    return rb, truth, counts


@pytest.fixture(scope="module")
def filled_buffer():
    # 2 envs, 150 slots each, ~1,600 transitions: wrapped ~5 times; a 640-frame cap (160 steps) cuts most games.
    return collect("breakout", 2, 800, 300, seed=3, max_frames=640)


def all_slots(rb):
    """Every slot's transition in age order (env by env, oldest first) and whether it is a cut marker."""
    env = torch.arange(rb.num_envs).repeat_interleave(rb.slots)
    age = torch.arange(rb.slots).repeat(rb.num_envs)
    slot = (rb.pos_t[env] - rb.size_t[env] + age) % rb.slots
    return rb.gather(env, age), ~rb.real[env, slot]


def test_rebuilt_stacks_equal_env_stacks(filled_buffer):
    rb, truth, counts = filled_buffer
    assert rb.size.sum() == rb.capacity and len(truth) > 3 * rb.capacity, "buffer did not wrap around"
    assert counts["life_loss"] and counts["game_over"] and counts["cut"] and counts["first"], counts
    (obs, actions, rewards, next_obs, terminated, valid), _ = all_slots(rb)
    valid = valid.bool()
    assert valid.sum() >= rb.capacity - rb.num_envs * 5  # only newest / history-less / cut-marker slots drop
    seen_first = 0
    for k in np.flatnonzero(valid.numpy()):
        key = obs[k].numpy().tobytes()
        assert key in truth, "a rebuilt stack matches no env observation (crossed an episode start or wraparound)"
        # s' is only used (and only guaranteed) when the TD target bootstraps.
        assert any(
            actions[k] == a
            and rewards[k] == r
            and bool(terminated[k]) == t
            and (t or np.array_equal(next_obs[k].numpy(), n))
            for a, r, t, n, _ in truth[key]
        ), "stored transition differs from the env's (action, reward, terminal or next stack)"
        seen_first += is_reset_stack(obs[k].numpy())
    assert seen_first > 0, "no stack right after a reset was checked"


def test_truncated_transitions_bootstrap_from_their_real_next_obs(filled_buffer):
    rb, truth, _ = filled_buffer
    # With the write heads mid-ring, age order (gather's) and ring order differ: reading one as the other
    # would pair a marker with an unrelated transition.
    assert (rb.pos != 0).all()
    (obs, _, _, next_obs, terminated, valid), marker = all_slots(rb)
    # The transition just before each marker (in age order, same env) is the cut one.
    ages = torch.arange(len(marker)) % rb.slots
    cut = (torch.nonzero(marker & (ages >= d.STACK)).flatten() - 1).tolist()  # ages >= 3: full history
    assert cut
    for k in cut:
        assert valid[k] and not valid[k + 1], "the cut transition is sampled, its marker is not"
        assert terminated[k] == 0, "a truncated game must bootstrap"
        key = obs[k].numpy().tobytes()
        # s' rebuilt through the marker equals the env's last obs of the cut game.
        assert any(c and np.array_equal(next_obs[k].numpy(), n) for *_, n, c in truth.get(key, [])), (
            "the slot before a marker is not the cut transition, or its next obs is not the game's last"
        )


def test_sample_is_seeded_and_spread_over_the_buffer(filled_buffer):
    rb = filled_buffer[0]
    b1 = rb.sample(4096, torch.Generator().manual_seed(0))
    b2 = rb.sample(4096, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(b1, b2))
    assert b1[-1].mean() > 0.95  # almost every draw is a usable transition
    assert len({o.numpy().tobytes() for o in b1[0][:512]}) > 200  # spread over the buffer


def test_sample_is_uniform_over_the_slots_with_a_successor():
    rb = d.ReplayBuffer(60, 2, CPU)  # 30 slots per env
    frames = np.zeros((1, d.STACK, *d.FRAME_SHAPE), dtype=np.uint8)
    ids = {0: [], 1: []}  # each transition's reward is its id
    for t in range(45):  # env 0 wraps (its write head mid-ring), env 1 fills 20 of its 30 slots
        for env in (0, 1) if t < 20 else (0,):
            ids[env].append(len(ids[0]) + len(ids[1]) + 1)
            end = np.array([t % 7 == 6])  # games end now and then: stacks of all history lengths
            rb.add(
                np.array([env]),
                frames,
                np.array([0]),
                np.array([float(ids[env][-1])]),
                frames,
                terminated=end,
                truncated=np.array([False]),
                episode_end=end,
            )
    drawable = ids[0][-30:-1] + ids[1][:-1]  # all stored but each env's newest (no successor yet)
    generator = torch.Generator().manual_seed(0)
    drawn = torch.cat([rb.sample(2048, generator).rewards for _ in range(4)]).long()
    counts = torch.bincount(drawn, minlength=len(ids[0]) + len(ids[1]) + 1)
    assert counts.sum() == counts[drawable].sum(), "drew a slot without successor, overwritten or unfilled"
    # Chi-square goodness of fit to uniform over the 48 drawable slots (~170 draws each expected):
    # picking an env uniformly then a slot in it (env 1 holds fewer) fails it by orders of magnitude.
    assert chisquare(counts[drawable].numpy()).pvalue > 1e-4


# Calls that copy a tensor's data to the host (a device sync when it lives on a GPU): reading a value into
# Python, or an op whose output size depends on the data.
HOST_READS = {
    torch.Tensor: (
        "item",
        "tolist",
        "numpy",
        "cpu",
        "nonzero",
        "argwhere",
        "masked_select",
        "unique",
        "equal",
        "allclose",
        "__bool__",
        "__float__",
        "__int__",
        "__index__",
        "__array__",
    ),
    torch: ("nonzero", "argwhere", "masked_select", "unique", "equal", "allclose", "is_nonzero"),
}


def forbid_host_reads(monkeypatch):
    """Makes every host read (HOST_READS, a boolean-mask index, a copy to the CPU) raise. On a CPU-only
    machine every tensor is already on the host, so the calls themselves are caught: the hot path moves
    nothing between devices, and a move to any CPU device is one to the host on a GPU machine."""

    def forbid(name, check=lambda *args, **kwargs: True, original=None):
        def call(*args, **kwargs):
            assert not check(*args, **kwargs), f"host read in the hot path: {name}"
            return original(*args, **kwargs)

        return call

    for owner, names in HOST_READS.items():
        for name in names:
            monkeypatch.setattr(owner, name, forbid(f"{owner.__name__}.{name}"))

    def mask(self, index, *value):
        parts = index if isinstance(index, tuple) else (index,)
        return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)

    def to_cpu(self, *args, **kwargs):
        target = kwargs.get("device", args[0] if args else None)
        target = target.device if isinstance(target, torch.Tensor) else target
        return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"

    for name, check in (("__getitem__", mask), ("__setitem__", mask), ("to", to_cpu), ("copy_", to_cpu)):
        monkeypatch.setattr(torch.Tensor, name, forbid(f"Tensor.{name}", check, getattr(torch.Tensor, name)))
    monkeypatch.setattr(
        torch, "where", forbid("torch.where(condition)", lambda *args, **kwargs: len(args) == 1, torch.where)
    )


def test_sample_and_update_never_read_the_device(filled_buffer, monkeypatch):
    """With the buffer on a GPU, sampling and the update must not wait on the host. Here every host read
    raises, so one slipping into the hot path fails the test."""
    rb, _, _ = filled_buffer
    q_network, target_network = d.QNetwork(4), d.QNetwork(4)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-4, fused=True)  # as the script builds it
    generator = torch.Generator().manual_seed(0)
    forbid_host_reads(monkeypatch)
    with pytest.raises(AssertionError, match="host read"):  # the trap works
        torch.nonzero(torch.ones(2))
    for double_q in (False, True):
        metrics = d.dqn_update(q_network, target_network, optimizer, rb.sample(32, generator), 0.99, double_q)
    monkeypatch.undo()
    assert metrics and all(np.isfinite(v.item()) for v in metrics.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync debug mode needs a GPU")
def test_sample_and_update_do_not_sync_on_cuda():
    cuda = torch.device("cuda")
    rb = d.ReplayBuffer(64, 1, cuda)
    frames = np.random.default_rng(0).integers(0, 255, (20, d.STACK, *d.FRAME_SHAPE), dtype=np.uint8)
    for t in range(19):
        end = np.array([t == 9])
        rb.add(
            np.array([0]),
            frames[t : t + 1],
            np.array([t % 4]),
            np.array([1.0]),
            frames[t + 1 : t + 2],
            terminated=end,
            truncated=np.array([False]),
            episode_end=end,
        )
    q_network, target_network = d.QNetwork(4).to(cuda), d.QNetwork(4).to(cuda)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-4, fused=True)
    generator = torch.Generator(device=cuda).manual_seed(0)
    # Once first: CUDA, cuBLAS and cuDNN set themselves up on first use; a sync in the hot path recurs.
    d.dqn_update(q_network, target_network, optimizer, rb.sample(32, generator), 0.99, False)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for double_q in (False, True):
            loss = d.dqn_update(q_network, target_network, optimizer, rb.sample(32, generator), 0.99, double_q)[
                "td_loss"
            ]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


def test_no_transition_across_autoreset():
    # The step after a finished game returns the reset obs with reward 0 and no flags: not a transition.
    term, trunc = np.array([True, False, False]), np.array([False, True, False])
    lives, prev = np.array([0, 3, 3]), np.array([1, 3, 3])
    live, td, end = d.transition_flags(term, trunc, lives, prev, autoreset=np.zeros(3, bool))
    assert live.all() and end.tolist() == [True, True, False]
    assert td.tolist() == [True, False, False], "a game cut by the frame cap must still bootstrap"
    live, td, end = d.transition_flags(np.zeros(3, bool), np.zeros(3, bool), np.array([5, 5, 3]), lives, autoreset=end)
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
    no = np.array([False])
    rb.add(
        np.array([0]),
        frames[:1],
        np.array([2]),
        np.array([4.0]),
        frames[1:2],
        terminated=np.array([True]),
        truncated=no,
        episode_end=no,
    )
    rb.add(
        np.array([0]),
        frames[1:2],
        np.array([0]),
        np.array([0.0]),
        frames[2:3],
        terminated=no,
        truncated=no,
        episode_end=no,
    )
    batch = rb.sample(8, torch.Generator().manual_seed(0))
    assert (batch.rewards == 4.0).all(), "the buffer must keep raw rewards"
    net = d.QNetwork(3)
    for p in net.parameters():  # Q = 0 everywhere, whatever the layers
        nn.init.zeros_(p)
    loss = d.dqn_update(net, d.QNetwork(3), torch.optim.SGD(net.parameters(), lr=0.0), batch, 0.99, False)["td_loss"]
    assert loss.item() == pytest.approx(0.5)  # Huber(0 - clip(4)=1) = 0.5; unclipped it would be 3.5


@pytest.mark.parametrize("double_q", [False, True])
def test_update_bootstraps_from_next_obs_unless_terminated(double_q):
    q, target = nn.Linear(1, 2), nn.Linear(1, 2)
    nn.init.zeros_(q.weight), nn.init.zeros_(q.bias)  # Q = 0 everywhere: the loss is Huber(0 - target)
    nn.init.ones_(target.weight), nn.init.zeros_(target.bias)  # Q_target(s, .) = s
    obs, next_obs = torch.zeros(2, 1), torch.ones(2, 1)
    batch = d.Batch(obs, torch.tensor([0, 0]), torch.zeros(2), next_obs, torch.tensor([0.0, 1.0]), torch.ones(2))
    loss = d.dqn_update(q, target, torch.optim.SGD(q.parameters(), lr=0.0), batch, 1.0, double_q)["td_loss"]
    # Row 0 bootstraps from Q_target(s') = 1 (Huber 0.5), row 1 is terminal (target 0): mean 0.25.
    assert loss.item() == pytest.approx(0.25)


def test_invalid_slots_carry_no_weight():
    q = torch.nn.Linear(1, 2)
    obs = torch.zeros(2, 1)
    batch = d.Batch(
        obs, torch.tensor([0, 0]), torch.tensor([1.0, 1000.0]), obs, torch.ones(2), valid=torch.tensor([1.0, 0.0])
    )
    nn.init.zeros_(q.weight), nn.init.zeros_(q.bias)
    loss = d.dqn_update(q, q, torch.optim.SGD(q.parameters(), lr=0.0), batch, 0.99, False)["td_loss"]
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
    episodes = d.evaluate(ConstantQ(4, 0), "breakout", 1, seed=0, device=CPU, epsilon=0.0)
    assert episodes.lengths == [18_000 // 4] and episodes.truncated == [True], "the cut must be reported"
    assert d.eval_stats(*episodes)["truncated"] == 1.0 and d.eval_stats(*episodes)["mean_length"] == 4_500


def test_evaluation_scores_whole_games_raw():
    # Space Invaders pays 5-30 points per alien: raw scores exceed the number of rewards.
    policy = PixelSumQ(6)
    returns, lengths, truncated = d.evaluate(policy, "space_invaders", 2, seed=3, device=CPU, epsilon=0.0)
    assert truncated == [False, False], "games that ended by game over were reported as cut"
    envs, obs, info = d.make_envs("space_invaders", 2, 3, max_frames=18_000)
    raw, clipped, lives_lost, running = np.zeros(2), np.zeros(2), np.zeros(2), np.ones(2, bool)
    lives = info["lives"]
    while running.any():
        obs, r, term, trunc, info = envs.step(policy(torch.as_tensor(obs)).argmax(1).numpy())
        raw += r * running
        clipped += np.clip(r, -1, 1) * running
        lives_lost += (info["lives"] < lives) * running
        lives, running = info["lives"], running & ~(term | trunc)
    assert abs(lengths[0] - lengths[1]) > 100  # the shorter game's env resets and scores on meanwhile
    assert returns == raw.tolist(), "points scored after a game ended were counted"
    assert (np.array(returns) > 2 * clipped).all() and (clipped > 0).all()
    assert (lives_lost >= 2).all(), "an evaluation episode stopped at the first life loss"


def test_noop_starts_randomize_the_first_frame():
    _, obs, info = d.make_envs("breakout", 8, 0)
    assert len(set(info["episode_frame_number"].tolist())) > 3
    assert (info["episode_frame_number"] <= d.NOOP_MAX + 1).all()
    assert all(is_reset_stack(o) for o in obs)


# ---- end to end ------------------------------------------------------------------------------------
SMOKE = [
    "--env-id",
    "BreakoutNoFrameskip-v4",
    "--seed",
    "5",
    "--total-timesteps",
    "600",
    "--num-envs",
    "2",
    "--learning-starts",
    "480",
    "--buffer-size",
    "1000",
    "--target-network-frequency",
    "70",
    "--exploration-fraction",
    "1.0",
    "--end-e",
    "0.5",  # keep pressing FIRE often enough to finish games
    "--eval-episodes",
    "1",
    "--final-eval-episodes",
    "2",
    "--eval-max-frames",
    "800",
    "--save-model",
]


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
    checkpoint = torch.load(run / CHECKPOINT, map_location="cpu")
    steps = {float(s["step"]) for s in checkpoint["optimizer"]["state"].values()}
    assert steps == {float(summary["updates"])}, "Adam state lost: optimizer rebuilt during training"
    # Last sync at step 560, then 10 updates: a target that is the online net (or synced every update)
    # would equal it.
    q, target = checkpoint["q_network"], checkpoint["target_network"]
    assert not all(torch.equal(q[k], target[k]) for k in q)


def test_gradient_norms_logged_per_layer(smoke_runs):
    assert_layer_grad_norms(smoke_runs[0], weight_layers(d.QNetwork(4)))


def test_same_seed_same_result(smoke_runs):
    a, b = (json.loads((r / "summary.json").read_text()) for r in smoke_runs)
    assert a["final_eval"] == b["final_eval"]
    sa, sb = read_scalars(smoke_runs[0]), read_scalars(smoke_runs[1])
    for tag in ("losses/td_loss", "charts/episodic_return"):
        assert sa[tag] == sb[tag], tag
    wa = torch.load(smoke_runs[0] / CHECKPOINT)["q_network"]
    wb = torch.load(smoke_runs[1] / CHECKPOINT)["q_network"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_eval_checkpoint_without_training(smoke_runs, workdir):
    ckpt = smoke_runs[0] / CHECKPOINT
    # A buffer far too large for memory: evaluation builds none, so it must not be refused for it.
    proc = run_script(
        SCRIPT,
        "--eval-checkpoint",
        ckpt,
        "--final-eval-episodes",
        "2",
        "--eval-max-frames",
        "800",
        "--run-name",
        "ev",
        "--capture-video",
        "--buffer-size",
        "1000000000",
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((workdir / "runs" / "ev" / "summary.json").read_text())
    assert summary["final_eval"]["episodes"] == 2 and summary["total_timesteps"] == 600
    tags = read_scalars(workdir / "runs" / "ev").keys()
    assert tags <= {"eval/episodic_return", "eval/episodic_length", "eval/final_episodic_return"}, (
        f"evaluation must not train: {tags}"
    )
    assert list((workdir / "runs" / "ev" / "videos").glob("*.mp4"))


def test_training_logs_raw_game_scores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Random play (epsilon 1) ends a game in about 400-700 steps (this seed's first at step 381).
    d.main(
        d.Args(
            env_id="SpaceInvadersNoFrameskip-v4",
            total_timesteps=500,
            num_envs=1,
            learning_starts=500,
            start_e=1.0,
            end_e=1.0,
            buffer_size=1000,
            eval_episodes=1,
            final_eval_episodes=1,
            eval_max_frames=400,
            cuda=False,
            run_name="si",
        )
    )
    returns = [v for _, v in read_scalars(tmp_path / "runs/si")["charts/episodic_return"]]
    # Space Invaders pays 5-30 points per alien: clipped to 1 per reward, a score is a count of kills.
    assert returns and all(r % 5 == 0 and r > 30 for r in returns), returns


# ---- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, mentions",
    [
        (["--env-id", "NoSuchGame-v9"], ["--env-id", "BreakoutNoFrameskip-v4"]),
        (["--buffer-size", "10000000"], ["--buffer-size", "GiB"]),
        (["--batch-size", "64", "--buffer-size", "32"], ["--batch-size", "--buffer-size"]),
        (["--num-envs", "0"], "--num-envs"),
        (["--sticky-action-prob", "1.0"], "--sticky-action-prob"),
        (["--checkpoint-frequency", "-1"], "--checkpoint-frequency"),
    ],
)
def test_bad_input(args, mentions, workdir):
    assert_bad_input(SCRIPT, *args, cwd=workdir, mentions=mentions)


BAD_CHECKPOINTS = {
    **bad_torch_checkpoints({"script": "dqn_cartpole.py", "q_network": {"net.0.weight": torch.zeros(256, 4)}}),
    "other_game": lambda real: real.read_bytes(),  # Breakout's 4 actions, evaluated on Pong's 6
}


@pytest.mark.parametrize("name", BAD_CHECKPOINTS)
def test_eval_checkpoint_rejects_other_files(smoke_runs, tmp_path, monkeypatch, capsys, name):
    content = BAD_CHECKPOINTS[name](smoke_runs[0] / CHECKPOINT)
    env_id = "PongNoFrameskip-v4" if name == "other_game" else "BreakoutNoFrameskip-v4"
    line = assert_rejects_checkpoint(
        lambda path: d.main(
            d.Args(env_id=env_id, eval_checkpoint=path, cuda=False, final_eval_episodes=1, eval_max_frames=400)
        ),
        content,
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert ("--env-id" if name == "other_game" else "--save-model") in line, line


# ---- Endurance: checkpoints, resume, non-finite stops, memory ----------------------------------------
def tiny_args(**overrides):
    """Random-ish Breakout on 2 envs: 300 steps of experience per env, 25 updates by step 300."""
    return d.Args(
        **{
            **dict(
                total_timesteps=600,
                num_envs=2,
                learning_starts=200,
                buffer_size=1000,
                target_network_frequency=100,
                exploration_fraction=1.0,
                end_e=0.5,
                eval_frequency=300,
                eval_episodes=1,
                final_eval_episodes=1,
                eval_max_frames=400,
                cuda=False,
                run_name="tiny",
            ),
            **overrides,
        }
    )


CLI_TINY = [
    "--total-timesteps",
    "900",
    "--num-envs",
    "2",
    "--learning-starts",
    "200",
    "--buffer-size",
    "1000",
    "--target-network-frequency",
    "100",
    "--exploration-fraction",
    "1.0",
    "--end-e",
    "0.5",
    "--eval-frequency",
    "300",
    "--eval-episodes",
    "1",
    "--final-eval-episodes",
    "1",
    "--eval-max-frames",
    "400",
    "--no-cuda",
]


def test_killed_run_resumes_to_the_same_result(workdir):
    # Checkpoints every 300 steps (~3 s here): the kill lands anywhere between (or during) them.
    a, _ = assert_kill_resume_equal(SCRIPT, *CLI_TINY, "--checkpoint-frequency", "300", cwd=workdir)
    assert a["final_eval"]["episodes"] == 1 and len(a["eval_history"]) == 3


def test_checkpoint_holds_the_whole_run_state_and_cuts_games(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d.main(tiny_args(checkpoint_frequency=300, total_timesteps=400))
    checkpoint = torch.load(tmp_path / "runs/tiny/checkpoint", weights_only=True)
    assert checkpoint["global_step"] == 300 and checkpoint["updates"] == 25 and checkpoint["evals"] == 1
    assert checkpoint["syncs"] == 3 and checkpoint["args"]["sticky_action_prob"] == 0.0
    assert {"python", "numpy", "torch", "cuda", "generators"} <= checkpoint["rng"].keys()
    assert len(checkpoint["rng"]["generators"]) == 2 and len(checkpoint["log"]["eval_history"]) == 1
    assert not (tmp_path / "runs/tiny/checkpoint.tmp").exists()
    rb = d.ReplayBuffer(1000, 2, CPU)
    rb.load_state_dict(checkpoint["buffer"])
    assert isinstance(rb.pos, np.ndarray) and rb.pos_t.tolist() == rb.pos.tolist() == rb.size.tolist()
    assert 140 < rb.size.min() and rb.size.max() <= 152 and torch.equal(rb.frames, checkpoint["buffer"]["frames"])
    # The checkpoint cut every game: like a frame-cap cut, the last transition of each env keeps its s' in a
    # marker slot (so it bootstraps), and the next frame starts a new episode (no stack across the restart).
    newest = (rb.pos - 1) % rb.slots
    assert not rb.real[torch.arange(2), torch.as_tensor(newest)].any() and (rb.next_history == 0).all()
    # ... and the cut games are not reported as episodes.
    assert 300 not in [step for step, _ in read_scalars(tmp_path / "runs/tiny").get("charts/episodic_length", [])]


def test_non_finite_loss_stops_the_run_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    calls, original = [0], d.dqn_loss

    def poisoned(*args, **kwargs):  # from the 40th update on (step 360), after the checkpoint at 300
        calls[0] += 1
        loss, q = original(*args, **kwargs)
        return (loss * float("nan") if calls[0] >= 40 else loss), q

    monkeypatch.setattr(d, "dqn_loss", poisoned)
    checkpoint = assert_nonfinite_stops(
        lambda: d.main(tiny_args(checkpoint_frequency=300, checkpoint_buffer=False)), "runs/tiny", capsys, 400
    )
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == 300 and all(torch.isfinite(v).all() for v in saved["q_network"].values())
    assert saved["buffer"] is None  # --no-checkpoint-buffer


def test_resume_refuses_what_it_cannot_continue(workdir, smoke_runs):
    (workdir / "runs/early").mkdir(parents=True)  # killed before its first checkpoint
    assert_bad_input(SCRIPT, "--resume", "runs/early", cwd=workdir, mentions=["--resume", "checkpoint"], keep=True)
    assert_bad_input(SCRIPT, "--resume", smoke_runs[0], cwd=workdir, mentions=["--resume", "finished"], keep=True)
    (workdir / "runs/torn").mkdir()
    (workdir / "runs/torn/checkpoint").write_bytes((smoke_runs[0] / CHECKPOINT).read_bytes()[:5000])
    assert_bad_input(SCRIPT, "--resume", "runs/torn", cwd=workdir, mentions=["--resume", "not a torch"], keep=True)


def test_memory_check_reads_mem_available_and_the_cgroup_limit(tmp_path):
    assert_available_memory(d.available_memory, tmp_path)


# ---- The environment as run ------------------------------------------------------------------------
def test_sticky_actions_follow_the_env_id_everywhere(tmp_path, monkeypatch, smoke_runs):
    made = []

    def spy(*args, **kwargs):  # every env that plays (the probes of the action set pass no settings)
        if "repeat_action_probability" in kwargs:
            made.append(kwargs["repeat_action_probability"])
        return real(*args, **kwargs)

    real = d.AtariVectorEnv
    monkeypatch.setattr(d, "AtariVectorEnv", spy)
    monkeypatch.chdir(tmp_path)
    summary = d.main(tiny_args(env_id="ALE/Breakout-v5", total_timesteps=300, capture_video=True))
    # Training, the periodic and final evaluations, and both envs of the video.
    assert made == [0.25] * 5, made
    assert summary["env"]["sticky_action_prob"] == summary["args"]["sticky_action_prob"] == 0.25
    assert summary["env"]["action_set"] == "minimal (4 actions)" and summary["env"]["noop_max"] == 30
    assert summary["env"]["eval_max_episode_frames"] == 400 and summary["env"]["max_episode_frames"] == 108_000
    assert {"mean_length", "truncated"} <= summary["final_eval"].keys() and summary["status"] == "finished"
    smoke = json.loads((smoke_runs[0] / "summary.json").read_text())
    assert smoke["env"]["sticky_action_prob"] == 0.0, "BreakoutNoFrameskip-v4 has no sticky actions"
    made.clear()
    d.evaluate(ConstantQ(4, 0), "breakout", 1, 0, CPU, max_frames=40, sticky_action_prob=0.1)
    assert made == [0.1]
