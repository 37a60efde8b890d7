"Mechanics of DFSS: BN statistics and ADS against loop versions, the pooled zero, WDPD guarantees, no labels, bad pools, CLI, FiftyOne."
import argparse, csv, json, logging, math
from pathlib import Path
import numpy as np, pytest, torch, torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader
from segkd_nb.data import PoolDataset, collate_skip, DataError
from segkd_nb.dfss import (bn_layers, set_bn_stats, ads_scores, image_moments, pooled_distance, moment_distances, ads_greedy,
                           ads_select, resolve_k, auroc, wdpd_w0, wdpd_weights, wdpd_schedule, SCHEDULES, WDPDKDTerm,
                           pool_paths, data_free_data, AuxPool, check_label_free, distill_data_free)

# ---------------------------------------------------------------- small models and pools
class Toy(nn.Module):
    "A plain (non-SegNet) CNN with BatchNorm2d, one 1x1 BN input and a SyncBatchNorm."
    def __init__(self, sync=False):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.c2 = nn.Conv2d(5, 7, 3, stride=2, padding=1)
        self.b2 = nn.SyncBatchNorm(7) if sync else nn.BatchNorm2d(7)
        self.head = nn.Conv2d(7, 4, 1)
    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        return self.head(torch.relu(self.b2(self.c2(x))))

def randomise_stats(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    for b in bn_layers(m).values():
        b.running_mean.copy_(torch.randn(b.num_features, generator=g) * 0.3)
        b.running_var.copy_(torch.rand(b.num_features, generator=g) + 0.5)
    return m.eval()

def images(n, seed=0, h=16, w=20):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))

class Items(torch.utils.data.Dataset):
    def __init__(self, x): self.x = x
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return {'image': self.x[i], 'id': f'im{i}', 'index': i}

def loader(x, bs=4): return DataLoader(Items(x), batch_size=bs, collate_fn=collate_skip)

def write_pool(root, n_in=6, n_ood=6, seed=0, size=(24, 32)):
    r = np.random.default_rng(seed); root = Path(root); root.mkdir(parents=True, exist_ok=True)
    for i in range(n_in):
        a = np.full((*size, 3), 110, np.uint8) + r.integers(0, 20, (*size, 3)).astype(np.uint8)
        Image.fromarray(a).save(root/f'in_{i:02d}.png')
    for i in range(n_ood):
        Image.fromarray(r.integers(0, 256, (*size, 3)).astype(np.uint8)).save(root/f'ood_{i:02d}.png')
    return root

# ---------------------------------------------------------------- an independent loop version (numpy, float64)
def loop_distances(model, xs, norm='none'):
    "Per-image per-layer distances: capture BN inputs with a plain hook, then numpy arithmetic per channel."
    bns = bn_layers(model); out = np.zeros((len(xs), len(bns)))
    for i, x in enumerate(xs):
        cap = {}
        hs = [m.register_forward_pre_hook(lambda mod, a, n=n: cap.__setitem__(n, a[0][0].detach().double().numpy())) for n, m in bns.items()]
        model.eval()
        with torch.no_grad(): model(x[None])
        for h in hs: h.remove()
        for l, (n, m) in enumerate(bns.items()):
            a = cap[n]; C = a.shape[0]
            mu = np.array([a[c].mean() for c in range(C)])
            var = np.array([((a[c] - a[c].mean()) ** 2).mean() for c in range(C)])
            d = math.sqrt(((mu - m.running_mean.double().numpy()) ** 2).sum()) + math.sqrt(((var - m.running_var.double().numpy()) ** 2).sum())
            out[i, l] = d / {'none': 1, 'channels': C, 'sqrt_channels': math.sqrt(C)}[norm]
    return out

# ---------------------------------------------------------------- ADS
@pytest.mark.parametrize('norm', ['none', 'channels', 'sqrt_channels'])
@pytest.mark.parametrize('early_exit', [True, False])
def test_vectorised_equals_loop(norm, early_exit):
    m, x = randomise_stats(Toy()), images(7)
    sc = ads_scores(m, loader(x, 3), norm=norm, early_exit=early_exit)
    np.testing.assert_allclose(sc.per_layer.numpy(), loop_distances(m, x, norm), rtol=1e-5, atol=1e-6)
    assert sc.ids == [f'im{i}' for i in range(7)]

