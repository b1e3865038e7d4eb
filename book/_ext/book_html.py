"""Two fixes to the HTML of the book, as a local Sphinx extension.

1. Serve MathJax 3 from the build's own _static (works offline) instead of a CDN; the files
   come from PyPI's django-static-mathjax (installed by requirements.txt).
2. Drop duplicate <script> entries: with Jupyter Book 1.0.4 sphinx-thebe registers its inline
   config twice, and the second `const THEBE_JS_URL` is a console error on every page.
"""
import os
import shutil


def _source():
    import mathjax  # the django-static-mathjax package

    return os.path.join(os.path.dirname(mathjax.__file__), "static", "mathjax", "es5")


def _copy(app, exception):
    if exception is None and app.builder.format == "html":
        shutil.copytree(_source(), os.path.join(app.outdir, "_static", "mathjax"), dirs_exist_ok=True)


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for js in context.get("script_files", []):
        key = (getattr(js, "filename", str(js)) or "", tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    context["script_files"] = kept


def setup(app):
    if not os.path.isfile(os.path.join(_source(), "tex-mml-chtml.js")):
        raise RuntimeError("django-static-mathjax is not installed: pip install -r requirements.txt")
    app.config.mathjax_path = "mathjax/tex-mml-chtml.js"  # relative to _static
    app.connect("build-finished", _copy)
    app.connect("html-page-context", _dedupe_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
