"""Steps/s and FLOP rate of the compiled PPO update of each MinAtar script, measured in one process.

    python benchmarks/bench_ppo_update.py                                # both scripts, Breakout-MinAtar, 8 updates
    python benchmarks/bench_ppo_update.py --updates 4 --profile /tmp/tr  # and where the CNN's time goes

Times one compiled chunk of `--updates` updates (rollout, GAE, epochs; compile and evaluation left out)
of each script's own make_train at its default Args, one after the other in this process, so the
ratio of the two is measured on one machine at one time. FLOPs per update come from XLA's cost
analysis of its parts (the rollout's forward passes, each minibatch's gradient), so GFLOP/s is the
networks' work per second, environment steps not counted. `--profile DIR` also
traces the last script's chunk and sums the time of XLA's ops by kind (matmuls are `ynn_fusion`).
Run it alone: another job on the 2 cores changes every figure.
"""

import argparse
import collections
import glob
import gzip
import importlib.util
import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]


def load(script: str):
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(script: str, env_id: str, updates: int, profile: Path | None = None) -> dict:
    m = load(script)
    args = m.Args(env_id=env_id)
    env, env_params = m.make_env(env_id)
    net = m.ActorCritic(*m.make_networks(args, env.action_space(env_params).n))
    init, train_chunk = m.make_train(args, env, env_params, net)
    runner = jax.jit(init)(jax.random.PRNGKey(args.seed))
    compiled = jax.jit(train_chunk, static_argnums=1).lower(runner, updates).compile()
    runner, _ = jax.block_until_ready(compiled(runner))  # warm up
    start = time.perf_counter()
    runner, _ = jax.block_until_ready(compiled(runner))
    seconds = time.perf_counter() - start
    steps = updates * args.num_envs * args.num_steps
    # XLA's cost analysis counts a loop's body once, so the update's work is summed from its parts: the
    # rollout's forward passes and every minibatch's gradient (environment steps are not counted).
    batch = args.num_envs * args.num_steps
    obs = jnp.zeros((batch, *env.observation_space(env_params).shape))
    forward = flops_of(lambda p, o: (net.logits(p, o), net.values(p, o)), runner.params, obs)
    minibatch = {k: jnp.zeros(batch // args.num_minibatches) for k in ("log_prob", "value", "advantages", "returns")}
    minibatch |= {"obs": obs[: batch // args.num_minibatches], "action": jnp.zeros(len(minibatch["value"]), int)}

    def loss(params, b):  # the script's own loss at its own coefficients
        return m.ppo_loss(params, net, b, args.clip_coef, args.ent_coef, args.vf_coef, args.norm_adv, args.clip_vloss)[
            0
        ]

    grad = flops_of(jax.grad(loss), runner.params, minibatch)
    flops = updates * (forward + args.update_epochs * args.num_minibatches * grad)
    row = {"script": script, "env_id": env_id, "steps": steps, "seconds": round(seconds, 3)}
    row |= {"steps_per_s": round(steps / seconds), "gflop_per_step": round(flops / steps / 1e9, 4)}
    row["gflop_per_s"] = round(flops / seconds / 1e9, 1)
    if profile is not None:
        with jax.profiler.trace(str(profile), create_perfetto_trace=True):
            jax.block_until_ready(compiled(runner))
        row["op_time_share"] = op_time_share(profile)
    return row


def flops_of(f, *args) -> float:
    return jax.jit(f).lower(*args).compile().cost_analysis()["flops"]


def op_time_share(trace_dir: Path) -> dict:
    """Share of XLA op time per kind of op (the name without its number), from the newest perfetto trace."""
    path = sorted(glob.glob(str(trace_dir / "plugins/profile/*/perfetto_trace.json.gz")))[-1]
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    kinds = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(("$", "Thunk", "Slinky")):
            kinds[re.sub(r"[.\d]+$", "", e["name"])] += e.get("dur", 0)
    total = sum(kinds.values())
    return {k: round(v / total, 3) for k, v in kinds.most_common(6)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scripts", nargs="+", default=["ppo_minatar_jax.py", "ppo_minatar_cnn_jax.py"])
    p.add_argument("--env-id", default="Breakout-MinAtar")
    p.add_argument("--updates", type=int, default=8, help="updates in the timed chunk")
    p.add_argument("--profile", type=Path, help="trace the last script's chunk into this folder")
    a = p.parse_args()
    jax.config.update("jax_platforms", "cpu")
    rows = []
    for i, script in enumerate(a.scripts):
        rows.append(measure(script, a.env_id, a.updates, a.profile if i == len(a.scripts) - 1 else None))
        print(json.dumps(rows[-1]), flush=True)
    for r in rows[1:]:
        print(
            f"{r['script']} / {rows[0]['script']}: steps/s ratio {r['steps_per_s'] / rows[0]['steps_per_s']:.4f}, "
            f"GFLOP/s ratio {r['gflop_per_s'] / rows[0]['gflop_per_s']:.3f}"
        )


if __name__ == "__main__":
    main()
