"""D3S2 costs: one guided DDIM step relative to an unguided one, and selection time for 10,000 masks x 150 classes.

    python bench/d3s2_cost.py [--batch 8] [--size 96x128] [--steps 5] [--rounds 3] [--out results/d3s2_cost.json]

Sampling: the default `L2IConfig` model (48x64, weights random: cost only) and the `samples` preset's teacher architecture
(`tiny`, 9 classes) as the frozen segmenter, on one batch of masks at `--size`. In one process, round by round
(interleaved; the fastest round of each counts), `sample_l2i` runs `--steps` DDIM steps
  unguided      no guidance,
  seg+feat x0   both terms on every step, gradient w.r.t. x0_hat (the default, `mode='x0'`),
  seg x0        the segmentation term only,
  feat x0       the feature-matching term only,
  seg+feat xt   both terms, gradient through the UNet to x_t (`mode='xt'`),
and the time per step of each is reported relative to the unguided step. On the CPU the clock is process CPU time, so that
other jobs on a shared machine do not count; on a GPU it is wall time after synchronisation.
Selection: a synthetic long-tailed presence table (10,000 x 150, power-law class frequencies) with budgets of 1% and 5%,
for greedy (with and without the near-duplicate penalty), rarest-first and random; and `class_histograms` over 10,000
random 96x128 masks. Reported, not gated. Absolute times on shared machines are noise: read the ratios."""
import argparse, json, os, shlex, sys, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import numpy as np, torch
from segkd_nb.config import get_device, save_result, seed_everything
from segkd_nb.models import build_model
from segkd_nb.l2i import L2I, L2IConfig, sample_l2i
from segkd_nb.d3s2 import (Guidance, GuidanceConfig, longtail_presence, greedy_balanced_select, rarest_first_select, random_select,
                           class_histograms)
from _timing import clock, interleaved

def _hw(s): h, w = s.lower().split('x'); return int(h), int(w)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--batch', type=int, default=8); ap.add_argument('--size', type=_hw, default=(96, 128))
    ap.add_argument('--steps', type=int, default=5); ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--device', default=None); ap.add_argument('--out', default=None)
    a = ap.parse_args(argv)
    dev = get_device(a.device); K = 9
    seed_everything(0)
    model = L2I(L2IConfig(num_classes=K)).to(dev).eval()
    seg = build_model('tiny', K).to(dev).eval()
    with torch.no_grad(): o = seg(torch.rand(1, 3, *a.size, device=dev))
    moments = {l: {'mu': torch.randn(K, o[l].shape[1]), 'var': torch.rand(K, o[l].shape[1]), 'count': torch.ones(K)} for l in ('stage2', 'penultimate')}
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, K, (a.batch, a.size[0] // 8, a.size[1] // 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)  # blocky layouts
    win = dict(t_start=1.0, t_end=0.0, every=1)
    modes = {'unguided': None,
             'seg+feat x0': Guidance(seg, GuidanceConfig(**win), moments, n=K),
             'seg x0': Guidance(seg, GuidanceConfig(lam_feat=0, **win), moments, n=K),
             'feat x0': Guidance(seg, GuidanceConfig(lam_seg=0, **win), moments, n=K),
             'seg+feat xt': Guidance(seg, GuidanceConfig(mode='xt', **win), moments, n=K)}
    sample_l2i(model, masks[:2], steps=2, guidance=modes['seg+feat xt'])  # warm-up (imports, allocator)
    runs = {m: (lambda G=G: sample_l2i(model, masks, steps=a.steps, seeds=0, guidance=G, batch_size=a.batch)) for m, G in modes.items()}
    best = {m: min(v) / a.steps for m, v in interleaved(runs, a.rounds, clock(dev), warmup=0).items()}  # seconds per step, best round
    base = best['unguided']
    sampling = {m: {'s_per_step': round(t, 4), 'relative': round(t / base, 2)} for m, t in best.items()}

    P = longtail_presence(10_000, 150, seed=0)
    sel = {}
    for name, f in [('greedy 1%', lambda: greedy_balanced_select(P, 0.01)), ('greedy 5%', lambda: greedy_balanced_select(P, 0.05)),
                    ('greedy+dup 5%', lambda: greedy_balanced_select(P, 0.05, dup_penalty=0.5)),
                    ('rarest-first 5%', lambda: rarest_first_select(P, 0.05, seed=0)), ('random 5%', lambda: random_select(P, 0.05, seed=0))]:
        t0 = time.process_time(); idx = f(); sel[name] = {'seconds': round(time.process_time() - t0, 3), 'picked': len(idx)}
    m10k = torch.randint(0, 150, (10_000, 96, 128), generator=g, dtype=torch.uint8)
    t0 = time.process_time(); class_histograms(m10k, 150); sel['class_histograms 10,000 x 96x128'] = {'seconds': round(time.process_time() - t0, 3)}

    res = {'device': str(dev), 'threads': torch.get_num_threads(), 'batch': a.batch, 'size': list(a.size), 'model_size': list(model.cfg.size),
           'steps': a.steps, 'rounds': a.rounds, 'clock': 'wall (cuda sync)' if dev.type == 'cuda' else 'process CPU time',
           'sampling': sampling, 'selection_10000x150': sel}
    print(f"one DDIM step, batch {a.batch}, masks {a.size[0]}x{a.size[1]} (model {model.cfg.size[0]}x{model.cfg.size[1]}), {res['clock']} on {dev}:")
    for m, v in sampling.items(): print(f"  {m:12s} {v['s_per_step']*1000:8.1f} ms   x{v['relative']:.2f}")
    print("selection, 10,000 masks x 150 classes:")
    for m, v in sel.items(): print(f"  {m:34s} {v['seconds']:.2f} s")
    if a.out: save_result(res, a.out)
    return res

if __name__ == '__main__': main()
