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
    from nbconvert import MarkdownExporter
    body, _ = MarkdownExporter().from_filename(str(path))
    return body

if __name__ == '__main__':
    nb = execute()
    nbformat.write(nb, nb_path)
    subprocess.run([str(Path(sys.executable).parent/'nbdev-clean'), '--fname', str(nb_path)], check=True, cwd=root)
    (root/'README.md').write_text(to_markdown())
    print('README.md rebuilt from nbs/index.ipynb')