def test_segnet_vectorised_equals_loop():
    from segkd_nb.models import build_model
    torch.manual_seed(0)
    m = set_bn_stats(build_model('tiny_s', 3), images(6, 1, 32, 32)).eval()
    x = images(3, 2, 32, 32)
    sc = ads_scores(m, loader(x, 2), norm='sqrt_channels')
    np.testing.assert_allclose(sc.per_layer.numpy(), loop_distances(m, x, 'sqrt_channels'), rtol=1e-5, atol=1e-5)

def test_layer_choice_and_weights():
    m, x = randomise_stats(Toy()), images(5)
    full = ads_scores(m, loader(x))
    only = ads_scores(m, loader(x), layers=['b2'])
    assert only.layers == ['b2'] and torch.allclose(only.per_layer[:, 0], full.per_layer[:, 1])
    assert ads_scores(m, loader(x), layers='b1').layers == ['b1']
    w = ads_scores(m, loader(x), weights={'b1': 2.0, 'b2': 0.5})
    assert torch.allclose(w.distance, 2 * full.per_layer[:, 0] + 0.5 * full.per_layer[:, 1], atol=1e-5)
    with pytest.raises(KeyError, match='unknown BN layers'): ads_scores(m, loader(x), layers=['nope'])

def test_sync_batchnorm_is_found_and_scored():
    m = randomise_stats(Toy(sync=True))
    assert list(bn_layers(m)) == ['b1', 'b2'] and isinstance(bn_layers(m)['b2'], nn.SyncBatchNorm)
    sc = ads_scores(m, loader(images(4)))
    np.testing.assert_allclose(sc.per_layer.numpy(), loop_distances(m, images(4)), rtol=1e-5, atol=1e-6)

def test_models_without_bn_get_a_clear_error():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    for f in (lambda: bn_layers(plain), lambda: ads_scores(plain, loader(images(2))), lambda: image_moments(plain, loader(images(2)))):
        with pytest.raises(ValueError, match='no BatchNorm2d/SyncBatchNorm'): f()
    with pytest.raises(ValueError, match='no BatchNorm'): data_free_data(plain, [], select='all')
    untracked = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match='track_running_stats'): bn_layers(untracked)

def test_running_stats_never_change_and_mode_is_restored():
    m = randomise_stats(Toy()).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ads_scores(m, loader(images(6))); image_moments(m, loader(images(6)))
    assert m.training
    for k, v in m.state_dict().items(): assert torch.equal(v, before[k]), k

def test_selected_distances_not_above_unselected():
    m, x = randomise_stats(Toy()), images(20, 3)
    d = ads_scores(m, loader(x)).distance
    for k in (1, 5, 0.5, 19):
        sel = ads_select(d, k); rest = torch.ones(len(d), dtype=torch.bool); rest[sel] = False
        assert len(sel) == resolve_k(k, len(d))
        assert d[sel].max() <= d[rest].min()
        assert torch.all(d[sel].diff() >= 0)  # closest first

def test_resolve_k():
    assert resolve_k(None, 10) == 10 and resolve_k(0.25, 10) == 2 and resolve_k(1.0, 10) == 10 and resolve_k('3', 10) == 3 and resolve_k('0.5', 10) == 5
    for bad in (0, 11, 0.0, 1.5, True, 'x'):
        with pytest.raises((ValueError, TypeError)): resolve_k(bad, 10)

def test_pooled_distance_zero_when_stats_come_from_the_scored_images():
    x = images(12, 4)
    m = set_bn_stats(Toy(), x).eval()
    mom = image_moments(m, loader(x, 5))
    assert pooled_distance(mom) == pytest.approx(0, abs=1e-4)
    assert pooled_distance(mom, [0, 1, 2]) > 1e-3  # a subset's pooled statistics differ
    # per-image mode: one image is its own pooled set
    one = set_bn_stats(Toy(), x[:1]).eval()
    assert ads_scores(one, loader(x[:1])).distance.item() == pytest.approx(0, abs=1e-4)
    # set_bn_stats writes the pooled statistics of each layer's input, as a loop over images would compute them
    cap = []
    h = m.b2.register_forward_pre_hook(lambda mod, a: cap.append(a[0].detach().double()))
    with torch.no_grad(): m(x)
    h.remove()
    a = cap[0].permute(1, 0, 2, 3).reshape(7, -1)  # [C, N*H*W]
    assert torch.allclose(m.b2.running_mean.double(), a.mean(1), atol=1e-5)
    assert torch.allclose(m.b2.running_var.double(), a.var(1, unbiased=False), atol=1e-5)

