package thumbnail

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"image/jpeg"
	"image/png"
	"runtime"
	"testing"
	"time"

	"golang.org/x/image/webp"
)

// testImage is a w×h gradient; with alpha its left half is half transparent.
func testImage(w, h int, alpha bool) *image.NRGBA {
	m := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			a := uint8(255)
			if alpha && x < w/2 {
				a = 128
			}
			m.SetNRGBA(x, y, color.NRGBA{uint8(x * 255 / max(1, w-1)), uint8(y * 255 / max(1, h-1)), 100, a})
		}
	}
	return m
}

func encodePNG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeJPEG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, m, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeGIF(t testing.TB, m image.Image) []byte {
	t.Helper()
	p := image.NewPaletted(m.Bounds(), palette.Plan9)
	for y := m.Bounds().Min.Y; y < m.Bounds().Max.Y; y++ {
		for x := m.Bounds().Min.X; x < m.Bounds().Max.X; x++ {
			p.Set(x, y, m.At(x, y))
		}
	}
	var b bytes.Buffer
	if err := gif.Encode(&b, p, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func grey(w, h int) *image.Gray {
	m := image.NewGray(image.Rect(0, 0, w, h))
	for i := range m.Pix {
		m.Pix[i] = uint8(i % 251)
	}
	return m
}

// gifWithSmallFrame is a 100×80 GIF whose first frame covers only (10,10)-(50,50).
func gifWithSmallFrame(t testing.TB) []byte {
	t.Helper()
	frame := image.NewPaletted(image.Rect(10, 10, 50, 50), palette.Plan9)
	for i := range frame.Pix {
		frame.Pix[i] = uint8(i % 200)
	}
	var b bytes.Buffer
	err := gif.EncodeAll(&b, &gif.GIF{
		Image:  []*image.Paletted{frame},
		Delay:  []int{0},
		Config: image.Config{ColorModel: frame.Palette, Width: 100, Height: 80},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// bitWriter writes bits least-significant first, as VP8L does.
type bitWriter struct {
	buf   []byte
	acc   uint64
	nbits uint
}

func (w *bitWriter) write(v uint64, n uint) {
	w.acc |= v << w.nbits
	w.nbits += n
	for w.nbits >= 8 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc >>= 8
		w.nbits -= 8
	}
}

func (w *bitWriter) bytes() []byte {
	if w.nbits > 0 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc, w.nbits = 0, 0
	}
	return w.buf
}

// solidWebP writes a lossless (VP8L) WebP of w×h pixels all of colour c, by hand: the
// webp package only decodes. Every prefix code is a "simple" code of one symbol, which
// takes zero bits per pixel, so the pixel data is empty.
func solidWebP(w, h int, c color.NRGBA) []byte {
	var bw bitWriter
	bw.write(0x2f, 8) // VP8L signature
	bw.write(uint64(w-1), 14)
	bw.write(uint64(h-1), 14)
	alpha := uint64(0)
	if c.A != 255 {
		alpha = 1
	}
	bw.write(alpha, 1)
	bw.write(0, 3)                                       // version
	bw.write(0, 1)                                       // no transform
	bw.write(0, 1)                                       // no colour cache
	bw.write(0, 1)                                       // no meta prefix codes
	for _, sym := range []uint8{c.G, c.R, c.B, c.A, 0} { // green, red, blue, alpha, distance
		bw.write(1, 1) // simple code
		bw.write(0, 1) // one symbol
		bw.write(1, 1) // 8-bit symbol
		bw.write(uint64(sym), 8)
	}
	data := bw.bytes()
	chunk := append([]byte("VP8L"), binary.LittleEndian.AppendUint32(nil, uint32(len(data)))...)
	chunk = append(chunk, data...)
	if len(data)%2 == 1 {
		chunk = append(chunk, 0)
	}
	out := append([]byte("RIFF"), binary.LittleEndian.AppendUint32(nil, uint32(4+len(chunk)))...)
	out = append(out, "WEBP"...)
	return append(out, chunk...)
}

// pngHeader is a PNG signature and a valid IHDR chunk (8-bit RGBA) claiming w×h, and nothing else.
func pngHeader(w, h uint32) []byte {
	ihdr := []byte("IHDR")
	ihdr = binary.BigEndian.AppendUint32(ihdr, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, 8, 6, 0, 0, 0)
	out := []byte("\x89PNG\r\n\x1a\n")
	out = binary.BigEndian.AppendUint32(out, 13)
	out = append(out, ihdr...)
	out = binary.BigEndian.AppendUint32(out, crc32.ChecksumIEEE(ihdr))
	// An IDAT that would go on forever: the decoder must never get here.
	out = binary.BigEndian.AppendUint32(out, 1<<30)
	return append(out, "IDAT"...)
}

// withOrientation inserts an EXIF APP1 segment with the given orientation after the SOI.
func withOrientation(jpg []byte, o uint16, bo binary.AppendByteOrder) []byte {
	tiff := []byte("MM")
	if bo == binary.AppendByteOrder(binary.LittleEndian) {
		tiff = []byte("II")
	}
	tiff = bo.AppendUint16(tiff, 42)
	tiff = bo.AppendUint32(tiff, 8)
	tiff = bo.AppendUint16(tiff, 2) // two entries
	// ImageDescription first, so the parser has to walk.
	tiff = bo.AppendUint16(tiff, 0x010e)
	tiff = bo.AppendUint16(tiff, 2)
	tiff = bo.AppendUint32(tiff, 1)
	tiff = append(tiff, 0, 0, 0, 0)
	tiff = bo.AppendUint16(tiff, 0x0112)
	tiff = bo.AppendUint16(tiff, 3)
	tiff = bo.AppendUint32(tiff, 1)
	tiff = bo.AppendUint16(tiff, o)
	tiff = append(tiff, 0, 0)
	tiff = bo.AppendUint32(tiff, 0) // no next IFD
	seg := append([]byte("Exif\x00\x00"), tiff...)
	out := append([]byte{}, jpg[:2]...)
	out = append(out, 0xff, 0xe1)
	out = binary.BigEndian.AppendUint16(out, uint16(len(seg)+2))
	out = append(out, seg...)
	return append(out, jpg[2:]...)
}

func TestProbe(t *testing.T) {
	opaque := testImage(40, 30, false)
	jpg := encodeJPEG(t, opaque)
	tests := []struct {
		name       string
		data       []byte
		wantType   string
		wantW      int
		wantH      int
		wantErr    error
		wantNotErr error
	}{
		{name: "png", data: encodePNG(t, opaque), wantType: "image/png", wantW: 40, wantH: 30},
		{name: "jpeg", data: jpg, wantType: "image/jpeg", wantW: 40, wantH: 30},
		{name: "jpeg rotated 90", data: withOrientation(jpg, 6, binary.BigEndian), wantType: "image/jpeg", wantW: 30, wantH: 40},
		{name: "jpeg mirrored", data: withOrientation(jpg, 2, binary.LittleEndian), wantType: "image/jpeg", wantW: 40, wantH: 30},
		{name: "gif", data: encodeGIF(t, opaque), wantType: "image/gif", wantW: 40, wantH: 30},
		{name: "webp lossless", data: solidWebP(3, 2, color.NRGBA{10, 20, 30, 255}), wantType: "image/webp", wantW: 3, wantH: 2},
		{name: "huge png header", data: pngHeader(100000, 100000), wantType: "image/png", wantW: 100000, wantH: 100000},
		{name: "empty", data: nil, wantErr: ErrUnsupported},
		{name: "text", data: []byte("hello, this is not an image at all"), wantErr: ErrUnsupported},
		{name: "svg", data: []byte(`<svg xmlns="http://www.w3.org/2000/svg"/>`), wantErr: ErrUnsupported},
		{name: "png signature only", data: []byte("\x89PNG\r\n\x1a\n"), wantErr: ErrUnsupported},
		{name: "jpeg truncated header", data: jpg[:20], wantErr: ErrUnsupported},
		{name: "png zero width", data: pngHeader(0, 10), wantErr: ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct, w, h, err := Probe(bytes.NewReader(tt.data))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ct != tt.wantType || w != tt.wantW || h != tt.wantH {
				t.Fatalf("got %s %dx%d, want %s %dx%d", ct, w, h, tt.wantType, tt.wantW, tt.wantH)
			}
		})
	}
}

func TestMake(t *testing.T) {
	land := testImage(400, 300, false)
	tests := []struct {
		name     string
		data     []byte
		size     Size
		wantW    int
		wantH    int
		wantType string
	}{
		{"jpeg scale fits width", encodeJPEG(t, land), Size{100, 100, Scale}, 100, 75, "image/jpeg"},
		{"jpeg scale fits height", encodeJPEG(t, land), Size{200, 60, Scale}, 80, 60, "image/jpeg"},
		{"jpeg scale never upscales", encodeJPEG(t, land), Size{800, 600, Scale}, 400, 300, "image/jpeg"},
		{"jpeg scale box bigger in one dim", encodeJPEG(t, land), Size{1000, 150, Scale}, 200, 150, "image/jpeg"},
		{"jpeg crop exact", encodeJPEG(t, land), Size{96, 96, Crop}, 96, 96, "image/jpeg"},
		{"jpeg crop wide", encodeJPEG(t, land), Size{320, 100, Crop}, 320, 100, "image/jpeg"},
		{"jpeg crop no upscale", encodeJPEG(t, land), Size{800, 600, Crop}, 400, 300, "image/jpeg"},
		{"jpeg crop too tall keeps aspect", encodeJPEG(t, land), Size{200, 400, Crop}, 150, 300, "image/jpeg"},
		{"jpeg crop square of smaller", encodeJPEG(t, testImage(50, 200, false)), Size{96, 96, Crop}, 50, 50, "image/jpeg"},
		{"jpeg big reduction", encodeJPEG(t, testImage(1600, 1200, false)), Size{32, 32, Crop}, 32, 32, "image/jpeg"},
		{"jpeg grey big reduction", encodeJPEG(t, grey(1200, 900)), Size{96, 96, Scale}, 96, 72, "image/jpeg"},
		{"png grey big reduction", encodePNG(t, grey(1200, 900)), Size{96, 96, Crop}, 96, 96, "image/png"},
		{"png scale", encodePNG(t, land), Size{32, 32, Scale}, 32, 24, "image/png"},
		{"png with alpha crop", encodePNG(t, testImage(300, 300, true)), Size{32, 32, Crop}, 32, 32, "image/png"},
		{"png big reduction", encodePNG(t, testImage(1000, 800, true)), Size{96, 96, Crop}, 96, 96, "image/png"},
		{"png tiny", encodePNG(t, testImage(1, 1, false)), Size{32, 32, Crop}, 1, 1, "image/png"},
		{"png extreme aspect", encodePNG(t, testImage(2000, 2, false)), Size{320, 240, Scale}, 320, 1, "image/png"},
		{"gif scale", encodeGIF(t, land), Size{96, 96, Scale}, 96, 72, "image/png"},
		{"gif first frame smaller than screen", gifWithSmallFrame(t), Size{50, 50, Scale}, 50, 40, "image/png"},
		{"webp opaque", solidWebP(20, 10, color.NRGBA{200, 100, 50, 255}), Size{10, 10, Scale}, 10, 5, "image/jpeg"},
		{"webp alpha", solidWebP(2, 2, color.NRGBA{200, 100, 50, 100}), Size{32, 32, Crop}, 2, 2, "image/png"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			th, err := Make(bytes.NewReader(tt.data), tt.size, 0)
			if err != nil {
				t.Fatal(err)
			}
			if th.Width != tt.wantW || th.Height != tt.wantH || th.ContentType != tt.wantType {
				t.Fatalf("got %s %dx%d, want %s %dx%d", th.ContentType, th.Width, th.Height, tt.wantType, tt.wantW, tt.wantH)
			}
			// The bytes decode, with the format and size claimed.
			m, format, err := image.Decode(bytes.NewReader(th.Data))
			if err != nil {
				t.Fatalf("thumbnail does not decode: %v", err)
			}
			if "image/"+format != th.ContentType || m.Bounds().Dx() != th.Width || m.Bounds().Dy() != th.Height {
				t.Fatalf("thumbnail is %s %v, claims %s %dx%d", format, m.Bounds(), th.ContentType, th.Width, th.Height)
			}
		})
	}
}

// TestMakeColours checks the pixels survive: a solid colour stays that colour through the
// box filter, Catmull-Rom, and each encoder.
func TestMakeColours(t *testing.T) {
	solid := image.NewNRGBA(image.Rect(0, 0, 900, 700))
	for i := 0; i < len(solid.Pix); i += 4 {
		copy(solid.Pix[i:], []byte{200, 40, 90, 255})
	}
	for _, tt := range []struct {
		name string
		data []byte
		tol  int
	}{
		{"png", encodePNG(t, solid), 1},
		{"jpeg", encodeJPEG(t, solid), 6},
		{"webp", solidWebP(900, 700, color.NRGBA{200, 40, 90, 255}), 6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			th, err := Make(bytes.NewReader(tt.data), Size{64, 64, Crop}, 0)
			if err != nil {
				t.Fatal(err)
			}
			m, _, err := image.Decode(bytes.NewReader(th.Data))
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []image.Point{{0, 0}, {32, 32}, {63, 63}} {
				r, g, b, _ := m.At(p.X, p.Y).RGBA()
				if !near(int(r>>8), 200, tt.tol) || !near(int(g>>8), 40, tt.tol) || !near(int(b>>8), 90, tt.tol) {
					t.Fatalf("pixel %v = %d,%d,%d, want about 200,40,90", p, r>>8, g>>8, b>>8)
				}
			}
		})
	}
}

