"""Compose Resources/Screenshots/KneePipeline-1.png (the screenshot CMakeLists.txt names) from a run's report
renders: femur and tibia cartilage thickness of the sample knee, stacked. Until a screenshot of the Slicer
panel exists, this shows the results the module loads.

Run: kneepipeline analyze --labels <sample label map> --label-convention pymskt --out RUN
     python tools/make_screenshot.py RUN
"""
import os
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Resources", "Screenshots", "KneePipeline-1.png")


def compose(run_dir, out=OUT, parts=("render_femur.png", "render_tibia.png")):
    images = [Image.open(os.path.join(run_dir, "report", p)).convert("RGB") for p in parts]
    width = max(im.width for im in images)
    sheet = Image.new("RGB", (width, sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        sheet.paste(im, ((width - im.width) // 2, y))
        y += im.height
    os.makedirs(os.path.dirname(out), exist_ok=True)
    sheet.save(out, optimize=True)
    return out


if __name__ == "__main__":
    sys.stdout.write("wrote %s\n" % compose(sys.argv[1]))
