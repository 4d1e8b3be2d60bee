// Package thumbnail reads image headers and makes thumbnails in pure Go: JPEG, PNG, GIF
// and WebP in, JPEG or PNG out. Only mediaapi and its subpackages import it.
//
// Every entry point reads the image header first and refuses an image whose declared
// width×height exceeds the caller's limit before the decoder allocates its pixels, so a
// small file claiming a huge canvas (a "decompression bomb") costs only a few kilobytes.
package thumbnail

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"

	"golang.org/x/image/draw"
	"golang.org/x/image/webp"
)

// ErrTooLarge is returned when an image's header declares more pixels than allowed.
var ErrTooLarge = errors.New("thumbnail: image has too many pixels")

// ErrUnsupported is returned for data that is not an image of a supported format,
// including a supported format whose header or pixel data is corrupt or truncated.
var ErrUnsupported = errors.New("thumbnail: not a supported image")

// Method is how a thumbnail fits its size.
type Method string

// The two methods of the spec.
const (
	// Crop fills the size exactly: scale to cover, then crop the centre.
	Crop Method = "crop"
	// Scale fits inside the size, keeping the aspect ratio.
	Scale Method = "scale"
)

// Size is a thumbnail size and method.
type Size struct {
	Width, Height int
	Method        Method
}

// Thumbnail is one made thumbnail.
type Thumbnail struct {
	Data          []byte
	ContentType   string
	Width, Height int
}

// DefaultMaxPixels is the pixel limit Make applies when its caller passes maxPixels <= 0
// (Synapse's default max_image_pixels).
const DefaultMaxPixels = 32_000_000

// maxSide is the largest width or height accepted whatever maxPixels says: JPEG cannot
// exceed it and WebP stops at 16384, so anything larger is a crafted header.
const maxSide = 1 << 16

// maxHeader caps the bytes buffered while reading a header (JPEG APPn segments before the
// frame header: EXIF, ICC profiles, XMP). A header longer than this is refused.
const maxHeader = 4 << 20

// jpegQuality is the quality of JPEG thumbnails.
const jpegQuality = 80

// format is a supported input format.
type format int

const (
	formatJPEG format = iota + 1
	formatPNG
	formatGIF
	formatWebP
)

func (f format) contentType() string {
	switch f {
	case formatJPEG:
		return "image/jpeg"
	case formatPNG:
		return "image/png"
	case formatGIF:
		return "image/gif"
	case formatWebP:
		return "image/webp"
	}
	return ""
}

// sniff identifies the format from the first bytes of the data (at most 12 are needed).
func sniff(b []byte) format {
	switch {
	case len(b) >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff:
		return formatJPEG
	case len(b) >= 8 && string(b[:8]) == "\x89PNG\r\n\x1a\n":
		return formatPNG
	case len(b) >= 6 && (string(b[:6]) == "GIF87a" || string(b[:6]) == "GIF89a"):
		return formatGIF
	case len(b) >= 12 && string(b[:4]) == "RIFF" && string(b[8:12]) == "WEBP":
		return formatWebP
	}
	return 0
}

// recorder keeps a copy of every byte read through it (up to maxHeader), so the bytes a
// header parser consumed can be replayed to the full decoder.
type recorder struct {
	r        io.Reader
	buf      []byte
	overflow bool
	err      error // the first read error other than io.EOF
}

func (rc *recorder) Read(p []byte) (int, error) {
	n, err := rc.r.Read(p)
	if len(rc.buf)+n > maxHeader {
		rc.overflow = true
	} else {
		rc.buf = append(rc.buf, p[:n]...)
	}
	if err != nil && err != io.EOF && rc.err == nil {
		rc.err = err
	}
	return n, err
}

// header is what readHeader learns about an image.
type header struct {
	format      format
	width       int // as stored, before EXIF orientation
	height      int
	orientation int // EXIF orientation 1..8 (1 for non-JPEG or no tag)
}