func near(a, b, tol int) bool { return a-b <= tol && b-a <= tol }

// TestMakeOrientation checks EXIF orientation: the source is 80×40, red on the left half
// and blue on the right; orientation 6 shows it rotated 90° clockwise (red on top), 8
// anticlockwise (blue on top), 3 upside down (blue on the left).
func TestMakeOrientation(t *testing.T) {
	src := image.NewRGBA(image.Rect(0, 0, 80, 40))
	for y := range 40 {
		for x := range 80 {
			c := color.RGBA{255, 0, 0, 255}
			if x >= 40 {
				c = color.RGBA{0, 0, 255, 255}
			}
			src.SetRGBA(x, y, c)
		}
	}
	jpg := encodeJPEG(t, src)
	red := func(c color.Color) bool { r, _, b, _ := c.RGBA(); return r > 0xc000 && b < 0x4000 }
	blue := func(c color.Color) bool { r, _, b, _ := c.RGBA(); return b > 0xc000 && r < 0x4000 }
	tests := []struct {
		o          uint16
		w, h       int
		a, b       image.Point // a must be red, b blue
		byteOrders binary.AppendByteOrder
	}{
		{1, 80, 40, image.Pt(10, 20), image.Pt(70, 20), binary.BigEndian},
		{3, 80, 40, image.Pt(70, 20), image.Pt(10, 20), binary.LittleEndian},
		{6, 40, 80, image.Pt(20, 10), image.Pt(20, 70), binary.BigEndian},
		{8, 40, 80, image.Pt(20, 70), image.Pt(20, 10), binary.LittleEndian},
		{5, 40, 80, image.Pt(20, 10), image.Pt(20, 70), binary.BigEndian},
		{7, 40, 80, image.Pt(20, 70), image.Pt(20, 10), binary.BigEndian},
	}
	for _, tt := range tests {
		for _, size := range []Size{{200, 200, Scale}, {20, 20, Scale}} {
			th, err := Make(bytes.NewReader(withOrientation(jpg, tt.o, tt.byteOrders)), size, 0)
			if err != nil {
				t.Fatal(err)
			}
			m, err := jpeg.Decode(bytes.NewReader(th.Data))
			if err != nil {
				t.Fatal(err)
			}
			f := float64(th.Width) / float64(tt.w) // the 20×20 box shrinks it
			if th.Height != int(float64(tt.h)*f+0.5) || (size.Width == 200 && th.Width != tt.w) {
				t.Fatalf("orientation %d %v: size %dx%d, want %dx%d scaled", tt.o, size, th.Width, th.Height, tt.w, tt.h)
			}
			at := func(p image.Point) color.Color { return m.At(int(float64(p.X)*f), int(float64(p.Y)*f)) }
			if !red(at(tt.a)) || !blue(at(tt.b)) {
				t.Fatalf("orientation %d %v: %v is %v, %v is %v", tt.o, size, tt.a, at(tt.a), tt.b, at(tt.b))
			}
		}
	}
}

