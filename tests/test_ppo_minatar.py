"""Tests of ppo_minatar_jax.py (MLP) and ppo_minatar_cnn_jax.py (CNN).

Compilation dominates the cost, so pure pieces (GAE, loss, rollout, evaluation, checkpoints) are tested
directly, in both scripts where the piece is shared, whole runs go through `main()` in-process with tiny
budgets (most of them with the TINY settings, whose programs the persistent cache then holds), and only a
few runs use the CLI.
"""

import ast
import dataclasses
import json
import re
from functools import partial
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_platforms", "cpu")  # same seed, same numbers: tests pin the CPU backend

from conftest import (  # noqa: E402
    ROOT,
    assert_available_memory,
    assert_bad_input,
    assert_kill_resume_equal,
    assert_nonfinite_stops,
    check_run_contract,
    load_script,
    read_scalars,
    run_script,
)


def is_cnn(module) -> bool:
    return "channels" in {f.name for f in dataclasses.fields(module.Args)}


# The two scripts, or a copy of one given by --script (a CNN copy if its Args have `channels`) and the other.
ORIGINALS = ("ppo_minatar_jax.py", "ppo_minatar_cnn_jax.py")
_, mlp = load_script(ORIGINALS[0], fits=lambda m: not is_cnn(m))
_, cnn = load_script(ORIGINALS[1], fits=is_cnn)
COPY = [m for m in (mlp, cnn) if m.SCRIPT not in ORIGINALS]
ORIGINALS_ONLY = pytest.mark.skipif(bool(COPY), reason="about the original scripts, not a modified copy")

# 6 updates of 256 steps; chunks of 2 updates, evaluations every 3: both boundaries are exercised.
TINY = dict(
    num_envs=16,
    num_steps=16,
    num_minibatches=2,
    update_epochs=2,
    total_timesteps=1536,
    log_frequency=512,
    eval_frequency=768,
    eval_episodes=8,
    final_eval_episodes=8,
    cuda=False,
)
TINY_CLI = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "cuda"] + ["--no-cuda"]
TINY_NET = {mlp: dict(hidden_sizes=(16,)), cnn: dict(channels=(4,), hidden_size=8)}
OTHER_NET = {mlp: dict(hidden_sizes=(32,)), cnn: dict(channels=(8,), hidden_size=8)}
# Tests of pieces the two scripts share run on both: a bug planted in either one must fail a test.
# With --script, only the copy.
BOTH = pytest.mark.parametrize("module", COPY or [mlp, cnn], ids=["copy"] if COPY else ["mlp", "cnn"])


@pytest.fixture(scope="module", autouse=True)
def compile_once(tmp_path_factory):
    """Each train() call jits new closures, so runs of one configuration would compile it again: with a
    persistent cache (keyed by the compiled program) the later runs load it instead."""
    from jax.experimental.compilation_cache import compilation_cache

    before = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()


def tiny_args(module, **kw):
    return module.Args(**{**TINY, **TINY_NET[module], **kw})


def tiny_net(module, n_actions=3, **kw):
    return module.ActorCritic(*module.make_networks(tiny_args(module, **kw), n_actions))


def tiny_runner(module, seed=0, **kw):
    """A freshly initialized RunnerState of a tiny Breakout agent (TINY settings, tiny network)."""
    args = tiny_args(module, **kw)
    env, env_params = module.make_env(args.env_id)
    init, _ = module.make_train(args, env, env_params, tiny_net(module, env.action_space(env_params).n, **kw))
    return jax.jit(init)(jax.random.PRNGKey(seed))


def run_main(module, workdir, monkeypatch, **kw):
    monkeypatch.chdir(workdir)
    return module.main(module.Args(**{**TINY, **kw}))


def random_batch(key, n=64, n_actions=3):
    k = jax.random.split(key, 6)
    return {
        "obs": jax.random.bernoulli(k[0], 0.2, (n, 10, 10, 4)).astype(jnp.float32),
        "action": jax.random.randint(k[1], (n,), 0, n_actions),
        "log_prob": jnp.log(jnp.full((n,), 1.0 / n_actions)) + 0.1 * jax.random.normal(k[2], (n,)),
        "value": jax.random.normal(k[3], (n,)),
        "advantages": 2.0 * jax.random.normal(k[4], (n,)) + 1.0,
        "returns": jax.random.normal(k[5], (n,)),
    }


def tiny_problem(seed):
    """A tiny MLP agent, a random batch from PRNGKey(seed) and parameters from PRNGKey(seed + 1)."""
    net = tiny_net(mlp)
    batch = random_batch(jax.random.PRNGKey(seed))
    return net, batch, net.init(jax.random.PRNGKey(seed + 1), batch["obs"])


# ---- GAE ----
def gae_loop(rewards, values, next_values, terminated, dones, gamma, lam):
    """Plain-Python GAE: one env, one step at a time, from the end."""
    T = len(rewards)
    adv = np.zeros(T)
    last = 0.0
    for t in reversed(range(T)):
        bootstrap = 0.0 if terminated[t] else next_values[t]
        delta = rewards[t] + gamma * bootstrap - values[t]
        last = delta + gamma * lam * (0.0 if dones[t] else last)
        adv[t] = last
    return adv, adv + values


