"""DDP through torchrun: 2 CPU processes (gloo) train to the same metrics as 1 process with the same global batch."""
import json, os, socket, subprocess, sys
from pathlib import Path
import numpy as np, pytest

SCRIPT = r'''
import sys, json, torch
from segkd_nb.config import seed_everything
from segkd_nb.data import folder_pairs, camvid_taxonomy
from segkd_nb.models import build_model
from segkd_nb.train import Trainer, TrainConfig, CETerm, evaluate, is_main
root, bs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ds = folder_pairs(root, camvid_taxonomy(), cache=True)
seed_everything(0)
m = build_model('tiny_s', 11, width=8)
tr = Trainer(m, {'ce': (1.0, CETerm())}, TrainConfig(steps=8, batch_size=bs, lr=3e-3, device='cpu', progress=False, log_every=1))
tr.fit(ds)
res = evaluate(tr.model, ds, device='cpu')
if is_main(): json.dump({'miou': res['miou'], 'acc': res['pixel_acc'], 'loss': [h['loss'] for h in tr.history], 'world': tr.world}, open(out, 'w'))
'''

def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_ddp_two_processes_match_one(tmp_path):
    from segkd_nb.data import _write_pair
    rng = np.random.default_rng(0)
    for i in range(8):
        lbl = np.zeros((24, 32), np.uint8); y, x = rng.integers(0, 12, 2); lbl[y:y+12, x:x+16] = 3
        img = (rng.random((24, 32, 3)) * 80 + (lbl[..., None] == 3) * 120).astype(np.uint8)
        _write_pair(tmp_path/'d', f'{i}', img, lbl)
    (tmp_path/'s.py').write_text(SCRIPT)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r1 = subprocess.run([sys.executable, tmp_path/'s.py', tmp_path/'d', '4', tmp_path/'one.json'], env=env, capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr
    torchrun = Path(sys.executable).parent/'torchrun'
    r2 = subprocess.run([torchrun, '--nproc_per_node', '2', '--master_addr', '127.0.0.1', '--master_port', str(_free_port()),
                         tmp_path/'s.py', tmp_path/'d', '2', tmp_path/'two.json'], env=env, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    one, two = (json.loads((tmp_path/f).read_text()) for f in ('one.json', 'two.json'))
    assert two['world'] == 2 and one['world'] == 1
    # same global batch and data order; BatchNorm statistics are per process, so small differences remain
    np.testing.assert_allclose(two['loss'], one['loss'], rtol=0.05, atol=0.02)
    assert abs(two['miou'] - one['miou']) < 0.05 and abs(two['acc'] - one['acc']) < 0.03
