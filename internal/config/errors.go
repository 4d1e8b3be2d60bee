package config

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong with a configuration, found by Parse, Load or Validate.
type Problem struct {
	// Path is the YAML path of the key, such as "global.server_name" or
	// "media_api.thumbnail_sizes[1].method"; "" for the file as a whole.
	Path string
	// Line is the key's line in the file, or 0 when unknown (a default or an
	// environment override).
	Line int
	// Message says what is wrong, such as "unknown key (did you mean server_name?)".
	Message string
}

// String formats p as "path: message (line N)".
func (p Problem) String() string {
	return describe(p.Path, p.Message, p.Line)
}

// Errors is the error Parse, Load and Validate return: every problem found, in file
// order (Parse) or rule order (Validate). Callers may use errors.As to get at the list.
type Errors struct {
	// Problems is never empty in a returned *Errors.
	Problems []Problem
}

// Error lists the problems one per line.
func (e *Errors) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Warning is a key Myelin accepts but ignores: one Dendrite has and Myelin does not use
// yet, or a setting whose absence means something surprising.
type Warning struct {
	// Path is the YAML path of the key, such as "sync_api.search.enabled".
	Path string
	// Line is the key's line in the file, or 0 when the key is absent.
	Line int
	// Message says why it is ignored, such as "not used by Myelin yet".
	Message string
}

// String formats w as "path: message (line N)".
func (w Warning) String() string {
	return describe(w.Path, w.Message, w.Line)
}

func describe(path, msg string, line int) string {
	var b strings.Builder
	if path != "" {
		b.WriteString(path)
		b.WriteString(": ")
	}
	b.WriteString(msg)
	if line > 0 {
		fmt.Fprintf(&b, " (line %d)", line)
	}
	return b.String()
}

// errorsOrNil returns nil for no problems, so that a nil *Errors never becomes a non-nil error.
func errorsOrNil(ps []Problem) error {
	if len(ps) == 0 {
		return nil
	}
	return &Errors{Problems: ps}
}
