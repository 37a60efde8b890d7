"""The segmentation KD baselines (segkd_nb.baselines, plus kd/cwd from segkd_nb.kd), each checked against a computation
written here (plain loops, numpy, hand-worked values), at its minimum, for gradients, for the ignore rule and for bad
shapes; then composed with GSKD and run for two optimizer steps in the Trainer."""
import copy, math
import numpy as np, pytest, torch, torch.nn as nn, torch.nn.functional as F
from segkd_nb.models import build_model
from segkd_nb.train import Trainer, TrainConfig
from segkd_nb.kd import TERMS, build_terms, KDTerm, CWDTerm
from segkd_nb.baselines import (DISTTerm, FitNetTerm, ATTerm, MGDTerm, CWDFeatTerm, SKDTerm, IFVDTerm, CIRKDTerm, ClassMemory,
                                contrast_kd, dist_loss, at_loss, skd_loss, cross_image_loss, ifvd_loss, mgd_loss)
import segkd_nb.gskd  # registers 'gskd'

pytestmark = pytest.mark.filterwarnings('ignore:Converting a tensor with requires_grad')

K, B, H, W = 5, 2, 32, 48           # 5 classes, 2 images of 32 x 48: a 4 x 6 grid at stride 8
h, w = H // 8, W // 8
DS, DT = 6, 10                      # student and teacher widths
IGN = [(0, 1, 2), (0, 1, 3)] + [(1, 0, j) for j in range(w)]  # (image, row, col) of the ignored grid cells

def make_ctx(seed=0, ds=DS, dt=DT, ignore=True):
    "Logits at input size; features already on the 4 x 6 grid; labels random per pixel, with whole ignored 8x8 cells."
    g = torch.Generator().manual_seed(seed)
    out = lambda d: {'logits': torch.randn(B, K, H, W, generator=g), 'penultimate': torch.randn(B, d, h, w, generator=g),
                     'stage4': torch.randn(B, d, h, w, generator=g)}
    s, t = out(ds), out(dt)
    for v in s.values(): v.requires_grad_(True)
    mask = torch.randint(0, K, (B, H, W), generator=g)
    if ignore:
        for b, i, j in IGN: mask[b, 8 * i:8 * i + 8, 8 * j:8 * j + 8] = 255
    return {'image': torch.zeros(B, 3, H, W), 'mask': mask, 's': s, 't': t, 'weight': None, 'progress': 0.0}

def grid_labels(mask): return mask[:, 4::8, 4::8]     # the label at each cell's centre (pixel 8i+4)
def grid_logits(z): return 0.25 * (z[:, :, 3::8, 3::8] + z[:, :, 3::8, 4::8] + z[:, :, 4::8, 3::8] + z[:, :, 4::8, 4::8])  # bilinear /8
def valid_cells(mask): return grid_labels(mask) != 255

def perturbed(ctx, seed=1):
    "The same context with student and teacher changed inside every ignored cell (features and logits)."
    g = torch.Generator().manual_seed(seed)
    c = {**ctx, 's': {k: v.detach().clone() for k, v in ctx['s'].items()}, 't': {k: v.clone() for k, v in ctx['t'].items()}}
    for out in (c['s'], c['t']):
        for b, i, j in IGN:
            out['logits'][b, :, 8 * i:8 * i + 8, 8 * j:8 * j + 8] += 4 * torch.randn(K, 8, 8, generator=g)
            for f in ('penultimate', 'stage4'): out[f][b, :, i, j] += 4 * torch.randn(out[f].shape[1], generator=g)
    for v in c['s'].values(): v.requires_grad_(True)
    return c

def identity_conv_(conv):
    "Make a (1x1 or 3x3) Dt->Dt convolution the identity."
    nn.init.zeros_(conv.weight)
    if conv.bias is not None: nn.init.zeros_(conv.bias)
    k = conv.weight.shape[-1] // 2
    for c in range(conv.weight.shape[0]): conv.weight.data[c, c, k, k] = 1.0

def ce_mean(x, v): return float((x * v).sum() / v.sum())

