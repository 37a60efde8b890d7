"""Re-execute the lesson notebooks top to bottom on the CPU and store their outputs (`make lessons`).

Slow cells stay off (they do nothing unless SEGKD_RUN_EXPERIMENTS=1); figures and tables come from the committed results.
Usage: python tools/run_lessons.py [NAME ...]   (default: every notebook but index, which `make readme` runs)"""
import os, subprocess, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient
root = Path(__file__).resolve().parents[1]
names = sys.argv[1:] or [p.stem for p in sorted((root/'nbs').glob('*.ipynb')) if p.stem != 'index']
os.environ.pop('SEGKD_RUN_EXPERIMENTS', None); os.environ.setdefault('OMP_NUM_THREADS', '2'); os.environ['HF_HUB_OFFLINE'] = '1'
for n in names:
    p = root/'nbs'/f'{n}.ipynb'; t0 = time.time()
    nb = nbformat.read(p, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name='python3', resources={'metadata': {'path': str(p.parent)}}).execute()
    nbformat.write(nb, p)
    subprocess.run([str(Path(sys.executable).parent/'nbdev-clean'), '--fname', str(p)], check=True, cwd=root)
    print(f"{n}: {time.time() - t0:.0f} s, {p.stat().st_size // 1000} KB", flush=True)
