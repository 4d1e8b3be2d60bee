package preview

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
	"golang.org/x/net/html/charset"
)

const (
	// maxKeyLen and maxValueLen bound what one meta tag adds to a preview.
	maxKeyLen   = 256
	maxValueLen = 1024
	// Descriptions are summarised to between minSummary and maxSummary characters.
	minSummary = 200
	maxSummary = 500
)

// parseHTML extracts the OpenGraph object of an HTML page, with Synapse's fallbacks: Twitter
// card tags for missing og: tags, the <title> (or first heading) for og:title, an
// itemprop=image meta, the largest <img> or the favicon for og:image, and the meta
// description (or a summary of the body text) for og:description. og:image is returned as
// written in the page, for the caller to resolve. contentType is the response header,
// consulted for the charset.
func parseHTML(body []byte, contentType string) map[string]any {
	og := map[string]any{}
	if len(bytes.TrimSpace(body)) == 0 {
		return og
	}
	r, err := charset.NewReader(bytes.NewReader(body), contentType)
	if err != nil {
		return og
	}
	doc, err := html.Parse(r)
	if err != nil {
		return og
	}
	s := &scan{og: og, twitter: map[string]string{}}
	s.walk(doc, false, false)

	for k, v := range s.twitter {
		if _, ok := og[k]; !ok {
			og[k] = v
		}
	}
	if _, ok := og["og:title"]; !ok {
		switch {
		case s.title != "":
			og["og:title"] = s.title
		case s.heading != "":
			og["og:title"] = s.heading
		}
	}
	if _, ok := og["og:image"]; !ok {
		switch {
		case s.itempropImage != "":
			og["og:image"] = s.itempropImage
		case s.bestImg != "":
			og["og:image"] = s.bestImg
		case s.favicon != "":
			og["og:image"] = s.favicon
		}
	}
	if d, ok := og["og:description"].(string); ok {
		if sum := summarize([]string{d}); sum != "" {
			og["og:description"] = sum
		} else {
			delete(og, "og:description")
		}
	} else if s.metaDesc != "" {
		og["og:description"] = s.metaDesc
	} else if sum := summarize(s.texts); sum != "" {
		og["og:description"] = sum
	}
	return og
}

// scan collects what parseHTML needs in one walk over the document.
type scan struct {
	og      map[string]any
	twitter map[string]string

	title, heading string
	itempropImage  string
	bestImg        string
	bestArea       float64
	favicon        string
	metaDesc       string
	texts          []string
	textLen        int
}

// walk visits n and its descendants. inBody says n is inside <body>; skip says its text is
// not part of the page's prose (scripts, navigation, headers…).
func (s *scan) walk(n *html.Node, inBody, skip bool) {
	switch n.Type {
	case html.TextNode:
		if inBody && !skip && s.textLen < maxSummary*4 {
			if t := collapse(n.Data); t != "" {
				s.texts = append(s.texts, t)
				s.textLen += len(t)
			}
		}
		return
	case html.ElementNode:
		switch n.DataAtom {
		case atom.Body:
			inBody = true
		case atom.Header, atom.Nav, atom.Aside, atom.Footer, atom.Script, atom.Noscript, atom.Style, atom.Template:
			skip = true
		case atom.Meta:
			s.meta(n)
		case atom.Title:
			if s.title == "" {
				s.title = collapse(text(n))
			}
			return
		case atom.H1, atom.H2, atom.H3:
			if s.heading == "" {
				s.heading = collapse(text(n))
			}
		case atom.Img:
			s.img(n)
		case atom.Link:
			if href := attr(n, "href"); href != "" && s.favicon == "" && strings.Contains(attr(n, "rel"), "icon") {
				s.favicon = href
			}
		}
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		s.walk(c, inBody, skip)
	}
}

// meta records a <meta> tag: og: properties (the first of each wins), twitter: fallbacks,
// itemprop=image and the description.
func (s *scan) meta(n *html.Node) {
	content, hasContent := attrOK(n, "content")
	if !hasContent {
		return
	}
	content = truncate(content, maxValueLen)
	prop := attr(n, "property")
	if prop == "" {
		prop = attr(n, "name")
	}
	switch {
	case strings.HasPrefix(prop, "og:"):
		key := truncate(prop, maxKeyLen)
		if _, ok := s.og[key]; !ok {
			s.og[key] = content
		}
	case strings.HasPrefix(prop, "twitter:") && len(prop) > len("twitter:"):
		key := truncate("og:"+prop[len("twitter:"):], maxKeyLen)
		if _, ok := s.twitter[key]; !ok {
			s.twitter[key] = content
		}
	}
	if content == "" {
		return
	}
	if s.itempropImage == "" && strings.EqualFold(attr(n, "itemprop"), "image") {
		s.itempropImage = content
	}
	if s.metaDesc == "" && strings.EqualFold(attr(n, "name"), "description") {
		s.metaDesc = content
	}
}

// img considers an <img> for og:image: the largest with both dimensions over 10 wins.
func (s *scan) img(n *html.Node) {
	src := attr(n, "src")
	if src == "" {
		return
	}
	w, werr := strconv.ParseFloat(strings.TrimSpace(attr(n, "width")), 64)
	h, herr := strconv.ParseFloat(strings.TrimSpace(attr(n, "height")), 64)
	if werr != nil || herr != nil || w <= 10 || h <= 10 {
		return
	}
	if area := w * h; area > s.bestArea {
		s.bestArea, s.bestImg = area, src
	}
}

func attrOK(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Namespace == "" && a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}

func attr(n *html.Node, key string) string {
	v, _ := attrOK(n, key)
	return v
}

// text returns the text content of n.
func text(n *html.Node) string {
	var b strings.Builder
	var visit func(*html.Node)
	visit = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			visit(c)
		}
	}
	visit(n)
	return b.String()
}

// collapse trims s and turns each run of whitespace into one space.
func collapse(s string) string { return strings.Join(strings.Fields(s), " ") }

// truncate cuts s to at most n bytes without splitting a character.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

var (
	spaces     = regexp.MustCompile(`[\t ]+`)
	paragraphs = regexp.MustCompile(`[\t \r\n]*[\r\n]+`)
	words      = regexp.MustCompile(`\s*\S+`)
)

// summarize joins paragraphs until there are at least minSummary characters, then cuts at a
// word boundary to at most maxSummary, ending with "…" when it cut (Synapse's
// summarize_paragraphs). It returns "" when there is no text.
func summarize(texts []string) string {
	var b strings.Builder
	for _, t := range texts {
		if utf8.RuneCountInString(b.String()) >= minSummary {
			break
		}
		b.WriteString(strings.Join(strings.Fields(t), " "))
		b.WriteString("\n\n")
	}
	desc := strings.TrimSpace(b.String())
	desc = spaces.ReplaceAllString(desc, " ")
	desc = paragraphs.ReplaceAllString(desc, "\n\n")
	if utf8.RuneCountInString(desc) <= maxSummary {
		return desc
	}
	var out strings.Builder
	n := 0
	for _, w := range words.FindAllString(desc, -1) {
		wn := utf8.RuneCountInString(w)
		if n+wn < maxSummary {
			out.WriteString(w)
			n += wn
			continue
		}
		if n < minSummary {
			out.WriteString(w)
			n += wn
		}
		break
	}
	res := out.String()
	if utf8.RuneCountInString(res) > maxSummary {
		res = string([]rune(res)[:maxSummary])
	}
	return strings.TrimSpace(res) + "…"
}