# ---------------------------------------------------------------- every term, by a computation written here
def softmax_np(x): e = np.exp(x - x.max()); return e / e.sum()
def kl_np(p, q): return float((p * (np.log(p) - np.log(q))).sum())

def test_kd_and_cwd_against_loops():
    ctx = make_ctx(); v = valid_cells(ctx['mask'])
    zs, zt = grid_logits(ctx['s']['logits']).detach().double().numpy(), grid_logits(ctx['t']['logits']).double().numpy()
    kls = [kl_np(softmax_np(zt[b, :, i, j] / 2), softmax_np(zs[b, :, i, j] / 2)) for b in range(B) for i in range(h) for j in range(w) if v[b, i, j]]
    assert float(KDTerm(tau=2.0)(ctx)) == pytest.approx(4 * np.mean(kls), rel=1e-5)
    cw = []
    for b in range(B):
        vb = v[b].flatten().numpy()
        for c in range(K):
            cw.append(kl_np(softmax_np(zt[b, c].flatten()[vb] / 4), softmax_np(zs[b, c].flatten()[vb] / 4)))
    assert float(CWDTerm(tau=4.0)(ctx)) == pytest.approx(16 * np.mean(cw), rel=1e-5)

def test_dist_against_numpy_correlations():
    ctx = make_ctx(); v = valid_cells(ctx['mask']).flatten()
    rows = lambda z: grid_logits(z).detach().permute(0, 2, 3, 1).reshape(-1, K)[v] / 2.0
    Ys, Yt = F.softmax(rows(ctx['s']['logits']), 1).numpy(), F.softmax(rows(ctx['t']['logits']), 1).numpy()
    r = lambda a, b: np.corrcoef(a, b)[0, 1]
    inter = np.mean([1 - r(Ys[n], Yt[n]) for n in range(len(Ys))])
    intra = np.mean([1 - r(Ys[:, k], Yt[:, k]) for k in range(K)])
    assert float(DISTTerm(beta=2.0, gamma=0.5, tau=2.0)(ctx)) == pytest.approx(4 * (2 * inter + 0.5 * intra), rel=1e-5)

def test_fitnet_against_loop():
    ctx = make_ctx(); v = valid_cells(ctx['mask'])
    term = FitNetTerm(DS, DT)
    Wc = term.connector.weight[:, :, 0, 0].detach()          # [Dt,Ds]
    fs, ft = ctx['s']['penultimate'].detach(), ctx['t']['penultimate']
    se = [float(((Wc @ fs[b, :, i, j] - ft[b, :, i, j])**2).mean()) for b in range(B) for i in range(h) for j in range(w) if v[b, i, j]]
    assert float(term(ctx)) == pytest.approx(np.mean(se), rel=1e-5)

def test_at_against_loop_and_hand():
    ctx = make_ctx(); v = valid_cells(ctx['mask'])
    fs, ft = ctx['s']['penultimate'].detach(), ctx['t']['penultimate']
    tot, n = 0.0, 0
    for b in range(B):
        cells = [(i, j) for i in range(h) for j in range(w) if v[b, i, j]]
        qs = np.array([float((fs[b, :, i, j]**2).mean()) for i, j in cells]); qt = np.array([float((ft[b, :, i, j]**2).mean()) for i, j in cells])
        d = qs / np.linalg.norm(qs) - qt / np.linalg.norm(qt)
        tot += (d**2).sum(); n += len(cells)
    assert float(ATTerm()(ctx)) == pytest.approx(tot / n, rel=1e-5)
    # hand-worked: student attention on one of four cells, teacher's spread evenly
    a_s, a_t = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2); a_s[0, 0, 0, 0] = 1.0
    assert float(at_loss(a_s, a_t)) == pytest.approx((0.5**2 * 4) / 4)
    assert float(at_loss(a_s, a_t, mode='paper')) == pytest.approx(0.5 * 1.0)

