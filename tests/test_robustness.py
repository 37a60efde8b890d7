"""Bad input, faults and reproducibility, met where a user meets them: through the `segkd` command line.

The bad-input cases are ONE table (`CASES`): a name, a function that prepares files in a temporary folder and returns the
command's arguments, and the text the one-line error must contain. A new case is one line."""
import os, pickle, signal, socket, subprocess, sys, time, urllib.request, json
from pathlib import Path
import numpy as np, pytest, torch
from segkd_nb.cli import main
from segkd_nb.models import build_model, save_checkpoint, read_checkpoint
from segkd_nb.data import _write_pair

ROOT = Path(__file__).resolve().parents[1]
SEGKD = str(Path(sys.executable).parent/'segkd')

def run_cli(args, capsys):
    "Run `segkd ARGS` in this process; returns (exit code, stderr)."
    try: main([str(a) for a in args]); code = 0
    except SystemExit as e: code = e.code
    return code, capsys.readouterr().err

def evil(path:Path)->Path:
    "A pickle that would run a shell command if it were ever unpickled with weights_only=False."
    class Evil:
        def __reduce__(self): return (os.system, (f'touch {path.parent/"PWNED"}',))
    path.parent.mkdir(parents=True, exist_ok=True); path.write_bytes(pickle.dumps({'model': Evil()})); return path

def ckpt(d:Path, n:int=9)->Path:
    torch.manual_seed(0); return save_checkpoint(d/'t.pt', build_model('tiny_s', n, width=8))

def folder(d:Path, n:int=4, size=(24, 32), k:int=3)->Path:
    "A tiny dataset folder (train/ val/ with images/ labels/) without taxonomy.json."
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for i in range(n): _write_pair(d/split, f'{split}{i}', rng.integers(0, 255, (*size, 3), dtype=np.uint8), rng.integers(0, k, size, dtype=np.uint8))
    return d

# name, prepare(tmp) -> argv, expected text in the one-line error
CASES = [
    ('steps 0', lambda t: ['train', '--steps', '0'], 'must be at least 1, got 0'),
    ('steps negative', lambda t: ['distill', '--steps', '-1'], 'must be at least 1, got -1'),
    ('width 0', lambda t: ['train', '--width', '0'], 'must be at least 1, got 0'),
    ('batch size 0', lambda t: ['train', '--batch-size', '0'], 'must be at least 1, got 0'),
    ('lr 0', lambda t: ['train', '--lr', '0'], 'must be positive'),
    ('precision fp8', lambda t: ['train', '--precision', 'fp8'], "invalid choice: 'fp8'"),
    ('device gpu', lambda t: ['train', '--device', 'gpu'], "invalid choice: 'gpu'"),
    ('size 0x0', lambda t: ['train', '--size', '0x0'], 'size must be HxW'),
    ('size malformed', lambda t: ['train', '--size', '96by128'], 'size must be HxW'),
    ('unknown preset', lambda t: ['train', '--preset', 'cityscape'], "invalid choice: 'cityscape'"),
    ('unknown loss term', lambda t: ['distill', '--loss', 'kd+foo', '--steps', '1'], "unknown term 'foo'"),
    ('misspelled loss option', lambda t: ['distill', '--loss', 'kd:taw=4', '--steps', '1'], "unknown options ['taw']"),
    ('malformed loss option', lambda t: ['distill', '--loss', 'kd:tau', '--steps', '1'], 'must look like NAME=VALUE'),
    ('bad ablate row', lambda t: ['ablate', '--row', 'kd'], 'a row must be NAME=LOSS'),
    ('bad ablate row term', lambda t: ['ablate', '--row', 'x=kd+nope'], "unknown term 'nope'"),
    ('budget above 1', lambda t: ['d3s2', '--budget', '1.5'], 'fraction in (0, 1]'),
    ('l2i steps negative', lambda t: ['l2i', 'train', '--steps', '-5'], 'must be at least 1, got -5'),
    ('guidance window', lambda t: ['d3s2', '--budget', '0.1', '--window', '0.9'], 'expected 2 comma-separated numbers'),
    ('eval missing', lambda t: ['eval', t/'missing.pt'], 'checkpoint not found'),
    ('eval a folder without last.pt', lambda t: ['eval', t], 'checkpoint not found'),
    ('eval not a checkpoint', lambda t: ['eval', (t/'x.pt', (t/'x.pt').write_text('hello'))[0]], 'not a loadable'),
    ('data folder missing', lambda t: ['train', '--data', t/'nowhere', '--steps', '1'], 'not found'),
    ('data folder without taxonomy', lambda t: ['train', '--data', folder(t/'ds'), '--size', '24x32', '--steps', '1'], 'taxonomy.json'),
    ('teacher classes differ', lambda t: ['distill', '--teacher', ckpt(t, 11), '--steps', '1'], 'predicts 11 classes but 9'),
    ('hostile pickle: eval', lambda t: ['eval', evil(t/'evil.pt')], 'not a loadable'),
    ('hostile pickle: distill teacher', lambda t: ['distill', '--teacher', evil(t/'evil.pt'), '--steps', '1'], 'not a loadable'),
    ('hostile pickle: ads', lambda t: ['ads', 'score', '--teacher', evil(t/'evil.pt'), '--pool', t], 'not a loadable'),
    ('hostile pickle: unify', lambda t: ['unify', 'pseudo-label', '--teacher', evil(t/'evil.pt'), '--mapping', 'm.csv', '--images', t,
                                         '--labels', t, '--out', t/'o', '--target-tax', 'camvid'], 'not a loadable'),
    ('hostile pickle: l2i model', lambda t: ['l2i', 'sample', '--ckpt', evil(t/'l2i'/'l2i.pt').parent], 'not a loadable l2i checkpoint'),
    ('hostile pickle: d3s2 teacher', lambda t: ['d3s2', '--budget', '2', '--synth', 'real', '--teacher', evil(t/'evil.pt')], 'not a loadable'),
    ('unknown taxonomy', lambda t: ['unify', 'train', '--source-tax', 'street99', '--out', t/'o'], 'unknown dataset or taxonomy'),
    ('unify nothing to train on', lambda t: ['unify', 'train', '--source-tax', 'camvid', '--out', t/'o'], 'nothing to train on'),
    ('data init without labels', lambda t: ['data', 'init', t], 'no label PNGs'),
]

