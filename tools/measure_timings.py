"""Measure the README's timings on a fresh clone: `make install`, then `make demo`, then `make test`, each timed.

Writes results/timings.json (install_min, demo_min, test_min, each command's exit code, the clone's commit, the load
average before each step) and the logs under the clone. A step that fails is recorded as failed, never as a time.
Usage: .venv/bin/python tools/measure_timings.py [--dest DIR]   (default: a sibling folder, so ../shared/real resolves as here; about 30 minutes on 2 cores)"""
import argparse, os, shutil, subprocess, sys, time
from pathlib import Path
root = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(root))
from segkd_nb.config import save_result, git_commit

def timed(target, clone, log):
    "Run `make TARGET` in the clone, teeing into LOG; its minutes, exit code and the 1-minute load average before it."
    load = os.getloadavg()[0]; t0 = time.time()
    with open(log, 'w') as f: rc = subprocess.run(['make', target], cwd=clone, stdout=f, stderr=subprocess.STDOUT).returncode
    minutes = (time.time() - t0) / 60
    print(f"make {target}: {minutes:.1f} min, exit {rc} (load before: {load:.2f}; log {log})", flush=True)
    return {f'{target}_min': round(minutes, 2), f'{target}_rc': rc, f'{target}_load_before': round(load, 2)}

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--dest', default=str(root.parent/'segkd-timing'), help='where to clone (removed first)')
    a = ap.parse_args(); dest = Path(a.dest)
    if dest.exists(): shutil.rmtree(dest)
    subprocess.run(['git', 'clone', '-q', str(root), str(dest)], check=True)
    res = {'clone_of': git_commit(root), 'git': git_commit(dest), 'cpus': os.cpu_count()}
    for target in ('install', 'demo', 'test'): res.update(timed(target, dest, dest/f'{target}.log'))
    ok = all(res[f'{t}_rc'] == 0 for t in ('install', 'demo', 'test'))
    print(save_result(res, 'timings') if ok else f"not recorded: a step failed ({res})")
    sys.exit(0 if ok else 1)

if __name__ == '__main__': main()
