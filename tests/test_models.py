"""The models layer: benchmark architectures (dilated backbones, ImageNet weights in torchvision's format) and a user's
own network as teacher or student (factory, input normalisation, taps, padding, void channel, weights from a CUDA
machine, checkpoints rebuilt in a fresh process, code in a checkpoint refused unless trusted)."""
import copy, json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from torchvision.models import resnet18, mobilenet_v2
from segkd_nb.backbones import ResNetBackbone, MobileNetV2Backbone, HEAD_CHANNELS, read_state_dict
from segkd_nb.models import (SegNet, build_model, load_weights, save_checkpoint, load_checkpoint, read_checkpoint, input_norm)

ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}
ENV.pop('SEGKD_TRUST_CODE', None)

# A user's network, as it would live in the user's own package: it reads BGR 0..255, predicts K classes plus a void
# channel, needs inputs in multiples of 32 and returns a dict.
USER_NET = '''
import torch.nn as nn, torch.nn.functional as F
class UserNet(nn.Module):
    def __init__(self, classes=4, width=8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(), nn.AvgPool2d(2))
        self.decoder = nn.ModuleDict({'mix': nn.Conv2d(width, width, 3, 1, 1), 'head': nn.Conv2d(width, classes, 1)})
    def forward(self, x):
        if x.shape[-1] % 32 or x.shape[-2] % 32: raise ValueError(f'UserNet needs multiples of 32, got {tuple(x.shape)}')
        f = F.relu(self.decoder['mix'](self.encoder(x)))
        return {'out': self.decoder['head'](f), 'aux': f}
def make(classes=4, width=8): return UserNet(classes, width)
'''
BGR255 = dict(mean=[103.53, 116.28, 123.675], std=[57.375, 57.12, 58.395], channels='BGR', max_value=255)

# Rewrites a weights file as a GPU machine writes it: every storage tagged 'cuda:0' (torch.load without map_location
# then needs CUDA). Runs in its own process so the tagger never touches the test process.
AS_CUDA = '''
import sys, torch, torch.serialization as S
S.register_package(0, lambda obj: 'cuda:0', lambda obj, loc: None)
for src, dst in zip(sys.argv[1::2], sys.argv[2::2]): torch.save(torch.load(src, weights_only=True), dst)
'''

