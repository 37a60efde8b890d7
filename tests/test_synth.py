"Mechanics of the synthetic street dataset: the committed folder regenerates bit-exactly, rendering is deterministic, labels are valid, and the no-learning baselines stay low."
import hashlib, json
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from segkd_nb.data import DataError, Taxonomy, read_mapping
from segkd_nb.metrics import ConfusionMatrix, location_prior, colour_lut, colour_predict
from segkd_nb.synth import (STREET_CLASSES, generate_samples, load_samples, pixel_hashes, read_manifest, render_ood, render_scene,
                            sample_baselines, samples_pool, split_rng, street_coarse_taxonomy, street_taxonomy, fine_to_coarse,
                            verify_samples)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO/'data_samples'
BOUND = 0.30  # both no-learning baselines must stay under this mIoU on val (measured: ~0.14 and ~0.18)

# ---------------------------------------------------------------- helpers written independently of the module
def decoded_hash(p:Path)->str:
    "SHA-256 of a file's decoded pixels, as the manifest defines it: dtype string, shape, then the bytes."
    with Image.open(p) as im: a = np.asarray(im if p.parent.name == 'labels' else im.convert('RGB'))
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f'{a.dtype.str}{a.shape}'.encode() + a.tobytes()).hexdigest()

def manifest(root:Path)->dict:
    "Parse a sha256sum-style manifest by hand."
    out = {}
    for line in (root/'pixels.sha256').read_text().splitlines():
        h, name = line.split('  ', 1); out[name] = h
    return out

def stack_split(root:Path, split:str)->tuple:
    "All images [N,H,W,3] and labels [N,H,W] of a split, read with PIL directly."
    names = sorted((root/split/'images').glob('*.png'))
    imgs = np.stack([np.asarray(Image.open(p).convert('RGB')) for p in names])
    labs = np.stack([np.asarray(Image.open(root/split/'labels'/p.name)) for p in names])
    return imgs, labs

def miou_np(pred:np.ndarray, gt:np.ndarray, n:int)->float:
    "mIoU from a numpy confusion matrix over classes present in gt or prediction."
    cm = np.bincount(gt.ravel().astype(np.int64) * n + pred.ravel(), minlength=n * n).reshape(n, n)
    tp = np.diag(cm); denom = cm.sum(0) + cm.sum(1) - tp
    return float(np.mean(tp[denom > 0] / denom[denom > 0]))

@pytest.fixture(scope='module')
def committed():
    if not (SAMPLES/'pixels.sha256').exists(): pytest.fail(f"{SAMPLES} has no pixels.sha256: the committed samples are missing")
    return SAMPLES

# ---------------------------------------------------------------- the committed folder
def test_committed_files_match_manifest(committed):
    want = manifest(committed)
    files = sorted(p for p in committed.rglob('*.png'))
    assert len(files) == len(want) == 400 * 2 + 100 * 2 + 200
    got = {p.relative_to(committed).as_posix(): decoded_hash(p) for p in files}
    assert got == want

def test_regeneration_matches_committed(committed, tmp_path):
    "Regenerate the whole folder from generator.json and compare decoded-pixel hashes with the committed manifest."
    params = json.loads((committed/'generator.json').read_text())
    assert params['seed'] == 0 and params['size'] == [96, 128]
    generate_samples(tmp_path, seed=params['seed'], n_train=params['n_train'], n_val=params['n_val'], n_pool_in=params['n_pool_in'],
                     n_pool_ood=params['n_pool_ood'], size=tuple(params['size']), baselines=False)
    want = manifest(committed)
    got = {p.relative_to(tmp_path).as_posix(): decoded_hash(p) for p in sorted(tmp_path.rglob('*.png'))}
    assert sorted(got) == sorted(want)
    changed = sorted(k for k in want if want[k] != got[k])
    assert not changed, f"{len(changed)} regenerated files differ from the committed ones, e.g. {changed[:5]} (numpy {np.__version__})"
    assert manifest(tmp_path) == want  # the generator's own manifest agrees
    for f in ('taxonomy.json', 'taxonomy_coarse.json', 'fine_to_coarse.yaml'):
        assert (tmp_path/f).read_text() == (committed/f).read_text(), f

def test_committed_metadata(committed):
    assert Taxonomy.load(committed/'taxonomy.json').classes == STREET_CLASSES
    assert Taxonomy.load(committed/'taxonomy_coarse.json').classes == street_coarse_taxonomy().classes
    m = read_mapping(committed/'fine_to_coarse.yaml', street_taxonomy(), street_coarse_taxonomy())
    assert torch.equal(m.matrix, fine_to_coarse().matrix) and m.is_function
    readme = (committed/'README.md').read_text()
    assert 'location prior' in readme and 'colour classifier' in readme and 'verify_samples' in readme
    size = sum(p.stat().st_size for p in committed.rglob('*') if p.is_file())
    assert size < 20e6, f"data_samples is {size/1e6:.1f} MB"

# ---------------------------------------------------------------- determinism and labels
def test_same_seed_same_arrays():
    for i in range(3):
        a, b = render_scene(split_rng(7, 'train', i)), render_scene(split_rng(7, 'train', i))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert np.array_equal(render_ood(split_rng(7, 'pool_ood', i)), render_ood(split_rng(7, 'pool_ood', i)))
    x, y = render_scene(split_rng(7, 'train', 0)), render_scene(split_rng(8, 'train', 0))
    assert not np.array_equal(x[0], y[0])
    # the pool's street scenes come from another stream than train
    assert not np.array_equal(render_scene(split_rng(7, 'pool_in', 0))[0], x[0])

