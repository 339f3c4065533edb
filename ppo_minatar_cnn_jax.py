"""PPO on Gymnax MinAtar (JAX/Flax/Optax), separate policy and value CNNs, the whole update compiled.

    python ppo_minatar_cnn_jax.py                                  # Breakout-MinAtar, 1e7 steps, defaults
    python ppo_minatar_cnn_jax.py --env-id Asterix-MinAtar --num-seeds 3   # three agents in one program
    python ppo_minatar_cnn_jax.py --resume runs/<run>              # continue a killed run in place, exactly
    python ppo_minatar_cnn_jax.py --save-model                     # keep the final training state
    python ppo_minatar_cnn_jax.py --eval-checkpoint runs/<run>/ppo_minatar_cnn_jax.msgpack   # evaluate only
    python ppo_minatar_cnn_jax.py --help                           # every option

Schulman et al. 2017 (PPO) with generalized advantage estimation (Schulman et al. 2016), on the
MinAtar games (Young & Tian 2019) as implemented in Gymnax 1.0 (Lange 2022). The rollout over
vmapped environments, GAE, the update epochs and the shuffled minibatches are nested `lax.scan`s
inside one jitted function (as in PureJaxRL, Lu et al. 2022); a Python loop calls it for chunks of
updates and does the logging, evaluation and checkpoints in between. `--num-seeds K` vmaps K
independent agents into that one program; seed s in a batch computes what seed s alone computes.

Gymnax 1.0 auto-resets: the observation returned by a step that ends an episode is the first one of
the next episode, and `info["final_observation"]` holds the real next state. Truncated episodes
(time limit: 1000 steps, Freeway 2500) bootstrap from the value of that state; terminated ones
bootstrap from zero. Checkpoints hold the whole training state, environments included: resuming is exact.

To change the network, touch Conv3x3, Torso, PolicyNet, ValueNet, make_networks (and NETWORK_FLAGS, the
flags that size it); the loss: gae, ppo_loss; the rollout: Transition, rollout. ppo_loss's metrics dict is logged
whole (losses/<key>), so a new metric is one line there.
Tests follow a copy: pytest tests/test_ppo_minatar.py --script <copy>.
"""

import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

SCRIPT = Path(__file__).name
MINATAR_ENVS = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "Seaquest-MinAtar", "SpaceInvaders-MinAtar")
MINATAR_ACTIONS = ("NOOP", "LEFT", "UP", "RIGHT", "DOWN", "FIRE")  # what gymnax's action_set indexes


# ==== Arguments ====
@dataclass
class Args:
    env_id: str = "Breakout-MinAtar"
    """Gymnax MinAtar id: Asterix-MinAtar, Breakout-MinAtar, Freeway-MinAtar, Seaquest-MinAtar, SpaceInvaders-MinAtar"""
    seed: int = 1
    """seed of the first agent; agent i of --num-seeds uses seed + i (and equals a run with that seed alone)"""
    total_timesteps: int = 10_000_000
    """environment steps to train for, per agent (summed over all envs; rounded up to whole rollouts)"""
    run_name: str | None = None
    """name of the run directory under runs/ (default: <env-id>__<script>__<seed>__<unix time>; with --num-seeds > 1, <run-name>__<seed>)"""
    cuda: bool = True
    """let JAX use a GPU when one is available (--no-cuda forces the CPU backend)"""
    capture_video: bool = False
    """record one greedy evaluation episode to runs/<run-name>/videos/ at the end (mp4)"""
    save_model: bool = False
    """save the final training state (parameters, optimizer and environment states, PRNG key) to runs/<run-name>/ppo_minatar_cnn_jax.msgpack"""
    eval_checkpoint: str | None = None
    """path of a checkpoint (--save-model's or runs/<run>/checkpoint, whose agent --seed picks): evaluate it, write a summary, do not train"""
    checkpoint_frequency: int = 2_000_000
    """environment steps between checkpoints to runs/<run-name>/checkpoint (0: none), at the first logging point past each multiple; with --num-seeds each run directory gets one holding every agent"""
    resume: str | None = None
    """runs/<run-name> of an interrupted run: continue it in place from its last checkpoint, with the arguments it was started with"""
    sticky_action_prob: float = 0.0
    """probability that an env repeats its previous action instead of the chosen one, in training and evaluation (off by default, as the Gymnax reference numbers were measured; 0.1 in the MinAtar paper, Young & Tian 2019)"""
    num_seeds: int = 1
    """independent agents trained in one program (vmapped), each with its own run directory and summary"""

    num_envs: int = 128
    """parallel environments per agent"""
    num_steps: int = 64
    """steps per environment per rollout (rollout = num-envs x num-steps transitions)"""
    learning_rate: float = 5e-3
    """Adam learning rate"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over training"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """lambda of generalized advantage estimation"""
    num_minibatches: int = 8
    """minibatches per epoch"""
    update_epochs: int = 4
    """passes over each rollout"""
    norm_adv: bool = True
    """normalize advantages inside each minibatch"""
    clip_coef: float = 0.2
    """PPO ratio clipping"""
    clip_vloss: bool = False
    """clip the value loss around the rollout's value estimates"""
    ent_coef: float = 0.01
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """global gradient norm clip"""
    channels: tuple[int, ...] = (16, 32, 64)
    """channels of the 3x3 VALID convolutions of the policy CNN and of the value CNN (at most 4 on 10x10)"""
    hidden_size: int = 128
    """width of the dense layer after the convolutions"""
    log_frequency: int = 100_000
    """environment steps between logged points (one compiled call trains this many steps)"""
    eval_frequency: int = 2_500_000
    """environment steps between sampled-action evaluations (logged to eval/episodic_return)"""
    eval_episodes: int = 128
    """episodes per periodic evaluation"""
    final_eval_episodes: int = 1024
    """episodes of each final evaluation (sampled actions and greedy) reported in summary.json"""


# ==== Environment ====
def make_env(env_id: str, sticky_action_prob: float = 0.0):
    """A Gymnax environment (auto-resetting `step`) and its default parameters. Always wrapped, so that its
    state (saved in checkpoints) has one structure; at probability 0 the wrapper passes every action on."""
    import gymnax
    from gymnax.wrappers import StickyActionWrapper

    env, env_params = gymnax.make(env_id)
    return StickyActionWrapper(env, sticky_action_prob), env_params


