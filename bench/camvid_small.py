"""Record the real-CamVid check: a small model at reduced resolution against the location prior.

    python bench/camvid_small.py --out results/camvid_small.json
"""
import argparse, shlex, sys
from segkd_nb.config import load_settings, save_result
from segkd_nb.runs import camvid_check

ap = argparse.ArgumentParser(); ap.add_argument('--steps', type=int, default=700); ap.add_argument('--out', default=None)
a = ap.parse_args()
r = camvid_check(load_settings().path('runs_dir')/'camvid_small', steps=a.steps)
print(f"location prior {100*r['prior_miou']:.1f} mIoU; {r['arch']} {100*r['miou']:.1f} mIoU ({r['wall_s']:.0f} s)")
if a.out: save_result(r, a.out)
