"""DFSS on real data: the cached CamVid teacher (preset camvid-cpu, trained on sequences 0006R0 + 0016E5 only) distils
students from an auxiliary pool of the 62 unseen 0001TP train frames (labels unused), BSDS500 photos and IDD-Lite train
frames; every row gets the same optimizer steps and paired seeds; students are scored on CamVid val. Also the AUROC of
the ADS distance, in-distribution (0001TP) against each other source, for each scoring mode.

    python bench/dfss_experiment.py --steps 500 --seeds 0,1,2 --out results/dfss_camvid.json

Resumable: finished student runs (runs_dir/dfss-camvid/ROW-sSEED) are skipped. Needs the camvid, idd and bsds roots of
settings.ini; exits with a message where one is missing.
"""
import argparse, os, shlex, sys, time
from pathlib import Path
import torch
from torch.utils.data import DataLoader
from segkd_nb.config import load_settings, load_json, save_result
from segkd_nb.data import PoolDataset, collate_skip, image_pool
from segkd_nb.runs import get_preset, cached_teacher
from segkd_nb.datasets import load_split, data_taxonomy, CAMVID_HOLDOUT
from segkd_nb.train import TrainConfig
from segkd_nb.dfss import (pool_paths, moment_distances, image_moments, ads_greedy, ads_select, auroc, _NORMS)
from segkd_nb.experiments.dfss import dfss_experiment, dfss_table, DFSS_ROWS

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--steps', type=int, default=500, help='optimizer steps of every student row')
ap.add_argument('--seeds', default='0,1,2'); ap.add_argument('--rows', default=','.join(DFSS_ROWS))
ap.add_argument('--k', type=int, default=None, help='selection size (default: the number of in-distribution pool images)')
ap.add_argument('--out', help='results JSON to write')
a = ap.parse_args()

s = load_settings()
roots = {k: s.path(k) for k in ('camvid_root', 'idd_root', 'bsds_root')}
missing = [f"{k} ({p})" for k, p in roots.items() if p is None or not p.is_dir()]
if missing: sys.exit(f"dfss_experiment: real data not found: {', '.join(missing)}; set them in settings.ini")

def link_folder(dst:Path, files:list)->Path:
    "A folder of symlinks (built beside, then renamed into place), so a pool source has its own name and no copy is made."
    if dst.is_dir() and len(list(dst.iterdir())) == len(files): return dst
    tmp = dst.with_name(dst.name + '.tmp'); tmp.mkdir(parents=True, exist_ok=True)
    for f in files:
        l = tmp/f.name
        if not l.exists(): l.symlink_to(f.resolve())
    if dst.exists():
        for l in dst.iterdir(): l.unlink()
        dst.rmdir()
    tmp.rename(dst); return dst

cam = roots['camvid_root']/'train'/'images'
cam_files = image_pool(cam)
base = s.path('cache_dir')/'dfss-camvid'
pool = [link_folder(base/'pool'/'camvid_0001TP', [f for f in cam_files if f.name.startswith(CAMVID_HOLDOUT)]),
        link_folder(base/'pool'/'bsds500', image_pool(roots['bsds_root']/'images')),
        link_folder(base/'pool'/'idd_lite', image_pool(roots['idd_root']/'train'/'images'))]
original = link_folder(base/'original', [f for f in cam_files if not f.name.startswith(CAMVID_HOLDOUT)])

p = get_preset('camvid-cpu')
teacher, t_dir = cached_teacher(p)
teacher.eval()
tax = data_taxonomy('camvid')
t0 = time.time()

# separation: in-distribution (0001TP) against each other source, for every scoring mode
paths, ids = pool_paths(pool)
src = [i.split('/')[0] for i in ids]
n_in = sum(x == 'camvid_0001TP' for x in src)
dl = DataLoader(PoolDataset(paths, p.size, ids), batch_size=16, collate_fn=collate_skip)
mom = image_moments(teacher, dl)  # one pass: per-image channel moments give every norm's per-image distance
scores = {f'image, norm={n}': moment_distances(mom, n).sum(1).float() for n in _NORMS}
rank = torch.empty(len(mom)); rank[ads_greedy(mom, 1.0)[0]] = torch.arange(len(mom), dtype=torch.float)  # join position
scores['set, greedy rank'] = rank
sep = {}
for mode, d in scores.items():
    sep[mode] = {}
    for other in ('bsds500', 'idd_lite', 'all'):
        keep = torch.tensor([x == 'camvid_0001TP' or other in (x, 'all') for x in src])
        is_out = torch.tensor([x != 'camvid_0001TP' for x in src])[keep]
        sep[mode][other] = auroc(d[keep], is_out)
print('AUROC (0001TP vs ...):', {m: {k: round(v, 3) for k, v in r.items()} for m, r in sep.items()})
k = a.k or n_in
top = ads_select(scores['image, norm=none'], k).tolist()
sel_by_src = {x: sum(src[i] == x for i in top) for x in ('camvid_0001TP', 'bsds500', 'idd_lite')}
print(f'ADS top-{k} by source:', sel_by_src)

res = dfss_experiment(teacher, pool, load_split('camvid', 'val', p.size), original=original, rows=tuple(a.rows.split(',')), k=k,
                      seeds=tuple(int(v) for v in a.seeds.split(',')), arch=p.student_arch, width=p.student_width,
                      cfg=TrainConfig(steps=a.steps, batch_size=p.batch_size, lr=p.lr), size=p.size, run_dir=s.path('runs_dir')/'dfss-camvid',
                      tax=tax, meta={'data': 'camvid', 'teacher_dir': t_dir.name}, in_dist=lambda i: not str(i).startswith(('bsds500/', 'idd_lite/')))  # CamVid frames: the 0001TP pool part, or the teacher's own (kd-original)
t_metrics = load_json(t_dir/'metrics.json')
res |= {'teacher': {'dir': t_dir.name, 'arch': p.teacher_arch, 'miou': t_metrics['miou'], 'per_class_iou': t_metrics['per_class_iou']},
        'pool': {x: sum(y == x for y in src) for x in ('camvid_0001TP', 'bsds500', 'idd_lite')}, 'ads_topk_by_source': sel_by_src,
        'separation_auroc': sep, 'wall_s': round(time.time() - t0, 1)}
print(dfss_table(res)); print(f"teacher mIoU {100*t_metrics['miou']:.1f}")
if a.out: save_result(res, a.out)
