"""GSKD mechanics: gradients, invariances, CBS rules, degenerate batches, bad input, release mode, and the
vectorised loss against a plain Python loop."""
import math, warnings
import pytest, torch, torch.nn.functional as F
from segkd_nb.data import IGNORE
from segkd_nb.gskd import (cbs_sample, gssm, sid_perm, sid_descriptors, descriptor_kl, gskd_points_loss, gskd_loss,
                           point_features, ProjectionHead, GSKDTerm, gskd_term, CBSPoints)
from segkd_nb.models import build_model
from segkd_nb.kd import build_terms
from segkd_nb.train import Trainer, TrainConfig

torch.set_num_threads(1)

def gen(seed=0): return torch.Generator().manual_seed(seed)

def batch(B=3, D=8, h=12, w=12, K=4, seed=0, block=3):
    "Features that depend on the label, block-structured masks, and teacher logits right on ~80% of pixels."
    g = gen(seed)
    m = torch.randint(0, K, (B, 1, h // block, w // block), generator=g)
    m = m.repeat_interleave(block, 2).repeat_interleave(block, 3)[:, 0]                  # [B,h,w]
    proto = torch.randn(K, D, generator=g)
    f_t = proto[m].permute(0, 3, 1, 2) + 0.3 * torch.randn(B, D, h, w, generator=g)     # [B,D,h,w]
    f_s = torch.randn(B, D, h, w, generator=g)
    wrong = torch.rand(B, h, w, generator=g) < 0.2
    pred = torch.where(wrong, (m + 1) % K, m)
    t_logits = 5 * F.one_hot(pred, K).permute(0, 3, 1, 2).float()                       # [B,K,h,w]
    return f_s, f_t, m, t_logits

# ---------------------------------------------------------------- gradients
def test_student_and_head_get_gradient():
    torch.manual_seed(0)
    stu, tea = build_model('tiny_s', 4), build_model('tiny', 4)
    term = gskd_term(stu, tea, n_per_class=4)
    img = torch.rand(2, 3, 64, 64); msk = torch.randint(0, 4, (2, 64, 64))
    with torch.no_grad(): t = tea(img)
    loss = term({'image': img, 'mask': msk, 's': stu(img), 't': t, 'weight': None})
    assert loss.item() > 0
    loss.backward()
    for n, p in term.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"head parameter {n} got no gradient"
    convs = [p for n, p in stu.named_parameters() if p.ndim == 4 and 'classifier' not in n]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in convs), "a student conv got no gradient"

def test_every_image_contributes_in_paper_mode():
    f_s, f_t, m, tl = batch(B=3)
    f_s.requires_grad_(True)
    gskd_loss(f_s, f_t, m, tl, generator=gen()).backward()
    assert all(f_s.grad[b].abs().sum() > 0 for b in range(3))

# ---------------------------------------------------------------- zero and invariances
@pytest.mark.parametrize('opts', [{}, {'softmax_scope': 'row'}, {'tau': 4.0}, {'pad': 'repeat'}, {'pad': 'none'},
                                  {'group_width': 3}, {'reduction': 'sum'}, {'teacher_correct': False}])
def test_zero_when_student_equals_teacher(opts):
    _, f_t, m, tl = batch()
    test = gskd_loss(f_t.clone(), f_t, m, tl, generator=gen(), **opts)
    assert abs(test.item()) < 1e-6

def test_zero_through_identity_projection():
    _, f_t, m, tl = batch(D=6)
    head = ProjectionHead(6, 6)
    with torch.no_grad():  # an identity head on non-negative inputs: conv=I, BN in eval with unit stats, ReLU, conv=I
        head[0].weight.copy_(torch.eye(6)[:, :, None, None]); head[3].weight.copy_(torch.eye(6)[:, :, None, None]); head[3].bias.zero_()
    head.eval()
    f = f_t.abs()
    assert gskd_loss(head(f), f, m, tl, generator=gen()).abs().item() < 1e-6
    assert gskd_loss(f_t.abs(), f, m, tl, generator=gen()).abs().item() < 1e-6

def test_positive_when_features_differ():
    f_s, f_t, m, tl = batch()
    assert gskd_loss(f_s, f_t, m, tl, generator=gen()).item() > 1e-3

def test_invariant_to_point_permutation_with_fixed_shuffle():
    g = gen(1)
    Fs, Ft = F.normalize(torch.randn(24, 8, generator=g), dim=1), F.normalize(torch.randn(24, 8, generator=g), dim=1)
    perm = sid_perm(24, g)
    pi = torch.randperm(24, generator=g)                      # new point i is old point pi[i]
    inv = pi.argsort()
    perm2 = inv[perm[pi]]                                     # the same shuffle, expressed in the new order
    a = gskd_points_loss(Fs, Ft, perm, 4)
    b = gskd_points_loss(Fs[pi], Ft[pi], perm2, 4)
    torch.testing.assert_close(a, b)
    # end to end: permute the CBS points of every image, transform the shuffles the same way
    f_s, f_t, m, tl = batch()
    l1, parts = gskd_loss(f_s, f_t, m, tl, generator=gen(2), return_parts=True)
    samples, perms = [], []
    for p, pm in zip(parts['samples'], parts['perms']):
        pi = torch.randperm(len(p.idx), generator=g); inv = pi.argsort()
        samples.append(CBSPoints(p.idx[pi], p.cls[pi], p.slot[pi])); perms.append(inv[pm[pi]])
    l2 = gskd_loss(f_s, f_t, m, tl, samples=samples, perms=perms)
    torch.testing.assert_close(l1, l2)

def test_invariant_to_channel_permutation():
    f_s, f_t, m, tl = batch(D=8)
    pc = torch.randperm(8, generator=gen(3))
    a = gskd_loss(f_s, f_t, m, tl, generator=gen(5))
    b = gskd_loss(f_s[:, pc], f_t[:, pc], m, tl, generator=gen(5))
    torch.testing.assert_close(a, b)

# ---------------------------------------------------------------- CBS
def test_cbs_hand_example():
    m = torch.full((6, 6), IGNORE)
    m.view(-1)[:20] = 0; m.view(-1)[20:23] = 1; m.view(-1)[23] = 2
    p, = cbs_sample(m, n_per_class=4, teacher_correct=False, generator=gen())
    assert len(p.idx) == 8 and p.n_classes == 2
    assert sorted(p.idx[p.cls == 1].tolist()) == [20, 21, 22]
    assert p.padded.sum() == 1 and (p.slot[p.padded] == 1).all() and (p.cls[p.padded] != 1).all()
    assert not (p.cls == 2).any() and not (p.slot == 2).any()

@pytest.mark.parametrize('seed', range(6))
def test_cbs_rules_random_masks(seed):
    g = gen(seed); N = 5
    B, h, w, K = 2, 10, 10, 6
    m = torch.randint(0, K, (B, h, w), generator=g)
    m[torch.rand(B, h, w, generator=g) < 0.5] = IGNORE
    # make some classes rare: keep one pixel of class 4 and three of class 5 in image 0
    m[0][m[0] == 4] = IGNORE; m[0][m[0] == 5] = IGNORE
    m[0, 0, 0] = 4; m[0, 1, :3] = 5
    pred = m.clone(); wrong = torch.rand(B, h, w, generator=g) < 0.2
    pred[wrong] = (pred[wrong] + 1) % K
    samples = cbs_sample(m, pred, n_per_class=N, generator=g)
    for b, p in enumerate(samples):
        flat, pf = m[b].reshape(-1), pred[b].reshape(-1)
        valid = (flat != IGNORE) & (pf == flat)
        assert valid[p.idx].all(), "a sampled point is not valid"
        assert (flat[p.idx] == p.cls).all()
        counts = {c: int((flat[valid] == c).sum()) for c in range(K)}
        kept = {c for c, n in counts.items() if n >= 2}
        assert set(p.slot.tolist()) == kept
        for c, n in counts.items():
            own = p.idx[(p.slot == c) & (p.cls == c)]
            pads = p.idx[(p.slot == c) & (p.cls != c)]
            if n >= N:
                assert len(own) == N and len(pads) == 0 and len(own.unique()) == N
            elif n >= 2:
                assert sorted(own.tolist()) == sorted(valid.nonzero()[:, 0][flat[valid] == c].tolist())
                assert len(pads) == N - n
            else:
                assert (p.slot == c).sum() == 0 and (p.cls == c).sum() <= (p.padded).sum()  # only as padding, never its own slot
        assert len(p.idx) == N * len(kept)

def test_cbs_teacher_filter_and_empty():
    m = torch.zeros(1, 4, 4, dtype=torch.long); m[0, :2] = 1
    pred = torch.ones_like(m)                      # wrong on all of class 0
    p, = cbs_sample(m, pred, n_per_class=3, generator=gen())
    assert set(p.cls.tolist()) == {1}
    p, = cbs_sample(torch.full((3, 3), IGNORE), teacher_correct=False)
    assert len(p.idx) == 0
    with pytest.raises(ValueError, match='teacher_correct=True needs'): cbs_sample(m, None)
    with pytest.raises(ValueError, match='pad must be'): cbs_sample(m, pred, pad='zero')
    with pytest.raises(ValueError, match='n_per_class'): cbs_sample(m, pred, n_per_class=1)

# ---------------------------------------------------------------- degenerate batches and bad input
@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_no_valid_pixels_gives_zero_and_warning(reduction):
    f_s, f_t, m, tl = batch()
    f_s.requires_grad_(True)
    with pytest.warns(UserWarning, match='no valid pixels'):
        z = gskd_loss(f_s, f_t, torch.full_like(m, IGNORE), tl, reduction=reduction)
    assert torch.isfinite(z).all() and (z == 0).all() and z.requires_grad
    z.sum().backward()
    assert (f_s.grad == 0).all()
    wrong = (tl.argmax(1) + 1) % tl.shape[1]      # teacher wrong everywhere: nothing valid either
    with pytest.warns(UserWarning, match='no valid pixels'):
        assert gskd_loss(f_s, f_t, wrong, tl).item() == 0

def test_single_pixel_classes_only_gives_zero():
    f_s, f_t, _, _ = batch(B=1, h=6, w=6)
    m = torch.full((1, 6, 6), IGNORE); m[0, 0, 0] = 0; m[0, 5, 5] = 1
    with pytest.warns(UserWarning, match='no valid pixels'):
        assert gskd_loss(f_s, f_t, m, teacher_correct=False).item() == 0

def test_bad_shapes_raise_clear_errors():
    f_s, f_t, m, tl = batch(D=8)
    cases = [((f_s[0], f_t, m, tl), 'student features f_s must be a [B,D,h,w]'),
             ((f_s, f_t[0], m, tl), 'teacher features f_t must be a [B,D,h,w]'),
             ((f_s, f_t, m[0], tl), 'mask must be a [B,H,W]'),
             ((f_s[:2], f_t, m, tl), 'batch sizes differ'),
             ((f_s, f_t, m[:2], tl), 'batch sizes differ'),
             ((f_s[:, :4], f_t, m, tl), 'channel counts differ'),
             ((f_s, f_t, m.float(), tl), 'integer class ids'),
             ((f_s, f_t, m, tl[:2]), 'teacher logits must be'),
             ((f_s, f_t, m, None), 'teacher_correct=True needs')]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg.replace('[', r'\[').replace(']', r'\]')): gskd_loss(*args)
    for kw, msg in [({'mode': 'author'}, 'mode must be'), ({'reduction': 'avg'}, 'reduction must be'),
                    ({'softmax_scope': 'pixel'}, 'softmax_scope'), ({'tau': 0}, 'tau must be'), ({'grid': 'x'}, 'grid must be')]:
        with pytest.raises(ValueError, match=msg): gskd_loss(f_s, f_t, m, tl, **kw)
    with pytest.raises(ValueError, match='unknown options'): GSKDTerm(4, 4, points=3)
    term = GSKDTerm(5, 8)
    with pytest.raises(ValueError, match='head expects 5'):
        term({'s': {'penultimate': f_s}, 't': {'penultimate': f_t, 'logits': tl}, 'mask': m})

