"""Go's text/tabwriter, cell for cell, so meshd's tables match istioctl's byte for byte.

istioctl prints every table through `tabwriter.NewWriter(out, minwidth, tabwidth,
padding, ' ', 0)`. Its layout rules are what operators' eyes (and scripts) are used to:

- text is split into cells at tabs; a cell is *terminated* by its tab, and only
  terminated cells take part in column alignment (the last cell of a line is printed
  as is, so a trailing empty cell leaves the padding of the previous column behind);
- a column block is a run of consecutive lines that all have a terminated cell in that
  column; its width is the widest cell plus `padding` (at least `minwidth`);
- a line without any tab flushes everything before it, so blocks never reach across it.

The algorithm below is a transcription of Go's `(*Writer).format` recursion (flags 0,
padchar ' '), so widths come out identical, including for ragged rows.
"""
from __future__ import annotations

import io
from typing import TextIO


class TabWriter:
    def __init__(self, out: TextIO, minwidth: int = 0, tabwidth: int = 8, padding: int = 1, padchar: str = " "):
        if padchar != " ":
            raise ValueError("only space padding is implemented (istioctl never uses anything else)")
        self._out = out
        self.minwidth = minwidth
        self.tabwidth = tabwidth
        self.padding = padding
        self._lines: list[list[str]] = []  # cells per buffered line; the last cell is the unterminated rest
        self._partial = ""  # text after the last newline not yet turned into a line

    # --- io -----------------------------------------------------------------------
    def write(self, text: str) -> int:
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            cells = line.split("\t")
            self._lines.append(cells)
            if len(cells) == 1:
                # A line without tabs ends every column block: Go flushes right here.
                self._flush_lines()
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self._lines.append(self._partial.split("\t"))
            self._partial = ""
            self._flush_lines(final_newline=False)
        else:
            self._flush_lines()

    # --- Go's format --------------------------------------------------------------
    def _flush_lines(self, final_newline: bool = True) -> None:
        if not self._lines:
            return
        lines = self._lines
        self._lines = []
        out: list[str] = []
        self._format(out, lines, [], 0, len(lines))
        text = "".join(out)
        if not final_newline and text.endswith("\n"):
            text = text[:-1]
        self._out.write(text)

    def _format(self, out: list[str], lines: list[list[str]], widths: list[int], line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            line = lines[this]
            if column >= len(line) - 1:
                this += 1
                continue
            # A terminated cell exists in this column: print the lines before the block.
            self._write_lines(out, lines, widths, line0, this)
            line0 = this
            width = self.minwidth
            while this < line1:
                line = lines[this]
                if column >= len(line) - 1:
                    break
                w = _width(line[column]) + self.padding
                if w > width:
                    width = w
                this += 1
            widths.append(width)
            self._format(out, lines, widths, line0, this)
            widths.pop()
            line0 = this
        self._write_lines(out, lines, widths, line0, line1)

    @staticmethod
    def _write_lines(out: list[str], lines: list[list[str]], widths: list[int], line0: int, line1: int) -> None:
        for i in range(line0, line1):
            line = lines[i]
            for j, cell in enumerate(line):
                out.append(cell)
                if j < len(widths) and j < len(line) - 1:
                    out.append(" " * (widths[j] - _width(cell)))
            out.append("\n")


def _width(cell: str) -> int:
    return len(cell)  # Go counts runes; so does len() on str


def render(rows: list[list[str]] | list[str], minwidth: int = 0, tabwidth: int = 8, padding: int = 1) -> str:
    """Rows (lists of cells, or lines with tabs) through one writer, as a string."""
    buf = io.StringIO()
    tw = TabWriter(buf, minwidth, tabwidth, padding)
    for row in rows:
        tw.write(("\t".join(row) if isinstance(row, list) else row) + "\n")
    tw.flush()
    return buf.getvalue()
