"""Mechanics of the foundation: settings, readers on bad input, checkpoints, resume, CLI errors, the wheel."""
import json, os, subprocess, sys, zipfile
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from segkd_nb.config import load_settings, seed_everything
from segkd_nb.datasets import cityscapes
from segkd_nb.data import (DataError, Taxonomy, TaxonomyMapping, camvid_taxonomy, folder_pairs, list_file,
                           read_mapping, _write_pair, PoolDataset, collate_skip)
from segkd_nb.models import build_model, save_checkpoint, load_checkpoint
from segkd_nb.train import Trainer, TrainConfig, CETerm
from segkd_nb.kd import build_terms

ROOT = Path(__file__).resolve().parents[1]
SEGKD = [str(Path(sys.executable).parent/'segkd')]

def _fixture(d, n=3, size=(24, 32), tax_n=11, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n): _write_pair(d, f'f{i}', rng.integers(0, 255, (*size, 3), dtype=np.uint8), rng.integers(0, tax_n, size, dtype=np.uint8))
    return d

# --- settings -------------------------------------------------------------------------------------------------
def test_settings_env_override(monkeypatch, tmp_path):
    f = tmp_path/'settings.ini'; f.write_text('[segkd]\nruns_dir = myruns\ndevice = cpu\n')
    s = load_settings(f)
    assert s.path('runs_dir') == (tmp_path/'myruns').resolve() and s.device == 'cpu'
    monkeypatch.setenv('SEGKD_RUNS_DIR', '/tmp/elsewhere'); monkeypatch.setenv('SEGKD_PRECISION', 'bf16')
    s = load_settings(f)
    assert s.path('runs_dir') == Path('/tmp/elsewhere') and s.precision == 'bf16'

def test_settings_bad(tmp_path):
    f = tmp_path/'settings.ini'; f.write_text('[segkd]\ndevise = cpu\n')
    with pytest.raises(ValueError, match="unknown settings \\['devise'\\]"): load_settings(f)
    f.write_text('[segkd]\nprecision = fp8\n')
    with pytest.raises(ValueError, match="precision='fp8'"): load_settings(f)

def test_every_setting_documented():
    from dataclasses import fields
    from segkd_nb.config import Settings
    readme, ini = (ROOT/'README.md').read_text(), (ROOT/'settings.ini').read_text()
    for f in fields(Settings):
        if f.name == 'root': continue
        assert f'`{f.name}`' in readme, f"setting {f.name} is not documented in README.md"
        assert f'{f.name} =' in ini, f"setting {f.name} missing from settings.ini"

# --- readers --------------------------------------------------------------------------------------------------
def test_folder_pairs_ok(tmp_path):
    ds = folder_pairs(_fixture(tmp_path), camvid_taxonomy())
    assert len(ds) == 3 and ds.check() == 3
    it = ds[0]; assert it['image'].shape == (3, 24, 32) and it['mask'].dtype == torch.int64

def test_folder_pairs_missing_pair(tmp_path):
    _fixture(tmp_path); (tmp_path/'labels'/'f1.png').unlink()
    with pytest.raises(DataError, match=r"1 images without a label \(\['f1'\]\)"): folder_pairs(tmp_path, camvid_taxonomy())

def test_folder_pairs_size_mismatch(tmp_path):
    _fixture(tmp_path); Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path/'labels'/'f2.png')
    with pytest.raises(DataError, match=r"f2.png.*image is 32x24 but label is 10x10"): folder_pairs(tmp_path, camvid_taxonomy()).check()

def test_unknown_label_id(tmp_path):
    _fixture(tmp_path); Image.fromarray(np.full((24, 32), 77, np.uint8)).save(tmp_path/'labels'/'f0.png')
    with pytest.raises(DataError, match=r"f0.png: label ids \[77\]"): folder_pairs(tmp_path, camvid_taxonomy())[0]

def test_void_remapped(tmp_path):
    _fixture(tmp_path); Image.fromarray(np.full((24, 32), 11, np.uint8)).save(tmp_path/'labels'/'f0.png')
    assert (folder_pairs(tmp_path, camvid_taxonomy())[0]['mask'] == 255).all()

def test_corrupt_files(tmp_path):
    _fixture(tmp_path); (tmp_path/'images'/'f1.png').write_bytes(b'\x89PNG garbage')
    with pytest.raises(DataError, match=r"f1.png: cannot read image"): folder_pairs(tmp_path, camvid_taxonomy())[1]
    (tmp_path/'labels'/'f2.png').write_bytes(b'')
    with pytest.raises(DataError, match=r"f2.png: cannot read label"): folder_pairs(tmp_path, camvid_taxonomy())[2]

def test_rgb_label_rejected(tmp_path):
    _fixture(tmp_path); Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path/'labels'/'f0.png')
    with pytest.raises(DataError, match='single-channel'): folder_pairs(tmp_path, camvid_taxonomy())[0]