def test_mgd_against_loop_with_the_same_mask():
    ctx = make_ctx(); v = valid_cells(ctx['mask'])
    torch.manual_seed(0); term = MGDTerm(DS, DT, alpha=1e-3, ratio=0.5)
    torch.manual_seed(3); loss = float(term(ctx))
    torch.manual_seed(3); keep = (torch.rand(B, 1, h, w) >= 0.5).float() * v[:, None]
    with torch.no_grad(): gen = term.generator(term.align(ctx['s']['stage4']) * keep)
    ft = ctx['t']['stage4']
    tot = sum(float(((gen[b, :, i, j] - ft[b, :, i, j])**2).sum()) for b in range(B) for i in range(h) for j in range(w) if v[b, i, j])
    assert loss == pytest.approx(1e-3 * tot / B, rel=1e-5)

def test_cwd_on_features_against_loop():
    ctx = make_ctx(); v = valid_cells(ctx['mask'])
    term = CWDFeatTerm(DS, DT, tau=2.0)
    with torch.no_grad(): fs = term.connector(ctx['s']['penultimate']).double().numpy()
    ft = ctx['t']['penultimate'].double().numpy()
    kls = [kl_np(softmax_np(ft[b, c][v[b].numpy()] / 2), softmax_np(fs[b, c][v[b].numpy()] / 2)) for b in range(B) for c in range(DT)]
    assert float(term(ctx)) == pytest.approx(4 * np.mean(kls), rel=1e-5)

def test_skd_against_loop_over_node_pairs():
    ctx = make_ctx(); v = valid_cells(ctx['mask'])
    fs, ft = ctx['s']['penultimate'].detach(), ctx['t']['penultimate']
    def nodes(f, b):  # 2x2 max pooling over valid cells, by hand
        out = {}
        for I in range(0, h, 2):
            for J in range(0, w, 2):
                cells = [(i, j) for i in range(I, I + 2) for j in range(J, J + 2) if v[b, i, j]]
                if cells: out[(I, J)] = torch.stack([f[b, :, i, j] for i, j in cells]).max(0).values
        return out
    se = []
    for b in range(B):
        ns, nt = nodes(fs, b), nodes(ft, b)
        for p in ns:
            for q in ns:
                se.append((float(F.cosine_similarity(ns[p], ns[q], 0)) - float(F.cosine_similarity(nt[p], nt[q], 0)))**2)
    assert float(SKDTerm()(ctx)) == pytest.approx(np.mean(se), rel=1e-5)
    cells = lambda f, b: [f[b, :, i, j] for i in range(h) for j in range(w)]
    se1 = [(float(F.cosine_similarity(a, c, 0)) - float(F.cosine_similarity(a2, c2, 0)))**2
           for b in range(B) for a, a2 in zip(cells(fs, b), cells(ft, b)) for c, c2 in zip(cells(fs, b), cells(ft, b))]
    assert float(skd_loss(fs, ft, pool=1)) == pytest.approx(np.mean(se1), rel=1e-5)

def test_ifvd_against_prototypes_by_hand():
    ctx = make_ctx(); lab = grid_labels(ctx['mask'])
    fs, ft = ctx['s']['penultimate'].detach(), ctx['t']['penultimate']
    def ifv(f, b, i, j):
        k = int(lab[b, i, j])
        members = [f[b, :, a, c] for a in range(h) for c in range(w) if int(lab[b, a, c]) == k]
        return float(F.cosine_similarity(f[b, :, i, j], torch.stack(members).mean(0), 0))
    se = [(ifv(fs, b, i, j) - ifv(ft, b, i, j))**2 for b in range(B) for i in range(h) for j in range(w) if lab[b, i, j] != 255]
    assert float(IFVDTerm()(ctx)) == pytest.approx(np.mean(se), rel=1e-5)

