"""PPO on Gymnax MinAtar (JAX/Flax/Optax), separate policy and value CNNs, the whole update compiled.

    python ppo_minatar_cnn_jax.py                                  # Breakout-MinAtar, 1e7 steps, defaults
    python ppo_minatar_cnn_jax.py --env-id Asterix-MinAtar --num-seeds 3   # three agents in one program
    python ppo_minatar_cnn_jax.py --save-model                     # keep the whole training state (resumable)
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
bootstrap from zero.
"""

import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

SCRIPT = Path(__file__).name
MINATAR_ENVS = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "Seaquest-MinAtar",
                "SpaceInvaders-MinAtar")


# ==== Arguments ====
@dataclass
class Args:
    env_id: str = "Breakout-MinAtar"
    """Gymnax MinAtar id: Asterix-MinAtar, Breakout-MinAtar, Freeway-MinAtar, Seaquest-MinAtar, SpaceInvaders-MinAtar"""
    seed: int = 1
    """seed of the first agent; agent i of --num-seeds uses seed + i (and equals a run with that seed alone)"""
    total_timesteps: int = 10_000_000
    """environment steps to train for, per agent (summed over all envs; rounded up to whole rollouts)"""
    run_name: Optional[str] = None
    """name of the run directory under runs/ (default: <env-id>__<script>__<seed>__<unix time>; with --num-seeds > 1, <run-name>__<seed>)"""
    cuda: bool = True
    """let JAX use a GPU when one is available (--no-cuda forces the CPU backend)"""
    capture_video: bool = False
    """record one greedy evaluation episode to runs/<run-name>/videos/ at the end (mp4)"""
    save_model: bool = False
    """save the whole training state (parameters, optimizer and environment states, PRNG key) at the end to runs/<run-name>/ppo_minatar_cnn_jax.msgpack"""
    eval_checkpoint: Optional[str] = None
    """path of a checkpoint written by --save-model: evaluate it, write a summary, do not train"""
    load_checkpoint: Optional[str] = None
    """path of a checkpoint written by --save-model: resume that run's whole training state (parameters, optimizer and environment states, PRNG key, episode counters, update count) and train until --total-timesteps in all, the learning-rate schedule continuing from the saved update; pass that run's other flags"""
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


