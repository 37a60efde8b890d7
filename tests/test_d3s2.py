"Mechanics of D3S2: selection against loop versions, bad input, guidance switches, exact masks and resumable synthesis."
import math, os, json
from pathlib import Path
import numpy as np, pytest, torch
from segkd_nb.data import DataError
from segkd_nb.d3s2 import (class_histograms, class_presence, greedy_balanced_select, rarest_first_select, random_select,
                           resolve_budget, coverage_report, longtail_presence)

# ---------------------------------------------------------------- plain loop versions (written independently)
def loop_histograms(masks, n, ignore=255):
    out = []
    for m in masks:
        row = [0] * n
        for v in np.asarray(m).reshape(-1).tolist():
            if v == ignore: continue
            if not 0 <= v < n: raise ValueError(v)
            row[v] += 1
        out.append(row)
    return out

def loop_greedy(present, budget, beta=1.0, dup_penalty=0.0, features=None, tol=1e-9):
    P = [[float(v) for v in row] for row in np.asarray(present, dtype=np.float64)]
    N, K = len(P), len(P[0])
    feats = P if features is None else [[float(v) for v in row] for row in np.asarray(features, dtype=np.float64)]
    norms = [math.sqrt(sum(v * v for v in f)) or 1.0 for f in feats]
    c = [0.0] * K; picked = []
    for _ in range(budget):
        best, best_gain = None, None
        gains = {}
        for m in range(N):
            if m in picked: continue
            g = 0.0
            for k in range(K): g += P[m][k] / (c[k] + 1) ** beta
            if dup_penalty and picked:
                g -= dup_penalty * max(sum(a * b for a, b in zip(feats[m], feats[j])) / (norms[m] * norms[j]) for j in picked)
            gains[m] = g
        top = max(gains.values())
        best = min(m for m, g in gains.items() if g >= top - tol)
        picked.append(best)
        for k in range(K): c[k] += P[best][k]
    return picked

def loop_rarest_first(present, budget, seed=0, beta=1.0, tol=1e-9):
    P = np.asarray(present, dtype=np.float64); N, K = P.shape
    prio = torch.randperm(N, generator=torch.Generator().manual_seed(seed)).tolist()
    freq = [sum(1 for m in range(N) if P[m][k] > 0) for k in range(K)]
    rarest = sorted(range(K), key=lambda k: (freq[k], k))
    targeted = [0] * K; c = [0.0] * K; picked, targets = [], []
    for _ in range(budget):
        avail = [k for k in range(K) if any(P[m][k] > 0 and m not in picked for m in range(N))]
        if avail:
            k = min(avail, key=lambda k: (targeted[k], rarest.index(k)))
            cand = [m for m in range(N) if P[m][k] > 0 and m not in picked]
        else: k, cand = -1, [m for m in range(N) if m not in picked]
        gains = {m: sum(P[m][j] / (c[j] + 1) ** beta for j in range(K)) for m in cand}
        top = max(gains.values())
        m = min((m for m in cand if gains[m] >= top - tol), key=lambda m: prio[m])
        picked.append(m); targets.append(k)
        for j in range(K): c[j] += P[m][j]
        if k >= 0: targeted[k] += 1
    return picked, targets

def rand_pool(n, k, seed, p=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, k, generator=g) < torch.linspace(p, 0.02, k)

# ---------------------------------------------------------------- selection
@pytest.mark.parametrize('seed', range(4))
def test_histograms_equal_loop(seed):
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 5, (6, 7, 9), generator=g); masks[masks == 4] = 255
    test = class_histograms(masks, 4)
    assert test.tolist() == loop_histograms(masks, 4)
    lst = [masks[0], masks[1, :3, :5]]
    assert class_histograms(lst, 4).tolist() == loop_histograms(lst, 4)

@pytest.mark.parametrize('seed,beta', [(0, 1.0), (1, 0.5), (2, 2.0), (3, 1.0)])
def test_greedy_equals_loop(seed, beta):
    P = rand_pool(40, 9, seed)
    assert greedy_balanced_select(P, 15, beta=beta).tolist() == loop_greedy(P, 15, beta=beta)

