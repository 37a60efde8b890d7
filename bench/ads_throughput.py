"""ADS scoring throughput relative to a plain teacher forward over the same images, and peak memory at pool sizes 1x and 10x.

    python bench/ads_throughput.py [--preset samples] [--images 48] [--pool 100] [--out results/bench_ads_throughput.json]

Throughput: the same in-memory batches go, round by round (interleaved; the fastest round of each counts, timed in process
CPU time on the CPU so that other jobs on a shared machine do not count, in wall time on a GPU), through
  forward     a plain teacher forward (eval mode, inference_mode),
  ads         `ads_scores`: per-image scoring, hooks on every BN layer, early exit after the last one,
  ads_full    the same without the early exit (the hooks' own cost),
  moments     `image_moments`: what the set-level mode keeps.
Target, reported and not gated: ads / forward throughput >= 0.9.
Memory: each (mode, pool size) runs in a fresh subprocess that streams the pool from disk (the pool's images, repeated
to the size) and reports its peak RSS above its RSS before scoring, and the bytes of what the scorer keeps (glibc is told
to return freed blocks at once, MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_, so that RSS follows live memory). Per-image
scoring keeps N x L floats, so its peak is flat from 1x to 10x; the set-level mode keeps 2 x N x sum(C_l) floats.
Absolute times on shared machines are noise: read the ratios."""
import argparse, json, os, resource, shlex, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
from torch.utils.data import DataLoader
from segkd_nb.config import get_device, seed_everything, load_settings, save_result, command_line
from segkd_nb.data import PoolDataset, collate_skip, image_pool
from segkd_nb.models import build_model
from segkd_nb.dfss import ads_scores, image_moments, set_bn_stats, bn_layers
from _timing import clock, interleaved

