"""Tests of dqn_cartpole.py: its pieces, the training loop's bookkeeping, the run contract, learning."""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
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
    start_script,
    weight_layers,
)
from scipy.stats import chisquare

SCRIPT, dqn = load_script("dqn_cartpole.py")  # or the copy given by --script
CHECKPOINT = f"{Path(SCRIPT).stem}.pt"  # what --save-model writes
CPU = torch.device("cpu")
# A short run that trains (updates, target syncs, evaluations) in a few seconds.
TINY = dict(
    total_timesteps=3_000,
    learning_starts=500,
    eval_frequency=1_000,
    eval_episodes=3,
    final_eval_episodes=5,
    buffer_size=2_000,
    cuda=False,
)


def tiny_args(**overrides):
    return dataclasses.replace(dqn.Args(), **{**TINY, "run_name": "tiny", **overrides})


def add_one(rb, value, terminated=0.0):
    rb.add(
        np.full((1, 4), value),
        np.array([int(value) % 2]),
        np.array([value]),
        np.full((1, 4), value + 0.5),
        terminated=np.array([terminated]),
        discount=np.array([0.99]),
    )


# ---- Replay buffer ----
def test_buffer_wraps_around_overwriting_the_oldest():
    rb = dqn.ReplayBuffer(5, 4, CPU)
    for v in range(1, 8):
        add_one(rb, v)
    assert rb.size == 5 and rb.pos == 2
    # Slots 0 and 1 were overwritten by the 6th and 7th transitions; slots 2..4 hold 3..5.
    assert rb.rewards.tolist() == [6, 7, 3, 4, 5]
    assert rb.next_obs[:, 0].tolist() == [6.5, 7.5, 3.5, 4.5, 5.5]
    # A batch add that straddles the end of the arrays wraps too.
    rb.add(
        np.full((4, 4), 9.0),
        np.zeros(4),
        np.full(4, 9.0),
        np.full((4, 4), 9.0),
        terminated=np.zeros(4),
        discount=np.ones(4),
    )
    assert rb.rewards.tolist() == [9, 7, 9, 9, 9] and rb.pos == 1


def test_buffer_samples_only_filled_slots():
    rb = dqn.ReplayBuffer(1_000, 4, CPU)
    for v in range(1, 11):
        add_one(rb, v)
    obs, actions, rewards, next_obs, terminated, discount = rb.sample(4_096, torch.Generator().manual_seed(0))
    # Unfilled slots are zeros; every sampled reward must be one that was added.
    assert set(rewards.tolist()) == set(range(1, 11))
    assert torch.equal(next_obs[:, 0], rewards + 0.5) and torch.equal(actions, rewards.long() % 2)
    assert torch.all(discount == 0.99)


def test_buffer_samples_uniformly_over_stored_transitions():
    rb = dqn.ReplayBuffer(50, 4, CPU)
    for v in range(1, 81):  # wrapped: slots hold transitions 31..80, the write head at slot 30
        add_one(rb, v)
    rewards = rb.sample(20_000, torch.Generator().manual_seed(0))[2].long()
    counts = torch.bincount(rewards, minlength=81)
    assert counts[:31].sum() == 0, "sampled an overwritten or unfilled slot"
    # Chi-square goodness of fit to uniform over the 50 stored transitions (400 draws each expected):
    # favouring the newest or skipping the oldest slots fails it by orders of magnitude.
    assert chisquare(counts[31:].numpy()).pvalue > 1e-4


# ---- n-step returns ----
def test_nstep_queue_hand_computed():
    queue, out = dqn.NStepQueue(3, 0.5, 2), []
    # Env 0: an episode of 5 steps that terminates, then 2 steps cut by the time limit; env 1 idles.
    for t, (reward, terminated, end) in enumerate(
        [(1, 0, 0), (2, 0, 0), (4, 0, 0), (8, 0, 0), (16, 1, 1), (1, 0, 0), (2, 0, 1)]
    ):
        out += queue.push(0, t, t % 2, reward, 100 + t, bool(terminated), bool(end))
    assert queue.push(1, 50, 0, 7, 150, False, False) == []  # waits for 2 more steps of its own env
    # (obs, action, reward sum, obs m steps on, terminated, gamma^m): rewards only, never across an
    # episode end, the terminal flag of the last step, and a time-limit cut still bootstraps.
    assert out == [
        (0, 0, 1 + 0.5 * 2 + 0.25 * 4, 102, False, 0.125),
        (1, 1, 2 + 0.5 * 4 + 0.25 * 8, 103, False, 0.125),
        (2, 0, 4 + 0.5 * 8 + 0.25 * 16, 104, True, 0.125),
        (3, 1, 8 + 0.5 * 16, 104, True, 0.25),
        (4, 0, 16, 104, True, 0.5),
        (5, 1, 1 + 0.5 * 2, 106, False, 0.25),
        (6, 0, 2, 106, False, 0.5),
    ]
    assert len(queue.pending[0]) == 0 and len(queue.pending[1]) == 1


