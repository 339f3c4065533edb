"""Tests of ppo_minatar_jax.py (MLP) and ppo_minatar_cnn_jax.py (CNN).

Compilation dominates the cost, so pure pieces (GAE, loss, rollout, checkpoints) are tested directly,
whole runs go through `train()` in-process with tiny budgets, and only a few runs use the CLI.
"""

import json
import re
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_platforms", "cpu")  # same seed, same numbers: tests pin the CPU backend

from conftest import ROOT, assert_bad_input, check_run_contract, read_scalars, run_script  # noqa: E402
import ppo_minatar_cnn_jax as cnn  # noqa: E402
import ppo_minatar_jax as mlp  # noqa: E402

# 6 updates of 256 steps; chunks of 2 updates, evaluations every 3: both boundaries are exercised.
TINY = dict(num_envs=16, num_steps=16, num_minibatches=2, update_epochs=2, total_timesteps=1536,
            log_frequency=512, eval_frequency=768, eval_episodes=8, final_eval_episodes=8, cuda=False)
TINY_CLI = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "cuda"] + ["--no-cuda"]


def tiny_net(module, n_actions=3):
    args = module.Args(hidden_sizes=(16,)) if module is mlp else module.Args(channels=(4,), hidden_size=8)
    return module.ActorCritic(*module.make_networks(args, n_actions))


def random_batch(key, n=64, n_actions=3):
    k = jax.random.split(key, 6)
    return {"obs": jax.random.bernoulli(k[0], 0.2, (n, 10, 10, 4)).astype(jnp.float32),
            "action": jax.random.randint(k[1], (n,), 0, n_actions),
            "log_prob": jnp.log(jnp.full((n,), 1.0 / n_actions)) + 0.1 * jax.random.normal(k[2], (n,)),
            "value": jax.random.normal(k[3], (n,)),
            "advantages": 2.0 * jax.random.normal(k[4], (n,)) + 1.0,
            "returns": jax.random.normal(k[5], (n,))}

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


def test_gae_matches_python_loop():
    rng = np.random.default_rng(0)
    T, N = 20, 5
    rewards, values, next_values = rng.normal(size=(3, T, N))
    terminated = rng.random((T, N)) < 0.15
    truncated = (rng.random((T, N)) < 0.15) & ~terminated
    dones = terminated | truncated
    assert terminated.any() and truncated.any()
    adv, ret = mlp.gae(*map(jnp.asarray, (rewards, values, next_values)), jnp.asarray(terminated, jnp.float32),
                       jnp.asarray(dones, jnp.float32), 0.97, 0.9)
    for n in range(N):
        ref_adv, ref_ret = gae_loop(rewards[:, n], values[:, n], next_values[:, n], terminated[:, n],
                                    dones[:, n], 0.97, 0.9)
        np.testing.assert_allclose(np.asarray(adv)[:, n], ref_adv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(ret)[:, n], ref_ret, rtol=1e-5, atol=1e-5)


def test_gae_terminated_vs_truncated():
    """Two one-step episodes with the same numbers: truncation bootstraps, termination does not."""
    r, v, v_next, gamma = jnp.array([[1.0, 1.0]]), jnp.array([[0.5, 0.5]]), jnp.array([[2.0, 2.0]]), 0.9
    terminated, dones = jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 1.0]])
    adv, ret = mlp.gae(r, v, v_next, terminated, dones, gamma, 0.95)
    np.testing.assert_allclose(adv[0], [1.0 - 0.5, 1.0 + 0.9 * 2.0 - 0.5], rtol=1e-6)
    # The trace is cut at an episode end: a later step's advantage does not leak backwards.
    r2 = jnp.array([[0.0], [100.0]])
    adv2, _ = mlp.gae(r2, jnp.zeros((2, 1)), jnp.zeros((2, 1)), jnp.zeros((2, 1)), jnp.array([[1.0], [0.0]]),
                      0.99, 0.95)
    assert float(adv2[0, 0]) == 0.0


