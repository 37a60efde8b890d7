"Mechanics of label-space unification: the METHODS.md properties against loop versions, broken mappings, crash/resume of the PNG writer, and sharding."
import itertools, json, os, signal, subprocess, sys, textwrap, time, warnings
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from segkd_nb.data import DataError, Taxonomy, TaxonomyMapping, camvid_taxonomy, idd_lite_taxonomy, CAMVID_TO_IDD
from segkd_nb.unify import (MappingWarning, allowed_lut, allowed_mask, check_mapping, load_mapping, raw_pseudo_label,
                            unified_pseudo_label, write_pseudo_labels, write_toy_scenes, paired_dirs, compound_dataset,
                            PaletteTeacher, png_ok, teacher_probs)

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- helpers written independently of the module
def random_case(S=6, T=4, B=2, H=5, W=7, seed=0, p_link=0.35, void_cols=(3,)):
    "A random mapping (some target labels in no row), random targets (with 255) and random teacher probabilities."
    g = np.random.default_rng(seed)
    src = Taxonomy('src', [f's{i}' for i in range(S)]); dst = Taxonomy('dst', [f't{j}' for j in range(T)])
    links = {f's{i}': [f't{j}' for j in range(T) if j not in void_cols and g.random() < p_link] for i in range(S)}
    for j in range(T):  # every non-void column gets at least one row
        if j not in void_cols and not any(f't{j}' in v for v in links.values()): links[f's{g.integers(S)}'].append(f't{j}')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', MappingWarning); m = TaxonomyMapping(src, dst, links)
    y = g.integers(0, T, (B, H, W)); y[g.random((B, H, W)) < 0.1] = 255
    probs = torch.from_numpy(g.dirichlet(np.ones(S), (B, H, W))).permute(0, 3, 1, 2).float()  # [B,S,H,W]
    return m, links, torch.from_numpy(y), probs

def loop_unified(probs, y, links, S, T, policy='allowed', thr=0.5):
    "Pixel-by-pixel reference: the best-scoring source class whose row lists the pixel's target label."
    B, _, H, W = probs.shape; out = torch.full((B, H, W), 255, dtype=torch.long)
    for b, i, j in itertools.product(range(B), range(H), range(W)):
        l = int(y[b, i, j])
        if l == 255: continue
        allowed = [k for k in range(S) if f't{l}' in links[f's{k}']]
        if not allowed: continue
        best = max(allowed, key=lambda k: (float(probs[b, k, i, j]), -k))
        if policy == 'threshold' and float(probs[b, best, i, j]) < thr: continue
        out[b, i, j] = best
    return out

# ---------------------------------------------------------------- the METHODS.md properties
@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('policy', ['allowed', 'threshold'])
def test_matches_pixel_loop_and_stays_in_allowed_set(seed, policy):
    m, links, y, probs = random_case(seed=seed)
    lut = allowed_lut(m)
    got = unified_pseudo_label(probs, y, lut, void_policy=policy, threshold=0.3)
    test = loop_unified(probs, y, links, 6, 4, policy, 0.3)
    assert torch.equal(got, test)
    for b, i, j in itertools.product(*map(range, got.shape)):  # every pseudo-label lies in its allowed set
        k, l = int(got[b, i, j]), int(y[b, i, j])
        if k != 255: assert l != 255 and f't{l}' in links[f's{k}']

def test_singleton_allowed_set_reproduces_mapped_ground_truth():
    g = np.random.default_rng(1)
    S = 7; perm = g.permutation(S)  # source k appears as target perm[k]
    src = Taxonomy('s', [f's{i}' for i in range(S)]); dst = Taxonomy('d', [f'd{i}' for i in range(S)])
    m = TaxonomyMapping(src, dst, {f's{k}': [f'd{perm[k]}'] for k in range(S)})
    fine = torch.from_numpy(g.integers(0, S, (3, 16, 20)))
    target = torch.from_numpy(perm[fine.numpy()])  # the mapped ground truth, computed with numpy
    target[:, 0] = 255; fine[:, 0] = 255
    probs = torch.from_numpy(g.dirichlet(np.ones(S), (3, 16, 20))).permute(0, 3, 1, 2).float()  # a teacher that is mostly wrong
    for policy in ('allowed',):
        assert torch.equal(unified_pseudo_label(probs, target, allowed_lut(m), policy), fine)

