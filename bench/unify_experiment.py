"""Label-space unification experiments: a teacher per seed, raw and unified pseudo-labels of the second dataset (scored
against its hidden fine labels where it has them), and three students per seed with equal steps (source only, compound
with raw pseudo-labels, compound with unified pseudo-labels), each compared with its teacher.

    python bench/unify_experiment.py --data camvid-idd --teacher-steps 600 --student-steps 600 --out results/unify_camvid_idd.json
    python bench/unify_experiment.py --data camvid-coarse --teacher-steps 600 --student-steps 600 --out results/unify_camvid_coarse.json
    python bench/unify_experiment.py --data samples --out results/unify_samples.json
    python bench/unify_experiment.py --data camvid-idd --teacher-steps 600 --student-steps 600 --weights 1,0.25 --reuse unify_camvid_idd --out results/unify_camvid_idd_w025.json

--weights sets the sampling weights of the source ground truth and the pseudo-labelled set in the compound rows (default 1,1);
such a variant gets its own folder (runs_dir/unify_DATA_wA_B) and, with --reuse, copies the teachers, pseudo-labels and
source-only students of an earlier run of the same data (they do not depend on the weights) instead of training them again.

Resumable: every teacher, pseudo-label folder and student under runs_dir/unify_DATA is skipped once finished.
"""
import argparse, shlex, sys, time
from segkd_nb.config import load_settings, save_result
from segkd_nb.data import DataError
from segkd_nb.experiments.unify import (UnifyConfig, unify_samples_experiment, unify_camvid_coarse_experiment, unify_camvid_idd_experiment,
                            unify_tables)

EXPERIMENTS = {'samples': (unify_samples_experiment, {}),
               'camvid-coarse': (unify_camvid_coarse_experiment, dict(size=(120, 160), base_size=(120, 160))),
               'camvid-idd': (unify_camvid_idd_experiment, dict(size=(120, 160), base_size=(120, 160)))}
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--data', choices=sorted(EXPERIMENTS), default='samples')
ap.add_argument('--teacher-steps', type=int); ap.add_argument('--student-steps', type=int)
ap.add_argument('--seeds', default='0,1,2'); ap.add_argument('--device', default='auto')
ap.add_argument('--weights', default='1,1', help='sampling weights: source ground truth, pseudo-labelled set')
ap.add_argument('--reuse', help='runs_dir folder of an earlier run of the same data whose teachers, pseudo-labels and source-only students to copy')
ap.add_argument('--out', help='results JSON to write')
a = ap.parse_args()
fn, kw = EXPERIMENTS[a.data]
kw |= {k: v for k, v in dict(teacher_steps=a.teacher_steps, student_steps=a.student_steps).items() if v is not None}
w = tuple(float(v) for v in a.weights.split(','))
cfg = UnifyConfig(**kw, seeds=tuple(int(v) for v in a.seeds.split(',')), device=a.device, weights=w)
if cfg.teacher_steps < cfg.student_steps: sys.exit(f"the teacher's schedule ({cfg.teacher_steps}) must be at least the students' ({cfg.student_steps})")
t0 = time.time()
runs = load_settings().path('runs_dir')
out = runs/(f"unify_{a.data.replace('-', '_')}" + ('' if w == (1.0, 1.0) else '_w' + '_'.join(f'{v:g}' for v in w)))
if a.reuse:
    import shutil
    for d in sorted((runs/a.reuse).glob('teacher_s*')) + sorted((runs/a.reuse).glob('pl_s*')) + sorted((runs/a.reuse).glob('source_only_s*')):
        if not (out/d.name).exists(): shutil.copytree(d, out/d.name)  # finished runs: skipped by their config hash
try: res = fn(out, cfg)
except DataError as e: sys.exit(f"unify_experiment: {e}")
res |= {'wall_s': round(time.time() - t0, 1)}
print(unify_tables(res))
if a.out: save_result(res, a.out)
