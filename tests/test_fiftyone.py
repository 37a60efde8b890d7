"FiftyOne export against a throw-away mongod (the `fo_db` fixture): fields, mask targets, id offset, stored mIoU, re-export, PNG folders."
import json, os, socket, subprocess, sys, time
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from segkd_nb.data import DataError, Taxonomy, _write_pair, camvid_taxonomy, folder_pairs
from segkd_nb.metrics import ConfusionMatrix

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')  # fiftyone's dependencies are noisy

def _tiny(root, n=3, seed=0):
    "n CamVid-style 24x32 pairs (raw void 11 in a 4x4 corner); returns the dataset and the expected class-id masks."
    rng = np.random.default_rng(seed); gts = {}
    for k in range(n):
        lbl = rng.integers(0, 11, (24, 32), dtype=np.uint8); lbl[:4, :4] = 11
        _write_pair(root, f'img{k}', rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), lbl)
        gts[f'img{k}'] = np.where(lbl == 11, 255, lbl).astype(np.uint8)
    return folder_pairs(root, camvid_taxonomy()), gts

def _noisy(gts, seed=1):
    "A fake prediction: ground truth (void -> 0) with a different block of rows set to Road in each image."
    out = {}
    for k, (i, g) in enumerate(gts.items()):
        p = np.where(g == 255, 0, g).astype(np.uint8); p[6:6 + 3 * (k + seed), :] = 3
        out[i] = p
    return out

def _ids(stored, offset=1):
    "Class ids back from a mask stored with `id_offset` (0 -> 255)."
    return np.where(stored == 0, 255, stored.astype(np.int64) - offset).astype(np.uint8)

def _miou(preds, gts, n=11):
    cm = ConfusionMatrix(n)
    for i in gts: cm.update(torch.from_numpy(np.asarray(preds[i])).long()[None], torch.from_numpy(gts[i]).long()[None])
    return cm