def test_void_only_pixels_become_255():
    m, links, y, probs = random_case(seed=3, void_cols=(1, 3))
    y[0, 0, 0], y[0, 0, 1], y[0, 0, 2] = 1, 3, 255
    probs[0, :, 0, :3] = torch.tensor([[1.0] + [0.0] * 5] * 3).T  # a certain teacher cannot override void
    got = unified_pseudo_label(probs, y, allowed_lut(m))
    assert torch.equal(got[(y == 1) | (y == 3) | (y == 255)], torch.full_like(got[(y == 1) | (y == 3) | (y == 255)], 255))
    assert (got[(y == 0) | (y == 2)] != 255).all()
    # 'all' lets the teacher choose at the target's own ignore pixels
    got_all = unified_pseudo_label(probs, y, allowed_lut(m, ignore='all'))
    assert torch.equal(got_all[y == 255], raw_pseudo_label(probs)[y == 255])

def test_soft_targets_and_void_class():
    m, links, y, probs = random_case(seed=5)
    lut = allowed_lut(m); hard = unified_pseudo_label(probs, y, lut)
    q = unified_pseudo_label(probs, y, lut, soft=True)
    assert torch.equal(q.argmax(1)[hard != 255], hard[hard != 255])
    assert torch.allclose(q.sum(1)[hard != 255], torch.ones(int((hard != 255).sum())), atol=1e-5)
    assert (q.sum(1)[hard == 255] == 0).all()
    vc = unified_pseudo_label(probs, y, lut, void_class=0)  # source class 0 means void: its wins are ignored
    assert ((hard == 0) <= (vc == 255)).all() and (vc != 0).all()

def test_lut_is_one_gather():
    m = TaxonomyMapping(camvid_taxonomy(), idd_lite_taxonomy(), CAMVID_TO_IDD); lut = allowed_lut(m)
    y = torch.randint(0, 7, (2, 30, 40)); M = allowed_mask(lut, y)
    assert M.shape == (2, 12, 30, 40)
    assert torch.equal(M[:, :11].permute(0, 2, 3, 1), m.matrix.T[y])  # [B,H,W,S] from the matrix directly

# ---------------------------------------------------------------- broken mappings and inputs
def test_broken_mappings_get_clear_errors(tmp_path):
    cv, idd = camvid_taxonomy(), idd_lite_taxonomy()
    (tmp_path/'m.csv').write_text("0,Sky,sky\n1,Buildng,far objects\n2,Road,drivable, roadway\n3,Car\n")
    with pytest.raises(DataError) as e: load_mapping(tmp_path/'m.csv', cv, idd)
    msg = str(e.value)
    assert 'm.csv' in msg and "['Buildng']" in msg and "['roadway']" in msg
    (tmp_path/'short.csv').write_text("0,Sky,sky\n7\n")
    with pytest.raises(DataError, match='at least id and name'): load_mapping(tmp_path/'short.csv', cv, idd)
    with pytest.raises(DataError, match='not found'): load_mapping(tmp_path/'nope.yaml', cv, idd)
    (tmp_path/'hole.yaml').write_text("links:\n  Sky: [sky]\n  ' Road ': [ drivable ]\n")
    with pytest.warns(MappingWarning, match=r"\['non-drivable', 'living things', 'vehicles', 'road-side objects', 'far objects'\]"):
        m = load_mapping(tmp_path/'hole.yaml', cv, idd)
    assert check_mapping(m, warn=False)['allowed_sets']['drivable'] == ['Road']

def test_shape_and_label_errors():
    m = TaxonomyMapping(camvid_taxonomy(), idd_lite_taxonomy(), CAMVID_TO_IDD); lut = allowed_lut(m)
    p = torch.rand(1, 11, 4, 4).softmax(1)
    with pytest.raises(ValueError, match='11 source classes'): unified_pseudo_label(torch.rand(1, 9, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), lut)
    with pytest.raises(DataError, match=r'target labels \[9, 40\]'):
        unified_pseudo_label(p, torch.tensor([[[9, 40, 0, 0]] * 4]), lut)
    with pytest.raises(ValueError, match='void_policy'): unified_pseudo_label(p, torch.zeros(1, 4, 4, dtype=torch.long), lut, 'maybe')
    from segkd_nb.datasets import data_taxonomy
    with pytest.raises(DataError, match='unknown dataset or taxonomy'): data_taxonomy('street99')