def test_rollout_bootstraps_from_final_observation_not_reset():
    """Short time limit so truncations happen: V(final_observation) must be the bootstrap, and the
    transition across the auto-reset must join the last state of an episode to its real successor."""
    env, env_params = mlp.make_env("Breakout-MinAtar")
    env_params = env_params.replace(max_steps_in_episode=7)
    net = tiny_net(mlp)
    key = jax.random.PRNGKey(0)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, 8), env_params)
    params = net.init(key, obs)
    zeros = jnp.zeros(8)
    run = jax.jit(partial(mlp.rollout, net, env, env_params, num_steps=30))
    (_, last_obs, _, _, _), traj, stats = run(params, env_state, obs, key, zeros, zeros.astype(jnp.int32))
    o, nxt = np.asarray(traj.obs), np.asarray(traj.next_obs)
    done, term = np.asarray(traj.done, bool), np.asarray(traj.terminated, bool)
    following = np.concatenate([o[1:], np.asarray(last_obs)[None]])
    truncated = done & ~term
    assert truncated.sum() >= 8 and term.any()
    # Within an episode the stored next state is the next observation; at an episode end it is not
    # the reset observation that follows.
    np.testing.assert_array_equal(nxt[~done], following[~done])
    assert all(not np.array_equal(nxt[t, n], following[t, n]) for t, n in zip(*np.nonzero(done)))

    # With lambda = 0 the target is the one-step TD target from the stored next state.
    gamma = 0.9
    _, returns = mlp.advantages_and_returns(net, params, traj, gamma, 0.0)
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
def test_entropy_coefficient_changes_the_gradient():
    net, batch, params = tiny_problem(1)
    g0, m0 = jax.grad(mlp.ppo_loss, has_aux=True)(params, net, batch, 0.2, 0.0, 0.5)
    g1, m1 = jax.grad(mlp.ppo_loss, has_aux=True)(params, net, batch, 0.2, 0.1, 0.5)
    diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g0, g1)
    assert max(jax.tree.leaves(diff["actor"])) > 1e-6, "entropy bonus is not in the differentiated loss"
    assert max(jax.tree.leaves(diff["critic"])) == 0.0
    # Gradient of the bonus: ascending it raises the entropy.
    step = jax.tree.map(lambda p, a, b: p - 10.0 * (b - a), params, g0, g1)
    assert float(mlp.ppo_loss(step, net, batch, 0.2, 0.1, 0.5)[1]["entropy"]) > float(m1["entropy"])


def test_advantages_are_normalized_per_minibatch():
    net, batch, params = tiny_problem(3)
    # Perturb the policy so that ratios differ from 1 and the clipped objective is non-trivial.
    params = jax.tree.map(lambda p: p + 0.3 * jnp.sign(p), params)
    scaled = {**batch, "advantages": 7.0 * batch["advantages"] + 3.0}
    loss = lambda b, norm: float(mlp.ppo_loss(params, net, b, 0.2, 0.0, 0.0, norm_adv=norm)[1]["policy_loss"])
    assert loss(batch, True) == pytest.approx(loss(scaled, True), rel=1e-4, abs=1e-6)
    assert abs(loss(batch, False) - loss(scaled, False)) > 1e-3
    x = mlp.normalize(batch["advantages"])
    assert abs(float(x.mean())) < 1e-5 and float(x.std()) == pytest.approx(1.0, rel=1e-4)


def test_layer_grad_norms_cover_every_layer():
    net, batch, params = tiny_problem(5)
    grads, _ = jax.grad(mlp.ppo_loss, has_aux=True)(params, net, batch, 0.2, 0.01, 0.5)
    norms = mlp.layer_grad_norms(grads)
    assert set(norms) == {f"grad_norm/{a}/Dense_{i}" for a in ("actor", "critic") for i in range(2)}
    total = np.sqrt(sum(float(v) ** 2 for v in norms.values()))
    assert total == pytest.approx(float(jax.tree.reduce(lambda a, g: a + jnp.sum(g ** 2), grads, 0.0)) ** 0.5,
                                  rel=1e-4)


def test_adam_state_carries_over_between_updates():
    """One optimizer for the whole run (classic bug: rebuilt per update, losing Adam's moments)."""
    args = mlp.Args(**{**TINY, "hidden_sizes": (16,)})
    env, env_params = mlp.make_env(args.env_id)
    net = mlp.ActorCritic(*mlp.make_networks(args, 3))
    init, train_chunk = mlp.make_train(args, env, env_params, net)
    runner = init(jax.random.PRNGKey(0))
    chunk = jax.jit(train_chunk)
    runner, sums = chunk(runner, 2)
    runner, sums = chunk(runner, 3)
    adam = runner.opt_state[1]
    assert int(adam.count) == 5 * args.update_epochs * args.num_minibatches
    assert int(runner.update) == 5
    # Linear annealing: the mean lr of updates 2..4 of 6.
    assert float(sums["learning_rate"]) / 3 == pytest.approx(args.learning_rate * (1 - 3 / 6), rel=1e-5)


def test_checkpoint_round_trip(tmp_path):
    args = mlp.Args(**{**TINY, "hidden_sizes": (16,)})
    net = tiny_net(mlp)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 10, 10, 4)))
    tx = mlp.make_optimizer(args)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)
    mlp.save_checkpoint(tmp_path / "c.msgpack", params, opt_state, 1234, args)
    template = net.init(jax.random.PRNGKey(9), jnp.zeros((1, 10, 10, 4)))
    p2, o2, step = mlp.load_checkpoint(str(tmp_path / "c.msgpack"), template, tx.init(template))
    assert step == 1234
    jax.tree.map(np.testing.assert_array_equal, (params, opt_state), (p2, o2))


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