def test_import_is_light_and_env():
    "`import segkd_nb.fo` and `fo_env()` must not import fiftyone; fo_env sets the database folder from settings (in a fresh process)."
    code = ("import sys, json, os; import segkd_nb.fo as m; env = m.fo_env(); "
            "os.environ['FIFTYONE_DATABASE_URI'] = 'mongodb://127.0.0.1:1'; env2 = m.fo_env(); "
            "print(json.dumps({'imported': [k for k in sys.modules if k == 'fiftyone' or k.startswith('fiftyone.')], 'env': env, 'env2': env2}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith('FIFTYONE_')}
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['imported'] == []
    from segkd_nb.config import load_settings
    assert out['env']['FIFTYONE_DATABASE_DIR'] == str(load_settings(ROOT/'settings.ini').path('fiftyone_db_dir'))
    assert out['env']['FIFTYONE_DATABASE_VALIDATION'] == 'false' and out['env']['FIFTYONE_DO_NOT_TRACK'] == 'true'
    assert 'FIFTYONE_DATABASE_DIR' not in out['env2']  # with a server URI set, the folder is left alone

def test_fo_db_is_isolated(fo_db):
    assert fo_db.running and fo_db.uri.startswith('mongodb://127.0.0.1:')
    assert os.environ['FIFTYONE_DATABASE_URI'] == fo_db.uri
    assert sum(f.stat().st_size for f in fo_db.dbpath.rglob('*') if f.is_file()) < 64 * 2**20  # no 300 MB journal
    import fiftyone as fo
    assert fo.config.database_uri == fo_db.uri and fo.config.database_name == 'segkd_test'

def test_export_fields_targets_metrics(fo_db, tmp_path):
    from segkd_nb.fo import export_segmentation, dataset_summary
    ds, gts = _tiny(tmp_path/'tiny')
    teacher = _noisy(gts)
    d = export_segmentation('t_export', ds, {'pred_teacher': teacher}, tmp_path/'fo', ds.tax, overwrite=True)
    assert len(d) == 3 and d.persistent
    tax = camvid_taxonomy()
    want = {i + 1: c for i, c in enumerate(tax.classes)}  # shifted by the default id_offset=1; 0 (ignore) unnamed
    assert d.mask_targets == {'gt': want, 'pred_teacher': want}
    assert d.info['mask_id_offset'] == 1
    for s in d:
        assert Path(s.filepath) == (tmp_path/'tiny'/'images'/f'{s.sid}.png').resolve()
        # the stored masks are written under out_dir, class id + 1, void (raw 11) -> 0
        assert Path(s.gt.mask_path).parent == (tmp_path/'fo'/'gt').resolve()
        np.testing.assert_array_equal(_ids(s.gt.get_mask()), gts[s.sid])
        np.testing.assert_array_equal(_ids(s.pred_teacher.get_mask()), teacher[s.sid])
        per = _miou({s.sid: teacher[s.sid]}, {s.sid: gts[s.sid]}).miou()
        assert s.iou_pred_teacher == pytest.approx(per)
    m = d.info['metrics']['pred_teacher']
    cm = _miou(teacher, gts)
    assert m['miou'] == pytest.approx(cm.miou()) and m['n_images'] == 3
    assert m['per_class_iou'] == pytest.approx(cm.summary(tax.classes)['per_class_iou'])
    # the set's mIoU is one accumulated matrix, not the mean of per-image mIoUs
    assert m['miou'] != pytest.approx(np.mean(d.values('iou_pred_teacher')))
    assert d.info['taxonomy']['classes'] == tax.classes
    assert 'pred_teacher: mIoU' in dataset_summary(d)
    import fiftyone as fo
    assert fo.load_dataset('t_export').count() == 3  # stored, not only in memory

def test_reexport_updates_without_duplicates(fo_db, tmp_path):
    from segkd_nb.fo import export_segmentation
    ds, gts = _tiny(tmp_path/'tiny')
    d = export_segmentation('t_again', ds, {'pred_teacher': _noisy(gts, 1)}, tmp_path/'fo', overwrite=True)
    ids = sorted(d.values('id')); m1 = d.info['metrics']['pred_teacher']['miou']
    better = _noisy(gts, 0)
    paths = sorted(d.values('pred_teacher.mask_path'))
    d = export_segmentation('t_again', ds, {'pred_teacher': better}, tmp_path/'fo')
    assert len(d) == 3 and sorted(d.values('id')) == ids  # same samples, updated in place
    assert sorted(d.values('pred_teacher.mask_path')) == paths  # shifted masks rewritten at the same paths
    assert sorted(p.name for p in (tmp_path/'fo'/'pred_teacher').iterdir()) == ['img0.png', 'img1.png', 'img2.png']  # no temp files left
    assert d.info['metrics']['pred_teacher']['miou'] == pytest.approx(_miou(better, gts).miou()) != pytest.approx(m1)
    for s in d: np.testing.assert_array_equal(_ids(s.pred_teacher.get_mask()), better[s.sid])
    # a bigger set adds only the new images; a subset leaves the others alone
    ds4, gts4 = _tiny(tmp_path/'tiny', n=4)
    d = export_segmentation('t_again', ds4, None, tmp_path/'fo')
    assert len(d) == 4 and set(ids) < set(d.values('id'))
    d = export_segmentation('t_again', ds4.subset([0]), None, tmp_path/'fo')
    assert len(d) == 4
    d = export_segmentation('t_again', ds, None, tmp_path/'fo', overwrite=True)
    assert len(d) == 3 and not set(ids) & set(d.values('id'))

def test_predictions_from_png_folder(fo_db, tmp_path):
    from segkd_nb.fo import export_segmentation
    ds, gts = _tiny(tmp_path/'tiny')
    pdir, pal = tmp_path/'student', tmp_path/'student_p'
    pdir.mkdir(); pal.mkdir()
    preds = _noisy(gts, 2)
    for i, p in preds.items():
        Image.fromarray(p, mode='L').save(pdir/f'{i}.png')
        im = Image.fromarray(p, mode='L').convert('P'); im.putpalette([v for k in range(256) for v in (k, 0, 0)]); im.save(pal/f'{i}.png')
    small = {i: np.asarray(Image.fromarray(p).resize((16, 12), Image.NEAREST)) for i, p in preds.items()}
    d = export_segmentation('t_png', ds, {'pred_student': pdir, 'pred_pal': pal, 'pred_small': small,
                                         'pred_paths': {i: str(pdir/f'{i}.png') for i in list(preds)[:2]}}, tmp_path/'fo', overwrite=True,
                            id_offset=0)
    for s in d:
        assert s.pred_student.mask_path == str(pdir/f'{s.sid}.png')  # grey class-id PNGs are used where they are
        assert Path(s.pred_pal.mask_path).parent == (tmp_path/'fo'/'pred_pal').resolve()  # palette PNGs are re-encoded
        np.testing.assert_array_equal(s.pred_pal.get_mask(), preds[s.sid])
        assert s.pred_small.get_mask().shape == (24, 32)  # resized (nearest) to the label's size
    assert d.info['metrics']['pred_student']['miou'] == pytest.approx(_miou(preds, gts).miou())
    assert d.info['metrics']['pred_pal']['miou'] == pytest.approx(_miou(preds, gts).miou())
    assert d.info['metrics']['pred_paths']['n_images'] == 2 and d.count('pred_paths') == 2

def test_identity_labels_are_referenced(fo_db, tmp_path):
    "Labels that already hold class ids (and 255) are not copied."
    from segkd_nb.fo import export_segmentation
    tax = Taxonomy('abc', ['a', 'b', 'c'])
    rng = np.random.default_rng(0)
    for k in range(2):
        lbl = rng.integers(0, 3, (8, 8), dtype=np.uint8); lbl[0] = 255
        _write_pair(tmp_path/'abc', f'x{k}', rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), lbl)
    ds = folder_pairs(tmp_path/'abc', tax)
    d = export_segmentation('t_ident', ds, {'pred_logits': {'x0': torch.randn(3, 8, 8)}}, tmp_path/'fo', overwrite=True, id_offset=0)
    assert sorted(Path(p).name for p in d.values('gt.mask_path')) == ['x0.png', 'x1.png']
    assert all(Path(p).parent == (tmp_path/'abc'/'labels').resolve() for p in d.values('gt.mask_path'))
    assert not (tmp_path/'fo'/'gt').exists()
    assert d.mask_targets['pred_logits'] == {0: 'a', 1: 'b', 2: 'c', 255: 'ignore'}
    assert d.count('pred_logits') == 1