@pytest.mark.parametrize('seed', range(3))
def test_greedy_fractions_and_dup_penalty_equal_loop(seed):
    g = torch.Generator().manual_seed(seed)
    frac = torch.rand(30, 6, generator=g) * rand_pool(30, 6, seed, p=0.6)
    frac = frac / frac.sum(1, keepdim=True).clamp(min=1e-9)
    assert greedy_balanced_select(frac, 10).tolist() == loop_greedy(frac, 10)
    P = rand_pool(30, 6, seed + 10, p=0.7)
    assert greedy_balanced_select(P, 12, dup_penalty=0.7).tolist() == loop_greedy(P, 12, dup_penalty=0.7)
    feats = torch.rand(30, 4, generator=g)
    assert greedy_balanced_select(P, 12, dup_penalty=2.0, features=feats).tolist() == loop_greedy(P, 12, dup_penalty=2.0, features=feats)

@pytest.mark.parametrize('seed', range(4))
def test_rarest_first_equals_loop(seed):
    P = rand_pool(35, 8, seed)
    idx, tgt = rarest_first_select(P, 20, seed=seed, return_targets=True)
    li, lt = loop_rarest_first(P, 20, seed=seed)
    assert idx.tolist() == li and tgt.tolist() == lt

def _check_rarest_property(P, idx, tgt):
    "Every pool class is targeted once before any class is targeted twice; the only exception is a class whose masks were all picked already."
    P = torch.as_tensor(P).bool(); pool_classes = set(P.any(0).nonzero().flatten().tolist())
    t = tgt.tolist(); first_repeat = next((i for i in range(len(t)) if t[i] in t[:i]), None)
    if first_repeat is None: return set(t)
    before = set(t[:first_repeat])
    for k in pool_classes - before:  # not targeted in the first round: must have been exhausted
        assert not (P[:, k] & ~torch.isin(torch.arange(len(P)), idx[:first_repeat])).any(), f"class {k} skipped while it had masks left"
    return before

def test_rarest_first_property_strict():
    "Classes present in many masks: no exhaustion possible, so the first round targets every class."
    P = rand_pool(400, 30, 0, p=0.5) | (torch.rand(400, 30, generator=torch.Generator().manual_seed(1)) < 0.03)
    idx, tgt = rarest_first_select(P, 90, seed=0, return_targets=True)
    t = tgt.tolist()
    assert set(t[:30]) == set(range(30))  # 30 classes, each once in the first 30 picks
    for n in range(1, 91):  # at every prefix, target counts differ by at most one
        c = [t[:n].count(k) for k in range(30)]
        assert max(c) - min(c) <= 1
    for i in range(90): assert P[idx[i], tgt[i]]  # each pick contains its target

@pytest.mark.parametrize('seed', range(5))
def test_rarest_first_property_random_pools(seed):
    P = rand_pool(60, 12, seed, p=0.25)
    idx, tgt = rarest_first_select(P, 40, seed=seed, return_targets=True)
    _check_rarest_property(P, idx, tgt)
    assert len(set(idx.tolist())) == 40

def test_rarest_first_rare_class_first():
    P = torch.zeros(10, 3, dtype=torch.bool); P[:, 0] = True; P[:4, 1] = True; P[7, 2] = True
    idx, tgt = rarest_first_select(P, 3, return_targets=True)
    assert tgt.tolist()[0] == 2 and idx.tolist()[0] == 7

def test_selection_10000x150_completes():
    P = longtail_presence(10_000, 150, seed=0)
    for f in (lambda: greedy_balanced_select(P, 0.02), lambda: rarest_first_select(P, 0.02), lambda: greedy_balanced_select(P, 0.02, dup_penalty=0.5)):
        idx = f()
        assert len(idx) == 200 and len(set(idx.tolist())) == 200
    cov = coverage_report(P, {'g': greedy_balanced_select(P, 0.02), 'r': random_select(P, 0.02)})
    assert cov.covered('g') > cov.covered('r')

def test_budget_errors():
    P = rand_pool(10, 3, 0)
    for f in (greedy_balanced_select, rarest_first_select, random_select):
        with pytest.raises(ValueError, match=r'budget 11 is larger than the pool \(10 masks\)'): f(P, 11)
        with pytest.raises(ValueError, match='fractional budget'): f(P, 1.5)
    assert resolve_budget(0.05, 200) == 10 and resolve_budget(1.0, 7) == 7

