package bench

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Colours of the contenders, the same in every plot.
var (
	colTCP  = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff} // plain TCP, direct UDP: blue
	colRock = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff} // rock, rockudp: red
	colAlt  = color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff} // udptunnel, third series: green
	colMore = color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}
)

// WritePlots draws the report's plots as PNG files into dir and returns their names:
// blocks.png (throughput and latency by block size, one row per link, as in the paper's
// Figure 6), setup.png (set-up times), scale.png and tunnel.png. Sections without data get
// no plot.
func (rep *Report) WritePlots(dir string) ([]string, error) {
	var names []string
	type fig struct {
		name string
		draw func(string) error
		ok   bool
	}
	for _, fg := range []fig{
		{"blocks.png", rep.plotBlocks, len(rep.Links) > 0},
		{"setup.png", rep.plotSetup, rep.Setup != nil},
		{"scale.png", rep.plotScale, len(rep.Scale) > 0},
		{"tunnel.png", rep.plotTunnel, rep.Tunnel != nil},
	} {
		if !fg.ok {
			continue
		}
		if err := fg.draw(filepath.Join(dir, fg.name)); err != nil {
			return names, fmt.Errorf("bench: plot %s: %w", fg.name, err)
		}
		names = append(names, fg.name)
	}
	return names, nil
}

// plotBlocks draws one row per link: throughput (Mb/s) and round-trip latency (µs) against
// the block size, log-log, TCP and rock.
func (rep *Report) plotBlocks(path string) error {
	rows := make([][]*plot.Plot, len(rep.Links))
	for i, l := range rep.Links {
		tp, lat := plot.New(), plot.New()
		tp.Title.Text = l.Link + ": throughput"
		tp.Y.Label.Text = "Mb/s"
		lat.Title.Text = l.Link + ": round trip"
		lat.Y.Label.Text = "µs"
		for _, p := range []*plot.Plot{tp, lat} {
			p.X.Label.Text = "block size (bytes)"
			p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
			p.Add(plotter.NewGrid())
			p.Legend.Top, p.Legend.Left = true, true
		}
		for _, s := range []struct {
			name string
			col  color.Color
			tp   func(BlockRow) Num
			lat  func(BlockRow) Num
		}{
			{"TCP", colTCP, func(r BlockRow) Num { return mbps(r.TCPThroughput.Median) }, func(r BlockRow) Num { return us(r.TCPLatency.Median) }},
			{"rock", colRock, func(r BlockRow) Num { return mbps(r.RockThroughput.Median) }, func(r BlockRow) Num { return us(r.RockLatency.Median) }},
		} {
			var txy, lxy plotter.XYs
			for _, row := range l.Rows {
				if v := float64(s.tp(row)); v > 0 && !math.IsNaN(v) {
					txy = append(txy, plotter.XY{X: float64(row.Size), Y: v})
				}
				if v := float64(s.lat(row)); v > 0 && !math.IsNaN(v) {
					lxy = append(lxy, plotter.XY{X: float64(row.Size), Y: v})
				}
			}
			if err := addLine(tp, s.name, s.col, txy); err != nil {
				return err
			}
			if err := addLine(lat, s.name, s.col, lxy); err != nil {
				return err
			}
		}
		for _, p := range []*plot.Plot{tp, lat} {
			yScale(p)
		}
		rows[i] = []*plot.Plot{tp, lat}
	}
	return saveGrid(path, rows, 6*vg.Inch, 3*vg.Inch)
}

// yScale makes p's Y axis logarithmic when its data span more than a factor of 20, and
// linear from zero otherwise (a log axis over 4.7 to 4.8 would show no tick at all).
func yScale(p *plot.Plot) {
	if p.Y.Min > 0 && p.Y.Max/p.Y.Min > 20 {
		p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
		return
	}
	p.Y.Min = 0
	p.Y.Max *= 1.1
	p.Y.Tick.Marker = cleanTicks{}
}

// cleanTicks are gonum's default ticks with labels in the shortest form ("2500", not
// "2500.00").
type cleanTicks struct{}

// Ticks returns the default ticks between min and max with shorter labels.
func (cleanTicks) Ticks(min, max float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(min, max)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = strconv.FormatFloat(ts[i].Value, 'f', -1, 64)
		}
	}
	return ts
}

func addLine(p *plot.Plot, name string, col color.Color, xys plotter.XYs) error {
	if len(xys) == 0 {
		return nil
	}
	l, sc, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	l.Color, sc.Color = col, col
	l.Width = vg.Points(1.5)
	sc.Shape = draw.CircleGlyph{}
	p.Add(l, sc)
	p.Legend.Add(name, l, sc)
	return nil
}