def _pool_files(n_min:int=8)->list:
    "The embedded pool's images, or a few generated ones where data_samples/ is absent."
    root = load_settings().path('data_samples')
    files = image_pool(root/'pool'/'images') if root and (root/'pool'/'images').is_dir() else []
    if len(files) >= n_min: return files
    from PIL import Image
    d = Path(tempfile.mkdtemp(prefix='ads_bench_')); r = np.random.default_rng(0)
    for i in range(n_min): Image.fromarray(r.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(d/f'gen_{i:03d}.png')
    return sorted(d.glob('*.png'))

def _teacher(arch:str, width:int, size:tuple, dev)->torch.nn.Module:
    "A teacher of the preset's architecture with running statistics set from the pool (weights random: cost only)."
    seed_everything(0)
    t = build_model(arch, 9, width=width)
    files = _pool_files()
    x = torch.stack([PoolDataset(files[:16], size)[i]['image'] for i in range(min(16, len(files)))])
    return set_bn_stats(t, x).to(dev).eval()

def _reset_peak()->bool:
    "Reset this process's peak RSS (VmHWM) so that setup does not count (Linux >= 4.0)."
    try: Path('/proc/self/clear_refs').write_text('5'); return True
    except OSError: return False

def _peak_kb()->int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmHWM:'): return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def _rss_kb()->int:
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024

def memory_child(a):
    "Score a pool of a.n images in this process; print a JSON line with peak RSS growth and kept bytes."
    dev = get_device(a.device)
    t = _teacher(a.arch, a.width, tuple(a.size), dev)
    files = _pool_files(); paths = [files[i % len(files)] for i in range(a.n)]
    dl = DataLoader(PoolDataset(paths, tuple(a.size)), batch_size=a.batch_size, collate_fn=collate_skip)
    with torch.inference_mode(): t(torch.rand(a.batch_size, 3, *a.size, device=dev))  # warm-up: allocator pools exist before the baseline
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    base = _rss_kb(); t0 = time.perf_counter()
    hwm = _reset_peak()
    if a.mode == 'image':
        r = ads_scores(t, dl); kept = r.per_layer.numel() * r.per_layer.element_size()
    else:
        r = image_moments(t, dl); kept = sum(v.numel() * v.element_size() for d in (r.mean, r.sq) for v in d.values())
    peak = _peak_kb() if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB
    out = {'mode': a.mode, 'n': a.n, 'peak_since_scoring': hwm, 'peak_rss_mb': round(peak / 1024, 1), 'peak_over_base_mb': round((peak - base) / 1024, 1),
           'kept_mb': round(kept / 2**20, 3), 'images_per_s': round(a.n / (time.perf_counter() - t0), 1)}
    if dev.type == 'cuda': out['cuda_peak_mb'] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(out))

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='samples'); ap.add_argument('--images', type=int, default=48, help='images per throughput round')
    ap.add_argument('--batch-size', type=int, default=16); ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--pool', type=int, default=100, help='the 1x pool size of the memory test (10x is 10 times this)')
    ap.add_argument('--out', default=None); ap.add_argument('--device', default='auto')
    ap.add_argument('--child', action='store_true', help=argparse.SUPPRESS); ap.add_argument('--mode', default='image', help=argparse.SUPPRESS)
    ap.add_argument('--n', type=int, default=0, help=argparse.SUPPRESS); ap.add_argument('--arch', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--width', type=int, default=None, help=argparse.SUPPRESS); ap.add_argument('--size', type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child: return memory_child(a)
    from segkd_nb.runs import get_preset
    p = get_preset(a.preset); dev = get_device(a.device)
    t = _teacher(p.teacher_arch, p.teacher_width, p.size, dev)
    files = _pool_files(); ds = PoolDataset([files[i % len(files)] for i in range(a.images)], p.size)
    batches = [b for b in DataLoader(ds, batch_size=a.batch_size, collate_fn=collate_skip)]
    batches = [{**b, 'image': b['image'].to(dev)} for b in batches]
    def forward():
        with torch.inference_mode():
            for b in batches: t(b['image'])
    variants = {'forward': forward, 'ads': lambda: ads_scores(t, batches), 'ads_full': lambda: ads_scores(t, batches, early_exit=False),
                'moments': lambda: image_moments(t, batches)}
    times = interleaved(variants, a.rounds, clock(dev))  # one warm-up call each; CPU time of this process (other jobs do not count)
    med = {k: float(np.min(v)) for k, v in times.items()}  # the least disturbed round
    ips = {k: round(a.images / v, 1) for k, v in med.items()}
    ratio = {k: round(med['forward'] / med[k], 3) for k in ('ads', 'ads_full', 'moments')}
    print(f"teacher {p.teacher_arch} (width {p.teacher_width}, {len(bn_layers(t))} BN layers), {p.size[0]}x{p.size[1]}, batch {a.batch_size}, {dev}, {torch.get_num_threads()} threads")
    for k in variants: print(f"  {k:9s} {ips[k]:8.1f} images/s" + (f"   ratio to forward {ratio[k]:.3f}" if k in ratio else ''))
    print(f"ADS / forward throughput: {ratio['ads']:.3f} (target >= 0.9: {'met' if ratio['ads'] >= 0.9 else 'NOT met'})")
    mem = []
    for mode in ('image', 'set'):
        for n in (a.pool, 10 * a.pool):
            cmd = [sys.executable, __file__, '--child', '--mode', mode, '--n', str(n), '--arch', p.teacher_arch, '--size', *map(str, p.size),
                   '--batch-size', str(a.batch_size), '--device', a.device] + (['--width', str(p.teacher_width)] if p.teacher_width else [])
            env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '131072', 'MALLOC_TRIM_THRESHOLD_': '131072'}  # RSS follows live memory
            r = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            mem.append(json.loads(r.stdout.strip().splitlines()[-1]))
            m = mem[-1]
            print(f"memory  {mode:5s} pool {n:5d}: peak RSS {m['peak_rss_mb']:7.1f} MB (+{m['peak_over_base_mb']:6.1f} MB while scoring), kept {m['kept_mb']:8.3f} MB, {m['images_per_s']} images/s")
    g = {mode: [m for m in mem if m['mode'] == mode] for mode in ('image', 'set')}
    growth = {mode: round(v[1]['peak_over_base_mb'] - v[0]['peak_over_base_mb'], 1) for mode, v in g.items()}
    print(f"peak growth 1x -> 10x: per-image {growth['image']} MB (streaming), set-level {growth['set']} MB (keeps per-image channel moments)")
    out = {'preset': a.preset, 'device': str(dev), 'threads': torch.get_num_threads(), 'teacher': p.teacher_arch, 'size': list(p.size),
           'batch_size': a.batch_size, 'images': a.images, 'rounds': a.rounds, 'images_per_s': ips, 'ratio_to_forward': ratio,
           'target_ratio': 0.9, 'target_met': ratio['ads'] >= 0.9, 'memory': mem, 'peak_growth_1x_to_10x_mb': growth,
           }
    if a.out: save_result(out, a.out, command=command_line([__file__, *(argv if argv is not None else sys.argv[1:])])); print(f"wrote {a.out}")
    return out

if __name__ == '__main__': main()
