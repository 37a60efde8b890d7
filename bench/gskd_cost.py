#!/usr/bin/env python
"""What GSKD costs, measured side by side in one run, against a KD student step and a pixel-pairwise structural loss.

For each feature size s (default 32, 64, 128) the input is s x (stride of the student's 'penultimate' feature),
so with the default `tiny_s` student / `tiny` teacher (stride 4) the inputs are 128, 256 and 512 pixels; with a
stride-8 student (`--student lraspp_mbv3`) they are 256, 512 and 1024. Rows:

- KD step: teacher forward (no grad) + student forward + pixel KD + backward + AdamW step.
- +GSKD step: the same step with the GSKD term added (weight 1); the added time is the cost a user pays.
- GSKD term: the term alone, forward + backward, on leaf features of the same shapes (projection head included).
- PP term / +PP step: the reference GSKD avoids, a pixel-pairwise structural loss: all (hw)^2 pixel pairs at feature
  resolution, cosine-similarity maps [B, hw, hw] of projected student and teacher features, KL of the row softmaxes.

Time: the median over `--repeats` calls after one warm-up, the variants interleaved round-robin; on the CPU it is the
process's CPU time (not wall time), so that other processes on shared cores do not inflate one variant; on CUDA it is
synchronised wall time.

Memory. On CUDA: `torch.cuda.max_memory_allocated` during the call, minus what was allocated before it. On the CPU
there is no allocator counter, so two numbers are given: `saved` = bytes of the tensors autograd keeps for backward
(exact, from `saved_tensors_hooks`, unique storages), and `peak` = the peak increase of the process's resident set
size (RSS) during the call over its level before, sampled every millisecond from /proc (approximate; the allocator
may reuse freed memory). A CPU out-of-memory would kill the process instead of raising, so on the CPU the
pixel-pairwise reference is first checked against `--mem-budget-gb` (its size is predictable: about 7 [B,hw,hw]
float32 matrices, measured 6.7 on the CPU); over budget it retries at batch 1, and over budget at batch 1 it is reported as `OOM (est. X GiB)`
without running. A real allocation failure (CUDA OOM, or a CPU RuntimeError) is caught and reported as `OOM`.

Usage:  OMP_NUM_THREADS=1 python bench/gskd_cost.py [--sizes 32,64,128] [--batch 2] [--repeats 3] [--json out.json]
"""
from __future__ import annotations
import argparse, gc, json, os, platform, shlex, sys, threading, time
from pathlib import Path
import torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _timing import clock, interleaved
from segkd_nb.models import build_model
from segkd_nb.kd import KDTerm
from segkd_nb.kd import to_grid
from segkd_nb.gskd import GSKDTerm, ProjectionHead, point_features

class PixelPairTerm(nn.Module):
    "Reference: pixel-pairwise structural KD over all (hw)^2 pairs (row-softmax KL of cosine-similarity maps)."
    needs = ('teacher',)
    def __init__(self, Ds:int, Dt:int, tau:float=1.0):
        super().__init__(); self.head, self.tau = ProjectionHead(Ds, Dt), tau
    def forward(self, ctx):
        f_t = ctx['t']['penultimate'].detach()                        # [B,Dt,h,w]
        f_s = to_grid(self.head(ctx['s']['penultimate']), f_t.shape[-2:])  # [B,Dt,h,w]
        P_s, P_t = point_features(f_s), point_features(f_t)           # [B,hw,Dt] each
        S_s = P_s @ P_s.transpose(1, 2)                               # [B,hw,hw]
        S_t = P_t @ P_t.transpose(1, 2)                               # [B,hw,hw]
        logp_s = F.log_softmax(S_s / self.tau, -1)                    # [B,hw,hw]
        logp_t = F.log_softmax(S_t / self.tau, -1)                    # [B,hw,hw]
        return self.tau ** 2 * (logp_t.exp() * (logp_t - logp_s)).sum(-1).mean()

