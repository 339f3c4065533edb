"""Tests of a2c_atari.py: the return/advantage functions against hand-computed cases, the loss and the
update, the optimizer, the rollout's episode bookkeeping (scripted and real envs), the evaluation, seeding,
what train() applies (learning rate, seeds), a smoke run, bad input and bad checkpoints, checkpoints and
--resume after a kill, non-finite stops, the memory check, and the environment as run (sticky actions)."""

import copy
import dataclasses
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
    assert_nonfinite_stops,
    assert_rejects_checkpoint,
    bad_torch_checkpoints,
    check_run_contract,
    load_script,
    read_scalars,
    run_script,
)

SCRIPT, A = load_script("a2c_atari.py")  # or the copy given by --script
CHECKPOINT = f"{Path(SCRIPT).stem}.pt"  # what --save-model writes
GAMMA = 0.5  # a small gamma makes every hand-computed case distinguish the alternatives


def col(*rows):
    """(T, E) float tensor from T rows of E values."""
    return torch.tensor(rows, dtype=torch.float32)


# ---- n-step returns -------------------------------------------------------------------------------
# Two envs, T = 4. rewards 1, 2, 3, 4; values 10, 20, 30, 40 (large, so that any intermediate value
# that leaks into a return shows); V(s_T) = 100.
REWARDS = col([1, 1], [2, 2], [3, 3], [4, 4])
VALUES = col([10, 10], [20, 20], [30, 30], [40, 40])
NEXT_VALUE = torch.tensor([100.0, 100.0])
ZERO = torch.zeros(4, 2)
ONE = torch.ones(4, 2)


def expected_cases():
    """(terminated, truncated, valid, expected returns) computed by hand with gamma = 0.5."""
    # env 0: no boundary: R3 = 4 + .5*100 = 54, R2 = 3 + 27 = 30, R1 = 2 + 15 = 17, R0 = 1 + 8.5 = 9.5.
    # env 1: terminal (game over or lost life) at t=1: R1 = 2, R0 = 1 + 1 = 2; t=2, t=3 as env 0.
    terminal_mid = (col([0, 0], [0, 1], [0, 0], [0, 0]), ZERO, ONE, col([9.5, 2.0], [17, 2.0], [30, 30], [54, 54]))
    # env 1: game truncated at t=1 (frame cap): t=2 is the autoreset step (invalid), whose obs is the
    # game's last state: R1 = 2 + .5 * V(s_2) = 17, R0 = 1 + 8.5 = 9.5; the invalid step carries its
    # value (30); t=3 starts a new game: 54.
    truncated_mid = (
        ZERO,
        col([0, 0], [0, 1], [0, 0], [0, 0]),
        col([1, 1], [1, 1], [1, 0], [1, 1]),
        col([9.5, 9.5], [17, 17], [30, 30], [54, 54]),
    )
    # env 1: game over at t=0, t=1 is its autoreset step: R0 = 1, R1 = V = 20 (masked anyway).
    game_over_first = (
        col([0, 1], [0, 0], [0, 0], [0, 0]),
        ZERO,
        col([1, 1], [1, 0], [1, 1], [1, 1]),
        col([9.5, 1.0], [17, 20], [30, 30], [54, 54]),
    )
    return {"terminal_mid": terminal_mid, "truncated_mid": truncated_mid, "game_over_first": game_over_first}


def check_returns(returns_fn):
    for name, (terminated, truncated, valid, expected) in expected_cases().items():
        got = returns_fn(REWARDS, VALUES, NEXT_VALUE, terminated, truncated, valid, GAMMA)
        torch.testing.assert_close(got, expected, msg=lambda m, name=name: f"{name}: {m}")


def script_nstep(rewards, values, next_value, terminated, truncated, valid, gamma):
    return A.nstep_returns(rewards, values, next_value, terminated, valid, gamma)


def script_gae_lambda1(rewards, values, next_value, terminated, truncated, valid, gamma):
    return A.gae_advantages(rewards, values, next_value, terminated, truncated, valid, gamma, 1.0) + values


def wrong_adds_intermediate_values(rewards, values, next_value, terminated, truncated, valid, gamma):
    """The classic bug: every intermediate V(s_{t+1}) is added into the return as well."""
    returns, nxt = torch.zeros_like(rewards), next_value
    for t in reversed(range(len(rewards))):
        v_next = values[t + 1] if t + 1 < len(rewards) else next_value
        extra = v_next if t + 1 < len(rewards) else 0.0
        ret = rewards[t] + gamma * (1 - terminated[t]) * (nxt + extra)
        returns[t] = torch.where(valid[t] > 0, ret, values[t])
        nxt = returns[t]
    return returns


def wrong_one_step_bootstrap(rewards, values, next_value, terminated, truncated, valid, gamma):
    """Also wrong: bootstrapping every step from its own next value (a 1-step target)."""
    nxt = torch.cat([values[1:], next_value[None]])
    return torch.where(valid > 0, rewards + gamma * (1 - terminated) * nxt, values)