@BOTH
def test_gae_matches_python_loop(module):
    rng = np.random.default_rng(0)
    T, N = 20, 5
    rewards, values, next_values = rng.normal(size=(3, T, N))
    terminated = rng.random((T, N)) < 0.15
    truncated = (rng.random((T, N)) < 0.15) & ~terminated
    dones = terminated | truncated
    assert terminated.any() and truncated.any()
    adv, ret = module.gae(
        *map(jnp.asarray, (rewards, values, next_values)),
        jnp.asarray(terminated, jnp.float32),
        jnp.asarray(dones, jnp.float32),
        0.97,
        0.9,
    )
    for n in range(N):
        ref_adv, ref_ret = gae_loop(
            rewards[:, n], values[:, n], next_values[:, n], terminated[:, n], dones[:, n], 0.97, 0.9
        )
        np.testing.assert_allclose(np.asarray(adv)[:, n], ref_adv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(ret)[:, n], ref_ret, rtol=1e-5, atol=1e-5)


@BOTH
def test_gae_terminated_vs_truncated(module):
    """Two one-step episodes with the same numbers: truncation bootstraps, termination does not."""
    r, v, v_next, gamma = jnp.array([[1.0, 1.0]]), jnp.array([[0.5, 0.5]]), jnp.array([[2.0, 2.0]]), 0.9
    terminated, dones = jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 1.0]])
    adv, ret = module.gae(r, v, v_next, terminated, dones, gamma, 0.95)
    np.testing.assert_allclose(adv[0], [1.0 - 0.5, 1.0 + 0.9 * 2.0 - 0.5], rtol=1e-6)
    # The trace is cut at an episode end: a later step's advantage does not leak backwards.
    r2 = jnp.array([[0.0], [100.0]])
    adv2, _ = module.gae(
        r2, jnp.zeros((2, 1)), jnp.zeros((2, 1)), jnp.zeros((2, 1)), jnp.array([[1.0], [0.0]]), 0.99, 0.95
    )
    assert float(adv2[0, 0]) == 0.0


@BOTH
def test_rollout_bootstraps_from_final_observation_not_reset(module):
    """Short time limit so truncations happen: V(final_observation) must be the bootstrap, and the
    transition across the auto-reset must join the last state of an episode to its real successor."""
    env, env_params = module.make_env("Breakout-MinAtar")
    env_params = env_params.replace(max_steps_in_episode=7)
    net = tiny_net(module)
    key = jax.random.PRNGKey(0)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, 8), env_params)
    params = net.init(key, obs)
    zeros = jnp.zeros(8)
    run = jax.jit(partial(module.rollout, net, env, env_params, num_steps=30))
    (_, last_obs, _, _, _), traj, stats = run(params, env_state, obs, key, zeros, zeros.astype(jnp.int32))
    o, nxt = np.asarray(traj.obs), np.asarray(traj.next_obs)
    done, term = np.asarray(traj.done, bool), np.asarray(traj.terminated, bool)
    following = np.concatenate([o[1:], np.asarray(last_obs)[None]])
    truncated = done & ~term
    assert truncated.sum() >= 8 and term.any()
    # Fresh randomness at every step (classic bug: one key reused, so a near-uniform policy repeats the
    # same action): every env's actions vary.
    assert all(len(set(a)) > 1 for a in np.asarray(traj.action).T)
    # Within an episode the stored next state is the next observation; at an episode end it is not
    # the reset observation that follows.
    np.testing.assert_array_equal(nxt[~done], following[~done])
    assert all(not np.array_equal(nxt[t, n], following[t, n]) for t, n in zip(*np.nonzero(done)))

    # With lambda = 0 the target is the one-step TD target from the stored next state.
    gamma = 0.9
    _, returns = module.advantages_and_returns(net, params, traj, gamma, 0.0)
    v_final = np.asarray(net.values(params, traj.next_obs))
    v_reset = np.asarray(net.values(params, jnp.asarray(following)))
    r = np.asarray(traj.reward)
    np.testing.assert_allclose(np.asarray(returns), r + gamma * (1 - term) * v_final, rtol=1e-5, atol=1e-6)
    wrong = r + gamma * (1 - term) * v_reset
    assert np.abs(np.asarray(returns) - wrong)[truncated].max() > 1e-4

    # Episode statistics: rewards of the episodes that ended inside the rollout, whole episodes only.
    ep_sum, count, running = 0.0, 0, np.zeros(8)
    for t in range(30):
        running += r[t]
        ep_sum += running[done[t]].sum()
        count += done[t].sum()
        running[done[t]] = 0.0
    assert int(stats[2]) == count
    np.testing.assert_allclose(float(stats[0]), ep_sum, rtol=1e-6)


# ---- Loss ----
class TableNet:
    """A "network" whose parameters are the logits and values themselves, so that the gradient of
    ppo_loss is its gradient with respect to the log-probabilities' logits and the values."""

    def logits(self, params, obs):
        return params["actor"]

    def values(self, params, obs):
        return params["critic"]


