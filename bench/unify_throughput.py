"""Pseudo-labelling throughput relative to a plain teacher forward, with and without TTA, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/unify_throughput.py [--arch tiny] [--size 180x240] [--n 12] [--batch 4] [--json out.json]

Rows (images/s, and the ratio to the plain forward):
  forward          model(x)['logits'] under inference_mode: the baseline
  pl (no TTA)      teacher_probs(flip=False, scales=(1,)) + raw and unified pseudo-labels (softmax, one-gather mask, argmax)
  pl (flip)        the same with flip averaging (2 forwards)
  pl (TTA)         flip x scales (0.5, 0.75, 1, 1.5, 2): the authors' setting (10 forwards, ~5.6x the pixels)
  writer (no TTA)  write_pseudo_labels end to end (data loading, PNG encoding, atomic renames) vs forward over the same loader
Target (reported, not gated): pl (no TTA) / forward >= 0.9.
Times are the minimum over rounds in which the rows alternate, on this process's CPU time by default (--clock wall for wall time).
"""
import argparse, json, os, platform, shlex, shutil, sys, tempfile
from pathlib import Path
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _timing import CLOCKS, clock as clock_fn, interleaved
from segkd_nb.data import TaxonomyMapping, camvid_taxonomy, idd_lite_taxonomy, CAMVID_TO_IDD
from segkd_nb.models import build_model
from segkd_nb.unify import (allowed_lut, teacher_probs, raw_pseudo_label, unified_pseudo_label, write_pseudo_labels,
                            write_toy_scenes, paired_dirs, seg_logits, SCALES)

def timeit(fns:dict, reps:int, warmup:bool=True, clock:str='process')->dict:
    """Seconds per call of each function: the minimum over `reps` interleaved rounds (`_timing.interleaved`).
    Interleaving and the minimum make the ratios robust to other processes sharing the cores; the default clock is this
    process's CPU time (everything runs in this process: no loader workers), which other processes do not inflate."""
    return {k: min(v) for k, v in interleaved(fns, reps, clock_fn(kind=clock), int(warmup)).items()}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--arch', default='tiny'); ap.add_argument('--size', default='180x240', help='HxW of the images')
    ap.add_argument('--n', type=int, default=12, help='images per pass'); ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--reps', type=int, default=6); ap.add_argument('--json', default=None)
    ap.add_argument('--clock', choices=sorted(CLOCKS), default='process', help='process CPU time (default) or wall time')
    a = ap.parse_args(argv)
    H, W = map(int, a.size.split('x'))
    torch.manual_seed(0)
    cv, idd = camvid_taxonomy(), idd_lite_taxonomy()
    m = TaxonomyMapping(cv, idd, CAMVID_TO_IDD); lut = allowed_lut(m)
    model = build_model(a.arch, cv.n).eval()
    tmp = Path(tempfile.mkdtemp())
    try:
        root = write_toy_scenes(tmp/'toy', n=a.n, seed=0, H=H, W=W)
        ds = paired_dirs(root/'images', root/'labels', idd, cache=True); ds.check()  # decoded once: the rows compare compute, not disk
        batches = [torch.utils.data.default_collate([ds[j] for j in range(i, min(i + a.batch, len(ds)))]) for i in range(0, len(ds), a.batch)]

        def forward():
            with torch.inference_mode():
                for b in batches: seg_logits(model(b['image']))
        def pl(flip, scales):
            def f():
                for b in batches:
                    p = teacher_probs(model, b['image'], flip=flip, scales=scales)
                    raw_pseudo_label(p); unified_pseudo_label(p, b['mask'], lut)
            return f
        def loader_forward():  # the same data path as the writer, without labelling or writing
            dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, collate_fn=list)
            with torch.inference_mode():
                for b in dl: seg_logits(model(torch.stack([it['image'] for it in b])))
        k = [0]
        def writer():
            k[0] += 1
            write_pseudo_labels(model, ds, m, tmp/f'w{k[0]}', batch_size=a.batch, flip=False, scales=(1,), progress=False)
        rows = timeit({'forward': forward, 'pl (no TTA)': pl(False, (1,)), 'loader + forward': loader_forward, 'writer (no TTA)': writer}, a.reps, clock=a.clock)
        rows |= timeit({'pl (flip)': pl(True, (1,)), 'pl (TTA)': pl(True, SCALES)}, max(1, a.reps // 3), warmup=False, clock=a.clock)  # warm by now
    finally: shutil.rmtree(tmp, ignore_errors=True)

    order = ['forward', 'pl (no TTA)', 'pl (flip)', 'pl (TTA)', 'loader + forward', 'writer (no TTA)']
    rows = {k: rows[k] for k in order}
    ips = {k: a.n / v for k, v in rows.items()}
    base = {k: ('loader + forward' if k == 'writer (no TTA)' else 'forward') for k in rows}
    ratio = {k: ips[k] / ips[base[k]] for k in rows}
    print(f"unify throughput: {a.arch} teacher, {a.n} images {H}x{W}, batch {a.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {a.clock} clock, {platform.processor() or platform.machine()}")
    print(f"{'row':<18}{'img/s':>9}{'ratio':>8}  (relative to)")
    for k in rows: print(f"{k:<18}{ips[k]:>9.2f}{ratio[k]:>8.3f}  ({base[k]})")
    ok = ratio['pl (no TTA)'] >= 0.9
    print(f"target pl (no TTA) / forward >= 0.9: {'met' if ok else 'NOT met'} ({ratio['pl (no TTA)']:.3f}); "
          f"writer end to end: {ratio['writer (no TTA)']:.3f}; TTA costs {1 / ratio['pl (TTA)']:.1f}x")
    res = {'arch': a.arch, 'size': [H, W], 'n': a.n, 'batch': a.batch, 'threads': torch.get_num_threads(), 'torch': torch.__version__,
           'images_per_s': ips, 'ratio': ratio, 'relative_to': base, 'target_no_tta_ratio': 0.9, 'target_met': ok, 'clock': a.clock,
           }
    from segkd_nb.config import save_result, command_line
    if a.json: save_result(res, a.json, command=command_line([__file__, *(argv if argv is not None else sys.argv[1:])]))
    return res

if __name__ == '__main__': main()