def test_moments_give_the_same_per_image_distances():
    m, x = randomise_stats(Toy()), images(9)
    assert torch.allclose(moment_distances(image_moments(m, loader(x)), 'channels').float(), ads_scores(m, loader(x), norm='channels').per_layer, atol=1e-4)

def test_greedy_set_selection_equals_loop():
    m, x = randomise_stats(Toy(), 1), images(10, 5)
    mom = image_moments(m, loader(x))
    order, curve = ads_greedy(mom, 5, norm='channels')
    chosen = []
    def pooled_loop(idx):  # plain pooled statistics over the chosen images' stored moments
        tot = 0.0
        for n in mom.layers:
            mu = sum(mom.mean[n][i].double() for i in idx) / len(idx)
            var = sum(mom.sq[n][i].double() for i in idx) / len(idx) - mu**2
            rm, rv = mom.ref[n]
            tot += (float((mu - rm.double()).norm()) + float((var - rv.double()).norm())) / len(mu)
        return tot
    for _ in range(5):
        chosen.append(min((i for i in range(10) if i not in chosen), key=lambda i: pooled_loop(chosen + [i])))
    assert order.tolist() == chosen
    assert curve[-1].item() == pytest.approx(pooled_loop(chosen), rel=1e-6)

def test_auroc_against_pairs():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    r = np.random.default_rng(0); s, y = r.integers(0, 6, 50).astype(float), r.random(50) > 0.4
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a, ya in zip(s, y) if ya for b, yb in zip(s, y) if not yb]
    assert auroc(s, y) == pytest.approx(np.mean(pairs))
    with pytest.raises(ValueError, match='both classes'): auroc([1, 2], [0, 0])

# ---------------------------------------------------------------- WDPD
@pytest.mark.parametrize('schedule', SCHEDULES)
def test_wdpd_weights_bounded_monotone_uniform_at_end(schedule):
    d = torch.rand(40, generator=torch.Generator().manual_seed(1)) * 10
    o = torch.argsort(d)
    for rho in (0.2, 0.5, 1.0):
        for t in np.linspace(0, 1, 11):
            w = wdpd_weights(d, float(t), schedule, rho=rho, gamma0=3.0)
            assert ((w >= 0) & (w <= 1)).all()
            assert (w[o].diff() <= 1e-6).all(), (schedule, rho, t)  # a farther image never weighs more
        assert torch.equal(wdpd_weights(d, 1.0, schedule, rho=rho), torch.ones(40))
    if schedule != 'none':
        w_start = wdpd_weights(d, 0.0, schedule)
        assert w_start[o[0]] == 1 and w_start[o[-1]] == 0  # closest counts fully, farthest not at all at the start

def test_wdpd_w0_and_ramps():
    assert torch.allclose(wdpd_w0(torch.tensor([1., 3., 5.])), torch.tensor([1., .5, 0.]))
    assert torch.equal(wdpd_w0(torch.tensor([2., 2.])), torch.ones(2))
    w0 = torch.tensor([1., .5, 0.])
    assert torch.allclose(wdpd_schedule(w0, 0.25, 'linear', rho=0.5), torch.tensor([1., .75, .5]))
    assert torch.allclose(wdpd_schedule(w0, 0.25, 'cosine', rho=0.5), torch.tensor([1., .75, .5]))  # cos ramp at its midpoint is 1/2
    assert torch.allclose(wdpd_schedule(w0, 0.1, 'cosine', rho=0.5), w0 + (1 - w0) * 0.5 * (1 - math.cos(math.pi * 0.2)))
    with pytest.raises(ValueError, match='rho'): wdpd_schedule(w0, 0.1, 'linear', rho=0)
    with pytest.raises(ValueError, match='progress'): wdpd_schedule(w0, 1.5, 'linear')

