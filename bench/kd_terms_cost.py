#!/usr/bin/env python
"""What each segmentation KD loss term costs, measured side by side in one run: its forward + backward time as a share
of a KD step, and its peak memory, at 32², 64² and 128² loss grids.

For a loss grid of s x s cells the input is 8s x 8s (every term runs on the stride-8 grid by default), so the default
sizes mean inputs of 256, 512 and 1024 pixels. Rows:

- KD step: teacher forward (no grad) + student forward + pixel KD (`kd`, stride 8) + backward, with the real models
  (default `tiny_s` student, `tiny` teacher) on random images of 8s x 8s. No optimizer step.
- one row per term (built by `build_terms` with its registered defaults, so connectors, generators, heads and memory
  queues are included): the term alone, forward + backward, on tensors BUILT DIRECTLY with the shapes a stride-8
  network gives at that input: logits [B,K,8s,8s] (SegNet upsamples them to the input) and the 'penultimate' and
  'stage4' features [B,D,s,s] with each model's channel count D, the student's as leaves that require grad; masks with
  blocks of all classes and ~5% ignore; teacher logits that are right almost everywhere (GSKD's filter keeps points).

Time: the median over `--repeats` rounds after one warm-up, all rows interleaved round by round (`_timing.interleaved`),
so drifting load on shared cores hits every row alike; on the CPU it is the process's CPU time, on CUDA synchronised wall
time. The share is the term's median over the KD step's median at the same size.

Memory. On CUDA: `torch.cuda.max_memory_allocated` during one call, minus what was allocated before it. On the CPU there
is no allocator counter; two numbers are given, as in bench/gskd_cost.py (whose probes are reused): `peak` = the peak
increase of the process's resident set size during one call, sampled every millisecond from /proc (approximate: the
allocator reuses freed memory, so small terms can read 0), and `saved` = bytes of the tensors autograd keeps for the
backward (exact, unique storages). The relation terms are quadratic in the cells: on the CPU a term whose predicted size
(`predicted_bytes`) is over `--mem-budget-gb` is not run and reads `skipped (est. X GiB)`; a real allocation failure is
caught and reported as `OOM`.

Usage:  OMP_NUM_THREADS=1 python bench/kd_terms_cost.py [--sizes 32,64,128] [--batch 2] [--repeats 3] [--json OUT]
"""
from __future__ import annotations
import argparse, gc, json, os, platform, shlex, sys, time
from pathlib import Path
import torch, torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _timing import clock, interleaved
from gskd_cost import RSSPeak, SavedBytes, is_oom
from segkd_nb.models import build_model
from segkd_nb.kd import build_terms, KDTerm
import segkd_nb.baselines, segkd_nb.gskd  # their terms join the registry

TERMS = ('kd', 'cwd', 'dist', 'fitnet', 'at', 'mgd', 'cwdf', 'skd', 'ifvd', 'cirkd', 'cirkd:memory=20000', 'gskd')

