"""Datasets in their published layouts (Cityscapes, ADE20K, Pascal VOC + SBD, COCO-Stuff-164k), each on a tiny tree written
here, and the strict checks of taxonomies, mappings and image files. Every bad input is one row of `BAD` below."""
import json, os, struct, zlib
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from torch.utils.data import DataLoader
from segkd_nb.data import (DataError, Taxonomy, camvid_taxonomy, folder_pairs, list_file, read_mapping, read_image,
                           check_same_classes, PoolDataset, collate_skip, image_pool, CAMVID_CLASSES)
from segkd_nb.datasets import (cityscapes, ade20k, voc, coco_stuff, load_split, data_taxonomy, data_root, voc_palette)

# ---------------------------------------------------------------- writers (PIL only; no kit code)
H, W = 6, 8

def _img(path, h=H, w=W, seed=0):
    "A random RGB image; JPEG or PNG by the extension."
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)

def _lbl(path, values, h=H, w=W):
    "A single-channel label PNG whose first pixels (row-major) are `values`, the rest repeat the first. Returns the array."
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full(h * w, values[0], np.uint8); a[:len(values)] = values
    Image.fromarray(a.reshape(h, w)).save(path)
    return a.reshape(h, w)

def _palette_png(path, values):
    "A palette (P-mode) label as VOC ships them: indices `values`, drawn with the VOC colours."
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full(H * W, values[0], np.uint8); a[:len(values)] = values
    im = Image.fromarray(a.reshape(H, W)); im.putpalette([v for c in voc_palette() for v in c]); im.save(path)

def _bomb_png(path, side=50000):
    "A 60-byte PNG whose header claims side x side pixels."
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = lambda t, b: struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b))
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0)) + chunk(b'IEND', b''))

def _text(path, text, enc='utf-8'):
    path.parent.mkdir(parents=True, exist_ok=True); path.write_bytes(text.encode(enc))

# ---------------------------------------------------------------- one tiny tree per published layout
CS = {'aachen': 'aachen_000000_000019', 'bonn': 'bonn_000001_000019'}
CS_RAW = [7, 8, 26, 33, 0, 9, 24, 255]            # labelIds: road, sidewalk, car, bicycle, unlabeled, parking, person, 255
CS_WANT = [0, 1, 13, 18, 255, 255, 11, 255]       # train ids by hand from the official table

def make_cityscapes(root, split='val', kind='labelTrainIds'):
    for city, s in CS.items():
        _img(root/'leftImg8bit'/split/city/f'{s}_leftImg8bit.png')
        if kind in ('labelIds', 'both'): _lbl(root/'gtFine'/split/city/f'{s}_gtFine_labelIds.png', CS_RAW)
        if kind in ('labelTrainIds', 'both'): _lbl(root/'gtFine'/split/city/f'{s}_gtFine_labelTrainIds.png', CS_WANT)
        _lbl(root/'gtFine'/split/city/f'{s}_gtFine_instanceIds.png', [0])  # other gtFine files are ignored
    return root

ADE_RAW, ADE_WANT = [0, 1, 2, 13, 150, 255], [255, 0, 1, 12, 149, 255]   # 0 -> ignore, k -> k-1
ADE_IDS = ('ADE_val_00000001', 'ADE_val_00000002')

def make_ade(root, split='validation'):
    base = root/'ADEChallengeData2016'
    for i in ADE_IDS:
        _img(base/'images'/split/f'{i}.jpg'); _lbl(base/'annotations'/split/f'{i}.png', ADE_RAW)
    return root

VOC_IDS = {'train': ['2007_000032', '2007_000039'], 'val': ['2007_000033'], 'aug': ['2008_000002', '2008_000003']}