# ==== Network ====
class Conv3x3(nn.Module):
    """3x3 VALID convolution as one matmul over the 9 shifted views (im2col).

    Same parameters and output as nn.Conv(features, (3, 3), padding="VALID"); on a 10x10 screen the
    patches are tiny and XLA's CPU convolution (above all its gradient) is many times slower than a dot.
    """

    features: int

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.orthogonal(np.sqrt(2)), (3, 3, c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        h, w = x.shape[-3] - 2, x.shape[-2] - 2
        patches = jnp.concatenate([x[..., i : i + h, j : j + w, :] for i in range(3) for j in range(3)], axis=-1)
        return patches @ kernel.reshape(9 * c, self.features) + bias


class Torso(nn.Module):
    """3x3 VALID convolutions then one dense layer, ReLU throughout (10x10 -> 8x8 -> 6x6 -> 4x4)."""

    channels: tuple
    hidden_size: int

    @nn.compact
    def __call__(self, obs):
        x = obs
        for c in self.channels:
            x = nn.relu(Conv3x3(c)(x))
        x = x.reshape((*x.shape[:-3], -1))
        return nn.relu(nn.Dense(self.hidden_size, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))


class PolicyNet(nn.Module):
    n_actions: int
    channels: tuple
    hidden_size: int

    @nn.compact
    def __call__(self, obs):
        x = Torso(self.channels, self.hidden_size)(obs)
        # Small final layer: the initial policy is close to uniform.
        return nn.Dense(self.n_actions, kernel_init=nn.initializers.orthogonal(0.01))(x)


class ValueNet(nn.Module):
    channels: tuple
    hidden_size: int

    @nn.compact
    def __call__(self, obs):
        x = Torso(self.channels, self.hidden_size)(obs)
        return nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0))(x)[..., 0]


def make_networks(args: Args, n_actions: int):
    channels = tuple(args.channels)
    return PolicyNet(n_actions, channels, args.hidden_size), ValueNet(channels, args.hidden_size)


# The Args fields that shape the network: --eval-checkpoint takes them from the checkpoint, as --resume does.
NETWORK_FLAGS = ("channels", "hidden_size")


class ActorCritic(NamedTuple):
    """Separate policy and value networks; params are {"actor": ..., "critic": ...}."""

    policy: nn.Module
    value: nn.Module

    def init(self, key, obs):
        k_actor, k_critic = jax.random.split(key)
        return {"actor": self.policy.init(k_actor, obs), "critic": self.value.init(k_critic, obs)}

    def logits(self, params, obs):
        return self.policy.apply(params["actor"], obs)

    def values(self, params, obs):
        return self.value.apply(params["critic"], obs)


def param_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# ==== Rollout ====
class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    terminated: jax.Array
    done: jax.Array  # terminated or truncated: the episode ended at this step
    next_obs: jax.Array  # the real next state (info["final_observation"]), never the reset one


class RunnerState(NamedTuple):
    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array
    key: jax.Array
    ep_return: jax.Array
    ep_length: jax.Array
    update: jax.Array  # updates done so far (drives the learning-rate schedule)


def rollout(net: ActorCritic, env, env_params, params, env_state, obs, key, ep_return, ep_length, num_steps: int):
    """`num_steps` steps of every env; returns the new env carry, a [T, N] Transition and episode stats."""

    def step(carry, _):
        env_state, obs, key, ep_return, ep_length = carry
        key, k_act, k_env = jax.random.split(key, 3)
        logits = net.logits(params, obs)
        action = jax.random.categorical(k_act, logits)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=1)[:, 0]
        value = net.values(params, obs)
        step_keys = jax.random.split(k_env, obs.shape[0])
        next_obs, env_state, reward, terminated, truncated, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            step_keys, env_state, action, env_params
        )
        done = jnp.logical_or(terminated, truncated)
        ep_return, ep_length = ep_return + reward, ep_length + 1
        stats = (jnp.where(done, ep_return, 0.0).sum(), jnp.where(done, ep_length, 0).sum(), done.sum())
        transition = Transition(
            obs,
            action,
            log_prob,
            value,
            reward,
            terminated.astype(jnp.float32),
            done.astype(jnp.float32),
            info["final_observation"],
        )
        ep_return, ep_length = jnp.where(done, 0.0, ep_return), jnp.where(done, 0, ep_length)
        return (env_state, next_obs, key, ep_return, ep_length), (transition, stats)

    carry, (traj, stats) = jax.lax.scan(step, (env_state, obs, key, ep_return, ep_length), None, num_steps)
    return carry, traj, jax.tree.map(jnp.sum, stats)


# ==== Loss ====
def gae(rewards, values, next_values, terminated, dones, gamma: float, gae_lambda: float):
    """Generalized advantage estimation over a [T, ...] rollout, as a reverse scan.

    next_values[t] is V of the real next state of step t (final_observation, not the reset state).
    Terminated steps bootstrap from 0; truncated steps bootstrap from next_values; the trace is cut at
    every episode end (terminated or truncated) so that it never runs into the next episode.
    Returns (advantages, value targets).
    """
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values

    def back(next_adv, xs):
        delta, done = xs
        adv = delta + gamma * gae_lambda * (1.0 - done) * next_adv
        return adv, adv

    _, advantages = jax.lax.scan(back, jnp.zeros_like(deltas[0]), (deltas, dones), reverse=True)
    return advantages, advantages + values


def advantages_and_returns(net: ActorCritic, params, traj: Transition, gamma: float, gae_lambda: float):
    """GAE of a rollout, bootstrapping from V(traj.next_obs), the real next states (classic bug:
    bootstrapping a truncated episode from the auto-reset observation, the next episode's start)."""
    next_values = net.values(params, traj.next_obs)
    return gae(traj.reward, traj.value, next_values, traj.terminated, traj.done, gamma, gae_lambda)


def normalize(x, eps: float = 1e-8):
    return (x - x.mean()) / (x.std() + eps)