# ---------------------------------------------------------------- the writer: crash, resume, shards
SCRIPT = textwrap.dedent('''
    import sys, time, torch
    from pathlib import Path
    from segkd_nb.data import TaxonomyMapping, camvid_taxonomy, idd_lite_taxonomy, CAMVID_TO_IDD
    from segkd_nb.unify import PaletteTeacher, paired_dirs, write_pseudo_labels, write_pseudo_labels
    root, out, delay = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    cv = camvid_taxonomy(); m = TaxonomyMapping(cv, idd_lite_taxonomy(), CAMVID_TO_IDD)
    class Slow(PaletteTeacher):
        def forward(self, x): time.sleep(delay); return super().forward(x)
    if len(sys.argv) > 4 and sys.argv[4] == 'ddp':
        import torch.distributed as dist; dist.init_process_group('gloo')
    r = write_pseudo_labels(Slow(cv), paired_dirs(root/'images', root/'labels', m.dst), m, out, batch_size=2, flip=True, scales=(0.5, 1),
                            progress=False)
    print('DONE', r, flush=True)
''')

def _env(**kw):
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO), **kw}

@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    "12 toy scenes on disk, a reference run in one process, and the helper script."
    d = tmp_path_factory.mktemp('unify')
    root = write_toy_scenes(d/'toy', n=12, seed=3)
    (d/'run.py').write_text(SCRIPT)
    subprocess.run([sys.executable, d/'run.py', root, d/'ref', '0'], check=True, env=_env(), capture_output=True)
    ref = {p.relative_to(d/'ref'): p.read_bytes() for p in (d/'ref').rglob('*.png')}
    assert len(ref) == 24
    return d, root, ref

def _files(out): return {p.relative_to(out): p.read_bytes() for p in out.rglob('*.png')}

def test_interrupted_run_resumes_without_corrupt_or_missing_pngs(toy, tmp_path):
    d, root, ref = toy
    out = tmp_path/'pl'
    proc = subprocess.Popen([sys.executable, d/'run.py', root, out, '0.4'], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while len(list((out/'unified').glob('*.png')) if (out/'unified').exists() else []) < 4:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() - t0 < 120, 'the run never wrote 4 files'
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL); proc.wait()  # a hard crash mid-run: no cleanup code runs
    partial = _files(out)
    assert 0 < len(partial) < 24
    for k, v in partial.items(): assert v == ref[k]  # atomic writes: whatever exists is complete and right
    # the aftermath of a crash in a non-atomic world, too: a truncated PNG and a stale temp file
    victim = sorted(partial)[0]; (out/victim).write_bytes(partial[victim][:60])
    (out/'raw'/'.toy_0014.png.x1y2.tmp').write_bytes(b'half')
    assert not png_ok(out/victim)
    r = subprocess.run([sys.executable, d/'run.py', root, out, '0'], env=_env(), capture_output=True, text=True, check=True)
    assert 'DONE' in r.stdout
    assert _files(out) == ref
    assert not list(out.rglob('*.tmp'))
    assert all(png_ok(p) for p in out.rglob('*.png'))
    # a finished run is skipped entirely
    r2 = write_pseudo_labels(PaletteTeacher(camvid_taxonomy()), paired_dirs(root/'images', root/'labels', idd_lite_taxonomy()),
                             TaxonomyMapping(camvid_taxonomy(), idd_lite_taxonomy(), CAMVID_TO_IDD), out, flip=True, scales=(0.5, 1), progress=False)
    assert r2['written'] == 0 and r2['skipped'] == 12

def test_two_processes_write_the_same_labels_as_one(toy, tmp_path):
    d, root, ref = toy
    out = tmp_path/'two'
    procs = [subprocess.Popen([sys.executable, d/'run.py', root, out, '0'], env=_env(RANK=str(r), WORLD_SIZE='2'),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1].decode()[-1500:] for o in outs]
    assert "'shard': 6" in outs[0][0].decode() and "'shard': 6" in outs[1][0].decode()
    assert _files(out) == ref

@pytest.mark.slow
def test_torchrun_gloo_shards_match(toy, tmp_path):
    d, root, ref = toy
    out = tmp_path/'ddp'
    p = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', d/'run.py', root, out, '0', 'ddp'],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try: so, se = p.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); p.communicate(); pytest.fail('torchrun did not finish in 180 s')
    assert p.returncode == 0, se[-2000:]
    assert so.count('DONE') == 2
    assert _files(out) == ref

