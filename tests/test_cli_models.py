"""Through the command line: every loss term (alone and with GSKD) distils a student; a user's own nn.Module, defined in a
file, with weights saved on a GPU machine, serves as the teacher of every command (eval, distill, ads, unify, d3s2) in a
fresh process."""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import numpy as np, pytest, torch
from segkd_nb.cli import main
from segkd_nb.data import Taxonomy, _write_pair
from segkd_nb.models import build_model, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SEGKD = str(Path(sys.executable).parent/'segkd')
TERMS = ['kd', 'cwd', 'dist', 'cirkd', 'skd', 'ifvd', 'at', 'fitnet', 'mgd', 'cwdf', 'gskd']

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A 3-class dataset folder (train/ val/ of 64x64 scenes, taxonomy.json) and a small teacher checkpoint for it."
    d = tmp_path_factory.mktemp('tiny'); rng = np.random.default_rng(0)
    for split, n in (('train', 6), ('val', 3)):
        for i in range(n):
            lbl = np.zeros((64, 64), np.uint8); lbl[20:44, 10 + i:40 + i] = 1; lbl[:12] = 2
            img = (rng.random((64, 64, 3)) * 60 + np.stack([lbl * 80, (lbl == 2) * 120, lbl * 10], -1)).astype(np.uint8)
            _write_pair(d/split, f'{split}{i}', img, lbl)
    tax = Taxonomy('tiny3', ['ground', 'box', 'sky']); tax.save(d/'taxonomy.json')
    torch.manual_seed(0); save_checkpoint(d/'teacher.pt', build_model('tiny', 3, width=8), taxonomy=tax)
    return d

@pytest.mark.parametrize('loss', TERMS + [f'{t}+gskd' for t in TERMS if t != 'gskd'])
def test_distill_every_term_two_steps(loss, tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('SEGKD_RUNS_DIR', str(tmp_path))
    main(['distill', '--data', str(tiny), '--size', '64x64', '--teacher', str(tiny/'teacher.pt'), '--loss', loss, '--steps', '2', '--batch-size', '2', '--run', 'r'])
    m = json.loads((tmp_path/'r'/'metrics.json').read_text())
    assert 0 <= m['miou'] <= 1 and m['steps'] == 2
    h = json.loads((tmp_path/'r'/'history.json').read_text())
    assert all(np.isfinite(v) for r in h for k, v in r.items() if k not in ('step',))

USER_NET = '''
import torch.nn as nn, torch.nn.functional as F
class Net(nn.Module):
    "A user's own model: BGR 0..255 input, a dict output, its classifier named 'cls'."
    def __init__(self, classes=3, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.cls = nn.Conv2d(width, classes, 1)
    def forward(self, x): return {'out': self.cls(self.body(x))}
def build(classes=3, width=8): return Net(classes, width)
'''
AS_CUDA = '''
import sys, torch, torch.serialization as S
S.register_package(0, lambda obj: 'cuda:0', lambda obj, loc: None)
torch.save(torch.load(sys.argv[1], weights_only=True), sys.argv[2])
'''

def test_user_teacher_through_every_command(tiny, tmp_path):
    "A model file + plain weights saved from a (simulated) GPU machine, as the teacher of eval, distill, ads, unify and d3s2, each in a fresh process."
    (tmp_path/'my_model.py').write_text(USER_NET)
    sys.path.insert(0, str(tmp_path)); import my_model; sys.path.pop(0)
    torch.manual_seed(0); torch.save({'module.' + k: v for k, v in my_model.build().state_dict().items()}, tmp_path/'w_cpu.pt')
    r = subprocess.run([sys.executable, '-c', AS_CUDA, str(tmp_path/'w_cpu.pt'), str(tmp_path/'w.pt')], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, 'SEGKD_RUNS_DIR': str(tmp_path/'runs'), 'OMP_NUM_THREADS': '1'}
    user = ['--teacher', str(tmp_path/'w.pt'), '--teacher-arch', f"{tmp_path/'my_model.py'}:build", '--teacher-norm', 'caffe']
    run = lambda *a: subprocess.run([SEGKD, *map(str, a)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    r = run('eval', tmp_path/'w.pt', '--arch', f"{tmp_path/'my_model.py'}:build", '--data', tiny, '--size', '64x64')
    assert r.returncode == 0 and '"miou"' in r.stdout, r.stderr[-2000:]
    assert '0 missing, 0 unexpected' in r.stderr  # the load report
    r = run('distill', '--data', tiny, '--size', '64x64', *user, '--loss', 'kd+gskd', '--steps', '2', '--batch-size', '2', '--run', 'd')
    assert r.returncode == 0, r.stderr[-2000:]
    r = run('ads', 'score', *user, '--data', tiny, '--pool', tiny/'val'/'images', '--size', '64x64', '--out', tmp_path/'ads.csv')
    assert r.returncode == 0 and (tmp_path/'ads.csv').exists(), r.stderr[-2000:]
    (tmp_path/'map.yaml').write_text('source: tiny3\ntarget: tiny3\nlinks:\n  ground: [ground]\n  box: [box]\n  sky: [sky]\n')
    r = run('unify', 'pseudo-label', *user, '--source-tax', tiny/'taxonomy.json', '--target-tax', tiny/'taxonomy.json', '--mapping', tmp_path/'map.yaml',
            '--images', tiny/'val'/'images', '--labels', tiny/'val'/'labels', '--out', tmp_path/'pl', '--scales', '1', '--quiet')
    assert r.returncode == 0 and len(list((tmp_path/'pl'/'unified').glob('*.png'))) == 3, r.stderr[-2000:]
    r = run('d3s2', '--data', tiny, '--budget', '2', '--synth', 'real', *user, '--out', tmp_path/'d3')
    assert r.returncode == 0 and (tmp_path/'d3'/'provenance.json').exists(), r.stderr[-2000:]
    r = run('eval', tmp_path/'w.pt', '--data', tiny)  # plain weights without --arch: a clear refusal
    assert r.returncode == 2 and 'w.pt' in r.stderr and 'Traceback' not in r.stderr
