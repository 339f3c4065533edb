"""A2C on Atari (PyTorch): synchronous n-step advantage actor-critic, the whole pipeline in one file.

    python a2c_atari.py                                    # Breakout, 10M steps, the defaults below
    python a2c_atari.py --env-id PongNoFrameskip-v4 --seed 2 --save-model
    python a2c_atari.py --resume runs/<run>                # continue a killed run from its last checkpoint
    python a2c_atari.py --env-id BreakoutNoFrameskip-v4 --eval-checkpoint runs/<run>/a2c_atari.pt
    python a2c_atari.py --help                             # every option

Mnih et al. 2016 ("Asynchronous methods for deep RL"), in the synchronous form of OpenAI Baselines'
A2C: 16 environments step together, every `--num-steps` (5) steps one gradient update on the n-step
returns R_t = r_t + gamma * R_{t+1}, bootstrapped only from V(s_{t+N}) of the state after the
rollout (never from the intermediate values) and cut to zero at a terminal. Shared Nature-CNN trunk
(Mnih et al. 2015) with policy and value heads, RMSprop in TensorFlow's form, lr annealed to 0.

Environments: ale-py's AtariVectorEnv (C++ threads) with the Nature preprocessing, as in
dqn_atari.py: frameskip 4 with max-pool over the last two frames, 84x84 grayscale, a 4-frame stack,
up to 30 no-op starts, FIRE on reset, sticky actions as the env id defines them, minimal action set.
Atari specifics, each a classic bug when done wrong:
- Rewards are clipped to [-1, 1] in the loss only; logged and evaluated scores are raw scores of
  whole games (all lives). A lost life ends the return chain (read from `info["lives"]`) while the
  env keeps its gymnasium meaning (terminated = game over, truncated = frame cap).
- NEXT_STEP autoreset: the step after a game ends only resets that env; it stays in the rollout
  (the tensors stay rectangular) but is masked out of the loss.
`--env-id` takes a gymnasium Atari id (BreakoutNoFrameskip-v4, ALE/Breakout-v5, ...) to pick the game.

To change the network, touch ActorCritic; the loss: nstep_returns, gae_advantages, a2c_loss; the rollout:
Rollout, RolloutCollector. a2c_update returns a metrics dict that train() logs whole, so a new metric is one line
there. Tests follow a copy: pytest tests/test_a2c_atari.py --script <copy>.
"""

import dataclasses
import json
import os
import platform
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import NamedTuple

import ale_py
import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from ale_py import roms
from ale_py.vector_env import AtariVectorEnv
from torch.utils.tensorboard import SummaryWriter

SCRIPT = Path(__file__).name
STACK = 4  # frames per observation
FRAME_SHAPE = (84, 84)
NOOP_MAX = 30  # Nature: up to 30 no-op actions at the start of every episode (training and evaluation)
TRAIN_MAX_FRAMES = 108_000  # 30 minutes of play: the usual frame cap of a training episode


