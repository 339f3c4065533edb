"""DQN on CartPole-v1 (PyTorch), the whole pipeline in one file.

    python dqn_cartpole.py                        # train with the benchmark defaults
    python dqn_cartpole.py --seed 2 --save-model  # another seed, keep the weights
    python dqn_cartpole.py --checkpoint-frequency 10000   # checkpoint as it goes ...
    python dqn_cartpole.py --resume runs/<run>    # ... and continue it in place after a kill
    python dqn_cartpole.py --eval-checkpoint runs/<run>/dqn_cartpole.pt   # evaluate, no training
    python dqn_cartpole.py --help                 # every option

Mnih et al. 2015 (Nature) DQN: epsilon-greedy acting, a replay buffer, a target network and a Huber
TD loss, here on the easy problem where every component can be checked quickly. Episodes that end
by the time limit (truncation) bootstrap from the last state; episodes that end by failure
(termination) do not. Environments are gymnasium vector envs with NEXT_STEP autoreset, so the step
after an episode ends is a reset, not a transition, and never enters the buffer.

To change the network, touch QNetwork (and the flags that size it: --hidden-size; a checkpoint names them);
the loss: td_target, dqn_loss; the buffer: ReplayBuffer, NStepQueue. dqn_update returns a metrics dict that
train() logs whole, so a new metric is one line there.
Tests follow a copy: pytest tests/test_dqn_cartpole.py --script <copy>.
"""

import dataclasses
import json
import os
import platform
import random
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter

SCRIPT = Path(__file__).name


# ==== Arguments ====
@dataclass
class Args:
    env_id: str = "CartPole-v1"
    """gymnasium id of an environment with a Box observation and a Discrete action space"""
    seed: int = 1
    """seed of python, numpy, torch, the environments and their action spaces"""
    total_timesteps: int = 60_000
    """environment steps to train for (summed over all envs)"""
    run_name: str | None = None
    """name of the run directory under runs/ (default: <env-id>__<script>__<seed>__<unix time>)"""
    cuda: bool = True
    """use CUDA when it is available (the replay buffer and the update then live on the GPU)"""
    torch_deterministic: bool = True
    """make cuDNN deterministic (same seed, same result)"""
    capture_video: bool = False
    """record one greedy evaluation episode to runs/<run-name>/videos/ at the end"""
    save_model: bool = False
    """save the Q-network, target network and optimizer state to runs/<run-name>/dqn_cartpole.pt"""
    eval_checkpoint: str | None = None
    """path of a checkpoint (--save-model's or runs/<run>/checkpoint): evaluate it greedily, write a summary, do not train"""
    checkpoint_frequency: int = 0
    """environment steps between checkpoints to runs/<run-name>/checkpoint (0: none, a default run takes a minute); every env starts a new episode after a checkpoint"""
    checkpoint_buffer: bool = True
    """keep the replay buffer in checkpoints (--no-checkpoint-buffer: smaller files, but a resumed run starts with an empty buffer and no longer repeats the uninterrupted one)"""
    resume: str | None = None
    """runs/<run-name> of an interrupted run: continue it in place from its last checkpoint, with the arguments it was started with"""
    sticky_action_prob: float = 0.0
    """probability that an env repeats its previous action instead of the chosen one, in training and evaluation"""

    num_envs: int = 1
    """parallel environments collecting experience"""
    buffer_size: int = 100_000
    """replay buffer capacity in transitions"""
    learning_rate: float = 5e-4
    """Adam learning rate"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over training (steadies the final greedy policy)"""
    gamma: float = 0.99
    """discount factor"""
    batch_size: int = 64
    """transitions per gradient update"""
    learning_starts: int = 1_000
    """environment steps of random-policy experience before the first update"""
    train_frequency: int = 2
    """environment steps per gradient update (the replay ratio, whatever --num-envs is)"""
    target_network_frequency: int = 256
    """environment steps between copies of the Q-network into the target network"""
    start_e: float = 1.0
    """epsilon at the start of training"""
    end_e: float = 0.04
    """epsilon at the end of the exploration phase"""
    exploration_fraction: float = 0.16
    """fraction of total-timesteps over which epsilon decays linearly from start-e to end-e"""
    n_step: int = 3
    """steps of reward in each stored transition (multi-step return, as in Rainbow), cut at an episode
    end; 1 is the one-step target of the DQN paper"""
    double_q: bool = True
    """Double DQN: the online network picks the next action, the target network values it"""
    hidden_size: int = 256
    """width of the two hidden layers of the Q-network"""
    log_frequency: int = 100
    """environment steps between logs of losses and diagnostics"""
    eval_frequency: int = 5_000
    """environment steps between greedy evaluations (logged to eval/episodic_return)"""
    eval_episodes: int = 10
    """episodes per periodic greedy evaluation"""
    final_eval_episodes: int = 100
    """episodes of the final greedy evaluation reported in summary.json"""