// TestMakeBomb checks a header claiming a huge canvas is refused before any large allocation.
func TestMakeBomb(t *testing.T) {
	for _, tt := range []struct {
		name string
		data []byte
		max  int64
	}{
		{"100000x100000 png", pngHeader(100000, 100000), 0},
		{"60000x60000 png", pngHeader(60000, 60000), 0},
		{"over a small limit", pngHeader(1001, 1000), 1_000_000},
		{"400x300 jpeg over a 100000 limit", encodeJPEG(t, testImage(400, 300, false)), 100_000},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			_, err := Make(bytes.NewReader(tt.data), Size{96, 96, Crop}, tt.max)
			elapsed := time.Since(start)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("err = %v, want ErrTooLarge", err)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
				t.Fatalf("allocated %d bytes refusing it", alloc)
			}
			if elapsed > time.Second {
				t.Fatalf("took %v", elapsed)
			}
		})
	}
	allocs := testing.AllocsPerRun(10, func() {
		_, _ = Make(bytes.NewReader(pngHeader(100000, 100000)), Size{96, 96, Crop}, 0)
	})
	if allocs > 50 {
		t.Fatalf("%v allocations refusing a bomb", allocs)
	}
}

// errReader fails after yielding some bytes.
type errReader struct {
	data []byte
	err  error
}