def _as_cuda(*pairs):
    r = subprocess.run([sys.executable, '-c', AS_CUDA, *[str(p) for pair in pairs for p in pair]], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr

def _user_pkg(tmp_path):
    "A package `<name>.nets` holding USER_NET on a fresh folder; returns (folder, package name)."
    name = f'segkd_user_{tmp_path.name.replace("-", "_")}'
    (tmp_path/name).mkdir(); (tmp_path/name/'__init__.py').write_text(''); (tmp_path/name/'nets.py').write_text(USER_NET)
    return tmp_path, name

# --- benchmark architectures ------------------------------------------------------------------------------------
@pytest.mark.parametrize('arch', ['deeplabv3_r18', 'pspnet_r18', 'deeplabv3_mbv2', 'pspnet_mbv2', 'deeplabv3_r101', 'pspnet_r101'])
def test_benchmark_archs(arch):
    m = build_model(arch, 5).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad(): o = m(x)
    assert o['logits'].shape == (2, 5, 64, 64)
    assert o['stage4'].shape[-2:] == (8, 8) and o['stage1'].shape[-2:] == (16, 16)  # output stride 8; stage1 at 4
    assert m.strides['stage4'] == 8 and m.strides['stage1'] == 4 and m.strides['penultimate'] == 8
    head, bb = arch.split('_')
    assert o['penultimate'].shape[1] == HEAD_CHANNELS[head, bb] and o['stage4'].shape[1] == {'r18': 512, 'r101': 2048, 'mbv2': 320}[bb]
    assert len(m.bn_layers()) > 20

def test_dilation_layout_by_hand():
    "ResNet-18's BasicBlocks and MobileNetV2's depthwise convs dilated as in CIRKD (first block of a stage: d/2)."
    b = ResNetBackbone(18)
    got = {n: (c.stride[0], c.dilation[0], c.padding[0]) for n, c in b.named_modules() if isinstance(c, nn.Conv2d) and n.startswith(('layer3', 'layer4'))}
    want = {'layer3.0.conv1': (1, 1, 1), 'layer3.0.conv2': (1, 2, 2), 'layer3.0.downsample.0': (1, 1, 0), 'layer3.1.conv1': (1, 2, 2), 'layer3.1.conv2': (1, 2, 2),
            'layer4.0.conv1': (1, 2, 2), 'layer4.0.conv2': (1, 4, 4), 'layer4.0.downsample.0': (1, 1, 0), 'layer4.1.conv1': (1, 4, 4), 'layer4.1.conv2': (1, 4, 4)}
    assert got == want
    f = MobileNetV2Backbone().features
    dw = lambda i: f[i].conv[1][0] if i > 1 else f[i].conv[0][0]  # the depthwise 3x3 conv of block i
    assert [(dw(i).stride[0], dw(i).dilation[0]) for i in (4, 7, 8, 13, 14, 15, 17)] == [(2, 1), (1, 1), (1, 2), (1, 2), (1, 2), (1, 4), (1, 4)]

def test_torchvision_backbone_weights_fill_every_key(tmp_path):
    tv = resnet18(weights=None); torch.save(tv.state_dict(), tmp_path/'r18.pth')
    m = build_model('deeplabv3_r18', 19, backbone_weights=tmp_path/'r18.pth')
    own = m.net.backbone.state_dict()
    assert m.load_report.missing == [] and m.load_report.mismatched == [] and m.load_report.unexpected == ['fc.bias', 'fc.weight']
    for k, v in tv.state_dict().items():
        if not k.startswith('fc.'): assert torch.equal(own[k], v), k
    mb = mobilenet_v2(weights=None); torch.save(mb.state_dict(), tmp_path/'mbv2.pth')
    m2 = build_model('pspnet_mbv2', 19, backbone_weights=tmp_path/'mbv2.pth')
    assert m2.load_report.missing == [] and m2.load_report.share == 1.0
    assert torch.equal(m2.net.backbone.features[17].conv[2].weight, mb.features[17].conv[2].weight)
    with pytest.raises(ValueError, match=r'r18.pth: only \d+\.\d% of the model'): build_model('pspnet_mbv2', 19, backbone_weights=tmp_path/'r18.pth')
    with pytest.raises(ValueError, match="'tiny' has no `backbone`"): build_model('tiny', 19, backbone_weights=tmp_path/'r18.pth')

# --- a user's network ------------------------------------------------------------------------------------------
def test_bgr_255_normalisation_by_hand():
    net = nn.Conv2d(3, 4, 1)
    m = SegNet(net, {'input': ('', 'in')}, 'hand', 4, norm=BGR255)
    x = torch.zeros(1, 3, 2, 2); x[0, :, 1, 0] = torch.tensor([0.2, 0.4, 0.6])  # one RGB pixel
    with torch.no_grad(): got = m(x)['input'][0, :, 1, 0]
    # B = 0.6*255 = 153, G = 102, R = 51: ((153 - 103.53) / 57.375, (102 - 116.28) / 57.12, (51 - 123.675) / 58.395)
    assert torch.allclose(got, torch.tensor([0.862222, -0.25, -1.244541]), atol=1e-5)
    with pytest.raises(ValueError, match='set max_value=255'): input_norm([123.675, 116.28, 103.53], [58.4, 57.1, 57.4])

def test_void_channel_dropped():
    net = nn.Conv2d(3, 6, 1)  # 5 classes + void at index 2
    m = SegNet(net, {}, 'void', 5, void_channel=2)
    x = torch.rand(1, 3, 4, 4)
    with torch.no_grad(): full, got = net(m.prepare(x)), m(x)['logits']
    assert got.shape == (1, 5, 4, 4)
    for j, c in enumerate([0, 1, 3, 4, 5]): assert torch.equal(got[:, j], full[:, c])
    with pytest.raises(ValueError, match='returned 6 channels, expected 5.*set void_channel'): SegNet(net, {}, 'void', 5)(x)

def test_padding_to_32():
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.AvgPool2d(32), nn.Conv2d(3, 4, 1))
    class Strict(nn.Module):
        def __init__(self): super().__init__(); self.body = net
        def forward(self, x):
            assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0
            return self.body(x)
    m = SegNet(Strict(), {}, 'strict', 4, pad_to=32)
    x = torch.rand(1, 3, 40, 70)
    z = (x - m.mean) / m.std
    z = torch.cat([z, torch.zeros(1, 3, 24, 70)], 2); z = torch.cat([z, torch.zeros(1, 3, 64, 26)], 3)  # [1,3,64,96] by hand
    with torch.no_grad():
        want = F.interpolate(net(z), size=(64, 96), mode='bilinear', align_corners=False)[..., :40, :70]
        assert torch.allclose(m(x)['logits'], want, atol=1e-6)
    with pytest.raises(AssertionError): SegNet(Strict(), {}, 'strict', 4)(x)

