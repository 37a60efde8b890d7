"""Student training-step throughput, KD overhead and data-loader headroom, measured side by side in one run.

    python bench/train_step.py [--preset samples] [--steps 20] [--out results/bench_train_step.json]

Prints: student plain-step images/s; the ratio of a KD step's time to a plain step's (teacher forward + KD term);
and the ratio of data-loader throughput to step throughput (> 1 means the loader is not the bottleneck).
Absolute times on shared machines are noise: read the ratios. Timings interleave the variants round by round."""
import argparse, json, shlex, sys, time
from pathlib import Path
import torch
from segkd_nb.config import get_device, seed_everything, save_result, command_line
from segkd_nb.runs import get_preset
from segkd_nb.datasets import load_split, data_taxonomy
from segkd_nb.models import build_model
from segkd_nb.kd import build_terms
from segkd_nb.train import Trainer, TrainConfig

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='samples'); ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--rounds', type=int, default=3); ap.add_argument('--out', default=None); ap.add_argument('--device', default='auto')
    a = ap.parse_args(argv)
    p = get_preset(a.preset); tax = data_taxonomy(p.data); dev = get_device(a.device)
    ds = load_split(p.data, 'train', p.size)
    for i in range(len(ds)): ds.load(i)  # decode once (cache), as training does after its first epoch
    seed_everything(0)
    teacher = build_model(p.teacher_arch, tax.n, width=p.teacher_width).eval()
    mk = lambda spec, t: Trainer(st := build_model(p.student_arch, tax.n, width=p.student_width),
                                 build_terms(spec, st, t, ce=1.0), TrainConfig(steps=10**6, batch_size=p.batch_size, device=str(dev), progress=False), teacher=t)
    runs = {'plain': mk('', None), 'kd': mk('kd', teacher)}
    loader = torch.utils.data.DataLoader(ds, batch_size=p.batch_size, shuffle=True, drop_last=True, num_workers=0)
    batches = []
    it = iter(loader)
    for _ in range(4): batches.append(next(it))
    def time_steps(tr):
        for i in range(2): tr.train_step(batches[i % 4])  # warm-up
        if dev.type == 'cuda': torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(a.steps): tr.train_step(batches[i % 4])
        if dev.type == 'cuda': torch.cuda.synchronize()
        return (time.perf_counter() - t0) / a.steps
    def time_loader():
        t0, n = time.perf_counter(), 0
        while n < a.steps:
            for b in loader:
                n += 1
                if n >= a.steps: break
        return (time.perf_counter() - t0) / a.steps
    res = {'plain': [], 'kd': [], 'loader': []}
    for r in range(a.rounds):  # interleave so that machine load hits every variant alike
        res['plain'].append(time_steps(runs['plain'])); res['kd'].append(time_steps(runs['kd'])); res['loader'].append(time_loader())
    med = {k: sorted(v)[len(v) // 2] for k, v in res.items()}
    out = {'preset': a.preset, 'device': str(dev), 'threads': torch.get_num_threads(), 'batch_size': p.batch_size, 'size': list(p.size),
           'student': p.student_arch, 'teacher': p.teacher_arch,
           'student_images_per_s': round(p.batch_size / med['plain'], 1),
           'kd_step_over_plain_step': round(med['kd'] / med['plain'], 2),
           'loader_over_step_throughput': round(med['plain'] / med['loader'], 2),
           }
    print(f"student {p.student_arch} step: {out['student_images_per_s']} images/s  (batch {p.batch_size}, {p.size[0]}x{p.size[1]}, {dev}, {out['threads']} threads)")
    print(f"KD step / plain step: {out['kd_step_over_plain_step']}x  (teacher {p.teacher_arch} forward + KD term)")
    print(f"data-loader / step throughput: {out['loader_over_step_throughput']}x  (> 1: the loader keeps up)")
    if a.out: save_result(out, a.out, command=command_line([__file__, *(argv if argv is not None else sys.argv[1:])]))
    return out

if __name__ == '__main__': main()
