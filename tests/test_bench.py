"The experiment scripts in bench/: clear exits on bad or missing input (the experiments themselves are too long for CI)."
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def run(script, *args, **env):
    e = {**os.environ, 'OMP_NUM_THREADS': '1', **env}
    return subprocess.run([sys.executable, str(ROOT/'bench'/script), *args], capture_output=True, text=True, env=e, cwd=ROOT, timeout=300)

def test_dfss_experiment_names_the_missing_real_data(tmp_path):
    r = run('dfss_experiment.py', '--preset', 'camvid-cpu', '--out', str(tmp_path/'r.json'), SEGKD_BSDS_ROOT=str(tmp_path/'nope'), SEGKD_CACHE_DIR=str(tmp_path/'cache'))
    assert r.returncode != 0 and 'not found' in r.stderr and 'bsds_root' in r.stderr, r.stderr[-2000:]

@pytest.mark.parametrize('ks, msg', [('0.1,x', "argument --ks: expected comma-separated numbers, got '0.1,x'"),
                                     ('0.1,2', '--ks 0.1,2.0: each K must be in (0, 1]'), ('0', '--ks 0.0: each K must be in (0, 1]')])
def test_dfss_experiment_refuses_a_bad_k_by_name(tmp_path, ks, msg):
    r = run('dfss_experiment.py', '--ks', ks, '--out', str(tmp_path/'r.json'), SEGKD_RUNS_DIR=str(tmp_path/'runs'))
    assert r.returncode != 0 and msg in r.stderr, r.stderr[-2000:]
    assert not (tmp_path/'r.json').exists() and not (tmp_path/'runs').exists()  # refused before anything ran

def test_unify_experiment_names_the_missing_real_data(tmp_path):
    r = run('unify_experiment.py', '--data', 'camvid-idd', '--out', str(tmp_path/'r.json'), SEGKD_IDD_ROOT=str(tmp_path/'nope'), SEGKD_RUNS_DIR=str(tmp_path/'runs'))
    assert r.returncode != 0 and 'unify_experiment:' in r.stderr and 'not found' in r.stderr, r.stderr[-2000:]

def test_unify_experiment_refuses_a_teacher_shorter_than_its_students():
    r = run('unify_experiment.py', '--data', 'samples', '--teacher-steps', '30', '--student-steps', '20', '--out', 'x.json')
    assert r.returncode != 0 and "at least twice the students'" in r.stderr, r.stderr[-2000:]

def test_interleaved_timing_runs_every_variant_once_per_round():
    sys.path.insert(0, str(ROOT/'bench'))
    from _timing import interleaved, clock
    calls = []
    ts = interleaved({'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}, rounds=3, now=clock(), warmup=1)
    assert calls == ['a', 'b'] * 4 and {k: len(v) for k, v in ts.items()} == {'a': 3, 'b': 3} and all(t >= 0 for v in ts.values() for t in v)
    with pytest.raises(ValueError, match='clock must be one of'): clock(kind='gpu')

def test_d3s2_cost_runs_small(tmp_path):
    r = run('d3s2_cost.py', '--steps', '1', '--rounds', '1', '--batch', '1', '--size', '24x32', '--out', str(tmp_path/'c.json'))
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    res = json.loads((tmp_path/'c.json').read_text())
    assert res['sampling']['unguided']['relative'] == 1.0 and 'greedy 5%' in res['selection_10000x150']

def test_d3s2_grid_names_the_missing_sets(tmp_path):
    r = run('d3s2_grid.py', '--preset', 'samples', '--exp-dir', str(tmp_path/'none'), '--out', str(tmp_path/'g.png'))
    assert r.returncode != 0 and 'not found: run bench/d3s2_experiment.py' in r.stderr and not (tmp_path/'g.png').exists(), r.stderr[-2000:]

def test_gpu_check_runs_tiny_on_the_cpu(tmp_path):
    "bench/gpu_check.py at its CPU smoke size: every row measured, the ratios defined."
    sys.path.insert(0, str(ROOT/'bench'))
    from gpu_check import main
    res = main(['--tiny', '--out', str(tmp_path/'g.json')])
    assert set(res['rows']) == {'student', 'kd', 'cwd'} and all(r['images_per_s'] > 0 for r in res['rows'].values())
    assert all(v > 0 for v in res['kd_step_over_student_plus_teacher'].values())
    assert (tmp_path/'g.json').exists()