def wrong_bootstrap_through_terminal(rewards, values, next_value, terminated, truncated, valid, gamma):
    """Also wrong: a terminal (e.g. a lost life) does not cut the chain."""
    return A.nstep_returns(rewards, values, next_value, torch.zeros_like(terminated), valid, gamma)


def test_nstep_returns_hand_computed():
    check_returns(script_nstep)


@pytest.mark.parametrize(
    "wrong", [wrong_adds_intermediate_values, wrong_one_step_bootstrap, wrong_bootstrap_through_terminal]
)
def test_wrong_return_functions_fail_the_same_check(wrong):
    with pytest.raises(AssertionError):
        check_returns(wrong)


def test_gae_lambda_one_is_nstep():
    check_returns(script_gae_lambda1)
    # and on random rollouts with random boundaries: game overs and frame caps (the next step is a reset)
    # and lost lives (terminal, but the game goes on: the next step is valid)
    g = torch.Generator().manual_seed(0)
    T, E = 7, 6
    for _ in range(20):
        rewards, values = torch.randn(T, E, generator=g), torch.randn(T, E, generator=g)
        next_value = torch.randn(E, generator=g)
        game_over = (torch.rand(T, E, generator=g) < 0.15).float()
        truncated = (torch.rand(T, E, generator=g) < 0.1).float() * (1 - game_over)
        ended = ((game_over + truncated) > 0).float()  # ALE: the step after an ended game is a reset
        valid = torch.ones(T, E)
        valid[1:] = 1 - ended[:-1]
        life_lost = (torch.rand(T, E, generator=g) < 0.2).float() * (1 - truncated)
        terminated, truncated = torch.maximum(game_over, life_lost) * valid, truncated * valid
        nstep = A.nstep_returns(rewards, values, next_value, terminated, valid, 0.99)
        adv = A.gae_advantages(rewards, values, next_value, terminated, truncated, valid, 0.99, 1.0)
        torch.testing.assert_close(adv, (nstep - values) * valid)


def test_gae_lambda_zero_is_one_step_td_and_stops_at_boundaries():
    terminated, truncated, valid, _ = expected_cases()["truncated_mid"]
    adv = A.gae_advantages(REWARDS, VALUES, NEXT_VALUE, terminated, truncated, valid, GAMMA, 0.0)
    # lambda 0: r_t + gamma V(s_{t+1}) - V(s_t) = 1 + 10 - 10, 2 + 15 - 20, 3 + 20 - 30, 4 + 50 - 40
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.0, -3.0, -7.0, 14.0]))
    torch.testing.assert_close(adv[2, 1], torch.tensor(0.0))  # autoreset step: no advantage
    lam = A.gae_advantages(REWARDS, VALUES, NEXT_VALUE, terminated, truncated, valid, GAMMA, 0.5)
    # lambda 0.5, env 1 (truncated at t=1): A1 = delta1 = -3 (the chain stops), A0 = 1 + .25 * -3
    torch.testing.assert_close(lam[:2, 1], torch.tensor([1.0 - 0.75, -3.0]))


def test_returns_and_advantages_dispatch():
    terminated, truncated, valid, expected = expected_cases()["terminal_mid"]
    rollout = A.Rollout(
        torch.zeros(4, 2, 4, 84, 84, dtype=torch.uint8),
        torch.zeros(4, 2, dtype=torch.long),
        VALUES,
        REWARDS,
        terminated,
        truncated,
        valid,
        NEXT_VALUE,
    )
    returns, adv = A.returns_and_advantages(rollout, GAMMA, 1.0)
    torch.testing.assert_close(returns, expected)
    torch.testing.assert_close(adv, expected - VALUES)
    returns, adv = A.returns_and_advantages(rollout, GAMMA, 0.9)
    torch.testing.assert_close(returns, adv + VALUES)
    assert not torch.allclose(returns, expected)  # lambda < 1 really is another estimator


# ---- loss -----------------------------------------------------------------------------------------
def loss_inputs(n=6, n_actions=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, n_actions, generator=g) * 2
    values = torch.randn(n, generator=g)
    actions = torch.randint(0, n_actions, (n,), generator=g)
    return logits, values, actions


def entropy(logits):
    p = torch.softmax(logits, -1)
    return -(p * p.log()).sum(-1).mean()


def test_entropy_bonus_raises_entropy():
    logits, values, actions = loss_inputs()
    logits.requires_grad_(True)
    zero_adv, valid = torch.zeros(6), torch.ones(6)
    loss, parts = A.a2c_loss(logits, values, actions, zero_adv, values.detach(), valid, 0.5, 0.01)
    torch.testing.assert_close(parts["entropy"], entropy(logits))
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.abs().sum() > 0, "the entropy bonus must reach the logits (bonus missing from the loss?)"
    before = entropy(logits)
    after = entropy(logits - 10.0 * grad)  # one gradient-descent step on the loss
    assert after > before, "minimising the loss must raise the entropy"
    # without the bonus and with zero advantages, nothing moves the policy
    loss0, _ = A.a2c_loss(logits, values, actions, zero_adv, values.detach(), valid, 0.5, 0.0)
    (grad0,) = torch.autograd.grad(loss0, logits)
    assert grad0.abs().max() == 0