// readHeader reads the image header from r. It returns the header and a reader that yields
// the complete data again from the start (the buffered header bytes, then the rest of r).
func readHeader(r io.Reader) (header, *replay, error) {
	rec := &recorder{r: r}
	br := bufio.NewReaderSize(rec, 4096)
	fail := func(what string, err error) (header, *replay, error) {
		if rec.err != nil {
			return header{}, nil, fmt.Errorf("thumbnail: read %s: %w", what, rec.err)
		}
		if rec.overflow {
			return header{}, nil, fmt.Errorf("%w: header longer than %d bytes", ErrUnsupported, maxHeader)
		}
		return header{}, nil, fmt.Errorf("%w: %s: %w", ErrUnsupported, what, err)
	}
	magic, err := br.Peek(12)
	if rec.err != nil || (err != nil && len(magic) < 3) {
		return fail("magic", err)
	}
	h := header{format: sniff(magic), orientation: 1}
	var cfg image.Config
	switch h.format {
	case formatJPEG:
		cfg, err = jpeg.DecodeConfig(br)
	case formatPNG:
		cfg, err = png.DecodeConfig(br)
	case formatGIF:
		cfg, err = gif.DecodeConfig(br)
	case formatWebP:
		cfg, err = webp.DecodeConfig(br)
	default:
		return header{}, nil, fmt.Errorf("%w: unknown format", ErrUnsupported)
	}
	if err != nil || rec.overflow {
		return fail(h.format.contentType()+" header", err)
	}
	h.width, h.height = cfg.Width, cfg.Height
	if h.width <= 0 || h.height <= 0 {
		return header{}, nil, fmt.Errorf("%w: %s declares %dx%d", ErrUnsupported, h.format.contentType(), h.width, h.height)
	}
	if h.format == formatJPEG {
		h.orientation = exifOrientation(rec.buf)
	}
	mark := &markReader{r: r}
	return h, &replay{Reader: io.MultiReader(bytes.NewReader(rec.buf), mark), mark: mark}, nil
}

// replay yields an image's data from its start after readHeader.
type replay struct {
	io.Reader
	mark *markReader
}

// markReader wraps the caller's reader and keeps its first error other than io.EOF, so
// decode can tell an I/O failure from corrupt data (some decoders flatten the errors
// they pass on into text).
type markReader struct {
	r   io.Reader
	err error
}

func (m *markReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	if err != nil && err != io.EOF && m.err == nil {
		m.err = err
	}
	return n, err
}

// displaySize is the size of the image as shown, after its EXIF orientation.
func (h header) displaySize() (int, int) {
	if h.orientation >= 5 {
		return h.height, h.width
	}
	return h.width, h.height
}

// Probe reads only the header of an image and returns its content type and dimensions;
// ErrUnsupported (wrapped) for anything that is not a JPEG, PNG, GIF or WebP image with a
// valid header. The dimensions are those of the image as displayed: a JPEG whose EXIF
// orientation rotates it by 90° reports its width and height swapped, as Make's output is.
// A read error from r is returned wrapped.
func Probe(r io.Reader) (contentType string, width, height int, err error) {
	h, _, err := readHeader(r)
	if err != nil {
		return "", 0, 0, err
	}
	w, ht := h.displaySize()
	return h.format.contentType(), w, ht, nil
}