def test_one_step_queue_stores_each_transition_as_is():
    queue = dqn.NStepQueue(1, 0.99, 1)
    assert queue.push(0, 1, 0, 3.0, 2, False, False) == [(1, 0, 3.0, 2, False, 0.99)]


# ---- Schedules ----
def test_linear_schedule():
    assert dqn.linear_schedule(1.0, 0.04, 100, 0) == 1.0
    assert dqn.linear_schedule(1.0, 0.0, 100, 50) == pytest.approx(0.5)
    assert dqn.linear_schedule(1.0, 0.04, 100, 100) == pytest.approx(0.04)
    assert dqn.linear_schedule(1.0, 0.04, 100, 10_000) == pytest.approx(0.04)


# ---- Loss ----
def test_td_target_bootstraps_on_truncation_not_on_termination():
    rewards = torch.tensor([1.0, 1.0])
    next_q = torch.tensor([[2.0, 5.0], [2.0, 5.0]])
    # Row 0 terminated (pole fell): no future. Row 1 was cut by the time limit: it has a future.
    terminated = torch.tensor([1.0, 0.0])
    target = dqn.td_target(rewards, next_q, terminated, discount=0.9)
    assert target.tolist() == pytest.approx([1.0, 1.0 + 0.9 * 5.0])


def test_double_q_target_uses_online_argmax_and_target_value():
    next_q_target = torch.tensor([[2.0, 5.0]])
    next_q_online = torch.tensor([[3.0, 1.0]])  # online net prefers action 0
    target = dqn.td_target(torch.tensor([0.0]), next_q_target, torch.tensor([0.0]), 1.0, next_q_online)
    assert target.item() == pytest.approx(2.0)


@pytest.mark.parametrize("double_q", [False, True])
def test_update_bootstraps_from_next_obs_unless_terminated(double_q):
    q, target = nn.Linear(4, 2), nn.Linear(4, 2)
    nn.init.zeros_(q.weight), nn.init.zeros_(q.bias)  # Q = 0 everywhere: the loss is Huber(0 - target)
    nn.init.ones_(target.weight), nn.init.zeros_(target.bias)  # Q_target(s, .) = sum(s)
    obs, next_obs = torch.zeros(2, 4), torch.full((2, 4), 0.25)
    discount = torch.ones(2)
    batch = dqn.Batch(
        obs, torch.zeros(2, dtype=torch.long), torch.zeros(2), next_obs, torch.tensor([0.0, 1.0]), discount
    )
    loss = dqn.dqn_update(q, target, torch.optim.SGD(q.parameters(), lr=0.0), batch, double_q)["td_loss"]
    # Row 0 bootstraps from Q_target(s') = 1 (Huber 0.5), row 1 is terminal (target 0): mean 0.25.
    assert loss.item() == pytest.approx(0.25)
    # Each transition's own discount (gamma^m of an n-step transition) scales its bootstrap.
    batch = batch._replace(terminated=torch.zeros(2), discount=torch.tensor([0.5, 0.25]))
    loss = dqn.dqn_update(q, target, torch.optim.SGD(q.parameters(), lr=0.0), batch, double_q)["td_loss"]
    assert loss.item() == pytest.approx((0.5 * 0.5**2 + 0.5 * 0.25**2) / 2)


def test_sync_target_copies_without_aliasing():
    q, target = dqn.QNetwork(4, 2), dqn.QNetwork(4, 2)
    dqn.sync_target(q, target)
    for p, t in zip(q.parameters(), target.parameters()):
        assert torch.equal(p, t)
    with torch.no_grad():
        next(q.parameters()).add_(1.0)
    # A target that shares storage with the online net would have moved too.
    assert not torch.equal(next(q.parameters()), next(target.parameters()))