def test_resume_with_other_options_is_refused(toy, tmp_path):
    d, root, ref = toy
    m = TaxonomyMapping(camvid_taxonomy(), idd_lite_taxonomy(), CAMVID_TO_IDD)
    ds = paired_dirs(root/'images', root/'labels', m.dst)
    write_pseudo_labels(PaletteTeacher(m.src), ds.subset([0, 1]), m, tmp_path/'o', flip=False, scales=(1,), progress=False)
    with pytest.raises(ValueError, match=r"other options \(\['void_policy'\]\)"):
        write_pseudo_labels(PaletteTeacher(m.src), ds.subset([0, 1]), m, tmp_path/'o', flip=False, scales=(1,), void_policy='threshold', progress=False)

# ---------------------------------------------------------------- compound data and the CLI
def test_compound_sampler_weights(toy):
    d, root, ref = toy
    a = paired_dirs(root/'images', root/'fine', camvid_taxonomy()).subset(range(3))
    b = paired_dirs(root/'images', root/'fine', camvid_taxonomy())
    ds, smp = compound_dataset([a, b], [3, 1], num_samples=20000, seed=2)
    idx = torch.tensor(list(smp))
    assert abs((idx < 3).float().mean().item() - 0.75) < 0.02  # dataset share follows the weights, not the sizes
    assert len(ds) == 15 and torch.equal(idx, torch.tensor(list(compound_dataset([a, b], [3, 1], num_samples=20000, seed=2)[1])))
    with pytest.raises(ValueError, match='weights must be >= 0'): compound_dataset([a, b], [1, -1])

def test_cli_pseudo_label_and_train(toy, tmp_path):
    import argparse
    from segkd_nb.models import build_model, save_checkpoint
    d, root, ref = toy
    cv = camvid_taxonomy(); torch.manual_seed(0)
    save_checkpoint(tmp_path/'t.pt', build_model('tiny_s', cv.n), taxonomy=cv)
    TaxonomyMapping(cv, idd_lite_taxonomy(), CAMVID_TO_IDD).to_yaml(tmp_path/'m.yaml')
    from segkd_nb.cli import build_parser
    ap = build_parser()
    a = ap.parse_args(['unify', 'pseudo-label', '--teacher', str(tmp_path/'t.pt'), '--mapping', str(tmp_path/'m.yaml'), '--target-tax', 'idd_lite',
                       '--images', str(root/'images'), '--labels', str(root/'labels'), '--out', str(tmp_path/'pl'), '--scales', '1', '--quiet'])
    assert a.func(a)['written'] == 12
    a = ap.parse_args(['unify', 'train', '--source-tax', 'camvid', '--pseudo', str(root/'images'), str(tmp_path/'pl'/'unified'),
                       '--pseudo', str(root/'images'), str(root/'fine'), '--weights', '1', '2', '--steps', '3', '--batch-size', '2',
                       '--size', '48x64', '--out', str(tmp_path/'run'), '--device', 'cpu', '--quiet'])
    res = a.func(a)
    assert res['steps'] == 3 and (tmp_path/'run'/'last.pt').exists()
    a = ap.parse_args(['unify', 'pseudo-label', '--teacher', str(tmp_path/'t.pt'), '--mapping', str(tmp_path/'m.yaml'), '--target-tax', 'camvid',
                       '--images', str(root/'images'), '--labels', str(root/'labels'), '--out', str(tmp_path/'pl2'), '--quiet'])
    with pytest.raises(DataError, match='unknown names'): a.func(a)  # the mapping names IDD classes, the target says camvid

def test_allowed_set_holds_when_the_teacher_gives_it_zero_probability():
    "A product p*M would tie at 0 and pick class 0; the mask must still win."
    m = TaxonomyMapping(camvid_taxonomy(), idd_lite_taxonomy(), CAMVID_TO_IDD); lut = allowed_lut(m)
    logits = torch.full((1, 11, 2, 2), -200.0); logits[:, 0] = 200.0  # softmax underflows to exact zeros except Sky
    p = logits.softmax(1); assert (p[:, 1:] == 0).all()
    y = torch.tensor([[[0, 5], [3, 2]]])  # drivable, far objects, vehicles, living things
    got = unified_pseudo_label(p, y, lut)
    assert got.tolist() == [[[m.src.index('Road'), m.src.index('Building')], [m.src.index('Car'), m.src.index('Pedestrian')]]]

