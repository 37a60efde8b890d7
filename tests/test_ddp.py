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

SCRIPT_TERM = r'''
import sys, torch, torch.distributed as dist
from segkd_nb.data import folder_pairs, camvid_taxonomy
from segkd_nb.models import build_model
from segkd_nb.kd import build_terms
from segkd_nb.train import Trainer, TrainConfig
import segkd_nb.gskd
root, out = sys.argv[1], sys.argv[2]
ds = folder_pairs(root, camvid_taxonomy(), cache=True)
torch.manual_seed(0); te = build_model('tiny', 11, width=8).eval()
torch.manual_seed(1); st = build_model('tiny_s', 11, width=8)
torch.manual_seed(100 + int(__import__('os').environ.get('RANK', 0)))  # each rank builds its head from another seed: the trainer must align them
terms = build_terms('kd+gskd:n_per_class=4,teacher_correct=false', st, te, ce=1.0)
tr = Trainer(st, terms, TrainConfig(steps=4, batch_size=2, lr=3e-3, device='cpu', progress=False), teacher=te)
tr.fit(ds)
torch.save({'head': tr.terms['gskd'].head.state_dict(), 'model': tr.model.state_dict()}, f"{out}{dist.get_rank()}.pt")
'''

def test_ddp_keeps_a_loss_terms_parameters_in_step(tmp_path):
    "GSKD's projection head lives outside DDP: both ranks must end with the same head (and the same student)."
    import torch
    from segkd_nb.data import _write_pair
    rng = np.random.default_rng(1)
    for i in range(8):
        lbl = rng.integers(0, 4, (24, 32)).astype(np.uint8)
        _write_pair(tmp_path/'d', f'{i}', rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), lbl)
    (tmp_path/'s.py').write_text(SCRIPT_TERM)
    torchrun = Path(sys.executable).parent/'torchrun'
    r = subprocess.run([torchrun, '--nproc_per_node', '2', '--master_addr', '127.0.0.1', '--master_port', str(_free_port()),
                        tmp_path/'s.py', tmp_path/'d', tmp_path/'rank'], env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (torch.load(tmp_path/f'rank{i}.pt', weights_only=True) for i in (0, 1))
    for part in ('head', 'model'):
        diff = [k for k in a[part] if not torch.equal(a[part][k], b[part][k]) and 'running' not in k and 'num_batches' not in k]
        assert not diff, f"{part} differs between ranks: {diff[:4]}"