def ppo_loss_numpy(logits, values, batch, clip, ent_coef, vf_coef, norm_adv, clip_vloss):
    """PPO's loss in float64, written after Schulman et al. 2017: the pessimistic minimum of the
    unclipped and clipped surrogate objectives, the (clipped) squared value error, the entropy bonus."""
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ratio = np.exp(log_p[np.arange(len(logits)), batch["action"]] - batch["log_prob"])
    adv = batch["advantages"]
    if norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    surrogate = np.minimum(ratio * adv, np.clip(ratio, 1 - clip, 1 + clip) * adv)
    v_err = (values - batch["returns"]) ** 2
    if clip_vloss:
        v_clipped = batch["value"] + np.clip(values - batch["value"], -clip, clip)
        v_err = np.maximum(v_err, (v_clipped - batch["returns"]) ** 2)
    parts = {
        "policy_loss": -surrogate.mean(),
        "value_loss": 0.5 * v_err.mean(),
        "entropy": -(np.exp(log_p) * log_p).sum(1).mean(),
        "approx_kl": (ratio - 1 - np.log(ratio)).mean(),
        "clipfrac": (np.abs(ratio - 1) > clip).mean(),
    }
    return parts["policy_loss"] - ent_coef * parts["entropy"] + vf_coef * parts["value_loss"], parts


def clipping_case(seed=0):
    """(logits, values, batch) of 16 samples: ratios below, inside and above [0.8, 1.2], each with
    advantages of both signs (before and after normalization), and new values below, inside and above
    the value clip around the rollout's, with returns on either side."""
    rng = np.random.default_rng(seed)
    logits, action = rng.normal(size=(16, 3)), rng.integers(0, 3, 16)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ratio = np.repeat([0.5, 0.9, 1.1, 1.6], 4)
    m = rng.uniform(0.5, 2.0, 8)
    adv = np.stack([m, -m], 1).ravel()  # mean 0: normalizing keeps every sign
    old_value = rng.normal(size=16)
    values = old_value + np.tile([-0.5, -0.1, 0.1, 0.5], 4)
    batch = {
        "obs": np.zeros((16, 1)),
        "action": action,
        "log_prob": log_p[np.arange(16), action] - np.log(ratio),
        "value": old_value,
        "advantages": 3.0 * adv + 1.0,
        "returns": old_value + rng.choice([-1.0, 1.0], 16) * rng.uniform(0.3, 1.2, 16),
    }
    return logits, values, batch