def test_cirkd_batch_part_against_pairs_loop():
    ctx = make_ctx(); v = valid_cells(ctx['mask'])
    es, et = (F.normalize(ctx[k]['penultimate'].detach(), dim=1).flatten(2) for k in ('s', 't'))  # [B,D,N]
    vf = v.flatten(1)
    kls = []
    for i in range(B):
        for j in range(B):
            cols = vf[j]
            for u in vf[i].nonzero()[:, 0].tolist():
                ps = F.softmax(es[i, :, u] @ es[j][:, cols] / 0.1, 0); pt = F.softmax(et[i, :, u] @ et[j][:, cols] / 0.1, 0)
                kls.append(float((pt * (pt.log() - ps.log())).sum()))
    assert float(CIRKDTerm()(ctx)) == pytest.approx(np.mean(kls), rel=1e-4)
    # with every cell valid it is the reference's mean over the B^2 pairs of KL(batchmean)
    fs, ft = ctx['s']['penultimate'].detach(), ctx['t']['penultimate']
    ref = np.mean([float(F.kl_div(F.log_softmax(es[i].T @ es[j] / 0.1, 1), F.softmax(et[i].T @ et[j] / 0.1, 1), reduction='batchmean'))
                   for i in range(B) for j in range(B)])
    assert float(cross_image_loss(fs, ft)) == pytest.approx(ref, rel=1e-5)

def test_cirkd_memory_queues_and_contrast():
    ctx = make_ctx(); lab = grid_labels(ctx['mask']); v = lab != 255
    mem = ClassMemory(K, DT, pixel_size=40, region_size=3, per_image=2)
    et = F.normalize(ctx['t']['penultimate'], dim=1)
    mem.push(et, lab, v)
    for k in range(K):   # the region queue's first entry: class k's mean embedding in the first image that has it
        b = next(b for b in range(B) if ((lab[b] == k) & v[b]).any())
        want = F.normalize(torch.stack([et[b, :, i, j] for i in range(h) for j in range(w) if lab[b, i, j] == k and v[b, i, j]]).mean(0), dim=0)
        assert torch.allclose(mem.region_queue[k, 0], want, atol=1e-6)
        n = sum(int(((lab[b_] == k) & v[b_]).sum().clamp(max=2)) for b_ in range(B))
        assert int(mem.pixel_ptr[k]) == n
    g = torch.Generator().manual_seed(0)
    a_s, a_t, X = (F.normalize(torch.randn(n_, DT, generator=g), dim=1) for n_ in (7, 7, 11))
    ref = F.kl_div(F.log_softmax(a_s @ X.T / 0.1, 1), F.softmax(a_t @ X.T / 0.1, 1), reduction='batchmean')
    assert float(contrast_kd(a_s, a_t, X)) == pytest.approx(float(ref), rel=1e-5)
    assert float(contrast_kd(a_t, a_t, X)) == pytest.approx(0.0, abs=1e-6)

# ---------------------------------------------------------------- minimum when the student is the teacher
def same_ctx(d=DT):
    ctx = make_ctx(ds=d, dt=d)
    return {**ctx, 's': {k: v.detach().clone().requires_grad_(True) for k, v in ctx['t'].items()}}

@pytest.mark.parametrize('make', [lambda: KDTerm(), lambda: CWDTerm(), lambda: DISTTerm(), lambda: ATTerm(), lambda: ATTerm(mode='paper'),
                                  lambda: CWDFeatTerm(DT, DT), lambda: SKDTerm(), lambda: IFVDTerm(), lambda: CIRKDTerm()])
def test_zero_when_student_is_teacher(make):
    assert float(make()(same_ctx())) == pytest.approx(0.0, abs=1e-5)

def test_fitnet_and_mgd_reach_their_minimum():
    ctx = same_ctx()
    fit = FitNetTerm(DT, DT); identity_conv_(fit.connector)
    assert float(fit(ctx)) == pytest.approx(0.0, abs=1e-10)
    ctx['t']['stage4'] = ctx['t']['stage4'].relu(); ctx['s']['stage4'] = ctx['t']['stage4'].clone().requires_grad_(True)
    mgd = MGDTerm(DT, DT, ratio=0.0)                # nothing masked, no align conv: the identity generator is exact
    for conv in (mgd.generator[0], mgd.generator[2]): identity_conv_(conv)
    assert float(mgd(ctx)) == pytest.approx(0.0, abs=1e-10)
    assert float(MGDTerm(DT, DT, ratio=0.5)(ctx)) > 0

