"""The GSKD lesson's running example (results/gskd_demo.json): CE, KD and KD+GSKD students against the preset's cached
teacher, their checkpoints' GSSMs on one val image, metrics and loss histories. Read by nbs/10_gskd.ipynb.

    python bench/gskd_demo.py --out gskd_demo      (about 3 minutes on 2 CPU cores with the teacher cached)
"""
import argparse, os
os.environ.setdefault('OMP_NUM_THREADS', '2')
from segkd_nb.experiments.exp_gskd import gskd_demo

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='samples', choices=('samples', 'camvid-cpu'))
    ap.add_argument('--steps', type=int, default=300); ap.add_argument('--out', required=True, help='results name (results/NAME.json) or path')
    a = ap.parse_args()
    snap = gskd_demo(a.preset, steps=a.steps, out=a.out)
    print({n: round(100 * m['miou'], 1) for n, m in snap['metrics'].items()})

if __name__ == '__main__': main()