def test_wdpd_term_equals_weighted_loop_and_is_registered():
    from segkd_nb.kd import TERMS, build_terms
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(3, 5, 4, 6, generator=g, requires_grad=True), torch.randn(3, 5, 4, 6, generator=g)
    w0, tau = torch.tensor([1.0, 0.3, 0.0]), 2.0
    ctx = {'s': {'logits': zs}, 't': {'logits': zt}, 'weight': w0, 'progress': 0.0}
    kd = []
    for i in range(3):
        tot = 0.0
        for y in range(4):
            for x in range(6):
                pt, ps = torch.softmax(zt[i, :, y, x] / tau, 0), torch.softmax(zs[i, :, y, x].detach() / tau, 0)
                tot += float((pt * (pt.log() - ps.log())).sum())
        kd.append(tau**2 * tot / 24)
    kd = torch.tensor(kd)
    loss = WDPDKDTerm(tau, 'linear', rho=0.5)(ctx)
    assert loss.item() == pytest.approx(float((w0 * kd).sum() / w0.sum()), rel=1e-5)
    loss.backward(); assert zs.grad[:2].abs().sum() > 0 and zs.grad[2].abs().sum() == 0  # the farthest image counts 0 at t=0
    assert WDPDKDTerm(tau, 'linear')(ctx | {'progress': 0.8}).item() == pytest.approx(float(kd.mean()), rel=1e-5)
    assert 'wdpd' in TERMS and isinstance(build_terms('wdpd:schedule=power')['wdpd'][1], WDPDKDTerm)

