"""Real data: a small model trained on CamVid at reduced resolution beats the location prior and reaches 25 mIoU."""
import json
import pytest
from segkd_nb.config import load_settings

pytestmark = pytest.mark.data

@pytest.fixture(scope='module')
def camvid():
    root = load_settings().path('camvid_root')
    if root is None or not (root/'train').is_dir(): pytest.skip(f"CamVid not found at {root} (set camvid_root in settings.ini); data tests skipped")
    return root

def test_camvid_small_model_beats_location_prior(camvid, tmp_path):
    from segkd_nb.runs import camvid_check
    r = camvid_check(tmp_path/'camvid_tiny')
    print(f"\nCamVid val at {r['size']}: location prior {100*r['prior_miou']:.1f} mIoU; {r['arch']} ({r['steps']} steps, {r['wall_s']:.0f} s) {100*r['miou']:.1f} mIoU")
    print(json.dumps({k: None if v is None else round(v, 3) for k, v in r['per_class_iou'].items()}))
    assert 0.10 < r['prior_miou'] < 0.25  # the CamVid README's ~17
    assert r['miou'] > r['prior_miou'] and r['miou'] >= 0.25
