package matrix

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// ValidLocalpart reports whether s may be the localpart of a newly registered user ID:
// the spec's grammar (a-z, 0-9, and ._=-/+), non-empty.
func ValidLocalpart(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '=', c == '-', c == '/', c == '+':
		default:
			return false
		}
	}
	return true
}

// UserID joins a localpart and a server name into a user ID.
func UserID(localpart, serverName string) string { return "@" + localpart + ":" + serverName }

// SplitID splits an identifier with the given sigil into its localpart and server name.
// It returns an error if the sigil is wrong or there is no server name.
func SplitID(sigil byte, id string) (local, server string, err error) {
	if len(id) < 2 || id[0] != sigil {
		return "", "", fmt.Errorf("%q does not start with %q", id, sigil)
	}
	i := strings.IndexByte(id, ':')
	if i < 0 {
		return "", "", fmt.Errorf("%q has no server name", id)
	}
	local, server = id[1:i], id[i+1:]
	if !ValidServerName(server) {
		return "", "", fmt.Errorf("%q has an invalid server name", id)
	}
	return local, server, nil
}

// ValidServerName reports whether s is a valid server name: a DNS name, an IPv4 literal or
// a bracketed IPv6 literal, with an optional port.
func ValidServerName(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	host := s
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return false
		}
		if net.ParseIP(s[1:end]) == nil {
			return false
		}
		host = ""
		s = s[end+1:]
		if s == "" {
			return true
		}
		if s[0] != ':' {
			return false
		}
		return validPort(s[1:])
	}
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		if !validPort(s[i+1:]) {
			return false
		}
		host = s[:i]
	}
	if host == "" {
		return false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n > 0 && n < 65536 && p[0] != '+'
}
