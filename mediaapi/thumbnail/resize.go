package thumbnail

import (
	"image"
	"image/color"

	"golang.org/x/image/draw"
)

// resize makes the output image: the part crop (in display coordinates, after the EXIF
// orientation o) of src, resampled to out.
//
// Big reductions go in two steps, as libvips does: a box filter (the average of k×k
// blocks, read straight from the decoder's planes) brings the region to between one and
// two times the output size, then Catmull-Rom makes the final size. The box step is a
// single pass over the source with integer sums, which keeps a 12-megapixel photo cheap;
// the orientation is applied to its small result rather than to the source.
func resize(src image.Image, o int, crop image.Rectangle, out image.Point) *image.RGBA {
	b := src.Bounds()
	sr := toSource(crop, o, b.Dx(), b.Dy()).Add(b.Min)
	ow, oh := out.X, out.Y
	if o >= 5 {
		ow, oh = oh, ow
	}
	var (
		inter  image.Image = src
		interR             = sr
	)
	if k := min(sr.Dx()/ow, sr.Dy()/oh); k >= 2 {
		m := boxShrink(src, sr, k)
		inter, interR = m, m.Bounds()
	}
	if o > 1 {
		m := orient(toRGBA(inter, interR), o)
		inter, interR = m, m.Bounds()
	}
	dst := image.NewRGBA(image.Rectangle{Max: out})
	if interR.Size() == out {
		draw.Draw(dst, dst.Bounds(), inter, interR.Min, draw.Src)
	} else {
		draw.CatmullRom.Scale(dst, dst.Bounds(), inter, interR, draw.Src, nil)
	}
	return dst
}

// toSource maps a rectangle of the displayed image (after orientation o) to the stored
// image of w×h.
func toSource(r image.Rectangle, o, w, h int) image.Rectangle {
	x0, y0, x1, y1 := r.Min.X, r.Min.Y, r.Max.X, r.Max.Y
	switch o {
	case 2: // mirrored horizontally
		return image.Rect(w-x1, y0, w-x0, y1)
	case 3: // rotated 180°
		return image.Rect(w-x1, h-y1, w-x0, h-y0)
	case 4: // mirrored vertically
		return image.Rect(x0, h-y1, x1, h-y0)
	case 5: // transposed
		return image.Rect(y0, x0, y1, x1)
	case 6: // to be rotated 90° clockwise
		return image.Rect(y0, h-x1, y1, h-x0)
	case 7: // transversed
		return image.Rect(w-y1, h-x1, w-y0, h-x0)
	case 8: // to be rotated 90° anticlockwise
		return image.Rect(w-y1, x0, w-y0, x1)
	}
	return r
}

// orient returns m turned from stored to displayed orientation o (2..8).
func orient(m *image.RGBA, o int) *image.RGBA {
	w, h := m.Rect.Dx(), m.Rect.Dy()
	dw, dh := w, h
	if o >= 5 {
		dw, dh = h, w
	}
	dst := image.NewRGBA(image.Rect(0, 0, dw, dh))
	for y := range dh {
		for x := range dw {
			var sx, sy int
			switch o {
			case 2:
				sx, sy = w-1-x, y
			case 3:
				sx, sy = w-1-x, h-1-y
			case 4:
				sx, sy = x, h-1-y
			case 5:
				sx, sy = y, x
			case 6:
				sx, sy = y, h-1-x
			case 7:
				sx, sy = w-1-y, h-1-x
			case 8:
				sx, sy = w-1-y, x
			default:
				sx, sy = x, y
			}
			si := sy*m.Stride + sx*4
			di := y*dst.Stride + x*4
			copy(dst.Pix[di:di+4], m.Pix[si:si+4])
		}
	}
	return dst
}

// toRGBA returns the part r of m as an *image.RGBA with its origin at (0, 0).
func toRGBA(m image.Image, r image.Rectangle) *image.RGBA {
	if c, ok := m.(*image.RGBA); ok && r == c.Rect && r.Min == (image.Point{}) {
		return c
	}
	dst := image.NewRGBA(image.Rectangle{Max: r.Size()})
	draw.Draw(dst, dst.Bounds(), m, r.Min, draw.Src)
	return dst
}

// boxShrink returns the region r of src reduced k times in each dimension by averaging
// k×k blocks (a trailing partial block is dropped).
func boxShrink(src image.Image, r image.Rectangle, k int) *image.RGBA {
	dst := image.NewRGBA(image.Rect(0, 0, r.Dx()/k, r.Dy()/k))
	switch m := src.(type) {
	case *image.YCbCr:
		shrinkYCbCr(dst, m, r, k)
	case *image.RGBA:
		shrinkRGBA(dst, m.Pix, m.Stride, m.PixOffset(r.Min.X, r.Min.Y), k, false)
	case *image.NRGBA:
		shrinkRGBA(dst, m.Pix, m.Stride, m.PixOffset(r.Min.X, r.Min.Y), k, true)
	case *image.Gray:
		shrinkGray(dst, m, r, k)
	default:
		c := toRGBA(src, r)
		shrinkRGBA(dst, c.Pix, c.Stride, 0, k, false)
	}
	return dst
}