def test_update_moves_q_towards_target_and_keeps_adam_state():
    torch.manual_seed(0)
    q, target = dqn.QNetwork(4, 2, 16), dqn.QNetwork(4, 2, 16)
    dqn.sync_target(q, target)
    optimizer = torch.optim.Adam(q.parameters(), lr=1e-2)
    batch = dqn.Batch(
        torch.randn(8, 4),
        torch.randint(0, 2, (8,)),
        torch.ones(8),
        torch.randn(8, 4),
        torch.ones(8),
        torch.full((8,), 0.99),
    )
    losses = [dqn.dqn_update(q, target, optimizer, batch, False)["td_loss"].item() for _ in range(20)]
    assert losses[-1] < losses[0]
    assert all(s["step"].item() == 20 for s in optimizer.state.values())


# ---- Evaluation ----
def test_evaluation_counts_each_episode_until_it_ends():
    def q(obs):  # any Q-network whose argmax always pushes left: episodes of 8-11 steps
        return torch.tensor([[1.0, 0.0]]).expand(len(obs), -1)

    episodes = dqn.evaluate(q, "CartPole-v1", 4, seed=0, device=CPU)
    expected = []
    for i in range(4):  # env i of the vector env is reset with seed + i
        env, steps, done = gym.make("CartPole-v1"), 0, False
        env.reset(seed=i)
        while not done:
            _, _, terminated, truncated, _ = env.step(0)
            steps, done = steps + 1, terminated or truncated
        expected.append(float(steps))
    assert len(set(expected)) > 1  # short episodes end while others run (and their envs reset)
    assert episodes.returns == expected and episodes.lengths == expected and not any(episodes.truncated)


