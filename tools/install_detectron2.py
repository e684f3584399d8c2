#!/usr/bin/env python
"""
Make detectron2 importable in the running Python environment, without a compiler.

1. If ``import detectron2`` already works (for example a user's source build with CUDA
   operators), it is used untouched.
2. Otherwise the PyPI source distribution ``pb1-detectron2==0.6`` (detectron2 v0.6's Python code,
   without its C++ sources) is downloaded, verified against its sha256, patched with
   ``tools/patches/pb1-detectron2-0.6.patch`` and pip-installed as an ordinary distribution
   (``pip uninstall pb1-detectron2`` removes it). The patch only:

   - backports the upstream fixes for Pillow >= 10 (``Image.LINEAR``) and NumPy >= 1.24
     (``np.int``, ``np.float``, ``np.bool``);
   - drops the ``black==21.4b2`` pin;
   - builds no extension and adds ``detectron2/_C.py``, a pure-Python stand-in whose operators
     raise an error naming the operator and saying how to get it.

Environment variables:
    SEGCLS_DETECTRON2_SDIST  path to an already downloaded ``pb1-detectron2-0.6.tar.gz``
                             (still verified against the sha256).
    PIP_INDEX_URL            simple index to download from (default https://pypi.org/simple).
    SEGCLS_CACHE             download cache (default ~/.cache/segcls).
"""
import hashlib
import html.parser
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request

SDIST_NAME = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
PATCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "patches", "pb1-detectron2-0.6.patch")


def log(msg):
    print("[install_detectron2] " + msg, flush=True)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _LinkParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links.extend(v for k, v in attrs if k == "href")


def find_sdist_url(index_url):
    page_url = index_url.rstrip("/") + "/pb1-detectron2/"
    with urllib.request.urlopen(page_url, timeout=120) as r:
        parser = _LinkParser()
        parser.feed(r.read().decode("utf-8"))
    for href in parser.links:
        if urllib.parse.urlparse(href).path.endswith("/" + SDIST_NAME):
            return urllib.parse.urljoin(page_url, href)
    raise SystemExit(f"{SDIST_NAME} is not listed on {page_url}; set SEGCLS_DETECTRON2_SDIST to a local copy")


def fetch_sdist():
    """Return the path of a verified sdist, downloading it (atomically) into the cache if needed."""
    local = os.environ.get("SEGCLS_DETECTRON2_SDIST")
    if local:
        path = local
        if not os.path.isfile(path):
            raise SystemExit(f"SEGCLS_DETECTRON2_SDIST={path}: no such file (expected {SDIST_NAME})")
    else:
        cache = os.environ.get("SEGCLS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "segcls"))
        os.makedirs(cache, exist_ok=True)
        path = os.path.join(cache, SDIST_NAME)
        if not os.path.isfile(path) or sha256_of(path) != SDIST_SHA256:
            url = find_sdist_url(os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple"))
            log(f"downloading {url}")
            fd, tmp = tempfile.mkstemp(dir=cache, suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=300) as r:
                    out.write(r.read())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    digest = sha256_of(path)
    if digest != SDIST_SHA256:
        raise SystemExit(f"{path}: sha256 {digest} does not match the expected {SDIST_SHA256}; refusing to install it")
    log(f"verified {path} (sha256 {SDIST_SHA256[:12]}...)")
    return path


def main():
    if importlib.util.find_spec("detectron2") is not None:
        import detectron2

        log(f"using the detectron2 already installed at {os.path.dirname(detectron2.__file__)}")
        return
    sdist = fetch_sdist()
    with tempfile.TemporaryDirectory(prefix="segcls-d2-") as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = os.path.join(tmp, "pb1-detectron2-0.6")
        log(f"applying {os.path.relpath(PATCH)}")
        subprocess.run(["git", "apply", "-p2", PATCH], cwd=src, check=True)
        log("pip-installing the patched pb1-detectron2 (pure Python, no compiled operators)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", src], check=True)


if __name__ == "__main__":
    main()