// Make decodes the image in r, once its header shows at most maxPixels pixels (ErrTooLarge
// otherwise; maxPixels <= 0 means DefaultMaxPixels), and returns a thumbnail of size s.
//
// Crop fills s exactly (scale to cover, crop the centre); when the source is smaller than
// s in either dimension it is not upscaled: the centre of the source is cropped to the
// aspect ratio of s at source scale. Scale fits inside s keeping the aspect ratio and
// never upscales. A JPEG's EXIF orientation is applied. GIFs give their first frame.
// The thumbnail is a PNG when the source is a PNG or GIF or has transparency, a JPEG
// otherwise. Errors: ErrTooLarge, ErrUnsupported (unknown format, corrupt or truncated
// data; wrapped), or a wrapped read error from r.
func Make(r io.Reader, s Size, maxPixels int64) (Thumbnail, error) {
	if s.Width <= 0 || s.Height <= 0 || (s.Method != Crop && s.Method != Scale) {
		return Thumbnail{}, fmt.Errorf("thumbnail: invalid size %dx%d %q", s.Width, s.Height, s.Method)
	}
	if maxPixels <= 0 {
		maxPixels = DefaultMaxPixels
	}
	h, data, err := readHeader(r)
	if err != nil {
		return Thumbnail{}, err
	}
	if h.width > maxSide || h.height > maxSide || int64(h.width)*int64(h.height) > maxPixels {
		return Thumbnail{}, fmt.Errorf("%w: %dx%d, limit %d", ErrTooLarge, h.width, h.height, maxPixels)
	}

	src, err := decode(h, data)
	if err != nil {
		return Thumbnail{}, err
	}
	if b := src.Bounds(); b.Dx() != h.width || b.Dy() != h.height {
		return Thumbnail{}, fmt.Errorf("%w: decoded %v, header said %dx%d", ErrUnsupported, b.Size(), h.width, h.height)
	}

	dw, dh := h.displaySize()
	crop, out := geometry(dw, dh, s)
	dst := resize(src, h.orientation, crop, out)

	usePNG := h.format == formatPNG || h.format == formatGIF || (h.format == formatWebP && !opaque(src))
	var buf bytes.Buffer
	t := Thumbnail{Width: out.X, Height: out.Y}
	if usePNG {
		t.ContentType = "image/png"
		err = (&png.Encoder{CompressionLevel: png.DefaultCompression}).Encode(&buf, dst)
	} else {
		t.ContentType = "image/jpeg"
		err = jpeg.Encode(&buf, dst, &jpeg.Options{Quality: jpegQuality})
	}
	if err != nil {
		return Thumbnail{}, fmt.Errorf("thumbnail: encode %s: %w", t.ContentType, err)
	}
	t.Data = buf.Bytes()
	return t, nil
}

// decode decodes the full image (the first frame of a GIF, drawn on its logical screen).
func decode(h header, r *replay) (image.Image, error) {
	var (
		m   image.Image
		err error
	)
	switch h.format {
	case formatJPEG:
		m, err = jpeg.Decode(r)
	case formatPNG:
		m, err = png.Decode(r)
	case formatGIF:
		m, err = gif.Decode(r)
	case formatWebP:
		m, err = webp.Decode(r)
	}
	if err != nil {
		if r.mark.err != nil {
			return nil, fmt.Errorf("thumbnail: read image: %w", r.mark.err)
		}
		return nil, fmt.Errorf("%w: decode %s: %w", ErrUnsupported, h.format.contentType(), err)
	}
	if h.format == formatGIF && m.Bounds() != image.Rect(0, 0, h.width, h.height) {
		// A first frame smaller than the logical screen: place it on a transparent canvas.
		canvas := image.NewRGBA(image.Rect(0, 0, h.width, h.height))
		draw.Draw(canvas, m.Bounds(), m, m.Bounds().Min, draw.Src)
		m = canvas
	}
	return m, nil
}

// opaque reports whether every pixel of m is fully opaque.
func opaque(m image.Image) bool {
	if o, ok := m.(interface{ Opaque() bool }); ok {
		return o.Opaque()
	}
	return false
}

