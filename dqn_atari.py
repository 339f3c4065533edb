"""DQN on Atari (PyTorch), the whole pipeline in one file: Nature DQN with a frame-deduplicated replay buffer.

    python dqn_atari.py --env-id BreakoutNoFrameskip-v4      # train with the Nature-style defaults
    python dqn_atari.py --env-id PongNoFrameskip-v4 --num-envs 8 --save-model
    python dqn_atari.py --env-id ALE/Breakout-v5 --eval-checkpoint runs/<run>/dqn_atari.pt   # evaluate, no training
    python dqn_atari.py --help                                # every option

Mnih et al. 2015 (Nature), "Human-level control through deep reinforcement learning": epsilon-greedy
acting, a replay buffer, a target network, a Huber TD loss on rewards clipped to [-1, 1]. Environments
are ale-py's AtariVectorEnv (C++ threads) with the Nature preprocessing: frameskip 4 with max-pool
over the last two frames, 84x84 grayscale, a 4-frame stack, up to 30 no-op starts, FIRE on reset.

Three Atari specifics, each a classic bug when done wrong:
- The reported episode is the whole game with its raw score; a life loss only ends the TD chain
  (no bootstrap through it). The env keeps its gymnasium meaning (terminated = game over,
  truncated = frame cap) and the life loss is read from `info["lives"]`.
- The replay buffer stores each 84x84 frame once (7,064 bytes per transition, 1M transitions in
  7.06 GB instead of 28.2 GB for stored 4-stacks) and rebuilds stacks at sample time, zero-padded at
  an episode start exactly like the env, never across one.
- NEXT_STEP autoreset: the step after a game ends is a reset, not a transition; it never enters the buffer.
`--env-id` takes a gymnasium Atari id (BreakoutNoFrameskip-v4, ALE/Breakout-v5, ...) to pick the game;
the preprocessing is always the one above (no sticky actions, minimal action set).
"""

import dataclasses
import json
import os
import platform
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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
    run_name: Optional[str] = None
    """name of the run directory under runs/ (default: <env-id>__<script>__<seed>__<unix time>)"""
    cuda: bool = True
    """use CUDA when it is available (the replay buffer and the update then live on the GPU)"""
    torch_deterministic: bool = True
    """make cuDNN deterministic (same seed, same result)"""
    capture_video: bool = False
    """record one evaluation episode to runs/<run-name>/videos/ at the end"""
    save_model: bool = False
    """save the Q-network, target network and optimizer state to runs/<run-name>/dqn_atari.pt"""
    eval_checkpoint: Optional[str] = None
    """path of a checkpoint written by --save-model: evaluate it, write a summary, do not train"""

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


def game_name(env_id: str) -> Optional[str]:
    """ROM name AtariVectorEnv wants ("breakout") for a gymnasium id ("BreakoutNoFrameskip-v4"), or None."""
    m = re.fullmatch(r"(?:ALE/)?([A-Z][A-Za-z0-9]*?)(?:NoFrameskip|Deterministic)?-v[045]", env_id)
    if m is None:
        return None
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", m.group(1)).lower()  # SpaceInvaders -> space_invaders
    return name if name in roms.get_all_rom_ids() else None