def test_cirkd_memory_is_zero_when_student_is_teacher():
    ctx = same_ctx()
    term = CIRKDTerm(DT, DT, K, memory=30, w_batch=0.0)
    term.head = nn.Identity()                        # the student's embeddings are then the teacher's
    assert float(term(ctx)) == pytest.approx(0.0, abs=1e-6)

# ---------------------------------------------------------------- gradients reach the student and every trainable part
ALL = {'kd': lambda: KDTerm(), 'cwd': lambda: CWDTerm(), 'dist': lambda: DISTTerm(), 'fitnet': lambda: FitNetTerm(DS, DT),
       'at': lambda: ATTerm(), 'mgd': lambda: MGDTerm(DS, DT), 'cwdf': lambda: CWDFeatTerm(DS, DT), 'skd': lambda: SKDTerm(),
       'ifvd': lambda: IFVDTerm(), 'cirkd': lambda: CIRKDTerm(), 'cirkd_mem': lambda: CIRKDTerm(DS, DT, K, memory=30)}

@pytest.mark.parametrize('name', list(ALL))
def test_gradient_to_student_and_trainable_parts(name):
    torch.manual_seed(0)
    term, ctx = ALL[name](), make_ctx()
    term(ctx).backward()
    feat = {'kd': 'logits', 'cwd': 'logits', 'dist': 'logits', 'mgd': 'stage4'}.get(name, 'penultimate')
    assert ctx['s'][feat].grad is not None and ctx['s'][feat].grad.abs().sum() > 0
    params = list(term.named_parameters())
    assert (len(params) > 0) == (name in ('fitnet', 'mgd', 'cwdf', 'cirkd_mem'))
    for n, p in params: assert p.grad is not None and p.grad.abs().sum() > 0, n

# ---------------------------------------------------------------- ignore pixels have no effect
@pytest.mark.parametrize('name', list(ALL))
def test_ignored_cells_have_no_effect(name):
    torch.manual_seed(0)
    term = ALL[name]()
    ctx = make_ctx()
    t1, t2 = copy.deepcopy(term), copy.deepcopy(term)       # CIRKD's memory changes with each call
    torch.manual_seed(5); a = float(t1(ctx))
    torch.manual_seed(5); b = float(t2(perturbed(ctx)))
    assert b == pytest.approx(a, rel=1e-5, abs=1e-7)
    # while the same change at cells that count does change the loss
    c = {**ctx, 's': {k: (v.detach() + 3 * torch.randn_like(v)).requires_grad_(True) for k, v in ctx['s'].items()}}
    torch.manual_seed(5); assert float(copy.deepcopy(term)(c)) != pytest.approx(a, rel=1e-4)

def test_ignore_matters_where_the_reference_would_count_it():
    "Without a mask every cell counts, so the same perturbation then changes the loss."
    ctx = make_ctx(); ctx_nomask = {**ctx, 'mask': None}
    assert float(SKDTerm()(perturbed(ctx_nomask))) != pytest.approx(float(SKDTerm()(ctx_nomask)), rel=1e-4)

# ---------------------------------------------------------------- bad shapes
@pytest.mark.parametrize('name', list(ALL))
def test_batch_mismatch_is_a_clear_error(name):
    ctx = make_ctx()
    bad = {**ctx, 't': {k: v[:1] for k, v in ctx['t'].items()}}
    with pytest.raises(ValueError, match=r'(?=.*batch)(?=.*\(2, )(?=.*\(1, )'): ALL[name]()(bad)