// shrinkRGBA box-filters 4-byte pixels starting at pix[off] into dst. With nonPremul the
// source is non-premultiplied (NRGBA) and colours are weighted by alpha.
func shrinkRGBA(dst *image.RGBA, pix []byte, stride, off, k int, nonPremul bool) {
	ow, oh := dst.Rect.Dx(), dst.Rect.Dy()
	sums := make([]uint64, ow*4)
	n := uint64(k * k)
	for oy := range oh {
		clear(sums)
		for dy := range k {
			row := pix[off+(oy*k+dy)*stride:]
			for ox := range ow {
				p := row[ox*k*4 : (ox+1)*k*4]
				var r, g, b, a uint64
				if nonPremul {
					for i := 0; i+3 < len(p); i += 4 {
						al := uint64(p[i+3])
						r += uint64(p[i]) * al
						g += uint64(p[i+1]) * al
						b += uint64(p[i+2]) * al
						a += al
					}
				} else {
					for i := 0; i+3 < len(p); i += 4 {
						r += uint64(p[i])
						g += uint64(p[i+1])
						b += uint64(p[i+2])
						a += uint64(p[i+3])
					}
				}
				s := sums[ox*4 : ox*4+4]
				s[0] += r
				s[1] += g
				s[2] += b
				s[3] += a
			}
		}
		d := n
		if nonPremul {
			d = n * 255
		}
		out := dst.Pix[oy*dst.Stride:]
		for ox := range ow {
			s := sums[ox*4 : ox*4+4]
			out[ox*4] = uint8((s[0] + d/2) / d)
			out[ox*4+1] = uint8((s[1] + d/2) / d)
			out[ox*4+2] = uint8((s[2] + d/2) / d)
			out[ox*4+3] = uint8((s[3] + n/2) / n)
		}
	}
}

// shrinkYCbCr box-filters the region r of a Y'CbCr image (any subsampling) into dst. Luma
// is averaged over each k×k block; chroma over the chroma samples that the block touches
// (exact when blocks align with the subsampling, as with even k on 4:2:0; otherwise edge
// samples weigh a little more than their share, which no thumbnail shows). Each output
// pixel is converted to RGB once.
func shrinkYCbCr(dst *image.RGBA, m *image.YCbCr, r image.Rectangle, k int) {
	var sx, sy uint
	switch m.SubsampleRatio {
	case image.YCbCrSubsampleRatio422:
		sx = 1
	case image.YCbCrSubsampleRatio420:
		sx, sy = 1, 1
	case image.YCbCrSubsampleRatio440:
		sy = 1
	case image.YCbCrSubsampleRatio411:
		sx = 2
	case image.YCbCrSubsampleRatio410:
		sx, sy = 2, 1
	}
	ow, oh := dst.Rect.Dx(), dst.Rect.Dy()
	sums := make([]uint64, ow*4) // Y, Cb, Cr, chroma sample count
	n := uint64(k * k)
	cminX, cminY := m.Rect.Min.X>>sx, m.Rect.Min.Y>>sy
	for oy := range oh {
		clear(sums)
		y0 := r.Min.Y + oy*k
		for y := y0; y < y0+k; y++ {
			yrow := m.Y[(y-m.Rect.Min.Y)*m.YStride+(r.Min.X-m.Rect.Min.X):]
			for ox := range ow {
				var v uint64
				for _, p := range yrow[ox*k : ox*k+k] {
					v += uint64(p)
				}
				sums[ox*4] += v
			}
		}
		for cy := y0 >> sy; cy <= (y0+k-1)>>sy; cy++ {
			base := (cy - cminY) * m.CStride
			for ox := range ow {
				x0 := r.Min.X + ox*k
				c0, c1 := base+x0>>sx-cminX, base+(x0+k-1)>>sx-cminX+1
				var cb, cr uint64
				for _, p := range m.Cb[c0:c1] {
					cb += uint64(p)
				}
				for _, p := range m.Cr[c0:c1] {
					cr += uint64(p)
				}
				s := sums[ox*4 : ox*4+4]
				s[1] += cb
				s[2] += cr
				s[3] += uint64(c1 - c0)
			}
		}
		out := dst.Pix[oy*dst.Stride:]
		for ox := range ow {
			s := sums[ox*4 : ox*4+4]
			c := s[3]
			rr, gg, bb := color.YCbCrToRGB(uint8((s[0]+n/2)/n), uint8((s[1]+c/2)/c), uint8((s[2]+c/2)/c))
			out[ox*4], out[ox*4+1], out[ox*4+2], out[ox*4+3] = rr, gg, bb, 0xff
		}
	}
}

// shrinkGray box-filters the region r of a grey image (a greyscale JPEG) into dst.
func shrinkGray(dst *image.RGBA, m *image.Gray, r image.Rectangle, k int) {
	ow, oh := dst.Rect.Dx(), dst.Rect.Dy()
	sums := make([]uint64, ow)
	n := uint64(k * k)
	for oy := range oh {
		clear(sums)
		for dy := range k {
			row := m.Pix[m.PixOffset(r.Min.X, r.Min.Y+oy*k+dy):]
			for ox := range ow {
				var v uint64
				for _, p := range row[ox*k : ox*k+k] {
					v += uint64(p)
				}
				sums[ox] += v
			}
		}
		out := dst.Pix[oy*dst.Stride:]
		for ox := range ow {
			g := uint8((sums[ox] + n/2) / n)
			out[ox*4], out[ox*4+1], out[ox*4+2], out[ox*4+3] = g, g, g, 0xff
		}
	}
}