# ---------------------------------------------------------------- pools: bad files, label folders, no labels
def test_corrupt_and_unreadable_pool_images_are_skipped_and_counted(tmp_path, caplog):
    root = write_pool(tmp_path/'pool', 4, 4)
    (root/'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
    (root/'text.jpg').write_text('hello')
    m = randomise_stats(Toy())
    paths, ids = pool_paths(root)
    assert len(paths) == 10
    with caplog.at_level(logging.WARNING, logger='segkd_nb'):
        sc = ads_scores(m, DataLoader(PoolDataset(paths, (24, 32), ids), batch_size=3, collate_fn=collate_skip))
    assert sc.n_bad == 2 and len(sc) == 8 and 'broken' not in sc.ids and 'text' not in sc.ids
    assert 'skipped 2 unreadable' in caplog.text
    ds, info = data_free_data(m, root, 'all', size=(24, 32))
    assert info['n_bad'] == 2 and len(ds) == 8 and info['n_pool'] == 8
    # index positions stay right after skipped files: every id's distance is that image's own
    solo = ads_scores(m, DataLoader(PoolDataset([root/'ood_03.png'], (24, 32)), batch_size=1))
    assert info['distance'][info['ids'].index('ood_03')] == pytest.approx(solo.distance.item(), rel=1e-5)

def test_label_folders_are_left_out_of_the_pool(tmp_path, caplog):
    root = tmp_path/'data'
    write_pool(root/'images', 3, 0); write_pool(root/'labels', 3, 0); write_pool(root/'x'/'gtFine', 2, 0)
    with caplog.at_level(logging.WARNING, logger='segkd_nb'): paths, ids = pool_paths(root)
    assert ids == ['images/in_00', 'images/in_01', 'images/in_02'] and 'label folders' in caplog.text
    p2, i2 = pool_paths([root/'images', write_pool(tmp_path/'other', 1, 0)])
    assert i2 == ['images/in_00', 'images/in_01', 'images/in_02', 'other/in_00']
    with pytest.raises(DataError, match='no images'): pool_paths(tmp_path/'data'/'labels'/'..'/'x')

def test_data_free_selection_modes(tmp_path):
    root = write_pool(tmp_path/'pool', 6, 6)
    m = set_bn_stats(Toy(), torch.stack([PoolDataset(pool_paths(root)[0][:6], (24, 32))[i]['image'] for i in range(6)])).eval()
    ds, info = data_free_data(m, root, 'ads', k=6, size=(24, 32))
    assert sorted(info['selected']) == [f'in_{i:02d}' for i in range(6)]  # the in-distribution images are closest
    assert auroc(torch.tensor(info['distance']), torch.tensor([i.startswith('ood') for i in info['ids']])) == 1.0
    item = ds[0]
    assert set(item) == {'image', 'id', 'weight'} and item['weight'] == 1.0 and item['image'].shape == (3, 24, 32)
    assert min(info['w0']) == 0.0 and max(info['w0']) == 1.0
    _, s = data_free_data(m, root, 'ads', k=6, size=(24, 32), mode='set')
    assert len(s['selected']) == 6
    _, r1 = data_free_data(m, root, 'random', k=0.5, size=(24, 32), seed=3)
    _, r2 = data_free_data(m, root, 'random', k=0.5, size=(24, 32), seed=3)
    assert r1['selected'] == r2['selected'] and len(r1['selected']) == 6
    with pytest.raises(ValueError, match='select='): data_free_data(m, root, 'best')

class _LabelTrap(dict):
    "A batch that claims to hold a mask; reading it fails the test."
    def __contains__(self, k): return k == 'mask' or super().__contains__(k)
    def __getitem__(self, k):
        if k == 'mask': raise AssertionError('a label was read')
        return super().__getitem__(k)
    def get(self, k, default=None):
        if k == 'mask': raise AssertionError('a label was read')
        return super().get(k, default)

def test_the_data_free_loop_never_reads_a_label(tmp_path):
    from segkd_nb.models import build_model
    from segkd_nb.train import TrainConfig, Trainer, CETerm
    root = write_pool(tmp_path/'pool', 4, 4)
    torch.manual_seed(0)
    teacher = set_bn_stats(build_model('tiny_s', 3), images(4, 0, 24, 32)).eval()
    ds, _ = data_free_data(teacher, root, 'ads', k=6, size=(24, 32))
    assert 'mask' not in ds[0]
    class Trap(AuxPool): collate_fn = staticmethod(lambda b: _LabelTrap(collate_skip(b)))
    trap = Trap(ds.pool.paths, ds.ids, ds.w0, (24, 32))
    cfg = TrainConfig(steps=3, batch_size=3, device='cpu', progress=False, log_every=1)
    for schedule in ('linear', 'threshold'):
        tr = distill_data_free(build_model('tiny_s', 3), teacher, trap, cfg, schedule=schedule)
        assert len(tr.history) == 3 and all(np.isfinite(h['wdpd']) for h in tr.history)
    with pytest.raises(AssertionError, match='a label was read'):  # the trap works: a labelled term trips it
        Trainer(build_model('tiny_s', 3), {'ce': (1.0, CETerm())}, cfg).fit(trap)
    with pytest.raises(ValueError, match='need them'): distill_data_free(build_model('tiny_s', 3), teacher, trap, cfg, terms={'ce': (1.0, CETerm())})

# ---------------------------------------------------------------- CLI and FiftyOne
def _ckpt(tmp_path):
    from segkd_nb.models import build_model, save_checkpoint
    torch.manual_seed(0)
    m = set_bn_stats(build_model('tiny_s', 3), images(4, 0, 24, 32)).eval()
    return save_checkpoint(tmp_path/'t.pt', m), m

def test_cli_score_and_select(tmp_path):
    root = write_pool(tmp_path/'pool', 4, 4)
    ck, m = _ckpt(tmp_path)
    from segkd_nb.cli import build_parser
    ap = build_parser()
    a = ap.parse_args(['ads', 'score', '--teacher', str(ck), '--pool', str(root), '--size', '24x32', '--out', str(tmp_path/'s.csv'), '--device', 'cpu'])
    a.func(a)
    rows = list(csv.DictReader(open(tmp_path/'s.csv')))
    assert len(rows) == 8 and [k for k in rows[0] if k.startswith('d:')] == [f'd:{n}' for n in bn_layers(m)]
    direct = ads_scores(m, DataLoader(PoolDataset(pool_paths(root)[0], (24, 32)), batch_size=8)).distance
    assert np.allclose([float(r['distance']) for r in rows], direct.numpy(), rtol=1e-5)
    a = ap.parse_args(['ads', 'select', '--teacher', str(ck), '--pool', str(root), '--size', '24x32', '--k', '3', '--out', str(tmp_path/'sel.json'), '--device', 'cpu'])
    a.func(a)
    js = json.loads((tmp_path/'sel.json').read_text())
    assert js['k'] == 3 and sum(r['selected'] for r in js['items']) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]  # atomic writes leave nothing behind