# ==== Environment ====
def make_envs(env_id: str, num_envs: int, seed: int, sticky_action_prob: float = 0.0):
    """Vector envs with NEXT_STEP autoreset (gymnasium's default), reset with seeds seed..seed+num_envs-1."""
    wrappers = [lambda env: gym.wrappers.StickyAction(env, sticky_action_prob)] if sticky_action_prob else []
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", wrappers=wrappers)
    envs.action_space.seed(seed)
    envs.single_action_space.seed(seed)
    obs, _ = envs.reset(seed=seed)
    return envs, obs


# ==== Network ====
class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_actions),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def select_actions(q_network, obs, epsilon: float, rng: np.random.Generator, n_actions: int, device):
    """Epsilon-greedy: each env explores independently with probability epsilon."""
    explore = rng.random(len(obs)) < epsilon
    actions = rng.integers(0, n_actions, size=len(obs))
    if not explore.all():
        with torch.inference_mode():
            q = q_network(torch.as_tensor(obs, dtype=torch.float32, device=device))
        actions = np.where(explore, actions, q.argmax(dim=1).cpu().numpy())
    return actions


# ==== Replay buffer ====
class Batch(NamedTuple):
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    discount: torch.Tensor


class ReplayBuffer:
    """Preallocated circular buffer of (obs, action, reward, next_obs, terminated, discount), on
    `device`: n-step transitions from NStepQueue, whose reward is a sum and discount gamma^m.

    `terminated` is stored, not `done`: a truncated transition keeps its bootstrap (classic bug:
    treating the time limit as a terminal state).
    """

    def __init__(self, capacity: int, obs_dim: int, device: torch.device):
        self.capacity, self.device = capacity, device
        self.obs = torch.zeros((capacity, obs_dim), dtype=torch.float32, device=device)
        self.next_obs = torch.zeros((capacity, obs_dim), dtype=torch.float32, device=device)
        self.actions = torch.zeros(capacity, dtype=torch.long, device=device)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.terminated = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.discount = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.pos, self.size = 0, 0

    @staticmethod
    def nbytes_for(capacity: int, obs_dim: int) -> int:
        return capacity * (2 * obs_dim * 4 + 8 + 4 + 4 + 4)

    @property
    def nbytes(self) -> int:
        return self.nbytes_for(self.capacity, self.obs.shape[1])

    def add(self, obs, actions, rewards, next_obs, *, terminated, discount) -> None:
        """Adds a batch of transitions (numpy arrays with a leading batch dimension)."""
        n = len(actions)
        idx = (self.pos + torch.arange(n)) % self.capacity
        idx = idx.to(self.device)
        self.obs[idx] = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        self.next_obs[idx] = torch.as_tensor(next_obs, dtype=torch.float32, device=self.device)
        self.actions[idx] = torch.as_tensor(actions, dtype=torch.long, device=self.device)
        self.rewards[idx] = torch.as_tensor(rewards, dtype=torch.float32, device=self.device)
        self.terminated[idx] = torch.as_tensor(terminated, dtype=torch.float32, device=self.device)
        self.discount[idx] = torch.as_tensor(discount, dtype=torch.float32, device=self.device)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        # Only filled slots: before wraparound the tail of the arrays is zeros, not experience.
        idx = torch.randint(0, self.size, (batch_size,), generator=generator, device=self.device)
        return Batch(
            self.obs[idx],
            self.actions[idx],
            self.rewards[idx],
            self.next_obs[idx],
            self.terminated[idx],
            self.discount[idx],
        )

    FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated", "discount")

    def state_dict(self) -> dict:
        return {"pos": self.pos, "size": self.size, **{name: getattr(self, name) for name in self.FIELDS}}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = state["pos"], state["size"]
        for name in self.FIELDS:  # in place: the buffer may be on a GPU
            getattr(self, name).copy_(state[name])