# ---------------------------------------------------------------- release mode
def test_release_mode_sends_no_gradient():
    torch.manual_seed(0)
    stu, tea = build_model('tiny_s', 4), build_model('tiny', 4)
    term = gskd_term(stu, tea, n_per_class=4, mode='release', teacher_correct=False)
    img = torch.rand(2, 3, 64, 64); msk = torch.randint(0, 4, (2, 64, 64))
    with torch.no_grad(): t = tea(img)
    loss = term({'image': img, 'mask': msk, 's': stu(img), 't': t, 'weight': None})
    assert loss.item() > 0
    loss.backward()                                          # runs: the term keeps a zero link to the graph
    for p in list(stu.parameters()) + list(term.head.parameters()):
        assert p.grad is None or (p.grad == 0).all()
    f_s, f_t, m, tl = batch()
    assert not gskd_loss(f_s.requires_grad_(True), f_t, m, tl, mode='release').requires_grad

def test_release_mode_uses_last_image_and_scrambles():
    f_s, f_t, m, tl = batch(B=3)
    a = gskd_loss(f_s, f_t, m, tl, mode='release', generator=gen(0))
    f_s2 = f_s.clone(); f_s2[:2] = torch.randn_like(f_s2[:2])
    b = gskd_loss(f_s2, f_t, m, tl, mode='release', generator=gen(0))
    torch.testing.assert_close(a, b)                         # images 0 and 1 do not count
    c = gskd_loss(f_s2, f_t, m, tl, mode='paper', generator=gen(0))
    assert not torch.allclose(b, c)
    # scrambled: the release loss of identical features stays 0, but the points are not pixels
    P = point_features(f_t, 'release'); Q = point_features(f_t, 'paper')
    assert not torch.allclose(P, Q)