def make_voc(root, aug=True):
    base = root/'VOCdevkit'/'VOC2012'
    for i in VOC_IDS['train'] + VOC_IDS['val']:
        _img(base/'JPEGImages'/f'{i}.jpg'); _palette_png(base/'SegmentationClass'/f'{i}.png', [0, 1, 15, 20, 255])
    _text(base/'ImageSets/Segmentation/train.txt', '\n'.join(VOC_IDS['train']) + '\n')
    _text(base/'ImageSets/Segmentation/val.txt', '\n'.join(VOC_IDS['val']) + '\n')
    if aug:
        for i in VOC_IDS['aug']: _img(base/'JPEGImages'/f'{i}.jpg')
        for i in VOC_IDS['train'] + VOC_IDS['aug']: _lbl(base/'SegmentationClassAug'/f'{i}.png', [3, 0, 255])
        _text(base/'ImageSets/SegmentationAug/train_aug.txt',
              ''.join(f'/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n' for i in VOC_IDS['train'] + VOC_IDS['aug']))
    return root

COCO_RAW = [0, 10, 12, 24, 26, 45, 89, 91, 181, 255]     # person, fire hydrant, stop sign, giraffe, backpack, wine glass, ...
COCO_WANT = [0, 10, 11, 23, 24, 40, 79, 80, 170, 255]    # by hand: skip the 11 removed COCO ids (11, 25, 28, 29, 44, ...)
COCO_IDS = ('000000000139', '000000000285')

def make_coco(root, split='val2017', converted=False):
    for i in COCO_IDS:
        _img(root/'images'/split/f'{i}.jpg'); _lbl(root/'annotations'/split/f'{i}.png', COCO_RAW)
        if converted: _lbl(root/'annotations'/split/f'{i}_labelTrainIds.png', COCO_WANT)
    return root

@pytest.fixture
def cs_tree(tmp_path): return make_cityscapes(tmp_path/'cityscapes')
@pytest.fixture
def ade_tree(tmp_path): return make_ade(tmp_path/'ade')
@pytest.fixture
def voc_tree(tmp_path): return make_voc(tmp_path/'voc')
@pytest.fixture
def coco_tree(tmp_path): return make_coco(tmp_path/'coco')

def first(ds, i=0, n=None):
    m = ds[i]['mask'].flatten().tolist(); return m[:n] if n else m

# ---------------------------------------------------------------- reading each layout
def test_cityscapes_train_ids(cs_tree):
    ds = cityscapes(cs_tree, 'val')
    assert len(ds) == 2 and ds.ids == sorted(CS.values()) and ds.tax.n == 19 and ds.label_tax.name == 'cityscapes19'
    assert first(ds, 1, len(CS_WANT)) == CS_WANT and ds[0]['image'].shape == (3, H, W)

def test_cityscapes_label_ids_through_the_official_table(tmp_path):
    ds = cityscapes(make_cityscapes(tmp_path, kind='labelIds'), 'val')
    assert ds.label_tax.name == 'cityscapes19_labelIds' and first(ds, 0, len(CS_WANT)) == CS_WANT
    assert [ds.tax.classes[t] for t in CS_WANT[:4]] == ['road', 'sidewalk', 'car', 'bicycle']
    both = cityscapes(make_cityscapes(tmp_path/'b', kind='both'), 'val')
    assert both.label_tax.name == 'cityscapes19'  # train ids are preferred when every image has them

def test_ade20k_zero_ignored_and_shifted(ade_tree):
    for root in (ade_tree, ade_tree/'ADEChallengeData2016'):  # the folder, or the one holding it
        ds = ade20k(root, 'val')
        assert ds.ids == list(ADE_IDS) and ds.tax.n == 150 and first(ds, 0, len(ADE_WANT)) == ADE_WANT
    assert ds.tax.classes[0] == 'wall' and ds.tax.classes[149] == 'flag' and ds.tax.classes[7] == 'bed'

def test_voc_palette_indices_and_sbd_aug(voc_tree):
    base = voc_tree/'VOCdevkit'/'VOC2012'
    assert Image.open(base/'SegmentationClass'/'2007_000032.png').mode == 'P'
    tr = voc(voc_tree, 'train')
    assert tr.ids == VOC_IDS['train'] and tr.tax.n == 21 and first(tr, 0, 5) == [0, 1, 15, 20, 255]
    assert tr.tax.palette[15] == [192, 128, 128]  # VOC's person colour
    aug = voc(base, 'train_aug')                  # VOC2012 itself as the root
    assert aug.ids == VOC_IDS['train'] + VOC_IDS['aug'] and first(aug, 2, 3) == [3, 0, 255]
    assert voc(voc_tree, 'val').ids == VOC_IDS['val']
    (base/'ImageSets/SegmentationAug/train_aug.txt').unlink()
    _text(voc_tree/'my_aug.txt', '\n'.join(VOC_IDS['aug']))  # an id-per-line list given explicitly
    assert voc(voc_tree, 'train_aug', aug_list=voc_tree/'my_aug.txt').ids == VOC_IDS['aug']

