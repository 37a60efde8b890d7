"""Re-execute nbs/index.ipynb (it only reads results/*.json) and write README.md from it with nbconvert.
Quarto cannot be installed here, so nbdev-readme is not used."""
import subprocess, sys
from pathlib import Path
import nbformat
from nbclient import NotebookClient
root = Path(__file__).resolve().parents[1]
nb_path = root/'nbs'/'index.ipynb'

def execute(path=nb_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}}).execute()
    return nb

def to_markdown(path=nb_path)->str:
    "nbconvert's markdown of the notebook: `#| hide` cells dropped, `#| echo: false` cells show only their output."
    from nbconvert import MarkdownExporter
    from traitlets.config import Config
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        first = c.source.splitlines()[0].strip() if c.source else ''
        tags = set(c.metadata.get('tags', []))
        if c.cell_type == 'code' and first.startswith('#|') and 'hide' in first: tags.add('remove_cell')
        if c.cell_type == 'code' and first.replace(' ', '') == '#|echo:false': tags.add('remove_input')
        c.metadata['tags'] = sorted(tags)
    cfg = Config()
    cfg.TagRemovePreprocessor.enabled = True
    cfg.TagRemovePreprocessor.remove_cell_tags = {'remove_cell'}
    cfg.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
    body, _ = MarkdownExporter(config=cfg).from_notebook_node(nb)
    return body.replace('<IPython.core.display.Markdown object>', '').strip() + '\n'

if __name__ == '__main__':
    nb = execute()
    nbformat.write(nb, nb_path)
    subprocess.run([str(Path(sys.executable).parent/'nbdev-clean'), '--fname', str(nb_path)], check=True, cwd=root)
    (root/'README.md').write_text(to_markdown())
    print('README.md rebuilt from nbs/index.ipynb')
