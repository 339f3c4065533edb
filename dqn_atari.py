"""DQN on Atari (PyTorch), the whole pipeline in one file: Nature DQN with a frame-deduplicated replay buffer.

    python dqn_atari.py --env-id BreakoutNoFrameskip-v4      # train with the Nature-style defaults
    python dqn_atari.py --resume runs/<run>                   # continue a killed run from its last checkpoint
    python dqn_atari.py --env-id ALE/Breakout-v5 --eval-checkpoint runs/<run>/dqn_atari.pt   # evaluate, no training

Mnih et al. 2015 (Nature): epsilon-greedy acting, a replay buffer, a target network, a Huber TD loss on rewards
clipped to [-1, 1]. Environments: ale-py's AtariVectorEnv (C++ threads), Nature preprocessing (frameskip 4 with
max-pool over the last two frames, 84x84 grayscale, 4-frame stacks, up to 30 no-op starts, FIRE on reset, the
minimal action set) and the env id's sticky actions (0.25 for ALE/*-v5, none for *NoFrameskip-v4). Atari specifics:
- The reported episode is the whole game with its raw score; a life loss only ends the TD chain. The env keeps
  its gymnasium meaning (terminated = game over, truncated = frame cap); lives come from `info["lives"]`.
- The replay buffer stores each 84x84 frame once (7,064 bytes per transition, 1M in 7.06 GB instead of 28.2 GB
  for stored 4-stacks) and rebuilds stacks at sample time, zero-padded at an episode start like the env.
- NEXT_STEP autoreset: the step after a game ends is a reset, not a transition; it never enters the buffer.

To change the network, touch QNetwork; the loss: td_target, dqn_loss; the buffer: ReplayBuffer (frame
storage and stack rebuilding). dqn_update returns a metrics dict that train() logs whole, so a new metric is one
line there. Tests follow a copy: pytest tests/test_dqn_atari.py --script <copy>.
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
    """gymnasium Atari id (BreakoutNoFrameskip-v4, PongNoFrameskip-v4, ALE/Breakout-v5, ...); only the game is taken from it"""
    seed: int = 1
    """seed of python, numpy, torch and the environments"""
    total_timesteps: int = 10_000_000
    """environment steps to train for (summed over all envs; one step is 4 frames)"""
    run_name: str | None = None
    """name of the run directory under runs/ (default: <env-id>__<script>__<seed>__<unix time>)"""
    cuda: bool = True
    """use CUDA when it is available (the replay buffer and the update then live on the GPU)"""
    torch_deterministic: bool = True
    """make cuDNN deterministic (same seed, same result)"""
    capture_video: bool = False
    """record one evaluation episode to runs/<run-name>/videos/ at the end"""
    save_model: bool = False
    """save the Q-network, target network and optimizer state to runs/<run-name>/dqn_atari.pt"""
    eval_checkpoint: str | None = None
    """path of a checkpoint (--save-model's or runs/<run>/checkpoint): evaluate it, write a summary, do not train"""
    checkpoint_frequency: int = 250_000
    """environment steps between checkpoints to runs/<run-name>/checkpoint (0: none; 250k steps take ~30 min on a CPU); every env starts a new game after a checkpoint"""
    checkpoint_buffer: bool = True
    """keep the replay buffer in checkpoints (7,064 bytes per transition, 7.1 GB at 1M; --no-checkpoint-buffer: small files, but a resumed run starts with an empty buffer and no longer repeats the uninterrupted one)"""
    resume: str | None = None
    """runs/<run-name> of an interrupted run: continue it in place from its last checkpoint, with the arguments it was started with"""
    sticky_action_prob: float | None = None
    """probability that an env repeats its previous action instead of the chosen one, in training and evaluation (default: the env id's: 0.25 for ALE/*-v5, 0 for *NoFrameskip-v4)"""

    num_envs: int = 1
    """parallel environments collecting experience (C++ threads)"""
    buffer_size: int = 1_000_000
    """replay buffer capacity in transitions (7,064 bytes each)"""
    learning_rate: float = 1e-4
    """Adam learning rate"""
    anneal_lr: bool = False
    """decay the learning rate linearly to 0 over training"""
    gamma: float = 0.99
    """discount factor"""
    batch_size: int = 32
    """transitions per gradient update"""
    learning_starts: int = 80_000
    """environment steps of random-policy experience before the first update"""
    train_frequency: int = 4
    """environment steps per gradient update (the replay ratio, whatever --num-envs is)"""
    target_network_frequency: int = 1_000
    """environment steps between copies of the Q-network into the target network"""
    start_e: float = 1.0
    """epsilon at the start of training"""
    end_e: float = 0.01
    """epsilon at the end of the exploration phase"""
    exploration_fraction: float = 0.10
    """fraction of total-timesteps over which epsilon decays linearly from start-e to end-e"""
    double_q: bool = False
    """Double DQN: the online network picks the next action, the target network values it"""
    log_frequency: int = 100
    """environment steps between logs of losses and diagnostics"""
    eval_frequency: int = 250_000
    """environment steps between evaluations (logged to eval/episodic_return)"""
    eval_episodes: int = 10
    """episodes per periodic evaluation"""
    final_eval_episodes: int = 30
    """episodes of the final evaluation reported in summary.json (Nature: 30)"""
    eval_epsilon: float = 0.05
    """epsilon of the evaluation policy (Nature: 0.05)"""
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
    """(envs, obs, info) of Nature-preprocessed vector envs with NEXT_STEP autoreset, seeded seed..seed+num_envs-1.
    Rewards are raw (clipped in the loss only); episodic_life and life_loss_info are off so that terminated and
    truncated describe the whole game (life losses: info["lives"], see transition_flags). `rgb`: unstacked 210x160
    RGB frames of the same game, for videos."""
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
        reward_clipping=False,
        repeat_action_probability=sticky_action_prob,
        max_num_frames_per_episode=max_frames,
        episodic_life=False,
        life_loss_info=False,
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


def transition_flags(terminations, truncations, lives, prev_lives, autoreset):
    """(live, td_terminal, episode_end) for one vector step, all boolean arrays over envs. live: the step was a
    transition, not the NEXT_STEP reset that follows a finished game. td_terminal: no bootstrap from s', the game
    is over or a life was lost (Nature's loss of life ends the TD chain; ALE counts a life lost when lives drop
    and some are left, as here). episode_end: the whole game ended (game over or frame cap); a reset comes next."""
    live = ~autoreset
    life_lost = (lives < prev_lives) & (lives > 0)
    td_terminal = (terminations | life_lost) & live
    episode_end = (terminations | truncations) & live
    return live, td_terminal, episode_end


# ==== Network ====
class QNetwork(nn.Module):
    """The Nature CNN: 3 convolutions and a 512-unit layer over the 4x84x84 uint8 stack."""

    def __init__(self, n_actions: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(STACK, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, n_actions),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255.0)


def select_actions(q_network, obs, epsilon: float, rng: np.random.Generator, n_actions: int, device):
    """Epsilon-greedy: each env explores independently with probability epsilon."""
    explore = rng.random(len(obs)) < epsilon
    actions = rng.integers(0, n_actions, size=len(obs))
    if not explore.all():
        with torch.inference_mode():
            q = q_network(torch.as_tensor(obs, device=device))
        actions = np.where(explore, actions, q.argmax(dim=1).cpu().numpy())
    return actions


# ==== Replay buffer ====
class Batch(NamedTuple):
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    valid: torch.Tensor  # 0 for slots without a full history or a successor: they weigh nothing in the loss


class ReplayBuffer:
    """Circular buffer of single frames, one ring of slots per env, on `device`; 4-stacks rebuilt at sampling.

    Slot j of env e holds the newest frame of s_t, a_t, the raw r_t, td_terminal_t and `history`: how many
    earlier frames of the same episode precede it (capped at 3). The stack of s_t is slots j-3..j with frames
    older than the episode start zeroed (AtariVectorEnv zero-pads after a reset, so rebuilt stacks equal the
    env's), and s_{t+1} is the stack ending at slot j+1: the next transition of the same env. A game cut by
    the frame cap or a checkpoint (truncated, not terminal) must bootstrap from s_{t+1}, which no later
    transition holds: its frame goes into an extra slot marked not `real`. Neither those, nor the newest slot of
    an env (no successor yet), nor slots that lost their history to wraparound are sampled (`valid` weight 0, in
    practice never drawn). `terminated` is td_terminal, not `done`: a truncated transition keeps its bootstrap.
    """

    def __init__(self, capacity: int, num_envs: int, device: torch.device):
        self.num_envs, self.device = num_envs, device
        self.slots = capacity // num_envs  # per env
        self.capacity = self.slots * num_envs
        shape = (num_envs, self.slots)
        self.frames = torch.zeros((*shape, *FRAME_SHAPE), dtype=torch.uint8, device=device)
        self.actions = torch.zeros(shape, dtype=torch.uint8, device=device)
        self.rewards = torch.zeros(shape, dtype=torch.float32, device=device)
        self.terminated = torch.zeros(shape, dtype=torch.bool, device=device)
        self.history = torch.zeros(shape, dtype=torch.uint8, device=device)
        self.real = torch.zeros(shape, dtype=torch.bool, device=device)
        # Write positions on the host (adding needs no device sync), mirrored on the device (sampling needs no host).
        self.pos, self.size, self.next_history = (np.zeros(num_envs, dtype=np.int64) for _ in range(3))
        self.pos_t, self.size_t = (torch.zeros(num_envs, dtype=torch.long, device=device) for _ in range(2))
        self.offsets = torch.arange(-(STACK - 1), 1, device=device)  # -3..0: slots of one stack

    @staticmethod
    def nbytes_for(capacity: int, num_envs: int) -> int:
        return (capacity // num_envs) * num_envs * (FRAME_SHAPE[0] * FRAME_SHAPE[1] + 1 + 4 + 1 + 1 + 1)

    @property
    def nbytes(self) -> int:
        return self.nbytes_for(self.capacity, self.num_envs)

    def _write(self, envs_idx, frames, actions, rewards, terminated, real: bool) -> None:
        slots = self.pos[envs_idx]
        e, s = torch.as_tensor(envs_idx, device=self.device), torch.as_tensor(slots, device=self.device)
        self.frames[e, s] = torch.as_tensor(frames, device=self.device)
        self.actions[e, s] = torch.as_tensor(actions, device=self.device).to(torch.uint8)
        self.rewards[e, s] = torch.as_tensor(rewards, device=self.device).to(torch.float32)
        self.terminated[e, s] = torch.as_tensor(terminated, device=self.device)
        history = np.minimum(self.next_history[envs_idx], STACK - 1).astype(np.uint8)
        self.history[e, s] = torch.as_tensor(history, device=self.device)
        self.real[e, s] = real
        self.pos[envs_idx] = (slots + 1) % self.slots
        self.size[envs_idx] = np.minimum(self.size[envs_idx] + 1, self.slots)
        self.next_history[envs_idx] += 1

    def add(self, envs_idx, obs, actions, rewards, next_obs, *, terminated, truncated, episode_end) -> None:
        """Adds one transition for each env in `envs_idx` (numpy arrays); of the uint8 stacks only the newest frames."""
        envs_idx = np.asarray(envs_idx)
        self._write(envs_idx, obs[:, -1], actions, rewards, terminated, real=True)
        cut = truncated & ~terminated  # bootstrapped from s_{t+1}, which no later transition holds
        if cut.any():
            zeros = np.zeros(int(cut.sum()))
            self._write(envs_idx[cut], next_obs[cut, -1], zeros, zeros, zeros.astype(bool), real=False)
        # The next frame of an env whose game ended starts a new episode: no history behind it.
        self.next_history[envs_idx[episode_end]] = 0
        self.pos_t.copy_(torch.from_numpy(self.pos))
        self.size_t.copy_(torch.from_numpy(self.size))

    def stack(self, env: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """The 4-stacks ending at (env, slot): [B, 4, 84, 84] uint8, zero before the episode start."""
        idx = (slot[:, None] + self.offsets) % self.slots
        frames = self.frames[env[:, None], idx]
        keep = -self.offsets <= self.history[env, slot][:, None]
        return frames * keep[:, :, None, None]

    def gather(self, env: torch.Tensor, age: torch.Tensor) -> Batch:
        """Transitions at `age` (0 = oldest slot) of `env`."""
        slot = (self.pos_t[env] - self.size_t[env] + age) % self.slots
        valid = self.real[env, slot] & (age >= self.history[env, slot]) & (age < self.size_t[env] - 1)
        return Batch(
            self.stack(env, slot),
            self.actions[env, slot].long(),
            self.rewards[env, slot],
            self.stack(env, (slot + 1) % self.slots),
            self.terminated[env, slot].float(),
            valid.float(),
        )

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Uniform over stored slots that have a successor (all but each env's newest); tensor ops only."""
        assert (self.size - 1).clip(min=0).sum() > 0, "sampling from a buffer with no complete transition"
        n = (self.size_t - 1).clamp(min=0)
        cum = n.cumsum(0)
        # float64: a float32 draw has too few distinct values to be uniform over 10^6 slots.
        u = (torch.rand(batch_size, generator=generator, device=self.device, dtype=torch.float64) * cum[-1]).long()
        env = torch.searchsorted(cum, u, right=True)
        return self.gather(env, u - (cum[env] - n[env]))

    def state_dict(self) -> dict:  # host-side positions as tensors too: checkpoints are loaded with weights_only
        return {k: torch.as_tensor(v) for k, v in vars(self).items() if isinstance(v, (torch.Tensor, np.ndarray))}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():  # in place: checkpoints are read on the CPU, the buffer may be on a GPU
            getattr(self, name)[...] = value.numpy() if isinstance(getattr(self, name), np.ndarray) else value


# ==== Loss ====
def td_target(rewards, next_q_target, terminated, gamma: float, next_q_online=None):
    """r + gamma * Q_target(s', a') unless s' is terminal; truncated transitions still bootstrap.

    a' = argmax Q_target(s') (DQN), or argmax Q_online(s') when `next_q_online` is given (Double DQN).
    """
    if next_q_online is None:
        next_value = next_q_target.max(dim=1).values
    else:
        next_value = next_q_target.gather(1, next_q_online.argmax(dim=1, keepdim=True)).squeeze(1)
    return rewards + gamma * (1.0 - terminated) * next_value


def dqn_loss(q_network, target_network, batch: Batch, gamma: float, double_q: bool):
    """Huber TD loss of a batch and the Q-values of its taken actions. Rewards are clipped to [-1, 1] here and only
    here (Nature): the buffer and the logs keep raw scores."""
    with torch.no_grad():
        next_q_target = target_network(batch.next_obs)
        next_q_online = q_network(batch.next_obs) if double_q else None
        target = td_target(batch.rewards.clamp(-1.0, 1.0), next_q_target, batch.terminated, gamma, next_q_online)
    q_taken = q_network(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    # Slots without a full history or successor weigh 0 (mean over the valid ones, no host sync).
    loss = (F.smooth_l1_loss(q_taken, target, reduction="none") * batch.valid).sum() / batch.valid.sum().clamp(min=1.0)
    return loss, q_taken.detach()


# ==== Update ====
def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    """`start` at t=0, `end` from t=duration on, linear in between."""
    return end + (start - end) * max(0.0, 1.0 - t / duration)


def dqn_update(q_network, target_network, optimizer, batch: Batch, gamma: float, double_q: bool):
    """One gradient step on the Huber TD loss; returns its metrics (device tensors: reading one back waits
    for the device, so train() reads them at logging time only), each logged as losses/<key>."""
    loss, q_taken = dqn_loss(q_network, target_network, batch, gamma, double_q)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"td_loss": loss.detach(), "q_values": q_taken.detach().mean()}


def sync_target(q_network: nn.Module, target_network: nn.Module) -> None:
    target_network.load_state_dict(q_network.state_dict())


def grad_norms(q_network: nn.Module) -> dict:
    """L2 norm of the last update's gradient of each layer with weights (read at logging time only:
    reading it in dqn_update would make every GPU update wait for the host)."""
    norms = {}
    for name, module in q_network.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.grad is not None:
            grads = [p.grad.flatten() for p in module.parameters() if p.grad is not None]
            norms[name] = float(torch.cat(grads).norm())
    return norms


# ==== Evaluation ====
class Episodes(NamedTuple):
    returns: list
    lengths: list
    truncated: list  # ended by the time limit, not by the game


def evaluate(
    q_network,
    game: str,
    episodes: int,
    seed: int,
    device,
    epsilon: float = 0.05,
    max_frames: int = 18_000,
    video_dir: str | None = None,
    sticky_action_prob: float = 0.0,
) -> Episodes:
    """`episodes` whole games, one per env, run in parallel: the Nature protocol. Epsilon 0.05, up to 30 no-op
    starts, games capped at `max_frames` frames, raw scores; life losses do not end an episode. One episode per env:
    counting the first N episodes to finish across envs would favour short ones. Lengths are agent steps."""
    envs, obs, _ = make_envs(game, episodes, seed, sticky_action_prob, max_frames)
    rng = np.random.default_rng(seed)
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    running, cut = np.ones(episodes, dtype=bool), np.zeros(episodes, dtype=bool)
    while running.any():
        actions = select_actions(q_network, obs, epsilon, rng, envs.single_action_space.n, device)
        obs, rewards, terminations, truncations, _ = envs.step(actions)
        returns += rewards * running
        lengths += running
        cut |= truncations & ~terminations & running
        running &= ~(terminations | truncations)
    envs.close()
    if video_dir is not None:
        record_video(q_network, game, seed, device, video_dir, epsilon, max_frames, sticky_action_prob)
    return Episodes(returns.tolist(), lengths.tolist(), cut.tolist())


def final_evaluation(q_network, env_id: str, args: Args, device, video_dir: str | None) -> Episodes:
    """The reported evaluation: the same episodes and seeds at the end of training and for --eval-checkpoint."""
    return evaluate(
        q_network,
        env_id,
        args.final_eval_episodes,
        args.seed + 100_000,
        device,
        args.eval_epsilon,
        args.eval_max_frames,
        video_dir=video_dir,
        sticky_action_prob=args.sticky_action_prob,
    )


# ==== Training ====
def seed_everything(seed: int, torch_deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


def train(args: Args, game: str, n_actions: int, run_dir: Path, checkpoint: dict | None = None) -> dict:
    """Trains a Q-network; with a `checkpoint` (--resume) the run continues exactly where it was saved."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    seed_everything(args.seed, args.torch_deterministic)
    q_network = QNetwork(n_actions).to(device)
    target_network = QNetwork(n_actions).to(device)
    sync_target(q_network, target_network)
    # Created once: rebuilding Adam inside the loop would silently reset its moment estimates.
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, fused=True)
    rss_start = rss_bytes()
    rb = ReplayBuffer(args.buffer_size, args.num_envs, device)
    rng = np.random.default_rng(args.seed)
    sample_gen = torch.Generator(device=device).manual_seed(args.seed)
    global_step = updates = syncs = evals = refill_end = 0
    if checkpoint is not None:
        global_step, updates, syncs, evals = (checkpoint[k] for k in ("global_step", "updates", "syncs", "evals"))
        for module, name in ((q_network, "q_network"), (target_network, "target_network")):
            load_weights(module, checkpoint, name, "--resume", args.resume, args)
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint["buffer"] is not None:
            rb.load_state_dict(checkpoint["buffer"])
        else:  # resumed without its buffer (--no-checkpoint-buffer): collect learning-starts steps before learning
            refill_end = global_step + args.learning_starts
        set_rng_states(checkpoint["rng"], rng, sample_gen)
    log = RunLog(
        run_dir,
        args,
        SummaryWriter,
        args.total_timesteps,
        env_settings(args),
        checkpoint["log"] if checkpoint else None,
    )
    # Games start at step 0 and again after every checkpoint, seeded by the step: a resumed run
    # restarts them exactly as the uninterrupted run did.
    envs, obs, info = make_envs(game, args.num_envs, args.seed + global_step, args.sticky_action_prob)
    # NEXT_STEP autoreset: an env that ended a game spends its next step resetting.
    autoreset, lives = np.zeros(args.num_envs, dtype=bool), info["lives"]
    ep_return, ep_length = np.zeros(args.num_envs), np.zeros(args.num_envs, dtype=np.int64)
    finite, metrics = torch.ones((), dtype=torch.bool, device=device), {}  # finite: read when logging, no syncs
    while global_step < args.total_timesteps:
        global_step += args.num_envs
        epsilon = linear_schedule(
            args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step
        )
        actions = select_actions(q_network, obs, epsilon, rng, n_actions, device)
        next_obs, rewards, terminations, truncations, info = envs.step(actions)
        # A checkpoint cuts every game after this step (ALE state cannot be saved): stored like a frame-cap cut.
        cut = (
            args.checkpoint_frequency > 0
            and global_step % args.checkpoint_frequency < args.num_envs
            and global_step < args.total_timesteps
        )

        live, td_terminal, episode_end = transition_flags(terminations, truncations, info["lives"], lives, autoreset)
        lives = info["lives"]
        # Raw rewards summed over the whole game: the score, not the clipped learning signal.
        ep_return[live] += rewards[live]
        ep_length[live] += 1
        for i in np.flatnonzero(episode_end):
            log.episode(global_step, ep_return[i], ep_length[i])
            ep_return[i], ep_length[i] = 0.0, 0
        # The reset step (last obs of one game -> first obs of the next) is not a transition.
        if live.any():
            rb.add(
                np.flatnonzero(live),
                obs[live],
                actions[live],
                rewards[live],
                next_obs[live],
                terminated=td_terminal[live],
                truncated=truncations[live] | cut,
                episode_end=episode_end[live] | cut,
            )
        autoreset = episode_end
        obs = next_obs

        if global_step > args.learning_starts:
            lr = (
                linear_schedule(args.learning_rate, 0.0, args.total_timesteps, global_step)
                if args.anneal_lr
                else args.learning_rate
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Replay ratio in environment steps, whatever the number of envs.
            while updates < (global_step - args.learning_starts) // args.train_frequency:
                if global_step > refill_end:
                    metrics = dqn_update(
                        q_network,
                        target_network,
                        optimizer,
                        rb.sample(args.batch_size, sample_gen),
                        args.gamma,
                        args.double_q,
                    )
                    finite &= torch.isfinite(metrics["td_loss"])
                updates += 1
            if metrics and global_step % args.log_frequency < args.num_envs:
                log.stop_unless_finite(bool(finite), global_step, "TD loss")
                # Gradients of the last update: dqn_update clears them only at the start of the next one.
                log.scalars(
                    global_step,
                    {
                        **{f"losses/{k}": v.item() for k, v in metrics.items()},
                        "losses/grad_norm": nn.utils.get_total_norm([p.grad for p in q_network.parameters()]).item(),
                        **{f"grad_norms/{k}": v for k, v in grad_norms(q_network).items()},
                        "charts/learning_rate": lr,
                        "charts/epsilon": epsilon,
                    },
                )
            if global_step // args.target_network_frequency > syncs:
                syncs = global_step // args.target_network_frequency
                sync_target(q_network, target_network)

        if global_step // args.eval_frequency > evals or global_step >= args.total_timesteps:
            evals, start = global_step // args.eval_frequency, time.time()
            # Env i is seeded seed + i: each evaluation takes the next eval_episodes seeds, its own games.
            episodes = evaluate(
                q_network,
                game,
                args.eval_episodes,
                args.seed + 200_000 + len(log.eval_history) * args.eval_episodes,
                device,
                args.eval_epsilon,
                args.eval_max_frames,
                sticky_action_prob=args.sticky_action_prob,
            )
            log.evaluation(global_step, episodes, time.time() - start)
        if cut:
            log.stop_unless_finite(bool(finite) and all_finite(q_network), global_step, "TD loss or Q-network")
            state = {
                "script": SCRIPT,
                "args": dataclasses.asdict(args),
                "log": log.state(global_step),
                "global_step": global_step,
                "updates": updates,
                "syncs": syncs,
                "evals": evals,
                "q_network": q_network.state_dict(),
                "target_network": target_network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng_states(rng, sample_gen),
                "buffer": rb.state_dict() if args.checkpoint_buffer else None,
            }
            log.checkpoint(global_step, partial(torch.save, state), rb.nbytes * args.checkpoint_buffer + 2**25)
            envs.close()  # the cut games end here, unreported (see make_envs above)
            envs, obs, info = make_envs(game, args.num_envs, args.seed + global_step, args.sticky_action_prob)
            lives, autoreset[:], ep_return[:], ep_length[:] = info["lives"], False, 0.0, 0
        log.progress(global_step)
    envs.close()

    start = time.time()
    final = final_evaluation(q_network, game, args, device, log.video_dir)
    if args.save_model:  # networks and optimizer only: what --eval-checkpoint and fine-tuning need
        torch.save(
            {
                "script": SCRIPT,
                "args": dataclasses.asdict(args),
                "global_step": global_step,
                "updates": updates,
                "q_network": q_network.state_dict(),
                "target_network": target_network.state_dict(),
                "optimizer": optimizer.state_dict(),
            },
            run_dir / f"{Path(SCRIPT).stem}.pt",
        )
    return log.finish(
        global_step,
        final,
        time.time() - start,
        device.type,
        versions(torch, gym, np, ale_py),
        updates=updates,
        memory=memory_report(rss_start, rb),
    )


def evaluate_checkpoint(args: Args, game: str, n_actions: int) -> dict:
    """--eval-checkpoint: the final evaluation of a saved Q-network, written as a run of its own."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    checkpoint = load_checkpoint(args.eval_checkpoint, "--eval-checkpoint")
    q_network = QNetwork(n_actions).to(device)
    load_weights(q_network, checkpoint, "q_network", "--eval-checkpoint", args.eval_checkpoint, args)
    log = RunLog(new_run_dir(args), args, SummaryWriter, checkpoint["global_step"], env_settings(args))
    start = time.time()
    final = final_evaluation(q_network, game, args, device, log.video_dir)
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
    game, n_actions = check_args(args)
    args = dataclasses.replace(args, sticky_action_prob=sticky_prob(args))  # recorded as run
    if args.eval_checkpoint is not None:  # evaluation builds no replay buffer
        return evaluate_checkpoint(args, game, n_actions)
    nbytes = ReplayBuffer.nbytes_for(args.buffer_size, args.num_envs)
    if torch.cuda.is_available() and args.cuda:
        check_fits(nbytes, torch.cuda.mem_get_info()[0], "the replay buffer", "GPU memory", "lower --buffer-size")
    else:
        check_fits(nbytes, available_memory(), "the replay buffer", "memory", "lower --buffer-size")
    if args.checkpoint_frequency and args.checkpoint_buffer:
        check_fits(
            nbytes,
            shutil.disk_usage(".").free,
            "a checkpoint with its replay buffer",
            "disk",
            "lower --buffer-size or pass --no-checkpoint-buffer",
        )
    return train(args, game, n_actions, Path(args.resume) if checkpoint else new_run_dir(args), checkpoint)


# ==== Appendix: run bookkeeping (logs, summary, checkpoints, checks; nothing here affects learning) ====
def check_args(args: Args) -> tuple:
    """Stops with a one-line error (exit 2) on input that cannot work; returns (ROM name, n_actions)."""
    for name in (
        "total_timesteps",
        "num_envs",
        "buffer_size",
        "batch_size",
        "train_frequency",
        "target_network_frequency",
        "log_frequency",
        "eval_frequency",
        "eval_episodes",
        "final_eval_episodes",
        "eval_max_frames",
    ):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.learning_starts < args.batch_size or args.checkpoint_frequency < 0:
        fail(
            f"--learning-starts must be at least --batch-size {args.batch_size} (collect one batch before learning) "
            "and --checkpoint-frequency 0 or more"
        )
    if args.batch_size > args.buffer_size:
        fail(
            f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}; "
            "lower the batch size or raise the buffer size"
        )
    if args.buffer_size // args.num_envs < 2 * STACK:
        fail(
            f"--buffer-size {args.buffer_size} leaves fewer than {2 * STACK} slots per env with "
            f"--num-envs {args.num_envs}; raise the buffer size"
        )
    if not 0.0 < args.gamma <= 1.0 or args.learning_rate <= 0:
        fail("--gamma must be in (0, 1] and --learning-rate positive")
    if not (
        0.0 <= args.end_e <= 1.0
        and 0.0 <= args.start_e <= 1.0
        and 0.0 < args.exploration_fraction <= 1.0
        and 0.0 <= args.eval_epsilon <= 1.0
        and 0.0 <= (args.sticky_action_prob or 0.0) < 1.0
    ):
        fail(
            "--start-e, --end-e and --eval-epsilon must be in [0, 1], --exploration-fraction in (0, 1], "
            "--sticky-action-prob in [0, 1)"
        )
    if args.eval_checkpoint is not None and not Path(args.eval_checkpoint).is_file():
        fail(f"--eval-checkpoint {args.eval_checkpoint} does not exist; pass a file written by --save-model")
    game = game_name(args.env_id)
    if game is None:
        fail(
            f"unknown --env-id {args.env_id!r}; use a gymnasium Atari id such as BreakoutNoFrameskip-v4, "
            "PongNoFrameskip-v4 or ALE/Breakout-v5"
        )
    return game, int(AtariVectorEnv(game, 1).single_action_space.n)  # the game's minimal action set


def env_settings(args: Args) -> dict:
    """The environment as run, for summary.json."""
    n_actions = int(AtariVectorEnv(game_name(args.env_id), 1).single_action_space.n)
    return {
        "sticky_action_prob": args.sticky_action_prob,
        "action_set": f"minimal ({n_actions} actions)",
        "noop_max": NOOP_MAX,
        "frameskip": "4, max-pooled over the last 2 frames",
        "fire_reset": True,
        "max_episode_frames": TRAIN_MAX_FRAMES,
        "eval_max_episode_frames": args.eval_max_frames,
        "life_loss": "ends the TD chain; episodes are whole games",
        "reward": "raw scores reported, clipped to [-1, 1] in the loss only",
        "autoreset": "next_step",
    }


def record_video(
    q_network, game: str, seed: int, device, video_dir: str, epsilon: float, max_frames: int, sticky_action_prob: float
) -> None:
    """One evaluation episode: the policy sees the usual stacks; a second env with the same seed and actions
    (ALE is deterministic, its sticky actions too) gives the max-pooled RGB frames that go into the video."""
    from gymnasium.utils.save_video import save_video  # imports moviepy: only when a video is made

    envs, obs, _ = make_envs(game, 1, seed, sticky_action_prob, max_frames)
    rgb_envs, rgb, _ = make_envs(game, 1, seed, sticky_action_prob, max_frames, rgb=True)
    rng = np.random.default_rng(seed)
    frames, done = [rgb[0, 0]], False
    while not done:
        actions = select_actions(q_network, obs, epsilon, rng, envs.single_action_space.n, device)
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


def rss_bytes() -> int:
    """Resident memory of this process (Linux), to check the buffer's real footprint."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def memory_report(rss_start: int, rb) -> dict:
    """The process's resident memory before the replay buffer was allocated and now, beside the buffer's size."""
    return {
        "rss_start_bytes": rss_start,
        "rss_end_bytes": rss_bytes(),
        "buffer_capacity": rb.capacity,
        "buffer_bytes": rb.nbytes_for(rb.capacity, rb.num_envs),
        "buffer_filled": int(rb.size.sum()),
        "buffer_full": bool(rb.size.sum() == rb.capacity),
    }


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
