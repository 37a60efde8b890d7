"""The D3S2 experiment: five rows (random real subset, class-balanced real subset, balanced masks + unguided synthesis,
balanced masks + guided synthesis, the full training set), paired seeds, mean +- std mIoU on the real val set, with the
same number of optimizer steps in every row; also the frozen teacher's agreement with the synthesized images.

    python bench/d3s2_experiment.py --preset samples --budgets 0.1 --seeds 0,1,2,3,4,5,6,7 --workers 2 --out d3s2_samples
    python bench/d3s2_experiment.py --preset camvid-cpu --budgets 0.05,0.1 --seeds 0,1,2,3,4,5,6,7 --workers 2 --out d3s2_camvid
    python bench/d3s2_experiment.py --preset camvid-cpu --budgets 0.05,0.1 --seeds 0,1,2,3,4,5,6,7 --workers 2 --width 6 --out d3s2_camvid_w6  # a student 9.7 points below the teacher

Stages, each resumable and skipped when finished (run them separately to time them):
  1. segkd l2i train --data DATA             the mask-conditioned diffusion model (runs_dir/l2i-DATA)
  2. the frozen teachers of seeds 0 (guides the synthesis) and 1 (scores it), cached; trained here when missing
  3. this script                             distilled sets (runs_dir/d3s2-exp-PRESET/sets/) and students (.../students/)
"""
import argparse, os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
from segkd_nb.d3s2 import GuidanceConfig
from segkd_nb.experiments.exp_d3s2 import run_d3s2_experiment, d3s2_report, D3S2_ROWS
from segkd_nb.cli import _numbers, _count_or_fraction

def main():  # under the main guard: the worker processes are spawned and import this file
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='samples'); ap.add_argument('--budgets', type=_numbers(_count_or_fraction), default='0.1', help='comma-separated pool fractions (0.05) or counts (40)')
    ap.add_argument('--seeds', type=_numbers(int), default='0,1,2,3,4,5,6,7'); ap.add_argument('--workers', type=int, default=2, help='processes, one thread each'); ap.add_argument('--rows', type=_numbers(str), default=','.join(D3S2_ROWS))
    ap.add_argument('--student-steps', type=int); ap.add_argument('--sample-steps', type=int, default=20)
    ap.add_argument('--l2i', help='l2i model folder (default: runs_dir/l2i-DATA)'); ap.add_argument('--out', help='results JSON to write')
    ap.add_argument('--width', type=int, help='student width (default: the preset); the default --exp-dir gets a -wWIDTH suffix')
    ap.add_argument('--scale', type=float, help='step size of the guided row (default: GuidanceConfig().scale)')
    ap.add_argument('--exp-dir', help='experiment folder (default: runs_dir/d3s2-exp-PRESET); use a new one when the settings change')
    a = ap.parse_args()
    res = run_d3s2_experiment(a.preset, budgets=a.budgets, seeds=a.seeds, rows=a.rows, l2i=a.l2i, student_steps=a.student_steps, sample_steps=a.sample_steps, results=a.out,
                              out=a.exp_dir, guidance=GuidanceConfig(scale=a.scale) if a.scale is not None else None, workers=a.workers, width=a.width)
    print(d3s2_report(res))

if __name__ == '__main__': main()