// geometry returns, for a source of w×h (display orientation) and the size s, the centred
// rectangle of the source to use and the output size.
func geometry(w, h int, s Size) (image.Rectangle, image.Point) {
	full := image.Rect(0, 0, w, h)
	if s.Method == Scale {
		if w <= s.Width && h <= s.Height {
			return full, image.Pt(w, h)
		}
		// Fit: the dimension with the smaller ratio decides. Compare s.W/w and s.H/h exactly.
		if int64(s.Width)*int64(h) <= int64(s.Height)*int64(w) {
			return full, image.Pt(s.Width, max(1, int(roundDiv(int64(h)*int64(s.Width), int64(w)))))
		}
		return full, image.Pt(max(1, int(roundDiv(int64(w)*int64(s.Height), int64(h)))), s.Height)
	}
	// Crop: the largest centred rectangle of the source with the aspect ratio of s.
	cw, ch := w, h
	if int64(w)*int64(s.Height) > int64(h)*int64(s.Width) {
		cw = max(1, min(w, int(roundDiv(int64(h)*int64(s.Width), int64(s.Height))))) // source is wider
	} else {
		ch = max(1, min(h, int(roundDiv(int64(w)*int64(s.Height), int64(s.Width))))) // source is taller
	}
	x0, y0 := (w-cw)/2, (h-ch)/2
	rect := image.Rect(x0, y0, x0+cw, y0+ch)
	if cw >= s.Width && ch >= s.Height {
		return rect, image.Pt(s.Width, s.Height)
	}
	return rect, image.Pt(cw, ch) // smaller than s: keep the source scale
}

// roundDiv returns a/b rounded to the nearest integer, for a, b > 0.
func roundDiv(a, b int64) int64 { return (2*a + b) / (2 * b) }

// Choose picks, from the sizes of the thumbnails already made for one image, the one to
// serve for a request of w×h with method m; false when none has method m (the caller may
// then make one, or refuse). It follows Synapse's selection:
//
//   - Crop considers crop sizes. Among those at least as big as the request in both
//     dimensions it takes the one whose aspect ratio is closest to w:h, then the smallest;
//     when none is that big, the closest aspect ratio, then the largest.
//   - Scale considers scale sizes and takes the smallest (by area) that is at least as big
//     as the request in either dimension, else the largest. Either dimension is enough
//     because a scaled thumbnail touches its box on one side: when sizes are the actual
//     dimensions of made scale thumbnails (Thumbnail.Width/Height) of one source, one
//     whose width or height reaches the request holds at least the detail a fresh w×h
//     scale would. Ties go to the earlier size.
func Choose(sizes []Size, w, h int, m Method) (Size, bool) {
	if w <= 0 || h <= 0 {
		return Size{}, false
	}
	var (
		best          Size
		found, bigger bool // bigger: best reaches the request
		bestAspect    float64
	)
	for _, s := range sizes {
		if s.Method != m || s.Width <= 0 || s.Height <= 0 {
			continue
		}
		area := int64(s.Width) * int64(s.Height)
		bestArea := int64(best.Width) * int64(best.Height)
		switch m {
		case Crop:
			big := s.Width >= w && s.Height >= h
			aspect := aspectDistance(s.Width, s.Height, w, h)
			switch {
			case !found, big && !bigger:
			case big != bigger:
				continue
			case aspect < bestAspect:
			case aspect > bestAspect:
				continue
			case big && area < bestArea, !big && area > bestArea:
			default:
				continue
			}
			best, found, bigger, bestAspect = s, true, big, aspect
		case Scale:
			big := s.Width >= w || s.Height >= h
			switch {
			case !found, big && !bigger:
			case big != bigger:
				continue
			case big && area < bestArea, !big && area > bestArea:
			default:
				continue
			}
			best, found, bigger = s, true, big
		}
	}
	return best, found
}

// aspectDistance is how far the aspect ratio a:b is from c:d, symmetric in wide and tall
// (|ln(a/b) - ln(c/d)|, compared through the ratio of cross products).
func aspectDistance(a, b, c, d int) float64 {
	x, y := float64(a)*float64(d), float64(b)*float64(c)
	if x < y {
		x, y = y, x
	}
	return x / y // 1 when equal; order matches |ln| order
}