def check_args(args: Args) -> str:
    """Stops with a one-line error (exit 2) on input that cannot work; returns the ROM name."""
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency",
                 "target_network_frequency", "eval_frequency", "eval_episodes", "final_eval_episodes",
                 "eval_max_frames"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.learning_starts < args.batch_size:
        fail(f"--learning-starts {args.learning_starts} is below --batch-size {args.batch_size}; "
             "collect at least one batch before learning")
    if args.batch_size > args.buffer_size:
        fail(f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}; "
             "lower the batch size or raise the buffer size")
    if args.buffer_size // args.num_envs < 2 * STACK:
        fail(f"--buffer-size {args.buffer_size} leaves fewer than {2 * STACK} slots per env with "
             f"--num-envs {args.num_envs}; raise the buffer size")
    if not 0.0 < args.gamma <= 1.0 or args.learning_rate <= 0:
        fail("--gamma must be in (0, 1] and --learning-rate positive")
    if not (0.0 <= args.end_e <= 1.0 and 0.0 <= args.start_e <= 1.0 and 0.0 < args.exploration_fraction <= 1.0
            and 0.0 <= args.eval_epsilon <= 1.0):
        fail("--start-e, --end-e and --eval-epsilon must be in [0, 1], --exploration-fraction in (0, 1]")
    if args.eval_checkpoint is not None and not Path(args.eval_checkpoint).is_file():
        fail(f"--eval-checkpoint {args.eval_checkpoint} does not exist; pass a file written by --save-model")
    game = game_name(args.env_id)
    if game is None:
        fail(f"unknown --env-id {args.env_id!r}; use a gymnasium Atari id such as BreakoutNoFrameskip-v4, "
             "PongNoFrameskip-v4 or ALE/Breakout-v5")
    return game


# ==== Environment ====
def make_envs(game: str, num_envs: int, seed: int, max_frames: int = TRAIN_MAX_FRAMES,
              rgb: bool = False):
    """Nature-preprocessed vector envs with NEXT_STEP autoreset, reset with seeds seed..seed+num_envs-1.

    Returns (envs, obs, info). Rewards are raw (clipped in the loss only, so scores stay scores);
    episodic_life and life_loss_info are off so that terminated/truncated describe the whole game
    (life losses are read from info["lives"], see transition_flags). `rgb` gives unstacked 210x160 RGB
    frames of the same game for videos.
    """
    image = dict(grayscale=False, img_height=210, img_width=160, stack_num=1) if rgb else \
        dict(grayscale=True, img_height=FRAME_SHAPE[0], img_width=FRAME_SHAPE[1], stack_num=STACK)
    envs = AtariVectorEnv(
        game, num_envs, frameskip=4, maxpool=True, noop_max=NOOP_MAX, use_fire_reset=True,
        repeat_action_probability=0.0, max_num_frames_per_episode=max_frames,
        episodic_life=False, life_loss_info=False, reward_clipping=False,
        num_threads=min(num_envs, os.cpu_count() or 1), **image)
    obs, info = envs.reset(seed=seed)
    return envs, obs, info


def transition_flags(terminations, truncations, lives, prev_lives, autoreset):
    """(live, td_terminal, episode_end) for one vector step, all boolean arrays over envs.

    live: the step was a transition, not the NEXT_STEP reset that follows a finished game.
    td_terminal: no bootstrap from s' - the game is over or a life was lost (Nature's loss of life
    ends the TD chain; ALE counts a life lost when lives drop and some are left, as here).
    episode_end: the whole game ended (game over or frame cap); the next step of this env is a reset.
    """
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
            nn.Conv2d(STACK, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512), nn.ReLU(),
            nn.Linear(512, n_actions),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255.0)


def sync_target(q_network: nn.Module, target_network: nn.Module) -> None:
    target_network.load_state_dict(q_network.state_dict())