class NStepQueue:
    """Per env, the latest transitions whose n-step return is not known yet. A transition leaves as
    (obs, action, discounted reward sum, obs m steps later, terminated, gamma^m) once m = n steps have
    followed it, or at its episode's end with m < n: the sum holds rewards only (no value estimates of
    the states in between) and never runs past an episode's end."""

    def __init__(self, n: int, gamma: float, num_envs: int):
        self.n, self.gamma, self.pending = n, gamma, [deque() for _ in range(num_envs)]

    def push(self, i: int, obs, action, reward, next_obs, terminated: bool, episode_end: bool) -> list:
        """Adds env i's transition; returns the transitions that are complete now."""
        queue, out = self.pending[i], []
        queue.append((obs, action, reward, next_obs, terminated))
        while queue and (len(queue) == self.n or episode_end):
            ret = sum(self.gamma**k * t[2] for k, t in enumerate(queue))
            out.append((queue[0][0], queue[0][1], ret, queue[-1][3], queue[-1][4], self.gamma ** len(queue)))
            queue.popleft()
        return out


# ==== Loss ====
def td_target(rewards, next_q_target, terminated, discount, next_q_online=None):
    """r + discount * Q_target(s', a') unless s' is terminal; truncated transitions still bootstrap.
    An n-step transition's r is its reward sum, s' the state m <= n steps on and discount gamma^m.

    a' = argmax Q_target(s') (DQN), or argmax Q_online(s') when `next_q_online` is given (Double DQN).
    """
    if next_q_online is None:
        next_value = next_q_target.max(dim=1).values
    else:
        next_value = next_q_target.gather(1, next_q_online.argmax(dim=1, keepdim=True)).squeeze(1)
    return rewards + discount * (1.0 - terminated) * next_value


def dqn_loss(q_network, target_network, batch: Batch, double_q: bool):
    """Huber TD loss of a batch and the Q-values of its taken actions."""
    with torch.no_grad():
        next_q_target = target_network(batch.next_obs)
        next_q_online = q_network(batch.next_obs) if double_q else None
        target = td_target(batch.rewards, next_q_target, batch.terminated, batch.discount, next_q_online)
    q_taken = q_network(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    return F.smooth_l1_loss(q_taken, target), q_taken.detach()


# ==== Update ====
def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    """`start` at t=0, `end` from t=duration on, linear in between."""
    return end + (start - end) * max(0.0, 1.0 - t / duration)


def dqn_update(q_network, target_network, optimizer, batch: Batch, double_q: bool):
    """One gradient step on the Huber TD loss; returns its metrics (device tensors: reading one back waits
    for the device, so train() reads them at logging time only), each logged as losses/<key>."""
    loss, q_taken = dqn_loss(q_network, target_network, batch, double_q)
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
    env_id: str,
    episodes: int,
    seed: int,
    device,
    epsilon: float = 0.0,
    video_dir: str | None = None,
    sticky_action_prob: float = 0.0,
) -> Episodes:
    """`episodes` whole episodes, one per env, run in parallel with an epsilon-greedy policy.

    One episode per env: counting the first N episodes to finish across envs would favour short ones.
    """
    envs, obs = make_envs(env_id, episodes, seed, sticky_action_prob)
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
        record_video(q_network, env_id, seed, device, video_dir)
    return Episodes(returns.tolist(), lengths.tolist(), cut.tolist())


def final_evaluation(q_network, env_id: str, args: Args, device, video_dir: str | None) -> Episodes:
    """The reported evaluation: the same episodes and seeds at the end of training and for --eval-checkpoint."""
    return evaluate(
        q_network,
        env_id,
        args.final_eval_episodes,
        args.seed + 100_000,
        device,
        video_dir=video_dir,
        sticky_action_prob=args.sticky_action_prob,
    )