def test_coco_stuff_182_to_171(coco_tree):
    ds = coco_stuff(coco_tree, 'val')
    assert ds.tax.n == 171 and ds.label_tax.name == 'coco_stuff171_raw' and first(ds, 1, len(COCO_WANT)) == COCO_WANT
    names = [ds.tax.classes[k] for k in COCO_WANT[:-1]]
    assert names == ['person', 'fire hydrant', 'stop sign', 'giraffe', 'backpack', 'wine glass', 'toothbrush', 'banner', 'wood']

def test_coco_stuff_converted_files_read_as_they_are(tmp_path):
    root = make_coco(tmp_path, converted=True)
    for i in COCO_IDS: (root/'annotations/val2017'/f'{i}.png').unlink()
    ds = coco_stuff(root, 'val')
    assert ds.label_tax.name == 'coco_stuff171' and first(ds, 0, len(COCO_WANT)) == COCO_WANT

def test_taxonomies_by_name():
    assert [data_taxonomy(n).n for n in ('cityscapes', 'ade20k', 'voc', 'coco_stuff')] == [19, 150, 21, 171]
    for n in ('cityscapes', 'ade20k', 'voc', 'coco_stuff'):
        t = data_taxonomy(n)
        assert len(t.palette) == t.n and len(set(t.classes)) == t.n

def test_load_split_from_settings_keys(monkeypatch, cs_tree, ade_tree, voc_tree, coco_tree):
    for key, root in (('CITYSCAPES', cs_tree), ('ADE20K', ade_tree), ('VOC', voc_tree), ('COCO_STUFF', coco_tree)):
        monkeypatch.setenv(f'SEGKD_{key}_ROOT', str(root))
    ds = load_split('ade20k', 'val', (4, 6))
    assert ds[0]['mask'].shape == (4, 6) and not ds.cache and ds.transform is not None
    assert len(load_split('cityscapes', 'val')) == 2 and len(load_split('coco_stuff', 'val')) == 2
    assert load_split('voc', 'train').name == 'voc/train_aug' and len(load_split('voc', 'train')) == 4  # SBD present
    with pytest.raises(DataError, match="unknown split 'holdout' for ade20k"): load_split('ade20k', 'holdout')
    monkeypatch.setenv('SEGKD_COCO_STUFF_ROOT', '')
    with pytest.raises(DataError, match='set coco_stuff_root in settings.ini or SEGKD_COCO_STUFF_ROOT'): load_split('coco_stuff', 'val')

def test_named_splits_unchanged():
    tr, ho = load_split('samples', 'train'), load_split('samples', 'holdout')
    assert set(tr.ids).isdisjoint(ho.ids) and len(tr) + len(ho) == len(load_split('samples', 'all')) and tr.cache

# ---------------------------------------------------------------- EXIF orientation is applied
@pytest.mark.parametrize('orientation,k', [(3, 2), (6, -1), (8, 1)])  # np.rot90 turns: 180, clockwise, counter-clockwise
def test_exif_rotated_image_aligns_with_its_label(tmp_path, orientation, k):
    "The label is drawn on the upright scene; the file stores the scene turned back and tagged. They must align."
    rng = np.random.default_rng(orientation)
    upright = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    label = (upright[..., 0] > 127).astype(np.uint8)                    # class 1 where the red channel is bright
    stored = np.rot90(upright, k=-k).copy()                             # what a camera writes before the tag turns it
    exif = Image.Exif(); exif[0x0112] = orientation
    (tmp_path/'images').mkdir(); (tmp_path/'labels').mkdir()
    Image.fromarray(stored).save(tmp_path/'images'/'p.png', exif=exif); Image.fromarray(label).save(tmp_path/'labels'/'p.png')
    assert np.array_equal(read_image(tmp_path/'images'/'p.png'), upright)
    it = folder_pairs(tmp_path, camvid_taxonomy())[0]
    assert torch.equal(it['mask'], torch.from_numpy(label).long())
    assert torch.equal((it['image'][0] * 255).round().long() > 127, it['mask'] == 1)