def check_args(args: Args) -> None:
    """Stops with a one-line error (exit 2) on input that cannot work."""
    if args.env_id not in MINATAR_ENVS:
        fail(f"unknown --env-id {args.env_id!r}; use one of {', '.join(MINATAR_ENVS)}")
    for name in ("total_timesteps", "num_seeds", "num_envs", "num_steps", "num_minibatches", "update_epochs",
                 "log_frequency", "eval_frequency", "eval_episodes", "final_eval_episodes"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    check_network_args(args)
    batch = args.num_envs * args.num_steps
    if batch % args.num_minibatches:
        fail(f"--num-envs x --num-steps = {batch} is not divisible by --num-minibatches {args.num_minibatches}; "
             "pick a divisor")
    if args.total_timesteps < batch:
        fail(f"--total-timesteps {args.total_timesteps} is less than one rollout ({batch} steps = "
             "--num-envs x --num-steps); raise it or shrink the rollout")
    if not 0.0 < args.gamma <= 1.0 or not 0.0 <= args.gae_lambda <= 1.0 or args.learning_rate <= 0:
        fail("--gamma must be in (0, 1], --gae-lambda in [0, 1] and --learning-rate positive")
    if args.clip_coef <= 0 or args.max_grad_norm <= 0 or args.ent_coef < 0 or args.vf_coef < 0:
        fail("--clip-coef and --max-grad-norm must be positive, --ent-coef and --vf-coef 0 or more")
    for flag, path in (("--eval-checkpoint", args.eval_checkpoint), ("--load-checkpoint", args.load_checkpoint)):
        if path is not None and not Path(path).is_file():
            fail(f"{flag} {path} does not exist; pass a file written by --save-model")
    if args.num_seeds > 1 and (args.eval_checkpoint or args.load_checkpoint):
        fail("--eval-checkpoint and --load-checkpoint take one agent; use --num-seeds 1")


def check_network_args(args: Args) -> None:
    if not args.channels or min(args.channels) <= 0 or len(args.channels) > 4:
        fail(f"--channels must be 1 to 4 positive channel counts (each 3x3 VALID convolution shrinks the "
             f"10x10 screen by 2), got {args.channels}")
    if args.hidden_size <= 0:
        fail(f"--hidden-size must be positive, got {args.hidden_size}")


# ==== Environment ====
def make_env(env_id: str):
    """A Gymnax environment (auto-resetting `step`) and its default parameters."""
    import gymnax

    return gymnax.make(env_id)


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
        patches = jnp.concatenate([x[..., i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
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
        next_obs, env_state, reward, terminated, truncated, info = jax.vmap(
            env.step, in_axes=(0, 0, 0, None))(step_keys, env_state, action, env_params)
        done = jnp.logical_or(terminated, truncated)
        ep_return, ep_length = ep_return + reward, ep_length + 1
        stats = (jnp.where(done, ep_return, 0.0).sum(), jnp.where(done, ep_length, 0).sum(), done.sum())
        transition = Transition(obs, action, log_prob, value, reward, terminated.astype(jnp.float32),
                                done.astype(jnp.float32), info["final_observation"])
        ep_return, ep_length = jnp.where(done, 0.0, ep_return), jnp.where(done, 0, ep_length)
        return (env_state, next_obs, key, ep_return, ep_length), (transition, stats)

    carry, (traj, stats) = jax.lax.scan(step, (env_state, obs, key, ep_return, ep_length), None, num_steps)
    return carry, traj, jax.tree.map(jnp.sum, stats)


# ==== Schedules ====
def linear_schedule(start: float, end: float, duration: float, t):
    """`start` at t=0, `end` from t=duration on, linear in between (works on traced t)."""
    return end + (start - end) * jnp.clip(1.0 - t / duration, 0.0, 1.0)


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


def ppo_loss(params, net: ActorCritic, batch: dict, clip_coef: float, ent_coef: float, vf_coef: float,
             norm_adv: bool = True, clip_vloss: bool = False):
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
    metrics = {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy,
               "approx_kl": ((ratio - 1) - log_ratio).mean(),
               "clipfrac": (jnp.abs(ratio - 1) > clip_coef).mean()}
    return loss, metrics


def layer_grad_norms(grads) -> dict:
    """Gradient norm of each layer (kernel and bias together), keyed 'actor/Dense_0' etc."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(grads))
    layers: dict = {}
    for path, g in flat.items():
        name = "/".join(p for p in path[:-1] if p != "params")
        layers[name] = layers.get(name, 0.0) + jnp.sum(jnp.square(g))
    return {f"grad_norm/{name}": jnp.sqrt(v) for name, v in layers.items()}


def make_optimizer(args: Args):
    # Learning rate applied outside the transform (see update step), driven by RunnerState.update: a
    # resumed run's schedule continues from the saved update over the new --total-timesteps.
    return optax.chain(optax.clip_by_global_norm(args.max_grad_norm), optax.scale_by_adam(eps=1e-5))


def epoch_minibatches(key, batch_size: int, epochs: int, num_minibatches: int):
    """Indices [epochs, num_minibatches, batch_size // num_minibatches]: each epoch a fresh shuffle of the
    batch, cut into minibatches (classic bug: one permutation reused for every epoch)."""
    perms = [jax.random.permutation(k, batch_size) for k in jax.random.split(key, epochs)]
    return jnp.stack(perms).reshape(epochs, num_minibatches, -1)


def make_train(args: Args, env, env_params, net: ActorCritic):
    """Builds (init, train_chunk) for ONE agent; vmap them over agents.

    init(key) -> RunnerState. train_chunk(runner, n) -> (runner, metric sums over n updates): one
    update = rollout, GAE, `update_epochs` passes of `num_minibatches` shuffled minibatches.
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
        return RunnerState(params, opt_state, env_state, obs, key, zeros, zeros.astype(jnp.int32),
                           jnp.zeros((), jnp.int32))

    def minibatch_step(carry, batch):
        params, opt_state, lr = carry
        grads, metrics = jax.grad(ppo_loss, has_aux=True)(
            params, net, batch, args.clip_coef, args.ent_coef, args.vf_coef, args.norm_adv, args.clip_vloss)
        metrics = {**metrics, **layer_grad_norms(grads), "grad_norm/global": optax.tree.norm(grads)}
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, jax.tree.map(lambda u: -lr * u, updates))
        return (params, opt_state, lr), metrics

    def update_step(runner: RunnerState):
        (env_state, obs, key, ep_return, ep_length), traj, ep_stats = rollout(
            net, env, env_params, runner.params, runner.env_state, runner.obs, runner.key,
            runner.ep_return, runner.ep_length, args.num_steps)
        advantages, returns = advantages_and_returns(net, runner.params, traj, args.gamma, args.gae_lambda)
        data = {"obs": traj.obs, "action": traj.action, "log_prob": traj.log_prob, "value": traj.value,
                "advantages": advantages, "returns": returns}
        data = jax.tree.map(lambda x: x.reshape((batch_size, *x.shape[2:])), data)
        lr = (linear_schedule(args.learning_rate, 0.0, num_updates, runner.update)
              if args.anneal_lr else jnp.asarray(args.learning_rate))

        def epoch(carry, indices):
            return jax.lax.scan(minibatch_step, carry, jax.tree.map(lambda x: x[indices], data))

        key, k_epochs = jax.random.split(key)
        (params, opt_state, _), metrics = jax.lax.scan(
            epoch, (runner.params, runner.opt_state, lr),
            epoch_minibatches(k_epochs, batch_size, args.update_epochs, args.num_minibatches))
        metrics = jax.tree.map(jnp.mean, metrics)
        var_y = jnp.var(returns)
        metrics["explained_variance"] = jnp.where(var_y > 0, 1 - jnp.var(returns - traj.value) / var_y, 0.0)
        metrics["learning_rate"] = lr
        metrics["ep_return_sum"], metrics["ep_length_sum"], metrics["episodes"] = ep_stats
        runner = RunnerState(params, opt_state, env_state, obs, key, ep_return, ep_length, runner.update + 1)
        return runner, metrics

    def train_chunk(runner: RunnerState, n_updates):
        """n_updates updates (a traced count: one compile serves chunks of any length)."""
        metric_shapes = jax.eval_shape(lambda r: update_step(r)[1], runner)
        sums = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metric_shapes)

        def body(_, carry):
            runner, sums = carry
            runner, metrics = update_step(runner)
            return runner, jax.tree.map(lambda a, m: a + m.astype(jnp.float32), sums, metrics)

        return jax.lax.fori_loop(0, n_updates, body, (runner, sums))

    return init, train_chunk


# ==== Evaluation ====
def evaluate(net: ActorCritic, env, env_params, episodes: int, params, key, greedy):
    """Returns of `episodes` whole episodes, one per vmapped env, with sampled or greedy actions.

    One episode per env: counting the first N episodes to finish would favour short ones. Each env
    stops adding reward when its first episode ends (terminated or truncated).
    """
    k_reset, key = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, episodes), env_params)

    def cond(carry):
        return carry[4].any()

    def body(carry):
        obs, env_state, key, returns, running = carry
        key, k_act, k_env = jax.random.split(key, 3)
        logits = net.logits(params, obs)
        action = jnp.where(greedy, jnp.argmax(logits, -1), jax.random.categorical(k_act, logits))
        obs, env_state, reward, terminated, truncated, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, episodes), env_state, action, env_params)
        returns = returns + reward * running
        running = running & ~(terminated | truncated)
        return obs, env_state, key, returns, running

    carry = (obs, env_state, key, jnp.zeros(episodes), jnp.ones(episodes, bool))
    return jax.lax.while_loop(cond, body, carry)[3]


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