# ---------------------------------------------------------------- against a plain loop
def loop_loss(f_s, f_t, parts, tau, scope, reduction, mode='paper', group_width=None):
    "GSKD with Python loops over points, descriptor entries and softmax terms."
    B, D, h, w = f_t.shape
    def pixel_vec(f, b, p):                              # channel vector of pixel p, L2-normalised
        v = [float(f[b, d].reshape(-1)[p]) for d in range(D)]
        nrm = math.sqrt(sum(x * x for x in v)); return [x / max(nrm, 1e-12) for x in v]
    def release_points(f, b):
        flat = f[b].tolist()                             # [D][h][w]
        norms = [[math.sqrt(sum(flat[d][i][j] ** 2 for d in range(D))) for j in range(w)] for i in range(h)]
        mem = [flat[d][i][j] / max(norms[i][j], 1e-12) for d in range(D) for i in range(h) for j in range(w)]
        return [mem[p * D:(p + 1) * D] for p in range(h * w)]
    per_image = {}
    images = range(B) if mode == 'paper' else [B - 1]
    for b in images:
        pts, perm = parts['samples'][b], parts['perms'][b]
        idx = pts.idx.tolist(); n = len(idx)
        if mode == 'paper': Vs, Vt = [pixel_vec(f_s, b, p) for p in idx], [pixel_vec(f_t, b, p) for p in idx]
        else:
            rs, rt = release_points(f_s, b), release_points(f_t, b)
            Vs, Vt = [rs[p] for p in idx], [rt[p] for p in idx]
        Gs = [[sum(a * c for a, c in zip(Vs[i], Vs[j])) for j in range(n)] for i in range(n)]
        Gt = [[sum(a * c for a, c in zip(Vt[i], Vt[j])) for j in range(n)] for i in range(n)]
        Sw = group_width or len(set(pts.slot.tolist()))
        kls = []
        for gi in range(n // Sw):
            ds = [[Gs[i][perm[i][gi * Sw + k]] for k in range(Sw)] for i in range(n)]
            dt = [[Gt[i][perm[i][gi * Sw + k]] for k in range(Sw)] for i in range(n)]
            def kl(xs, xt):
                zs = [math.exp(x / tau) for x in xs]; zt = [math.exp(x / tau) for x in xt]
                ps = [z / sum(zs) for z in zs]; pt = [z / sum(zt) for z in zt]
                return sum(q * (math.log(q) - math.log(r)) for q, r in zip(pt, ps))
            if scope == 'descriptor':
                kls.append(tau ** 2 * kl([x for r in ds for x in r], [x for r in dt for x in r]))
            else:
                kls.append(tau ** 2 * sum(kl(ds[i], dt[i]) for i in range(n)) / n)
        per_image[b] = sum(kls) if reduction == 'sum' else sum(kls) / len(kls)
    return sum(per_image.values()) if reduction == 'sum' else sum(per_image.values()) / len(per_image), per_image

@pytest.mark.parametrize('tau,scope,reduction,mode,gw', [(1.0, 'descriptor', 'mean', 'paper', None), (4.0, 'row', 'mean', 'paper', None),
                                                        (2.0, 'descriptor', 'sum', 'paper', 3), (1.0, 'descriptor', 'mean', 'release', None)])
def test_vectorised_equals_loop(tau, scope, reduction, mode, gw):
    f_s, f_t, m, tl = batch(B=2, D=5, h=9, w=9, K=3)
    loss, parts = gskd_loss(f_s, f_t, m, tl, n_per_class=4, tau=tau, softmax_scope=scope, reduction=reduction, mode=mode,
                            group_width=gw, generator=gen(7), return_parts=True)
    parts['perms'] = [p.tolist() if p is not None else None for p in parts['perms']]
    ref, per_image = loop_loss(f_s.double(), f_t.double(), parts, tau, scope, reduction, mode, gw)
    assert abs(loss.item() - ref) < 1e-5 * max(1, abs(ref)), (loss.item(), ref)
    for b, v in per_image.items(): assert abs(parts['per_image'][b].item() - v) < 1e-5 * max(1, abs(v))

def test_resampling_to_teacher_and_student_grid():
    f_s, f_t, m, tl = batch(h=12, w=12)
    small = F.avg_pool2d(f_s, 2)                                   # student at half resolution
    l_t, pt = gskd_loss(small, f_t, m, tl, generator=gen(), return_parts=True)
    l_s, ps = gskd_loss(small, f_t, m, tl, grid='student', generator=gen(), return_parts=True)
    assert pt['grid'] == (12, 12) and ps['grid'] == (6, 6)
    assert torch.isfinite(l_t) and torch.isfinite(l_s)

# ---------------------------------------------------------------- the trainer plug-in
@pytest.mark.parametrize('spec', ['kd+gskd', 'cwd+gskd', 'gskd'])
def test_registry_and_trainer_step(spec):
    torch.manual_seed(0)
    stu, tea = build_model('tiny_s', 3), build_model('tiny', 3)
    terms = build_terms(spec.replace('gskd', 'gskd:w=2,n_per_class=4,teacher_correct=false'), stu, tea)
    assert terms['gskd'][0] == 2.0 and isinstance(terms['gskd'][1], GSKDTerm)
    tr = Trainer(stu, terms, TrainConfig(steps=2, batch_size=2, progress=False, device='cpu', precision='fp32'), teacher=tea)
    head = terms['gskd'][1].head
    w0 = head[0].weight.detach().clone()
    logs = tr.train_step({'image': torch.rand(2, 3, 48, 48), 'mask': torch.randint(0, 3, (2, 48, 48))})
    assert math.isfinite(logs['gskd']) and logs['gskd'] > 0
    assert not torch.equal(head[0].weight, w0), "the projection head did not move"

def test_term_per_sample_weights():
    f_s, f_t, m, tl = batch(B=2, D=6)
    term = GSKDTerm(6, 6, seed=0, n_per_class=4)
    ctx = {'s': {'penultimate': f_s}, 't': {'penultimate': f_t, 'logits': tl}, 'mask': m}
    term.eval()
    per = []
    for wts in ([1.0, 0.0], [0.0, 1.0], [1.0, 1.0]):
        term.generator.manual_seed(0)
        per.append(term({**ctx, 'weight': torch.tensor(wts)}).item())
    assert abs(per[2] - (per[0] + per[1]) / 2) < 1e-5

def test_sid_perm_is_independent_per_row():
    P = sid_perm(16, gen(0))
    assert all(sorted(r) == list(range(16)) for r in P.tolist())
    assert len({tuple(r) for r in P.tolist()}) == 16, "rows must be shuffled independently"
    G = torch.arange(256.).reshape(16, 16)
    d = sid_descriptors(G, P, 4)                                   # [4, 16, 4]
    assert d.shape == (4, 16, 4) and sorted(d.flatten().tolist()) == list(range(256))

def test_lazy_head_warns_and_options_are_recorded():
    f_s, f_t, m, tl = batch(B=2, D=6)
    term = GSKDTerm(n_per_class=4, tau=2.0)
    assert term.head is None and term.tau == 2.0 and term.n_per_class == 4 and term.mode == 'paper'
    with pytest.warns(UserWarning, match='created lazily'):
        l = term({'s': {'penultimate': f_s[:, :5]}, 't': {'penultimate': f_t, 'logits': tl}, 'mask': m})
    assert term.head is not None and (term.head.Ds, term.head.Dt) == (5, 6) and torch.isfinite(l)
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"): GSKDTerm(4, 4, reduction='none')

def test_release_row_trains_exactly_like_kd():
    "The released loss sends no gradient: a KD+GSKD(release) student ends bit-identical to the KD student."
    data = {'image': torch.rand(2, 3, 48, 48, generator=gen(1)), 'mask': torch.randint(0, 3, (2, 48, 48), generator=gen(2))}
    torch.manual_seed(0); tea = build_model('tiny', 3).eval()
    out = {}
    for spec in ('kd', 'kd+gskd:mode=release,n_per_class=4,teacher_correct=false,seed=0'):
        torch.manual_seed(1); stu = build_model('tiny_s', 3)
        tr = Trainer(stu, build_terms(spec, stu, tea, ce=1.0), TrainConfig(steps=3, batch_size=2, progress=False, device='cpu', precision='fp32'), teacher=tea)
        for _ in range(3): logs = tr.train_step(data)
        out[spec] = {k: v.clone() for k, v in stu.state_dict().items()}
        if spec != 'kd': assert logs['gskd'] > 0
    rel = [k for k in out if k != 'kd'][0]
    assert all(torch.equal(out['kd'][k], out[rel][k]) for k in out['kd'])

# ---------------------------------------------------------------- the capacity pilot (why KD shows no effect on CamVid)
def test_capacity_pilot_trains_each_width_against_one_teacher(tmp_path, monkeypatch):
    "Each width's runs build a student of that width; the teacher's val score equals the one written when it was trained."
    import json
    from segkd_nb import runs
    from segkd_nb.datasets import data_taxonomy
    from segkd_nb.experiments.exp_gskd import capacity_pilot, capacity_runs, capacity_report
    monkeypatch.setenv('SEGKD_RUNS_DIR', str(tmp_path/'runs')); monkeypatch.setenv('SEGKD_CACHE_DIR', str(tmp_path/'cache'))
    monkeypatch.setitem(runs.PRESETS, 'tiny', runs.get_preset('samples', teacher_steps=2, teacher_width=8, batch_size=2, student_steps=2, size=(32, 48)))
    res = capacity_pilot('tiny', widths=(4, 6), seeds=(0, 1), workers=1)
    for w in (4, 6):
        cfg = json.loads((tmp_path/'runs'/f'capacity-tiny-w{w}'/'kd-s1'/'config.json').read_text())
        assert cfg['width'] == w and cfg['arch'] == 'tiny_s'
        n_params = sum(p.numel() for p in build_model('tiny_s', data_taxonomy('samples').n, width=w).parameters())
        ck = torch.load(tmp_path/'runs'/f'capacity-tiny-w{w}'/'student-s0'/'last.pt', weights_only=True)
        assert sum(v.numel() for k, v in ck['model'].items() if 'running' not in k and 'num_batches' not in k) == n_params
    t_dir = tmp_path/'cache'/res['tables']['4']['teacher']['dir']
    assert res['teacher_splits']['val']['miou'] == pytest.approx(json.loads((t_dir/'metrics.json').read_text())['miou'], abs=1e-9)
    assert set(res['teacher_splits']) == {'train', 'holdout', 'val'}
    assert set(capacity_runs(res)) == {f'w{w} {r}' for w in (4, 6) for r in ('student', 'kd', 'dist', 'cwd')}
    assert '| w6 cwd − w6 student |' in capacity_report({**res, 'command': 'x'})
