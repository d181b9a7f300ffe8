package main

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"strings"
)

// The chart is horizontal bars, one group per figure, each group on its own
// scale (the units differ), drawn with the standard library only: rectangles
// and the 5×7 bitmap font in font.go.

var (
	colBackground = color.RGBA{255, 255, 255, 255}
	colText       = color.RGBA{30, 30, 30, 255}
	colMuted      = color.RGBA{140, 140, 140, 255}
	colGrid       = color.RGBA{225, 225, 225, 255}
	colSystems    = []color.RGBA{{52, 101, 164, 255}, {230, 126, 34, 255}} // Patroni blue, pgwarden orange
)

const (
	chartWidth  = 1000
	chartMargin = 20
	textScale   = 2
	barHeight   = 18
	barGap      = 4
	groupGap    = 18
	barMaxWidth = 720
)

// chartPNG draws every figure for the systems in order (nil entries are
// shown as n/a).
func chartPNG(title string, systems []*results, names []string) ([]byte, error) {
	lineH := glyphH*textScale + 6
	groupH := lineH + len(names)*(barHeight+barGap) + groupGap
	height := chartMargin + 2*lineH + 10 + int(numFigures)*groupH + chartMargin
	img := image.NewRGBA(image.Rect(0, 0, chartWidth, height))
	draw.Draw(img, img.Bounds(), &image.Uniform{colBackground}, image.Point{}, draw.Src)

	y := chartMargin
	drawText(img, chartMargin, y, title, textScale, colText)
	y += lineH
	// Legend.
	x := chartMargin
	for i, n := range names {
		fillRect(img, x, y, 14, 14, colSystems[i%len(colSystems)])
		x += 20
		x = drawText(img, x, y, n, textScale, colText) + 24
	}
	drawText(img, x+20, y, "(each row on its own scale)", textScale, colMuted)
	y += lineH + 10

	for f := figure(0); f < numFigures; f++ {
		label := rows[f].label
		if rows[f].unit != "writes" {
			label += " (" + rows[f].unit + ")"
		}
		drawText(img, chartMargin, y, label, textScale, colText)
		y += lineH
		top := 0.0
		for _, r := range systems {
			if v := r.value(f); !math.IsNaN(v) {
				top = math.Max(top, v)
			}
		}
		fillRect(img, chartMargin, y-2, 1, len(names)*(barHeight+barGap), colGrid)
		for i := range names {
			var r *results
			if i < len(systems) {
				r = systems[i]
			}
			v := r.value(f)
			by := y + i*(barHeight+barGap)
			if math.IsNaN(v) {
				drawText(img, chartMargin+6, by+2, "n/a", textScale, colMuted)
				continue
			}
			w := 0
			if top > 0 {
				w = int(math.Round(v / top * barMaxWidth))
			}
			fillRect(img, chartMargin, by, max(w, 1), barHeight, colSystems[i%len(colSystems)])
			drawText(img, chartMargin+w+8, by+2, formatValue(v, rows[f].unit), textScale, colText)
		}
		y += len(names)*(barHeight+barGap) + groupGap
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("cannot encode the chart: %w", err)
	}
	return buf.Bytes(), nil
}

func fillRect(img *image.RGBA, x, y, w, h int, c color.RGBA) {
	draw.Draw(img, image.Rect(x, y, x+w, y+h), &image.Uniform{c}, image.Point{}, draw.Src)
}

// drawText draws s with its top-left corner at (x, y) and returns the x after
// the last glyph. Letters are drawn as capitals; a rune without a glyph is
// drawn as a hollow box.
func drawText(img *image.RGBA, x, y int, s string, scale int, c color.RGBA) int {
	for _, r := range strings.ToUpper(s) {
		g, ok := glyphs[r]
		if !ok {
			g = unknownGlyph
		}
		for gy, line := range g {
			for gx, px := range line {
				if px == '#' {
					fillRect(img, x+gx*scale, y+gy*scale, scale, scale, c)
				}
			}
		}
		x += (glyphW + 1) * scale
	}
	return x
}