# ==== Replay buffer ====
class ReplayBuffer:
    """Circular buffer of single frames, one ring of slots per env, on `device`; 4-stacks rebuilt at sampling.

    Slot j of env e holds the newest frame of s_t, a_t, the raw r_t, td_terminal_t and `history`: how
    many earlier frames of the same episode precede it (capped at 3). The stack of s_t is slots
    j-3..j with frames older than the episode start zeroed (AtariVectorEnv zero-pads after a reset,
    so rebuilt stacks equal the env's), and s_{t+1} is the stack ending at slot j+1: the next
    transition of the same env. Two cases need care:
    - a game cut by the frame cap (truncated, not terminal) must bootstrap from s_{t+1}, which no
      later transition holds: its frame goes into an extra slot marked not `real` (never sampled);
    - the newest slot of an env has no successor yet, and after wraparound the oldest slots may
      have lost their history: neither is sampled (`valid` weight 0; in practice never drawn, or
      one in ~10^5 draws).
    `terminated` is td_terminal, not `done`: a truncated transition keeps its bootstrap.
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
        # Write positions are tracked on the host (no device sync when adding) and mirrored on the
        # device so that sampling needs nothing from the host.
        self.pos = np.zeros(num_envs, dtype=np.int64)
        self.size = np.zeros(num_envs, dtype=np.int64)
        self.next_history = np.zeros(num_envs, dtype=np.int64)
        self.pos_t = torch.zeros(num_envs, dtype=torch.long, device=device)
        self.size_t = torch.zeros(num_envs, dtype=torch.long, device=device)
        self.offsets = torch.arange(-(STACK - 1), 1, device=device)  # -3..0: slots of one stack

    @staticmethod
    def nbytes_for(capacity: int, num_envs: int) -> int:
        per_slot = FRAME_SHAPE[0] * FRAME_SHAPE[1] + 1 + 4 + 1 + 1 + 1
        return (capacity // num_envs) * num_envs * per_slot

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in
                   (self.frames, self.actions, self.rewards, self.terminated, self.history, self.real))

    def _write(self, envs_idx, frames, actions, rewards, terminated, real: bool) -> None:
        slots = self.pos[envs_idx]
        e = torch.as_tensor(envs_idx, device=self.device)
        s = torch.as_tensor(slots, device=self.device)
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

    def add(self, envs_idx, obs, actions, rewards, next_obs, terminated, truncated, episode_end) -> None:
        """Adds one transition for each env in `envs_idx` (numpy arrays with a leading batch dimension).

        obs/next_obs are the env's uint8 stacks; only their newest frames are stored.
        """
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

    def gather(self, env: torch.Tensor, age: torch.Tensor):
        """Transitions at `age` (0 = oldest slot) of `env`: (obs, actions, rewards, next_obs, terminated, valid)."""
        slot = (self.pos_t[env] - self.size_t[env] + age) % self.slots
        valid = self.real[env, slot] & (age >= self.history[env, slot]) & (age < self.size_t[env] - 1)
        return (self.stack(env, slot), self.actions[env, slot].long(), self.rewards[env, slot],
                self.stack(env, (slot + 1) % self.slots), self.terminated[env, slot].float(), valid.float())

    def sample(self, batch_size: int, generator: torch.Generator):
        """Uniform over stored slots that have a successor (all but each env's newest); tensor ops only."""
        assert (self.size - 1).clip(min=0).sum() > 0, "sampling from a buffer with no complete transition"
        n = (self.size_t - 1).clamp(min=0)
        cum = n.cumsum(0)
        # float64: a float32 draw has too few distinct values to be uniform over 10^6 slots.
        u = (torch.rand(batch_size, generator=generator, device=self.device, dtype=torch.float64)
             * cum[-1]).long()
        env = torch.searchsorted(cum, u, right=True)
        return self.gather(env, u - (cum[env] - n[env]))


# ==== Schedules ====
def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    """`start` at t=0, `end` from t=duration on, linear in between."""
    return end + (start - end) * max(0.0, 1.0 - t / duration)


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


def dqn_update(q_network, target_network, optimizer, batch, gamma: float, double_q: bool):
    """One gradient step on the Huber TD loss; returns (loss, mean Q of the taken actions).

    Rewards are clipped to [-1, 1] here and only here (Nature): the buffer and the logs keep raw scores.
    """
    obs, actions, rewards, next_obs, terminated, valid = batch
    with torch.no_grad():
        next_q_target = target_network(next_obs)
        next_q_online = q_network(next_obs) if double_q else None
        target = td_target(rewards.clamp(-1.0, 1.0), next_q_target, terminated, gamma, next_q_online)
    q_taken = q_network(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
    # Slots without a full history or successor weigh 0 (mean over the valid ones, no host sync).
    loss = (F.smooth_l1_loss(q_taken, target, reduction="none") * valid).sum() / valid.sum().clamp(min=1.0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), q_taken.detach().mean()


def grad_norms(q_network: nn.Module) -> dict:
    """L2 norm of the last update's gradient of each layer with weights (read at logging time only:
    reading it in dqn_update would make every GPU update wait for the host)."""
    norms = {}
    for name, module in q_network.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.grad is not None:
            grads = [p.grad.flatten() for p in module.parameters() if p.grad is not None]
            norms[name] = float(torch.cat(grads).norm())
    return norms


def select_actions(q_network, obs, epsilon: float, rng: np.random.Generator, n_actions: int, device):
    """Epsilon-greedy: each env explores independently with probability epsilon."""
    explore = rng.random(len(obs)) < epsilon
    actions = rng.integers(0, n_actions, size=len(obs))
    if not explore.all():
        with torch.inference_mode():
            q = q_network(torch.as_tensor(obs, device=device))
        actions = np.where(explore, actions, q.argmax(dim=1).cpu().numpy())
    return actions


# ==== Evaluation ====
def evaluate(q_network, game: str, episodes: int, seed: int, device, epsilon: float = 0.05,
             max_frames: int = 18_000, video_dir: Optional[str] = None):
    """(returns, lengths) of `episodes` whole games, one per env, run in parallel: the Nature protocol.

    Epsilon 0.05, up to 30 no-op starts, games capped at `max_frames` frames, raw scores; life losses
    do not end an episode. One episode per env: counting the first N episodes to finish across envs
    would favour short ones. Lengths are agent steps (4 frames each).
    """
    envs, obs, _ = make_envs(game, episodes, seed, max_frames)
    rng = np.random.default_rng(seed)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    running = np.ones(episodes, dtype=bool)
    n_actions = envs.single_action_space.n
    while running.any():
        actions = select_actions(q_network, obs, epsilon, rng, n_actions, device)
        obs, rewards, terminations, truncations, _ = envs.step(actions)
        returns += rewards * running
        lengths += running
        running &= ~(terminations | truncations)
    envs.close()
    if video_dir is not None:
        record_video(q_network, game, seed, device, video_dir, epsilon, max_frames)
    return returns.tolist(), lengths.tolist()


def record_video(q_network, game: str, seed: int, device, video_dir: str, epsilon: float, max_frames: int) -> None:
    """One evaluation episode: the policy sees the usual stacks; a second env with the same seed and
    actions (ALE is deterministic) gives the max-pooled RGB frames that go into the video."""
    from gymnasium.utils.save_video import save_video

    envs, obs, _ = make_envs(game, 1, seed, max_frames)
    rgb_envs, rgb, _ = make_envs(game, 1, seed, max_frames, rgb=True)
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


def check_memory(nbytes: int, device: torch.device, flag: str) -> None:
    """Stops before allocating `nbytes` that would not fit in free (GPU or host) memory."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if nbytes > 0.9 * free:
        fail(f"the replay buffer needs {nbytes / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB of "
             f"{device.type} memory is free; lower {flag}")


def load_checkpoint(path: str, device: torch.device) -> dict:
    """The checkpoint written by this script's --save-model, or a one-line error (exit 2) for any other file."""
    try:  # weights_only: a checkpoint is data; unpickling arbitrary objects would run code from the file
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # garbage, empty, truncated or foreign files: EOFError, RuntimeError, UnpicklingError, ...
        fail(f"--eval-checkpoint {path} is not a torch checkpoint ({type(e).__name__}); "
             "pass a file written by --save-model")
    if not isinstance(checkpoint, dict) or checkpoint.get("script") != SCRIPT:
        fail(f"--eval-checkpoint {path} was not written by {SCRIPT}; pass a file written by its --save-model")
    return checkpoint


class Progress:
    """A line every `every_s` seconds: steps, steps/s, recent return, time left."""

    def __init__(self, total: int, every_s: float = 5.0):
        self.total, self.every_s = total, every_s
        self.start = self.last = time.time()

    def update(self, step: int, recent_return: Optional[float], extra: str = "") -> None:
        now = time.time()
        if now - self.last < self.every_s and step < self.total:
            return
        self.last = now
        sps = step / max(now - self.start, 1e-9)
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


# ==== Training ====
def seed_everything(seed: int, torch_deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


def rss_bytes() -> int:
    """Resident memory of this process (Linux), to check the buffer's real footprint."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def train(args: Args) -> dict:
    game = check_args(args)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    probe = AtariVectorEnv(game, 1)
    n_actions = probe.single_action_space.n
    probe.close()
    seed_everything(args.seed, args.torch_deterministic)
    q_network = QNetwork(n_actions).to(device)
    if args.eval_checkpoint is not None:  # read before any run directory exists (bad input)
        checkpoint = load_checkpoint(args.eval_checkpoint, device)
        try:
            q_network.load_state_dict(checkpoint["q_network"])
        except RuntimeError:  # another game's action count: the output layer's size differs
            fail(f"--eval-checkpoint {args.eval_checkpoint} does not fit the network of --env-id {args.env_id}; "
                 f"pass the --env-id it was trained on ({checkpoint['args']['env_id']})")
    else:  # evaluation builds no replay buffer
        check_memory(ReplayBuffer.nbytes_for(args.buffer_size, args.num_envs), device, "--buffer-size")
    run_name = args.run_name or f"{args.env_id.replace('/', '-')}__{Path(SCRIPT).stem}__{args.seed}__{int(time.time())}"
    run_dir = Path("runs") / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    video_dir = str(run_dir / "videos") if args.capture_video else None
    versions_ = versions(torch, gym, np, ale_py)
    eval_seed = args.seed + 100_000  # evaluation episodes are not the training episodes
    evaluate_ = dict(epsilon=args.eval_epsilon, max_frames=args.eval_max_frames)

    if args.eval_checkpoint is not None:
        start = time.time()
        returns, _ = evaluate(q_network, game, args.final_eval_episodes, eval_seed, device,
                              video_dir=video_dir, **evaluate_)
        wall = time.time() - start
        history = [{"step": checkpoint["global_step"], "wall_time_s": wall, "mean": float(np.mean(returns))}]
        summary = write_summary(run_dir, args, args.env_id, checkpoint["global_step"], wall,
                                checkpoint["global_step"] / wall, device.type, returns, history, versions_,
                                checkpoint=str(args.eval_checkpoint))
        print(f"[{SCRIPT}] evaluated {args.eval_checkpoint}: {summary['final_eval']}")
        return summary

    writer = SummaryWriter(str(run_dir))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" +
                    "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items()))
    target_network = QNetwork(n_actions).to(device)
    sync_target(q_network, target_network)
    # Created once: rebuilding Adam inside the loop would silently reset its moment estimates. Fused: one
    # kernel per step, and no host read of its step count (the GPU update never waits on the host).
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, fused=True)
    rss_start = rss_bytes()
    rb = ReplayBuffer(args.buffer_size, args.num_envs, device)
    rng = np.random.default_rng(args.seed)
    sample_gen = torch.Generator(device=device).manual_seed(args.seed)

    envs, obs, info = make_envs(game, args.num_envs, args.seed)
    lives = info["lives"]
    # NEXT_STEP autoreset: an env that ended a game spends its next step resetting.
    autoreset = np.zeros(args.num_envs, dtype=bool)
    ep_return = np.zeros(args.num_envs)
    ep_length = np.zeros(args.num_envs, dtype=np.int64)
    recent_returns: list = []
    eval_history: list = []
    updates = syncs = evals = 0
    progress = Progress(args.total_timesteps)
    start = time.time()
    global_step = 0
    while global_step < args.total_timesteps:
        global_step += args.num_envs
        epsilon = linear_schedule(args.start_e, args.end_e,
                                  args.exploration_fraction * args.total_timesteps, global_step)
        actions = select_actions(q_network, obs, epsilon, rng, n_actions, device)
        next_obs, rewards, terminations, truncations, info = envs.step(actions)

        live, td_terminal, episode_end = transition_flags(terminations, truncations, info["lives"], lives, autoreset)
        lives = info["lives"]
        # Raw rewards summed over the whole game: the score, not the clipped learning signal.
        ep_return[live] += rewards[live]
        ep_length[live] += 1
        for i in np.flatnonzero(episode_end):
            writer.add_scalar("charts/episodic_return", ep_return[i], global_step)
            writer.add_scalar("charts/episodic_length", ep_length[i], global_step)
            recent_returns = (recent_returns + [float(ep_return[i])])[-20:]
            ep_return[i], ep_length[i] = 0.0, 0
        # The reset step (last obs of one game -> first obs of the next) is not a transition.
        if live.any():
            rb.add(np.flatnonzero(live), obs[live], actions[live], rewards[live], next_obs[live],
                   td_terminal[live], truncations[live], episode_end[live])
        autoreset = episode_end
        obs = next_obs

        if global_step > args.learning_starts:
            lr = (linear_schedule(args.learning_rate, 0.0, args.total_timesteps, global_step)
                  if args.anneal_lr else args.learning_rate)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Replay ratio in environment steps, whatever the number of envs.
            while updates < (global_step - args.learning_starts) // args.train_frequency:
                loss, q_mean = dqn_update(q_network, target_network, optimizer,
                                          rb.sample(args.batch_size, sample_gen), args.gamma, args.double_q)
                updates += 1
            if updates and global_step % 100 < args.num_envs:
                writer.add_scalar("losses/td_loss", loss.item(), global_step)
                writer.add_scalar("losses/q_values", q_mean.item(), global_step)
                # Gradients of the last update: dqn_update clears them only at the start of the next one.
                writer.add_scalar("losses/grad_norm", nn.utils.get_total_norm(
                    [p.grad for p in q_network.parameters()]).item(), global_step)
                for name, norm in grad_norms(q_network).items():
                    writer.add_scalar(f"grad_norms/{name}", norm, global_step)
                writer.add_scalar("charts/learning_rate", lr, global_step)
                writer.add_scalar("charts/epsilon", epsilon, global_step)
                writer.add_scalar("charts/SPS", global_step / (time.time() - start), global_step)
            if global_step // args.target_network_frequency > syncs:
                syncs = global_step // args.target_network_frequency
                sync_target(q_network, target_network)

        if global_step // args.eval_frequency > evals or global_step >= args.total_timesteps:
            evals = global_step // args.eval_frequency
            returns, _ = evaluate(q_network, game, args.eval_episodes, eval_seed + evals, device, **evaluate_)
            eval_history.append({"step": global_step, "wall_time_s": time.time() - start,
                                 "mean": float(np.mean(returns))})
            writer.add_scalar("eval/episodic_return", np.mean(returns), global_step)
        recent = float(np.mean(recent_returns)) if recent_returns else None
        progress.update(global_step, recent, f" | eval {eval_history[-1]['mean']:.1f}" if eval_history else "")
    envs.close()
    train_time = time.time() - start
    memory = {"rss_start_bytes": rss_start, "rss_end_bytes": rss_bytes(), "buffer_bytes": rb.nbytes,
              "buffer_capacity": rb.capacity, "buffer_filled": int(rb.size.sum()),
              "buffer_full": bool(rb.size.sum() == rb.capacity)}

    final_returns, _ = evaluate(q_network, game, args.final_eval_episodes, eval_seed, device,
                                video_dir=video_dir, **evaluate_)
    writer.add_scalar("eval/final_episodic_return", np.mean(final_returns), global_step)
    if args.save_model:
        torch.save({"script": SCRIPT, "q_network": q_network.state_dict(),
                    "target_network": target_network.state_dict(), "optimizer": optimizer.state_dict(),
                    "global_step": global_step, "updates": updates, "args": dataclasses.asdict(args)},
                   run_dir / f"{Path(SCRIPT).stem}.pt")
    wall_time = time.time() - start
    summary = write_summary(run_dir, args, args.env_id, global_step, wall_time, global_step / train_time,
                            device.type, final_returns, eval_history, versions_, updates=updates, memory=memory)
    writer.close()
    print(f"[{SCRIPT}] done in {wall_time:.1f} s: final eval over {len(final_returns)} episodes "
          f"mean {summary['final_eval']['mean']:.1f} (min {summary['final_eval']['min']:.0f}); {run_dir}")
    return summary


if __name__ == "__main__":
    train(tyro.cli(Args))
