package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Validate checks the rules that decoding cannot, and returns an *Errors listing every
// broken rule, or nil. Call it after ApplyEnv. It checks that:
//   - version is 2;
//   - global.server_name is a valid Matrix server name (hostname or IP literal, optional port);
//   - global.private_key is set, and each old_private_keys entry has a private_key or
//     both key_id and public_key;
//   - global.key_validity_period is positive;
//   - global.database.connection_string starts with "file:" (with a path),
//     "postgres://" or "postgresql://";
//   - global.well_known_client_name, when set, is an http:// or https:// URL;
//   - app_service_api.config_files has no empty path (the files are read by appservice.Load);
//   - client_api.rate_limiting threshold and cooloff_ms are positive when enabled;
//   - federation_api.allow_networks and deny_networks are CIDRs;
//   - media_api.base_path is set, max_file_size_bytes and max_thumbnail_generators are
//     not negative, and each thumbnail has a positive size and method crop or scale;
//   - user_api.bcrypt_cost is 4 to 31 and openid_token_lifetime_ms is not negative;
//   - room_server.default_room_version is "1" to "12";
//   - each logging entry has level trace, debug, info, warn or error, and type std or
//     file, file with params.path;
//   - myelin.listen and myelin.listen_tls are host:port (at least one set), listen_tls
//     has tls_cert and tls_key, max_request_bytes is positive and
//     access_token_lifetime is not negative.
func (c *Config) Validate() error {
	v := &validator{c: c}

	if c.Version != 2 {
		v.add("version", "must be 2 (Dendrite's config format version 2), got %d", c.Version)
	}

	g := c.Global
	if g.ServerName == "" {
		v.add("global.server_name", "must be set")
	} else if err := checkServerName(g.ServerName); err != nil {
		v.add("global.server_name", "%q is not a valid server name: %s", g.ServerName, err)
	}
	if g.PrivateKeyPath == "" {
		v.add("global.private_key", "must be set")
	}
	for i, k := range g.OldPrivateKeys {
		if k.PrivateKeyPath == "" && (k.KeyID == "" || k.PublicKey == "") {
			v.add(fmt.Sprintf("global.old_private_keys[%d]", i), "needs private_key, or both key_id and public_key")
		}
	}
	if g.KeyValidityPeriod <= 0 {
		v.add("global.key_validity_period", "must be positive, got %s", g.KeyValidityPeriod)
	}
	v.connectionString("global.database.connection_string", g.Database)
	if u := g.WellKnownClientName; u != "" && !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
		v.add("global.well_known_client_name", "must start with https:// or http://, got %q", u)
	}
	for i, f := range c.AppServiceAPI.ConfigFiles {
		if strings.TrimSpace(f) == "" {
			v.add(fmt.Sprintf("app_service_api.config_files[%d]", i), "must be a path, got an empty one")
		}
	}

	if rl := c.ClientAPI.RateLimiting; rl.Enabled {
		if rl.Threshold <= 0 {
			v.add("client_api.rate_limiting.threshold", "must be positive when rate limiting is enabled, got %d", rl.Threshold)
		}
		if rl.CooloffMS <= 0 {
			v.add("client_api.rate_limiting.cooloff_ms", "must be positive when rate limiting is enabled, got %d", rl.CooloffMS)
		}
	}

	for i, n := range c.FederationAPI.AllowNetworks {
		v.cidr(fmt.Sprintf("federation_api.allow_networks[%d]", i), n)
	}
	for i, n := range c.FederationAPI.DenyNetworks {
		v.cidr(fmt.Sprintf("federation_api.deny_networks[%d]", i), n)
	}

	m := c.MediaAPI
	if m.BasePath == "" {
		v.add("media_api.base_path", "must be set")
	}
	if m.MaxFileSizeBytes < 0 {
		v.add("media_api.max_file_size_bytes", "must not be negative (0 is unlimited), got %d", m.MaxFileSizeBytes)
	}
	if m.MaxThumbnailGenerators < 0 {
		v.add("media_api.max_thumbnail_generators", "must not be negative, got %d", m.MaxThumbnailGenerators)
	}
	for i, t := range m.ThumbnailSizes {
		p := fmt.Sprintf("media_api.thumbnail_sizes[%d]", i)
		if t.Width <= 0 {
			v.add(p+".width", "must be positive, got %d", t.Width)
		}
		if t.Height <= 0 {
			v.add(p+".height", "must be positive, got %d", t.Height)
		}
		if t.Method != "crop" && t.Method != "scale" {
			v.add(p+".method", "must be crop or scale, got %q", t.Method)
		}
	}

	if cost := c.UserAPI.BCryptCost; cost < 4 || cost > 31 {
		v.add("user_api.bcrypt_cost", "must be between 4 and 31, got %d", cost)
	}
	if c.UserAPI.OpenIDTokenLifetimeMS < 0 {
		v.add("user_api.openid_token_lifetime_ms", "must not be negative, got %d", c.UserAPI.OpenIDTokenLifetimeMS)
	}

	if rv := c.RoomServer.DefaultRoomVersion; !knownRoomVersion(rv) {
		v.add("room_server.default_room_version", "must be a room version from \"1\" to \"12\", got %q", rv)
	}

	for i, l := range c.Logging {
		p := fmt.Sprintf("logging[%d]", i)
		switch l.Level {
		case "trace", "debug", "info", "warn", "error":
		default:
			v.add(p+".level", "must be trace, debug, info, warn or error, got %q", l.Level)
		}
		switch l.Type {
		case "std":
		case "file":
			if path, _ := l.Params["path"].(string); path == "" {
				v.add(p+".params.path", "must be set for a file logger")
			}
		default:
			v.add(p+".type", "must be std or file, got %q", l.Type)
		}
	}

	my := c.Myelin
	if my.Listen == "" && my.ListenTLS == "" {
		v.add("myelin.listen", "must be set when myelin.listen_tls is not")
	}
	v.hostPort("myelin.listen", my.Listen)
	v.hostPort("myelin.listen_tls", my.ListenTLS)
	if my.ListenTLS != "" {
		if my.TLSCert == "" {
			v.add("myelin.tls_cert", "must be set when myelin.listen_tls is")
		}
		if my.TLSKey == "" {
			v.add("myelin.tls_key", "must be set when myelin.listen_tls is")
		}
	}
	if my.MaxRequestBytes <= 0 {
		v.add("myelin.max_request_bytes", "must be positive, got %d", my.MaxRequestBytes)
	}
	if my.AccessTokenLifetime < 0 {
		v.add("myelin.access_token_lifetime", "must not be negative, got %s", my.AccessTokenLifetime)
	}

	md := my.Media
	switch md.Storage {
	case "disk":
	case "s3":
		if md.S3.Endpoint == "" {
			v.add("myelin.media.s3.endpoint", "must be set when myelin.media.storage is s3")
		}
		if md.S3.Bucket == "" {
			v.add("myelin.media.s3.bucket", "must be set when myelin.media.storage is s3")
		}
	default:
		v.add("myelin.media.storage", "must be disk or s3, got %q", md.Storage)
	}
	if md.UnusedUploadExpiry <= 0 {
		v.add("myelin.media.unused_upload_expiry", "must be positive, got %s", md.UnusedUploadExpiry)
	}
	if md.MaxPendingUploads <= 0 {
		v.add("myelin.media.max_pending_uploads", "must be positive, got %d", md.MaxPendingUploads)
	}
	if md.MaxImagePixels <= 0 {
		v.add("myelin.media.max_image_pixels", "must be positive, got %d", md.MaxImagePixels)
	}
	up := md.URLPreviews
	for i, n := range up.AllowNetworks {
		v.cidr(fmt.Sprintf("myelin.media.url_previews.allow_networks[%d]", i), n)
	}
	for i, n := range up.DenyNetworks {
		v.cidr(fmt.Sprintf("myelin.media.url_previews.deny_networks[%d]", i), n)
	}
	if up.MaxBytes <= 0 {
		v.add("myelin.media.url_previews.max_bytes", "must be positive, got %d", up.MaxBytes)
	}
	if up.Timeout <= 0 {
		v.add("myelin.media.url_previews.timeout", "must be positive, got %s", up.Timeout)
	}
	if up.CacheTTL < 0 {
		v.add("myelin.media.url_previews.cache_ttl", "must not be negative, got %s", up.CacheTTL)
	}

	return errorsOrNil(v.problems)
}