# ==== Arguments ====
@dataclass
class Args:
    env_id: str = "BreakoutNoFrameskip-v4"
    """gymnasium Atari id (BreakoutNoFrameskip-v4, PongNoFrameskip-v4, ALE/Breakout-v5, ...); the game and its
    sticky-action default are taken from it"""
    seed: int = 1
    """seed of python, numpy, torch and the environments"""
    total_timesteps: int = 10_000_000
    """environment steps to train for (summed over all envs; one step is 4 frames)"""
    run_name: str | None = None
    """name of the run directory under runs/ (default: <env-id>__<script>__<seed>__<unix time>)"""
    cuda: bool = True
    """use CUDA when it is available (the network and the update then live on the GPU)"""
    torch_deterministic: bool = True
    """make cuDNN deterministic (same seed, same result)"""
    torch_threads: int = 1
    """CPU threads for torch ops; A2C's batches are small: on the 2-core test machine 1 thread trained at
    376 steps/s and 2 threads at 97 (benchmarks/bench_a2c_atari.py sps)"""
    capture_video: bool = False
    """record one evaluation episode to runs/<run-name>/videos/ at the end"""
    save_model: bool = False
    """save the network and optimizer state to runs/<run-name>/a2c_atari.pt"""
    eval_checkpoint: str | None = None
    """path of a checkpoint (--save-model's or runs/<run>/checkpoint): evaluate it, write a summary, do not train"""
    checkpoint_frequency: int = 500_000
    """environment steps between checkpoints to runs/<run-name>/checkpoint (0: none); every env starts a new
    game after a checkpoint"""
    resume: str | None = None
    """runs/<run-name> of an interrupted run: continue it in place from its last checkpoint, with the arguments
    it was started with"""
    sticky_action_prob: float | None = None
    """probability that an env repeats its previous action instead of the chosen one, in training and
    evaluation (default: the env id's own, 0.25 for ALE/*-v5 and *-v0, 0.0 for *NoFrameskip-v4)"""

    num_envs: int = 16
    """parallel environments collecting experience (C++ threads)"""
    num_steps: int = 5
    """steps per env in each rollout (the n of the n-step return); one update per rollout"""
    learning_rate: float = 7e-4
    """RMSprop learning rate at the start of training"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over training"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 1.0
    """GAE lambda; 1.0 is the plain n-step return of the original A2C"""
    ent_coef: float = 0.01
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient (the value loss is the mean squared error, so 0.5 gives the usual 1/2 (R - V)^2)"""
    max_grad_norm: float = 0.5
    """global gradient norm clip"""
    rmsprop_alpha: float = 0.99
    """RMSprop decay of the squared-gradient average"""
    rmsprop_eps: float = 1e-5
    """RMSprop epsilon, added inside the square root (TensorFlow form)"""
    log_frequency: int = 8_000
    """environment steps between logs of losses and diagnostics (100 updates of the default 16 x 5 steps)"""
    eval_frequency: int = 500_000
    """environment steps between evaluations (logged to eval/episodic_return)"""
    eval_episodes: int = 10
    """episodes per periodic evaluation"""
    final_eval_episodes: int = 30
    """episodes of the final evaluation reported in summary.json (Nature: 30)"""
    eval_max_frames: int = 18_000
    """frame cap of an evaluation episode (Nature: 18,000 frames, 5 minutes of play)"""


def game_name(env_id: str) -> str | None:
    """ROM name AtariVectorEnv wants ("breakout") for a gymnasium id ("BreakoutNoFrameskip-v4"), or None."""
    m = re.fullmatch(r"(?:ALE/)?([A-Z][A-Za-z0-9]*?)(?:NoFrameskip|Deterministic)?-v[045]", env_id)
    if m is None:
        return None
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", m.group(1)).lower()  # SpaceInvaders -> space_invaders
    return name if name in roms.get_all_rom_ids() else None


# ==== Environment ====
def make_envs(
    game: str,
    num_envs: int,
    seed: int,
    sticky_action_prob: float = 0.0,
    max_frames: int = TRAIN_MAX_FRAMES,
    rgb: bool = False,
):
    """Nature-preprocessed vector envs with NEXT_STEP autoreset, reset with seeds seed..seed+num_envs-1.

    Returns (envs, obs, info). Rewards are raw (clipped in the loss only, so scores stay scores);
    episodic_life and life_loss_info are off so that terminated/truncated describe the whole game
    (life losses are read from info["lives"], see transition_flags). `rgb` gives unstacked 210x160 RGB
    frames of the same game for videos.
    """
    image = (
        dict(grayscale=False, img_height=210, img_width=160, stack_num=1)
        if rgb
        else dict(grayscale=True, img_height=FRAME_SHAPE[0], img_width=FRAME_SHAPE[1], stack_num=STACK)
    )
    envs = AtariVectorEnv(
        game,
        num_envs,
        frameskip=4,
        maxpool=True,
        noop_max=NOOP_MAX,
        use_fire_reset=True,
        repeat_action_probability=sticky_action_prob,
        max_num_frames_per_episode=max_frames,
        episodic_life=False,
        life_loss_info=False,
        reward_clipping=False,
        num_threads=min(num_envs, os.cpu_count() or 1),
        **image,
    )
    obs, info = envs.reset(seed=seed)
    return envs, obs, info


def sticky_prob(args: Args) -> float:
    """--sticky-action-prob, or the env id's own (gymnasium's ALE ids: -v0 and -v5 sticky, -v4 not)."""
    if args.sticky_action_prob is not None:
        return args.sticky_action_prob
    return 0.0 if args.env_id.endswith("-v4") else 0.25


def action_count(game: str) -> int:
    """Size of the game's minimal action set."""
    probe = AtariVectorEnv(game, 1)
    n = int(probe.single_action_space.n)
    probe.close()
    return n