def plt_colours(n: int):
    base = [(255, 200, 0), (0, 200, 255), (120, 120, 255), (255, 80, 80), (80, 255, 80), (255, 0, 255),
            (200, 200, 200), (255, 140, 0), (0, 255, 200), (140, 0, 255)]
    return [base[i % len(base)] for i in range(n)]


# ==== Run bookkeeping ====
def fail(message: str) -> None:
    """Bad input: one line naming the problem and the fix, exit code 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def versions(*modules) -> dict:
    return {"python": platform.python_version(), **{m.__name__: m.__version__ for m in modules}}


def eval_stats(returns) -> dict:
    r = np.asarray(returns, dtype=np.float64)
    return {"episodes": int(r.size), "mean": float(r.mean()), "std": float(r.std()),
            "min": float(r.min()), "max": float(r.max())}


def check_memory(nbytes: int, flag: str) -> None:
    """Stops before allocating `nbytes` that would not fit in free (accelerator or host) memory."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if nbytes > 0.9 * free:
        fail(f"the rollout needs about {nbytes / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB of "
             f"{device.platform} memory is free; lower {flag}")


class Progress:
    """A line every `every_s` seconds: steps, steps/s, recent return, time left."""

    def __init__(self, total: int, first: int = 0, every_s: float = 5.0):
        self.total, self.first, self.every_s = total, first, every_s  # first: the step this run starts at
        self.start = self.last = time.time()

    def update(self, step: int, recent_return: Optional[float], extra: str = "") -> None:
        now = time.time()
        if now - self.last < self.every_s and step < self.total:
            return
        self.last = now
        sps = (step - self.first) / max(now - self.start, 1e-9)
        left = (self.total - step) / max(sps, 1e-9)
        ret = "n/a" if recent_return is None else f"{recent_return:.1f}"
        print(f"[{SCRIPT}] step {step:,}/{self.total:,} ({100 * step / self.total:.0f}%) | "
              f"{sps:,.0f} steps/s | return {ret}{extra} | {time.strftime('%H:%M:%S', time.gmtime(left))} left",
              flush=True)