def central_differences(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        dx = np.zeros_like(x)
        dx[i] = h
        grad[i] = (f(x + dx) - f(x - dx)) / (2 * h)
    return grad


@BOTH
@pytest.mark.parametrize("norm_adv", [True, False])
@pytest.mark.parametrize("clip_vloss", [False, True])
def test_ppo_loss_matches_numpy_reference(module, norm_adv, clip_vloss):
    """Value, parts and gradient (with respect to logits and values) of the script's loss against the
    float64 reference; the gradient by central differences of the reference."""
    logits, values, batch = clipping_case()
    hyper = (0.2, 0.05, 0.7, norm_adv, clip_vloss)  # clip, entropy and value coefficients, switches
    ref_loss, ref_parts = ppo_loss_numpy(logits, values, batch, *hyper)
    assert 0 < ref_parts["clipfrac"] < 1
    params = {"actor": jnp.asarray(logits, jnp.float32), "critic": jnp.asarray(values, jnp.float32)}
    (loss, parts), grads = jax.value_and_grad(module.ppo_loss, has_aux=True)(
        params, TableNet(), jax.tree.map(jnp.asarray, batch), *hyper
    )
    assert float(loss) == pytest.approx(ref_loss, rel=1e-5)
    for k, v in ref_parts.items():
        assert float(parts[k]) == pytest.approx(v, rel=1e-5, abs=1e-6), k
    ref = lambda lg, v: ppo_loss_numpy(lg, v, batch, *hyper)[0]
    np.testing.assert_allclose(
        grads["actor"], central_differences(lambda lg: ref(lg, values), logits), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        grads["critic"], central_differences(lambda v: ref(logits, v), values), rtol=1e-4, atol=1e-6
    )


def test_layer_grad_norms_cover_every_layer():
    net, batch, params = tiny_problem(5)
    grads, _ = jax.grad(mlp.ppo_loss, has_aux=True)(params, net, batch, 0.2, 0.01, 0.5)
    norms = mlp.layer_grad_norms(grads)
    assert set(norms) == {f"grad_norm/{a}/Dense_{i}" for a in ("actor", "critic") for i in range(2)}
    total = np.sqrt(sum(float(v) ** 2 for v in norms.values()))
    assert total == pytest.approx(float(jax.tree.reduce(lambda a, g: a + jnp.sum(g**2), grads, 0.0)) ** 0.5, rel=1e-4)


# ---- Update ----
@BOTH
def test_epoch_minibatches_partition_the_batch_and_reshuffle(module):
    idx = np.asarray(module.epoch_minibatches(jax.random.PRNGKey(0), 24, 3, 4))
    assert idx.shape == (3, 4, 6)
    for epoch in idx:  # every index exactly once per epoch
        np.testing.assert_array_equal(np.sort(epoch.ravel()), np.arange(24))
    assert not np.array_equal(idx[0].ravel(), np.arange(24))
    assert len({epoch.tobytes() for epoch in idx}) == 3, "an epoch reuses another epoch's shuffle"


@BOTH
def test_adam_state_carries_over_between_updates(module):
    """One optimizer for the whole run (classic bug: rebuilt per update, losing Adam's moments)."""
    args = tiny_args(module)
    env, env_params = module.make_env(args.env_id)
    init, train_chunk = module.make_train(args, env, env_params, tiny_net(module))
    runner = init(jax.random.PRNGKey(0))
    chunk = jax.jit(train_chunk)
    runner, sums = chunk(runner, 2)
    runner, sums = chunk(runner, 3)
    adam = runner.opt_state[1]
    assert int(adam.count) == 5 * args.update_epochs * args.num_minibatches
    assert int(runner.update) == 5
    # Linear annealing: the mean lr of updates 2..4 of 6.
    assert float(sums["learning_rate"]) / 3 == pytest.approx(args.learning_rate * (1 - 3 / 6), rel=1e-5)
    assert bool(sums["finite"])
    # One non-finite parameter: NaN values, losses, gradients, then every parameter; the chunk says so.
    leaves, tree = jax.tree.flatten(runner.params)
    poisoned = runner._replace(params=jax.tree.unflatten(tree, [leaves[0].at[0].set(jnp.nan), *leaves[1:]]))
    assert not bool(chunk(poisoned, 1)[1]["finite"])


# ---- Evaluation ----
def evaluate_loop(net, env, env_params, episodes, params, key):
    """evaluate() (sampled actions) as a plain Python loop over single gymnax envs, with its keys. Returns
    each env's first-episode return, its length, whether the time limit cut it, and its return with the
    rewards after the end (the bug)."""
    k_reset, key = jax.random.split(key)
    states = [env.reset(k, env_params) for k in jax.random.split(k_reset, episodes)]
    step = jax.jit(env.step)
    returns, with_later, lengths, t = np.zeros(episodes), np.zeros(episodes), np.zeros(episodes, int), 0
    cut = np.zeros(episodes, bool)
    while (lengths == 0).any():
        key, k_act, k_env = jax.random.split(key, 3)
        logits = net.logits(params, jnp.stack([obs for obs, _ in states]))
        actions = jax.random.categorical(k_act, logits)
        t += 1
        for i, k in enumerate(jax.random.split(k_env, episodes)):
            obs, state, reward, terminated, truncated, _ = step(k, states[i][1], actions[i], env_params)
            states[i] = (obs, state)
            with_later[i] += float(reward)
            if lengths[i] == 0:
                returns[i] += float(reward)
                lengths[i] = t if terminated or truncated else 0
                cut[i] = bool(truncated and not terminated)
    return returns, lengths, cut, with_later


@BOTH
def test_evaluate_matches_a_plain_loop(module):
    """One whole episode per env and nothing after it: SpaceInvaders with a 40-step limit, where
    episodes end at different times (terminated or truncated) and envs score after their end."""
    env, env_params = module.make_env("SpaceInvaders-MinAtar")
    env_params = env_params.replace(max_steps_in_episode=40)
    net = tiny_net(module, env.action_space(env_params).n)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, *env.observation_space(env_params).shape)))
    key = jax.random.PRNGKey(1)
    evaluate = jax.jit(partial(module.evaluate, net, env, env_params, 8))
    returns, lengths, cut, with_later = evaluate_loop(net, env, env_params, 8, params, key)
    assert len(set(lengths)) > 1 and not np.array_equal(returns, with_later)  # the case can tell
    assert cut.any() and not cut.all() and (lengths[cut] == 40).all()  # some cut by the time limit, some not
    episodes = evaluate(params, key, False)
    np.testing.assert_array_equal(np.asarray(episodes.returns), returns)
    np.testing.assert_array_equal(np.asarray(episodes.lengths), lengths)
    np.testing.assert_array_equal(np.asarray(episodes.truncated), cut)
    stats = module.eval_stats(*map(np.asarray, episodes))
    assert stats["mean_length"] == lengths.mean() and stats["truncated"] == cut.mean()


# ---- Checkpoints ----
def test_save_model_round_trip(tmp_path):
    """--save-model's file holds one agent's whole training state, which restore() puts into a fresh one's
    arrays, with their exact types (a resumed run must run the program the saved run ran)."""
    saved, template = tiny_runner(mlp, seed=0)._replace(update=jnp.int32(3)), tiny_runner(mlp, seed=9)
    mlp.save_model(tmp_path / "c.msgpack", saved, 768, tiny_args(mlp))
    state = mlp.read_checkpoint(str(tmp_path / "c.msgpack"), "--eval-checkpoint")
    assert state["global_step"] == 768 and state["script"] == mlp.SCRIPT
    restored = mlp.restore(
        state["runner"], template, "--eval-checkpoint", "c.msgpack", json.loads(state["args"]), tiny_args(mlp)
    )
    jax.tree.map(np.testing.assert_array_equal, restored, saved)
    assert jax.tree.map(lambda x: (x.dtype, x.weak_type), restored) == jax.tree.map(
        lambda x: (x.dtype, x.weak_type), template
    )


def write_bad_checkpoint(kind, module, path):
    """A file that exists but that `module` can neither resume nor evaluate."""

    def save(mod, **kw):
        mod.save_model(path, tiny_runner(mod, **kw), 768, tiny_args(mod, **kw))

    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":  # torn
        save(module)
        path.write_bytes(path.read_bytes()[:-1000])
    elif kind == "other_script":
        save(cnn if module is mlp else mlp)
    elif kind == "torch":
        import torch

        torch.save({"q_network": {"weight": torch.zeros(3, 4)}}, path)
    elif kind == "code_differs":  # its args are this network's, its weights another network's
        module.save_model(path, tiny_runner(module, **OTHER_NET[module]), 768, tiny_args(module))
    elif kind == "save_model":  # a fine --save-model file, but one that cannot be resumed
        save(module)