def test_id_offset_makes_class_zero_visible(fo_db, tmp_path):
    "With the default id_offset=1, class 0 is stored as 1 (the App draws it), ignore as 0; names, colours and metrics follow."
    from segkd_nb.fo import export_segmentation
    ds, gts = _tiny(tmp_path/'tiny', n=2)
    teacher = _noisy(gts)
    d = export_segmentation('t_offset', ds, {'pred_teacher': teacher}, tmp_path/'fo', overwrite=True)
    tax = camvid_taxonomy()
    for s in d:
        g, stored = gts[s.sid], s.gt.get_mask()
        assert (g == 0).any() and (stored[g == 0] == 1).all()  # Sky (class 0) -> 1
        assert (stored[g == 255] == 0).all() and (stored[g != 255] > 0).all()  # only ignore is 0
        np.testing.assert_array_equal(stored[g != 255], g[g != 255] + 1)
        p = s.pred_teacher.get_mask()
        np.testing.assert_array_equal(p, teacher[s.sid] + 1)  # predictions carry no ignore: every pixel shifted
        assert Path(s.pred_teacher.mask_path).parent == (tmp_path/'fo'/'pred_teacher').resolve()
        assert s.iou_pred_teacher == pytest.approx(_miou({s.sid: teacher[s.sid]}, {s.sid: g}).miou())  # on the class ids
    mt = d.mask_targets['gt']
    assert mt[1] == 'Sky' and mt[4] == 'Road' and mt[11] == tax.classes[10] and 0 not in mt and 255 not in mt
    assert d.info['mask_id_offset'] == 1
    assert d.info['metrics']['pred_teacher']['miou'] == pytest.approx(_miou(teacher, gts).miou())
    cols = {c['intTarget']: c['color'] for c in next(f for f in d.app_config.color_scheme.fields if f['path'] == 'gt')['maskTargetsColors']}
    assert cols == {k + 1: '#%02x%02x%02x' % tuple(int(v) for v in c) for k, c in enumerate(tax.palette)}  # palette at shifted ids, none for 0
    # the label files themselves are untouched, and the same offset is needed to update the dataset
    assert not any(p.startswith(str((tmp_path/'tiny').resolve())) for p in d.values('gt.mask_path'))
    with pytest.raises(ValueError, match='exported with id_offset=1'): export_segmentation('t_offset', ds, None, tmp_path/'fo', id_offset=0)
    d0 = export_segmentation('t_offset', ds, {'pred_teacher': teacher}, tmp_path/'fo0', overwrite=True, id_offset=0)
    assert d0.info['mask_id_offset'] == 0 and d0.mask_targets['gt'][0] == 'Sky' and d0.mask_targets['gt'][255] == 'ignore'
    assert d0.info['metrics']['pred_teacher']['miou'] == pytest.approx(d.info['metrics']['pred_teacher']['miou'])
    for s in d0: np.testing.assert_array_equal(s.gt.get_mask(), gts[s.sid])
    with pytest.raises(ValueError, match='id_offset must be'): export_segmentation('t_offset', ds, None, tmp_path/'fo', id_offset=-1)
    with pytest.raises(ValueError, match='id_offset must be'): export_segmentation('t_offset', ds, None, tmp_path/'fo', id_offset=250)