def write_summary(run_dir: Path, args, env_id: str, total_timesteps: int, wall_time_s: float,
                  sps: float, device: str, final_returns, eval_history: list, versions_: dict,
                  **extra) -> dict:
    summary = {
        "script": SCRIPT, "env_id": env_id, "seed": args.seed, "total_timesteps": total_timesteps,
        "wall_time_s": wall_time_s, "sps": sps, "device": device,
        "final_eval": eval_stats(final_returns), "eval_history": eval_history,
        "args": dataclasses.asdict(args), "versions": versions_, **extra,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


class ScalarWriter:
    """TensorBoard scalars without torch, as `simple_value` events (what torch's SummaryWriter writes).

    tensorboard.summary.Writer stores scalars as tensors, which EventAccumulator's scalar API (used by
    tests/conftest.py's read_scalars) does not list; TensorBoard itself shows both.
    """

    def __init__(self, logdir: str):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(logdir)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def save_checkpoint(path: Path, runner: RunnerState, global_step: int, args: Args) -> None:
    """One agent's whole training state: --load-checkpoint resumes exactly where this run stopped."""
    state = {"script": SCRIPT, "runner": flax.serialization.to_state_dict(runner),
             "global_step": global_step, "args": json.dumps(dataclasses.asdict(args))}
    path.write_bytes(flax.serialization.msgpack_serialize(jax.device_get(state)))


def load_checkpoint(path: str, template: RunnerState, whole: bool = True):
    """(RunnerState, global_step) of a checkpoint of this script, in the structure of a freshly built
    template: all of it, or with whole=False only its parameters (the rest is the template's).
    Any other file is bad input: garbage, another script's checkpoint, other layer sizes or games."""
    try:
        state = flax.serialization.msgpack_restore(Path(path).read_bytes())
        script, saved, global_step = state["script"], state["runner"], int(state["global_step"])
        if not whole:
            saved = {**flax.serialization.to_state_dict(template), "params": saved["params"]}
    except Exception:  # msgpack makes errors, ints or foreign dicts out of foreign bytes
        fail(f"{path} is not a checkpoint of {SCRIPT}; pass a file written by its --save-model")
    if script != SCRIPT:
        fail(f"{path} is a checkpoint of {script!r}, not of {SCRIPT}; pass one written by {SCRIPT} --save-model")
    # from_state_dict checks names, not shapes (classic bug: other layer sizes load without a word).
    if jax.tree.map(np.shape, saved) != jax.tree.map(np.shape, flax.serialization.to_state_dict(template)):
        fail(f"checkpoint {path} was written with other settings; pass the --env-id and network flags"
             f"{' and --num-envs' if whole else ''} of the run that wrote it")
    # Into copies of the template's arrays, whose exact types (gymnax leaves some weak) make the resumed
    # run compile to the program that the saved run ran.
    restored = flax.serialization.from_state_dict(template, saved)
    return jax.tree.map(lambda t, x: t.at[...].set(x), template, restored), global_step


# ==== Training ====
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


def seed_runs(args: Args) -> list:
    """(seed, run_dir, args with that seed) for each agent of --num-seeds."""
    stamp = int(time.time())
    runs = []
    for i in range(args.num_seeds):
        seed = args.seed + i
        if args.run_name is None:
            name = f"{args.env_id}__{Path(SCRIPT).stem}__{seed}__{stamp}"
        else:
            name = args.run_name if args.num_seeds == 1 else f"{args.run_name}__{seed}"
        runs.append((seed, Path("runs") / name, dataclasses.replace(args, seed=seed)))
    return runs


def train(args: Args) -> list:
    """Trains --num-seeds agents; returns their summaries (one per agent)."""
    check_args(args)
    device = select_platform(args.cuda)
    env, env_params = make_env(args.env_id)
    n_actions = env.action_space(env_params).n
    obs_shape = env.observation_space(env_params).shape
    batch = args.num_envs * args.num_steps
    obs_bytes = int(np.prod(obs_shape)) * 4
    check_memory(args.num_seeds * (2 * batch * obs_bytes * 2 + args.final_eval_episodes * obs_bytes * 4),
                 "--num-envs, --num-steps or --num-seeds")
    net = ActorCritic(*make_networks(args, n_actions))
    runs = seed_runs(args)
    keys = jnp.stack([jax.random.PRNGKey(seed) for seed, _, _ in runs])
    # Evaluation episodes are not training episodes: a key stream of their own.
    eval_keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(seed), 100_000) for seed, _, _ in runs])
    init, train_chunk = make_train(args, env, env_params, net)
    # One agent per call, not vmap(init): under vmap, the QR of the orthogonal initializer becomes one
    # batched LAPACK call that splits its batch over XLA's CPU thread pool while other ops hold the pool's
    # threads; on 2 cores, --num-seeds 2 of the CNN deadlocked there. Same values either way.
    init_one = jax.jit(init)
    agents = [init_one(key) for key in keys]
    num_updates = -(-args.total_timesteps // batch)
    start_update = 0
    if args.eval_checkpoint or args.load_checkpoint:  # read before any run directory exists (bad input)
        loaded, ckpt_step = load_checkpoint(args.eval_checkpoint or args.load_checkpoint, agents[0],
                                            whole=args.eval_checkpoint is None)
    if args.load_checkpoint and args.eval_checkpoint is None:
        start_update = int(loaded.update)
        if start_update * batch != ckpt_step:
            fail(f"checkpoint {args.load_checkpoint} took {ckpt_step} steps in {start_update} updates, not "
                 f"{batch} per update; pass the --num-envs and --num-steps of the run that wrote it")
        if start_update >= num_updates:
            fail(f"checkpoint {args.load_checkpoint} has trained {ckpt_step} steps already; --total-timesteps "
                 "counts them: raise it above that")
    start_step = start_update * batch
    for _, run_dir, _ in runs:
        run_dir.mkdir(parents=True, exist_ok=True)
    versions_ = {**versions(jax, flax, optax, np), "gymnax": importlib.metadata.version("gymnax")}
    ckpt_name = f"{Path(SCRIPT).stem}.msgpack"
    # Greedy is traced: sampled and greedy evaluations share one compiled program.
    eval_fn = jax.jit(lambda params, keys, episodes, greedy: jax.vmap(
        partial(evaluate, net, env, env_params, episodes), in_axes=(0, 0, None))(params, keys, greedy),
        static_argnums=2)

    if args.eval_checkpoint is not None:
        params, global_step = loaded.params, ckpt_step
        start = time.time()
        params_k = jax.tree.map(lambda x: x[None], params)
        sampled = np.asarray(eval_fn(params_k, eval_keys, args.final_eval_episodes, False))[0]
        greedy = np.asarray(eval_fn(params_k, eval_keys, args.final_eval_episodes, True))[0]
        wall = time.time() - start
        seed, run_dir, seed_args = runs[0]
        if args.capture_video:
            record_video(net, env, env_params, params, eval_keys[0], str(run_dir / "videos" / "greedy.mp4"))
        history = [{"step": global_step, "wall_time_s": wall, "mean": float(sampled.mean())}]
        summary = write_summary(run_dir, seed_args, args.env_id, global_step, wall, global_step / wall, device,
                                sampled, history, versions_, final_eval_greedy=eval_stats(greedy),
                                checkpoint=str(args.eval_checkpoint))
        print(f"[{SCRIPT}] evaluated {args.eval_checkpoint}: sampled {summary['final_eval']}, "
              f"greedy {summary['final_eval_greedy']}")
        return [summary]

    writers = [ScalarWriter(str(run_dir)) for _, run_dir, _ in runs]

    start = time.time()
    runner = jax.tree.map(lambda *leaves: jnp.stack(leaves), *agents)
    if args.load_checkpoint is not None:
        runner = jax.tree.map(lambda x: x[None], loaded)
    n_params = {"actor": param_count(jax.tree.map(lambda x: x[0], runner.params["actor"])),
                "critic": param_count(jax.tree.map(lambda x: x[0], runner.params["critic"]))}
    print(f"[{SCRIPT}] {args.env_id} on {device}: {args.num_seeds} agent(s), policy {n_params['actor']:,} "
          f"and value {n_params['critic']:,} parameters, {n_actions} actions", flush=True)
    for w in writers:
        w.add_scalar("charts/policy_parameters", n_params["actor"], 0)
        w.add_scalar("charts/value_parameters", n_params["critic"], 0)
    # Donated: the old runner's buffers are reused in place instead of copied each chunk.
    chunk_fn = jax.jit(jax.vmap(train_chunk, in_axes=(0, None)), donate_argnums=0)

    updates_per_log = max(1, args.log_frequency // batch)
    updates_per_eval = max(1, args.eval_frequency // batch)
    progress = Progress(num_updates * batch, start_step)
    eval_history: list = [[] for _ in runs]
    done_updates, recent = start_update, None
    while done_updates < num_updates:
        # Chunks end at log and eval boundaries; the count is traced, so no recompiling.
        n = min(updates_per_log - done_updates % updates_per_log,
                updates_per_eval - done_updates % updates_per_eval, num_updates - done_updates)
        runner, sums = chunk_fn(runner, n)
        sums = jax.device_get(sums)
        done_updates += n
        global_step = done_updates * batch
        sps = (global_step - start_step) / (time.time() - start)
        recent_all = []
        for i, w in enumerate(writers):
            s = {k: float(v[i]) for k, v in sums.items()}
            if s["episodes"] > 0:
                w.add_scalar("charts/episodic_return", s["ep_return_sum"] / s["episodes"], global_step)
                w.add_scalar("charts/episodic_length", s["ep_length_sum"] / s["episodes"], global_step)
                recent_all.append(s["ep_return_sum"] / s["episodes"])
            w.add_scalar("charts/learning_rate", s["learning_rate"] / n, global_step)
            w.add_scalar("charts/SPS", sps, global_step)
            for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "explained_variance"):
                w.add_scalar(f"losses/{k}", s[k] / n, global_step)
            for k in s:
                if k.startswith("grad_norm/"):
                    w.add_scalar(f"losses/{k}", s[k] / n, global_step)
            w.flush()
        recent = float(np.mean(recent_all)) if recent_all else recent
        if done_updates % updates_per_eval == 0 or done_updates == num_updates:
            returns = np.asarray(eval_fn(
                runner.params, jax.vmap(jax.random.fold_in, in_axes=(0, None))(eval_keys, done_updates),
                args.eval_episodes, False))
            for i, w in enumerate(writers):
                eval_history[i].append({"step": global_step, "wall_time_s": time.time() - start,
                                        "mean": float(returns[i].mean())})
                w.add_scalar("eval/episodic_return", float(returns[i].mean()), global_step)
        last_eval = np.mean([h[-1]["mean"] for h in eval_history]) if eval_history[0] else None
        progress.update(global_step, recent, "" if last_eval is None else f" | eval {last_eval:.1f}")
    jax.block_until_ready(runner)
    train_time = time.time() - start

    sampled = np.asarray(eval_fn(runner.params, eval_keys, args.final_eval_episodes, False))
    greedy = np.asarray(eval_fn(runner.params, eval_keys, args.final_eval_episodes, True))
    wall_time = time.time() - start
    summaries = []
    for i, (seed, run_dir, seed_args) in enumerate(runs):
        params_i = jax.tree.map(lambda x: x[i], runner.params)
        writers[i].add_scalar("eval/final_episodic_return", float(sampled[i].mean()), global_step)
        writers[i].add_scalar("eval/final_greedy_episodic_return", float(greedy[i].mean()), global_step)
        if args.save_model:
            save_checkpoint(run_dir / ckpt_name, jax.tree.map(lambda x: x[i], runner), global_step, seed_args)
        if args.capture_video:
            record_video(net, env, env_params, params_i, eval_keys[i], str(run_dir / "videos" / "greedy.mp4"))
        summaries.append(write_summary(
            run_dir, seed_args, args.env_id, global_step, wall_time, (global_step - start_step) / train_time, device,
            sampled[i], eval_history[i], versions_, final_eval_greedy=eval_stats(greedy[i]),
            parameter_count=n_params, num_seeds_in_program=args.num_seeds, updates=num_updates,
            **({"loaded_checkpoint": args.load_checkpoint, "start_step": start_step} if args.load_checkpoint else {})))
        writers[i].close()
        print(f"[{SCRIPT}] seed {seed} done in {wall_time:.1f} s: eval over {args.final_eval_episodes} episodes "
              f"sampled mean {sampled[i].mean():.1f} (min {sampled[i].min():.0f}), greedy mean "
              f"{greedy[i].mean():.1f}; {run_dir}")
    return summaries


if __name__ == "__main__":
    train(tyro.cli(Args))
