"""Label-space unification under the protocol: per paired seed a teacher, raw and unified pseudo-labels of the second
dataset, students (source only, compound raw / unified, and 2x rows with equal source exposure) and the oracle trained on
the second dataset's own labels.

    python bench/unify_experiment.py --data samples --out unify_samples
    python bench/unify_experiment.py --data camvid-idd --out unify_camvid_idd
"""
import argparse, os, sys
os.environ.setdefault('OMP_NUM_THREADS', '1')
from segkd_nb.data import DataError
from segkd_nb.experiments.exp_unify import run_unify_protocol, unify_tables, EXPERIMENTS

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data', choices=sorted(EXPERIMENTS), default='samples')
    ap.add_argument('--teacher-steps', type=int); ap.add_argument('--student-steps', type=int)
    ap.add_argument('--seeds', type=int, default=8); ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--out', required=True, help='results name (results/NAME.json) or path')
    a = ap.parse_args()
    over = {k: v for k, v in dict(teacher_steps=a.teacher_steps, student_steps=a.student_steps).items() if v is not None}
    if over.get('teacher_steps', 800) < 2 * over.get('student_steps', 400): sys.exit("unify_experiment: the teacher's schedule must be at least twice the students' (the 2x rows train as long as the teacher)")
    try: res = run_unify_protocol(a.data, tuple(range(a.seeds)), a.workers, a.out, **over)
    except DataError as e: sys.exit(f"unify_experiment: {e}")
    print(unify_tables(res))

if __name__ == '__main__': main()
