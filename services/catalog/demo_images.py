"""Pictures of the demo products, drawn at seed time (Pillow): a flat illustration of each product on a soft
gradient, so the demo shop looks like a shop, with no image files shipped. Pure: bytes out, no I/O."""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 800, 600
SCALE = 2  # drawn twice as large, then scaled down: smooth edges
Box = tuple[float, float, float, float]
Draw = Callable[[ImageDraw.ImageDraw, str, str], None]  # (pen, main colour, detail colour)


def _s(*values: float) -> list[float]:
    return [v * SCALE for v in values]


def _mug(d: ImageDraw.ImageDraw, main: str, detail: str) -> None:
    d.rounded_rectangle(_s(290, 200, 470, 430), radius=24 * SCALE, fill=main)
    d.ellipse(_s(440, 250, 540, 370), outline=main, width=26 * SCALE)
    d.rectangle(_s(290, 200, 470, 222), fill=detail)  # the rim
    d.ellipse(_s(290, 412, 470, 448), fill=main)


def _tee(d: ImageDraw.ImageDraw, main: str, detail: str) -> None:
    d.polygon(_s(300, 170, 250, 190, 180, 260, 230, 320, 270, 290, 270, 450, 530, 450, 530, 290, 570, 320,
                 620, 260, 550, 190, 500, 170), fill=main)
    d.chord(_s(345, 140, 455, 215), 0, 180, fill=detail)


def _hoodie(d: ImageDraw.ImageDraw, main: str, detail: str) -> None:
    _tee(d, main, main)
    d.polygon(_s(270, 290, 200, 430, 240, 450, 270, 380), fill=main)
    d.polygon(_s(530, 290, 600, 430, 560, 450, 530, 380), fill=main)
    d.ellipse(_s(330, 110, 470, 230), fill=main)
    d.ellipse(_s(360, 140, 440, 215), fill=detail)  # the hood's opening
    d.rounded_rectangle(_s(335, 350, 465, 420), radius=18 * SCALE, outline=detail, width=6 * SCALE)
    d.line(_s(380, 215, 375, 300), fill=detail, width=5 * SCALE)
    d.line(_s(420, 215, 425, 300), fill=detail, width=5 * SCALE)


def _cap(d: ImageDraw.ImageDraw, main: str, detail: str) -> None:
    d.pieslice(_s(240, 290, 520, 570), 180, 360, fill=main)
    d.ellipse(_s(420, 405, 600, 455), fill=detail)  # the brim
    d.ellipse(_s(368, 282, 392, 306), fill=detail)
    d.line(_s(380, 295, 380, 430), fill=detail, width=4 * SCALE)


def _socks(d: ImageDraw.ImageDraw, main: str, detail: str) -> None:
    for dx in (0, 130):
        d.rounded_rectangle(_s(260 + dx, 150, 360 + dx, 380), radius=30 * SCALE, fill=main)
        d.rounded_rectangle(_s(260 + dx, 320, 450 + dx, 420), radius=48 * SCALE, fill=main)
        d.rectangle(_s(260 + dx, 150, 360 + dx, 190), fill=detail)  # the cuff
        d.ellipse(_s(380 + dx, 340, 450 + dx, 420), fill=detail)  # the toe


def _bag(d: ImageDraw.ImageDraw, main: str, detail: str) -> None:
    d.arc(_s(320, 120, 480, 300), 180, 360, fill=detail, width=14 * SCALE)
    d.polygon(_s(270, 210, 530, 210, 560, 470, 240, 470), fill=main)
    d.rectangle(_s(340, 300, 460, 360), fill=detail)


def _bottle(d: ImageDraw.ImageDraw, main: str, detail: str) -> None:
    d.rounded_rectangle(_s(330, 190, 470, 480), radius=40 * SCALE, fill=main)
    d.rounded_rectangle(_s(360, 140, 440, 200), radius=12 * SCALE, fill=detail)
    d.rounded_rectangle(_s(345, 110, 455, 150), radius=14 * SCALE, fill=detail)
    d.rectangle(_s(330, 300, 470, 360), fill=detail)


def _notebook(d: ImageDraw.ImageDraw, main: str, detail: str) -> None:
    d.rounded_rectangle(_s(280, 130, 520, 470), radius=16 * SCALE, fill=main)
    d.rectangle(_s(280, 130, 310, 470), fill=detail)
    for y in range(170, 450, 34):
        for x in range(340, 500, 34):
            d.ellipse(_s(x - 3, y - 3, x + 3, y + 3), fill=detail)
    d.rectangle(_s(470, 130, 488, 500), fill=detail)  # the ribbon