def assert_main_rejects(module, workdir, monkeypatch, capfd, mentions, **kw):
    """conftest's assert_bad_input(keep=True) in-process: exit 2, one line naming `mentions`, runs/ untouched."""
    before = sorted((workdir / "runs").rglob("*"))
    with pytest.raises(SystemExit) as stop:
        run_main(module, workdir, monkeypatch, **TINY_NET[module], **kw)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1, lines
    assert all(word in lines[0] for word in mentions), lines[0]
    assert sorted((workdir / "runs").rglob("*")) == before, "bad input must not touch runs/"


@BOTH
@pytest.mark.parametrize(
    "flag,kind",
    [("eval_checkpoint", kind) for kind in ("garbage", "empty", "truncated", "other_script", "torch", "code_differs")]
    + [("resume", kind) for kind in ("garbage", "empty", "truncated", "other_script", "torch", "save_model")],
)
def test_foreign_checkpoint_is_bad_input(module, flag, kind, workdir, monkeypatch, capfd):
    (workdir / "runs/cut").mkdir(parents=True)
    write_bad_checkpoint(kind, module, workdir / "runs/cut/checkpoint")
    other = [(cnn if module is mlp else mlp).SCRIPT] if kind == "other_script" else []
    # The flags that size the network match the checkpoint's: the network code is to blame, and the entries named.
    other += ["network code differs", "entries differ", "saved"] if kind == "code_differs" else []
    where = "runs/cut/checkpoint" if flag == "eval_checkpoint" else "runs/cut"
    assert_main_rejects(
        module, workdir, monkeypatch, capfd, [f"--{flag.replace('_', '-')}", where, *other], **{flag: where}
    )


@BOTH
def test_eval_checkpoint_takes_the_network_flags_from_the_checkpoint(module, workdir, monkeypatch):
    # Saved with other sizes: evaluated with the saved sizes, whatever the flags say (here TINY_NET's).
    module.save_model(
        workdir / "c.msgpack", tiny_runner(module, **OTHER_NET[module]), 768, tiny_args(module, **OTHER_NET[module])
    )
    (summary,) = run_main(module, workdir, monkeypatch, eval_checkpoint="c.msgpack", run_name="e", **TINY_NET[module])
    for flag, value in OTHER_NET[module].items():
        assert tuple(np.ravel(summary["args"][flag])) == tuple(np.ravel(value)), flag
    assert summary["final_eval"]["episodes"] == TINY["final_eval_episodes"]


def test_resume_refuses_what_it_cannot_continue(workdir, monkeypatch, capfd):
    (workdir / "runs/early").mkdir(parents=True)  # killed before its first checkpoint
    assert_main_rejects(mlp, workdir, monkeypatch, capfd, ["--resume", "runs/early", "checkpoint"], resume="runs/early")
    (workdir / "runs/done").mkdir()
    mlp.save_model(workdir / "runs/done/checkpoint", tiny_runner(mlp), 768, tiny_args(mlp))
    (workdir / "runs/done/summary.json").write_text(json.dumps({"status": "finished"}))
    assert_main_rejects(mlp, workdir, monkeypatch, capfd, ["--resume", "finished"], resume="runs/done")


def test_rollout_that_cannot_fit_in_memory_is_bad_input(workdir, monkeypatch, capfd):
    assert_main_rejects(
        mlp,
        workdir,
        monkeypatch,
        capfd,
        ["the rollout", "GiB", "--num-envs"],
        num_envs=10**8,
        num_steps=64,
        total_timesteps=10**10,
    )


@ORIGINALS_ONLY  # the published network's size: a modified network has another
def test_cnn_default_parameter_count():
    env, env_params = cnn.make_env("Breakout-MinAtar")
    net = cnn.ActorCritic(*cnn.make_networks(cnn.Args(), env.action_space(env_params).n))
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, *env.observation_space(env_params).shape)))
    assert cnn.param_count(params["actor"]) == 155_315
    assert cnn.param_count(params["critic"]) == 155_315 - 2 * 129


def test_cnn_conv_is_a_valid_3x3_convolution():
    import flax.linen as nn

    x = jax.random.normal(jax.random.PRNGKey(0), (5, 10, 10, 4))
    conv = cnn.Conv3x3(16)
    params = conv.init(jax.random.PRNGKey(1), x)
    ref = nn.Conv(16, (3, 3), padding="VALID").apply(params, x)
    np.testing.assert_allclose(np.asarray(conv.apply(params, x)), np.asarray(ref), rtol=1e-5, atol=1e-5)


# ---- Endurance: kill -9 and resume, non-finite stops, memory; the environment as run ----
# 2048 updates in chunks of 32, checkpoints every 128: at the ~150k steps/s of an idle CPU core, the killed
# run still has 3 s to go after its first checkpoint.
KILL_CLI = [
    *TINY_CLI,
    "--total-timesteps=524288",
    "--log-frequency=8192",
    "--eval-frequency=131072",
    "--checkpoint-frequency=32768",
]
NET_CLI = {mlp: ["--hidden-sizes", 16], cnn: ["--channels", 4, "--hidden-size", 8]}