def test_unknown_ids_error():
    m = torch.zeros(3, 4, 4, dtype=torch.long); m[1, 2, 2] = 9; m[2, 0, 0] = -1
    with pytest.raises(DataError, match=r'mask b: class ids \[9\] are outside the taxonomy \(0..4'): class_histograms(m, 5, ids=['a', 'b', 'c'])
    with pytest.raises(DataError, match='outside the taxonomy'): class_presence([m[0], m[2]], 5)

# ---------------------------------------------------------------- guidance
from segkd_nb.d3s2 import (Guidance, GuidanceConfig, class_feature_moments, masked_class_moments, distill_dataset, load_distilled,
                           guidance_from_spec)
from segkd_nb.fo import export_distilled_fiftyone
from segkd_nb.l2i import L2I, L2IConfig, toy_layouts, sample_l2i, mask_following, load_controlnet_pipeline, train_l2i, load_l2i
from segkd_nb.models import build_model
from segkd_nb.data import Taxonomy, _write_pair

@pytest.fixture(scope='module')
def seg():
    torch.manual_seed(0); return build_model('tiny_s', 3).eval()

@pytest.fixture(scope='module')
def toy():
    return toy_layouts(16, size=(32, 48), seed=0)

@pytest.fixture(scope='module')
def moments(seg, toy):
    return class_feature_moments(seg, toy, ('stage2', 'penultimate'), 3)

def test_masked_moments_equal_loop():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 4, 5, generator=g); masks = torch.randint(0, 3, (2, 4, 5), generator=g); masks[0, 0, 0] = 255
    cnt, mu, var = masked_class_moments(feat, masks, 3)
    for b in range(2):
        for k in range(3):
            sel = masks[b] == k
            assert cnt[b, k] == sel.sum()
            if sel.any():
                v = feat[b][:, sel]  # [D, n]
                assert torch.allclose(mu[b, k], v.mean(1), atol=1e-5) and torch.allclose(var[b, k], v.var(1, unbiased=False), atol=1e-5)

def test_guidance_gradient_nonzero_and_switches(seg, moments):
    x = torch.rand(2, 3, 32, 48, requires_grad=True); m = torch.randint(0, 3, (2, 32, 48))
    grads = {}
    for name, cfg in {'both': GuidanceConfig(), 'seg': GuidanceConfig(lam_feat=0), 'feat': GuidanceConfig(lam_seg=0)}.items():
        G = Guidance(seg, cfg, moments)
        grads[name] = torch.autograd.grad(G.loss(x, m).sum(), x)[0]
        assert grads[name].abs().sum() > 0, name
        assert set(G.terms(x, m)) == ({'seg', 'feat'} if name == 'both' else {name})
    assert torch.allclose(grads['both'], grads['seg'] + grads['feat'], atol=1e-5)
    assert not torch.allclose(grads['seg'], grads['feat'])
    off = Guidance(seg, GuidanceConfig(lam_seg=0, lam_feat=0), moments)
    assert not any(off.active(i, 10) for i in range(10))

def test_guidance_off_equals_unguided_and_on_changes(seg, moments, toy):
    model = L2I(L2IConfig(num_classes=3, size=(16, 24), channels=(8, 16, 16), norm_groups=4)).eval()
    masks = torch.stack([t['mask'] for t in toy[:2]])
    plain = sample_l2i(model, masks, steps=4, seeds=[1, 2])
    off = sample_l2i(model, masks, steps=4, seeds=[1, 2], guidance=Guidance(seg, GuidanceConfig(lam_seg=0, lam_feat=0), moments))
    assert torch.equal(plain, off)
    for mode in ('x0', 'xt'):
        G = Guidance(seg, GuidanceConfig(mode=mode, t_start=1.0, t_end=0.0, scale=0.5), moments)
        on = sample_l2i(model, masks, steps=4, seeds=[1, 2], guidance=G)
        assert (on - plain).abs().max() > 1e-3, mode
        assert len(G.last_losses) == 4

