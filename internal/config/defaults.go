package config

import (
	"path/filepath"
	"strings"
	"time"
)

// Default values that other code and the sample dendrite.yaml refer to.
const (
	// DefaultDataDir is myelin.data_dir when nothing sets it.
	DefaultDataDir = "./myelin-data"
	// DefaultListen is myelin.listen when nothing sets it: loopback only.
	DefaultListen = "127.0.0.1:8008"
	// DefaultRoomVersion is room_server.default_room_version when nothing sets it.
	DefaultRoomVersion = "11"
	// DefaultMaxRequestBytes is myelin.max_request_bytes: the cap on JSON request
	// bodies (1 MiB). Media uploads are capped by media_api.max_file_size_bytes instead.
	DefaultMaxRequestBytes = 1 << 20
	// DefaultMaxFileSizeBytes is media_api.max_file_size_bytes (10 MiB), as in Dendrite.
	DefaultMaxFileSizeBytes = 10 << 20
)

// Default returns a working single-machine configuration: server name "localhost",
// listening on 127.0.0.1:8008 over plain HTTP, with SQLite, the signing key and media
// under ./myelin-data (relative to the working directory).
//
// It differs from Dendrite's defaults in a few places, on purpose:
//   - registration is open (client_api.registration_disabled false), so that a client
//     can sign up on a fresh development server. Dendrite defaults to closed and refuses
//     open registration without a captcha; set registration_disabled on a public server.
//     Parse warns when a file leaves registration_disabled unset for this reason.
//   - guests are disabled, since open registration would otherwise admit them too.
//   - everything lives in one database, global.database.
//   - the default room version is 11 (Dendrite: 10).
//
// The database, signing key and media paths follow myelin.data_dir until a file or
// MYELIN_DATABASE sets them: see Parse and ApplyEnv.
func Default() *Config {
	c := &Config{
		Version: 2,
		Global: Global{
			ServerName:        "localhost",
			KeyValidityPeriod: 7 * 24 * time.Hour,
			Database: Database{
				MaxOpenConns:    90,
				MaxIdleConns:    2,
				ConnMaxLifetime: -1,
			},
		},
		ClientAPI: ClientAPI{
			RegistrationDisabled: false,
			GuestsDisabled:       true,
			RateLimiting: RateLimiting{
				Enabled:   true,
				Threshold: 20,
				CooloffMS: 500,
			},
		},
		FederationAPI: FederationAPI{
			SendMaxRetries: 16,
			DenyNetworks:   privateNetworks(),
			AllowNetworks:  []string{"0.0.0.0/0", "::/0"},
		},
		MediaAPI: MediaAPI{
			MaxFileSizeBytes:       DefaultMaxFileSizeBytes,
			MaxThumbnailGenerators: 10,
			ThumbnailSizes: []ThumbnailSize{
				{Width: 32, Height: 32, Method: "crop"},
				{Width: 96, Height: 96, Method: "crop"},
				{Width: 640, Height: 480, Method: "scale"},
			},
		},
		UserAPI: UserAPI{
			BCryptCost:            10,
			OpenIDTokenLifetimeMS: 3600000,
		},
		RoomServer: RoomServer{DefaultRoomVersion: DefaultRoomVersion},
		Logging:    []Logging{{Type: "std", Level: "info"}},
		Myelin: Myelin{
			DataDir:         DefaultDataDir,
			Listen:          DefaultListen,
			MaxRequestBytes: DefaultMaxRequestBytes,
			Media: Media{
				Storage:            "disk",
				LegacyEndpoints:    true,
				UnusedUploadExpiry: 24 * time.Hour,
				MaxPendingUploads:  5,
				MaxImagePixels:     32_000_000,
				URLPreviews: URLPreviews{
					Enabled:       true,
					AllowNetworks: []string{"0.0.0.0/0", "::/0"},
					DenyNetworks:  privateNetworks(),
					MaxBytes:      10 << 20,
					Timeout:       10 * time.Second,
					CacheTTL:      time.Hour,
				},
			},
		},
		origin: origin{derived: derived{database: true, privateKey: true, mediaPath: true}},
	}
	c.deriveFromDataDir()
	return c
}

// origin records where a Config's values came from.
type origin struct {
	// derived says which paths still follow myelin.data_dir.
	derived derived
	// lines maps a YAML path to the line of its key in the file Parse read.
	lines map[string]int
	// env maps a YAML path to the environment variable ApplyEnv set it from.
	env map[string]string
}

// derived flags the paths computed from myelin.data_dir rather than set explicitly.
type derived struct {
	database, privateKey, mediaPath bool
}

// deriveFromDataDir recomputes the paths that follow myelin.data_dir.
func (c *Config) deriveFromDataDir() {
	dir := c.Myelin.DataDir
	if c.origin.derived.database {
		c.Global.Database.ConnectionString = "file:" + filepath.ToSlash(under(dir, "myelin.db"))
	}
	if c.origin.derived.privateKey {
		c.Global.PrivateKeyPath = under(dir, "matrix_key.pem")
	}
	if c.origin.derived.mediaPath {
		c.MediaAPI.BasePath = under(dir, "media")
	}
}

// under joins dir and name without cleaning dir, so "./myelin-data" stays recognisable
// in messages and logs.
func under(dir, name string) string {
	if dir == "" {
		return name
	}
	return strings.TrimRight(dir, `/`+string(filepath.Separator)) + string(filepath.Separator) + name
}

// privateNetworks are the loopback, private, shared, link-local and unique-local
// networks that outbound federation and URL previews refuse by default.
func privateNetworks() []string {
	return []string{
		"127.0.0.1/8",
		"10.0.0.0/8",
		"172.16.0.0/12",
		"192.168.0.0/16",
		"100.64.0.0/10",
		"169.254.0.0/16",
		"::1/128",
		"fe80::/64",
		"fc00::/7",
	}
}