def predicted_bytes(spec:str, B:int, s:int)->int:
    "Rough peak of the quadratic terms: CIRKD ~8 float32 [B,N,N] blocks alive per image pair, SKD ~6 [B,N',N'] after 2x2 pooling."
    N = s * s
    if spec.startswith('cirkd'): return 8 * B * N * N * 4
    if spec.startswith('skd'): return 6 * B * (N // 4) ** 2 * 4
    return 0

def memory_mb(fn, dev)->float:
    "MB: CUDA peak allocation of one call over what was allocated before it, or the CPU's peak RSS increase."
    if dev.type == 'cuda':
        gc.collect(); torch.cuda.empty_cache(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
        fn(); torch.cuda.synchronize(); return (torch.cuda.max_memory_allocated() - base) / 2**20
    with RSSPeak() as r: fn()
    return r.delta / 2**20

def synthetic(B:int, s:int, K:int, dims_s:dict, dims_t:dict, dev, seed:int=0)->dict:
    "A trainer context with the shapes a stride-8 network gives at input 8s (see the module docstring)."
    g = torch.Generator().manual_seed(seed)
    H = 8 * s
    m = torch.randint(0, K, (B, 1, 8, 8), generator=g); m.view(B, -1)[:, :K] = torch.arange(K)  # every class present
    mask = F.interpolate(m.float(), size=(H, H), mode='nearest')[:, 0].long()
    mask[torch.rand(B, H, H, generator=g) < 0.05] = 255
    t_logits = 8 * F.one_hot(mask.clamp(max=K - 1), K).permute(0, 3, 1, 2).float() + torch.randn(B, K, H, H, generator=g)
    feats = lambda dims: {f: torch.randn(B, dims[f], s, s, generator=g) for f in ('penultimate', 'stage4')}
    st = {'logits': torch.randn(B, K, H, H, generator=g), **feats(dims_s)}
    te = {'logits': t_logits, **feats(dims_t)}
    st = {k: v.to(dev).requires_grad_(True) for k, v in st.items()}
    return {'image': torch.zeros(B, 3, H, H, device=dev), 'mask': mask.to(dev), 's': st, 't': {k: v.to(dev) for k, v in te.items()},
            'weight': None, 'progress': 0.5}

def run_size(s:int, args, dev, student, teacher)->dict:
    "Measure the KD step and every term at one grid size."
    B, K = args.batch, args.classes
    torch.manual_seed(0)
    ctx = synthetic(B, s, K, student.feature_dims, teacher.feature_dims, dev)
    img = torch.rand(B, 3, 8 * s, 8 * s, device=dev)
    kd = KDTerm().to(dev)
    def kd_step():
        with torch.no_grad(): t = teacher(img)
        loss = kd({'image': img, 'mask': ctx['mask'], 's': student(img), 't': t})
        student.zero_grad(set_to_none=True); loss.backward()
    def term_step(term):
        def f():
            for v in ctx['s'].values(): v.grad = None
            term.zero_grad(set_to_none=True)
            term(ctx).backward()
        return f
    row = {'feat': s, 'input': 8 * s, 'batch': B, 'terms': {}}
    fns, terms = {'KD step': kd_step}, {}
    for spec in args.terms:
        est = predicted_bytes(spec, B, s)
        if dev.type == 'cpu' and args.mem_budget_gb and est > args.mem_budget_gb * 2**30:
            row['terms'][spec] = {'skipped': f"skipped (est. {est / 2**30:.0f} GiB)"}; continue
        w, term = next(iter(build_terms(spec, student, teacher).values()))
        terms[spec] = term.to(dev).train()
        fns[spec] = term_step(terms[spec])
    try: ts = interleaved(fns, args.repeats, clock(dev), warmup=1)
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e): raise
        return {**row, 'oom': str(e)[:200]}
    med = lambda v: sorted(v)[len(v) // 2]
    row['kd_step'] = {'ms': 1e3 * med(ts['KD step']), 'all_ms': [1e3 * t for t in ts['KD step']], 'peak_mb': memory_mb(kd_step, dev)}
    for spec, term in terms.items():
        r = {'ms': 1e3 * med(ts[spec]), 'all_ms': [1e3 * t for t in ts[spec]], 'share': med(ts[spec]) / med(ts['KD step']),
             'peak_mb': memory_mb(fns[spec], dev), 'params': sum(p.numel() for p in term.parameters())}
        if dev.type == 'cpu':
            with SavedBytes() as sb: l = term(ctx)
            del l; r['saved_mb'] = sb.bytes / 2**20
        row['terms'][spec] = r
    del terms, fns; gc.collect()
    return row

def table(rows:list, dev)->list:
    "Markdown lines: a row per term, for each size its time (share of the KD step) and memory."
    mem = 'MB' if dev.type == 'cuda' else 'MB peak RSS / saved'
    hdr = ['term'] + [x for r in rows for x in (f"{r['feat']}² ({r['input']} px): f+b ms (% of KD step)", mem)]
    out = ['| ' + ' | '.join(hdr) + ' |', '|' + '---|' * len(hdr)]
    out.append('| KD step | ' + ' | '.join(f"{r['kd_step']['ms']:.0f} | {r['kd_step']['peak_mb']:.0f}" for r in rows) + ' |')
    for spec in rows[0]['terms']:
        cells = []
        for r in rows:
            d = r['terms'][spec]
            if 'skipped' in d: cells += [d['skipped'], '']; continue
            m = f"{d['peak_mb']:.0f}" + (f" / {d['saved_mb']:.1f}" if 'saved_mb' in d else '')
            cells += [f"{d['ms']:.1f} ({100 * d['share']:.1f}%)", m]
        out.append(f'| `{spec}` | ' + ' | '.join(cells) + ' |')
    return out

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sizes', default='32,64,128', help='loss-grid sides (input = 8 x side), comma-separated')
    ap.add_argument('--terms', default=','.join(TERMS), help='loss specs of the terms, comma-separated')
    ap.add_argument('--student', default='tiny_s'); ap.add_argument('--teacher', default='tiny')
    ap.add_argument('--classes', type=int, default=9); ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=3); ap.add_argument('--device', default='auto')
    ap.add_argument('--mem-budget-gb', type=float, default=4.0, help='CPU only: terms predicted above this are not run (0: run all)')
    ap.add_argument('--json', default=None, help='also write the measurements, the command and the commit here')
    args = ap.parse_args(argv)
    args.terms = [t for t in args.terms.split(',') if t]
    dev = torch.device('cuda' if (args.device == 'auto' and torch.cuda.is_available()) else ('cpu' if args.device == 'auto' else args.device))
    student = build_model(args.student, args.classes).to(dev).train()
    teacher = build_model(args.teacher, args.classes).to(dev).eval().requires_grad_(False)
    t0, rows = time.time(), []
    print(f"# KD term cost: student {args.student}, teacher {args.teacher}, {args.classes} classes, batch {args.batch}, "
          f"device {dev} ({torch.get_num_threads()} threads), torch {torch.__version__}, {platform.processor() or platform.machine()}")
    for s in [int(v) for v in args.sizes.split(',')]:
        rows.append(run_size(s, args, dev, student, teacher)); print(f"  measured {s}² in {time.time() - t0:.0f}s", file=sys.stderr)
    lines = table(rows, dev)
    note = (f"Median of {args.repeats} interleaved rounds after 1 warm-up, {'process CPU' if dev.type == 'cpu' else 'wall'} time; "
            f"KD step = teacher forward + student forward/backward + pixel KD with the real models; terms on directly built "
            f"stride-8 tensors (bench/kd_terms_cost.py docstring). Total {time.time() - t0:.0f}s wall.")
    print('\n'.join(lines)); print('\n' + note)
    if args.json:
        from segkd_nb.config import git_commit
        env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if 'OMP_NUM_THREADS' in os.environ else ''
        command = env + 'python bench/kd_terms_cost.py ' + shlex.join(sys.argv[1:] if argv is None else argv)
        commit = git_commit(Path(__file__).resolve().parents[1])
        md = f"**KD term cost** (`{command}`, commit `{commit}`, {dev}, {torch.get_num_threads()} thread(s)):\n\n" + '\n'.join(lines) + '\n\n' + note
        Path(args.json).write_text(json.dumps({'args': vars(args), 'device': str(dev), 'terms': args.terms, 'rows': rows,
                                               'command': command, 'git': commit, 'markdown': md}, indent=1))
    return rows

if __name__ == '__main__': main()
