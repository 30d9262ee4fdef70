"""Renders tmux pane captures (text with SGR colour codes) as a 2x2 PNG grid.

Usage: render.py OUT.png TITLE:FILE...  Only the SGR codes our programs and
tracing emit are understood: reset, bold, dim, italic and the 8 basic colours.
"""

import re
import sys

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
SIZE = 15
BG, FG, TITLE_BG = (30, 31, 40), (220, 221, 228), (52, 54, 68)
COLOURS = {30: (90, 92, 110), 31: (240, 100, 100), 32: (110, 210, 120), 33: (230, 200, 90),
           34: (110, 160, 240), 35: (200, 130, 220), 36: (100, 200, 210), 37: FG}
SGR = re.compile(r"\x1b\[([0-9;]*)m")


class Style:
    """SGR state; tmux only emits changes, so it carries over lines."""

    def __init__(self):
        self.colour, self.bold, self.dim = FG, False, False


def spans(line, style):
    """Yields (text, colour, bold) runs of one captured line."""
    colour, bold, dim, pos = style.colour, style.bold, style.dim, 0
    for match in SGR.finditer(line):
        if match.start() > pos:
            yield line[pos:match.start()], faded(colour) if dim else colour, bold
        for code in [int(c) for c in match.group(1).split(";") if c] or [0]:
            if code == 0:
                colour, bold, dim = FG, False, False
            elif code == 1:
                bold = True
            elif code == 2:
                dim = True
            elif code in (22,):
                bold = dim = False
            elif code in COLOURS:
                colour = COLOURS[code]
            elif code == 39:
                colour = FG
        pos = match.end()
    if pos < len(line):
        yield line[pos:], faded(colour) if dim else colour, bold
    style.colour, style.bold, style.dim = colour, bold, dim


def faded(colour):
    return tuple((c + b) // 2 for c, b in zip(colour, BG))


def tile(title, path, font, bold_font, cell_w, cell_h, cols, rows):
    lines = open(path, encoding="utf-8").read().rstrip("\n").split("\n")[-rows:]
    image = Image.new("RGB", (cols * cell_w + 20, (rows + 1) * cell_h + 24), BG)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, image.width, cell_h + 8], fill=TITLE_BG)
    draw.text((10, 4), title, font=bold_font, fill=FG)
    style = Style()
    for y, line in enumerate(lines):
        x = 10
        for text, colour, bold in spans(line, style):
            draw.text((x, cell_h + 16 + y * cell_h), text, font=bold_font if bold else font, fill=colour)
            x += len(text) * cell_w
    return image


def main():
    out, panes = sys.argv[1], [arg.split(":", 1) for arg in sys.argv[2:]]
    font, bold_font = ImageFont.truetype(FONT, SIZE), ImageFont.truetype(BOLD, SIZE)
    cell_w = round(font.getlength("M"))
    cell_h = SIZE + 5
    cols, rows = 92, 13
    tiles = [tile(t, p, font, bold_font, cell_w, cell_h, cols, rows) for t, p in panes]
    w, h = tiles[0].size
    gap = 6
    grid = Image.new("RGB", (2 * w + gap, 2 * h + gap), (15, 15, 20))
    for i, image in enumerate(tiles):
        grid.paste(image, ((i % 2) * (w + gap), (i // 2) * (h + gap)))
    grid.save(out)


main()