def test_non_finite_stops_the_run_and_keeps_the_checkpoint(workdir, monkeypatch, capsys):
    """A NaN learning rate from the 4th update on (as a NaN loss: NaN gradients, then NaN parameters): the run
    stops at the end of that update's chunk (step 1024), before the checkpoint then due, keeping step 512's."""
    original = mlp.linear_schedule
    monkeypatch.setattr(
        mlp,
        "linear_schedule",
        lambda start, end, duration, t: jnp.where(t >= 3, jnp.nan, original(start, end, duration, t)),
    )
    monkeypatch.chdir(workdir)
    checkpoint = assert_nonfinite_stops(
        lambda: mlp.main(tiny_args(mlp, checkpoint_frequency=512, run_name="nan")), "runs/nan", capsys, 1_024
    )
    state = flax.serialization.msgpack_restore(checkpoint.read_bytes())
    assert state["global_step"] == 512 and all(np.isfinite(x).all() for x in jax.tree.leaves(state["runner"]))


@BOTH
def test_memory_check_reads_mem_available_and_the_cgroup_limit(module, tmp_path):
    assert_available_memory(module.available_memory, tmp_path)


@BOTH
def test_sticky_actions_and_env_settings(module):
    """With probability p an env repeats its previous action: requests alternating between two actions are
    then overridden at the stationary rate p / (1 + p) (a repeat puts the env one step behind, never two)."""
    key = jax.random.PRNGKey(0)
    for p in (0.0, 0.25):
        env, env_params = module.make_env("Breakout-MinAtar", p)
        step = jax.jit(env.step)
        _, state = env.reset(key, env_params)
        overridden = 0
        for t, k in enumerate(jax.random.split(key, 400)):
            _, state, *_ = step(k, state, t % 2, env_params)
            overridden += int(state.last_action) != t % 2
        assert overridden == 0 if p == 0 else 0.14 < overridden / 400 < 0.26, (p, overridden)
    settings = module.env_settings(tiny_args(module, env_id="Freeway-MinAtar", sticky_action_prob=0.25))
    assert settings == {
        "sticky_action_prob": 0.25,
        "action_set": "3 actions: NOOP UP DOWN",
        "noop_max": 0,
        "max_episode_steps": 2500,
        "life_loss": "not applicable",
        "reward": "raw",
        "autoreset": "gymnax same-step (final observation in info)",
    }


@BOTH
def test_killed_run_resumes_to_the_same_result(module, workdir, monkeypatch):
    # The full, killed and resumed runs share one compilation through the persistent cache.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    a, b = assert_kill_resume_equal(module.SCRIPT, *KILL_CLI, *NET_CLI[module], cwd=workdir)
    assert a["total_timesteps"] == 524288 and len(a["eval_history"]) == 4


# ---- Whole runs, in-process ----
def series(run_dir, tags=("charts/episodic_return", "losses/value_loss", "losses/entropy", "eval/episodic_return")):
    scalars = read_scalars(run_dir)
    return {t: np.array([v for _, v in scalars[t]]) for t in tags}


def test_num_seeds_matches_single_seed_runs_and_is_deterministic(workdir, monkeypatch):
    batched = run_main(mlp, workdir, monkeypatch, seed=1, num_seeds=2, run_name="k2")
    assert [s["seed"] for s in batched] == [1, 2]
    single = [run_main(mlp, workdir, monkeypatch, seed=s, run_name=f"s{s}")[0] for s in (1, 2)]
    again = run_main(mlp, workdir, monkeypatch, seed=1, run_name="s1_again")[0]
    for seed, one in zip((1, 2), single):
        check_run_contract(
            workdir / "runs" / f"k2__{seed}", mlp.SCRIPT, "Breakout-MinAtar", seed, TINY["total_timesteps"]
        )
        a, b = series(workdir / "runs" / f"k2__{seed}"), series(workdir / "runs" / f"s{seed}")
        for tag in a:
            np.testing.assert_allclose(a[tag], b[tag], rtol=1e-4, atol=1e-5, err_msg=tag)
        for k in ("mean", "min", "max"):
            assert batched[seed - 1]["final_eval"][k] == pytest.approx(one["final_eval"][k], rel=1e-5)
    # Same seed, same numbers (classic bug: unseeded randomness); another seed, other numbers.
    assert again["final_eval"] == single[0]["final_eval"]
    a, b = series(workdir / "runs" / "s1"), series(workdir / "runs" / "s1_again")
    for tag in a:
        np.testing.assert_array_equal(a[tag], b[tag])
    assert not np.array_equal(series(workdir / "runs" / "s2")["losses/value_loss"], a["losses/value_loss"])
    assert batched[0]["env"] == mlp.env_settings(mlp.Args()) and batched[0]["status"] == "finished"


def untimed(summary):
    return summary["final_eval"], [{k: v for k, v in p.items() if k != "wall_time_s"} for p in summary["eval_history"]]