def test_loss_components_and_uniform_entropy():
    logits, values, actions = loss_inputs()
    adv, ret, valid = torch.randn(6), torch.randn(6), torch.ones(6)
    loss, p = A.a2c_loss(logits, values, actions, adv, ret, valid, 0.5, 0.01)
    logp = torch.log_softmax(logits, -1)[torch.arange(6), actions]
    torch.testing.assert_close(p["policy_loss"], -(adv * logp).mean())
    torch.testing.assert_close(p["value_loss"], ((ret - values) ** 2).mean())
    torch.testing.assert_close(loss, p["policy_loss"] + 0.5 * p["value_loss"] - 0.01 * p["entropy"])
    _, pu = A.a2c_loss(
        torch.zeros(3, 4),
        torch.zeros(3),
        torch.zeros(3, dtype=torch.long),
        torch.zeros(3),
        torch.zeros(3),
        torch.ones(3),
        0.5,
        0.01,
    )
    torch.testing.assert_close(pu["entropy"], torch.tensor(np.log(4), dtype=torch.float32))  # 1.386


def test_autoreset_steps_carry_no_loss_or_gradient():
    logits, values, actions = loss_inputs()
    adv, ret = torch.randn(6), torch.randn(6)
    valid = torch.tensor([1.0, 1, 0, 1, 0, 1])

    def grads(lg, v, a, ad, r):
        lg, v = lg.clone().requires_grad_(True), v.clone().requires_grad_(True)
        loss, _ = A.a2c_loss(lg, v, a, ad, r, valid, 0.5, 0.01)
        return (loss, *torch.autograd.grad(loss, (lg, v)))

    base = grads(logits, values, actions, adv, ret)
    # Change everything at the invalid steps: logits, values, actions, advantages, returns.
    bad = valid == 0
    logits2, values2, actions2, adv2, ret2 = logits.clone(), values.clone(), actions.clone(), adv.clone(), ret.clone()
    logits2[bad], values2[bad], actions2[bad], adv2[bad], ret2[bad] = 50.0, -30.0, 3, 1e3, 1e3
    changed = grads(logits2, values2, actions2, adv2, ret2)
    torch.testing.assert_close(changed[0], base[0])
    torch.testing.assert_close(changed[1][~bad], base[1][~bad])
    assert changed[1][bad].abs().max() == 0 and changed[2][bad].abs().max() == 0
    # the mean is over valid steps only: the same loss as the valid steps alone
    only_valid, _ = A.a2c_loss(
        logits[~bad], values[~bad], actions[~bad], adv[~bad], ret[~bad], torch.ones(int((~bad).sum())), 0.5, 0.01
    )
    torch.testing.assert_close(base[0], only_valid)


def test_explained_variance():
    ret = torch.tensor([1.0, 2.0, 3.0, 4.0, 99.0])
    valid = torch.tensor([1.0, 1, 1, 1, 0])
    assert A.explained_variance(ret, ret, valid) == pytest.approx(1.0)
    assert A.explained_variance(torch.full((5,), 2.5), ret, valid) == pytest.approx(0.0)
    assert A.explained_variance(torch.tensor([2.0, 1, 4, 3, 0]), ret, valid) == pytest.approx(1 - 1.0 / 1.25)


def test_update_ignores_autoreset_steps():
    """Whatever an autoreset step holds (its obs, action, reward), a2c_update makes the same step."""
    torch.set_num_threads(A.Args.torch_threads)  # as train() does (2 threads take seconds here to init the CNN)
    g = torch.Generator().manual_seed(0)
    T, E = 3, 2
    obs = torch.randint(0, 256, (T, E, 4, 84, 84), generator=g, dtype=torch.uint8)
    # env 1: game over at t=0, t=1 is its reset step
    rollout = A.Rollout(
        obs,
        torch.randint(0, 4, (T, E), generator=g),
        torch.randn(T, E, generator=g),
        col([1, 0], [0, 1], [-1, 0]),
        col([0, 1], [0, 0], [0, 0]),
        torch.zeros(T, E),
        col([1, 1], [1, 0], [1, 1]),
        torch.randn(E, generator=g),
    )

    agent0 = A.ActorCritic(4)

    def update(r):
        agent = copy.deepcopy(agent0)
        before = [p.detach().clone() for p in agent.parameters()]
        A.a2c_update(agent, A.TFRMSprop(agent.parameters()), r, A.Args(), 7e-4, torch.ones((), dtype=torch.bool))
        return torch.cat([(p.detach() - b).flatten() for p, b in zip(agent.parameters(), before)])

    base = update(rollout)
    other = dataclasses.replace(
        rollout, obs=obs.clone(), actions=rollout.actions.clone(), rewards=rollout.rewards.clone()
    )
    other.obs[1, 1], other.actions[1, 1], other.rewards[1, 1] = 255 - obs[1, 1], 3 - rollout.actions[1, 1], -1.0
    assert base.abs().max() > 0
    torch.testing.assert_close(update(other), base, rtol=0, atol=1e-3 * float(base.abs().max()))


