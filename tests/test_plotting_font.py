"""The figures' Chinese labels need no installed CJK font: the shipped subset holds every CJK
character of the book's code cells, and matplotlib draws a Chinese title with it alone."""
import os
import sys
import warnings

from fontTools.ttLib import TTFont

from ddpm_lib.plotting import FONT, use_book_font

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from make_font import book_characters, is_cjk  # noqa: E402


def test_the_subset_holds_every_cjk_character_of_the_notebooks():
    cmap = TTFont(FONT).getBestCmap()
    chars = book_characters()
    assert len(chars) > 100  # the notebooks' comments and labels: hundreds of characters
    missing = sorted(ch for ch in chars if ord(ch) not in cmap)
    assert not missing, "rerun tools/make_font.py: " + "".join(missing)
    assert is_cjk("扩") and is_cjk("，") and not is_cjk("a")
    assert ord("鑫") not in cmap  # a subset, not the whole font (the check above can fail)


def test_a_chinese_title_draws_with_the_shipped_font_alone():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    name = use_book_font()
    assert name == "DDPM Book CJK Subset" and plt.rcParams["font.family"][-1] == name
    # font.family names only DejaVu Sans and the subset, so no installed CJK font is used:
    # a character the subset lacks is reported missing (the control)
    for title, ok in (("弗雷歇距离，训练分钟", True), ("鑫", False)):
        fig, ax = plt.subplots()
        ax.set_title(title)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig.canvas.draw()
        plt.close(fig)
        missing = [w for w in caught if "missing from font" in str(w.message)]
        assert (not missing) == ok, (title, [str(w.message) for w in caught])