def test_export_unify_fiftyone(fo_db, toy, tmp_path):
    from segkd_nb.fo import export_unify
    d, root, ref = toy
    cv, idd = camvid_taxonomy(), idd_lite_taxonomy()
    pl = d/'ref'  # the reference run of the `toy` fixture
    ds = paired_dirs(root/'images', root/'labels', idd)
    fds = export_unify('unify_test', ds, pl/'raw', pl/'unified', cv, fine=root/'fine', top=4, out_dir=tmp_path/'masks', overwrite=True)
    assert {'gt', 'pseudo_raw', 'pseudo_unified', 'fine'} <= set(fds.get_field_schema())
    off = fds.info['mask_id_offset']
    assert fds.mask_targets['gt'][off + 3] == 'vehicles' and fds.mask_targets['pseudo_unified'][off + 10] == 'Bicyclist'
    agree = {}
    for i in ds.ids:  # the agreement by hand, from the PNGs
        a, b = np.array(Image.open(pl/'raw'/f'{i}.png')), np.array(Image.open(pl/'unified'/f'{i}.png'))
        agree[i] = float((a == b).mean())
    got = dict(zip(fds.values('sid'), fds.values('agreement')))
    assert all(abs(got[i] - agree[i]) < 1e-9 for i in ds.ids)
    view = fds.load_saved_view('unify_changed_most')
    assert view.values('sid') == sorted(agree, key=agree.get)[:4]
    # the App's masks are the pseudo-labels shifted by the offset (ignore -> 0)
    sample = fds.match({'sid': ds.ids[0]}).first()
    shown = np.array(Image.open(sample.pseudo_unified.mask_path)).astype(int)
    orig = np.array(Image.open(pl/'unified'/f'{ds.ids[0]}.png')).astype(int)
    assert np.array_equal(shown, np.where(orig == 255, 0, orig + off))
    with pytest.raises(DataError, match='items without pseudo-labels'):
        export_unify('unify_test2', ds, pl/'raw', {}, cv, out_dir=tmp_path/'m2')

def test_segkd_command_end_to_end(toy, tmp_path):
    "The installed `segkd` entry point, sharded by environment, gives the files of one in-process run; errors exit 2 with a message."
    import shutil
    from segkd_nb.models import build_model, save_checkpoint
    exe = shutil.which('segkd', path=str(Path(sys.executable).parent))
    if exe is None: pytest.skip('segkd entry point not installed')
    d, root, ref = toy
    cv = camvid_taxonomy(); torch.manual_seed(0)
    save_checkpoint(tmp_path/'t.pt', build_model('tiny_s', cv.n), taxonomy=cv)
    TaxonomyMapping(cv, idd_lite_taxonomy(), CAMVID_TO_IDD).to_csv(tmp_path/'m.csv')
    args = [exe, 'unify', 'pseudo-label', '--teacher', str(tmp_path/'t.pt'), '--mapping', str(tmp_path/'m.csv'), '--target-tax', 'idd_lite',
            '--images', str(root/'images'), '--labels', str(root/'labels'), '--scales', '1', '--no-flip', '--quiet']
    procs = [subprocess.Popen(args + ['--out', str(tmp_path/'cli')], env=_env(RANK=str(r), WORLD_SIZE='2'), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for p in procs: assert p.wait(timeout=300) == 0, p.stderr.read()[-1500:]
    from segkd_nb.models import load_checkpoint
    write_pseudo_labels(load_checkpoint(tmp_path/'t.pt')[0], paired_dirs(root/'images', root/'labels', idd_lite_taxonomy()),
                        TaxonomyMapping(cv, idd_lite_taxonomy(), CAMVID_TO_IDD), tmp_path/'one', flip=False, scales=(1,), progress=False)
    assert _files(tmp_path/'cli') == _files(tmp_path/'one') and len(_files(tmp_path/'one')) == 24
    (tmp_path/'bad.csv').write_text('0,Sky,heaven\n')
    r = subprocess.run(args[:6] + [str(tmp_path/'bad.csv')] + args[7:] + ['--out', str(tmp_path/'x')], env=_env(), capture_output=True, text=True)
    assert r.returncode == 2 and "target classes ['heaven']" in r.stderr