# ---- optimizer ------------------------------------------------------------------------------------
def tf_rmsprop_reference(p, grads, lr, alpha, eps):
    """TensorFlow's RMSProp (momentum 0): ms starts at 1; p -= lr * g / sqrt(ms + eps). numpy float64."""
    p, ms = np.array(p, dtype=np.float64), np.ones_like(p, dtype=np.float64)
    for g in grads:
        ms = alpha * ms + (1 - alpha) * g**2
        p = p - lr * g / np.sqrt(ms + eps)
    return p


def run_optimizer(opt_cls, p0, grads, **kw):
    p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    opt = opt_cls([p], **kw)  # created once, stepped several times: its state must carry over
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return p.detach().numpy()


def test_rmsprop_matches_tensorflow_update():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=5)
    grads = [rng.normal(size=5) * s for s in (1.0, 1e-3, 3.0, 1e-4)]
    kw = dict(lr=7e-4, alpha=0.99, eps=1e-5)
    got = run_optimizer(A.TFRMSprop, p0, grads, **kw)
    np.testing.assert_allclose(got, tf_rmsprop_reference(p0, grads, **kw), rtol=1e-12, atol=1e-15)
    # The check tells the forms apart: torch's RMSprop (ms from 0, eps outside the root) fails it,
    # and so does a TF RMSprop rebuilt before every step (state lost).
    torch_form = run_optimizer(torch.optim.RMSprop, p0, grads, **kw)
    assert not np.allclose(torch_form, tf_rmsprop_reference(p0, grads, **kw), rtol=1e-6, atol=0)
    rebuilt = p0
    for g in grads:
        rebuilt = run_optimizer(A.TFRMSprop, rebuilt, [g], **kw)
    assert not np.allclose(rebuilt, tf_rmsprop_reference(p0, grads, **kw), rtol=1e-9, atol=0)


# ---- rollouts: scripted env -----------------------------------------------------------------------
class ScriptedEnvs:
    """A stand-in vector env that replays scripted (reward, terminated, truncated, lives) rows with
    ALE's NEXT_STEP semantics already applied by the script; obs encode the step index."""

    def __init__(self, script, start_lives):
        self.script, self.t, self.num_envs = script, 0, len(start_lives)
        self.start_lives = np.array(start_lives)

    def first_obs(self):
        return np.zeros((self.num_envs, 4, 84, 84), dtype=np.uint8), {"lives": self.start_lives}

    def step(self, actions):
        r, term, trunc, lives = (np.array(x) for x in self.script[self.t])
        self.t += 1
        obs = np.full((self.num_envs, 4, 84, 84), self.t, dtype=np.uint8)
        return obs, r.astype(np.int32), term.astype(bool), trunc.astype(bool), {"lives": lives}

    def close(self):
        pass


class ConstantAgent(nn.Module):
    def __init__(self, n_actions=4):
        super().__init__()
        self.n_actions = n_actions

    def forward(self, obs):
        # value = the step index written in the obs, so the rollout's bootstraps can be traced
        return torch.zeros(len(obs), self.n_actions), obs[:, 0, 0, 0].float()


def test_rollout_bookkeeping_scripted():
    # env 0: +5, life lost (+0), +3, game over (+1), autoreset step (+100 must never count), +2
    # env 1: +7, +0, frame cap (truncated, +4), autoreset (+100), +1, +1
    script = [
        ([5, 7], [0, 0], [0, 0], [3, 5]),
        ([0, 0], [0, 0], [0, 0], [2, 5]),
        ([3, 4], [0, 0], [0, 1], [2, 5]),
        ([1, 100], [1, 0], [0, 0], [0, 5]),
        ([100, 1], [0, 0], [0, 0], [3, 5]),
        ([2, 1], [0, 0], [0, 0], [3, 5]),
    ]
    envs = ScriptedEnvs(script, [3, 5])
    obs, info = envs.first_obs()
    collector = A.RolloutCollector(envs, obs, info, 3, torch.device("cpu"), torch.Generator().manual_seed(0))
    r1, finished1 = collector.collect(ConstantAgent())
    r2, finished2 = collector.collect(ConstantAgent())
    valid = torch.cat([r1.valid, r2.valid])
    terminated = torch.cat([r1.terminated, r2.terminated])
    truncated = torch.cat([r1.truncated, r2.truncated])
    rewards = torch.cat([r1.rewards, r2.rewards])
    torch.testing.assert_close(valid, col([1, 1], [1, 1], [1, 1], [1, 0], [0, 1], [1, 1]))
    # the lost life ends the return chain; game over too; the frame cap does not (truncated instead)
    torch.testing.assert_close(terminated, col([0, 0], [1, 0], [0, 0], [1, 0], [0, 0], [0, 0]))
    torch.testing.assert_close(truncated, col([0, 0], [0, 0], [0, 1], [0, 0], [0, 0], [0, 0]))
    torch.testing.assert_close(rewards[:, 0], torch.tensor([1.0, 0, 1, 1, 1, 1]))  # clipped for the loss
    # whole games with raw scores: the lost life does not end env 0's game, the reset step never counts
    assert finished1 == [(7 + 0 + 4, 3)]
    assert finished2 == [(5 + 0 + 3 + 1, 4)]
    # the rollout bootstraps from the state after it: obs of step 6 (value 6 under ConstantAgent)
    torch.testing.assert_close(r1.next_value, torch.tensor([3.0, 3.0]))
    torch.testing.assert_close(r2.next_value, torch.tensor([6.0, 6.0]))
    # env 1 truncated at step 2: its return bootstraps from V(last state) = obs of step 3 (value 3)
    returns = A.nstep_returns(r1.rewards, r1.values, r1.next_value, r1.terminated, r1.valid, GAMMA)
    assert returns[2, 1] == pytest.approx(1.0 + GAMMA * 3.0)