def pp_bytes(B:int, hw:int)->int:
    "Predicted peak of the pixel-pairwise term: ~6 float32 [B,hw,hw] matrices alive at once."
    return 7 * B * hw * hw * 4

# ------------------------------------------------------------------ measurement
class RSSPeak:
    "Peak RSS increase during a `with` block, sampled from /proc/self/statm every `dt` seconds."
    def __init__(self, dt=0.001): self.dt, self.page = dt, os.sysconf('SC_PAGE_SIZE')
    def rss(self): return int(open('/proc/self/statm').read().split()[1]) * self.page
    def _run(self):
        while not self._stop.is_set(): self.peak = max(self.peak, self.rss()); time.sleep(self.dt)
    def __enter__(self):
        gc.collect(); self.base = self.peak = self.rss(); self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True); self._t.start(); return self
    def __exit__(self, *a):
        self.peak = max(self.peak, self.rss()); self._stop.set(); self._t.join(); self.delta = self.peak - self.base

class SavedBytes:
    "Bytes of the tensors autograd saves for backward inside a `with` block (unique storages)."
    def __enter__(self):
        self.st = {}
        def pack(t):
            s = t.untyped_storage(); self.st[s.data_ptr()] = s.nbytes(); return t
        self._h = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t); self._h.__enter__(); return self
    def __exit__(self, *a): self._h.__exit__(*a); self.bytes = sum(self.st.values())