def test_user_model_cuda_weights_and_fresh_process(tmp_path, monkeypatch):
    folder, pkg = _user_pkg(tmp_path)
    monkeypatch.syspath_prepend(str(folder))
    factory = f'{pkg}.nets:make'
    src = build_model(factory, 4, kwargs={'classes': 5, 'width': 6}, void_channel=0)  # what the user trained elsewhere
    torch.save({'module.' + k: v for k, v in src.net.state_dict().items()}, tmp_path/'cpu.pt')  # saved from DDP
    _as_cuda((tmp_path/'cpu.pt', tmp_path/'cuda.pt'))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='CUDA'): torch.load(tmp_path/'cuda.pt', weights_only=True)  # really a GPU file
    m = build_model(factory, 4, kwargs={'classes': 5, 'width': 6}, weights=tmp_path/'cuda.pt', norm=BGR255,
                    taps={'stage1': ('encoder', 'out')}, pad_to=32, void_channel=0, input_size=(64, 96)).eval()
    assert m.load_report.share == 1.0 and m.load_report.missing == [] and m.load_report.unexpected == []
    for k, v in src.net.state_dict().items(): assert torch.equal(m.net.state_dict()[k], v), k
    assert m.taps['penultimate'] == ('decoder.head', 'in')  # the classifier, found by itself
    x = torch.rand(2, 3, 50, 70)
    with torch.no_grad(): o = m(x)
    assert o['logits'].shape == (2, 4, 50, 70) and o['penultimate'].shape == (2, 6, 16, 24) and m.strides['stage1'] == 4
    save_checkpoint(tmp_path/'t.pt', m)
    _as_cuda((tmp_path/'t.pt', tmp_path/'t_cuda.pt'))
    ck = torch.load(tmp_path/'t.pt', weights_only=True)  # plain values only
    assert ck['build']['arch'] == factory and ck['build']['input_size'] == [64, 96] and ck['build']['taps']['stage1'] == ['encoder', 'out']
    torch.save({'x': x, 'logits': o['logits']}, tmp_path/'io.pt')
    prog = textwrap.dedent(f'''
        import json, torch
        from segkd_nb.models import load_checkpoint
        try: load_checkpoint({str(tmp_path/'t_cuda.pt')!r}); print('LOADED UNTRUSTED')
        except PermissionError as e: print('refused:', e)
        m, ck = load_checkpoint({str(tmp_path/'t_cuda.pt')!r}, num_classes=4, trust_code=True)
        io = torch.load({str(tmp_path/'io.pt')!r})
        with torch.no_grad(): d = (m.eval()(io['x'])['logits'] - io['logits']).abs().max().item()
        print(json.dumps({{'diff': d, 'input_size': m.input_size, 'norm': m.norm, 'pad_to': m.pad_to, 'void': m.void_channel, 'taps': m.taps}}))''')
    r = subprocess.run([sys.executable, '-c', prog], capture_output=True, text=True, env={**ENV, 'PYTHONPATH': str(folder)}, cwd='/')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith('refused:') and 'trust_code=True' in lines[0] and 't_cuda.pt' in lines[0]
    got = json.loads(lines[-1])
    assert got['diff'] < 1e-5 and got['input_size'] == [64, 96] and got['norm']['channels'] == 'BGR' and got['norm']['max_value'] == 255
    assert got['pad_to'] == 32 and got['void'] == 0 and got['taps']['penultimate'] == ['decoder.head', 'in']

def test_file_factory_recorded_absolute(tmp_path, monkeypatch):
    (tmp_path/'my_net.py').write_text(USER_NET)
    monkeypatch.chdir(tmp_path)
    m = build_model('my_net.py:make', 4, kwargs={'width': 5})
    assert m.arch == f'{tmp_path/"my_net.py"}:make'
    save_checkpoint(tmp_path/'u.pt', m)
    monkeypatch.chdir('/')
    m2, _ = load_checkpoint(tmp_path/'u.pt', trust_code=True)
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()): assert torch.equal(a, b), k

