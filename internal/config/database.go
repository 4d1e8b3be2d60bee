package config

import (
	"net/url"
	"strings"
)

// IsSQLite reports whether global.database is SQLite (a "file:" connection string).
func (c *Config) IsSQLite() bool {
	return c.Global.Database.IsSQLite()
}

// SQLitePath returns the file path of global.database when it is SQLite, and "" otherwise.
func (c *Config) SQLitePath() string {
	return c.Global.Database.SQLitePath()
}

// IsSQLite reports whether d is SQLite: its connection string starts with "file:".
// Anything else is PostgreSQL, as in Dendrite.
func (d Database) IsSQLite() bool {
	return strings.HasPrefix(d.ConnectionString, "file:")
}

// SQLitePath returns the path part of a "file:" connection string, without its query
// ("?_pragma=…") or fragment, and "" when d is not SQLite. "file:./a.db?mode=rwc" gives
// "./a.db"; "file:///var/lib/a.db" gives "/var/lib/a.db"; percent-escapes are decoded,
// as SQLite does for URI filenames. A relative path is relative to the working directory.
func (d Database) SQLitePath() string {
	if !d.IsSQLite() {
		return ""
	}
	p := strings.TrimPrefix(d.ConnectionString, "file:")
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if rest, ok := strings.CutPrefix(p, "//"); ok {
		// file://host/path: SQLite accepts only an empty host or "localhost".
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			p = rest[i:]
		} else {
			p = ""
		}
	}
	if u, err := url.PathUnescape(p); err == nil {
		p = u
	}
	return p
}
