"""Serve MathJax 3 from the build's own _static (works offline) instead of a CDN.

The files come from PyPI's django-static-mathjax (installed by requirements.txt).
"""
import os
import shutil


def _source():
    import mathjax  # the django-static-mathjax package

    return os.path.join(os.path.dirname(mathjax.__file__), "static", "mathjax", "es5")


def _copy(app, exception):
    if exception is None and app.builder.format == "html":
        shutil.copytree(_source(), os.path.join(app.outdir, "_static", "mathjax"), dirs_exist_ok=True)


def setup(app):
    if not os.path.isfile(os.path.join(_source(), "tex-mml-chtml.js")):
        raise RuntimeError("django-static-mathjax is not installed: pip install -r requirements.txt")
    app.config.mathjax_path = "mathjax/tex-mml-chtml.js"  # relative to _static
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