def test_cli_registered_in_package_parser():
    from segkd_nb.cli import build_parser
    a = build_parser().parse_args(['ads', 'select', '--teacher', 't.pt', '--pool', 'p', '--k', '0.25'])
    assert a.k == 0.25 and a.func.__name__ == 'cmd_ads' and a.ads_cmd == 'select'

def test_export_pool_to_fiftyone(fo_db, tmp_path):
    from segkd_nb.fo import export_pool
    root = write_pool(tmp_path/'pool', 3, 3)
    _, m = _ckpt(tmp_path)
    _, info = data_free_data(m, root, 'ads', k=2, size=(24, 32))
    ds = export_pool('dfss_test', info['paths'], info['distance'], info['per_layer'], info['selected_index'], info['w0_pool'], info['layers'], info['ids'])
    assert len(ds) == 6 and ds.count_values('ads_selected') == {True: 2, False: 4}
    first = ds.sort_by('ads_distance').first()
    assert first['sid'] == info['selected'][0] and first['wdpd_weight0'] == 1.0
    last = ds.sort_by('ads_distance', reverse=True).first()
    assert last['wdpd_weight0'] is None and not last['ads_selected']
    fields = list(ds.info['ads_layers'])
    assert len(fields) == len(info['layers']) and set(first['ads_per_layer']) == set(fields)
    assert first[fields[0]] == pytest.approx(info['per_layer'][info['ids'].index(first['sid'])][0])
    ds2 = export_pool('dfss_test', info['paths'], info['distance'], selected=None)  # re-export replaces
    assert len(ds2) == 6 and ds2.count_values('ads_selected') == {False: 6}

def test_dfss_experiment_smoke(tmp_path, monkeypatch):
    import segkd_nb.experiments.exp_dfss as exp
    from segkd_nb.experiments.exp_dfss import dfss_experiment, dfss_table, dfss_rows
    calls, real = [], exp.score_pool
    monkeypatch.setattr(exp, 'score_pool', lambda *a, **kw: calls.append(1) or real(*a, **kw))
    from segkd_nb.models import build_model
    from segkd_nb.datasets import load_split
    from segkd_nb.train import TrainConfig
    val = load_split('samples', 'val', (24, 32)).subset([0, 1, 2])
    pool, orig = write_pool(tmp_path/'pool', 4, 4), write_pool(tmp_path/'orig', 3, 0, seed=1)
    torch.manual_seed(0)
    teacher = set_bn_stats(build_model('tiny_s', val.tax.n), images(4, 0, 24, 32)).eval()
    rows = dfss_rows((0.5,))
    res = dfss_experiment(teacher, pool, val, orig, rows, seeds=(0, 1), size=(24, 32), run_dir=tmp_path/'runs', tax=val.tax,
                          cfg=TrainConfig(steps=2, batch_size=2, lr=1e-3, device='cpu'))
    assert list(res['rows']) == [r[0] for r in rows]
    for row, r in res['rows'].items():
        assert [x['seed'] for x in r['runs']] == [0, 1] and 0 <= r['miou_mean'] <= 1 and r['miou_std'] >= 0
        for s in (0, 1):
            cfg = json.loads((tmp_path/'runs'/f'{row}-s{s}'/'config.json').read_text())
            assert cfg['train']['steps'] == 2 and cfg['train']['seed'] == s  # equal steps, paired seeds
            m, x = json.loads((tmp_path/'runs'/f'{row}-s{s}'/'metrics.json').read_text()), r['runs'][s]
            assert (x['git'], x['wall_s']) == (m['git'], m['wall_s'])  # each run's own commit and training time
    assert res['rows']['kd-original']['k'] == 3 and res['rows']['all']['k'] == 8 and res['rows']['ads@0.5']['k'] == 4
    sel = lambda row, s: json.loads((tmp_path/'runs'/f'{row}-s{s}'/'config.json').read_text())['selected']
    assert sel('ads@0.5', 0) == sel('ads@0.5', 1) and sorted(sel('ads@0.5', 0)) == sorted(sel('ads+wdpd@0.5', 0))
    assert sel('random@0.5', 0) != sel('random@0.5', 1) or len(set(sel('random@0.5', 0))) == 4
    assert json.loads((tmp_path/'runs'/'ads+wdpd@0.5-s0'/'config.json').read_text())['schedule'] == 'linear'
    assert '| ads+wdpd@0.5 | 4 |' in dfss_table(res)
    assert len(calls) == 1  # the pool is scored once per experiment, shared by every data-free row and seed

