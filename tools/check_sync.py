"""Fail when the exported package or the cleaned notebooks differ from what is committed.
Runs nbdev-export and nbdev-clean on a temporary copy, so the working tree is never modified."""
import shutil, subprocess, sys, tempfile, filecmp
from pathlib import Path
root = Path(__file__).resolve().parents[1]
bin_ = Path(sys.executable).parent
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    for p in ('nbs', 'segkd_nb'): shutil.copytree(root/p, d/p, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints'))
    shutil.copy(root/'pyproject.toml', d/'pyproject.toml')
    for cmd in ('nbdev-export', 'nbdev-clean'):
        r = subprocess.run([str(bin_/cmd)], cwd=d, capture_output=True, text=True)
        if r.returncode: sys.exit(f"{cmd} failed:\n{r.stdout}\n{r.stderr}")
    bad = []
    for sub in ('nbs', 'segkd_nb'):
        for f in sorted((d/sub).rglob('*')):
            if f.is_dir() or '__pycache__' in f.parts: continue
            o = root/f.relative_to(d)
            if not o.exists() or not filecmp.cmp(f, o, shallow=False): bad.append(str(f.relative_to(d)))
        for f in sorted((root/sub).rglob('*.py' if sub == 'segkd_nb' else '*.ipynb')):
            if '__pycache__' in f.parts or '.ipynb_checkpoints' in f.parts: continue
            if not (d/f.relative_to(root)).exists(): bad.append(f"{f.relative_to(root)} (not produced by nbdev-export)")
    if bad:
        sys.exit("Out of sync with the notebooks (run `nbdev-export && nbdev-clean` and commit):\n  " + "\n  ".join(bad))
print("nbdev-export and nbdev-clean: in sync")