def memory(fn, dev)->float:
    "MB: CUDA peak allocation of one call, or the CPU's peak RSS increase (see the module docstring)."
    if dev.type == 'cuda':
        gc.collect(); torch.cuda.empty_cache(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
        fn(); torch.cuda.synchronize(); return (torch.cuda.max_memory_allocated() - base) / 2**20
    with RSSPeak() as r: fn()
    return r.delta / 2**20

def measure(fns:dict, dev, repeats:int, warmup:int=1)->dict:
    "Median time (ms) of each `fn()` over `repeats` interleaved rounds (`_timing.interleaved`), then its memory."
    ts = interleaved(fns, repeats, clock(dev), warmup)
    return {k: {'ms': 1e3 * sorted(v)[len(v) // 2], 'all_ms': [1e3 * t for t in v], 'peak_mb': memory(fns[k], dev)} for k, v in ts.items()}

def is_oom(e:BaseException)->bool:
    return isinstance(e, getattr(torch, 'OutOfMemoryError', ())) or 'out of memory' in str(e).lower() or "can't allocate memory" in str(e).lower()

# ------------------------------------------------------------------ the benchmark
def synthetic_batch(B, H, K, dev, seed=0):
    "Images, block masks with every class present, ~5% ignore, and a teacher that is right everywhere."
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(B, 3, H, H, generator=g)
    m = torch.randint(0, K, (B, 1, 8, 8), generator=g)
    m.view(B, -1)[:, :K] = torch.arange(K)                            # every class present
    mask = F.interpolate(m.float(), size=(H, H), mode='nearest')[:, 0].long()
    mask[torch.rand(B, H, H, generator=g) < 0.05] = 255
    t_logits = 8 * F.one_hot(mask.clamp(max=K - 1), K).permute(0, 3, 1, 2).float()
    return img.to(dev), mask.to(dev), t_logits.to(dev)

def run_size(s, args, dev, student, teacher, stride):
    H = int(s * stride); B = args.batch; K = args.classes
    torch.manual_seed(0)
    img, mask, t_logits = synthetic_batch(B, H, K, dev)
    Ds, Dt = student.feature_dims['penultimate'], teacher.feature_dims['penultimate']
    kd = KDTerm(tau=1.0).to(dev)
    gskd = GSKDTerm(Ds, Dt, n_per_class=args.n_per_class, seed=0).to(dev)
    opts = lambda extra: torch.optim.AdamW(list(student.parameters()) + (list(extra.parameters()) if extra is not None else []), lr=1e-4)

    def step_fn(extra, img=img, mask=mask, t_logits=t_logits):
        opt = opts(extra)
        def f():
            with torch.no_grad(): t = teacher(img)
            t = {**t, 'logits': t_logits}
            ctx = {'image': img, 'mask': mask, 's': student(img), 't': t, 'weight': None}
            loss = kd(ctx) + (extra(ctx) if extra is not None else 0)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return f

    hs = s  # feature grid side
    f_s = torch.randn(B, Ds, hs, hs, device=dev, requires_grad=True)
    f_t = torch.randn(B, Dt, hs, hs, device=dev)
    def term_fn(term, Bt=B):
        ctx = {'s': {'penultimate': f_s[:Bt]}, 't': {'penultimate': f_t[:Bt], 'logits': t_logits[:Bt]}, 'mask': mask[:Bt], 'weight': None}
        def f():
            f_s.grad = None; term.zero_grad(set_to_none=True)
            term(ctx).backward()
        return f
    def saved(term, Bt=B):
        ctx = {'s': {'penultimate': f_s[:Bt]}, 't': {'penultimate': f_t[:Bt], 'logits': t_logits[:Bt]}, 'mask': mask[:Bt], 'weight': None}
        with SavedBytes() as sb: l = term(ctx)
        del l; return sb.bytes / 2**20

    row = {'feat': s, 'input': H, 'batch': B, 'hw': hs * hs}
    student.train(); gskd.train()
    pp = PixelPairTerm(Ds, Dt).to(dev)
    budget = args.mem_budget_gb * 2**30
    Bp = B
    if dev.type == 'cpu' and budget and pp_bytes(Bp, hs * hs) > budget: Bp = 1
    row['pp_batch'] = Bp
    fns = {'kd': step_fn(None), 'kd_gskd': step_fn(gskd), 'gskd': term_fn(gskd)}
    pp_fns = {}
    if dev.type == 'cpu' and budget and pp_bytes(Bp, hs * hs) > budget:
        row['pp'] = row['kd_pp'] = {'oom': f"OOM (est. {pp_bytes(Bp, hs * hs) / 2**30:.1f} GiB > budget {args.mem_budget_gb:g} GiB, batch {Bp})"}
    elif Bp == B: pp_fns = {'pp': term_fn(pp), 'kd_pp': step_fn(pp)}
    else: pp_fns = {'pp': term_fn(pp, Bp), 'kd_b1': step_fn(None, img[:1], mask[:1], t_logits[:1]),
                    'kd_pp': step_fn(pp, img[:1], mask[:1], t_logits[:1])}
    row.update(measure(fns, dev, args.repeats))
    row['gskd']['saved_mb'] = saved(gskd)
    if pp_fns:
        try:
            row.update(measure(pp_fns, dev, args.repeats)); row['pp']['saved_mb'] = saved(pp, Bp)
        except (RuntimeError, MemoryError) as e:
            if not is_oom(e): raise
            row['pp'] = row['kd_pp'] = {'oom': f"OOM (batch {Bp})"}
        finally:
            gc.collect()
            if dev.type == 'cuda': torch.cuda.empty_cache()
    return row

def fmt(row:dict)->list:
    kd = row['kd']['ms']
    def pct(a, base): return f"{100 * (a - base) / base:+.0f}%"
    def mem(d): return f"{d['peak_mb']:.0f}" + (f" / {d['saved_mb']:.1f}" if 'saved_mb' in d else '')
    out = [f"{row['feat']}²", str(row['input']), str(row['batch']), f"{kd:.0f}",
           f"{row['kd_gskd']['ms']:.0f} ({pct(row['kd_gskd']['ms'], kd)})", f"{row['gskd']['ms']:.1f} ({100 * row['gskd']['ms'] / kd:.1f}%)",
           mem(row['gskd'])]
    if 'oom' in row['pp']: return out + [row['pp']['oom'], '', '']
    base = row['kd_b1']['ms'] if 'kd_b1' in row else kd
    pp_step = row['kd_pp']['oom'] if 'oom' in row['kd_pp'] else f"{row['kd_pp']['ms']:.0f} ({pct(row['kd_pp']['ms'], base)})"
    return out + [f"{row['pp']['ms']:.0f} ({100 * row['pp']['ms'] / base:.0f}%)" + ('' if row['pp_batch'] == row['batch'] else ' @b1'),
                  pp_step + ('' if row['pp_batch'] == row['batch'] else ' @b1'), mem(row['pp'])]

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sizes', default='32,64,128', help='feature sizes (side of the square grid), comma-separated')
    ap.add_argument('--student', default='tiny_s'); ap.add_argument('--teacher', default='tiny')
    ap.add_argument('--classes', type=int, default=9, help='classes in the synthetic masks (all present: B = N * classes points)')
    ap.add_argument('--n-per-class', type=int, default=8)
    ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=3); ap.add_argument('--device', default='auto')
    ap.add_argument('--mem-budget-gb', type=float, default=4.0, help='CPU only: pixel-pairwise runs above this predicted size are reported as OOM (0: try anyway)')
    ap.add_argument('--threads', type=int, default=None, help='torch threads (default: torch decides; OMP_NUM_THREADS)')
    ap.add_argument('--json', default=None, help='also write the raw measurements here')
    args = ap.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    dev = torch.device('cuda' if (args.device == 'auto' and torch.cuda.is_available()) else ('cpu' if args.device == 'auto' else args.device))
    student, teacher = build_model(args.student, args.classes).to(dev), build_model(args.teacher, args.classes).to(dev).eval()
    teacher.requires_grad_(False)
    with torch.no_grad(): student.eval(); student(torch.zeros(1, 3, 64, 64, device=dev)); student.train()
    stride = student.strides['penultimate']
    with torch.no_grad(): teacher(torch.zeros(1, 3, 64, 64, device=dev))
    if teacher.strides['penultimate'] != stride: print(f"note: teacher stride {teacher.strides['penultimate']} != student {stride}: features resampled to the teacher's grid")
    t0 = time.time(); rows = []
    print(f"# GSKD cost: student {args.student}, teacher {args.teacher}, {args.classes} classes x N={args.n_per_class} points, "
          f"device {dev} ({torch.get_num_threads()} threads), torch {torch.__version__}, {platform.processor() or platform.machine()}")
    for s in [int(v) for v in args.sizes.split(',')]:
        rows.append(run_size(s, args, dev, student, teacher, stride)); print(f"  measured {s}² in {time.time() - t0:.0f}s", file=sys.stderr)
    mem_col = 'MB peak' if dev.type == 'cuda' else 'MB peak RSS / saved'
    hdr = ['feat', 'input', 'batch', 'KD step ms', '+GSKD step ms (Δ)', 'GSKD term f+b ms (% of KD step)', f'GSKD {mem_col}',
           'PP term f+b ms (% of KD step)', '+PP step ms (Δ)', f'PP {mem_col}']
    table = ['| ' + ' | '.join(hdr) + ' |', '|' + '---|' * len(hdr)] + ['| ' + ' | '.join(fmt(r)) + ' |' for r in rows]
    note = (f"Δ: added time over the KD step (same batch; '@b1': the pixel-pairwise rows ran at batch 1 against a batch-1 KD step). "
            f"Median of {args.repeats} interleaved calls after 1 warm-up, {'process CPU' if dev.type == 'cpu' else 'wall'} time. Total {time.time() - t0:.0f}s wall.")
    print('\n'.join(table)); print('\n' + note)
    if args.json:
        from segkd_nb.config import git_commit, command_line, save_result
        command, commit = command_line(), git_commit()
        md = f"**GSKD cost** (`{command}`, commit `{commit}`, {dev}, {torch.get_num_threads()} threads):\n\n" + '\n'.join(table) + '\n\n' + note
        save_result({'args': vars(args), 'device': str(dev), 'rows': rows, 'markdown': md, 'command': command, 'git': commit}, args.json)
    return rows

if __name__ == '__main__': main()