// validator collects Validate's problems, locating each by the file line or
// environment variable its value came from.
type validator struct {
	c        *Config
	problems []Problem
}

func (v *validator) add(path, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	line := 0
	if env := v.c.origin.env[path]; env != "" {
		msg += " (from " + env + ")"
	} else {
		line = v.c.lineOf(path)
	}
	v.problems = append(v.problems, Problem{Path: path, Line: line, Message: msg})
}

// lineOf returns the file line of path, or of its nearest ancestor the file has, or 0.
func (c *Config) lineOf(path string) int {
	for path != "" {
		if l, ok := c.origin.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return 0
		}
		path = path[:i]
	}
	return 0
}

// connectionString checks d's connection string without echoing it: it may hold a password.
func (v *validator) connectionString(path string, d Database) {
	s := d.ConnectionString
	switch {
	case s == "":
		v.add(path, "must be set")
	case d.IsSQLite():
		if d.SQLitePath() == "" {
			v.add(path, "names no file after \"file:\"")
		}
	case strings.HasPrefix(s, "postgres://"), strings.HasPrefix(s, "postgresql://"):
	default:
		v.add(path, "must start with \"file:\" (SQLite) or \"postgres://\" or \"postgresql://\" (PostgreSQL)")
	}
}

func (v *validator) cidr(path, s string) {
	if _, err := netip.ParsePrefix(s); err != nil {
		v.add(path, "want a CIDR such as \"10.0.0.0/8\", got %q", s)
	}
}