def ppo_loss(
    params,
    net: ActorCritic,
    batch: dict,
    clip_coef: float,
    ent_coef: float,
    vf_coef: float,
    norm_adv: bool = True,
    clip_vloss: bool = False,
):
    """Clipped PPO objective + value loss - entropy bonus; returns (loss, metrics)."""
    logits = net.logits(params, batch["obs"])
    log_probs = jax.nn.log_softmax(logits)
    new_log_prob = jnp.take_along_axis(log_probs, batch["action"][:, None], axis=1)[:, 0]
    # The bonus is part of the differentiated loss (classic bug: computed, logged, never optimized).
    entropy = -(jnp.exp(log_probs) * log_probs).sum(-1).mean()
    log_ratio = new_log_prob - batch["log_prob"]
    ratio = jnp.exp(log_ratio)
    adv = normalize(batch["advantages"]) if norm_adv else batch["advantages"]
    pg_loss = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1 - clip_coef, 1 + clip_coef)).mean()
    value = net.values(params, batch["obs"])
    v_loss = (value - batch["returns"]) ** 2
    if clip_vloss:
        v_clipped = batch["value"] + jnp.clip(value - batch["value"], -clip_coef, clip_coef)
        v_loss = jnp.maximum(v_loss, (v_clipped - batch["returns"]) ** 2)
    v_loss = 0.5 * v_loss.mean()
    loss = pg_loss - ent_coef * entropy + vf_coef * v_loss
    metrics = {
        "policy_loss": pg_loss,
        "value_loss": v_loss,
        "entropy": entropy,
        "approx_kl": ((ratio - 1) - log_ratio).mean(),
        "clipfrac": (jnp.abs(ratio - 1) > clip_coef).mean(),
    }
    return loss, metrics


# ==== Update ====
def linear_schedule(start: float, end: float, duration: float, t):
    """`start` at t=0, `end` from t=duration on, linear in between (works on traced t)."""
    return end + (start - end) * jnp.clip(1.0 - t / duration, 0.0, 1.0)


