"""Draw the 128x128 KneePipeline icon (femur condyles over a tibial plateau with a cartilage band).

Run: python tools/make_icon.py  -> KneePipeline/Resources/Icons/KneePipeline.png and Resources/KneePipeline.png
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Ellipse, FancyBboxPatch, Rectangle  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BONE, CART, EDGE = "#f1d6aa", "#e6dc46", "#6b4f2a"


def draw(path):
    fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 128)
    ax.set_ylim(0, 128)
    ax.axis("off")
    ax.add_patch(Rectangle((44, 78), 40, 50, color=BONE, ec=EDGE, lw=1.5))                  # femoral shaft
    for x in (44, 84):                                                                       # condyles + cartilage
        ax.add_patch(Ellipse((x, 74), 46, 36, color=CART, ec=EDGE, lw=1.2))
        ax.add_patch(Ellipse((x, 76), 38, 28, color=BONE, ec="none"))
    ax.add_patch(Rectangle((44, 78), 40, 20, color=BONE, ec="none"))
    ax.add_patch(FancyBboxPatch((20, 46), 88, 8, boxstyle="round,pad=1", color=CART, ec=EDGE, lw=1.2))  # tibial cartilage
    ax.add_patch(Rectangle((40, 0), 48, 44, color=BONE, ec=EDGE, lw=1.5))                   # tibial shaft
    ax.add_patch(FancyBboxPatch((22, 30), 84, 14, boxstyle="round,pad=2", color=BONE, ec=EDGE, lw=1.5))  # plateau
    for i, h in enumerate((10, 18, 26, 14)):                                                  # a small bar chart
        ax.add_patch(Rectangle((92 + i * 8, 4), 6, h, color=("#4c78a8", "#f58518", "#54a24b", "#e45756")[i]))
    fig.savefig(path, dpi=100, transparent=True)
    plt.close(fig)


if __name__ == "__main__":
    for p in (os.path.join(ROOT, "KneePipeline", "Resources", "Icons", "KneePipeline.png"),
              os.path.join(ROOT, "Resources", "KneePipeline.png")):
        os.makedirs(os.path.dirname(p), exist_ok=True)
        draw(p)
        print("wrote", os.path.relpath(p, ROOT))
