"""The benchmark report's statistics, as Agarwal et al. 2021 ("Deep Reinforcement Learning at the
Edge of the Statistical Precipice", NeurIPS) define them: the interquartile mean (IQM), percentile-
bootstrap confidence intervals stratified by task, the probability of improvement, and performance
profiles.

Written in numpy, not taken from the authors' `rliable` package: rliable 1.2.0 installs beside the
pinned stack with a clean `pip check`, but does not import there (2026-11-22: its bootstrap needs
arch 7.2.0, whose import fails under pandas 3.1.1 with "deprecate_kwarg() missing 1 required
positional argument"), and it would add 8 packages to every CI install (statsmodels alone is
65 MB). Each statistic below follows rliable's definition in a few vectorized lines;
tests/test_benchmarks.py checks them on hand-computed inputs and against scipy (`trim_mean` for the
IQM, `mannwhitneyu` for the probability of improvement), and their point estimates matched
rliable.metrics (IQM, probability of improvement) on random inputs.

Scores come as a list of per-task arrays of per-run scores; tasks may hold different numbers of
runs (a failed seed leaves a task short). One array is one task.
"""

import numpy as np

CI_LEVEL = 0.95
BOOTSTRAP_REPS = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same runs always give the same report (an unchanged run passes --compare)


def iqm(x, axis=-1):
    """Interquartile mean: drop the lowest and highest 25% (int(0.25 n) values each side), average the
    rest; same as scipy.stats.trim_mean(x, 0.25). With fewer than 4 values it is the mean."""
    x = np.sort(np.asarray(x, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    k = int(0.25 * n)
    return np.take(x, np.arange(k, n - k), axis=axis).mean(axis=axis)


def as_tasks(samples) -> list:
    """A list of per-task float arrays; one flat array or list of numbers is one task."""
    if isinstance(samples, np.ndarray) or np.isscalar(samples[0]):
        samples = [samples]
    return [np.asarray(x, dtype=np.float64) for x in samples]


def stratified_resamples(samples_per_task, reps: int, rng) -> list:
    """Per task, `reps` resamples of its runs drawn with replacement within the task (arrays of shape
    (reps, runs)): the stratified bootstrap; with one task, the ordinary one."""
    return [x[rng.integers(0, len(x), size=(reps, len(x)))] for x in as_tasks(samples_per_task)]


def percentile_interval(values, level: float = CI_LEVEL) -> tuple:
    """The central `level` interval of bootstrap values (along the first axis)."""
    alpha = 1.0 - level
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return (float(lo), float(hi)) if np.ndim(lo) == 0 else (lo, hi)


def bootstrap_ci(
    samples_per_task, statistic=iqm, reps: int = BOOTSTRAP_REPS, level: float = CI_LEVEL, seed: int = BOOTSTRAP_SEED
) -> tuple:
    """Percentile-bootstrap CI of `statistic` of all runs pooled, runs resampled within each task."""
    pooled = np.concatenate(stratified_resamples(samples_per_task, reps, np.random.default_rng(seed)), axis=1)
    return percentile_interval(statistic(pooled, axis=1), level)


def task_means(samples_per_task):
    """The mean score of each task (along the last axis of each task's array, so resamples keep their axis)."""
    return np.stack([x.mean(axis=-1) for x in as_tasks(samples_per_task)], axis=-1)


def bootstrap_task_means_ci(
    samples_per_task,
    statistic=np.median,
    reps: int = BOOTSTRAP_REPS,
    level: float = CI_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> tuple:
    """Percentile-bootstrap CI of `statistic` over the tasks' mean scores (rliable's median and mean: the
    median or mean over games of each game's mean over seeds), runs resampled within each task."""
    resampled = stratified_resamples(samples_per_task, reps, np.random.default_rng(seed))
    return percentile_interval(statistic(task_means(resampled), axis=-1), level)


def bootstrap_diff_ci(
    new, base, statistic=iqm, reps: int = BOOTSTRAP_REPS, level: float = CI_LEVEL, seed: int = BOOTSTRAP_SEED
) -> tuple:
    """Percentile-bootstrap CI of statistic(new) - statistic(base), seeds of each resampled
    independently (the two sets of runs are unpaired: a code change gives a new trajectory)."""
    rng = np.random.default_rng(seed)
    (new_stats,) = stratified_resamples([new], reps, rng)
    (base_stats,) = stratified_resamples([base], reps, rng)
    return percentile_interval(statistic(new_stats, axis=1) - statistic(base_stats, axis=1), level)


def _p_greater(x, y):
    """P(X > Y) for one task, ties counting half: the Mann-Whitney U statistic of x over y divided by
    len(x) * len(y). Leading axes are batches (bootstrap resamples)."""
    x, y = np.asarray(x)[..., :, None], np.asarray(y)[..., None, :]
    return ((x > y) + 0.5 * (x == y)).mean(axis=(-2, -1))


def probability_of_improvement(x_per_task, y_per_task) -> float:
    """P(X > Y): the probability that a run of X beats a run of Y on the same task, averaged over
    tasks (each task weighs the same whatever its score scale)."""
    return float(np.mean([_p_greater(x, y) for x, y in zip(as_tasks(x_per_task), as_tasks(y_per_task))]))


def probability_of_improvement_ci(
    x_per_task, y_per_task, reps: int = BOOTSTRAP_REPS, level: float = CI_LEVEL, seed: int = BOOTSTRAP_SEED
) -> tuple:
    """Percentile-bootstrap CI of P(X > Y), the runs of X and of Y resampled independently within
    each task."""
    rng = np.random.default_rng(seed)
    xs, ys = stratified_resamples(x_per_task, reps, rng), stratified_resamples(y_per_task, reps, rng)
    return percentile_interval(np.mean([_p_greater(x, y) for x, y in zip(xs, ys)], axis=0), level)


def performance_profile(samples_per_task, taus):
    """For each threshold tau, the fraction of runs scoring above tau (strictly, as rliable), averaged
    over tasks; with equal runs per task, rliable's run-score distribution. Leading axes of a task's
    array are batches."""
    taus = np.asarray(taus, dtype=np.float64)
    return np.mean([(x[..., None, :] > taus[:, None]).mean(axis=-1) for x in as_tasks(samples_per_task)], axis=0)


def performance_profile_bands(
    samples_per_task, taus, reps: int = BOOTSTRAP_REPS, level: float = CI_LEVEL, seed: int = BOOTSTRAP_SEED
) -> tuple:
    """(low, high) arrays: the pointwise percentile-bootstrap band of the profile, stratified by task."""
    resampled = stratified_resamples(samples_per_task, reps, np.random.default_rng(seed))
    return percentile_interval(performance_profile(resampled, taus), level)


def human_normalized(score, random_score: float, human_score: float):
    """(score - random) / (human - random): 0 is random play, 1 is the human tester."""
    return (np.asarray(score, dtype=np.float64) - random_score) / (human_score - random_score)