@pytest.mark.parametrize('name,prepare,expect', CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(name, prepare, expect, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('SEGKD_RUNS_DIR', str(tmp_path/'runs')); monkeypatch.setenv('SEGKD_CACHE_DIR', str(tmp_path/'cache'))
    args = prepare(tmp_path)
    code, err = run_cli(args, capsys)
    assert code == 2, (code, err)
    assert expect in err, err
    assert 'Traceback' not in err
    assert not (tmp_path/'PWNED').exists(), "a hostile pickle ran"
    assert not (tmp_path/'cache').exists(), "work started (a teacher was trained) before the bad input was refused"

def test_read_only_output_folder(tmp_path, capsys, monkeypatch):
    ro = tmp_path/'ro'; ro.mkdir(); ro.chmod(0o500)
    if os.access(ro, os.W_OK): pytest.skip('running as a user who can write anywhere (root): read-only folders cannot be tested')
    code, err = run_cli(['data', 'generate', '--out', ro/'x'], capsys)
    assert code == 2 and 'read-only' in err

# --- reproducibility --------------------------------------------------------------------------------------------
def test_same_seed_same_weights_in_two_fresh_processes(tmp_path):
    "`segkd train` twice with one seed, in two processes (torch's start-up seed differs per process): identical weights."
    env = {**os.environ, 'SEGKD_RUNS_DIR': str(tmp_path), 'OMP_NUM_THREADS': '1'}
    for run in ('a', 'b'):
        r = subprocess.run([SEGKD, 'train', '--arch', 'tiny_s', '--width', '8', '--steps', '3', '--batch-size', '2', '--seed', '5', '--run', run],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert r.returncode == 0, r.stderr
    a, b = (read_checkpoint(tmp_path/r/'last.pt')['model'] for r in ('a', 'b'))
    assert all(torch.equal(a[k], b[k]) for k in a)

def test_cached_teacher_twice_is_one_teacher(tmp_path):
    from segkd_nb.runs import cached_teacher, get_preset
    p = get_preset('samples', teacher_steps=2, teacher_width=8, batch_size=2)
    (t1, d1), (t2, d2) = cached_teacher(p, cache_dir=tmp_path), cached_teacher(p, cache_dir=tmp_path/'other')
    assert d1.name == d2.name and all(torch.equal(a, b) for a, b in zip(t1.state_dict().values(), t2.state_dict().values()))

# --- run folders are never mixed ----------------------------------------------------------------------------------
HOLD = """
import sys, time
from segkd_nb.runs import run_lock
with run_lock(sys.argv[1]):
    print('locked', flush=True); time.sleep(60)
"""

def test_a_locked_run_folder_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, '-c', HOLD, str(tmp_path/'r')], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        env = {**os.environ, 'SEGKD_RUNS_DIR': str(tmp_path)}
        r = subprocess.run([SEGKD, 'train', '--arch', 'tiny_s', '--steps', '1', '--run', 'r'], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert r.returncode == 2 and 'another process is writing this run folder' in r.stderr, r.stderr
        assert not (tmp_path/'r'/'config.json').exists()
    finally: holder.kill(); holder.wait()

def test_refused_resume_writes_nothing_and_finished_means_same_checkpoint_config(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('SEGKD_RUNS_DIR', str(tmp_path))
    base = ['train', '--arch', 'tiny_s', '--width', '8', '--batch-size', '2', '--run', 'r']
    assert run_cli(base + ['--steps', '2'], capsys)[0] == 0
    cfg0 = (tmp_path/'r'/'config.json').read_text()
    (tmp_path/'r'/'metrics.json').unlink()  # an interrupted run of the 2-step config
    code, err = run_cli(base + ['--steps', '3'], capsys)
    assert code == 2 and 'cannot resume' in err
    assert (tmp_path/'r'/'config.json').read_text() == cfg0  # the refused command rewrote nothing
    assert run_cli(base + ['--steps', '2'], capsys)[0] == 0  # the same config resumes and finishes
    # a finished folder whose checkpoint holds another run's config is not "done"
    from segkd_nb.runs import run_done
    key = json.loads((tmp_path/'r'/'config.json').read_text()); key = {k: v for k, v in key.items() if k not in ('hash', 'command', 'git')}
    assert run_done(tmp_path/'r', key) is not None
    assert run_done(tmp_path/'r', {**key, 'code_version': key['code_version'] + 1}) is None

# --- the App stays up ---------------------------------------------------------------------------------------------
def _free_port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close(); return p

def test_segkd_app_stays_up_until_interrupted(fo_db, tmp_path):
    from segkd_nb.fo import export_segmentation
    from segkd_nb.datasets import load_split
    ds = load_split('samples', 'val', (96, 128)); ds = ds.subset(range(3))
    export_segmentation('segkd-app-test', ds, None, tmp_path/'fo', ds.tax, overwrite=True)
    port = _free_port()
    env = {**os.environ, 'FIFTYONE_DATABASE_URI': os.environ['FIFTYONE_DATABASE_URI'], 'FIFTYONE_DATABASE_NAME': os.environ.get('FIFTYONE_DATABASE_NAME', '')}
    p = subprocess.Popen([SEGKD, 'app', '--name', 'segkd-app-test', '--port', str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    try:
        t0 = time.time(); url = f'http://127.0.0.1:{port}/'
        while time.time() - t0 < 120:
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=2) as r: ok = r.status < 500; break
            except Exception: time.sleep(1)
        else: pytest.fail('the App never answered')
        time.sleep(15)
        assert p.poll() is None, f"segkd app exited: {p.stdout.read()[-2000:]}"
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as r: assert r.status < 500
    finally:
        p.send_signal(signal.SIGINT)
        try: p.wait(timeout=30)
        except subprocess.TimeoutExpired: p.kill(); p.wait()

def test_full_disk_gets_one_clear_line(tmp_path, capsys, monkeypatch):
    "A full disk while writing: one line naming the file and what to do (simulated: root can write anywhere, and disks here are not full)."
    import errno, segkd_nb.synth as synth
    def full(*a, **kw): raise OSError(errno.ENOSPC, 'No space left on device', str(tmp_path/'x'/'train_0000.png'))
    monkeypatch.setattr(synth, 'generate_samples', full)
    code, err = run_cli(['data', 'generate', '--out', tmp_path/'x'], capsys)
    assert code == 2 and 'no space left on the device writing' in err and 'train_0000.png' in err and 'Traceback' not in err


class _Dirtying(torch.utils.data.Dataset):
    "A dataset that edits a tracked file of the repository the first time it is read: a commit's tree made dirty mid-training."
    def __init__(self, ds, path): self.ds, self.path, self.done = ds, path, False
    def __len__(self): return len(self.ds)
    def __getitem__(self, i):
        if not self.done: self.path.write_text('edited while a run trains\n'); self.done = True
        return self.ds[i]
    def __getattr__(self, n): return getattr(self.__dict__['ds'], n)

def test_a_run_records_the_commit_it_started_from(tmp_path, monkeypatch):
    from segkd_nb.runs import run_training, run_rows
    from segkd_nb.datasets import load_split
    from segkd_nb.kd import build_terms
    from segkd_nb.train import TrainConfig
    repo = tmp_path/'repo'; repo.mkdir(); (repo/'code.py').write_text('x = 1\n')
    git = lambda *a: subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *a], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()
    git('init', '-q'); git('add', 'code.py'); git('commit', '-qm', 'c'); head = git('rev-parse', '--short=12', 'HEAD')
    val = load_split('samples', 'val', (24, 32)).subset([0, 1])  # read before leaving the kit's folder
    monkeypatch.chdir(repo)  # git_commit() asks the repository of the working folder
    cfg = TrainConfig(steps=2, batch_size=2, lr=1e-3, device='cpu', progress=False)
    m = run_training(repo/'runs'/'one', lambda: build_model('tiny_s', val.tax.n, width=8), build_terms('', ce=1.0), _Dirtying(val, repo/'code.py'), val, cfg, tax=val.tax)
    assert git('status', '--porcelain', '--untracked-files=no')  # the tree did become dirty during the run
    assert m['git'] == head == json.loads((repo/'runs'/'one'/'config.json').read_text())['git']  # not head+'+dirty'
    git('checkout', '--', 'code.py')
    rows = {n: dict(run_dir=repo/'runs'/n, model=lambda: build_model('tiny_s', val.tax.n, width=8), terms=build_terms('', ce=1.0)) for n in ('a', 'b')}
    out = run_rows(rows, _Dirtying(val, repo/'code.py'), val, cfg, tax=val.tax)
    assert git('status', '--porcelain', '--untracked-files=no') and [out[n]['git'] for n in 'ab'] == [head, head]
