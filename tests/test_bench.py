"The experiment scripts in bench/: clear exits on bad or missing input (the experiments themselves are too long for CI)."
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def run(script, *args, **env):
    e = {**os.environ, 'OMP_NUM_THREADS': '1', **env}
    return subprocess.run([sys.executable, str(ROOT/'bench'/script), *args], capture_output=True, text=True, env=e, cwd=ROOT, timeout=300)

def test_dfss_experiment_names_the_missing_real_data(tmp_path):
    r = run('dfss_experiment.py', SEGKD_BSDS_ROOT=str(tmp_path/'nope'))
    assert r.returncode != 0 and 'real data not found' in r.stderr and 'bsds_root' in r.stderr, r.stderr[-2000:]

def test_unify_experiment_names_the_missing_real_data(tmp_path):
    r = run('unify_experiment.py', '--data', 'camvid-idd', SEGKD_IDD_ROOT=str(tmp_path/'nope'))
    assert r.returncode != 0 and 'unify_experiment:' in r.stderr and 'not found' in r.stderr, r.stderr[-2000:]

def test_unify_experiment_refuses_a_teacher_shorter_than_its_students():
    r = run('unify_experiment.py', '--data', 'samples', '--teacher-steps', '10', '--student-steps', '20')
    assert r.returncode != 0 and "must be at least the students'" in r.stderr, r.stderr[-2000:]