def test_evaluation_counts_each_first_game_only(monkeypatch):
    # env 0: +3, +2 and the frame cap; env 1: +1, +1, +1, game over (+4). Rewards after a game's end (100,
    # during the autoreset and the next game) must not count, and each env's first game is its episode.
    script = [
        ([3, 1], [0, 0], [0, 0], [5, 5]),
        ([2, 1], [0, 0], [1, 0], [5, 5]),
        ([100, 1], [0, 0], [0, 0], [5, 5]),
        ([100, 4], [0, 1], [0, 0], [5, 0]),
        ([100, 100], [1, 0], [0, 0], [0, 5]),
        ([100, 100], [0, 0], [0, 0], [5, 5]),
    ]
    envs = ScriptedEnvs(script, [5, 5])
    monkeypatch.setattr(A, "make_envs", lambda *args, **kwargs: (envs, *envs.first_obs()))
    episodes = A.evaluate(ConstantAgent(), "breakout", 2, 0, torch.device("cpu"))
    assert episodes.returns == [3 + 2, 1 + 1 + 1 + 4] and episodes.lengths == [2, 4]
    assert episodes.truncated == [True, False]  # env 0 cut by the frame cap, env 1's game over
    assert A.eval_stats(*episodes)["truncated"] == 0.5 and A.eval_stats(*episodes)["mean_length"] == 3.0


# ---- rollouts and envs: real Breakout -------------------------------------------------------------
def test_real_breakout_episode_boundaries_and_frame_stacks():
    """Random play on real Breakout until both envs finish a game: life losses end the return chain
    but not the game, the step after game over is masked, scores are raw, stacks restart with zeros."""
    torch.manual_seed(0)
    envs, obs, info = A.make_envs("breakout", 2, seed=3)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    assert (obs[:, :3] == 0).all() and obs[:, 3].any()  # a fresh game: one frame, zero padding
    collector = A.RolloutCollector(envs, obs, info, 5, torch.device("cpu"), torch.Generator().manual_seed(0))
    agent = ConstantAgent()
    rollouts, finished = [], []
    while len(finished) < 2 and len(rollouts) < 400:
        r, f = collector.collect(agent)
        rollouts.append(r)
        finished += f
    envs.close()
    assert len(finished) >= 2, "a random Breakout game should end within 2,000 steps"
    valid = torch.cat([r.valid for r in rollouts])
    terminated = torch.cat([r.terminated for r in rollouts])
    obs_seq = torch.cat([r.obs for r in rollouts])
    ends = (valid[1:] == 0).nonzero().tolist()  # (t, env): step t+1 is the autoreset after game over at t
    assert ends, "no game over seen"
    for t, e in ends:
        assert terminated[t, e] == 1  # game over ends the chain
        if t + 2 < len(obs_seq):  # the step after the reset: a new game, zero-padded stack, nothing carried over
            new = obs_seq[t + 2, e].numpy()
            assert (new[:3] == 0).all() and new[3].any()
    # Breakout has 5 lives: each game has 4 chain-ending life losses (+1 game over), all valid steps
    n_games_done = len(ends) + int(collector.autoreset.sum())  # + games ended on the very last step
    assert len(finished) == n_games_done  # one logged episode per game, not per life
    assert terminated.sum() >= 5 * n_games_done
    assert (terminated * (1 - valid)).sum() == 0
    for score, length in finished:
        assert score >= 0 and float(score).is_integer() and length > 0
    assert float(valid.sum()) < valid.numel()


def test_game_name_mapping():
    assert A.game_name("BreakoutNoFrameskip-v4") == "breakout"
    assert A.game_name("ALE/Breakout-v5") == "breakout"
    assert A.game_name("PongNoFrameskip-v4") == "pong"
    assert A.game_name("SpaceInvadersNoFrameskip-v4") == "space_invaders"
    assert A.game_name("CartPole-v1") is None and A.game_name("NoSuchGame-v4") is None


# ---- seeding --------------------------------------------------------------------------------------
def short_training(seed, updates=3):
    args = A.Args(num_envs=2, num_steps=5, seed=seed)
    A.seed_everything(seed, True)
    torch.set_num_threads(args.torch_threads)  # as train() does
    envs, obs, info = A.make_envs("breakout", args.num_envs, seed)
    agent = A.ActorCritic(envs.single_action_space.n)
    optimizer = A.TFRMSprop(agent.parameters(), lr=args.learning_rate)
    collector = A.RolloutCollector(
        envs, obs, info, args.num_steps, torch.device("cpu"), torch.Generator().manual_seed(seed)
    )
    actions = []
    for u in range(updates):
        rollout, _ = collector.collect(agent)
        actions.append(rollout.actions)
        A.a2c_update(
            agent,
            optimizer,
            rollout,
            args,
            A.linear_schedule(args.learning_rate, 0, updates, u),
            torch.ones((), dtype=torch.bool),
        )
    envs.close()
    return torch.cat(actions), torch.cat([p.detach().flatten() for p in agent.parameters()])