def test_dfss_experiment_runs_the_teacher_once_per_image_and_matches_the_online_run(tmp_path):
    "Cached teacher logits (`TeacherLogits`): each image is forwarded once for all rows and seeds, and a run ends bit-identical to one that runs the teacher at every step."
    from dataclasses import replace
    from segkd_nb.experiments.exp_dfss import dfss_experiment, dfss_rows
    from segkd_nb.models import build_model
    from segkd_nb.datasets import load_split
    from segkd_nb.train import TrainConfig
    from segkd_nb.runs import run_training
    val = load_split('samples', 'val', (24, 32)).subset([0, 1, 2])
    pool, orig = write_pool(tmp_path/'pool', 4, 4), write_pool(tmp_path/'orig', 3, 0, seed=1)
    torch.manual_seed(0)
    teacher = set_bn_stats(build_model('tiny_s', val.tax.n), images(4, 0, 24, 32)).eval()
    seen = []
    hook = teacher.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    cfg = TrainConfig(steps=3, batch_size=2, lr=1e-3, device='cpu')
    dfss_experiment(teacher, pool, val, orig, dfss_rows((0.5,)), seeds=(0, 1), size=(24, 32), run_dir=tmp_path/'runs', tax=val.tax, cfg=cfg)
    hook.remove()
    # online: 5 rows x 2 seeds x 3 steps x 2 images = 60 teacher images; cached: the 8 pool + 3 original images once (+ the pool's scoring, at most 8)
    assert 8 + 3 <= sum(seen) <= 8 + 8 + 3
    aux, _ = data_free_data(teacher, pool, 'ads', 0.5, (24, 32))  # the row's images, without the cache
    run_training(tmp_path/'online', lambda: build_model('tiny_s', teacher.num_classes, width=12), {'wdpd': (1.0, WDPDKDTerm(1.0, 'linear'))},
                 aux, val, replace(cfg, seed=1, progress=False), teacher=teacher, tax=val.tax)
    a = torch.load(tmp_path/'online'/'last.pt', weights_only=True)['model']
    b = torch.load(tmp_path/'runs'/'ads+wdpd@0.5-s1'/'last.pt', weights_only=True)['model']
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def test_teacher_logits_refuse_augmented_data():
    from segkd_nb.train import TeacherLogits
    from segkd_nb.datasets import load_split
    from segkd_nb.data import SegTransform
    val = load_split('samples', 'val', (24, 32)).subset([0, 1])
    with pytest.raises(ValueError, match='not deterministic'):
        TeacherLogits(val.__class__(val.items, val.tax, SegTransform((24, 32)), name='augmented'), None)

def test_dfss_protocol_trains_the_width_it_is_given(tmp_path, monkeypatch):
    "`run_dfss_protocol(width=...)`: every row's student has that width (its parameter count), in runs_dir/dfss-PRESET-wWIDTH."
    from segkd_nb import runs
    from segkd_nb.datasets import data_taxonomy
    from segkd_nb.models import build_model
    from segkd_nb.experiments.exp_dfss import run_dfss_protocol
    monkeypatch.setenv('SEGKD_RUNS_DIR', str(tmp_path/'runs')); monkeypatch.setenv('SEGKD_CACHE_DIR', str(tmp_path/'cache'))
    monkeypatch.setitem(runs.PRESETS, 'tiny', runs.get_preset('samples', teacher_steps=2, teacher_width=8, batch_size=2, student_steps=2, size=(32, 48)))
    res = run_dfss_protocol('tiny', seeds=(0,), ks=(0.05,), workers=1, width=4)
    n_params = sum(p.numel() for p in build_model('tiny_s', data_taxonomy('samples').n, width=4).parameters())
    assert res['config']['width'] == 4 and len(res['rows']) == 5
    for row in res['rows']:
        ck = torch.load(tmp_path/'runs'/'dfss-tiny-w4'/f'{row}-s0'/'last.pt', weights_only=True)
        assert sum(v.numel() for k, v in ck['model'].items() if 'running' not in k and 'num_batches' not in k) == n_params