func (r *errReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// TestMakeBroken checks corrupt and truncated input gives an error, never a panic, and that a
// failing reader's error is passed on rather than reported as an unsupported image.
func TestMakeBroken(t *testing.T) {
	big := testImage(300, 200, true)
	inputs := map[string][]byte{
		"png":  encodePNG(t, big),
		"jpeg": encodeJPEG(t, big),
		"gif":  encodeGIF(t, big),
		"webp": solidWebP(30, 20, color.NRGBA{1, 2, 3, 4}),
	}
	for name, data := range inputs {
		for _, cut := range []int{1, 8, 12, 16, 30, 60, len(data) / 3, len(data) / 2, len(data) - 3} {
			if cut >= len(data) {
				continue
			}
			_, err := Make(bytes.NewReader(data[:cut]), Size{32, 32, Crop}, 0)
			if !errors.Is(err, ErrUnsupported) {
				t.Errorf("%s cut at %d: err = %v, want ErrUnsupported", name, cut, err)
			}
		}
		// Flip bytes through the data: any error is fine, a panic is not.
		for i := 0; i < len(data); i += max(1, len(data)/97) {
			bad := bytes.Clone(data)
			bad[i] ^= 0x5a
			_, _ = Make(bytes.NewReader(bad), Size{32, 32, Scale}, 0)
			_, _, _, _ = Probe(bytes.NewReader(bad))
		}
		boom := errors.New("disk on fire")
		for _, cut := range []int{0, 10, len(data) / 2} {
			_, err := Make(&errReader{data: data[:cut], err: boom}, Size{32, 32, Crop}, 0)
			if !errors.Is(err, boom) || errors.Is(err, ErrUnsupported) {
				t.Errorf("%s reader failing at %d: err = %v, want the reader's error", name, cut, err)
			}
		}
	}
	if _, err := Make(bytes.NewReader(inputs["png"]), Size{0, 32, Crop}, 0); err == nil {
		t.Error("a zero size was accepted")
	}
	if _, err := Make(bytes.NewReader(inputs["png"]), Size{32, 32, "stretch"}, 0); err == nil {
		t.Error("an unknown method was accepted")
	}
}

// TestWebPFixture checks the hand-written WebP is what the webp package decodes.
func TestWebPFixture(t *testing.T) {
	m, err := webp.Decode(bytes.NewReader(solidWebP(3, 2, color.NRGBA{10, 20, 30, 40})))
	if err != nil {
		t.Fatal(err)
	}
	if got := color.NRGBAModel.Convert(m.At(2, 1)).(color.NRGBA); got != (color.NRGBA{10, 20, 30, 40}) || m.Bounds().Dx() != 3 {
		t.Fatalf("decoded %v %v", m.Bounds(), got)
	}
}

func TestChoose(t *testing.T) {
	defaults := []Size{
		{32, 32, Crop}, {96, 96, Crop}, {320, 240, Scale}, {640, 480, Scale}, {800, 600, Scale},
	}
	tests := []struct {
		name  string
		sizes []Size
		w, h  int
		m     Method
		want  Size
		ok    bool
	}{
		{"crop exact", defaults, 96, 96, Crop, Size{96, 96, Crop}, true},
		{"crop smallest big enough", defaults, 30, 30, Crop, Size{32, 32, Crop}, true},
		{"crop none big enough takes largest", defaults, 200, 200, Crop, Size{96, 96, Crop}, true},
		{"crop prefers aspect", []Size{{640, 480, Crop}, {200, 200, Crop}}, 100, 100, Crop, Size{200, 200, Crop}, true},
		{"crop big beats aspect", []Size{{640, 480, Crop}, {50, 50, Crop}}, 100, 100, Crop, Size{640, 480, Crop}, true},
		{"crop ignores scale sizes", []Size{{800, 600, Scale}}, 32, 32, Crop, Size{}, false},
		{"scale smallest big enough", defaults, 32, 32, Scale, Size{320, 240, Scale}, true},
		{"scale between", defaults, 400, 300, Scale, Size{640, 480, Scale}, true},
		{"scale either dimension is enough", defaults, 700, 100, Scale, Size{320, 240, Scale}, true},
		{"scale actual dims of a wide image", []Size{{320, 32, Scale}, {640, 64, Scale}}, 100, 100, Scale, Size{320, 32, Scale}, true},
		{"scale none big enough takes largest", defaults, 1000, 1000, Scale, Size{800, 600, Scale}, true},
		{"scale ignores crop sizes", []Size{{32, 32, Crop}}, 32, 32, Scale, Size{}, false},
		{"empty", nil, 32, 32, Scale, Size{}, false},
		{"bad request", defaults, 0, 32, Scale, Size{}, false},
		{"tie keeps first", []Size{{100, 100, Scale}, {100, 100, Scale}}, 10, 10, Scale, Size{100, 100, Scale}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Choose(tt.sizes, tt.w, tt.h, tt.m)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("Choose = %v %v, want %v %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func BenchmarkMake(b *testing.B) {
	photo := image.NewYCbCr(image.Rect(0, 0, 4000, 3000), image.YCbCrSubsampleRatio420)
	// Smooth gradients with a little texture: compresses like a photo (a few MB), not like noise.
	for y := range 3000 {
		for x := range 4000 {
			photo.Y[y*photo.YStride+x] = uint8(x/20+y/15) + uint8((x*y)%7)
		}
	}
	for i := range photo.Cb {
		photo.Cb[i], photo.Cr[i] = uint8(100+i%40), uint8(140-i%30)
	}
	data := encodeJPEG(b, photo)
	b.Logf("source JPEG: %d bytes", len(data))
	for _, s := range []Size{{640, 480, Scale}, {96, 96, Crop}} {
		b.Run(fmt.Sprintf("%s-%dx%d", s.Method, s.Width, s.Height), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := Make(bytes.NewReader(data), s, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	decoded, err := jpeg.Decode(bytes.NewReader(data))
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range []Size{{640, 480, Scale}, {96, 96, Crop}} {
		b.Run(fmt.Sprintf("resize-only-%s-%dx%d", s.Method, s.Width, s.Height), func(b *testing.B) {
			b.ReportAllocs()
			crop, out := geometry(4000, 3000, s)
			for b.Loop() {
				resize(decoded, 1, crop, out)
			}
		})
	}
	b.Run("decode-only", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := jpeg.Decode(bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
