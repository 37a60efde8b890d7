"""A figure from the D3S2 experiment's sets: the class-balanced masks of one budget and seed, their real images, and the
unguided and guided syntheses of the same masks with the same seeds (run bench/d3s2_experiment.py first).

    python bench/d3s2_grid.py --preset camvid-cpu --budget 0.05 --seed 0 --out results/d3s2_camvid_grid.png
"""
import argparse, os, sys
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt, torch
from segkd_nb.d3s2 import load_distilled, show_guidance_grid
from segkd_nb.experiments.exp_d3s2 import d3s2_exp_dir, d3s2_run_name

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--preset', default='samples'); ap.add_argument('--budget', default='0.05'); ap.add_argument('--seed', type=int, default=0)
ap.add_argument('--n', type=int, default=6, help='masks to show'); ap.add_argument('--exp-dir', help='experiment folder (default: runs_dir/d3s2-exp-PRESET)')
ap.add_argument('--out', required=True, help='PNG to write')
a = ap.parse_args()
exp = d3s2_exp_dir(a.preset, a.exp_dir)
rows = {'real': 'balanced real', 'unguided': 'balanced + unguided', 'guided': 'balanced + guided'}
sets = {}
for k, row in rows.items():
    folder = exp/'sets'/d3s2_run_name(row, a.budget, a.seed)
    if not folder.is_dir(): sys.exit(f"d3s2_grid: {folder} not found: run bench/d3s2_experiment.py --preset {a.preset} first")
    sets[k] = load_distilled(folder)
n = min(a.n, len(sets['real']))
masks = torch.stack([sets['real'][i]['mask'] for i in range(n)])  # [n,H,W]
for k, ds in sets.items():  # every row synthesized the same selected masks
    if not all(torch.equal(ds[i]['mask'], masks[i]) for i in range(n)): sys.exit(f"d3s2_grid: the {k} set holds other masks than the real one")
fig = show_guidance_grid({k: torch.stack([ds[i]['image'] for i in range(n)]) for k, ds in sets.items()}, masks, sets['real'].tax, n=n)
fig.savefig(a.out, dpi=56, bbox_inches='tight'); print(f"wrote {a.out} ({Path(a.out).stat().st_size // 1024} KB)")