// plotSetup draws the median set-up time of each kind and part as horizontal-label bars.
func (rep *Report) plotSetup(path string) error {
	p := plot.New()
	p.Title.Text = "Connection set-up on loopback (median)"
	p.Y.Label.Text = "µs"
	var names []string
	w := vg.Points(28)
	for i, group := range [][]SetupRow{rep.Setup.Rows, rep.Setup.Breakdown} {
		var vals plotter.Values
		for _, row := range group {
			names = append(names, row.Name)
			vals = append(vals, nz(float64(us(row.Time.Median))))
		}
		if len(vals) == 0 {
			continue
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.XMin = float64(len(names) - len(vals))
		bars.Color = colRock
		label := "connection set-up (Dial returns)"
		if i == 1 {
			bars.Color = colAlt
			label = "parts of a rock's set-up, measured alone"
		}
		p.Add(bars)
		p.Legend.Add(label, bars)
	}
	p.Add(plotter.NewGrid())
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = vg.Points(40)
	p.Y.Tick.Marker = cleanTicks{}
	p.NominalX(names...)
	p.X.Tick.Label.Rotation = math.Pi / 8
	p.X.Tick.Label.XAlign, p.X.Tick.Label.YAlign = draw.XRight, draw.YTop
	return saveGrid(path, [][]*plot.Plot{{p}}, 8*vg.Inch, 4.5*vg.Inch)
}

// plotScale draws resident memory and heap per idle rock at each count, for both sides.
func (rep *Report) plotScale(path string) error {
	var plots []*plot.Plot
	for _, m := range []struct {
		title string
		get   func(SideCosts) Num
		unit  string
	}{
		{"resident memory per idle rock", func(c SideCosts) Num { return kib(c.RSS) }, "KiB"},
		{"heartbeat CPU per idle rock", func(c SideCosts) Num { return c.CPU * 1e6 }, "µs of CPU per second"},
	} {
		p := plot.New()
		p.Title.Text = m.title
		p.Y.Label.Text = m.unit
		var names []string
		var srv, cli plotter.Values
		for _, s := range rep.Scale {
			names = append(names, fmt.Sprintf("%d rocks", s.Rocks))
			srv = append(srv, nz(float64(m.get(s.Server))))
			cli = append(cli, nz(float64(m.get(s.Client))))
		}
		w := vg.Points(20)
		b1, err := plotter.NewBarChart(srv, w)
		if err != nil {
			return err
		}
		b2, err := plotter.NewBarChart(cli, w)
		if err != nil {
			return err
		}
		b1.Color, b2.Color = colTCP, colRock
		b1.Offset, b2.Offset = -w/2, w/2
		p.Add(plotter.NewGrid(), b1, b2)
		p.Legend.Add("listener", b1)
		p.Legend.Add("dialer", b2)
		p.Legend.Top = true
		p.Y.Max *= 1.2 // room for the legend
		p.Y.Tick.Marker = cleanTicks{}
		p.NominalX(names...)
		plots = append(plots, p)
	}
	return saveGrid(path, [][]*plot.Plot{plots}, 5*vg.Inch, 3.5*vg.Inch)
}

// plotTunnel draws datagram rate and round trip of each path at each size.
func (rep *Report) plotTunnel(path string) error {
	var sizes []int
	var pathNames []string
	for _, row := range rep.Tunnel.Rows {
		if !slices.Contains(sizes, row.Size) {
			sizes = append(sizes, row.Size)
		}
		if !slices.Contains(pathNames, row.Path) {
			pathNames = append(pathNames, row.Path)
		}
	}
	var plots []*plot.Plot
	for _, m := range []struct {
		title, unit string
		get         func(TunnelRow) float64
	}{
		{"echoed datagrams per second", "datagrams/s", func(r TunnelRow) float64 { return float64(r.Rate.Median) }},
		{"round trip, one datagram at a time", "µs", func(r TunnelRow) float64 { return float64(us(r.RTT.Median)) }},
	} {
		p := plot.New()
		p.Title.Text = m.title
		p.Y.Label.Text = m.unit
		w := vg.Points(16)
		cols := []color.Color{colTCP, colRock, colAlt, colMore}
		for i, pn := range pathNames {
			var vals plotter.Values
			for _, s := range sizes {
				v := 0.0
				for _, row := range rep.Tunnel.Rows {
					if row.Path == pn && row.Size == s {
						v = nz(m.get(row))
					}
				}
				vals = append(vals, v)
			}
			b, err := plotter.NewBarChart(vals, w)
			if err != nil {
				return err
			}
			b.Color = cols[i%len(cols)]
			b.Offset = w * vg.Length(float64(i)-float64(len(pathNames)-1)/2)
			p.Add(b)
			p.Legend.Add(pn, b)
		}
		var names []string
		for _, s := range sizes {
			names = append(names, fmt.Sprintf("%d B", s))
		}
		p.Add(plotter.NewGrid())
		p.NominalX(names...)
		p.Legend.Top = true
		p.Y.Max *= 1.25 // room for the legend
		p.Y.Tick.Marker = cleanTicks{}
		plots = append(plots, p)
	}
	return saveGrid(path, [][]*plot.Plot{plots}, 5*vg.Inch, 3.5*vg.Inch)
}

func nz(x float64) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0
	}
	return x
}

// saveGrid draws the plots in a grid of cells of the given size and writes a PNG.
func saveGrid(path string, rows [][]*plot.Plot, cellW, cellH vg.Length) error {
	cols := 0
	for _, r := range rows {
		cols = max(cols, len(r))
	}
	img := vgimg.NewWith(vgimg.UseWH(cellW*vg.Length(cols), cellH*vg.Length(len(rows))), vgimg.UseDPI(96))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(rows), Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(rows, tiles, dc)
	for i, r := range rows {
		for j, p := range r {
			if p != nil {
				p.Draw(canvases[i][j])
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
