"""
The optional parity suite (``pytest -m peers``): segcls against the real mmsegmentation,
mmpretrain and HF modules. The peers are not dependencies of segcls; install them apart (requirements-peers.txt,
README "Parity with mmsegmentation, torchvision and HF") and put them on PYTHONPATH. Without
them every test here is skipped with the reason.

mmsegmentation 1.2.2 imports with mmcv-lite 2.1.0 (pure Python) once ``mmcv._ext``, the compiled
operators, exists: :func:`mmcv_ext_stand_in` writes a stand-in module into a temporary folder
(added to the ``mmcv`` package path for the session) whose every attribute is a function that
raises when called. No compared module calls one.
"""
import sys
import textwrap

import pytest

_EXT = textwrap.dedent(
    '''
    """Stand-in for mmcv's compiled operators, written by segcls's tests/peers/conftest.py."""


    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"mmcv._ext.{name} is a stand-in: the compiled mmcv operators are not installed")

        return unavailable
    '''
)


@pytest.fixture(scope="session")
def mmseg(tmp_path_factory):
    """The ``mmseg`` package, importable with the ``mmcv._ext`` stand-in; skips if absent."""
    mmcv = pytest.importorskip("mmcv", reason="mmcv-lite 2.1.0 is not installed (see requirements-peers.txt)")
    if "mmcv._ext" not in sys.modules:
        try:
            import mmcv._ext  # noqa: F401  (a full mmcv with compiled operators)
        except ImportError:
            folder = tmp_path_factory.mktemp("mmcv_ext") / "mmcv"
            folder.mkdir()
            (folder / "_ext.py").write_text(_EXT)
            mmcv.__path__.append(str(folder))
    pytest.importorskip("ftfy", reason="ftfy (imported by mmseg.models) is not installed")
    return pytest.importorskip("mmseg", reason="mmsegmentation 1.2.2 is not installed (see requirements-peers.txt)")


@pytest.fixture(scope="session")
def transformers():
    return pytest.importorskip("transformers", reason="transformers is not installed (see requirements-peers.txt)")


@pytest.fixture(scope="session")
def mmpretrain(mmseg):
    """The ``mmpretrain`` package (the ``mmpretrain.ConvNeXt`` backbone of mmseg's UPerNet-ConvNeXt
    configs), importable with the ``mmcv._ext`` stand-in; skips if absent. Its multimodal models
    need transformers 4.x: they stay unregistered (``WITH_MULTIMODAL`` False, mmpretrain's own
    fallback when their dependencies are missing); no compared module is one of them."""
    reason = "mmpretrain 1.2.0 or its dependencies are not installed (see requirements-peers.txt)"
    pytest.importorskip("mmpretrain", reason=reason)
    import mmpretrain.utils.dependency

    mmpretrain.utils.dependency.WITH_MULTIMODAL = False
    return pytest.importorskip("mmpretrain.models", reason=reason)
