"""DFSS under the protocol: KD on the original images, the whole pool, and random / ADS / ADS+WDPD selections at
K = 5%, 10%, 25% of the pool, paired seeds, with AUROC of the ADS distance per pool source.

    python bench/dfss_experiment.py --preset samples --out dfss_samples
    python bench/dfss_experiment.py --preset camvid-cpu --out dfss_camvid
    python bench/dfss_experiment.py --preset camvid-cpu --width 6 --out dfss_camvid_w6   # a student 9.7 points below the teacher
    python bench/dfss_experiment.py --preset camvid-cpu --ks 0.1 --out dfss_camvid   # one K: 5 rows instead of 11
"""
import argparse, os, sys
os.environ.setdefault('OMP_NUM_THREADS', '1')
from segkd_nb.data import DataError
from segkd_nb.experiments.exp_dfss import run_dfss_protocol, dfss_table, DFSS_KS
from segkd_nb.cli import _numbers

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='samples', choices=('samples', 'camvid-cpu'))
    ap.add_argument('--seeds', type=int, default=8); ap.add_argument('--steps', type=int); ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--ks', type=_numbers(float), default=DFSS_KS, help='comma-separated pool fractions K, e.g. 0.05,0.1,0.25')
    ap.add_argument('--width', type=int, help='student width (default: the preset)')
    ap.add_argument('--out', required=True, help='results name (results/NAME.json) or path')
    a = ap.parse_args()
    if not all(0 < k <= 1 for k in a.ks): sys.exit(f"dfss_experiment: --ks {','.join(map(str, a.ks))}: each K must be in (0, 1]")
    try: res = run_dfss_protocol(a.preset, tuple(range(a.seeds)), ks=a.ks, steps=a.steps, workers=a.workers, out=a.out, width=a.width)
    except DataError as e: sys.exit(f"dfss_experiment: {e}")
    print(dfss_table(res))

if __name__ == '__main__': main()
