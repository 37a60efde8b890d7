"""Every state of every lesson widget renders once (outside a kernel, a failure in a widget's callback raises here)."""
import json
from pathlib import Path
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
import torch, pytest

ROOT = Path(__file__).resolve().parents[1]

def test_gssm_slider_every_run_and_step():
    from segkd_nb.gskd import gssm_slider
    demo = json.loads((ROOT/'results'/'gskd_demo.json').read_text())
    w = gssm_slider(demo); dd, sl = w.children[0].children
    for run in dd.options:
        dd.value = run  # switching runs (e.g. to 'KD+GSKD (head)', whose steps differ) must not break the figure
        assert list(sl.options) == demo['runs'][run]['steps'] and sl.value == sl.options[0]
        for s in sl.options: sl.value = s
        plt.close('all')

def test_wdpd_widget_every_schedule_and_progress():
    from segkd_nb.dfss import wdpd_widget, SCHEDULES
    w = wdpd_widget(torch.linspace(0, 1, 12))
    for sch in SCHEDULES:
        for p in (0.0, 0.5, 1.0): w.f(progress=p, schedule=sch); plt.close('all')

def test_trajectory_slider_every_step():
    from segkd_nb.l2i import trajectory_slider
    traj = {'x_t': torch.rand(4, 2, 3, 8, 8), 'x0_hat': torch.rand(4, 2, 3, 8, 8)}
    w = trajectory_slider(traj)
    for s in range(4): w.f(step=s); plt.close('all')

def test_unify_browser_figure_follows_the_slider(tmp_path):
    from segkd_nb.data import TaxonomyMapping, camvid_taxonomy, idd_lite_taxonomy, CAMVID_TO_IDD
    from segkd_nb.unify import write_toy_scenes, paired_dirs, write_pseudo_labels, PaletteTeacher, unify_browser
    root = write_toy_scenes(tmp_path/'toy', n=4); cv, idd = camvid_taxonomy(), idd_lite_taxonomy()
    ds = paired_dirs(root/'images', root/'labels', idd)
    write_pseudo_labels(PaletteTeacher(cv), ds, TaxonomyMapping(cv, idd, CAMVID_TO_IDD), tmp_path/'pl', flip=False, scales=(1,), progress=False)
    b = unify_browser(ds, tmp_path/'pl', cv, fine=root/'fine')
    for v in range(len(ds)):
        b.children[0].value = v
        assert b.draw(b.children[0].value)[0].figure._suptitle.get_text() == ds.ids[v]
        plt.close('all')