def test_same_seed_same_result():
    a1, p1 = short_training(7)
    a2, p2 = short_training(7)
    assert torch.equal(a1, a2) and torch.equal(p1, p2)
    a3, p3 = short_training(8)
    assert not torch.equal(p1, p3)


# ---- train(): the learning rate it applies, the seeds it samples actions with ---------------------
@pytest.fixture(scope="module")
def spied_training(tmp_path_factory):
    """train() in-process for 5 updates, recording at every optimizer step the optimizer and the learning
    rate it applies, and the seed of the generator behind every sampled action."""
    args = A.Args(
        seed=5,
        total_timesteps=50,
        num_envs=2,
        num_steps=5,
        cuda=False,
        run_name="spied",
        eval_episodes=1,
        final_eval_episodes=1,
        eval_max_frames=200,
    )
    steps, seeds = [], []
    real_step, real_sample = A.TFRMSprop.step, A.sample_actions

    def step(self, closure=None):
        steps.append((self, self.param_groups[0]["lr"]))
        return real_step(self, closure)

    def sample_actions(logits, generator):
        seeds.append(generator.initial_seed())
        return real_sample(logits, generator)

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("spied"))
        mp.setattr(A.TFRMSprop, "step", step)
        mp.setattr(A, "sample_actions", sample_actions)
        A.main(args)
    return args, steps, seeds


def test_learning_rate_applied_anneals_linearly_per_update(spied_training):
    args, steps, _ = spied_training
    n = args.total_timesteps // (args.num_envs * args.num_steps)
    # update u applies lr * (1 - u / n): the full rate first, lr / n last (0 would come after training)
    assert [lr for _, lr in steps] == pytest.approx([args.learning_rate * (n - u) / n for u in range(n)], rel=1e-12)
    # one optimizer for the whole run (rebuilt, it would lose its squared-gradient averages)
    assert all(opt is steps[0][0] for opt, _ in steps)


def test_action_sampling_seeded(spied_training):
    args, steps, seeds = spied_training
    training = len(steps) * args.num_steps  # training samples come first, then the evaluations
    assert seeds[:training] == [args.seed] * training
    assert args.seed not in seeds[training:]  # evaluation's actions are not the training's
    assert torch.Generator().initial_seed() not in seeds  # a generator never seeded has this fixed seed


