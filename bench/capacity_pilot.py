"""Why KD shows no effect on CamVid: the cached teacher scored on its own training drive, the held-out drive and val, and
the student alone, KD, DIST and CWD at several student widths (a wider teacher-student gap), 8 paired seeds each.

    python bench/capacity_pilot.py --out capacity_camvid
"""
import argparse, os
os.environ.setdefault('OMP_NUM_THREADS', '1')
from segkd_nb.experiments.exp_gskd import capacity_pilot, capacity_report
from segkd_nb.cli import _numbers

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='camvid-cpu', choices=('samples', 'camvid-cpu'))
    ap.add_argument('--widths', type=_numbers(int), default='6,8,12', help='student widths, comma-separated (the preset uses 12)')
    ap.add_argument('--seeds', type=int, default=8, help='paired seeds (0..N-1)')
    ap.add_argument('--kd-tau', type=float, default=2.0, help="KD's temperature (the GSKD CamVid sweep chose 2)")
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--out', required=True, help='results name (results/NAME.json) or path')
    a = ap.parse_args()
    res = capacity_pilot(a.preset, a.widths, tuple(range(a.seeds)), a.kd_tau, a.workers, out=a.out)
    print(capacity_report(res))

if __name__ == '__main__': main()