def test_guidance_lowers_the_segmenter_loss_on_the_final_image(seg, moments, toy):
    "Guidance must reach the image that is returned: the segmenter's CE on the FINAL images is lower with it than without."
    torch.manual_seed(0)
    model = L2I(L2IConfig(num_classes=3, size=(16, 24), channels=(8, 16, 16), norm_groups=4)).eval()
    masks = torch.stack([t['mask'] for t in toy[:4]])
    plain = sample_l2i(model, masks, steps=6, seeds=[1, 2, 3, 4])
    ce = lambda x: torch.nn.functional.cross_entropy(seg(x)['logits'], masks, ignore_index=255, reduction='none').mean((1, 2))  # [B]
    for mode in ('x0', 'xt'):
        G = Guidance(seg, GuidanceConfig(mode=mode, lam_feat=0, t_start=1.0, t_end=0.0, scale=0.3), moments)
        with torch.no_grad(): before, after = ce(plain), ce(sample_l2i(model, masks, steps=6, seeds=[1, 2, 3, 4], guidance=G))
        assert (after < before).all(), (mode, before, after)

def test_x0_guidance_moves_the_sample_by_the_step():
    "With eta = 0 the x0-mode move must reach x_{t-1}: sqrt(abar_prev) * (the move), not a fraction cancelled by a recomputed eps."
    from segkd_nb.l2i import make_scheduler, ddim_step
    sc = make_scheduler(L2IConfig(num_classes=3), 'ddim'); sc.set_timesteps(10)
    t = sc.timesteps[2]; a = sc.alphas_cumprod[t]; prev = int(t) - 100; a_prev = sc.alphas_cumprod[prev]
    xt, eps = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    x0 = ((xt - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-0.5, 0.5)  # away from the clip
    d = torch.full_like(x0, 0.1)
    moved = ddim_step(sc, t, x0 - d, eps) - ddim_step(sc, t, x0, eps)
    assert torch.allclose(moved, -a_prev.sqrt() * d, atol=1e-5)

def test_guidance_window_every():
    G = Guidance(torch.nn.Conv2d(3, 3, 1), GuidanceConfig(lam_feat=0, t_start=0.8, t_end=0.3, every=2))
    act = [i for i in range(10) if G.active(i, 10)]  # tau = 1 - i/10 in [0.3, 0.8] -> i in 2..7, every 2nd
    assert act == [2, 4, 6]

def test_guidance_needs_moments(seg):
    with pytest.raises(ValueError, match='needs the real moments'): Guidance(seg, GuidanceConfig())
    with pytest.raises(ValueError, match="mode must be"): GuidanceConfig(mode='foo')

# ---------------------------------------------------------------- pipeline
TAX = Taxonomy('toy', ['ground', 'disc', 'band'])
def _kw(seg, **over):
    model = L2I(L2IConfig(num_classes=3, size=(16, 24), channels=(8, 16, 16), norm_groups=4)).eval()
    return {**dict(selection='greedy', l2i=model, guidance=GuidanceConfig(layers=('stage3',), t_start=0.8, t_end=0.4), segmenter=seg,
                   steps=3, batch_size=3, tax=TAX, progress=False), **over}

def _read(p): return np.array(__import__('PIL.Image', fromlist=['Image']).open(p))

def test_synthesized_masks_equal_selected(tmp_path, seg, toy):
    prov = distill_dataset(toy, 0.5, tmp_path/'d', **_kw(seg))
    from segkd_nb.d3s2 import class_presence, greedy_balanced_select
    P = class_presence([t['mask'] for t in toy], 3, min_frac=0.01)  # the pipeline's default presence threshold
    assert [it['source_index'] for it in prov['items']] == greedy_balanced_select(P, 8).tolist()
    for it in prov['items']:
        lab = _read(tmp_path/'d'/'labels'/f"{it['name']}.png")
        assert lab.dtype == np.uint8 and np.array_equal(lab.astype(np.int64), toy[it['source_index']]['mask'].numpy())
        assert it['source_id'] == toy[it['source_index']]['id'] and it['teacher_iou'] is not None
        assert _read(tmp_path/'d'/'images'/f"{it['name']}.png").shape == (32, 48, 3)
    ds = load_distilled(tmp_path/'d')
    assert len(ds) == 8 and ds.tax.classes == TAX.classes
    assert len({it['seed'] for it in prov['items']}) == 8

class Interrupt(Exception): pass

@pytest.mark.parametrize('stop_at', [1, 4])
def test_resume_after_interruption(tmp_path, seg, toy, stop_at):
    ref = distill_dataset(toy, 7, tmp_path/'ref', **_kw(seg))
    seen = []
    def boom(name):
        seen.append(name)
        if len(seen) == stop_at: raise Interrupt
    with pytest.raises(Interrupt): distill_dataset(toy, 7, tmp_path/'run', **_kw(seg), on_item=boom)
    assert len(list((tmp_path/'run'/'images').glob('*.png'))) == stop_at
    assert not (tmp_path/'run'/'provenance.json').exists()
    # a killed write leaves a temp file and maybe a label without its image: both are handled
    (tmp_path/'run'/'images'/'.00006_x.png.abc.tmp').write_bytes(b'partial')
    lab_only = ref['items'][-1]['name']
    (tmp_path/'run'/'labels'/f'{lab_only}.png').write_bytes((tmp_path/'ref'/'labels'/f'{lab_only}.png').read_bytes())
    done = []
    prov = distill_dataset(toy, 7, tmp_path/'run', **_kw(seg), on_item=done.append)
    assert len(done) == 7 - stop_at and not set(done) & set(seen)  # nothing redone, nothing skipped
    for sub in ('images', 'labels'):
        names = sorted(p.name for p in (tmp_path/'run'/sub).iterdir())
        assert names == sorted(f"{it['name']}.png" for it in ref['items']), sub  # no duplicates, no losses, no temp files
    assert [it['name'] for it in prov['items']] == [it['name'] for it in ref['items']]
    for it in ref['items']:  # same seeds -> the same images as an uninterrupted run (up to rounding)
        a = _read(tmp_path/'run'/'images'/f"{it['name']}.png").astype(int); b = _read(tmp_path/'ref'/'images'/f"{it['name']}.png").astype(int)
        assert np.abs(a - b).max() <= 1
        assert np.array_equal(_read(tmp_path/'run'/'labels'/f"{it['name']}.png"), _read(tmp_path/'ref'/'labels'/f"{it['name']}.png"))

def test_rerun_with_other_settings_refused(tmp_path, seg, toy):
    distill_dataset(toy, 4, tmp_path/'d', **_kw(seg))
    with pytest.raises(ValueError, match='other settings'): distill_dataset(toy, 4, tmp_path/'d', **_kw(seg, steps=5))
    with pytest.raises(ValueError, match='other settings'): distill_dataset(toy, 5, tmp_path/'d', **_kw(seg))

def test_pipeline_bad_input(tmp_path, seg, toy):
    with pytest.raises(ValueError, match=r'larger than the pool \(16 masks\)'): distill_dataset(toy, 17, tmp_path/'a', **_kw(seg))
    bad = [dict(t) for t in toy]; bad[3] = {**bad[3], 'mask': bad[3]['mask'].clone()}; bad[3]['mask'][0, 0] = 7
    with pytest.raises(DataError, match=r'mask toy003: class ids \[7\] are outside the taxonomy'): distill_dataset(bad, 4, tmp_path/'b', **_kw(seg))
    with pytest.raises(ValueError, match='needs a trained model'): distill_dataset(toy, 4, tmp_path/'c', **_kw(seg, l2i=None))
    with pytest.raises(ValueError, match='needs a frozen segmenter'): distill_dataset(toy, 4, tmp_path/'e', **_kw(seg, segmenter=None))

def test_real_subset(tmp_path, toy):
    prov = distill_dataset(toy, 5, tmp_path/'r', selection='random', synth='real', tax=TAX, progress=False, seed=3)
    for it in prov['items']:
        img = _read(tmp_path/'r'/'images'/f"{it['name']}.png")
        ref = (toy[it['source_index']]['image'].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        assert np.array_equal(img, ref)
    assert prov['settings']['guidance'] == 'real'

# ---------------------------------------------------------------- l2i
def test_mask_following_detects_condition():
    "Images that show their masks score far higher against them than against shuffled masks; images that ignore them do not."
    class ColourSeg(torch.nn.Module):
        def __init__(self):
            super().__init__(); self.c = torch.nn.Parameter(torch.tensor([[0.2, 0.2, 0.25], [0.9, 0.3, 0.2], [0.5, 0.7, 0.95]]))
        def forward(self, x): return {'logits': -((x[:, None] - self.c[None, :, :, None, None]) ** 2).sum(2)}
    toy = toy_layouts(12, seed=1); x = torch.stack([t['image'] for t in toy]); m = torch.stack([t['mask'] for t in toy])
    r = mask_following(ColourSeg(), x, m)
    assert r['miou_own'] > 0.95 and r['miou_shuffled'] < r['miou_own'] - 0.2
    flat = x.mean(0, keepdim=True).expand_as(x)  # the same image for every mask
    r2 = mask_following(ColourSeg(), flat, m)
    assert abs(r2['miou_own'] - r2['miou_shuffled']) < 0.15

def test_l2i_resume_exact(tmp_path):
    toy = toy_layouts(8, size=(16, 24)); cfg = L2IConfig(num_classes=3, size=(16, 24), channels=(8, 16, 16), norm_groups=4, batch_size=2, ckpt_every=1)
    a = train_l2i(toy, cfg, tmp_path/'a', 3, progress=False, device='cpu')
    train_l2i(toy, cfg, tmp_path/'b', 1, progress=False, device='cpu')
    b = train_l2i(toy, cfg, tmp_path/'b', 3, progress=False, device='cpu')
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    st = torch.load(tmp_path/'b'/'l2i.pt', weights_only=True)
    assert st['step'] == 3 and set(st) >= {'model', 'ema', 'opt', 'step', 'config'}
    with pytest.raises(FileNotFoundError, match='segkd l2i train'): load_l2i(tmp_path/'nothing')

def test_controlnet_paths(tmp_path):
    with pytest.raises(ValueError, match='controlnet_dir is required'): load_controlnet_pipeline()
    with pytest.raises(ValueError, match='base_dir is required'): load_controlnet_pipeline(tmp_path, None)
    with pytest.raises(FileNotFoundError, match='does not exist'): load_controlnet_pipeline(tmp_path/'missing', tmp_path)
    (tmp_path/'config.json').write_text('{}')
    with pytest.raises(FileNotFoundError, match='base_dir .* has no model_index.json'): load_controlnet_pipeline(tmp_path, tmp_path)

# ---------------------------------------------------------------- command line, FiftyOne
def _toy_folder(root):
    toy = toy_layouts(20, size=(32, 48), seed=2)
    for split, its in (('train', toy[:16]), ('val', toy[16:])):
        for t in its: _write_pair(root/split, t['id'], (t['image'] * 255).round().byte().permute(1, 2, 0).numpy(), t['mask'].byte().numpy())
    TAX.save(root/'taxonomy.json')
    return root

def test_cli_end_to_end(tmp_path, monkeypatch):
    from segkd_nb.cli import main
    data = _toy_folder(tmp_path/'toydata'); monkeypatch.setenv('SEGKD_RUNS_DIR', str(tmp_path/'runs'))
    main(['l2i', 'train', '--data', str(data), '--size', '16x24', '--channels', '8,16,16', '--steps', '2', '--batch-size', '2'])
    assert (tmp_path/'runs'/'l2i-toydata'/'l2i.pt').exists()
    main(['d3s2', '--data', str(data), '--size', '32x48', '--budget', '0.25', '--synth', 'real', '--out', str(tmp_path/'real')])
    from segkd_nb.datasets import load_split
    assert len(load_distilled(tmp_path/'real')) == round(0.25 * len(load_split(str(data), 'train')))  # of the train split (holdout excluded)
    # guided synthesis with the l2i model just trained and a teacher checkpoint
    from segkd_nb.models import save_checkpoint
    torch.manual_seed(0); save_checkpoint(tmp_path/'t.pt', build_model('tiny_s', 3))
    main(['d3s2', '--data', str(data), '--size', '32x48', '--budget', '3', '--teacher', str(tmp_path/'t.pt'), '--steps', '3',
          '--layers', 'stage3', '--out', str(tmp_path/'syn')])
    prov = json.loads((tmp_path/'syn'/'provenance.json').read_text())
    assert prov['settings']['guidance'] == 'seg+feat' and len(prov['items']) == 3 and prov['settings']['l2i']['step'] == 2
    # mask following, recorded as JSON at the segmenter's size; --json without --segmenter is refused
    main(['l2i', 'sample', '--data', str(data), '--n', '3', '--steps', '2', '--size', '32x48', '--segmenter', str(tmp_path/'t.pt'),
          '--out', str(tmp_path/'grid.png'), '--json', str(tmp_path/'mf.json')])
    rec = json.loads((tmp_path/'mf.json').read_text())
    assert rec['size'] == [32, 48] and rec['samples']['n'] == 3 and rec['l2i']['steps'] == 2 and 0 <= rec['samples']['miou_own'] <= 1
    assert (tmp_path/'grid.png').exists() and {'miou_own', 'miou_shuffled'} <= set(rec['real_images'])
    with pytest.raises(SystemExit): main(['l2i', 'sample', '--data', str(data), '--n', '2', '--steps', '1', '--json', str(tmp_path/'x.json')])

def test_fiftyone_export(tmp_path, fo_db, seg, toy):
    distill_dataset(toy, 4, tmp_path/'d', **_kw(seg))
    d = export_distilled_fiftyone(tmp_path/'d', 'segkd-test-d3s2', segmenter=seg)
    assert len(d) == 4
    prov = json.loads((tmp_path/'d'/'provenance.json').read_text())
    by = {s['sid']: s for s in d}
    for it in prov['items']:
        s = by[it['name']]
        assert s['source_id'] == it['source_id'] and s['guidance'] == 'seg+feat' and abs(s['teacher_iou'] - it['teacher_iou']) < 1e-9

# ---------------------------------------------------------------- the experiment: seeds spread over processes
def test_experiment_in_two_processes_equals_one(tmp_path, monkeypatch):
    "The protocol's table is the same whether its seeds run in two worker processes or one after another here."
    from segkd_nb.runs import get_preset
    from segkd_nb.datasets import load_split
    from segkd_nb.experiments.exp_d3s2 import run_d3s2_experiment, d3s2_report, d3s2_verdicts, D3S2_ROWS
    monkeypatch.setenv('SEGKD_CACHE_DIR', str(tmp_path/'cache'))
    tr = load_split('samples', 'train', size=None, augment=False)
    train_l2i(tr, L2IConfig(num_classes=tr.tax.n, size=(16, 24), channels=(8, 16, 16), norm_groups=4), tmp_path/'l2i', steps=1)
    p = get_preset('samples', teacher_steps=2, teacher_width=8, batch_size=2, student_steps=2, size=(32, 48))
    kw = dict(budgets=(6,), seeds=(0, 1), l2i=tmp_path/'l2i', sample_steps=2)
    two = run_d3s2_experiment(p, out=tmp_path/'two', workers=2, **kw)
    threads = torch.get_num_threads(); torch.set_num_threads(1)  # the workers' setting, so the arithmetic is the same
    try: one = run_d3s2_experiment(p, out=tmp_path/'one', workers=1, **kw)
    finally: torch.set_num_threads(threads)
    key = lambda res: {(r['row'], r['seed']): r['miou'] for r in res['runs']}
    assert len(two['runs']) == 2 * len(D3S2_ROWS) and key(two) == key(one)
    assert [r['seed'] for r in two['runs']] == [0] * len(D3S2_ROWS) + [1] * len(D3S2_ROWS)
    assert {r['n_images'] for r in two['runs'] if r['row'] != 'full'} == {6}
    assert len(d3s2_verdicts(two)) == 3 and 'Mean per-class IoU' in d3s2_report(two)
    with pytest.raises(ValueError, match="unknown D3S2 rows"): run_d3s2_experiment(p, rows=('guided',), out=tmp_path/'x', **kw)

def test_experiment_student_width(tmp_path, monkeypatch):
    "`width=` trains students of that width (their parameter count) in the default folder runs_dir/d3s2-exp-DATA-wWIDTH, and says so in the results."
    from segkd_nb.runs import get_preset
    from segkd_nb.datasets import data_taxonomy
    from segkd_nb.experiments.exp_d3s2 import run_d3s2_experiment
    monkeypatch.setenv('SEGKD_CACHE_DIR', str(tmp_path/'cache')); monkeypatch.setenv('SEGKD_RUNS_DIR', str(tmp_path/'runs'))
    p = get_preset('samples', teacher_steps=2, teacher_width=8, batch_size=2, student_steps=2, size=(32, 48))
    res = run_d3s2_experiment(p, budgets=(6,), seeds=(0,), rows=('full',), l2i=tmp_path/'no-l2i', width=4)
    ck = torch.load(tmp_path/'runs'/'d3s2-exp-samples-w4'/'students'/'full-s0'/'last.pt', weights_only=True)
    n_params = sum(q.numel() for q in build_model('tiny_s', data_taxonomy('samples').n, width=4).parameters())
    assert sum(v.numel() for k, v in ck['model'].items() if 'running' not in k and 'num_batches' not in k) == n_params
    assert res['student'] == 'tiny_s (width 4)'