# ---- the script end to end ------------------------------------------------------------------------
SMOKE_TOTAL, SMOKE_ENVS = 600, 2  # 2 envs x 300 steps: random Breakout games last ~130-250 steps, so games end


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A tiny training run through the CLI with --save-model, shared by the tests below: its run directory."""
    cwd = tmp_path_factory.mktemp("smoke")
    proc = run_script(
        SCRIPT,
        "--env-id",
        "BreakoutNoFrameskip-v4",
        "--seed",
        3,
        "--total-timesteps",
        SMOKE_TOTAL,
        "--num-envs",
        SMOKE_ENVS,
        "--run-name",
        "smoke",
        "--save-model",
        "--log-frequency",
        10 * SMOKE_ENVS * A.Args.num_steps,  # every 10 updates
        "--eval-frequency",
        300,
        "--eval-episodes",
        1,
        "--final-eval-episodes",
        2,
        "--eval-max-frames",
        2000,
        "--no-cuda",
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "runs" / "smoke"


def test_smoke_run_on_breakout_and_checkpoint_eval(smoke_run, workdir):
    run_dir = smoke_run
    summary = check_run_contract(run_dir, SCRIPT, "BreakoutNoFrameskip-v4", 3, SMOKE_TOTAL)
    assert summary["final_eval"]["episodes"] == 2 and summary["device"] == "cpu" and summary["status"] == "finished"
    assert {"mean_length", "truncated"} <= summary["final_eval"].keys() and summary["sps"] >= summary["sps_with_eval"]
    assert not (run_dir / "checkpoint").exists()  # 600 steps: below the default --checkpoint-frequency
    scalars = read_scalars(run_dir)
    for tag in (
        "losses/policy_loss",
        "losses/value_loss",
        "losses/entropy",
        "losses/explained_variance",
        "losses/grad_norm",
        "charts/learning_rate",
        "grad_norms/policy",
        "grad_norms/value",
        "grad_norms/trunk.0",
    ):
        assert tag in scalars, tag
    # the logged learning rate is the one applied at that update u (logged at step (u + 1) * batch)
    batch = SMOKE_ENVS * A.Args.num_steps
    n = SMOKE_TOTAL // batch
    for step, lr in scalars["charts/learning_rate"]:
        assert lr == pytest.approx(7e-4 * (1 - (step // batch - 1) / n), rel=1e-6), step
    entropy = scalars["losses/entropy"][0][1]
    assert 1.3 < entropy <= np.log(4) + 1e-6  # near-uniform initial policy over Breakout's 4 actions
    checkpoint = torch.load(run_dir / CHECKPOINT, weights_only=True)
    # The optimizer was built once: after 60 updates the squared averages have decayed below the
    # single-step minimum alpha * 1 (which is all a rebuilt-every-update optimizer would ever show).
    square_avg = [s["square_avg"] for s in checkpoint["optimizer"]["state"].values()]
    assert min(float(s.min()) for s in square_avg) < 0.99 * 0.99 + 1e-3

    proc = run_script(
        SCRIPT,
        "--env-id",
        "BreakoutNoFrameskip-v4",
        "--seed",
        3,
        "--run-name",
        "evalrun",
        "--eval-checkpoint",
        run_dir / CHECKPOINT,
        "--final-eval-episodes",
        2,
        "--eval-max-frames",
        2000,
        "--no-cuda",
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ev = json.loads((workdir / "runs" / "evalrun" / "summary.json").read_text())
    assert ev["total_timesteps"] == SMOKE_TOTAL and ev["final_eval"]["episodes"] == 2
    # same agent, same evaluation seed: the same scores as the training run's final evaluation
    assert ev["final_eval"] == summary["final_eval"]


BAD_CHECKPOINTS = {
    **bad_torch_checkpoints({"script": "dqn_atari.py", "q_network": {"network.0.weight": torch.zeros(32, 4, 8, 8)}}),
    "other_game": lambda real: real.read_bytes(),  # Breakout's 4 actions, evaluated on Pong's 6
}


@pytest.mark.parametrize("name", BAD_CHECKPOINTS)
def test_eval_checkpoint_rejects_other_files(smoke_run, tmp_path, monkeypatch, capsys, name):
    content = BAD_CHECKPOINTS[name](smoke_run / CHECKPOINT)
    env_id = "PongNoFrameskip-v4" if name == "other_game" else "BreakoutNoFrameskip-v4"
    line = assert_rejects_checkpoint(
        lambda path: A.main(
            A.Args(env_id=env_id, eval_checkpoint=path, cuda=False, final_eval_episodes=1, eval_max_frames=400)
        ),
        content,
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert ("--env-id" if name == "other_game" else "--save-model") in line, line
    assert name != "other_game" or "BreakoutNoFrameskip-v4" in line  # the game it was trained on


@pytest.mark.parametrize(
    "args, mentions",
    [
        (("--env-id", "CartPole-v1"), ["--env-id", "BreakoutNoFrameskip-v4"]),
        (("--env-id", "NoSuchGameNoFrameskip-v4"), "--env-id"),
        (("--total-timesteps", 50), ["--total-timesteps", "80"]),
        (("--num-envs", 0), "--num-envs"),
        (("--gae-lambda", 1.5), "--gae-lambda"),
        (("--sticky-action-prob", 1.0), "--sticky-action-prob"),
        (("--checkpoint-frequency", -1), "--checkpoint-frequency"),
        (("--eval-checkpoint", "missing.pt"), ["--eval-checkpoint", "--save-model"]),
    ],
)
def test_bad_input(workdir, args, mentions):
    assert_bad_input(SCRIPT, *args, cwd=workdir, mentions=mentions)


# ---- Endurance: checkpoints, resume, non-finite stops, memory -------------------------------------
# 2 envs x 5 steps: an update every 10 steps; 1 short evaluation game every 100 steps.
TINY = dict(
    total_timesteps=300,
    num_envs=2,
    num_steps=5,
    cuda=False,
    log_frequency=50,  # environment steps: every 5 updates
    eval_frequency=100,
    eval_episodes=1,
    final_eval_episodes=1,
    eval_max_frames=200,
)
CLI_TINY = [
    "--total-timesteps",
    1000,
    "--num-envs",
    2,
    "--eval-frequency",
    500,
    "--eval-episodes",
    1,
    "--final-eval-episodes",
    2,
    "--eval-max-frames",
    400,
    "--log-frequency",
    50,
    "--no-cuda",
]


def tiny_args(**overrides):
    return dataclasses.replace(A.Args(), **{**TINY, "run_name": "tiny", **overrides})


def test_killed_run_resumes_to_the_same_result(workdir):
    # Checkpoints every 300 steps (30 updates): the kill lands anywhere between (or during) them.
    a, _ = assert_kill_resume_equal(SCRIPT, *CLI_TINY, "--checkpoint-frequency", 300, cwd=workdir)
    assert a["final_eval"]["episodes"] == 2 and len(a["eval_history"]) == 2


def test_checkpoint_holds_the_whole_run_state_and_games_restart_after_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seeds, make_envs = [], A.make_envs

    def spy(game, num_envs, seed, *args, **kwargs):
        seeds.append((num_envs, seed))
        return make_envs(game, num_envs, seed, *args, **kwargs)

    monkeypatch.setattr(A, "make_envs", spy)
    A.main(tiny_args(seed=4, total_timesteps=250, checkpoint_frequency=100))
    # Training games start at step 0 and again after each checkpoint (not after the last update), seeded by the step.
    assert [seed for n, seed in seeds if n == 2] == [4, 104, 204]
    checkpoint = torch.load(tmp_path / "runs/tiny/checkpoint", weights_only=True)
    assert checkpoint["global_step"] == 200 and checkpoint["updates"] == 20 and checkpoint["evals"] == 2
    assert checkpoint["script"] == SCRIPT and checkpoint["args"]["checkpoint_frequency"] == 100
    assert checkpoint["agent"].keys() == A.ActorCritic(4).state_dict().keys()
    square_avg = [s["square_avg"] for s in checkpoint["optimizer"]["state"].values()]
    assert len(square_avg) == len(checkpoint["agent"]) and min(float(s.min()) for s in square_avg) < 0.99
    assert {"python", "numpy", "torch", "cuda", "generators"} <= checkpoint["rng"].keys()
    assert len(checkpoint["rng"]["generators"]) == 1 and len(checkpoint["log"]["eval_history"]) == 2
    assert not (tmp_path / "runs/tiny/checkpoint.tmp").exists()
    # A periodic checkpoint evaluates like a --save-model file.
    summary = A.main(tiny_args(run_name="ev", eval_checkpoint=str(tmp_path / "runs/tiny/checkpoint")))
    assert summary["total_timesteps"] == 200 and summary["final_eval"]["episodes"] == 1


def test_non_finite_loss_stops_the_run_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    calls, original = [0], A.a2c_loss

    def poisoned(*args, **kwargs):  # from the 15th update on (step 150), after the checkpoint at step 100
        calls[0] += 1
        loss, parts = original(*args, **kwargs)
        return (loss * float("nan") if calls[0] >= 15 else loss), parts

    monkeypatch.setattr(A, "a2c_loss", poisoned)
    # At once (step 150): the next rollout would sample actions from NaN probabilities.
    checkpoint = assert_nonfinite_stops(lambda: A.main(tiny_args(checkpoint_frequency=100)), "runs/tiny", capsys, 150)
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == 100 and all(torch.isfinite(v).all() for v in saved["agent"].values())


def test_resume_refuses_what_it_cannot_continue(workdir, smoke_run):
    (workdir / "runs/early").mkdir(parents=True)  # killed before its first checkpoint
    assert_bad_input(SCRIPT, "--resume", "runs/early", cwd=workdir, mentions=["--resume", "checkpoint"], keep=True)
    assert_bad_input(SCRIPT, "--resume", smoke_run, cwd=workdir, mentions=["--resume", "finished"], keep=True)
    (workdir / "runs/torn").mkdir()
    (workdir / "runs/torn/checkpoint").write_bytes((smoke_run / CHECKPOINT).read_bytes()[:5000])
    assert_bad_input(SCRIPT, "--resume", "runs/torn", cwd=workdir, mentions=["--resume", "not a torch"], keep=True)


def test_memory_check_reads_mem_available_and_the_cgroup_limit(tmp_path):
    assert_available_memory(A.available_memory, tmp_path)


# ---- The environment as run -----------------------------------------------------------------------
def test_sticky_actions_and_env_settings(tmp_path, monkeypatch):
    assert A.sticky_prob(A.Args(env_id="ALE/Breakout-v5")) == 0.25  # the env id's own meaning
    assert A.sticky_prob(A.Args(env_id="BreakoutNoFrameskip-v4")) == 0.0
    assert A.sticky_prob(A.Args(env_id="ALE/Breakout-v5", sticky_action_prob=0.0)) == 0.0
    built, real = [], A.AtariVectorEnv

    def spy(game, num_envs, **kwargs):
        built.append(kwargs)
        return real(game, num_envs, **kwargs)

    monkeypatch.setattr(A, "AtariVectorEnv", spy)
    monkeypatch.chdir(tmp_path)
    summary = A.main(tiny_args(env_id="ALE/Breakout-v5", total_timesteps=100, capture_video=True))
    envs = [kw for kw in built if "noop_max" in kw]  # not the probes that count the actions
    # training, the periodic and the final evaluation, and the video's two envs (stacks and RGB frames)
    assert len(envs) == 5 and {kw["repeat_action_probability"] for kw in envs} == {0.25}
    assert any((tmp_path / "runs/tiny/videos").iterdir())
    env = summary["env"]
    assert env["sticky_action_prob"] == 0.25 and env["action_set"] == "minimal (4 actions)"
    assert env["noop_max"] == 30 and env["max_episode_frames"] == 108_000 and env["eval_max_episode_frames"] == 200
    assert env["autoreset"] == "next_step" and "whole games" in env["life_loss"] and "[-1, 1]" in env["reward"]


def test_evaluation_reports_lengths_and_frame_cap_cuts():
    torch.manual_seed(0)
    episodes = A.evaluate(A.ActorCritic(4), "breakout", 2, seed=0, device=torch.device("cpu"), max_frames=200)
    assert episodes.lengths == [50, 50] and episodes.truncated == [True, True]  # 200 frames = 50 agent steps
    assert A.eval_stats(*episodes)["truncated"] == 1.0