def test_interrupted_batch_resumes_every_agent_exactly(workdir, monkeypatch):
    """--num-seeds 2, checkpoints due at steps 512 and 1024, interrupted as the second is due (after the
    run logged steps 768 and 1024), resumed from the second agent's directory: both agents end as in one
    uninterrupted run without checkpoints (so no episode restarted), with the same summaries and curves."""
    full = run_main(mlp, workdir, monkeypatch, num_seeds=2, run_name="full")
    original = mlp.save_checkpoint

    def interrupted(logs, runs, runner, global_step, args):
        if global_step > 512:
            raise KeyboardInterrupt
        original(logs, runs, runner, global_step, args)

    monkeypatch.setattr(mlp, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_main(mlp, workdir, monkeypatch, num_seeds=2, run_name="cut", checkpoint_frequency=512)
    monkeypatch.setattr(mlp, "save_checkpoint", original)
    saved = (workdir / "runs/cut__1/checkpoint").read_bytes()
    assert saved == (workdir / "runs/cut__2/checkpoint").read_bytes() and not list(workdir.rglob("*.tmp"))
    state = flax.serialization.msgpack_restore(saved)
    assert state["global_step"] == 512 and state["run_names"] == ["cut__1", "cut__2"]
    assert state["runner"]["update"].tolist() == [2, 2] and state["runner"]["params"]["actor"]  # both agents
    assert [log["step"] for log in json.loads(state["log"])] == [512, 512]

    resumed = mlp.main(mlp.Args(resume="runs/cut__2"))
    for seed, a, b in zip((1, 2), full, resumed):
        assert b["seed"] == seed and b["status"] == "finished" and untimed(a) == untimed(b)
        curves_a, curves_b = (read_scalars(workdir / "runs" / f"{name}__{seed}") for name in ("full", "cut"))
        assert curves_a.keys() == curves_b.keys()
        for tag in curves_a.keys() - {"charts/SPS"}:
            assert curves_a[tag] == curves_b[tag], tag

    # --eval-checkpoint takes a batch's checkpoint too: --seed picks the agent.
    state = flax.serialization.msgpack_restore((workdir / "runs/cut__1/checkpoint").read_bytes())
    agent = {**state, "runner": jax.tree.map(lambda x: x[1], state["runner"])}
    del agent["run_names"], agent["log"]
    (workdir / "agent2.msgpack").write_bytes(flax.serialization.msgpack_serialize(agent))
    (one,) = run_main(mlp, workdir, monkeypatch, seed=2, eval_checkpoint="runs/cut__1/checkpoint", run_name="e1")
    (two,) = run_main(mlp, workdir, monkeypatch, seed=2, eval_checkpoint="agent2.msgpack", run_name="e2")
    assert one["final_eval"] == two["final_eval"] and one["total_timesteps"] == 1024


# Freeway only ends by its 2500-step time limit: 2 envs x 2560 steps see one episode end each.
FREEWAY = dict(num_envs=2, num_steps=128, total_timesteps=5120, log_frequency=1024, eval_frequency=2560)


@pytest.mark.parametrize(
    "env_id,kw",
    [("Asterix-MinAtar", {}), ("Freeway-MinAtar", FREEWAY), ("Seaquest-MinAtar", {}), ("SpaceInvaders-MinAtar", {})],
)
def test_smoke_other_envs(env_id, kw, workdir, monkeypatch):
    """Breakout runs in the tests above; here each other game trains, evaluates and writes a summary."""
    (summary,) = run_main(mlp, workdir, monkeypatch, env_id=env_id, run_name="smoke", **kw)
    check_run_contract(
        workdir / "runs" / "smoke", mlp.SCRIPT, env_id, 1, kw.get("total_timesteps", TINY["total_timesteps"])
    )
    assert np.isfinite(summary["final_eval"]["mean"]) and summary["final_eval_greedy"]["episodes"] == 8
    if env_id == "Freeway-MinAtar":  # every episode is cut by the time limit
        assert summary["final_eval"]["truncated"] == 1.0 and summary["final_eval"]["mean_length"] == 2500


def test_learns_breakout(workdir, monkeypatch):
    """A short run: the untrained (near-uniform) policy scores about 1 per episode on Breakout-MinAtar."""
    (summary,) = run_main(
        mlp,
        workdir,
        monkeypatch,
        total_timesteps=327_680,
        num_envs=64,
        num_steps=128,
        num_minibatches=8,
        update_epochs=4,
        learning_rate=5e-3,
        log_frequency=81_920,
        eval_frequency=327_680,
        eval_episodes=256,
        final_eval_episodes=256,
        run_name="learn",
    )
    first_eval = summary["eval_history"][0]
    assert summary["final_eval"]["mean"] > 5.0, summary["final_eval"]
    returns = series(workdir / "runs" / "learn", ("charts/episodic_return",))["charts/episodic_return"]
    assert returns[-1] > 2 * returns[0], returns
    assert first_eval["step"] == 327_680


# ---- CLI ----
def test_cli_run_contract_checkpoint_and_eval(workdir):
    proc = run_script(mlp.SCRIPT, *TINY_CLI, "--num-seeds", 2, "--run-name", "cli", "--save-model", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 1,536/1,536" in proc.stdout
    for seed in (1, 2):
        run_dir = workdir / "runs" / f"cli__{seed}"
        summary = check_run_contract(run_dir, mlp.SCRIPT, "Breakout-MinAtar", seed, 1536)
        assert summary["final_eval_greedy"]["episodes"] == 8
        tags = set(read_scalars(run_dir))
        for tag in (
            "losses/policy_loss",
            "losses/value_loss",
            "losses/entropy",
            "losses/approx_kl",
            "losses/clipfrac",
            "losses/explained_variance",
            "charts/learning_rate",
            "losses/grad_norm/actor/Dense_0",
            "losses/grad_norm/critic/Dense_2",
            "eval/final_greedy_episodic_return",
            "charts/parameters/actor",
        ):
            assert tag in tags, tag
    ckpt = workdir / "runs" / "cli__2" / f"{Path(mlp.SCRIPT).stem}.msgpack"
    assert ckpt.is_file()
    # Evaluating the checkpoint reproduces the run's own final evaluation (same params, same eval keys).
    proc = run_script(mlp.SCRIPT, *TINY_CLI, "--seed", 2, "--run-name", "ev", "--eval-checkpoint", ckpt, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ev = json.loads((workdir / "runs" / "ev" / "summary.json").read_text())
    trained = json.loads((workdir / "runs" / "cli__2" / "summary.json").read_text())
    assert ev["final_eval"] == trained["final_eval"] and ev["final_eval_greedy"] == trained["final_eval_greedy"]
    assert ev["total_timesteps"] == 1536
    # A checkpoint of another game's network (the sizes come from the checkpoint, the game does not) is
    # bad input: one line, exit 2, no run directory.
    other = workdir / "other"
    other.mkdir()
    assert_bad_input(
        mlp.SCRIPT,
        "--no-cuda",
        "--env-id",
        "SpaceInvaders-MinAtar",
        "--eval-checkpoint",
        ckpt,
        cwd=other,
        mentions=[str(ckpt), "--env-id"],
    )


def test_cnn_cli_run_contract_and_video(workdir):
    proc = run_script(cnn.SCRIPT, *TINY_CLI, "--run-name", "cnn", "--capture-video", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "actor 155,315" in proc.stdout
    summary = check_run_contract(workdir / "runs" / "cnn", cnn.SCRIPT, "Breakout-MinAtar", 1, 1536)
    assert summary["parameter_count"]["actor"] == 155_315
    assert list((workdir / "runs" / "cnn" / "videos").glob("*.mp4"))


def test_cnn_num_seeds_finishes_and_matches_single_seed_run(workdir):
    """Under vmap, the orthogonal initializer's QR was one batched LAPACK call that deadlocked XLA's CPU
    thread pool on 2 cores (jaxlib 0.10): `--num-seeds 2` of the CNN never finished. Seed 2 of the
    batch must also compute what seed 2 alone computes. Batched and single convolutions round
    differently (1e-7 relative at the first update, 1e-4 after 6), so the curves are compared to 1e-3
    and the final evaluation, whose sampled actions can flip on such a difference, is not."""
    for extra in (["--num-seeds", "2", "--run-name", "k2"], ["--seed", "2", "--run-name", "s2"]):
        proc = run_script(cnn.SCRIPT, *TINY_CLI, *extra, cwd=workdir, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = series(workdir / "runs" / "k2__2"), series(workdir / "runs" / "s2")
    for tag in a:
        np.testing.assert_allclose(a[tag], b[tag], rtol=1e-3, err_msg=tag)
    # Not seed 1's run: the batch's second agent really has seed 2.
    assert not np.allclose(series(workdir / "runs" / "k2__1")["losses/value_loss"], a["losses/value_loss"])


@pytest.mark.parametrize(
    "script,args,mentions",
    [
        (mlp.SCRIPT, ["--env-id", "Pong-MinAtar"], ["Pong-MinAtar", "Breakout-MinAtar"]),
        (mlp.SCRIPT, ["--num-envs", "10", "--num-steps", "3", "--num-minibatches", "4"], "--num-minibatches"),
        (mlp.SCRIPT, ["--total-timesteps", "100"], "--total-timesteps"),
        (mlp.SCRIPT, ["--eval-checkpoint", "nope.msgpack"], "nope.msgpack"),
        (cnn.SCRIPT, ["--channels", "8", "8", "8", "8", "8"], "--channels"),
    ],
)
def test_bad_input(script, args, mentions, workdir):
    assert_bad_input(script, *args, cwd=workdir, mentions=mentions)


# ---- The two scripts are one script with two networks ----
def sections(path):
    text = Path(path).read_text()
    parts = re.split(r"^(# ==== .* ====)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def without_def(source: str, name: str) -> str:
    """`source` without the module-level function `name`."""
    lines = source.splitlines(keepends=True)
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            del lines[node.lineno - 1 : node.end_lineno]
            break
    return "".join(lines)


@ORIGINALS_ONLY
def test_scripts_differ_only_in_the_network():
    a, b = (sections(ROOT / name) for name in ORIGINALS)
    assert list(a) == list(b)
    assert list(a)[:2] == ["# ==== Arguments ====", "# ==== Environment ===="] and "# ==== Training ====" in a
    for name in a:
        if name not in ("# ==== Arguments ====", "# ==== Network ===="):
            # The appendix's input checks hold the network's own check.
            assert without_def(a[name], "check_network_args") == without_def(b[name], "check_network_args"), name
    # In Arguments only the network fields and their check differ.
    net_lines = re.compile(
        r"hidden_size|channels|check_network_args|widths|convolution|10x10|dense layer|"
        r"ppo_minatar_(cnn_)?jax\.msgpack|shrinks|positive channel|positive widths|got \{args"
    )
    strip = lambda s: [ln for ln in s.splitlines() if not net_lines.search(ln)]
    assert strip(a["# ==== Arguments ===="]) == strip(b["# ==== Arguments ===="])