# ---- Whole runs, in-process ----
def run_train(module, workdir, monkeypatch, **kw):
    monkeypatch.chdir(workdir)
    return module.train(module.Args(**{**TINY, **kw}))


def series(run_dir, tags=("charts/episodic_return", "losses/value_loss", "losses/entropy", "eval/episodic_return")):
    scalars = read_scalars(run_dir)
    return {t: np.array([v for _, v in scalars[t]]) for t in tags}


def test_num_seeds_matches_single_seed_runs_and_is_deterministic(workdir, monkeypatch):
    batched = run_train(mlp, workdir, monkeypatch, seed=1, num_seeds=2, run_name="k2")
    assert [s["seed"] for s in batched] == [1, 2]
    single = [run_train(mlp, workdir, monkeypatch, seed=s, run_name=f"s{s}")[0] for s in (1, 2)]
    again = run_train(mlp, workdir, monkeypatch, seed=1, run_name="s1_again")[0]
    for seed, one in zip((1, 2), single):
        check_run_contract(workdir / "runs" / f"k2__{seed}", "ppo_minatar_jax.py", "Breakout-MinAtar", seed,
                           TINY["total_timesteps"])
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


# Freeway only ends by its 2500-step time limit: 2 envs x 2560 steps see one episode end each.
FREEWAY = dict(num_envs=2, num_steps=128, total_timesteps=5120, log_frequency=1024, eval_frequency=2560)


@pytest.mark.parametrize("env_id,kw", [("Asterix-MinAtar", {}), ("Freeway-MinAtar", FREEWAY),
                                       ("Seaquest-MinAtar", {}), ("SpaceInvaders-MinAtar", {})])
def test_smoke_other_envs(env_id, kw, workdir, monkeypatch):
    """Breakout runs in the tests above; here each other game trains, evaluates and writes a summary."""
    (summary,) = run_train(mlp, workdir, monkeypatch, env_id=env_id, run_name="smoke", **kw)
    check_run_contract(workdir / "runs" / "smoke", "ppo_minatar_jax.py", env_id, 1,
                       kw.get("total_timesteps", TINY["total_timesteps"]))
    assert np.isfinite(summary["final_eval"]["mean"]) and summary["final_eval_greedy"]["episodes"] == 8


def test_learns_breakout(workdir, monkeypatch):
    """A short run: the untrained (near-uniform) policy scores about 1 per episode on Breakout-MinAtar."""
    (summary,) = run_train(mlp, workdir, monkeypatch, total_timesteps=327_680, num_envs=64, num_steps=128,
                           num_minibatches=8, update_epochs=4, learning_rate=5e-3, log_frequency=81_920,
                           eval_frequency=327_680, eval_episodes=256, final_eval_episodes=256, run_name="learn")
    first_eval = summary["eval_history"][0]
    assert summary["final_eval"]["mean"] > 5.0, summary["final_eval"]
    returns = series(workdir / "runs" / "learn", ("charts/episodic_return",))["charts/episodic_return"]
    assert returns[-1] > 2 * returns[0], returns
    assert first_eval["step"] == 327_680