def test_channel_and_grid_errors_name_the_shapes():
    ctx = make_ctx()
    with pytest.raises(ValueError, match=r'DIST: channel counts differ: student \(2, 5, 4, 6\), teacher \(2, 4, 4, 6\)'):
        dist_loss(grid_logits(ctx['s']['logits']), grid_logits(ctx['t']['logits'])[:, :4])
    with pytest.raises(ValueError, match=r'FitNet: the student feature has 6 channels, the connector expects 7'): FitNetTerm(7, DT)(ctx)
    with pytest.raises(ValueError, match=r'MGD: the student feature has 6 channels'): MGDTerm(8, DT)(ctx)
    with pytest.raises(ValueError, match=r'grids differ'): skd_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r'must be a \[B,D,h,w\] tensor, got \(3, 4, 4\)'): at_loss(torch.zeros(3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r'labels \(2, 4\) must be \[B,h,w\]'): ifvd_loss(torch.zeros(2, 3, 4, 6), torch.zeros(2, 3, 4, 6), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"has no 'stage9'"): ATTerm(feature='stage9')(ctx)
    with pytest.raises(ValueError, match=r'mask \(1, 32, 48\) and outputs \(2, '): ATTerm()({**ctx, 'mask': ctx['mask'][:1]})
    with pytest.raises(ValueError, match='stride must be a positive integer'): SKDTerm(stride=0)
    with pytest.raises(ValueError, match='mode must be one of'): ATTerm(mode='eq2')
    with pytest.raises(ValueError, match=r'ratio'): MGDTerm(DS, DT, ratio=1.0)
    with pytest.raises(ValueError, match='needs student_dim, teacher_dim and num_classes'): CIRKDTerm(memory=10)

# ---------------------------------------------------------------- registry, loss specs, composition, trainer
@pytest.fixture(scope='module')
def models():
    torch.manual_seed(0)
    return build_model('tiny_s', K, width=12), build_model('tiny', K, width=24)

BASELINES = {'kd': 1.0, 'cwd': 3.0, 'dist': 1.0, 'fitnet': 1.0, 'at': 1e4, 'mgd': 1.0, 'cwdf': 50.0, 'skd': 10.0, 'ifvd': 20.0, 'cirkd': 1.0}

def test_registry_weights_and_options(models):
    st, te = models
    assert {n: TERMS[n][1] for n in BASELINES} == BASELINES
    terms = build_terms('kd:tau=2+dist:tau=3,w=2+cwd:tau=1,stride=1+cirkd:memory=20,tau=0.2', st, te)
    assert (terms['kd'][1].tau, terms['dist'][1].tau, terms['dist'][0], terms['cwd'][1].tau, terms['cwd'][1].stride) == (2, 3, 2.0, 1, 1)
    assert terms['cirkd'][1].bank.pixel_queue.shape == (K, 20, te.feature_dims['penultimate']) and terms['cirkd'][1].tau == 0.2
    assert build_terms('fitnet', st, te)['fitnet'][1].connector.weight.shape == (24 * 2, 12 * 2, 1, 1)
    with pytest.raises(ValueError, match=r"unknown options \['temp'\]"): build_terms('dist:temp=2')
    with pytest.raises(ValueError, match='give build_terms the student and the teacher'): build_terms('mgd')

def test_dist_plus_gskd_is_the_sum_of_its_parts(models):
    st, te = models
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 64, 64, generator=g); mask = torch.randint(0, K, (2, 64, 64), generator=g); mask[:, :8] = 255
    with torch.no_grad(): t_out = te.eval()(img)
    ctx = {'image': img, 'mask': mask, 's': st.train()(img), 't': t_out, 'weight': None, 'progress': 0.0}
    spec = 'gskd:seed=0,teacher_correct=false,n_per_class=4'
    torch.manual_seed(1); both = build_terms('dist+' + spec, st, te)
    torch.manual_seed(1); gskd_alone = build_terms(spec, st, te)['gskd']
    dist_alone = build_terms('dist', st, te)['dist']
    assert (both['dist'][0], both['gskd'][0]) == (dist_alone[0], gskd_alone[0]) == (1.0, 1.0)
    total = sum(wt * t(ctx) for wt, t in both.values())
    parts = dist_alone[0] * dist_alone[1](ctx) + gskd_alone[0] * gskd_alone[1](ctx)
    assert float(gskd_alone[1](ctx)) > 0 and float(total) == pytest.approx(float(parts), rel=1e-6)
    # and the trainer's loss is that weighted sum (plus cross-entropy)
    tr = Trainer(st, build_terms('dist:w=2+' + spec, st, te, ce=1.0), TrainConfig(steps=1, batch_size=2, device='cpu', progress=False), teacher=te)
    logs = tr.train_step({'image': img, 'mask': mask})
    assert logs['loss'] == pytest.approx(logs['ce'] + 2 * logs['dist'] + logs['gskd'], rel=1e-6)