def test_exif_rotation_mismatch_is_explained(tmp_path):
    exif = Image.Exif(); exif[0x0112] = 6
    (tmp_path/'images').mkdir(); (tmp_path/'labels').mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path/'images'/'p.png', exif=exif)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path/'labels'/'p.png')  # drawn on the stored, sideways pixels
    with pytest.raises(DataError, match=r"p.png.*image is 6x8 but label is 8x6 \(the image's EXIF orientation 6 was applied"):
        folder_pairs(tmp_path, camvid_taxonomy()).check()

# ---------------------------------------------------------------- unlabelled pools skip and report
def test_pool_skips_and_reports_corrupt_and_huge_files(tmp_path, caplog):
    for i in range(5): _img(tmp_path/f'p{i}.png', seed=i)
    (tmp_path/'p1.png').write_bytes(b'\x89PNG truncated'); _bomb_png(tmp_path/'p3.png')
    pool = PoolDataset(image_pool(tmp_path), size=(4, 4))
    seen = [i for b in DataLoader(pool, batch_size=2, collate_fn=collate_skip) if b is not None for i in b['id']]
    assert seen == ['p0', 'p2', 'p4'] and pool.n_bad == 2
    assert sorted(Path(p).name for p in pool.skipped) == ['p1.png', 'p3.png'] and 'too large' in pool.skipped[str(tmp_path/'p3.png')]
    assert pool.report().startswith('2 of 5 pool images skipped') and 'p3.png' in pool.report()
    assert 'p1.png' in caplog.text and 'p3.png' in caplog.text

# ---------------------------------------------------------------- class names, not counts
def test_check_same_classes():
    check_same_classes(camvid_taxonomy(), list(CAMVID_CLASSES))
    swapped = ['Building', 'Sky'] + CAMVID_CLASSES[2:]
    with pytest.raises(DataError, match="teacher vs data: class names differ \\(11 vs 11 classes\\); by id 0: 'Building' vs 'Sky'"):
        check_same_classes(swapped, camvid_taxonomy(), 'teacher vs data')
    with pytest.raises(DataError, match=r"only in the first: \['car'\]; only in the second: \['Car'\]"):
        check_same_classes([c if c != 'Car' else 'car' for c in CAMVID_CLASSES], CAMVID_CLASSES)

# ---------------------------------------------------------------- every bad input: one row each
SRC, DST = Taxonomy('s', ['a', 'b', 'c']), Taxonomy('t', ['x', 'y'])

def _tax(t, name, text, enc='utf-8'): _text(t/name, text, enc)
def _map(t, name, text, enc='utf-8'): _text(t/name, text, enc)
def _pairs(t, names=('a', 'b')):
    for i, n in enumerate(names): _img(t/'images'/f'{n}.png', seed=i); _lbl(t/'labels'/f'{n}.png', [1, 2])
def _env(key, value, fn):
    old = os.environ.get(key); os.environ[key] = value
    try: return fn()
    finally:
        if old is None: del os.environ[key]
        else: os.environ[key] = old
def _cs(t, drop=None, extra=None):
    make_cityscapes(t)
    if drop: (t/'gtFine/val'/drop.split('_')[0]/f'{drop}_gtFine_labelTrainIds.png').unlink()
    if extra: _lbl(t/'gtFine/val/aachen'/f'{extra}_gtFine_labelTrainIds.png', [0])
def _voc_base(t): return t/'VOCdevkit'/'VOC2012'
LOAD = lambda name: (lambda t: Taxonomy.load(t/name))
READ = lambda name: (lambda t: read_mapping(t/name, SRC, DST))
CHECK = lambda t: folder_pairs(t, camvid_taxonomy()).check()