def test_bad_inputs(fo_db, tmp_path):
    from segkd_nb.fo import export_segmentation
    ds, gts = _tiny(tmp_path/'tiny')
    bad = {i: np.full((24, 32), 40, np.uint8) for i in gts}
    with pytest.raises(DataError, match=r'pred_x/img0: predicted ids \[40\]'): export_segmentation('t_bad', ds, {'pred_x': bad}, tmp_path/'fo')
    with pytest.raises(DataError, match="ids that are not in"): export_segmentation('t_bad', ds, {'pred_x': {'zzz': gts['img0']}}, tmp_path/'fo')
    with pytest.raises(ValueError, match='cannot be a prediction field'): export_segmentation('t_bad', ds, {'gt': gts}, tmp_path/'fo')
    with pytest.raises(ValueError, match='has 3 classes'): export_segmentation('t_bad', ds, None, tmp_path/'fo', Taxonomy('abc', list('abc')))

def test_add_fields(fo_db, tmp_path):
    import fiftyone as fo
    from segkd_nb.fo import export_segmentation, add_fields
    ds, gts = _tiny(tmp_path/'tiny')
    d = export_segmentation('t_fields', ds, None, tmp_path/'fo', overwrite=True)
    n = add_fields(d, {i: {'weight': np.float32(0.5 + k), 'n_void': torch.tensor(16)} for k, i in enumerate(gts)})
    assert n == 3
    assert dict(zip(d.values('sid'), d.values('weight'))) == {'img0': 0.5, 'img1': 1.5, 'img2': 2.5}
    assert d.values('n_void') == [16, 16, 16]
    add_fields(d, {'img1': {'weight': 9.0}})  # a partial update leaves the others
    assert dict(zip(d.values('sid'), d.values('weight')))['img0'] == 0.5
    with pytest.raises(KeyError, match="no sample with sid"): add_fields(d, {'nope': {'weight': 1.0}})
    # datasets without `sid` are keyed by the file stem
    plain = fo.Dataset('t_plain', overwrite=True)
    plain.add_samples([fo.Sample(filepath=str(tmp_path/'tiny'/'images'/f'{i}.png')) for i in gts], progress=False)
    add_fields(plain, {'img2': {'score': 1.0}})
    assert plain.values('score') == [None, None, 1.0]

@pytest.mark.slow
@pytest.mark.browser
def test_launch_app_answers(fo_db, tmp_path):
    "The App serves on 127.0.0.1 (~15 s). Runs without a browser; `browser`-marked so that `-m 'not browser'` leaves it out."
    from segkd_nb.fo import export_segmentation, launch_app, _http_ok
    ds, gts = _tiny(tmp_path/'tiny', n=2)
    export_segmentation('t_app', ds, {'pred_teacher': _noisy(gts)}, tmp_path/'fo', overwrite=True)
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    t0 = time.time()
    session = launch_app('t_app', port=port)
    try:
        assert _http_ok(f'http://127.0.0.1:{port}/'), 'the App did not answer'
        print(f'App answered after {time.time()-t0:.1f}s')
        assert session.dataset.name == 't_app' and session.server_address == '127.0.0.1'
    finally:
        import fiftyone as fo
        fo.close_app()

# ---------------------------------------------------------------- real data and the skip helper (tests/conftest.py)
def test_require_real_skips_with_message(monkeypatch):
    from conftest import require_real
    monkeypatch.setenv('SEGKD_CAMVID_ROOT', '../shared/real/nowhere')
    with pytest.raises(pytest.skip.Exception, match=r'\.\./shared/real/nowhere not found; data tests skipped'): require_real('camvid')
    with pytest.raises(KeyError, match='unknown real-data setting'): require_real('mnist')

@pytest.mark.data('camvid_root')
def test_export_real_camvid(fo_db, real_dir, tmp_path):
    from segkd_nb.fo import export_segmentation
    ds = folder_pairs(real_dir('camvid_root')/'val', camvid_taxonomy()).subset(range(4))
    d = export_segmentation('t_camvid', ds, None, tmp_path/'fo', overwrite=True)
    assert len(d) == 4 and d.mask_targets['gt'][4] == 'Road'  # class 3 stored as 4 (default id_offset=1)
    for s in d: assert set(np.unique(s.gt.get_mask()).tolist()) <= set(range(12))