def layer_grad_norms(grads) -> dict:
    """Gradient norm of each layer (kernel and bias together), keyed 'actor/Dense_0' etc."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(grads))
    layers: dict = {}
    for path, g in flat.items():
        name = "/".join(p for p in path[:-1] if p != "params")
        layers[name] = layers.get(name, 0.0) + jnp.sum(jnp.square(g))
    return {f"grad_norm/{name}": jnp.sqrt(v) for name, v in layers.items()}


def make_optimizer(args: Args):
    # Learning rate applied outside the transform (see update step), driven by RunnerState.update, which
    # checkpoints carry: a resumed run's schedule continues from the saved update.
    return optax.chain(optax.clip_by_global_norm(args.max_grad_norm), optax.scale_by_adam(eps=1e-5))


def epoch_minibatches(key, batch_size: int, epochs: int, num_minibatches: int):
    """Indices [epochs, num_minibatches, batch_size // num_minibatches]: each epoch a fresh shuffle of the
    batch, cut into minibatches (classic bug: one permutation reused for every epoch)."""
    perms = [jax.random.permutation(k, batch_size) for k in jax.random.split(key, epochs)]
    return jnp.stack(perms).reshape(epochs, num_minibatches, -1)


def make_train(args: Args, env, env_params, net: ActorCritic):
    """Builds (init, train_chunk) for ONE agent; vmap them over agents.

    init(key) -> RunnerState. train_chunk(runner, n) -> (runner, metric sums over n updates and `finite`,
    whether every loss and parameter stayed finite): one update = rollout, GAE, `update_epochs` passes of
    `num_minibatches` shuffled minibatches.
    """
    batch_size = args.num_envs * args.num_steps
    num_updates = -(-args.total_timesteps // batch_size)  # whole rollouts, at least total-timesteps
    tx = make_optimizer(args)

    def init(key):
        key, k_net, k_env = jax.random.split(key, 3)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_env, args.num_envs), env_params)
        params = net.init(k_net, obs)
        opt_state = tx.init(params)
        zeros = jnp.zeros(args.num_envs)
        return RunnerState(
            params, opt_state, env_state, obs, key, zeros, zeros.astype(jnp.int32), jnp.zeros((), jnp.int32)
        )

    def minibatch_step(carry, batch):
        params, opt_state, lr = carry
        grads, metrics = jax.grad(ppo_loss, has_aux=True)(
            params, net, batch, args.clip_coef, args.ent_coef, args.vf_coef, args.norm_adv, args.clip_vloss
        )
        metrics = {**metrics, **layer_grad_norms(grads), "grad_norm/global": optax.tree.norm(grads)}
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, jax.tree.map(lambda u: -lr * u, updates))
        return (params, opt_state, lr), metrics

    def update_step(runner: RunnerState):
        (env_state, obs, key, ep_return, ep_length), traj, ep_stats = rollout(
            net,
            env,
            env_params,
            runner.params,
            runner.env_state,
            runner.obs,
            runner.key,
            runner.ep_return,
            runner.ep_length,
            args.num_steps,
        )
        advantages, returns = advantages_and_returns(net, runner.params, traj, args.gamma, args.gae_lambda)
        data = {
            "obs": traj.obs,
            "action": traj.action,
            "log_prob": traj.log_prob,
            "value": traj.value,
            "advantages": advantages,
            "returns": returns,
        }
        data = jax.tree.map(lambda x: x.reshape((batch_size, *x.shape[2:])), data)
        lr = (
            linear_schedule(args.learning_rate, 0.0, num_updates, runner.update)
            if args.anneal_lr
            else jnp.asarray(args.learning_rate)
        )

        def epoch(carry, indices):
            return jax.lax.scan(minibatch_step, carry, jax.tree.map(lambda x: x[indices], data))

        key, k_epochs = jax.random.split(key)
        (params, opt_state, _), metrics = jax.lax.scan(
            epoch,
            (runner.params, runner.opt_state, lr),
            epoch_minibatches(k_epochs, batch_size, args.update_epochs, args.num_minibatches),
        )
        # Every entry of `losses` (ppo_loss's metrics, gradient norms) is logged as losses/<key>.
        losses = jax.tree.map(jnp.mean, metrics)
        var_y = jnp.var(returns)
        losses["explained_variance"] = jnp.where(var_y > 0, 1 - jnp.var(returns - traj.value) / var_y, 0.0)
        ep_return_sum, ep_length_sum, episodes = ep_stats
        runner = RunnerState(params, opt_state, env_state, obs, key, ep_return, ep_length, runner.update + 1)
        return runner, {
            "losses": losses,
            "learning_rate": lr,
            "ep_return_sum": ep_return_sum,
            "ep_length_sum": ep_length_sum,
            "episodes": episodes,
        }

    def train_chunk(runner: RunnerState, n_updates):
        """n_updates updates (a traced count: one compile serves chunks of any length)."""
        metric_shapes = jax.eval_shape(lambda r: update_step(r)[1], runner)
        sums = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metric_shapes)

        def body(_, carry):
            runner, sums = carry
            runner, metrics = update_step(runner)
            return runner, jax.tree.map(lambda a, m: a + m.astype(jnp.float32), sums, metrics)

        runner, sums = jax.lax.fori_loop(0, n_updates, body, (runner, sums))
        # A non-finite loss of any update leaves a non-finite sum: one flag, read with the metrics.
        finite = jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves((sums, runner.params))]).all()
        return runner, {**sums, "finite": finite}

    return init, train_chunk


# ==== Evaluation ====
class Episodes(NamedTuple):
    returns: Any
    lengths: Any
    truncated: Any  # ended by the time limit, not by the game


def evaluate(net: ActorCritic, env, env_params, episodes: int, params, key, greedy) -> Episodes:
    """`episodes` whole episodes, one per vmapped env, with sampled or greedy actions.

    One episode per env: counting the first N episodes to finish would favour short ones. Each env
    stops counting when its first episode ends (terminated or truncated).
    """
    k_reset, key = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, episodes), env_params)

    def cond(carry):
        return carry[4].any()

    def body(carry):
        obs, env_state, key, returns, running, lengths, cut = carry
        key, k_act, k_env = jax.random.split(key, 3)
        logits = net.logits(params, obs)
        action = jnp.where(greedy, jnp.argmax(logits, -1), jax.random.categorical(k_act, logits))
        obs, env_state, reward, terminated, truncated, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, episodes), env_state, action, env_params
        )
        returns = returns + reward * running
        lengths, cut = lengths + running, cut | (truncated & ~terminated & running)
        running = running & ~(terminated | truncated)
        return obs, env_state, key, returns, running, lengths, cut

    carry = (
        obs,
        env_state,
        key,
        jnp.zeros(episodes),
        jnp.ones(episodes, bool),
        jnp.zeros(episodes, jnp.int32),
        jnp.zeros(episodes, bool),
    )
    _, _, _, returns, _, lengths, cut = jax.lax.while_loop(cond, body, carry)
    return Episodes(returns, lengths, cut)


def make_evaluate(net: ActorCritic, env, env_params):
    """evaluate() compiled, vmapped over agents; greedy is traced: sampled and greedy evaluations share one
    program. Returns a function (params, keys, episodes, greedy) -> [Episodes of each agent]."""
    run = jax.jit(
        lambda params, keys, episodes, greedy: jax.vmap(
            partial(evaluate, net, env, env_params, episodes), in_axes=(0, 0, None)
        )(params, keys, greedy),
        static_argnums=2,
    )
    return lambda *a: [Episodes(*x) for x in zip(*(np.asarray(y) for y in run(*a)))]


# ==== Training ====
def train(
    args: Args, env, env_params, net: ActorCritic, runs: list, device: str, checkpoint: dict | None = None
) -> list:
    """Trains the agents of `runs` [(args with its seed, run directory)], vmapped in one program; returns their
    summaries. With a `checkpoint` (--resume) they continue exactly where it was saved."""
    batch = args.num_envs * args.num_steps
    num_updates = -(-args.total_timesteps // batch)
    init, train_chunk = make_train(args, env, env_params, net)
    # One agent per call, not vmap(init): under vmap the orthogonal initializer's QR is one batched LAPACK call,
    # which deadlocked XLA's CPU thread pool on 2 cores (--num-seeds 2 of the CNN). Same values either way.
    init_one = jax.jit(init)
    runner = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[init_one(jax.random.PRNGKey(a.seed)) for a, _ in runs])
    # Evaluation episodes are not training episodes: a key stream of their own.
    eval_keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(a.seed), 100_000) for a, _ in runs])
    global_step, log_states = 0, [None] * len(runs)
    if checkpoint is not None:
        runner = restore(checkpoint["runner"], runner, "--resume", args.resume, json.loads(checkpoint["args"]), args)
        global_step, log_states = int(checkpoint["global_step"]), json.loads(checkpoint["log"])
    logs = [
        RunLog(run_dir, a, ScalarWriter, num_updates * batch, env_settings(a), state)
        for (a, run_dir), state in zip(runs, log_states)
    ]
    # Per top-level group of parameters, whatever the network has ({"actor", "critic"} here).
    n_params = {name: param_count(jax.tree.map(lambda x: x[0], group)) for name, group in runner.params.items()}
    print(
        f"[{SCRIPT}] {args.env_id} on {device}: {len(runs)} agent(s), parameters "
        f"{', '.join(f'{k} {v:,}' for k, v in n_params.items())}; {env.action_space(env_params).n} actions",
        flush=True,
    )
    for log in logs if global_step == 0 else []:  # logged once, at step 0 (not again by a resumed run)
        for name, count in n_params.items():
            log.writer.add_scalar(f"charts/parameters/{name}", count, 0)
    # Donated: the old runner's buffers are reused in place instead of copied each chunk.
    chunk_fn = jax.jit(jax.vmap(train_chunk, in_axes=(0, None)), donate_argnums=0)
    evaluate_all = make_evaluate(net, env, env_params)
    updates_per_log = max(1, args.log_frequency // batch)
    updates_per_eval = max(1, args.eval_frequency // batch)
    while global_step < num_updates * batch:
        done = global_step // batch
        # Chunks end at log and eval boundaries; the count is traced, so no recompiling.
        n = min(
            updates_per_log - done % updates_per_log, updates_per_eval - done % updates_per_eval, num_updates - done
        )
        runner, sums = chunk_fn(runner, n)
        sums = jax.device_get(sums)  # the chunk's one read from the device: its metrics and finite flags
        global_step += n * batch
        for i, log in enumerate(logs):
            s = jax.tree.map(lambda v, i=i: float(v[i]), sums)
            log.stop_unless_finite(bool(s["finite"]), global_step, "loss or parameters")
            if s["episodes"] > 0:
                log.episode(global_step, s["ep_return_sum"] / s["episodes"], s["ep_length_sum"] / s["episodes"])
            log.scalars(
                global_step,
                {
                    "charts/learning_rate": s["learning_rate"] / n,
                    **{f"losses/{k}": v / n for k, v in s["losses"].items()},
                },
            )
        if (done + n) % updates_per_eval == 0 or done + n == num_updates:
            start = time.time()
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(eval_keys, done + n)
            episodes, seconds = evaluate_all(runner.params, keys, args.eval_episodes, False), time.time() - start
            for log, agent_episodes in zip(logs, episodes):
                log.evaluation(global_step, agent_episodes, seconds)
        if (
            args.checkpoint_frequency
            and global_step < num_updates * batch
            and global_step // args.checkpoint_frequency > (global_step - n * batch) // args.checkpoint_frequency
        ):
            save_checkpoint(logs, runs, jax.device_get(runner), global_step, args)
        logs[0].progress(global_step)
    jax.block_until_ready(runner)

    start = time.time()
    sampled, greedy = (evaluate_all(runner.params, eval_keys, args.final_eval_episodes, g) for g in (False, True))
    seconds, summaries = time.time() - start, []
    for i, (log, (seed_args, run_dir)) in enumerate(zip(logs, runs)):
        log.writer.add_scalar("eval/final_greedy_episodic_return", float(np.mean(greedy[i].returns)), global_step)
        agent = jax.tree.map(lambda x, i=i: x[i], runner)
        if args.save_model:
            save_model(run_dir / f"{Path(SCRIPT).stem}.msgpack", agent, global_step, seed_args)
        if args.capture_video:
            record_video(net, env, env_params, agent.params, eval_keys[i], str(Path(log.video_dir) / "greedy.mp4"))
        summaries.append(
            log.finish(
                global_step,
                sampled[i],
                seconds,
                device,
                versions_of_libraries(),
                final_eval_greedy=eval_stats(*greedy[i]),
                parameter_count=n_params,
                num_seeds_in_program=len(runs),
                updates=num_updates,
            )
        )
    return summaries


def evaluate_checkpoint(args: Args, env, env_params, net: ActorCritic, device: str, checkpoint: dict) -> dict:
    """--eval-checkpoint: the final evaluations (sampled and greedy actions) of a saved agent, as a run of its own."""
    saved, step = checkpoint["runner"]["params"], int(checkpoint["global_step"])
    if "run_names" in checkpoint:  # a periodic checkpoint holds every agent of its batch: --seed picks one
        i = args.seed - json.loads(checkpoint["args"])["seed"] if len(checkpoint["run_names"]) > 1 else 0
        if not 0 <= i < len(checkpoint["run_names"]):
            fail(f"--eval-checkpoint {args.eval_checkpoint} holds the agents of other seeds; pass the --seed of one")
        saved = jax.tree.map(lambda x: x[i], saved)
    template = net.init(jax.random.PRNGKey(0), jnp.zeros((1, *env.observation_space(env_params).shape)))
    params = restore(saved, template, "--eval-checkpoint", args.eval_checkpoint, json.loads(checkpoint["args"]), args)
    log = RunLog(new_run_dir(args), args, ScalarWriter, step, env_settings(args))
    start, keys = time.time(), jax.random.fold_in(jax.random.PRNGKey(args.seed), 100_000)[None]
    (sampled,), (greedy,) = (
        make_evaluate(net, env, env_params)(jax.tree.map(lambda x: x[None], params), keys, args.final_eval_episodes, g)
        for g in (False, True)
    )
    log.evaluation(step, sampled, time.time() - start)
    log.writer.add_scalar("eval/final_greedy_episodic_return", float(np.mean(greedy.returns)), step)
    if args.capture_video:
        record_video(net, env, env_params, params, keys[0], str(Path(log.video_dir) / "greedy.mp4"))
    return log.finish(
        step,
        sampled,
        0.0,
        device,
        versions_of_libraries(),
        final_eval_greedy=eval_stats(*greedy),
        checkpoint=str(args.eval_checkpoint),
        sps=float(sampled.lengths.sum()) / log.wall_time(),
    )


def main(args: Args) -> list:
    """Checks everything that can be checked before heavy work, then evaluates, trains or resumes."""
    checkpoint = None
    if args.resume is not None:
        checkpoint = read_checkpoint(resume_path(args.resume), "--resume")
        if "log" not in checkpoint:
            fail(
                f"--resume {args.resume}: its checkpoint was written by --save-model; --resume continues a run "
                "from the checkpoint that --checkpoint-frequency writes"
            )
        args = dataclasses.replace(Args(**json.loads(checkpoint["args"])), resume=args.resume)
    check_args(args)
    if args.eval_checkpoint is not None:  # the network as trained, whatever the network flags given
        checkpoint = read_checkpoint(args.eval_checkpoint, "--eval-checkpoint")
        trained = json.loads(checkpoint["args"])
        args = dataclasses.replace(args, **{f: trained[f] for f in NETWORK_FLAGS if f in trained})
    device = select_platform(args.cuda)
    env, env_params = make_env(args.env_id, args.sticky_action_prob)
    net = ActorCritic(*make_networks(args, env.action_space(env_params).n))
    if args.eval_checkpoint is not None:  # one agent, no rollout: no memory check
        return [evaluate_checkpoint(args, env, env_params, net, device, checkpoint)]
    obs_bytes = int(np.prod(env.observation_space(env_params).shape)) * 4
    stats = jax.devices()[0].memory_stats() if device != "cpu" else None
    free = (
        stats["bytes_limit"] - stats.get("bytes_in_use", 0) if stats and "bytes_limit" in stats else available_memory()
    )
    check_fits(
        args.num_seeds * (4 * args.num_envs * args.num_steps + 4 * args.final_eval_episodes) * obs_bytes,
        free,
        "the rollout",
        f"{device} memory",
        "lower --num-envs, --num-steps or --num-seeds",
    )
    return train(args, env, env_params, net, seed_runs(args, checkpoint), device, checkpoint)


# ==== Appendix: run bookkeeping (logs, summary, checkpoints, checks; nothing here affects learning) ====
def check_args(args: Args) -> None:
    """Stops with a one-line error (exit 2) on input that cannot work."""
    if args.env_id not in MINATAR_ENVS:
        fail(f"unknown --env-id {args.env_id!r}; use one of {', '.join(MINATAR_ENVS)}")
    for name in (
        "total_timesteps",
        "num_seeds",
        "num_envs",
        "num_steps",
        "num_minibatches",
        "update_epochs",
        "log_frequency",
        "eval_frequency",
        "eval_episodes",
        "final_eval_episodes",
    ):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    check_network_args(args)
    batch = args.num_envs * args.num_steps
    if batch % args.num_minibatches:
        fail(
            f"--num-envs x --num-steps = {batch} is not divisible by --num-minibatches {args.num_minibatches}; "
            "pick a divisor"
        )
    if args.total_timesteps < batch:
        fail(
            f"--total-timesteps {args.total_timesteps} is less than one rollout ({batch} steps = "
            "--num-envs x --num-steps); raise it or shrink the rollout"
        )
    if not 0.0 < args.gamma <= 1.0 or not 0.0 <= args.gae_lambda <= 1.0 or args.learning_rate <= 0:
        fail("--gamma must be in (0, 1], --gae-lambda in [0, 1] and --learning-rate positive")
    if args.clip_coef <= 0 or args.max_grad_norm <= 0 or args.ent_coef < 0 or args.vf_coef < 0:
        fail("--clip-coef and --max-grad-norm must be positive, --ent-coef and --vf-coef 0 or more")
    if args.checkpoint_frequency < 0 or not 0.0 <= args.sticky_action_prob < 1.0:
        fail("--checkpoint-frequency must be 0 or more and --sticky-action-prob in [0, 1)")
    if args.eval_checkpoint is not None and not Path(args.eval_checkpoint).is_file():
        fail(f"--eval-checkpoint {args.eval_checkpoint} does not exist; pass a --save-model file or a checkpoint")
    if args.num_seeds > 1 and args.eval_checkpoint:
        fail("--eval-checkpoint takes one agent; use --num-seeds 1 (and --seed to pick one of a batch)")


def check_network_args(args: Args) -> None:
    if not args.channels or min(args.channels) <= 0 or len(args.channels) > 4:
        fail(
            f"--channels must be 1 to 4 positive channel counts (each 3x3 VALID convolution shrinks the "
            f"10x10 screen by 2), got {args.channels}"
        )
    if args.hidden_size <= 0:
        fail(f"--hidden-size must be positive, got {args.hidden_size}")


def env_settings(args: Args) -> dict:
    """The environment as run, for summary.json."""
    env, env_params = make_env(args.env_id, args.sticky_action_prob)
    actions = " ".join(MINATAR_ACTIONS[int(a)] for a in env.action_set)
    return {
        "sticky_action_prob": args.sticky_action_prob,
        "action_set": f"{len(env.action_set)} actions: {actions}",
        "noop_max": 0,
        "max_episode_steps": int(env_params.max_steps_in_episode),
        "life_loss": "not applicable",
        "reward": "raw",
        "autoreset": "gymnax same-step (final observation in info)",
    }


def record_video(net: ActorCritic, env, env_params, params, key, path: str) -> None:
    """One greedy episode as an mp4: each observation channel drawn in its own colour."""
    from moviepy import ImageSequenceClip

    obs, env_state = env.reset(key, env_params)
    colours = np.array(plt_colours(obs.shape[-1]))
    frames, done = [], False
    policy = jax.jit(lambda o: jnp.argmax(net.logits(params, o[None])[0]))
    step = jax.jit(env.step)
    while not done:
        grid = np.asarray(obs)
        img = np.clip(grid @ colours, 0, 255).astype(np.uint8)
        frames.append(np.kron(img, np.ones((16, 16, 1), np.uint8)))
        key, k = jax.random.split(key)
        obs, env_state, _, terminated, truncated, _ = step(k, env_state, policy(obs), env_params)
        done = bool(terminated | truncated)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ImageSequenceClip(frames, fps=15).write_videofile(path, logger=None)


def fail(message: str) -> None:
    """Bad input: one line naming the problem and the fix, exit code 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def versions(*modules) -> dict:
    return {"python": platform.python_version(), **{m.__name__: m.__version__ for m in modules}}


def eval_stats(returns, lengths, truncated) -> dict:
    r = np.asarray(returns, dtype=np.float64)
    return {
        "episodes": int(r.size),
        "mean": float(r.mean()),
        "std": float(r.std()),
        "min": float(r.min()),
        "max": float(r.max()),
        "mean_length": float(np.mean(lengths)),
        "truncated": float(np.mean(truncated)),
    }


def available_memory(meminfo: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup") -> int:
    """Bytes a new allocation can get: MemAvailable (free memory plus the page cache the kernel can drop),
    capped by the container's cgroup limit (v2 memory.max - memory.current; v1 the memory controller's
    limit_in_bytes - usage_in_bytes), which MemAvailable does not see."""
    fields = dict(line.split(":", 1) for line in Path(meminfo).read_text().splitlines() if ":" in line)
    available = int(fields["MemAvailable"].split()[0]) * 1024
    for limit, usage in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            text = (Path(cgroup) / limit).read_text().strip()
            if text != "max":
                available = min(available, int(text) - int((Path(cgroup) / usage).read_text()))
        except (OSError, ValueError):  # no such controller here
            pass
    return available


def check_fits(nbytes: int, free: int, what: str, where: str, fix: str) -> None:
    """Stops (exit 2) before allocating or writing `nbytes` that would not fit in `free` bytes."""
    if nbytes > 0.9 * free:
        fail(f"{what} needs {nbytes / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB of {where} is free; {fix}")


def resume_path(run_dir: str) -> str:
    path = Path(run_dir) / "checkpoint"
    if (Path(run_dir) / "summary.json").is_file() and json.loads((Path(run_dir) / "summary.json").read_text()).get(
        "status"
    ) == "finished":
        fail(f"--resume {run_dir}: that run finished (summary.json); start a new run instead")
    if not path.is_file():
        fail(
            f"--resume {run_dir} has no checkpoint (none was written before it stopped; see "
            "--checkpoint-frequency); start the run again"
        )
    return str(path)


def new_run_dir(args) -> Path:
    """runs/<run-name>, which must not exist: a finished run, a killed one or one another process is writing
    now is never written into (--resume is the way back in). mkdir is atomic: of two processes started with
    the same name, exactly one runs."""
    run_name = args.run_name or f"{args.env_id.replace('/', '-')}__{Path(SCRIPT).stem}__{args.seed}__{int(time.time())}"
    run_dir = Path("runs") / run_name
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
    except FileExistsError:
        fail(f"{run_dir} already exists; pass another --run-name, or --resume {run_dir} to continue that run")
    return run_dir


class RunLog:
    """What a run reports: TensorBoard scalars, recent returns, evaluations, a progress line, checkpoints
    and summary.json. Its state goes into checkpoints, so a resumed run reports the whole run."""

    def __init__(self, run_dir: Path, args, writer_class, total_steps: int, env: dict, state: dict | None = None):
        self.run_dir, self.args, self.total, self.env = run_dir, args, total_steps, env
        self.video_dir = str(run_dir / "videos") if args.capture_video else None
        state = state or {"step": 0, "recent": [], "eval_history": [], "wall_time_s": 0.0, "eval_time_s": 0.0}
        self.first_step, self.recent, self.eval_history = state["step"], state["recent"], state["eval_history"]
        self.wall_before, self.eval_time_s = state["wall_time_s"], state["eval_time_s"]
        self.eval_before = self.eval_time_s
        self.checkpoint_step = state["step"] if self.first_step else None
        # purge_step: TensorBoard drops what the interrupted run logged after its checkpoint (logged again now).
        self.writer = writer_class(str(run_dir), purge_step=self.first_step + 1 if self.first_step else None)
        if not self.first_step:
            self.writer.add_text(
                "hyperparameters",
                "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items()),
            )
        self.start = self.last_print = time.time()

    def wall_time(self) -> float:
        return self.wall_before + time.time() - self.start

    def train_sps(self, step: int) -> float:
        """Environment steps per second of training alone, evaluations excluded (this session's steps)."""
        train_time = time.time() - self.start - (self.eval_time_s - self.eval_before)
        return (step - self.first_step) / max(train_time, 1e-9)

    def episode(self, step: int, ret: float, length: int) -> None:
        self.writer.add_scalar("charts/episodic_return", ret, step)
        self.writer.add_scalar("charts/episodic_length", length, step)
        self.recent = (self.recent + [float(ret)])[-20:]

    def scalars(self, step: int, values: dict) -> None:
        for tag, value in {**values, "charts/SPS": self.train_sps(step)}.items():
            self.writer.add_scalar(tag, value, step)

    def evaluation(self, step: int, episodes, seconds: float) -> None:
        stats = eval_stats(*episodes)
        self.eval_time_s += seconds
        self.eval_history.append(
            {
                "step": step,
                "wall_time_s": self.wall_time(),
                "mean": stats["mean"],
                "mean_length": stats["mean_length"],
                "truncated": stats["truncated"],
            }
        )
        self.writer.add_scalar("eval/episodic_return", stats["mean"], step)
        self.writer.add_scalar("eval/episodic_length", stats["mean_length"], step)

    def progress(self, step: int, every_s: float = 5.0) -> None:
        """A line every `every_s` seconds: steps, steps/s, recent return, last evaluation, time left."""
        now = time.time()
        if now - self.last_print < every_s and step < self.total:
            return
        self.last_print = now
        sps = (step - self.first_step) / max(now - self.start, 1e-9)
        ret = f"{np.mean(self.recent):.1f}" if self.recent else "n/a"
        ev = f" | eval {self.eval_history[-1]['mean']:.1f}" if self.eval_history else ""
        left = timedelta(seconds=round((self.total - step) / max(sps, 1e-9)))  # "1 day, 2:03:04": runs last days
        print(
            f"[{SCRIPT}] step {step:,}/{self.total:,} ({100 * step / self.total:.0f}%) | {sps:,.0f} steps/s | "
            f"return {ret}{ev} | {left} left",
            flush=True,
        )

    def state(self, step: int) -> dict:
        return {
            "step": step,
            "recent": self.recent,
            "eval_history": self.eval_history,
            "wall_time_s": self.wall_time(),
            "eval_time_s": self.eval_time_s,
        }

    def checkpoint(self, step: int, write, nbytes: int) -> None:
        """runs/<run>/checkpoint, atomically: written beside, fsynced, renamed over the old one, so a kill at
        any moment leaves the previous checkpoint or the new one, never half of one."""
        if shutil.disk_usage(self.run_dir).free < 1.1 * nbytes:
            print(
                f"[{SCRIPT}] warning: too little free disk for a checkpoint at step {step:,}; keeping the one "
                f"of step {self.checkpoint_step}",
                file=sys.stderr,
                flush=True,
            )
            return
        path, tmp = self.run_dir / "checkpoint", self.run_dir / "checkpoint.tmp"
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.checkpoint_step = step

    def stop_unless_finite(self, finite: bool, step: int, what: str) -> None:
        """A non-finite loss or parameter ends the run at once (exit 3); the last good checkpoint stays."""
        if finite:
            return
        kept = (
            f"the last good checkpoint is {self.run_dir / 'checkpoint'} (step {self.checkpoint_step:,})"
            if self.checkpoint_step is not None
            else "no checkpoint was written (see --checkpoint-frequency)"
        )
        message = f"non-finite {what} by step {step:,}; {kept}"
        print(f"error: {message}", file=sys.stderr, flush=True)
        self.write_summary(step, None, "", {}, status="failed", failure=message)
        self.writer.close()
        sys.exit(3)

    def write_summary(self, step: int, final, device: str, versions_: dict, status: str = "finished", **extra) -> dict:
        wall = self.wall_time()
        summary = {
            "script": SCRIPT,
            "env_id": self.args.env_id,
            "seed": self.args.seed,
            "total_timesteps": step,
            "status": status,
            "wall_time_s": wall,
            "sps": step / max(wall - self.eval_time_s, 1e-9),
            "sps_with_eval": step / wall,
            "device": device,
            "final_eval": eval_stats(*final) if final is not None else None,
            "eval_history": self.eval_history,
            "env": self.env,
            "args": dataclasses.asdict(self.args),
            "versions": versions_,
            **extra,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def finish(self, step: int, final, eval_seconds: float, device: str, versions_: dict, **extra) -> dict:
        """The final evaluation (`final`, which took `eval_seconds`) into TensorBoard and summary.json."""
        self.eval_time_s += eval_seconds
        self.writer.add_scalar("eval/final_episodic_return", float(np.mean(final.returns)), step)
        self.writer.close()
        summary = self.write_summary(step, final, device, versions_, **extra)
        fe = summary["final_eval"]
        print(
            f"[{SCRIPT}] done in {summary['wall_time_s']:.1f} s: final eval over {fe['episodes']} episodes "
            f"mean {fe['mean']:.1f} (min {fe['min']:.0f}); {self.run_dir}"
        )
        return summary


# jaxlib 0.10's CPU scheduler that runs independent ops concurrently can deadlock: with it, --num-seeds 3
# with 256-wide MLPs hangs in its first update at 0% CPU, forever, on the 2-core test machine. Off, the
# results are bit-identical and the MLP about 3% slower.
CPU_DEADLOCK_FIX = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def select_platform(cuda: bool) -> str:
    """Must run before JAX creates any array (the backend and XLA's flags are fixed then)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if CPU_DEADLOCK_FIX.split("=")[0] not in flags:  # a user's own setting of it wins
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_DEADLOCK_FIX}".strip()
    if not cuda:
        jax.config.update("jax_platforms", "cpu")
    return jax.default_backend()


def seed_runs(args: Args, checkpoint: dict | None = None) -> list:
    """(args with its seed, run directory) of each agent of --num-seeds: new directories (<run-name>__<seed>
    for a batch), or with a --resume checkpoint those of its batch, beside the one named."""
    if checkpoint is not None:
        dirs = (
            [Path(args.resume)]
            if args.num_seeds == 1
            else [Path(args.resume).parent / name for name in checkpoint["run_names"]]
        )
    elif args.num_seeds == 1:
        dirs = [new_run_dir(args)]
    else:
        prefix = args.run_name or f"{args.env_id}__{Path(SCRIPT).stem}"
        stamp = "" if args.run_name else f"__{int(time.time())}"  # one for the whole batch
        dirs = []
        try:
            for i in range(args.num_seeds):
                dirs.append(new_run_dir(dataclasses.replace(args, run_name=f"{prefix}__{args.seed + i}{stamp}")))
        except SystemExit:  # one name of the batch is taken: leave no directory of the others behind
            for run_dir in dirs:
                run_dir.rmdir()
            raise
    return [(dataclasses.replace(args, seed=args.seed + i), run_dir) for i, run_dir in enumerate(dirs)]


def plt_colours(n: int):
    base = [
        (255, 200, 0),
        (0, 200, 255),
        (120, 120, 255),
        (255, 80, 80),
        (80, 255, 80),
        (255, 0, 255),
        (200, 200, 200),
        (255, 140, 0),
        (0, 255, 200),
        (140, 0, 255),
    ]
    return [base[i % len(base)] for i in range(n)]


def versions_of_libraries() -> dict:
    return {**versions(jax, flax, optax, np), "gymnax": importlib.metadata.version("gymnax")}


class ScalarWriter:
    """TensorBoard events without torch, as torch's SummaryWriter writes them: scalars as `simple_value`
    (tensorboard.summary.Writer stores them as tensors, which EventAccumulator's scalar API, used by
    tests/conftest.py's read_scalars, does not list), text for the text plugin, and purge_step."""

    def __init__(self, logdir: str, purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(logdir)
        if purge_step is not None:  # readers drop the events of the interrupted run from purge_step on
            self._writer.add_event(Event(step=purge_step, file_version="brain.Event:2"))
            self._writer.add_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._add(Summary(value=[Summary.Value(tag=tag, simple_value=float(value))]), step)

    def add_text(self, tag: str, text: str) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.plugins.text.metadata import create_summary_metadata

        tensor = TensorProto(
            dtype="DT_STRING",
            string_val=[text.encode()],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        )
        self._add(
            Summary(
                value=[
                    Summary.Value(
                        tag=f"{tag}/text_summary", tensor=tensor, metadata=create_summary_metadata(None, None)
                    )
                ]
            ),
            0,
        )

    def _add(self, summary, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def save_checkpoint(logs: list, runs: list, runner: RunnerState, global_step: int, args: Args) -> None:
    """Every agent's whole training state and run log, into the run directory of each: --resume of any of
    them continues the whole batch exactly."""
    data = flax.serialization.msgpack_serialize(
        {
            "script": SCRIPT,
            "args": json.dumps(dataclasses.asdict(args)),
            "global_step": global_step,
            "runner": flax.serialization.to_state_dict(runner),
            "run_names": [run_dir.name for _, run_dir in runs],
            "log": json.dumps([log.state(global_step) for log in logs]),
        }
    )
    for log in logs:
        log.writer.flush()  # what was logged up to this step is on disk before the checkpoint says so
        log.checkpoint(global_step, lambda f: f.write(data), len(data))


def save_model(path: Path, runner: RunnerState, global_step: int, args: Args) -> None:
    """--save-model: one agent's final training state (read by --eval-checkpoint and inspect_agent.py)."""
    state = {
        "script": SCRIPT,
        "runner": flax.serialization.to_state_dict(runner),
        "global_step": global_step,
        "args": json.dumps(dataclasses.asdict(args)),
    }
    path.write_bytes(flax.serialization.msgpack_serialize(jax.device_get(state)))


def read_checkpoint(path: str, flag: str) -> dict:
    """A checkpoint written by this script (--save-model or a periodic one), or a one-line error (exit 2)."""
    try:
        state = flax.serialization.msgpack_restore(Path(path).read_bytes())
        script, _, _, _ = state["script"], state["runner"]["params"], int(state["global_step"]), state["args"]
    except Exception as e:  # msgpack makes errors, ints or foreign dicts out of foreign bytes
        fail(
            f"{flag} {path} is not a checkpoint of {SCRIPT} ({type(e).__name__}); pass a file written by its "
            "--save-model or --checkpoint-frequency"
        )
    if script != SCRIPT:
        fail(f"{flag} {path} is a checkpoint of {script!r}, not of {SCRIPT}; pass one written by {SCRIPT}")
    return state


def restore(saved: dict, template, flag: str, path: str, trained: dict, args):
    """`saved` (a state dict) in the structure of a freshly built `template`, or one line naming the entries that
    do not fit and why (exit 2). from_state_dict checks names, not shapes (classic bug: other layer sizes load
    without a word), so shapes are compared here."""
    here = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(template), sep="/")
    try:
        there = flax.traverse_util.flatten_dict(saved, sep="/")
    except Exception:  # noqa: BLE001 - not a tree at all
        there = {}
    shape = {k: np.shape(v) for k, v in there.items()}
    keys = [k for k in sorted(here.keys() | there.keys()) if k not in here or shape.get(k) != np.shape(here[k])]
    if keys:
        diff = "; ".join(
            f"{k}: {shape.get(k, 'absent')} saved, {np.shape(here[k]) if k in here else 'absent'} here"
            for k in keys[:3]
        )
        fix = (
            f"pass --env-id {trained['env_id']} as in training"
            if trained.get("env_id") != args.env_id
            else "the network code differs from the code that wrote it; load it with that code"
        )
        fail(f"{flag} {path} does not fit this code ({len(keys)} entries differ: {diff}); {fix}")
    # Into copies of the template's arrays, whose exact types (gymnax leaves some weak) make the resumed
    # run compile to the program that the saved run ran.
    restored = flax.serialization.from_state_dict(template, saved)
    return jax.tree.map(lambda t, x: t.at[...].set(x), template, restored)


if __name__ == "__main__":
    main(tyro.cli(Args))