# ---- CLI ----
def test_cli_run_contract_checkpoint_eval_and_continue(workdir):
    proc = run_script("ppo_minatar_jax.py", *TINY_CLI, "--num-seeds", 2, "--run-name", "cli", "--save-model",
                      cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 1,536/1,536" in proc.stdout
    for seed in (1, 2):
        run_dir = workdir / "runs" / f"cli__{seed}"
        summary = check_run_contract(run_dir, "ppo_minatar_jax.py", "Breakout-MinAtar", seed, 1536)
        assert summary["final_eval_greedy"]["episodes"] == 8
        tags = set(read_scalars(run_dir))
        for tag in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
                    "losses/clipfrac", "losses/explained_variance", "charts/learning_rate",
                    "losses/grad_norm/actor/Dense_0", "losses/grad_norm/critic/Dense_2",
                    "eval/final_greedy_episodic_return", "charts/policy_parameters"):
            assert tag in tags, tag
    ckpt = workdir / "runs" / "cli__2" / "ppo_minatar_jax.msgpack"
    assert ckpt.is_file()
    # Evaluating the checkpoint reproduces the run's own final evaluation (same params, same eval keys).
    proc = run_script("ppo_minatar_jax.py", *TINY_CLI, "--seed", 2, "--run-name", "ev", "--eval-checkpoint", ckpt,
                      cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ev = json.loads((workdir / "runs" / "ev" / "summary.json").read_text())
    trained = json.loads((workdir / "runs" / "cli__2" / "summary.json").read_text())
    assert ev["final_eval"] == trained["final_eval"] and ev["final_eval_greedy"] == trained["final_eval_greedy"]
    assert ev["total_timesteps"] == 1536
    # A checkpoint of another network is bad input: one line, exit 2, no run directory.
    other = workdir / "other"
    other.mkdir()
    assert_bad_input("ppo_minatar_jax.py", "--no-cuda", "--hidden-sizes", 32, "--eval-checkpoint", ckpt,
                     cwd=other, mentions=[str(ckpt), "--env-id"])
    # Continuing from it: parameters and Adam state are loaded, the run is counted on from there.
    proc = run_script("ppo_minatar_jax.py", *TINY_CLI, "--seed", 2, "--run-name", "cont", "--load-checkpoint", ckpt,
                      "--save-model", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cont = json.loads((workdir / "runs" / "cont" / "summary.json").read_text())
    assert cont["start_step"] == 1536


def test_cnn_cli_run_contract_and_video(workdir):
    proc = run_script("ppo_minatar_cnn_jax.py", *TINY_CLI, "--run-name", "cnn", "--capture-video", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "policy 155,315" in proc.stdout
    summary = check_run_contract(workdir / "runs" / "cnn", "ppo_minatar_cnn_jax.py", "Breakout-MinAtar", 1, 1536)
    assert summary["parameter_count"]["actor"] == 155_315
    assert list((workdir / "runs" / "cnn" / "videos").glob("*.mp4"))


def test_cnn_num_seeds_finishes_and_matches_single_seed_run(workdir):
    """Under vmap, the orthogonal initializer's QR was one batched LAPACK call that deadlocked XLA's CPU
    thread pool on 2 cores (jaxlib 0.10): `--num-seeds 2` of the CNN never finished. Seed 2 of the
    batch must also compute what seed 2 alone computes. Batched and single convolutions round
    differently (1e-7 relative at the first update, 1e-4 after 6), so the curves are compared to 1e-3
    and the final evaluation, whose sampled actions can flip on such a difference, is not."""
    for extra in (["--num-seeds", "2", "--run-name", "k2"], ["--seed", "2", "--run-name", "s2"]):
        proc = run_script("ppo_minatar_cnn_jax.py", *TINY_CLI, *extra, cwd=workdir, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = series(workdir / "runs" / "k2__2"), series(workdir / "runs" / "s2")
    for tag in a:
        np.testing.assert_allclose(a[tag], b[tag], rtol=1e-3, err_msg=tag)
    # Not seed 1's run: the batch's second agent really has seed 2.
    assert not np.allclose(series(workdir / "runs" / "k2__1")["losses/value_loss"], a["losses/value_loss"])


@pytest.mark.parametrize("script,args,mentions", [
    ("ppo_minatar_jax.py", ["--env-id", "Pong-MinAtar"], ["Pong-MinAtar", "Breakout-MinAtar"]),
    ("ppo_minatar_jax.py", ["--num-envs", "10", "--num-steps", "3", "--num-minibatches", "4"], "--num-minibatches"),
    ("ppo_minatar_jax.py", ["--total-timesteps", "100"], "--total-timesteps"),
    ("ppo_minatar_jax.py", ["--eval-checkpoint", "nope.msgpack"], "nope.msgpack"),
    ("ppo_minatar_cnn_jax.py", ["--channels", "8", "8", "8", "8", "8"], "--channels"),
])
def test_bad_input(script, args, mentions, workdir):
    assert_bad_input(script, *args, cwd=workdir, mentions=mentions)


# ---- The two scripts are one script with two networks ----
def sections(path):
    text = Path(path).read_text()
    parts = re.split(r"^(# ==== .* ====)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_scripts_differ_only_in_the_network():
    a, b = sections(ROOT / "ppo_minatar_jax.py"), sections(ROOT / "ppo_minatar_cnn_jax.py")
    assert list(a) == list(b)
    assert list(a)[:2] == ["# ==== Arguments ====", "# ==== Environment ===="] and "# ==== Training ====" in a
    for name in a:
        if name not in ("# ==== Arguments ====", "# ==== Network ===="):
            assert a[name] == b[name], f"{name} differs"
    # In Arguments only the network fields and their check differ.
    net_lines = re.compile(r"hidden_size|channels|check_network_args|widths|convolution|10x10|dense layer|"
                           r"ppo_minatar_(cnn_)?jax\.msgpack|shrinks|positive channel|positive widths|got \{args")
    strip = lambda s: [ln for ln in s.splitlines() if not net_lines.search(ln)]
    assert strip(a["# ==== Arguments ===="]) == strip(b["# ==== Arguments ===="])
