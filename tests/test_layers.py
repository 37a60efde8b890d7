"""The architecture, checked: every module imports only modules of lower layers, in the declared order; every notebook
imports only modules exported by lower-numbered notebooks; nothing imports by a name in a string; lessons stay readable."""
import ast, json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/'segkd_nb'
# The declared order, bottom to top: config -> data (+ synth, named datasets) -> models -> metrics -> train -> kd (registry,
# baseline terms) -> methods -> fiftyone -> runs and experiments -> cli. A module may import only modules before it.
ORDER = ['config', 'data', 'synth', 'datasets', 'backbones', 'models', 'metrics', 'train', 'kd', 'baselines',
         'gskd', 'dfss', 'l2i', 'd3s2', 'unify', 'fo', 'runs',
         'experiments.exp_gskd', 'experiments.exp_dfss', 'experiments.exp_d3s2', 'experiments.exp_unify', 'experiments.demo', 'cli']
METHODS = {'gskd', 'dfss', 'l2i', 'd3s2', 'unify'}
UPPER = {'fo', 'runs', 'cli'}

def modules():
    "name -> path of every module of the package (but the generated index)."
    out = {}
    for p in PKG.rglob('*.py'):
        if p.name in ('__init__.py', '_modidx.py'): continue
        out['.'.join(p.relative_to(PKG).with_suffix('').parts)] = p
    return out

def imported(tree:ast.AST, here:str)->set:
    "segkd_nb modules a module (or a cell) imports, anywhere in it (function bodies too)."
    pkg = here.rsplit('.', 1)[0] if '.' in here else ''
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            if n.level:  # relative: from .x import y / from . import x
                base = pkg.split('.')[:len(pkg.split('.')) - (n.level - 1)] if pkg else []
                mod = '.'.join([*filter(None, base), *([n.module] if n.module else [])])
            elif n.module and (n.module == 'segkd_nb' or n.module.startswith('segkd_nb.')): mod = n.module[len('segkd_nb.'):] if n.module != 'segkd_nb' else ''
            else: continue
            if mod and mod != 'experiments': out.add(mod)
            else: out |= {f'{mod}.{a.name}'.strip('.') for a in n.names}
        elif isinstance(n, ast.Import):
            out |= {a.name[len('segkd_nb.'):] for a in n.names if a.name.startswith('segkd_nb.')}
    return {m for m in out if m and m != '_modidx'}

def test_every_module_is_placed():
    assert set(modules()) == set(ORDER), f"modules not in the declared order: {set(modules()) ^ set(ORDER)}"

@pytest.mark.parametrize('name', ORDER)
def test_module_imports_only_lower_layers(name):
    path = modules()[name]
    deps = imported(ast.parse(path.read_text()), name)
    unknown = deps - set(ORDER)
    assert not unknown, f"{name} imports unknown modules {unknown}"
    up = [d for d in deps if ORDER.index(d) >= ORDER.index(name)]
    assert not up, f"segkd_nb/{path.relative_to(PKG)} imports {up}, which are not below it in the layer order"
    if name in METHODS: assert not deps & UPPER and not any(d.startswith('experiments') for d in deps), f"method module {name} imports {deps & UPPER}"

def test_no_import_by_a_name_in_a_string():
    for name, path in modules().items():
        src = path.read_text()
        assert 'import_module' not in src and '__import__(' not in src, f"{path} imports a module by a name in a string"

def test_the_checker_can_fail():
    "A module that imports upwards is caught (the checker is not vacuous)."
    tree = ast.parse("from .runs import run_training\nimport segkd_nb.cli\ndef f():\n    from segkd_nb.fo import export_pool\n")
    assert imported(tree, 'gskd') == {'runs', 'cli', 'fo'}
    assert imported(ast.parse("from segkd_nb import gskd, dfss"), 'runs') == {'gskd', 'dfss'}
    assert imported(ast.parse("from segkd_nb.experiments.demo import run_demo"), 'cli') == {'experiments.demo'}

# --- notebooks -----------------------------------------------------------------------------------------------------
def notebooks()->dict:
    "notebook path -> the module it exports (None for index)."
    out = {}
    for p in sorted((ROOT/'nbs').glob('*.ipynb')):
        nb = json.loads(p.read_text())
        src = [''.join(c['source']) for c in nb['cells']]
        m = next((re.match(r'#\|\s*default_exp\s+(\S+)', s) for s in src if re.match(r'#\|\s*default_exp', s)), None)
        out[p] = m.group(1) if m else None
    return out

def test_notebook_numbers_follow_the_layer_order():
    nbs = {p: m for p, m in notebooks().items() if m}
    by_number = [m for p, m in sorted(nbs.items(), key=lambda kv: kv[0].name)]
    assert by_number == [m for m in ORDER if m in by_number], f"notebook order {by_number} differs from the layer order"

@pytest.mark.parametrize('nb', [p for p, m in notebooks().items() if m], ids=lambda p: p.name)
def test_notebook_imports_only_lower_notebooks(nb):
    mod = notebooks()[nb]
    cells = json.loads(nb.read_text())['cells']
    for c in cells:
        if c['cell_type'] != 'code': continue
        src = '\n'.join(l for l in ''.join(c['source']).splitlines() if not l.lstrip().startswith(('%', '!')))
        up = [d for d in imported(ast.parse(src), mod) if d in ORDER and ORDER.index(d) >= ORDER.index(mod) and d != mod]
        assert not up, f"{nb.name} imports {up}, exported by notebooks with a higher number"

@pytest.mark.parametrize('nb', sorted((ROOT/'nbs').glob('*.ipynb')), ids=lambda p: p.name)
def test_lessons_render_small(nb):
    "Committed with outputs, small enough to read on GitHub: <= 400 KB per notebook, <= 150 KB per output."
    assert nb.stat().st_size <= 400_000, f"{nb.name} is {nb.stat().st_size // 1000} KB (limit 400)"
    for i, c in enumerate(json.loads(nb.read_text())['cells']):
        for o in c.get('outputs', []):
            n = len(json.dumps(o))
            assert n <= 150_000, f"{nb.name} cell {i}: an output of {n // 1000} KB (limit 150)"
