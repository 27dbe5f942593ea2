"""Wall-clock timing shared by the benchmark scripts (CPU work, or anything
the caller synchronises itself)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List


def wall_times_ms(fn: Callable[[], None], repeats: int, warmup: int) -> List[float]:
    """Milliseconds of each of ``repeats`` calls of fn, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def interleaved_medians_ms(fns: Dict[str, Callable[[], None]], repeats: int, blocks: int,
                           warmup: int = 2, settle_s: float = 0.05) -> Dict[str, float]:
    """Median milliseconds of each fn over ``repeats`` timed calls, taken in
    ``blocks`` blocks per fn with the fns taking turns (the order reversed
    on every other pass), so that a machine whose speed drifts or jumps
    (a shared VM: 1.6x between minutes here) slows every fn alike and their
    ratios hold. Each block starts after a pause and ``warmup`` untimed
    calls: onnxruntime's and OpenMP's worker threads spin for a while after
    a call and would take a core from the next library's first calls
    (measured: 48-67 ms for dcn's first forward right after onnxruntime)."""
    per_block = max(1, -(-repeats // blocks))
    times: Dict[str, List[float]] = {name: [] for name in fns}
    names = list(fns)
    for b in range(blocks):
        for name in (names if b % 2 == 0 else names[::-1]):
            time.sleep(settle_s)
            times[name] += wall_times_ms(fns[name], per_block, warmup)
    return {name: statistics.median(ts) for name, ts in times.items()}