# ==== Training ====
def seed_everything(seed: int, torch_deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


def train(args: Args, obs_dim: int, n_actions: int, run_dir: Path, checkpoint: dict | None = None) -> dict:
    """Trains a Q-network; with a `checkpoint` (--resume) the run continues exactly where it was saved."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    seed_everything(args.seed, args.torch_deterministic)
    q_network = QNetwork(obs_dim, n_actions, args.hidden_size).to(device)
    target_network = QNetwork(obs_dim, n_actions, args.hidden_size).to(device)
    sync_target(q_network, target_network)
    # Created once: rebuilding Adam inside the loop would silently reset its moment estimates.
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, fused=True)
    rb = ReplayBuffer(args.buffer_size, obs_dim, device)
    nstep = NStepQueue(args.n_step, args.gamma, args.num_envs)
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
    # Episodes start at step 0 and again after every checkpoint, seeded by the step: a resumed run
    # restarts them exactly as the uninterrupted run did.
    envs, obs = make_envs(args.env_id, args.num_envs, args.seed + global_step, args.sticky_action_prob)
    # NEXT_STEP autoreset: an env that ended an episode spends its next step resetting.
    autoreset = np.zeros(args.num_envs, dtype=bool)
    ep_return, ep_length = np.zeros(args.num_envs), np.zeros(args.num_envs, dtype=np.int64)
    finite, metrics = torch.ones((), dtype=torch.bool, device=device), {}  # finite: read when logging, no syncs
    while global_step < args.total_timesteps:
        global_step += args.num_envs
        epsilon = linear_schedule(
            args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step
        )
        actions = select_actions(q_network, obs, epsilon, rng, n_actions, device)
        next_obs, rewards, terminations, truncations, _ = envs.step(actions)
        # A checkpoint cuts every episode after this step (gymnasium envs cannot be saved): stored like a time limit.
        cut = (
            args.checkpoint_frequency > 0
            and global_step % args.checkpoint_frequency < args.num_envs
            and global_step < args.total_timesteps
        )

        live = ~autoreset  # envs whose step was a real transition, not a reset
        ep_return[live] += rewards[live]
        ep_length[live] += 1
        for i in np.flatnonzero((terminations | truncations) & live):
            log.episode(global_step, ep_return[i], ep_length[i])
            ep_return[i], ep_length[i] = 0.0, 0
        # The reset step (last obs of one episode -> first obs of the next) is not a transition. A
        # checkpoint cut ends every episode: no transition waits in the queue across it.
        episode_end = terminations | truncations | cut
        complete = []
        for i in np.flatnonzero(live):
            complete += nstep.push(i, obs[i], actions[i], rewards[i], next_obs[i], terminations[i], episode_end[i])
        if complete:
            o, a, r, o2, term, discount = (np.array(x) for x in zip(*complete))
            rb.add(o, a, r, o2, terminated=term, discount=discount)
        autoreset = terminations | truncations
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
                args.env_id,
                args.eval_episodes,
                args.seed + 200_000 + len(log.eval_history) * args.eval_episodes,
                device,
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
            envs.close()  # the unfinished episodes end here, unreported (see make_envs above)
            envs, obs = make_envs(args.env_id, args.num_envs, args.seed + global_step, args.sticky_action_prob)
            autoreset[:], ep_return[:], ep_length[:] = False, 0.0, 0
        log.progress(global_step)
    envs.close()

    start = time.time()
    final = final_evaluation(q_network, args.env_id, args, device, log.video_dir)
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
    return log.finish(global_step, final, time.time() - start, device.type, versions(torch, gym, np), updates=updates)


def evaluate_checkpoint(args: Args, obs_dim: int, n_actions: int) -> dict:
    """--eval-checkpoint: the final evaluation of a saved Q-network, written as a run of its own."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    checkpoint = load_checkpoint(args.eval_checkpoint, "--eval-checkpoint")
    q_network = QNetwork(obs_dim, n_actions, args.hidden_size).to(device)
    load_weights(
        q_network, checkpoint, "q_network", "--eval-checkpoint", args.eval_checkpoint, args, ("env_id", "hidden_size")
    )
    log = RunLog(new_run_dir(args), args, SummaryWriter, checkpoint["global_step"], env_settings(args))
    start = time.time()
    final = final_evaluation(q_network, args.env_id, args, device, log.video_dir)
    log.evaluation(checkpoint["global_step"], final, time.time() - start)
    return log.finish(
        checkpoint["global_step"],
        final,
        0.0,
        device.type,
        versions(torch, gym, np),
        checkpoint=str(args.eval_checkpoint),
        sps=sum(final.lengths) / log.wall_time(),
    )


def main(args: Args) -> dict:
    """Checks everything that can be checked before heavy work, then evaluates, trains or resumes."""
    checkpoint = None
    if args.resume is not None:
        checkpoint = load_checkpoint(resume_path(args.resume), "--resume")
        args = dataclasses.replace(Args(**checkpoint["args"]), resume=args.resume)
    obs_dim, n_actions = check_args(args)
    if args.eval_checkpoint is not None:  # evaluation builds no replay buffer
        return evaluate_checkpoint(args, obs_dim, n_actions)
    nbytes = ReplayBuffer.nbytes_for(args.buffer_size, obs_dim)
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
    return train(args, obs_dim, n_actions, Path(args.resume) if checkpoint else new_run_dir(args), checkpoint)


# ==== Appendix: run bookkeeping (logs, summary, checkpoints, checks; nothing here affects learning) ====
def check_args(args: Args) -> tuple:
    """Stops with a one-line error (exit 2) on input that cannot work; returns (obs_dim, n_actions)."""
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
        "hidden_size",
        "n_step",
    ):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.learning_starts < 0 or args.checkpoint_frequency < 0:
        fail("--learning-starts and --checkpoint-frequency must be 0 or more")
    if args.batch_size > args.buffer_size:
        fail(
            f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}; "
            "lower the batch size or raise the buffer size"
        )
    if not 0.0 < args.gamma <= 1.0 or args.learning_rate <= 0:
        fail("--gamma must be in (0, 1] and --learning-rate positive")
    if not (
        0.0 <= args.end_e <= 1.0
        and 0.0 <= args.start_e <= 1.0
        and 0.0 < args.exploration_fraction <= 1.0
        and 0.0 <= args.sticky_action_prob < 1.0
    ):
        fail(
            "--start-e and --end-e must be in [0, 1], --exploration-fraction in (0, 1], --sticky-action-prob in [0, 1)"
        )
    if args.eval_checkpoint is not None and not Path(args.eval_checkpoint).is_file():
        fail(f"--eval-checkpoint {args.eval_checkpoint} does not exist; pass a file written by --save-model")
    try:
        env = gym.make(args.env_id)
    except gym.error.Error as e:
        fail(f"unknown --env-id {args.env_id!r} ({e}); use a registered gymnasium id such as CartPole-v1")
    obs_space, action_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        fail(
            f"--env-id {args.env_id} has a {type(action_space).__name__} action space; DQN needs a "
            "Discrete one (e.g. CartPole-v1, Acrobot-v1)"
        )
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"--env-id {args.env_id} observations are not flat vectors; this MLP DQN needs a 1-D Box")
    return obs_space.shape[0], int(action_space.n)


def env_settings(args: Args) -> dict:
    """The environment as run, for summary.json."""
    spec = gym.spec(args.env_id)
    return {
        "sticky_action_prob": args.sticky_action_prob,
        "action_set": "the env's Discrete space",
        "noop_max": 0,
        "max_episode_steps": spec.max_episode_steps,
        "life_loss": "not applicable",
        "reward": "raw",
        "autoreset": "next_step",
    }


def record_video(q_network, env_id: str, seed: int, device, video_dir: str) -> None:
    env = gym.wrappers.RecordVideo(
        gym.make(env_id, render_mode="rgb_array"), video_dir, episode_trigger=lambda _: True, disable_logger=True
    )
    obs, _ = env.reset(seed=seed)
    done = False
    while not done:
        with torch.inference_mode():
            q = q_network(torch.as_tensor(obs[None], dtype=torch.float32, device=device))
        obs, _, terminated, truncated, _ = env.step(int(q.argmax()))
        done = terminated or truncated
    env.close()


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
