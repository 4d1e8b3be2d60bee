// Package thumbnail reads image headers and makes thumbnails in pure Go: JPEG, PNG, GIF
// and WebP in, JPEG or PNG out. Only mediaapi and its subpackages import it.
package thumbnail

import (
	"errors"
	"io"
)

// ErrTooLarge is returned when an image's header declares more pixels than allowed.
var ErrTooLarge = errors.New("thumbnail: image has too many pixels")

// ErrUnsupported is returned for data that is not an image of a supported format.
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

// Probe reads only the header of an image and returns its content type and dimensions;
// ErrUnsupported for anything else.
func Probe(r io.Reader) (contentType string, width, height int, err error) {
	return "", 0, 0, ErrUnsupported // being built
}

// Make decodes the image in r, once its header shows at most maxPixels pixels (ErrTooLarge
// otherwise), and returns a thumbnail of size s.
func Make(r io.Reader, s Size, maxPixels int64) (Thumbnail, error) {
	return Thumbnail{}, ErrUnsupported // being built
}

// Choose picks, from the pre-generated sizes, the one to serve for a request of w×h with
// method m.
func Choose(sizes []Size, w, h int, m Method) (Size, bool) {
	return Size{}, false // being built
}