def test_adding_pool_images_keeps_train(tmp_path):
    a, b = tmp_path/'a', tmp_path/'b'
    generate_samples(a, seed=3, n_train=3, n_val=1, n_pool_in=1, n_pool_ood=1, size=(32, 48), baselines=False)
    generate_samples(b, seed=3, n_train=3, n_val=2, n_pool_in=4, n_pool_ood=3, size=(32, 48), baselines=False)
    ha, hb = read_manifest(a), read_manifest(b)
    assert all(hb[k] == v for k, v in ha.items())
    # regenerating a smaller folder over a bigger one leaves no stale files
    generate_samples(b, seed=3, n_train=3, n_val=1, n_pool_in=1, n_pool_ood=1, size=(32, 48), baselines=False)
    assert read_manifest(b) == ha and pixel_hashes(b) == ha

@pytest.mark.parametrize('size', [(96, 128), (48, 64), (120, 200)])
def test_masks_within_taxonomy(size):
    labs = [render_scene(np.random.default_rng([11, k]), size) for k in range(12)]
    for img, lab in labs:
        assert img.shape == (*size, 3) and img.dtype == np.uint8
        assert lab.shape == size and lab.dtype == np.uint8
        assert lab.max() < len(STREET_CLASSES)
    seen = set(np.unique(np.concatenate([l.ravel() for _, l in labs])).tolist())
    assert {0, 2, 3} <= seen  # road, building and sky turn up in any dozen scenes

def test_committed_labels_cover_every_class(committed):
    _, labs = stack_split(committed, 'train')
    counts = np.bincount(labs.ravel(), minlength=256)
    assert counts[len(STREET_CLASSES):].sum() == 0
    assert (counts[:len(STREET_CLASSES)] > 0).all()
    assert all(Image.open(p).mode == 'L' for p in sorted((committed/'val'/'labels').glob('*.png'))[:5])

def test_ood_differs_from_streets():
    sat = lambda x: float((x.max(-1).astype(int) - x.min(-1)).mean())
    ood = [render_ood(np.random.default_rng([5, k])) for k in range(20)]
    street = [render_scene(np.random.default_rng([5, k]))[0] for k in range(20)]
    assert np.mean([sat(x) for x in ood]) > 1.5 * np.mean([sat(x) for x in street])

# ---------------------------------------------------------------- loading
def test_load_samples(committed):
    tr, va, pool = load_samples('train'), load_samples('val'), load_samples('pool')
    assert (len(tr), len(va), len(pool)) == (400, 100, 200)
    assert not pool.labelled and tr.tax.name == 'street9'
    it = va[3]
    assert it['image'].shape == (3, 96, 128) and it['mask'].dtype == torch.int64 and it['id'] == 'val_0003'
    assert len(samples_pool()) == 200 and all(p.name.startswith('ood_') for p in samples_pool(kind='ood'))
    with pytest.raises(ValueError, match='unknown split'): load_samples('test')

def test_load_samples_missing_folder(tmp_path):
    with pytest.raises(DataError, match='generate_samples'): load_samples('train', tmp_path)

def test_verify_catches_tampering(tmp_path):
    generate_samples(tmp_path, seed=1, n_train=2, n_val=1, n_pool_in=1, n_pool_ood=1, size=(32, 48), baselines=False)
    assert verify_samples(tmp_path)['ok']
    p = tmp_path/'pool'/'images'/'ood_0000.png'
    orig = p.read_bytes()
    a = np.asarray(Image.open(p)).copy(); a[0, 0, 0] ^= 1; Image.fromarray(a).save(p)
    r = verify_samples(tmp_path, regenerate=False)
    assert not r['ok'] and r['files']['changed'] == ['pool/images/ood_0000.png']
    p.write_bytes(orig)
    # files intact, but the generator no longer reproduces them (here: another seed)
    params = json.loads((tmp_path/'generator.json').read_text()); params['seed'] = 2
    (tmp_path/'generator.json').write_text(json.dumps(params))
    r = verify_samples(tmp_path)
    assert not r['ok'] and not any(r['files'].values()) and len(r['regenerated']['changed']) == 8

# ---------------------------------------------------------------- the no-learning baselines
def test_no_learning_baselines_are_low(committed):
    "Location prior and colour classifier, fit on train and scored on val, computed here in numpy and by the module."
    ti, tm = stack_split(committed, 'train'); vi, vm = stack_split(committed, 'val')
    n = len(STREET_CLASSES)
    # location prior: most frequent training class per pixel
    counts = np.stack([(tm == k).sum(0) for k in range(n)])  # [K,H,W]
    loc = np.broadcast_to(counts.argmax(0), vm.shape)
    # colour classifier: most frequent class per colour quantised to 16 levels per channel
    q = lambda x: ((x.astype(np.float64) / 255) * (16 - 1e-3)).astype(np.int64) @ np.array([256, 16, 1])
    table = np.bincount(q(ti).ravel() * n + tm.ravel(), minlength=16**3 * n).reshape(16**3, n).argmax(1)
    col = table[q(vi)]
    loc_miou, col_miou = miou_np(loc, vm, n), miou_np(col, vm, n)
    print(f"\nno-learning baselines on val: location prior {100*loc_miou:.1f} mIoU, colour classifier {100*col_miou:.1f} mIoU")
    assert 0.05 < loc_miou < BOUND and 0.05 < col_miou < BOUND
    mod = sample_baselines(committed)
    assert mod['location prior']['miou'] == pytest.approx(loc_miou, abs=1e-9)
    assert mod['colour classifier']['miou'] == pytest.approx(col_miou, abs=1e-9)
