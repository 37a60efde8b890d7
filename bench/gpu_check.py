"""GPU check of the Cityscapes recipe on synthetic data: DeepLabV3-R101 teacher -> DeepLabV3-R18 student, KD and CWD, at
512x1024 crops (the CIRKD benchmark's), measured side by side in one run.

Records, per loss: student images/s, peak GPU memory, and a KD step's time over (a student step + a teacher forward), which
says what distillation itself costs; and the bf16 / fp32 speed-up of a student step. On the CPU it runs at a tiny size
(for the tests): the numbers then only check the mechanics.

    python bench/gpu_check.py --out bench_gpu_check                      # on a CUDA machine (about 200 iterations per row)
    python bench/gpu_check.py --tiny --out /tmp/gpu_check.json            # CPU smoke run
"""
import argparse, os, sys, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch
from segkd_nb.config import get_device, get_dtype, autocast, save_result
from segkd_nb.models import build_model
from segkd_nb.kd import build_terms
from segkd_nb.train import Trainer, TrainConfig

def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()

def timed(fn, iters:int, warmup:int, dev)->float:
    "Seconds per call of `fn`, after `warmup` calls."
    for _ in range(warmup): fn()
    sync(dev); t0 = time.perf_counter()
    for _ in range(iters): fn()
    sync(dev); return (time.perf_counter() - t0) / iters

def row(teacher, student_arch, spec, batch, size, precision, iters, warmup, dev, K):
    "One measured configuration: seconds per step, images/s and peak memory."
    torch.manual_seed(0); st = build_model(student_arch, K)
    cfg = TrainConfig(steps=10**6, batch_size=batch, lr=0.01, optimizer='sgd', device=str(dev), precision=precision, progress=False)
    tr = Trainer(st, build_terms(spec, st, teacher, ce=1.0), cfg, teacher=teacher if spec else None)
    b = {'image': torch.rand(batch, 3, *size, device=dev), 'mask': torch.randint(0, K, (batch, *size), device=dev)}
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    s = timed(lambda: tr.train_step(b), iters, warmup, dev)
    mem = torch.cuda.max_memory_allocated() / 2**20 if dev.type == 'cuda' else None
    return {'s_per_step': s, 'images_per_s': batch / s, 'peak_mb': mem}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tiny', action='store_true', help='CPU smoke size: 64x128 crops, batch 2, R18 -> R18, 2 iterations')
    ap.add_argument('--iters', type=int, default=200); ap.add_argument('--warmup', type=int, default=10)
    ap.add_argument('--batch', type=int, default=8); ap.add_argument('--size', default='512x1024')
    ap.add_argument('--out', help='results name or .json path')
    a = ap.parse_args(argv)
    dev = get_device('auto'); K = 19
    size = (64, 128) if a.tiny else tuple(int(v) for v in a.size.split('x'))
    batch, iters, warmup = (2, 2, 1) if a.tiny else (a.batch, a.iters, a.warmup)
    t_arch = 'deeplabv3_r18' if a.tiny else 'deeplabv3_r101'
    prec = 'bf16' if dev.type == 'cuda' else 'fp32'
    torch.manual_seed(1); teacher = build_model(t_arch, K).to(dev).eval()
    x = torch.rand(batch, 3, *size, device=dev)
    def t_forward():
        with torch.inference_mode(), autocast(dev, get_dtype(prec, dev)): teacher(x)
    t_fwd = timed(t_forward, iters, warmup, dev)
    rows = {name: row(teacher, 'deeplabv3_r18', spec, batch, size, prec, iters, warmup, dev, K) for name, spec in (('student', ''), ('kd', 'kd'), ('cwd', 'cwd'))}
    fp32 = row(teacher, 'deeplabv3_r18', '', batch, size, 'fp32', iters, warmup, dev, K) if dev.type == 'cuda' else rows['student']
    res = {'device': torch.cuda.get_device_name(0) if dev.type == 'cuda' else 'cpu', 'torch': torch.__version__, 'size': list(size), 'batch': batch,
           'iters': iters, 'teacher': t_arch, 'student': 'deeplabv3_r18', 'precision': prec, 'teacher_forward_s': t_fwd, 'rows': rows,
           'bf16_over_fp32_speedup': fp32['s_per_step'] / rows['student']['s_per_step'] if dev.type == 'cuda' else None,
           'kd_step_over_student_plus_teacher': {k: rows[k]['s_per_step'] / (rows['student']['s_per_step'] + t_fwd) for k in ('kd', 'cwd')}}
    for k, r in rows.items(): print(f"{k:8s} {r['images_per_s']:8.1f} images/s  {r['s_per_step']*1000:8.1f} ms/step  peak {r['peak_mb']} MB")
    print(f"teacher forward {t_fwd*1000:.1f} ms; KD step / (student step + teacher forward): {res['kd_step_over_student_plus_teacher']}; bf16 speed-up {res['bf16_over_fp32_speedup']}")
    if a.out: save_result(res, a.out)
    return res

if __name__ == '__main__': main()