// hostPort checks an optional listen address.
func (v *validator) hostPort(path, addr string) {
	if addr == "" {
		return
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		v.add(path, "want host:port such as \"127.0.0.1:8008\" or \":8008\", got %q", addr)
	}
}

func knownRoomVersion(v string) bool {
	n, err := strconv.Atoi(v)
	return err == nil && strconv.Itoa(n) == v && n >= 1 && n <= 12
}

// IsLocalServerName reports whether name is this server's own name. Myelin has no
// virtual hosts, so that is global.server_name alone, compared exactly.
func (g Global) IsLocalServerName(name string) bool {
	return name != "" && name == g.ServerName
}

// checkServerName checks s against the Matrix server name grammar:
// hostname [ ":" port ], where hostname is an IPv4 address, "[" IPv6 address "]", or a
// DNS name of 1 to 255 characters from A-Z, a-z, 0-9, "-" and ".", and port is 1 to 5 digits.
func checkServerName(s string) error {
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return errors.New("the IPv6 literal has no closing \"]\"")
		}
		host, port = s[:end+1], s[end+1:]
		if port != "" && !strings.HasPrefix(port, ":") {
			return errors.New("want \":port\" after the IPv6 literal")
		}
		if a, err := netip.ParseAddr(host[1:end]); err != nil || !a.Is6() {
			return fmt.Errorf("%s is not an IPv6 address", host)
		}
	} else {
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host, port = s[:i], s[i:]
		}
		if host == "" {
			return errors.New("the hostname is empty")
		}
		if len(host) > 255 {
			return errors.New("the hostname is longer than 255 characters")
		}
		for _, r := range host {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
				return fmt.Errorf("the hostname may hold only letters, digits, \"-\" and \".\", not %q", r)
			}
		}
	}
	if port != "" {
		digits := port[1:]
		if len(digits) < 1 || len(digits) > 5 || strings.Trim(digits, "0123456789") != "" {
			return errors.New("the port must be 1 to 5 digits")
		}
		if n, _ := strconv.Atoi(digits); n > 65535 {
			return errors.New("the port must be at most 65535")
		}
	}
	return nil
}
