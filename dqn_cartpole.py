"""DQN on CartPole-v1 (PyTorch), the whole pipeline in one file.

    python dqn_cartpole.py                        # train with the benchmark defaults
    python dqn_cartpole.py --seed 2 --save-model  # another seed, keep the weights
    python dqn_cartpole.py --eval-checkpoint runs/<run>/dqn_cartpole.pt   # evaluate, no training
    python dqn_cartpole.py --help                 # every option

Mnih et al. 2015 (Nature) DQN: epsilon-greedy acting, a replay buffer, a target network and a Huber
TD loss, here on the easy problem where every component can be checked quickly. Episodes that end
by the time limit (truncation) bootstrap from the last state; episodes that end by failure
(termination) do not. Environments are gymnasium vector envs with NEXT_STEP autoreset, so the step
after an episode ends is a reset, not a transition, and never enters the buffer.
"""

import dataclasses
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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
    run_name: Optional[str] = None
    """name of the run directory under runs/ (default: <env-id>__<script>__<seed>__<unix time>)"""
    cuda: bool = True
    """use CUDA when it is available (the replay buffer and the update then live on the GPU)"""
    torch_deterministic: bool = True
    """make cuDNN deterministic (same seed, same result)"""
    capture_video: bool = False
    """record one greedy evaluation episode to runs/<run-name>/videos/ at the end"""
    save_model: bool = False
    """save the Q-network, target network and optimizer state to runs/<run-name>/dqn_cartpole.pt"""
    eval_checkpoint: Optional[str] = None
    """path of a checkpoint written by --save-model: evaluate it greedily, write a summary, do not train"""

    num_envs: int = 1
    """parallel environments collecting experience"""
    buffer_size: int = 100_000
    """replay buffer capacity in transitions"""
    learning_rate: float = 1e-3
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
    double_q: bool = True
    """Double DQN: the online network picks the next action, the target network values it"""
    hidden_size: int = 256
    """width of the two hidden layers of the Q-network"""
    eval_frequency: int = 5_000
    """environment steps between greedy evaluations (logged to eval/episodic_return)"""
    eval_episodes: int = 10
    """episodes per periodic greedy evaluation"""
    final_eval_episodes: int = 100
    """episodes of the final greedy evaluation reported in summary.json"""


def check_args(args: Args) -> gym.spaces.Space:
    """Stops with a one-line error (exit 2) on input that cannot work; returns the action space."""
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency",
                 "target_network_frequency", "eval_frequency", "eval_episodes", "final_eval_episodes",
                 "hidden_size"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.learning_starts < 0:
        fail(f"--learning-starts must be 0 or more, got {args.learning_starts}")
    if args.batch_size > args.buffer_size:
        fail(f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}; "
             "lower the batch size or raise the buffer size")
    if not 0.0 < args.gamma <= 1.0 or args.learning_rate <= 0:
        fail("--gamma must be in (0, 1] and --learning-rate positive")
    if not (0.0 <= args.end_e <= 1.0 and 0.0 <= args.start_e <= 1.0 and 0.0 < args.exploration_fraction <= 1.0):
        fail("--start-e and --end-e must be in [0, 1], --exploration-fraction in (0, 1]")
    if args.eval_checkpoint is not None and not Path(args.eval_checkpoint).is_file():
        fail(f"--eval-checkpoint {args.eval_checkpoint} does not exist; pass a file written by --save-model")
    try:
        env = gym.make(args.env_id)
    except gym.error.Error as e:
        fail(f"unknown --env-id {args.env_id!r} ({e}); use a registered gymnasium id such as CartPole-v1")
    obs_space, action_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        fail(f"--env-id {args.env_id} has a {type(action_space).__name__} action space; DQN needs a "
             "Discrete one (e.g. CartPole-v1, Acrobot-v1)")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"--env-id {args.env_id} observations are not flat vectors; this MLP DQN needs a 1-D Box")
    return action_space


# ==== Environment ====
def make_envs(env_id: str, num_envs: int, seed: int):
    """Vector envs with NEXT_STEP autoreset (gymnasium's default), reset with `seed`."""
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
    envs.action_space.seed(seed)
    envs.single_action_space.seed(seed)
    obs, _ = envs.reset(seed=seed)
    return envs, obs