def test_list_file(tmp_path):
    _fixture(tmp_path)
    (tmp_path/'list.txt').write_text('images/f0.png labels/f0.png\nimages/f1.png labels/f1.png\n')
    assert len(list_file(tmp_path/'list.txt', camvid_taxonomy())) == 2
    (tmp_path/'bad.txt').write_text('images/f0.png labels/nope.png\n')
    with pytest.raises(DataError, match='nope.png does not exist'): list_file(tmp_path/'bad.txt', camvid_taxonomy())
    (tmp_path/'mixed.txt').write_text('images/f0.png labels/f0.png\nimages/f1.png\n')
    with pytest.raises(DataError, match='some lines have labels'): list_file(tmp_path/'mixed.txt', camvid_taxonomy())

def test_cityscapes_layout(tmp_path):
    rng = np.random.default_rng(0)
    for city in ('aachen', 'bonn'):
        (tmp_path/'leftImg8bit/val'/city).mkdir(parents=True); (tmp_path/'gtFine/val'/city).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (16, 32, 3), dtype=np.uint8)).save(tmp_path/f'leftImg8bit/val/{city}/{city}_000000_000019_leftImg8bit.png')
        Image.fromarray(rng.integers(0, 19, (16, 32), dtype=np.uint8)).save(tmp_path/f'gtFine/val/{city}/{city}_000000_000019_gtFine_labelTrainIds.png')
    ds = cityscapes(tmp_path, 'val'); assert len(ds) == 2 and ds[1]['mask'].max() < 19
    (tmp_path/'gtFine/val/bonn/bonn_000000_000019_gtFine_labelTrainIds.png').unlink()
    with pytest.raises(DataError, match='1 label files missing'): cityscapes(tmp_path, 'val')

def test_pool_skips_corrupt(tmp_path, caplog):
    _fixture(tmp_path); (tmp_path/'images'/'f1.png').write_bytes(b'broken')
    ds = PoolDataset(sorted((tmp_path/'images').iterdir()), size=(16, 16))
    b = collate_skip([ds[i] for i in range(3)])
    assert b['image'].shape == (2, 3, 16, 16)

# --- taxonomy and mappings ----------------------------------------------------------------------------------------
def test_taxonomy_roundtrip_and_validation(tmp_path):
    tx = camvid_taxonomy()
    for ext in ('json', 'yaml'): assert Taxonomy.load(tx.save(tmp_path/f't.{ext}')).to_dict() == tx.to_dict()
    (tmp_path/'bad.json').write_text(json.dumps({'classes': ['a', 'b'], 'palette': [[0, 0, 0]]}))
    with pytest.raises(DataError, match='palette has 1 colours for 2 classes'): Taxonomy.load(tmp_path/'bad.json')

def test_mapping_kinds_and_errors(tmp_path):
    src, dst = Taxonomy('s', ['a', 'b', 'c', 'd']), Taxonomy('t', ['x', 'y'])
    m = TaxonomyMapping(src, dst, {'a': ['x'], 'b': ['x'], 'c': ['x', 'y'], 'd': []})
    assert m.kind() == {'to_void': 1, 'one_to_many': 1, 'many_to_one': 2, 'one_to_one': 0}
    with pytest.raises(ValueError, match='one-to-many'): m.lut()
    f = tmp_path/'m.csv'; f.write_text('0,a,x\n1, b ,  x\n2,c,x,z\n3,e,y\n')
    with pytest.raises(DataError, match=r"source classes \['e'\].*target classes \['z'\]"): read_mapping(f, src, dst)

# --- models and checkpoints -------------------------------------------------------------------------------------
@pytest.mark.parametrize('arch', ['tiny', 'tiny_s', 'lraspp_mbv3', 'deeplabv3_mbv3', 'fcn_r50'])
def test_models_share_interface(arch):
    m = build_model(arch, 5).eval()
    with torch.no_grad(): o = m(torch.rand(1, 3, 64, 64))
    assert o['logits'].shape == (1, 5, 64, 64)
    assert {'penultimate', 'stage1', 'stage2', 'stage3', 'stage4'} <= set(o) and set(m.strides) == set(o)
    assert len(m.bn_layers()) > 0

