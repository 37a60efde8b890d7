"""GSKD under the protocol: KD temperature and GSKD weight chosen on the held-out split, then the paired table on val
(student, class-balanced CE, KD/CWD/DIST/CIRKD each with and without GSKD, GSKD alone).

    python bench/gskd_experiment.py --preset samples --out gskd_samples
    python bench/gskd_experiment.py --preset camvid-cpu --out gskd_camvid
    python bench/gskd_experiment.py --preset camvid-cpu --width 6 --out gskd_camvid_w6   # a student 9.7 points below the teacher
"""
import argparse, os
os.environ.setdefault('OMP_NUM_THREADS', '1')
from segkd_nb.experiments.exp_gskd import run_gskd_protocol, gskd_report

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='samples', choices=('samples', 'camvid-cpu'))
    ap.add_argument('--seeds', type=int, default=8, help='paired seeds of the table (0..N-1)')
    ap.add_argument('--sweep-seeds', type=int, default=3); ap.add_argument('--workers', type=int, default=2); ap.add_argument('--steps', type=int, help='student steps (default: the preset)')
    ap.add_argument('--width', type=int, help='student width (default: the preset)')
    ap.add_argument('--out', required=True, help='results name (results/NAME.json) or path')
    a = ap.parse_args()
    res = run_gskd_protocol(a.preset, tuple(range(a.seeds)), tuple(range(a.sweep_seeds)), workers=a.workers, steps=a.steps, width=a.width, out=a.out)
    print(gskd_report(res, a.preset))

if __name__ == '__main__': main()