def transition_flags(terminations, truncations, lives, prev_lives, autoreset):
    """(live, td_terminal, episode_end) for one vector step, all boolean arrays over envs.

    live: the step was a transition, not the NEXT_STEP reset that follows a finished game.
    td_terminal: no bootstrap from s' - the game is over or a life was lost (a lost life ends the
    return chain; ALE counts a life lost when lives drop and some are left, as here).
    episode_end: the whole game ended (game over or frame cap); the next step of this env is a reset.
    """
    live = ~autoreset
    life_lost = (lives < prev_lives) & (lives > 0)
    td_terminal = (terminations | life_lost) & live
    episode_end = (terminations | truncations) & live
    return live, td_terminal, episode_end


# ==== Network ====
def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Module:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class ActorCritic(nn.Module):
    """Nature-CNN trunk shared by a policy head (logits) and a value head."""

    def __init__(self, n_actions: int):
        super().__init__()
        self.trunk = nn.Sequential(
            layer_init(nn.Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, 512)),
            nn.ReLU(),
        )
        # Small policy init: near-uniform initial policy; unit-scale value init.
        self.policy = layer_init(nn.Linear(512, n_actions), std=0.01)
        self.value = layer_init(nn.Linear(512, 1), std=1.0)

    def forward(self, obs: torch.Tensor):
        """uint8 frames (B, 4, 84, 84) -> (logits (B, A), values (B,))."""
        hidden = self.trunk(obs.float() / 255.0)
        return self.policy(hidden), self.value(hidden).squeeze(-1)