def _pen(d: ImageDraw.ImageDraw, main: str, detail: str) -> None:
    d.polygon(_s(230, 450, 250, 410, 540, 150, 580, 190, 290, 450), fill=main)
    d.polygon(_s(230, 450, 250, 410, 290, 450), fill=detail)  # the nib
    d.line(_s(520, 170, 420, 290), fill=detail, width=8 * SCALE)  # the clip


def _stickers(d: ImageDraw.ImageDraw, main: str, detail: str) -> None:
    d.ellipse(_s(220, 160, 400, 340), fill=main)
    d.regular_polygon((470 * SCALE, 250 * SCALE, 100 * SCALE), 5, rotation=18, fill=detail)
    d.rounded_rectangle(_s(300, 320, 520, 460), radius=30 * SCALE, fill=detail)
    d.ellipse(_s(360, 355, 460, 425), fill=main)


def _lamp(d: ImageDraw.ImageDraw, main: str, detail: str) -> None:
    d.ellipse(_s(280, 440, 460, 480), fill=detail)  # the foot
    d.line(_s(370, 460, 330, 300, 450, 200), fill=detail, width=14 * SCALE, joint="curve")
    d.polygon(_s(420, 150, 560, 200, 520, 290, 400, 240), fill=main)  # the shade
    d.ellipse(_s(470, 240, 520, 290), fill="#fff7cc")  # the light


def _beanie(d: ImageDraw.ImageDraw, main: str, detail: str) -> None:
    d.chord(_s(250, 150, 550, 480), 180, 360, fill=main)
    d.rounded_rectangle(_s(240, 300, 560, 380), radius=20 * SCALE, fill=detail)
    for x in range(270, 540, 30):
        d.line(_s(x, 310, x, 370), fill=main, width=6 * SCALE)
    d.ellipse(_s(365, 110, 435, 180), fill=detail)  # the pompom


DRAWINGS: dict[str, tuple[Draw, str, str, tuple[str, str]]] = {
    # sku: (drawing, main, detail, background gradient top and bottom)
    "CW-MUG-01": (_mug, "#f4f6f8", "#2f5d9c", ("#cfe3f7", "#8fb6e0")),
    "CW-TEE-01": (_tee, "#efe6d8", "#c9b89d", ("#f7efe3", "#dcc7a6")),
    "CW-HOOD-01": (_hoodie, "#4a5a6b", "#2c3742", ("#dfe6ee", "#a9b8c9")),
    "CW-CAP-01": (_cap, "#c8553d", "#8f3a29", ("#fbe3d6", "#f0b59a")),
    "CW-SOCK-01": (_socks, "#7a8b5a", "#4e5d35", ("#e8eedb", "#bccba0")),
    "CW-BAG-01": (_bag, "#e9dcc0", "#8a6d3b", ("#f6f0e2", "#d9c7a0")),
    "CW-BOTTLE-01": (_bottle, "#2a9d8f", "#1d6f66", ("#d5f0ec", "#93d3c9")),
    "CW-NOTE-01": (_notebook, "#264653", "#e9c46a", ("#e4eef0", "#aac6cc")),
    "CW-PEN-01": (_pen, "#c9a227", "#6b5412", ("#f5ecd0", "#dcc485")),
    "CW-STICK-01": (_stickers, "#e76f51", "#f4a261", ("#fde8df", "#f6c1ac")),
    "CW-LAMP-01": (_lamp, "#3d405b", "#81829b", ("#e6e6ef", "#b6b7cc")),
    "CW-BEANIE-01": (_beanie, "#9d4edd", "#6a2c9c", ("#efe1fa", "#cfa9ef")),
}


def demo_image(sku: str) -> bytes | None:
    """The PNG of the demo product ``sku`` (None: not one of the demo products)."""
    if sku not in DRAWINGS:
        return None
    draw, main, detail, (top, bottom) = DRAWINGS[sku]
    size = (WIDTH * SCALE, HEIGHT * SCALE)
    picture = _gradient(size, top, bottom)
    shadow = Image.new("L", size, 0)
    ImageDraw.Draw(shadow).ellipse(_s(220, 455, 580, 505), fill=90)
    picture.paste((0, 0, 0), mask=shadow.filter(ImageFilter.GaussianBlur(18 * SCALE)))
    draw(ImageDraw.Draw(picture), main, detail)
    out = io.BytesIO()
    picture.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS).save(out, format="PNG")
    return out.getvalue()


def _gradient(size: tuple[int, int], top: str, bottom: str) -> Image.Image:
    start, end = Image.new("RGB", (1, 1), top).getpixel((0, 0)), Image.new("RGB", (1, 1), bottom).getpixel((0, 0))
    column = Image.new("RGB", (1, 256))
    for y in range(256):
        column.putpixel((0, y), tuple(round(a + (b - a) * y / 255) for a, b in zip(start, end, strict=True)))
    return column.resize(size, Image.Resampling.BILINEAR)