def test_checkpoint_errors(tmp_path):
    m = build_model('tiny_s', 9); save_checkpoint(tmp_path/'c.pt', m)
    with pytest.raises(ValueError, match='predicts 9 classes but 11'): load_checkpoint(tmp_path/'c.pt', num_classes=11)
    (tmp_path/'junk.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='not a loadable checkpoint'): load_checkpoint(tmp_path/'junk.pt')
    torch.save({'model': {}}, tmp_path/'other.pt')
    with pytest.raises(ValueError, match='not a segkd_nb checkpoint'): load_checkpoint(tmp_path/'other.pt')

def test_teacher_student_class_mismatch():
    with pytest.raises(ValueError, match='teacher predicts 11 classes but the student 9'):
        Trainer(build_model('tiny_s', 9), build_terms('kd'), TrainConfig(steps=1, device='cpu'), teacher=build_model('tiny_s', 11))

# --- training: exact resume with KD and a term that owns parameters -----------------------------------------------
def _kd_run(ds, teacher, run_dir=None, stop_at=None):
    seed_everything(0)
    st = build_model('tiny_s', 11, width=8)
    t = Trainer(st, build_terms('kd+cwd', st, teacher, ce=1.0), TrainConfig(steps=12, batch_size=2, progress=False, device='cpu', ckpt_every=4), teacher=teacher, run_dir=run_dir)
    t.fit(ds, stop_at=stop_at); return t

def test_resume_is_exact(tmp_path):
    from segkd_nb.data import SegTransform
    ds = folder_pairs(_fixture(tmp_path/'d', n=5), camvid_taxonomy(), transform=SegTransform((16, 24)), cache=True)
    seed_everything(1); teacher = build_model('tiny_s', 11, width=8).eval()
    full = _kd_run(ds, teacher)
    _kd_run(ds, teacher, tmp_path/'r', stop_at=6)  # interrupted after step 6 (last.pt at step 4 and at the stop)
    assert (tmp_path/'r'/'last.pt').exists()
    res = _kd_run(ds, teacher, tmp_path/'r')
    assert res.step == 12
    for (k, a), b in zip(full.model.state_dict().items(), res.model.state_dict().values()): assert torch.equal(a, b), k

def test_resume_refuses_other_config(tmp_path):
    ds = folder_pairs(_fixture(tmp_path/'d'), camvid_taxonomy(), cache=True)
    Trainer(build_model('tiny_s', 11, width=8), {'ce': (1.0, CETerm())}, TrainConfig(steps=2, batch_size=2, progress=False, device='cpu'), run_dir=tmp_path/'r').fit(ds, stop_at=1)
    t = Trainer(build_model('tiny_s', 11, width=8), {'ce': (1.0, CETerm())}, TrainConfig(steps=2, batch_size=2, lr=0.5, progress=False, device='cpu'), run_dir=tmp_path/'r')
    with pytest.raises(ValueError, match="cannot resume, the run's config differs"): t.fit(ds)

# --- CLI --------------------------------------------------------------------------------------------------------
def _segkd(*args, env=None):
    return subprocess.run(SEGKD + list(args), capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)

def test_cli_help_everywhere():
    from segkd_nb.cli import build_parser
    ap = build_parser(); sub = ap._subparsers._group_actions[0].choices
    for name, p in sub.items():
        assert p.format_help().startswith('usage: segkd ' + name)

def test_cli_bad_input(tmp_path):
    r = _segkd('eval', str(tmp_path/'missing.pt'))
    assert r.returncode == 2 and 'checkpoint not found' in r.stderr
    r = _segkd('train', '--data', str(tmp_path/'nowhere'), '--steps', '1')
    assert r.returncode == 2 and 'not found' in r.stderr
    r = _segkd('train', '--size', '96by128')
    assert r.returncode == 2 and 'size must be HxW' in r.stderr
    r = _segkd('distill', '--loss', 'kd+nonsense', '--teacher', str(tmp_path/'missing.pt'))
    assert r.returncode == 2

def test_cli_teacher_class_mismatch(tmp_path):
    save_checkpoint(tmp_path/'t11.pt', build_model('tiny_s', 11))
    r = _segkd('distill', '--teacher', str(tmp_path/'t11.pt'), '--steps', '1')
    assert r.returncode == 2 and 'predicts 11 classes but 9 are expected' in r.stderr

def test_cli_train_eval_end_to_end(tmp_path):
    env = {'SEGKD_RUNS_DIR': str(tmp_path)}
    r = _segkd('train', '--arch', 'tiny_s', '--steps', '3', '--batch-size', '4', '--run', 't', env=env)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path/'t'/'metrics.json').read_text())
    assert {'miou', 'per_class_iou', 'pixel_acc', 'seed', 'wall_s'} <= set(m) and 'road' in m['per_class_iou']
    for f in ('config.json', 'report.md', 'loss.png', 'last.pt', 'history.json'): assert (tmp_path/'t'/f).exists(), f
    r = _segkd('train', '--arch', 'tiny_s', '--steps', '3', '--batch-size', '4', '--run', 't', env=env)
    assert 'skipped' in r.stdout  # staged: a finished run is not redone
    r = _segkd('distill', '--teacher', str(tmp_path/'t'/'last.pt'), '--loss', 'kd+cwd', '--steps', '2', '--batch-size', '4', '--run', 'd', env=env)
    assert r.returncode == 0, r.stderr
    r = _segkd('eval', str(tmp_path/'d'/'last.pt'), env=env)
    assert r.returncode == 0 and '"miou"' in r.stdout

# --- packaging ----------------------------------------------------------------------------------------------------
def test_wheel_contains_every_module(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    whl = next(tmp_path.glob('segkd_nb-*.whl'))
    names = set(zipfile.ZipFile(whl).namelist())
    mods = {f"segkd_nb/{p.relative_to(ROOT/'segkd_nb')}" for p in (ROOT/'segkd_nb').rglob('*.py')}
    assert mods <= names, sorted(mods - names)
    assert any(n.endswith('entry_points.txt') for n in names)

def test_readme_is_current():
    sys.path.insert(0, str(ROOT/'tools'))
    from build_readme import to_markdown
    assert (ROOT/'README.md').read_text() == to_markdown(), "README.md is stale: run `make readme`"