def sample_actions(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One action per row sampled from softmax(logits), drawn from `generator` (seeded, reproducible)."""
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


# ==== Rollout ====
@dataclass
class Rollout:
    """`num_steps` x `num_envs` transitions. `valid` is False for autoreset steps (not transitions).

    `terminated` ends the return chain (a lost life or game over); `truncated` is the frame cap,
    which bootstraps from the value of the episode's last state.
    """

    obs: torch.Tensor  # (T, E, 4, 84, 84) uint8
    actions: torch.Tensor  # (T, E) long
    values: torch.Tensor  # (T, E) V(obs) at acting time
    rewards: torch.Tensor  # (T, E) clipped to [-1, 1]
    terminated: torch.Tensor  # (T, E) float
    truncated: torch.Tensor  # (T, E) float
    valid: torch.Tensor  # (T, E) float, 0 on autoreset steps
    next_value: torch.Tensor  # (E,) V(s_{t+N})


class RolloutCollector:
    """Steps the envs one rollout at a time, carrying the running state (obs, lives, scores) between rollouts."""

    def __init__(
        self, envs, obs: np.ndarray, info: dict, num_steps: int, device: torch.device, generator: torch.Generator
    ):
        self.envs, self.obs, self.lives = envs, obs, info["lives"]
        self.num_steps, self.device, self.generator = num_steps, device, generator
        n = envs.num_envs
        # NEXT_STEP autoreset: an env that ended a game spends its next step resetting.
        self.autoreset = np.zeros(n, dtype=bool)
        self.ep_return = np.zeros(n)
        self.ep_length = np.zeros(n, dtype=np.int64)

    @torch.no_grad()
    def collect(self, agent: nn.Module):
        """Returns (Rollout, [(raw score, length), ...] of the games that ended in it)."""
        T, E, dev = self.num_steps, self.envs.num_envs, self.device
        obs_buf = torch.zeros((T, E, *self.obs.shape[1:]), dtype=torch.uint8, device=dev)
        actions = torch.zeros((T, E), dtype=torch.long, device=dev)
        values, rewards, terminated, truncated, valid = (torch.zeros((T, E), device=dev) for _ in range(5))
        finished = []
        for t in range(T):
            obs = torch.as_tensor(self.obs, device=dev)
            logits, value = agent(obs)
            action = sample_actions(logits, self.generator)
            next_obs, reward, terminations, truncations, info = self.envs.step(action.cpu().numpy())

            live, td_terminal, episode_end = transition_flags(
                terminations, truncations, info["lives"], self.lives, self.autoreset
            )
            self.lives = info["lives"]
            # Raw rewards summed over the whole game: the score, not the clipped learning signal.
            self.ep_return[live] += reward[live]
            self.ep_length[live] += 1
            for i in np.flatnonzero(episode_end):
                finished.append((float(self.ep_return[i]), int(self.ep_length[i])))
                self.ep_return[i], self.ep_length[i] = 0.0, 0

            obs_buf[t], actions[t], values[t] = obs, action, value
            rewards[t] = torch.as_tensor(np.clip(reward, -1, 1), dtype=torch.float32, device=dev)
            terminated[t] = torch.as_tensor(td_terminal, dtype=torch.float32, device=dev)
            truncated[t] = torch.as_tensor(truncations & ~terminations & live, dtype=torch.float32, device=dev)
            valid[t] = torch.as_tensor(live, dtype=torch.float32, device=dev)
            self.autoreset, self.obs = episode_end, next_obs
        _, next_value = agent(torch.as_tensor(self.obs, device=dev))
        return Rollout(obs_buf, actions, values, rewards, terminated, truncated, valid, next_value), finished


# ==== Loss ====
def nstep_returns(rewards, values, next_value, terminated, valid, gamma: float):
    """n-step returns R_t = r_t + gamma * R_{t+1}, R_T = V(s_T); arrays are (T, E).

    Only the state after the rollout is bootstrapped from: intermediate values never enter
    (classic bugs: adding each V(s_{t+1}) into the return as well, or bootstrapping every step
    from its own next state, a 1-step target in disguise).
    A terminal (lost life or game over) cuts the chain to 0. A truncated step bootstraps from the
    episode's last state, which NEXT_STEP autoreset hands over as the obs of the following, invalid
    step; an invalid step's "return" is therefore its value (advantage 0, and it is masked anyway).
    """
    returns = torch.zeros_like(rewards)
    next_return = next_value
    for t in reversed(range(rewards.shape[0])):
        ret = rewards[t] + gamma * (1.0 - terminated[t]) * next_return
        returns[t] = torch.where(valid[t] > 0, ret, values[t])
        next_return = returns[t]
    return returns


def gae_advantages(rewards, values, next_value, terminated, truncated, valid, gamma: float, lam: float):
    """Generalized advantage estimation (Schulman et al. 2016) with the same episode boundaries as
    `nstep_returns`; lam = 1 gives exactly the n-step advantage R_t - V(s_t). Returns advantages."""
    advantages = torch.zeros_like(rewards)
    next_adv, next_val = torch.zeros_like(next_value), next_value
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * (1.0 - terminated[t]) * next_val - values[t]
        # The GAE chain stops at a terminal and at a truncation (the next state is a new episode).
        adv = delta + gamma * lam * (1.0 - terminated[t]) * (1.0 - truncated[t]) * next_adv
        advantages[t] = adv * valid[t]
        next_adv, next_val = advantages[t], values[t]
    return advantages


def returns_and_advantages(rollout: Rollout, gamma: float, gae_lambda: float):
    r = rollout
    if gae_lambda == 1.0:
        returns = nstep_returns(r.rewards, r.values, r.next_value, r.terminated, r.valid, gamma)
        return returns, returns - r.values
    advantages = gae_advantages(
        r.rewards, r.values, r.next_value, r.terminated, r.truncated, r.valid, gamma, gae_lambda
    )
    return advantages + r.values, advantages


def a2c_loss(logits, values, actions, advantages, returns, valid, vf_coef: float, ent_coef: float):
    """policy + vf_coef * value - ent_coef * entropy, averaged over valid steps only.

    Subtracting the entropy raises it when the loss is minimised (classic bug: bonus missing or
    added with the wrong sign, policy collapses early). Autoreset steps (valid = 0) carry no gradient.
    """
    n = valid.sum().clamp(min=1.0)
    log_probs = F.log_softmax(logits, dim=-1)
    log_prob = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    policy_loss = -(advantages.detach() * log_prob * valid).sum() / n
    value_loss = ((returns.detach() - values) ** 2 * valid).sum() / n
    entropy_mean = (entropy * valid).sum() / n
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy_mean
    return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy_mean}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, valid: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over valid steps: 1 is a perfect critic, <= 0 no better than a constant."""
    v, r = values[valid > 0], returns[valid > 0]
    var_r = r.var(unbiased=False)
    return float("nan") if var_r == 0 else float(1.0 - (r - v).var(unbiased=False) / var_r)


# ==== Update ====
def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    """`start` at t=0, `end` from t=duration on, linear in between."""
    return end + (start - end) * max(0.0, 1.0 - t / duration)


class TFRMSprop(torch.optim.Optimizer):
    """RMSprop as in TensorFlow (used by the original A2C), not torch.optim.RMSprop:

        ms <- alpha * ms + (1 - alpha) * g^2      ms starts at 1, not 0
        p  <- p - lr * g / sqrt(ms + eps)         eps inside the square root

    Starting ms at 0 (torch) makes the first step lr * 10 * sign(g) whatever the gradient's size
    (1 / sqrt(1 - alpha)); from 1, early steps stay near lr * g. Inside the root, eps = 1e-5 caps the
    step at lr * g / sqrt(eps); outside it (torch), at lr * g / eps, 300x larger.
    """

    def __init__(self, params, lr: float = 7e-4, alpha: float = 0.99, eps: float = 1e-5):
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                ms = state["square_avg"]
                ms.mul_(group["alpha"]).addcmul_(p.grad, p.grad, value=1.0 - group["alpha"])
                p.addcdiv_(p.grad, (ms + group["eps"]).sqrt_(), value=-group["lr"])


def grad_norms(agent: ActorCritic) -> dict:
    """L2 norm of the gradient of each layer with weights (before clipping)."""
    norms = {}
    for name, module in agent.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.grad is not None:
            grads = [p.grad.flatten() for p in module.parameters() if p.grad is not None]
            norms[name] = float(torch.cat(grads).norm())
    return norms


def a2c_update(agent, optimizer, rollout: Rollout, args: Args, lr: float, finite: torch.Tensor) -> dict:
    """One gradient step on a rollout; returns its metrics as {TensorBoard tag: float}, logged whole. `finite` (a device-side bool) is and-ed
    in place with isfinite(loss): reading it back is the caller's, once, not a sync per use."""
    returns, advantages = returns_and_advantages(rollout, args.gamma, args.gae_lambda)
    T, E = rollout.actions.shape
    logits, values = agent(rollout.obs.reshape(T * E, *rollout.obs.shape[2:]))
    valid = rollout.valid.reshape(-1)
    loss, parts = a2c_loss(
        logits,
        values,
        rollout.actions.reshape(-1),
        advantages.reshape(-1),
        returns.reshape(-1),
        valid,
        args.vf_coef,
        args.ent_coef,
    )
    finite &= torch.isfinite(loss)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    layer_norms = grad_norms(agent)
    grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    return {
        "losses/loss": loss.item(),
        **{f"losses/{k}": v.item() for k, v in parts.items()},
        "losses/grad_norm": grad_norm.item(),
        "losses/explained_variance": explained_variance(rollout.values.reshape(-1), returns.reshape(-1), valid),
        **{f"grad_norms/{k}": v for k, v in layer_norms.items()},
    }


# ==== Evaluation ====
class Episodes(NamedTuple):
    returns: list
    lengths: list
    truncated: list  # ended by the frame cap, not by the game


@torch.no_grad()
def evaluate(
    agent,
    game: str,
    episodes: int,
    seed: int,
    device,
    max_frames: int = 18_000,
    video_dir: str | None = None,
    sticky_action_prob: float = 0.0,
) -> Episodes:
    """`episodes` whole games, one per env, run in parallel.

    Actions sampled from the policy, up to 30 no-op starts, games capped at `max_frames` frames, raw
    scores; life losses do not end an episode. One episode per env: counting the first N episodes
    to finish across envs would favour short ones. Lengths are agent steps (4 frames each).
    """
    envs, obs, _ = make_envs(game, episodes, seed, sticky_action_prob, max_frames)
    generator = torch.Generator(device=device).manual_seed(seed)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    running, cut = np.ones(episodes, dtype=bool), np.zeros(episodes, dtype=bool)
    while running.any():
        actions = sample_actions(agent(torch.as_tensor(obs, device=device))[0], generator).cpu().numpy()
        obs, rewards, terminations, truncations, _ = envs.step(actions)
        returns += rewards * running
        lengths += running
        cut |= truncations & ~terminations & running
        running &= ~(terminations | truncations)
    envs.close()
    if video_dir is not None:
        record_video(agent, game, seed, device, video_dir, max_frames, sticky_action_prob)
    return Episodes(returns.tolist(), lengths.tolist(), cut.tolist())


# ==== Training ====
def seed_everything(seed: int, torch_deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


def train(args: Args, game: str, n_actions: int, run_dir: Path, checkpoint: dict | None = None) -> dict:
    """Trains the actor-critic; with a `checkpoint` (--resume) the run continues exactly where it was saved."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    seed_everything(args.seed, args.torch_deterministic)
    agent = ActorCritic(n_actions).to(device)
    # Created once: rebuilding it inside the loop would reset the squared-gradient averages.
    optimizer = TFRMSprop(agent.parameters(), lr=args.learning_rate, alpha=args.rmsprop_alpha, eps=args.rmsprop_eps)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    batch = args.num_envs * args.num_steps
    num_updates = args.total_timesteps // batch
    global_step = done_updates = evals = 0
    if checkpoint is not None:
        global_step, done_updates, evals = (checkpoint[k] for k in ("global_step", "updates", "evals"))
        load_weights(agent, checkpoint, "agent", "--resume", args.resume, args)
        optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_states(checkpoint["rng"], generator)
    log = RunLog(
        run_dir, args, SummaryWriter, num_updates * batch, env_settings(args), checkpoint["log"] if checkpoint else None
    )
    sticky = args.sticky_action_prob
    # Games start at step 0 and again after every checkpoint, seeded by the step: a resumed run
    # restarts them exactly as the uninterrupted run did.
    collector = RolloutCollector(
        *make_envs(game, args.num_envs, args.seed + global_step, sticky), args.num_steps, device, generator
    )
    finite = torch.ones((), dtype=torch.bool, device=device)
    for update in range(done_updates, num_updates):
        rollout, finished = collector.collect(agent)
        global_step += batch
        for score, length in finished:
            log.episode(global_step, score, length)

        # Linear from the full rate at the first update to 0 after the last one.
        lr = linear_schedule(args.learning_rate, 0.0, num_updates, update) if args.anneal_lr else args.learning_rate
        metrics = a2c_update(agent, optimizer, rollout, args, lr, finite)
        # Read every update, not at logging time only: the next rollout samples actions from the policy, and
        # NaN probabilities would crash torch.multinomial. No extra wait: the rollout reads actions back anyway.
        log.stop_unless_finite(bool(finite), global_step, "loss")
        if global_step % args.log_frequency < batch or update == num_updates - 1:
            log.scalars(global_step, {**metrics, "charts/learning_rate": lr})

        if global_step // args.eval_frequency > evals or update == num_updates - 1:
            evals, start = global_step // args.eval_frequency, time.time()
            # Env i is seeded seed + i: each evaluation takes the next eval_episodes seeds, its own games.
            episodes = evaluate(
                agent,
                game,
                args.eval_episodes,
                args.seed + 200_000 + len(log.eval_history) * args.eval_episodes,
                device,
                args.eval_max_frames,
                sticky_action_prob=sticky,
            )
            log.evaluation(global_step, episodes, time.time() - start)
        if args.checkpoint_frequency and global_step % args.checkpoint_frequency < batch and update < num_updates - 1:
            log.stop_unless_finite(bool(finite) and all_finite(agent), global_step, "loss or network parameters")
            state = {
                "script": SCRIPT,
                "args": dataclasses.asdict(args),
                "log": log.state(global_step),
                "global_step": global_step,
                "updates": update + 1,
                "evals": evals,
                "agent": agent.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng_states(generator),
            }
            log.checkpoint(global_step, partial(torch.save, state), 2**25)
            # ALE games cannot be saved: the unfinished ones end here, unreported. Their last step already
            # bootstrapped from V(next obs), which is the truncation treatment.
            collector.envs.close()
            collector = RolloutCollector(
                *make_envs(game, args.num_envs, args.seed + global_step, sticky), args.num_steps, device, generator
            )
        log.progress(global_step)
    collector.envs.close()

    start = time.time()
    final = evaluate(
        agent, game, args.final_eval_episodes, args.seed + 100_000, device, args.eval_max_frames, log.video_dir, sticky
    )
    if args.save_model:
        torch.save(
            {
                "script": SCRIPT,
                "agent": agent.state_dict(),
                "optimizer": optimizer.state_dict(),
                "global_step": global_step,
                "updates": num_updates,
                "args": dataclasses.asdict(args),
            },
            run_dir / f"{Path(SCRIPT).stem}.pt",
        )
    return log.finish(
        global_step, final, time.time() - start, device.type, versions(torch, gym, np, ale_py), updates=num_updates
    )


def evaluate_checkpoint(args: Args, game: str, n_actions: int) -> dict:
    """--eval-checkpoint: the final evaluation of a saved agent, written as a run of its own."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    checkpoint = load_checkpoint(args.eval_checkpoint, "--eval-checkpoint")
    agent = ActorCritic(n_actions).to(device)
    load_weights(agent, checkpoint, "agent", "--eval-checkpoint", args.eval_checkpoint, args)
    log = RunLog(new_run_dir(args), args, SummaryWriter, checkpoint["global_step"], env_settings(args))
    start = time.time()
    final = evaluate(
        agent,
        game,
        args.final_eval_episodes,
        args.seed + 100_000,
        device,
        args.eval_max_frames,
        log.video_dir,
        args.sticky_action_prob,
    )
    log.evaluation(checkpoint["global_step"], final, time.time() - start)
    return log.finish(
        checkpoint["global_step"],
        final,
        0.0,
        device.type,
        versions(torch, gym, np, ale_py),
        checkpoint=str(args.eval_checkpoint),
        sps=sum(final.lengths) / log.wall_time(),
    )


def main(args: Args) -> dict:
    """Checks everything that can be checked before heavy work, then evaluates, trains or resumes."""
    checkpoint = None
    if args.resume is not None:
        checkpoint = load_checkpoint(resume_path(args.resume), "--resume")
        args = dataclasses.replace(Args(**checkpoint["args"]), resume=args.resume)
    game = check_args(args)
    n_actions = action_count(game)
    args = dataclasses.replace(args, sticky_action_prob=sticky_prob(args))  # recorded as run
    torch.set_num_threads(args.torch_threads)
    if args.eval_checkpoint is not None:
        return evaluate_checkpoint(args, game, n_actions)
    return train(args, game, n_actions, Path(args.resume) if checkpoint else new_run_dir(args), checkpoint)


# ==== Appendix: run bookkeeping (logs, summary, checkpoints, checks; nothing here affects learning) ====
def check_args(args: Args) -> str:
    """Stops with a one-line error (exit 2) on input that cannot work; returns the ROM name."""
    for name in (
        "total_timesteps",
        "num_envs",
        "num_steps",
        "torch_threads",
        "log_frequency",
        "eval_frequency",
        "eval_episodes",
        "final_eval_episodes",
        "eval_max_frames",
    ):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.total_timesteps < args.num_envs * args.num_steps:
        fail(
            f"--total-timesteps {args.total_timesteps} is less than one rollout (--num-envs x --num-steps "
            f"= {args.num_envs * args.num_steps}); raise it or lower --num-envs/--num-steps"
        )
    if not 0.0 < args.gamma <= 1.0 or not 0.0 <= args.gae_lambda <= 1.0:
        fail("--gamma must be in (0, 1] and --gae-lambda in [0, 1]")
    if args.learning_rate <= 0 or args.max_grad_norm <= 0 or args.rmsprop_eps <= 0 or not 0 <= args.rmsprop_alpha < 1:
        fail("--learning-rate, --max-grad-norm and --rmsprop-eps must be positive, --rmsprop-alpha in [0, 1)")
    if args.ent_coef < 0 or args.vf_coef < 0 or args.checkpoint_frequency < 0:
        fail("--ent-coef, --vf-coef and --checkpoint-frequency must be 0 or more")
    if args.sticky_action_prob is not None and not 0.0 <= args.sticky_action_prob < 1.0:
        fail(f"--sticky-action-prob must be in [0, 1), got {args.sticky_action_prob}")
    if args.eval_checkpoint is not None and not Path(args.eval_checkpoint).is_file():
        fail(f"--eval-checkpoint {args.eval_checkpoint} does not exist; pass a file written by --save-model")
    game = game_name(args.env_id)
    if game is None:
        fail(
            f"unknown --env-id {args.env_id!r}; use a gymnasium Atari id such as BreakoutNoFrameskip-v4, "
            "PongNoFrameskip-v4 or ALE/Breakout-v5"
        )
    return game


def env_settings(args: Args) -> dict:
    """The environment as run, for summary.json."""
    return {
        "sticky_action_prob": sticky_prob(args),
        "action_set": f"minimal ({action_count(game_name(args.env_id))} actions)",
        "noop_max": NOOP_MAX,
        "frameskip": "4, max-pooled over the last 2 frames",
        "fire_reset": True,
        "max_episode_frames": TRAIN_MAX_FRAMES,
        "eval_max_episode_frames": args.eval_max_frames,
        "life_loss": "ends the return chain; episodes are whole games",
        "reward": "raw scores reported, clipped to [-1, 1] in the loss only",
        "autoreset": "next_step",
    }


@torch.no_grad()
def record_video(
    agent, game: str, seed: int, device, video_dir: str, max_frames: int, sticky_action_prob: float = 0.0
) -> None:
    """One evaluation episode: the policy sees the usual stacks; a second env with the same seed and
    actions (ALE is deterministic, its sticky actions too) gives the max-pooled RGB frames of the video."""
    from gymnasium.utils.save_video import save_video

    envs, obs, _ = make_envs(game, 1, seed, sticky_action_prob, max_frames)
    rgb_envs, rgb, _ = make_envs(game, 1, seed, sticky_action_prob, max_frames, rgb=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    frames, done = [rgb[0, 0]], False
    while not done:
        actions = sample_actions(agent(torch.as_tensor(obs, device=device))[0], generator).cpu().numpy()
        obs, _, terminated, truncated, _ = envs.step(actions)
        rgb = rgb_envs.step(actions)[0]
        frames.append(rgb[0, 0])
        done = bool(terminated[0] or truncated[0])
    envs.close()
    rgb_envs.close()
    save_video(frames, video_dir, fps=15, name_prefix="eval")


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


def all_finite(module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def rng_states(*generators) -> dict:
    """Every random generator of the run: python, numpy (global and each Generator), torch CPU, CUDA and each torch.Generator."""
    numpy_global = np.random.get_state(legacy=False)
    numpy_global["state"]["key"] = numpy_global["state"]["key"].tolist()  # plain data: weights_only loading
    return {
        "python": random.getstate(),
        "numpy": numpy_global,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": [
            g.bit_generator.state if isinstance(g, np.random.Generator) else g.get_state() for g in generators
        ],
    }


def set_rng_states(states: dict, *generators) -> None:
    states["numpy"]["state"]["key"] = np.array(states["numpy"]["state"]["key"], dtype=np.uint32)
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    for g, state in zip(generators, states["generators"]):
        if isinstance(g, np.random.Generator):
            g.bit_generator.state = state
        else:
            g.set_state(state)


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


def load_checkpoint(path: str, flag: str) -> dict:
    """A checkpoint written by this script (--save-model or a periodic one), or a one-line error (exit 2).
    Memory-mapped on the CPU: evaluating a periodic checkpoint never reads its replay buffer."""
    try:  # weights_only: a checkpoint is data; unpickling arbitrary objects would run code from the file
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # garbage, empty, truncated or foreign files: EOFError, RuntimeError, UnpicklingError, ...
        fail(
            f"{flag} {path} is not a torch checkpoint ({type(e).__name__}); "
            "pass a file written by --save-model or --checkpoint-frequency"
        )
    if not isinstance(checkpoint, dict) or checkpoint.get("script") != SCRIPT:
        fail(
            f"{flag} {path} was not written by {SCRIPT}; pass a file written by its --save-model "
            "or --checkpoint-frequency"
        )
    return checkpoint


def load_weights(module, checkpoint: dict, key: str, flag: str, path: str, args, flags=("env_id",)) -> None:
    """checkpoint[key] into `module`, or one line naming the weights that do not fit and why: the flags that
    size the network (`flags`) differ from the checkpoint's, or else the network code itself differs."""
    try:
        module.load_state_dict(checkpoint[key])
    except RuntimeError:
        here, saved = ({k: tuple(v.shape) for k, v in s.items()} for s in (module.state_dict(), checkpoint[key]))
        keys = [k for k in sorted(here.keys() | saved.keys()) if here.get(k) != saved.get(k)]
        diff = "; ".join(f"{k}: {saved.get(k, 'absent')} saved, {here.get(k, 'absent')} here" for k in keys[:3])
        trained = checkpoint["args"]
        other = [f"--{f.replace('_', '-')} {trained[f]}" for f in flags if trained.get(f) != getattr(args, f)]
        fix = (
            f"pass {' '.join(other)} as in training"
            if other
            else "the network code differs from the code that wrote it; load it with that code"
        )
        fail(f"{flag} {path} does not fit this network ({len(keys)} weights differ: {diff}); {fix}")


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


if __name__ == "__main__":
    main(tyro.cli(Args))