def test_load_share_failure_and_report(tmp_path):
    (tmp_path/'my_net.py').write_text(USER_NET)
    f = f'{tmp_path}/my_net.py:make'
    sd = build_model(f, 4, kwargs={'width': 6}).net.state_dict()
    torch.save(sd, tmp_path/'w6.pt')
    with pytest.raises(ValueError, match=r"w6.pt: only \d+\.\d% of the model's values would load \(min_loaded=90%\)"):
        build_model(f, 4, kwargs={'width': 9}, weights=tmp_path/'w6.pt')
    torch.save({k: v for k, v in sd.items() if not k.startswith('decoder.mix')}, tmp_path/'part.pt')  # without the 3x3 mix conv
    m = build_model(f, 4, kwargs={'width': 6})
    total = sum(v.numel() for v in sd.values()); lost = 6 * 6 * 9 + 6
    with pytest.raises(ValueError, match=f'only {100 * (total - lost) / total:.1f}%'): load_weights(m, tmp_path/'part.pt')
    with pytest.warns(UserWarning, match='2 missing'): rep = load_weights(m, tmp_path/'part.pt', min_loaded=0.3)
    assert sorted(rep.missing) == ['decoder.mix.bias', 'decoder.mix.weight'] and rep.loaded == total - lost
    with pytest.raises(ValueError, match='strict loading failed'): load_weights(m, tmp_path/'part.pt', min_loaded=0.3, strict=True)
    torch.save(nn.Conv2d(3, 4, 1), tmp_path/'pickled_module.pt')  # a whole module object, not a state_dict
    with pytest.raises(ValueError, match=r"(?s)pickled_module.pt: not a loadable weights file \(UnpicklingError: .*\); save `model.state_dict\(\)`"): load_weights(m, tmp_path/'pickled_module.pt')

def test_hostile_factory_in_checkpoint_refused(tmp_path, monkeypatch):
    monkeypatch.delenv('SEGKD_TRUST_CODE', raising=False)
    m = build_model('tiny_s', 3)
    save_checkpoint(tmp_path/'c.pt', m)
    ck = torch.load(tmp_path/'c.pt', weights_only=True)
    marker = tmp_path/'pwned'
    ck['build'] = {'arch': 'subprocess:run', 'num_classes': 3, 'kwargs': {'args': ['touch', str(marker)]}}
    torch.save(ck, tmp_path/'evil.pt')
    with pytest.raises(PermissionError, match=r"evil.pt: the model is built by code 'subprocess:run'"): load_checkpoint(tmp_path/'evil.pt')
    assert not marker.exists()

def test_old_checkpoint_and_weights_only(tmp_path):
    m = build_model('tiny_s', 3)
    save_checkpoint(tmp_path/'c.pt', m)
    ck = torch.load(tmp_path/'c.pt', weights_only=True)
    assert set(ck['build']) == {'arch', 'num_classes', 'width', 'kwargs', 'norm', 'taps', 'pad_to', 'void_channel', 'input_size'}
    del ck['build']; torch.save(ck, tmp_path/'old.pt')  # a checkpoint from before the build record
    m2, _ = load_checkpoint(tmp_path/'old.pt', num_classes=3)
    assert m2.arch == 'tiny_s' and all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    ck['arch'] = 'deeplabv3_r101'; ck['model'] = {}; torch.save(ck, tmp_path/'old_r101.pt')
    with pytest.raises(ValueError, match="do not fit the rebuilt 'deeplabv3_r101_tv'"): load_checkpoint(tmp_path/'old_r101.pt')

def test_taps_survive_deepcopy():
    m = build_model('tiny_s', 3).eval()
    c = copy.deepcopy(m)
    with torch.no_grad(): o = c(torch.rand(1, 3, 32, 32))
    assert {'penultimate', 'stage4'} <= set(o) and m._feats == {}
    with pytest.raises(ValueError, match="no module 'decoder'"): SegNet(nn.Conv2d(3, 3, 1), {'penultimate': ('decoder', 'in')}, 'x', 3)