def tiny_dataset(n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        m = torch.randint(0, K, (size // 16, size // 16), generator=g).repeat_interleave(16, 0).repeat_interleave(16, 1)
        m[:8] = 255                                   # a band of ignore, as crop padding
        out.append({'image': torch.rand(3, size, size, generator=g), 'mask': m, 'id': f'img{i}'})
    return out

SPECS = ['kd', 'cwd', 'dist', 'fitnet', 'at', 'mgd', 'cwdf', 'skd', 'ifvd', 'cirkd', 'cirkd:memory=64', 'kd+cwd+cwdf']

@pytest.mark.parametrize('spec', SPECS + [s + '+gskd:teacher_correct=false' for s in SPECS])
def test_two_trainer_steps_give_finite_losses(spec, tmp_path):
    torch.manual_seed(0)
    st, te = build_model('tiny_s', K, width=12), build_model('tiny', K, width=24)
    terms = build_terms(spec, st, te, ce=1.0)
    before = {k: p.detach().clone() for k, p in nn.ModuleDict({n: t for n, (w_, t) in terms.items()}).named_parameters()}
    tr = Trainer(st, terms, TrainConfig(steps=2, batch_size=2, device='cpu', progress=False, log_every=1), teacher=te, run_dir=tmp_path)
    hist = tr.fit(tiny_dataset())
    assert len(hist) == 2 and all(math.isfinite(v) for h_ in hist for k, v in h_.items() if k != 'step')
    after = dict(tr.terms.named_parameters())
    for k, p0 in before.items(): assert not torch.equal(after[k].detach(), p0), f'{k} did not train'
    saved = torch.load(tmp_path/'last.pt', weights_only=True)['extra']['terms']
    assert set(tr.terms.state_dict()) == set(saved)          # connectors, generator, head and queues are checkpointed

def test_label_terms_refuse_unlabelled_batches(models):
    st, te = models
    for spec in ('ifvd', 'cirkd:memory=10'):
        tr = Trainer(st, build_terms(spec, st, te), TrainConfig(steps=1, batch_size=2, device='cpu', progress=False), teacher=te)
        with pytest.raises(ValueError, match='needs labels'): tr.train_step({'image': torch.rand(2, 3, 32, 32)})
    # the others run without labels (data-free), every cell counting
    tr = Trainer(st, build_terms('dist+skd+fitnet', st, te), TrainConfig(steps=1, batch_size=2, device='cpu', progress=False), teacher=te)
    assert math.isfinite(tr.train_step({'image': torch.rand(2, 3, 32, 32)})['loss'])

@pytest.mark.parametrize('name', list(ALL))
def test_bf16_autocast_inputs_give_float32_losses(name):
    "Under bf16 autocast (as the trainer runs on GPUs) with bf16 model outputs, each term computes in float32."
    torch.manual_seed(0)
    term, ctx = ALL[name](), make_ctx()
    ref = float(copy.deepcopy(term)(ctx))
    low = {**ctx, 's': {k: v.detach().bfloat16().requires_grad_(True) for k, v in ctx['s'].items()}, 't': {k: v.bfloat16() for k, v in ctx['t'].items()}}
    exact = {**ctx, 's': {k: v.detach().bfloat16().float() for k, v in ctx['s'].items()}, 't': {k: v.bfloat16().float() for k, v in ctx['t'].items()}}
    torch.manual_seed(0); want = float(copy.deepcopy(term)(exact))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        torch.manual_seed(0); loss = copy.deepcopy(term)(low)
    assert loss.dtype == torch.float32 and math.isfinite(float(loss))
    assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-7)   # the same as float32 on the rounded inputs
    assert float(loss) == pytest.approx(ref, rel=0.05, abs=1e-4)    # and close to the float32 inputs