BAD = [  # (case, write the bad file(s) into tmp_path, the call, substrings the error must contain)
    # taxonomy files
    ('tax_classes_string', lambda t: _tax(t, 't.json', '{"classes": "road"}'), LOAD('t.json'), ['t.json', "classes must be a list, got str 'road'"]),
    ('tax_class_not_a_name', lambda t: _tax(t, 't.yaml', 'classes: [road, 7]'), LOAD('t.yaml'), ['t.yaml', 'class names must be non-empty strings', '(1, 7)']),
    ('tax_duplicate_class', lambda t: _tax(t, 't.yaml', 'classes: [a, a]'), LOAD('t.yaml'), ['t.yaml', "duplicate class names ['a']"]),
    ('tax_palette_two_values', lambda t: _tax(t, 't.json', '{"classes": ["a", "b"], "palette": [[0, 0, 0], [1, 2]]}'), LOAD('t.json'), ['t.json', 'palette[1] has 2 values, needs 3']),
    ('tax_palette_out_of_range', lambda t: _tax(t, 't.json', '{"classes": ["a"], "palette": [[0, 0, 300]]}'), LOAD('t.json'), ['t.json', 'palette[0]: 300 is outside 0..255']),
    ('tax_palette_float', lambda t: _tax(t, 't.json', '{"classes": ["a"], "palette": [[0.5, 0, 0]]}'), LOAD('t.json'), ['palette[0]: 0.5 is not an integer']),
    ('tax_palette_name', lambda t: _tax(t, 't.yaml', 'classes: [a]\npalette: [red]'), LOAD('t.yaml'), ["palette[0] must be a list, got str 'red'"]),
    ('tax_palette_count', lambda t: _tax(t, 't.json', '{"classes": ["a", "b"], "palette": [[0, 0, 0]]}'), LOAD('t.json'), ['palette has 1 colours for 2 classes']),
    ('tax_void_out_of_range', lambda t: _tax(t, 't.yaml', 'classes: [a]\nvoid_ids: [256]'), LOAD('t.yaml'), ['t.yaml', 'void_ids: 256 is outside 0..255']),
    ('tax_void_not_a_list', lambda t: _tax(t, 't.yaml', 'classes: [a]\nvoid_ids: 11'), LOAD('t.yaml'), ['void_ids must be a list, got int']),
    ('tax_raw_id_out_of_range', lambda t: _tax(t, 't.json', '{"classes": ["a"], "raw_to_id": {"300": 0}}'), LOAD('t.json'), ['raw_to_id key: 300 is outside 0..255']),
    ('tax_raw_target_out_of_range', lambda t: _tax(t, 't.json', '{"classes": ["a", "b"], "raw_to_id": {"3": 5}}'), LOAD('t.json'), ['raw_to_id targets outside 0..1']),
    ('tax_raw_id_json_duplicate_key', lambda t: _tax(t, 't.json', '{"classes": ["a", "b"], "raw_to_id": {"3": 0, "3": 1}}'), LOAD('t.json'), ['t.json', "duplicate keys ['3']"]),
    ('tax_raw_id_yaml_duplicate_key', lambda t: _tax(t, 't.yaml', 'classes: [a, b]\nraw_to_id:\n  3: 0\n  3: 1\n'), LOAD('t.yaml'), ['t.yaml', 'duplicate key 3']),
    ('tax_raw_id_as_int_and_string', lambda t: _tax(t, 't.yaml', "classes: [a, b]\nraw_to_id:\n  3: 0\n  '3': 1\n"), LOAD('t.yaml'), ['raw_to_id gives raw id 3 twice']),
    ('tax_raw_id_also_void', lambda t: _tax(t, 't.yaml', 'classes: [a]\nraw_to_id: {3: 0}\nvoid_ids: [3]'), LOAD('t.yaml'), ['raw ids [3] are both mapped and void']),
    ('tax_yaml_syntax', lambda t: _tax(t, 't.yaml', 'classes: [a, b\n'), LOAD('t.yaml'), ['t.yaml', 'cannot parse taxonomy', 'line']),
    ('tax_json_syntax', lambda t: _tax(t, 't.json', '{"classes": ["a",]}'), LOAD('t.json'), ['t.json', 'cannot parse taxonomy']),
    ('tax_not_utf8', lambda t: _tax(t, 't.yaml', 'classes: [café]', 'latin-1'), LOAD('t.yaml'), ['t.yaml', 'not UTF-8 text (byte 0xe9']),
    ('tax_unknown_key', lambda t: _tax(t, 't.yaml', 'classes: [a]\ncolors: []'), LOAD('t.yaml'), ["unknown taxonomy keys ['colors']"]),
    ('tax_missing_file', lambda t: None, lambda t: data_taxonomy(str(t/'none.json')), ['none.json not found']),
    # mapping files (source a, b, c -> target x, y)
    ('map_csv_repeated_class', lambda t: _map(t, 'm.csv', '0,a,x\n1,a,y\n'), READ('m.csv'), ['m.csv:2', "class 'a' was already given on line 1"]),
    ('map_csv_repeated_id', lambda t: _map(t, 'm.csv', '0,a,x\n0,b,y\n'), READ('m.csv'), ['m.csv:2', 'id 0 was already given on line 1']),
    ('map_csv_empty_row', lambda t: _map(t, 'm.csv', '0,a,x\n\n1,b,y\n'), READ('m.csv'), ['m.csv:2: empty row']),
    ('map_csv_blank_cells', lambda t: _map(t, 'm.csv', '0,a,x\n , ,\n'), READ('m.csv'), ['m.csv:2: empty row']),
    ('map_csv_empty_file', lambda t: _map(t, 'm.csv', '\n\n'), READ('m.csv'), ['m.csv', 'empty mapping file']),
    ('map_csv_all_void', lambda t: _map(t, 'm.csv', '0,a\n1,b\n2,c\n'), READ('m.csv'), ['m.csv', 'maps no class: every pixel would become void']),
    ('map_csv_short_row', lambda t: _map(t, 'm.csv', '0,a,x\n7\n'), READ('m.csv'), ['m.csv:2', 'at least id and name']),
    ('map_csv_id_not_int', lambda t: _map(t, 'm.csv', 'id,name,target\n0,a,x\n'), READ('m.csv'), ['m.csv:1', "id 'id' is not an integer"]),
    ('map_csv_unknown_names', lambda t: _map(t, 'm.csv', '0,a,x\n1,q,z\n'), READ('m.csv'), ['m.csv', "source classes ['q']", "target classes ['z']"]),
    ('map_csv_not_utf8', lambda t: _map(t, 'm.csv', '0,a,x\n1,b,café\n', 'latin-1'), READ('m.csv'), ['m.csv', 'mapping file is not UTF-8']),
    ('map_yaml_syntax', lambda t: _map(t, 'm.yaml', 'links: {a: [x\n'), READ('m.yaml'), ['m.yaml', 'cannot parse mapping file']),
    ('map_yaml_duplicate_key', lambda t: _map(t, 'm.yaml', 'a: [x]\na: [y]\n'), READ('m.yaml'), ['m.yaml', "duplicate key 'a'"]),
    ('map_yaml_empty_entry', lambda t: _map(t, 'm.yaml', 'a:\nb: [x]\n'), READ('m.yaml'), ['m.yaml', "'a' has an empty entry; write [] to map it to void"]),
    ('map_yaml_no_links', lambda t: _map(t, 'm.yaml', 'source: s\ntarget: t\nlinks: {}\n'), READ('m.yaml'), ['m.yaml', 'empty mapping file']),
    ('map_yaml_list', lambda t: _map(t, 'm.yaml', '- a\n- b\n'), READ('m.yaml'), ['m.yaml', 'got list']),
    ('map_yaml_boolean_name', lambda t: _map(t, 'm.yaml', 'on: [x]\n'), READ('m.yaml'), ['m.yaml', 'source class True is not a name']),
    ('map_yaml_unknown_key', lambda t: _map(t, 'm.yaml', 'links: {a: [x]}\nsrc: s\n'), READ('m.yaml'), ["unknown keys ['src'] beside 'links'"]),
    ('map_json_duplicate_key', lambda t: _map(t, 'm.json', '{"a": ["x"], "a": ["y"]}'), READ('m.json'), ['m.json', "duplicate keys ['a']"]),
    ('map_unknown_format', lambda t: _map(t, 'm.txt', 'a: [x]'), READ('m.txt'), ['m.txt', "unknown mapping format '.txt'"]),
    ('map_missing_file', lambda t: None, READ('none.yaml'), ['mapping file not found', 'none.yaml']),
    # folder datasets, images and labels
    ('folder_two_images_one_stem', lambda t: (_pairs(t), _img(t/'images'/'a.jpg')), CHECK, ['images', "['a.jpg and a.png']"]),
    ('folder_two_labels_one_stem', lambda t: (_pairs(t), _lbl(t/'labels'/'a.PNG', [0])), CHECK, ['labels', "['a.PNG and a.png']"]),
    ('folder_missing_label', lambda t: (_pairs(t), (t/'labels'/'b.png').unlink()), CHECK, ["1 images without a label (['b'])"]),
    ('image_corrupt', lambda t: (_pairs(t), (t/'images'/'b.png').write_bytes(b'\x89PNG garbage')), CHECK, ['b.png: cannot read image']),
    ('image_decompression_bomb', lambda t: (_pairs(t), _bomb_png(t/'images'/'b.png')), CHECK, ['b.png: image is too large to decode safely', 'MAX_IMAGE_PIXELS']),
    ('label_decompression_bomb', lambda t: (_pairs(t), _bomb_png(t/'labels'/'a.png')), CHECK, ['a.png: label is too large to decode safely']),
    ('label_empty_file', lambda t: (_pairs(t), (t/'labels'/'a.png').write_bytes(b'')), CHECK, ['a.png: cannot read label']),
    ('label_rgb', lambda t: (_pairs(t), Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(t/'labels'/'a.png')), CHECK, ['a.png: label must be single-channel, got mode RGB']),
    ('label_unknown_id', lambda t: (_pairs(t), _lbl(t/'labels'/'b.png', [40])), CHECK, ['b.png: label ids [40] are not in taxonomy']),
    ('label_size_mismatch', lambda t: (_pairs(t), _lbl(t/'labels'/'b.png', [1], h=3)), CHECK, ['b.png', 'image is 8x6 but label is 8x3']),
    ('list_file_not_utf8', lambda t: (_pairs(t), _text(t/'l.txt', 'images/a.png labels/a.png # é\n', 'latin-1')), lambda t: list_file(t/'l.txt', camvid_taxonomy()), ['l.txt', 'list file is not UTF-8']),
    ('list_file_repeated_image', lambda t: (_pairs(t), _text(t/'l.txt', 'images/a.png labels/a.png\nimages/a.png labels/a.png\n')), lambda t: list_file(t/'l.txt', camvid_taxonomy()), ['l.txt:2', 'already listed on line 1']),
    # published layouts
    ('cityscapes_missing_label', lambda t: _cs(t, drop=CS['bonn']), lambda t: cityscapes(t, 'val'), ['1 label files missing', 'gtFine/val/bonn/bonn_000001_000019_gtFine_labelTrainIds.png', "nor a complete set of ['labelIds']"]),
    ('cityscapes_label_without_image', lambda t: _cs(t, extra='aachen_000099_000019'), lambda t: cityscapes(t, 'val'), ['1 label files without an image', 'aachen_000099_000019_gtFine_labelTrainIds.png']),
    ('cityscapes_no_split_folder', lambda t: make_cityscapes(t), lambda t: cityscapes(t, 'train'), ['leftImg8bit/train: not found']),
    ('cityscapes_unknown_label_id', lambda t: (make_cityscapes(t, kind='labelIds'), _lbl(t/'gtFine/val/bonn'/f"{CS['bonn']}_gtFine_labelIds.png", [34])), lambda t: cityscapes(t, 'val').check(), ['bonn_000001_000019_gtFine_labelIds.png: label ids [34]']),
    ('ade_missing_label', lambda t: (make_ade(t), (t/'ADEChallengeData2016/annotations/validation/ADE_val_00000002.png').unlink()), lambda t: ade20k(t, 'val'), ['1 label files missing', 'annotations/validation/ADE_val_00000002.png']),
    ('ade_raw_id_151', lambda t: (make_ade(t), _lbl(t/'ADEChallengeData2016/annotations/validation/ADE_val_00000001.png', [151])), lambda t: ade20k(t, 'val')[0], ['ADE_val_00000001.png: label ids [151]']),
    ('ade_unknown_split', lambda t: make_ade(t), lambda t: ade20k(t, 'test'), ["unknown split 'test' for ade20k"]),
    ('ade_not_a_tree', lambda t: None, lambda t: ade20k(t, 'val'), ['images/validation: not found']),
    ('voc_missing_image', lambda t: (make_voc(t), (_voc_base(t)/'JPEGImages'/'2007_000039.jpg').unlink()), lambda t: voc(t, 'train'), ['1 listed images missing', 'JPEGImages/2007_000039.jpg']),
    ('voc_missing_label', lambda t: (make_voc(t), (_voc_base(t)/'SegmentationClass'/'2007_000033.png').unlink()), lambda t: voc(t, 'val'), ['1 label files missing', 'SegmentationClass/2007_000033.png']),
    ('voc_aug_shares_val_ids', lambda t: (make_voc(t), _text(_voc_base(t)/'ImageSets/Segmentation/val.txt', '2008_000003\n')), lambda t: voc(t, 'train_aug'), ['train_aug.txt', '1 ids are also in', 'val.txt', '2008_000003']),
    ('voc_no_aug_list', lambda t: make_voc(t, aug=False), lambda t: voc(t, 'train_aug'), ['no train_aug list']),
    ('voc_list_repeats_id', lambda t: (make_voc(t), _text(_voc_base(t)/'ImageSets/Segmentation/train.txt', '2007_000032\n2007_000032\n')), lambda t: voc(t, 'train'), ['train.txt:2', "id '2007_000032' repeats line 1"]),
    ('voc_rgb_labels', lambda t: (make_voc(t), Image.open(_voc_base(t)/'SegmentationClass/2007_000033.png').convert('RGB').save(_voc_base(t)/'SegmentationClass/2007_000033.png')), lambda t: voc(t, 'val').check(), ['2007_000033.png: label must be single-channel']),
    ('voc_not_a_tree', lambda t: None, lambda t: voc(t, 'val'), ['no VOC2012 folder']),
    ('coco_unused_id', lambda t: (make_coco(t), _lbl(t/'annotations/val2017/000000000139.png', [11, 0])), lambda t: coco_stuff(t, 'val')[0], ['000000000139.png: label ids [11]']),
    ('coco_missing_label', lambda t: (make_coco(t), (t/'annotations/val2017/000000000285.png').unlink()), lambda t: coco_stuff(t, 'val'), ['1 label files missing', 'annotations/val2017/000000000285.png']),
    ('coco_label_without_image', lambda t: (make_coco(t), _lbl(t/'annotations/val2017/000000000999.png', [0])), lambda t: coco_stuff(t, 'val'), ['1 label files without an image', '000000000999.png']),
    ('dataset_root_not_set', lambda t: None, lambda t: _env('SEGKD_VOC_ROOT', '', lambda: data_root('voc')), ["dataset 'voc': no folder is set (set voc_root in settings.ini"]),
    ('dataset_root_missing', lambda t: None, lambda t: _env('SEGKD_ADE20K_ROOT', str(t/'nowhere'), lambda: load_split('ade20k', 'val')), ['nowhere not found (set ade20k_root']),
    # a checkpoint's classes against a dataset's
    ('classes_renamed_same_count', lambda t: None, lambda t: check_same_classes(['a', 'b', 'x'], SRC, 'ckpt vs data'), ["ckpt vs data: class names differ (3 vs 3 classes); only in the first: ['x']; only in the second: ['c']"]),
    ('classes_not_a_list', lambda t: None, lambda t: check_same_classes('abc', SRC), ["must be a list, got str 'abc'"]),
]

def test_bad_table_ids_unique(): assert len({c for c, *_ in BAD}) == len(BAD)

@pytest.mark.parametrize('case,write,call,want', BAD, ids=[c for c, *_ in BAD])
def test_bad_input(tmp_path, case, write, call, want):
    write(tmp_path)
    with pytest.raises(DataError) as e: call(tmp_path)
    msg = str(e.value)
    for w in want: assert w in msg, f"{case}: {w!r} not in {msg!r}"
    assert '\n' not in msg.split(':')[0]  # one line leads the message
