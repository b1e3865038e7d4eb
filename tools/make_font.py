"""The figures' CJK font: a subset of Noto Sans CJK SC (SIL Open Font License 1.1) holding every
CJK character and full-width punctuation mark that the book's code cells contain, so a reader's
figures show Chinese titles and labels without a CJK font installed (most laptops outside
China, Colab, a bare container). The subset is renamed, as the OFL asks of modified versions
("Noto" is Google's trademark), and its license travels beside it.

    apt-get install fonts-noto-cjk && python tools/make_font.py

tests/test_plotting_font.py checks that every such character of the notebooks is in the subset,
so a new label that the subset lacks fails there; rerun this tool then.
"""
import glob
import json
import os
import shutil

from fontTools import subset
from fontTools.ttLib import TTCollection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"  # Debian: fonts-noto-cjk
LICENSE = "/usr/share/doc/fonts-noto-cjk/copyright"
SC = 2  # the collection's "Noto Sans CJK SC"
FONTS = os.path.join(ROOT, "ddpm_lib", "fonts")
NAME = "DDPM Book CJK Subset"


def is_cjk(ch):
    """The characters the figures need from a CJK font: ideographs, CJK and full-width punctuation."""
    o = ord(ch)
    return 0x3000 <= o <= 0x303F or 0x4E00 <= o <= 0x9FFF or 0xFF00 <= o <= 0xFFEF \
        or ch in "“”‘’—…·"


def book_characters():
    chars = set()
    for path in sorted(glob.glob(os.path.join(ROOT, "book", "*.ipynb"))):
        with open(path, encoding="utf-8") as f:
            cells = json.load(f)["cells"]
        for cell in cells:
            if cell["cell_type"] == "code":
                chars.update(ch for ch in "".join(cell["source"]) if is_cjk(ch))
    return chars


def main():
    font = TTCollection(SOURCE).fonts[SC]
    chars = book_characters()
    options = subset.Options()
    options.name_IDs = ["*"]
    options.layout_features = ["*"]
    sub = subset.Subsetter(options)
    sub.populate(unicodes=sorted(map(ord, chars)))
    sub.subset(font)
    for record in font["name"].names:  # renamed: a Modified Version under the OFL
        if record.nameID in (1, 4, 16):
            record.string = NAME
        elif record.nameID in (3, 6):
            record.string = NAME.replace(" ", "") + "-Regular"
        elif record.nameID == 7:
            record.string = "A subset of Noto Sans CJK SC (Noto is a trademark of Google Inc.)"
    os.makedirs(FONTS, exist_ok=True)
    out = os.path.join(FONTS, "ddpm-book-cjk-subset.otf")
    font.save(out)
    shutil.copy(LICENSE, os.path.join(FONTS, "LICENSE-fonts-noto-cjk.txt"))
    print(f"{len(chars)} characters, {os.path.getsize(out):,} bytes: {out}")


if __name__ == "__main__":
    main()