# ==== Network ====
class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, n_actions),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def sync_target(q_network: nn.Module, target_network: nn.Module) -> None:
    target_network.load_state_dict(q_network.state_dict())


# ==== Replay buffer ====
class ReplayBuffer:
    """Preallocated circular buffer of (obs, action, reward, next_obs, terminated), on `device`.

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
        self.pos, self.size = 0, 0

    @staticmethod
    def nbytes_for(capacity: int, obs_dim: int) -> int:
        return capacity * (2 * obs_dim * 4 + 8 + 4 + 4)

    def add(self, obs, actions, rewards, next_obs, terminated) -> None:
        """Adds a batch of transitions (numpy arrays with a leading batch dimension)."""
        n = len(actions)
        idx = (self.pos + torch.arange(n)) % self.capacity
        idx = idx.to(self.device)
        self.obs[idx] = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        self.next_obs[idx] = torch.as_tensor(next_obs, dtype=torch.float32, device=self.device)
        self.actions[idx] = torch.as_tensor(actions, dtype=torch.long, device=self.device)
        self.rewards[idx] = torch.as_tensor(rewards, dtype=torch.float32, device=self.device)
        self.terminated[idx] = torch.as_tensor(terminated, dtype=torch.float32, device=self.device)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator):
        # Only filled slots: before wraparound the tail of the arrays is zeros, not experience.
        idx = torch.randint(0, self.size, (batch_size,), generator=generator, device=self.device)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx]


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
    """One gradient step on the Huber TD loss; returns (loss, mean Q of the taken actions)."""
    obs, actions, rewards, next_obs, terminated = batch
    with torch.no_grad():
        next_q_target = target_network(next_obs)
        next_q_online = q_network(next_obs) if double_q else None
        target = td_target(rewards, next_q_target, terminated, gamma, next_q_online)
    q_taken = q_network(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
    loss = F.smooth_l1_loss(q_taken, target)
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
            q = q_network(torch.as_tensor(obs, dtype=torch.float32, device=device))
        actions = np.where(explore, actions, q.argmax(dim=1).cpu().numpy())
    return actions


# ==== Evaluation ====
def evaluate(q_network, env_id: str, episodes: int, seed: int, device, epsilon: float = 0.0,
             video_dir: Optional[str] = None) -> list:
    """Returns of `episodes` whole episodes, one per env, run in parallel with an epsilon-greedy policy.

    One episode per env: counting the first N episodes to finish across envs would favour short ones.
    """
    envs = gym.make_vec(env_id, num_envs=episodes, vectorization_mode="sync")
    envs.action_space.seed(seed)
    obs, _ = envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    returns = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    n_actions = envs.single_action_space.n
    while running.any():
        actions = select_actions(q_network, obs, epsilon, rng, n_actions, device)
        obs, rewards, terminations, truncations, _ = envs.step(actions)
        returns += rewards * running
        running &= ~(terminations | truncations)
    envs.close()
    if video_dir is not None:
        record_video(q_network, env_id, seed, device, video_dir)
    return returns.tolist()


def record_video(q_network, env_id: str, seed: int, device, video_dir: str) -> None:
    env = gym.wrappers.RecordVideo(gym.make(env_id, render_mode="rgb_array"), video_dir,
                                   episode_trigger=lambda _: True, disable_logger=True)
    obs, _ = env.reset(seed=seed)
    done = False
    while not done:
        with torch.inference_mode():
            q = q_network(torch.as_tensor(obs[None], dtype=torch.float32, device=device))
        obs, _, terminated, truncated, _ = env.step(int(q.argmax()))
        done = terminated or truncated
    env.close()


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


def train(args: Args) -> dict:
    action_space = check_args(args)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    probe = gym.make(args.env_id)
    obs_dim, n_actions = probe.observation_space.shape[0], action_space.n
    probe.close()
    seed_everything(args.seed, args.torch_deterministic)
    q_network = QNetwork(obs_dim, n_actions, args.hidden_size).to(device)
    if args.eval_checkpoint is not None:  # read before any run directory exists (bad input)
        checkpoint = load_checkpoint(args.eval_checkpoint, device)
        try:
            q_network.load_state_dict(checkpoint["q_network"])
        except RuntimeError:  # other layer sizes: another --hidden-size, or another env's obs/action sizes
            trained = checkpoint["args"]
            fail(f"--eval-checkpoint {args.eval_checkpoint} does not fit the network of --env-id {args.env_id} "
                 f"--hidden-size {args.hidden_size}; pass --env-id {trained['env_id']} "
                 f"--hidden-size {trained['hidden_size']} as in training")
    else:  # evaluation builds no replay buffer
        check_memory(ReplayBuffer.nbytes_for(args.buffer_size, obs_dim), device, "--buffer-size")
    run_name = args.run_name or f"{args.env_id}__{Path(SCRIPT).stem}__{args.seed}__{int(time.time())}"
    run_dir = Path("runs") / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    video_dir = str(run_dir / "videos") if args.capture_video else None
    versions_ = versions(torch, gym, np)
    eval_seed = args.seed + 100_000  # evaluation episodes are not the training episodes

    if args.eval_checkpoint is not None:
        start = time.time()
        returns = evaluate(q_network, args.env_id, args.final_eval_episodes, eval_seed, device,
                           video_dir=video_dir)
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
    target_network = QNetwork(obs_dim, n_actions, args.hidden_size).to(device)
    sync_target(q_network, target_network)
    # Created once: rebuilding Adam inside the loop would silently reset its moment estimates.
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, fused=True)
    rb = ReplayBuffer(args.buffer_size, obs_dim, device)
    rng = np.random.default_rng(args.seed)
    sample_gen = torch.Generator(device=device).manual_seed(args.seed)

    envs, obs = make_envs(args.env_id, args.num_envs, args.seed)
    # NEXT_STEP autoreset: an env that ended an episode spends its next step resetting.
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
        next_obs, rewards, terminations, truncations, _ = envs.step(actions)

        live = ~autoreset  # envs whose step was a real transition, not a reset
        ep_return[live] += rewards[live]
        ep_length[live] += 1
        for i in np.flatnonzero((terminations | truncations) & live):
            writer.add_scalar("charts/episodic_return", ep_return[i], global_step)
            writer.add_scalar("charts/episodic_length", ep_length[i], global_step)
            recent_returns = (recent_returns + [float(ep_return[i])])[-20:]
            ep_return[i], ep_length[i] = 0.0, 0
        # The reset step (last obs of one episode -> first obs of the next) is not a transition.
        if live.any():
            rb.add(obs[live], actions[live], rewards[live], next_obs[live], terminations[live])
        autoreset = terminations | truncations
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
            returns = evaluate(q_network, args.env_id, args.eval_episodes, eval_seed + evals, device)
            eval_history.append({"step": global_step, "wall_time_s": time.time() - start,
                                 "mean": float(np.mean(returns))})
            writer.add_scalar("eval/episodic_return", np.mean(returns), global_step)
        recent = float(np.mean(recent_returns)) if recent_returns else None
        progress.update(global_step, recent, f" | eval {eval_history[-1]['mean']:.1f}" if eval_history else "")
    envs.close()
    train_time = time.time() - start

    final_returns = evaluate(q_network, args.env_id, args.final_eval_episodes, eval_seed, device,
                             video_dir=video_dir)
    writer.add_scalar("eval/final_episodic_return", np.mean(final_returns), global_step)
    if args.save_model:
        torch.save({"script": SCRIPT, "q_network": q_network.state_dict(),
                    "target_network": target_network.state_dict(), "optimizer": optimizer.state_dict(),
                    "global_step": global_step, "updates": updates, "args": dataclasses.asdict(args)},
                   run_dir / f"{Path(SCRIPT).stem}.pt")
    wall_time = time.time() - start
    summary = write_summary(run_dir, args, args.env_id, global_step, wall_time, global_step / train_time,
                            device.type, final_returns, eval_history, versions_, updates=updates)
    writer.close()
    print(f"[{SCRIPT}] done in {wall_time:.1f} s: final greedy eval over {len(final_returns)} episodes "
          f"mean {summary['final_eval']['mean']:.1f} (min {summary['final_eval']['min']:.0f}); {run_dir}")
    return summary


if __name__ == "__main__":
    train(tyro.cli(Args))
