"""The FiftyOne App as a reviewer sees it, in a real (headless) browser: `segkd app` serves a reviewed export, and Debian's
chromium renders the dataset page. Marked `browser`: skipped with a message where chromium is absent
(`apt-get install chromium`). Set SEGKD_SCREENSHOT_OUT=path.png to keep the screenshot."""
import os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path
import numpy as np, pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
pytestmark = pytest.mark.browser

def _free_port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close(); return p

def _wait(url, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=2) as r:
                if r.status < 500: return True
        except Exception: time.sleep(1)
    return False

@pytest.mark.skipif(CHROMIUM is None, reason='Debian chromium not installed (apt-get install chromium); browser test skipped')
def test_app_renders_the_reviewed_dataset(fo_db, tmp_path):
    import torch
    from segkd_nb.datasets import load_split
    from segkd_nb.models import build_model
    from segkd_nb.fo import export_segmentation, prediction_masks, add_review
    ds = load_split('samples', 'val', (96, 128)).subset(range(6))
    torch.manual_seed(0); models = {'teacher': build_model('tiny_s', ds.tax.n).eval(), 'student': build_model('tiny_s', ds.tax.n).eval()}
    d = export_segmentation('segkd-browser-test', ds, {f'pred_{n}': prediction_masks(m, ds) for n, m in models.items()}, tmp_path/'fo', ds.tax, overwrite=True)
    add_review(d, tmp_path/'fo')
    assert set(d.app_config.active_fields.paths) == {'gt', 'errors_pred_teacher', 'errors_pred_student'}
    port = _free_port(); url = f'http://127.0.0.1:{port}/datasets/segkd-browser-test'
    app = subprocess.Popen([str(Path(sys.executable).parent/'segkd'), 'app', '--name', 'segkd-browser-test', '--port', str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=os.environ.copy())
    try:
        assert _wait(f'http://127.0.0.1:{port}/'), 'the App never answered'
        shot = Path(os.environ.get('SEGKD_SCREENSHOT_OUT') or tmp_path/'app.png'); shot.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                            '--disable-component-update', '--disable-sync', f'--user-data-dir={tempfile.mkdtemp()}', '--virtual-time-budget=25000',
                            '--window-size=1400,900', f'--screenshot={shot}', url], capture_output=True, text=True, timeout=180)
        assert shot.exists(), r.stderr[-2000:]
        px = np.asarray(Image.open(shot).convert('RGB')).astype(float)
        assert px.std() > 10, 'the screenshot is blank'
        assert app.poll() is None, 'segkd app exited'
    finally:
        app.send_signal(signal.SIGINT)
        try: app.wait(timeout=30)
        except subprocess.TimeoutExpired: app.kill(); app.wait()