# ---- The training loop ----
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(args, summary, run directory) of one tiny training run with --save-model."""
    cwd = tmp_path_factory.mktemp("tiny")
    args = tiny_args(save_model=True, train_frequency=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        summary = dqn.main(args)
    return args, summary, cwd / "runs/tiny"


def test_training_keeps_one_optimizer_and_a_separate_target(tiny_run):
    args, summary, run_dir = tiny_run
    checkpoint = torch.load(run_dir / CHECKPOINT)
    expected_updates = (args.total_timesteps - args.learning_starts) // args.train_frequency
    assert summary["updates"] == checkpoint["updates"] == expected_updates
    # An Adam rebuilt every update would have restarted its step count (and moment estimates).
    steps = {int(s["step"]) for s in checkpoint["optimizer"]["state"].values()}
    assert steps == {expected_updates}
    # Last sync at step 2816, then 46 updates: a target that is the online net (or synced every
    # update) would equal it.
    q, target = checkpoint["q_network"], checkpoint["target_network"]
    assert not all(torch.equal(q[k], target[k]) for k in q)


def test_gradient_norms_logged_per_layer(tiny_run):
    assert_layer_grad_norms(tiny_run[2], weight_layers(dqn.QNetwork(4, 2, tiny_run[0].hidden_size)))


def record_adds(monkeypatch):
    stored = []
    original = dqn.ReplayBuffer.add

    def add(self, obs, actions, rewards, next_obs, *, terminated, discount):
        stored.extend(zip(np.array(obs), np.array(next_obs), np.array(terminated), np.array(discount)))
        original(self, obs, actions, rewards, next_obs, terminated=terminated, discount=discount)

    monkeypatch.setattr(dqn.ReplayBuffer, "add", add)
    return stored


@pytest.mark.parametrize("num_envs", [1, 3])
def test_autoreset_transition_never_stored(tmp_path, monkeypatch, num_envs):
    monkeypatch.chdir(tmp_path)
    stored = record_adds(monkeypatch)
    args = tiny_args(num_envs=num_envs, total_timesteps=1_500, learning_starts=1_500)
    dqn.main(args)
    obs = np.array([s[0] for s in stored])
    terminated, discount = np.array([s[2] for s in stored]), np.array([s[3] for s in stored])
    # CartPole terminates when |x| > 2.4 or |theta| > 0.2095: a stored transition that *starts* from
    # such a state is the autoreset step (final obs -> reset obs), which is not a transition.
    out_of_bounds = (np.abs(obs[:, 0]) > 2.4) | (np.abs(obs[:, 2]) > 0.2095)
    assert not out_of_bounds.any()
    # An episode's last step is the one stored transition that terminated one step on (gamma^1).
    episodes = int((terminated & np.isclose(discount, args.gamma)).sum())
    assert episodes > 20  # random play: many short episodes, each followed by one reset step
    # Every episode but those ending on the very last step is followed by exactly one reset step, and
    # up to n - 1 steps per env still wait for their n-step return when the run ends.
    waiting = (args.n_step - 1) * num_envs
    assert args.total_timesteps - episodes - waiting <= len(stored) <= args.total_timesteps - episodes + num_envs


def test_truncated_episodes_are_stored_as_not_terminated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gym.register("CartPoleShort-v1", entry_point="gymnasium.envs.classic_control:CartPoleEnv", max_episode_steps=5)
    stored = record_adds(monkeypatch)
    # Epsilon 0 and an untrained net: the pole takes ~9 steps to fall, so every episode is truncated.
    dqn.main(tiny_args(env_id="CartPoleShort-v1", total_timesteps=600, learning_starts=600, start_e=0.0, end_e=0.0))
    terminated = np.array([s[2] for s in stored])
    # 5 stored transitions per 6 steps (one reset step); truncation leaves terminated at 0.
    assert len(stored) == 500
    assert terminated.sum() == 0


def test_same_seed_same_result_different_seed_different_result(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        summary = dqn.main(tiny_args(seed=seed, run_name=name))
        losses = read_scalars(tmp_path / "runs" / name)["losses/td_loss"]
        runs[name] = ([p["mean"] for p in summary["eval_history"]], summary["final_eval"], losses)
    assert runs["a"] == runs["b"]
    assert runs["a"][2] != runs["c"][2]


# ---- The run contract, through the CLI ----
def test_cli_run_contract_save_and_evaluate_checkpoint(workdir):
    proc = run_script(
        SCRIPT,
        "--run-name",
        "smoke",
        "--seed",
        "2",
        "--total-timesteps",
        "2000",
        "--learning-starts",
        "500",
        "--eval-frequency",
        "1000",
        "--eval-episodes",
        "2",
        "--final-eval-episodes",
        "3",
        "--save-model",
        "--no-cuda",
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "steps/s" in proc.stdout and "left" in proc.stdout  # progress lines
    summary = check_run_contract(workdir / "runs/smoke", SCRIPT, "CartPole-v1", 2, 2000)
    assert summary["final_eval"]["episodes"] == 3 and summary["device"] == "cpu"
    checkpoint = workdir / "runs/smoke" / CHECKPOINT
    # A buffer far too large for memory: evaluation builds none, so it must not be refused for it.
    proc = run_script(
        SCRIPT,
        "--eval-checkpoint",
        checkpoint,
        "--run-name",
        "ev",
        "--seed",
        "2",
        "--final-eval-episodes",
        "3",
        "--buffer-size",
        "100000000000",
        "--no-cuda",
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((workdir / "runs/ev/summary.json").read_text())
    # The same weights and the same evaluation seeds give the same returns as at the end of training.
    assert evaluated["final_eval"] == summary["final_eval"]


def test_help_lists_every_field_with_its_docstring(workdir):
    out = run_script(SCRIPT, "--help", cwd=workdir).stdout
    for field in dataclasses.fields(dqn.Args):
        assert "--" + field.name.replace("_", "-") in out, field.name
    assert "discount factor" in out and "replay buffer capacity" in out


@pytest.mark.parametrize(
    "args, mentions",
    [
        (["--env-id", "NoSuchEnv-v0"], ["--env-id", "NoSuchEnv-v0"]),
        (["--env-id", "Pendulum-v1"], ["--env-id", "Discrete"]),
        (["--batch-size", "512", "--buffer-size", "256"], ["--batch-size", "--buffer-size"]),
        (["--total-timesteps", "0"], "--total-timesteps"),
        (["--num-envs", "-1"], "--num-envs"),
        (["--buffer-size", "100000000000"], ["--buffer-size", "GiB"]),
        (["--eval-checkpoint", "missing.pt"], "--eval-checkpoint"),
    ],
)
def test_bad_input_one_line_exit_2(workdir, args, mentions):
    assert_bad_input(SCRIPT, *args, cwd=workdir, mentions=mentions)


BAD_CHECKPOINTS = {
    **bad_torch_checkpoints({"script": "dqn_atari.py", "q_network": {"net.0.weight": torch.zeros(32, 4, 8, 8)}}),
    "other_hidden_size": lambda real: real.read_bytes(),  # trained 256 wide, evaluated with --hidden-size 32
}


@pytest.mark.parametrize("name", BAD_CHECKPOINTS)
def test_eval_checkpoint_rejects_other_files(tiny_run, tmp_path, monkeypatch, capsys, name):
    content = BAD_CHECKPOINTS[name](tiny_run[2] / CHECKPOINT)
    line = assert_rejects_checkpoint(
        lambda path: dqn.main(
            dqn.Args(
                eval_checkpoint=path,
                cuda=False,
                final_eval_episodes=1,
                hidden_size=32 if name == "other_hidden_size" else 256,
            )
        ),
        content,
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert ("--hidden-size 256" if name == "other_hidden_size" else "--save-model") in line, line


# ---- Endurance: checkpoints, resume, non-finite stops, memory ----
CLI_TINY = [
    "--total-timesteps",
    "6000",
    "--learning-starts",
    "500",
    "--eval-frequency",
    "1000",
    "--eval-episodes",
    "3",
    "--final-eval-episodes",
    "5",
    "--buffer-size",
    "4000",
    "--no-cuda",
]


def test_killed_run_resumes_to_the_same_result(workdir):
    # Checkpoints every 1000 steps: the kill lands anywhere between (or during) them. Four envs: the
    # n-step queue must be flushed at the cut, and with one env it is empty there by chance whenever an
    # episode ends on the step before (seed 0 does), which would hide a missing flush.
    a, _ = assert_kill_resume_equal(SCRIPT, *CLI_TINY, "--checkpoint-frequency", "1000", "--num-envs", "4", cwd=workdir)
    assert a["final_eval"]["episodes"] == 5


def test_checkpoint_holds_the_whole_run_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dqn.main(tiny_args(checkpoint_frequency=1_000, total_timesteps=2_500))
    checkpoint = torch.load(tmp_path / "runs/tiny/checkpoint", weights_only=True)
    assert checkpoint["global_step"] == 2_000 and checkpoint["updates"] == 750 and checkpoint["evals"] == 2
    assert 1_500 < checkpoint["buffer"]["size"] == checkpoint["buffer"]["pos"] < 2_000  # no reset steps
    assert {"python", "numpy", "torch", "cuda", "generators"} <= checkpoint["rng"].keys()
    assert len(checkpoint["rng"]["generators"]) == 2 and len(checkpoint["log"]["eval_history"]) == 2
    assert not (tmp_path / "runs/tiny/checkpoint.tmp").exists()
    small = tmp_path / "small"
    small.mkdir()
    monkeypatch.chdir(small)
    dqn.main(tiny_args(checkpoint_frequency=1_000, total_timesteps=2_500, checkpoint_buffer=False))
    assert torch.load(small / "runs/tiny/checkpoint", weights_only=True)["buffer"] is None


def test_resume_without_its_buffer_collects_again_before_learning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(checkpoint_frequency=2_000, total_timesteps=4_000, checkpoint_buffer=False)
    dqn.main(args)
    (tmp_path / "runs/tiny/summary.json").unlink()  # as if killed after the checkpoint at step 2000
    summary = dqn.main(dqn.Args(resume="runs/tiny"))
    assert summary["status"] == "finished" and summary["total_timesteps"] == 4_000
    steps = [s for s, _ in read_scalars(tmp_path / "runs/tiny")["losses/td_loss"]]
    # Learning pauses for learning-starts (500) steps while the empty buffer refills, then goes on.
    assert not [s for s in steps if 2_000 < s <= 2_500] and [s for s in steps if s > 2_500]


def test_non_finite_loss_stops_the_run_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    calls, original = [0], dqn.dqn_loss

    def poisoned(*args, **kwargs):  # from the 1000th update on (step ~2500), after the checkpoint at 2000
        calls[0] += 1
        loss, q = original(*args, **kwargs)
        return (loss * float("nan") if calls[0] >= 1_000 else loss), q

    monkeypatch.setattr(dqn, "dqn_loss", poisoned)
    checkpoint = assert_nonfinite_stops(
        lambda: dqn.main(tiny_args(checkpoint_frequency=2_000, train_frequency=2)), "runs/tiny", capsys, 2_500
    )
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == 2_000 and all(torch.isfinite(v).all() for v in saved["q_network"].values())


def test_resume_refuses_what_it_cannot_continue(workdir, tiny_run):
    (workdir / "runs/early").mkdir(parents=True)  # killed before its first checkpoint
    assert_bad_input(SCRIPT, "--resume", "runs/early", cwd=workdir, mentions=["--resume", "checkpoint"], keep=True)
    assert_bad_input(SCRIPT, "--resume", tiny_run[2], cwd=workdir, mentions=["--resume", "finished"], keep=True)
    (workdir / "runs/torn").mkdir()
    (workdir / "runs/torn/checkpoint").write_bytes((tiny_run[2] / CHECKPOINT).read_bytes()[:5000])
    assert_bad_input(SCRIPT, "--resume", "runs/torn", cwd=workdir, mentions=["--resume", "not a torch"], keep=True)


def test_progress_line_counts_the_days_left(tmp_path, monkeypatch, capsys):
    """RunLog is the same in every script: a default Atari run lasts more than a day here."""
    monkeypatch.setattr(dqn.time, "time", lambda: 1_000.0)
    log = dqn.RunLog(tmp_path, tiny_args(), lambda path, purge_step: SimpleNamespace(add_text=print), 10_000_000, {})
    log.start, log.last_print = 900.0, 0.0  # 1,000 steps in 100 s: 999,900 s to go
    log.progress(1_000)
    out = capsys.readouterr().out
    assert "| 10 steps/s |" in out and "| 11 days, 13:45:00 left" in out, out


def test_memory_check_reads_mem_available_and_the_cgroup_limit(tmp_path):
    assert_available_memory(dqn.available_memory, tmp_path)


# ---- The environment as run ----
def test_sticky_actions_and_env_settings(tmp_path, monkeypatch):
    envs, _ = dqn.make_envs("CartPole-v1", 2, 0, sticky_action_prob=0.25)
    assert envs.envs[0].repeat_action_probability == 0.25
    monkeypatch.chdir(tmp_path)
    summary = dqn.main(tiny_args(sticky_action_prob=0.25, total_timesteps=1_000))
    assert summary["env"]["sticky_action_prob"] == 0.25 and summary["env"]["max_episode_steps"] == 500
    assert {"mean_length", "truncated"} <= summary["final_eval"].keys()


def test_evaluation_reports_lengths_and_time_limit_cuts():
    gym.register("CartPoleCut-v1", entry_point="gymnasium.envs.classic_control:CartPoleEnv", max_episode_steps=5)
    episodes = dqn.evaluate(dqn.QNetwork(4, 2, 8), "CartPoleCut-v1", 3, seed=0, device=CPU)
    assert episodes.lengths == [5, 5, 5] and episodes.truncated == [True, True, True]
    assert dqn.eval_stats(*episodes)["truncated"] == 1.0


# ---- Learning ----
def test_learns_cartpole_with_a_small_budget(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A random policy scores about 22; the default settings with 40k of their 60k steps reach 494.7 (seed 1).
    summary = dqn.main(
        dataclasses.replace(
            dqn.Args(), total_timesteps=40_000, seed=1, cuda=False, final_eval_episodes=20, run_name="learn"
        )
    )
    assert summary["final_eval"]["mean"] >= 300, summary["final_eval"]


# ---- Runs are never overwritten; every evaluation plays its own games (new_run_dir is shared: tests/test_scripts.py) ----
def test_existing_run_is_never_written_into(workdir):
    run = workdir / "runs" / "taken"
    run.mkdir(parents=True)
    (run / "summary.json").write_text('{"status": "finished"}')
    assert_bad_input(
        SCRIPT,
        *CLI_TINY,
        "--run-name",
        "taken",
        cwd=workdir,
        mentions=["runs/taken", "already exists", "--resume"],
        keep=True,
    )
    assert (run / "summary.json").read_text() == '{"status": "finished"}'


def test_two_runs_started_with_one_name_exactly_one_runs(workdir):
    procs = [start_script(SCRIPT, *CLI_TINY, "--run-name", "twin", cwd=workdir) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    assert "already exists" in outcomes[1][1]
    assert json.loads((workdir / "runs/twin/summary.json").read_text())["status"] == "finished"


def test_every_evaluation_plays_its_own_games(workdir, monkeypatch):
    calls, original = [], dqn.evaluate

    def spy(*a, **kw):  # evaluate(net, env_id, episodes, seed, ...): env i is seeded seed + i
        calls.append(range(a[3], a[3] + a[2]))
        return original(*a, **kw)

    monkeypatch.chdir(workdir)
    monkeypatch.setattr(dqn, "evaluate", spy)
    # 2,500 steps, evaluations every 1,000: at 1,000, 2,000, the last step 2,500, then the final one.
    summary = dqn.main(tiny_args(total_timesteps=2_500, eval_episodes=3))
    assert len(calls) == len(summary["eval_history"]) + 1 == 4
    seeds = [s for r in calls for s in r]
    assert len(seeds) == len(set(seeds)), calls
