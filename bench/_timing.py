"""The timing loop shared by the benchmarks in bench/: variants interleaved round by round, on a clock that other jobs
on shared cores do not inflate. Each benchmark reduces the per-round times its own way (minimum or median) and says which."""
import time
import torch

CLOCKS = {'process': time.process_time, 'wall': time.perf_counter}

def clock(dev=None, kind:str='process'):
    """A function returning seconds: on CUDA, wall time after a synchronisation; on the CPU, this process's CPU time
    ('process': other processes on the machine do not count) or wall time ('wall')."""
    if dev is not None and torch.device(dev).type == 'cuda':
        def now(): torch.cuda.synchronize(); return time.perf_counter()
        return now
    if kind not in CLOCKS: raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {kind!r}")
    return CLOCKS[kind]

def interleaved(fns:dict, rounds:int, now, warmup:int=1)->dict:
    """Seconds of every call: {name: [s per round]}. Each function first runs `warmup` untimed times; then in each of
    `rounds` rounds every function runs once, so drifting machine load hits all of them alike."""
    for f in fns.values():
        for _ in range(warmup): f()
    ts = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = now(); f(); ts[k].append(now() - t0)
    return ts
