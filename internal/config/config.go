// Package config reads Dendrite's dendrite.yaml (version 2) into typed structs, applies
// defaults and environment overrides, and validates the result. It imports no component;
// each component receives its section by value from cmd/myelin.
//
// The order is Default, then the file (Load or Parse), then the environment (ApplyEnv),
// then Validate. Decoding is strict: a key Dendrite has but Myelin does not use is a
// Warning, any other unknown key is an error naming its YAML path, and every problem in
// a file is reported together in one *Errors.
//
// Relative paths (global.private_key, media_api.base_path, the path of a "file:"
// connection string, myelin.data_dir) are relative to the process's working directory,
// not to the config file, exactly as in Dendrite. Load leaves them as written.
package config

import "time"

// Config is the whole of a dendrite.yaml file as Myelin understands it.
type Config struct {
	// Version is the config format version; it must be 2, Dendrite's current format.
	Version       int           `yaml:"version"`
	Global        Global        `yaml:"global"`
	AppServiceAPI AppServiceAPI `yaml:"app_service_api"`
	ClientAPI     ClientAPI     `yaml:"client_api"`
	FederationAPI FederationAPI `yaml:"federation_api"`
	MediaAPI      MediaAPI      `yaml:"media_api"`
	SyncAPI       SyncAPI       `yaml:"sync_api"`
	UserAPI       UserAPI       `yaml:"user_api"`
	RoomServer    RoomServer    `yaml:"room_server"`
	Logging       []Logging     `yaml:"logging"`
	// Myelin holds settings Dendrite does not have. A Dendrite file simply has no such section.
	Myelin Myelin `yaml:"myelin"`

	// origin records where a loaded Config's values came from (YAML lines, environment
	// variables, which paths still follow myelin.data_dir). Default, Parse and ApplyEnv
	// fill it; a Config built by hand has the zero origin.
	origin origin
}

// Global is the "global" section.
type Global struct {
	// ServerName is the domain of this homeserver, the part after ":" in its user IDs.
	ServerName string `yaml:"server_name"`
	// PrivateKeyPath is the PEM file holding the ed25519 signing key; its key ID is read
	// from the file's Key-ID header, as in Dendrite.
	PrivateKeyPath string `yaml:"private_key"`
	// OldPrivateKeys are keys this server signed with before; they are still published.
	OldPrivateKeys []OldKey `yaml:"old_private_keys"`
	// KeyValidityPeriod is how long other servers may cache our signing key.
	KeyValidityPeriod time.Duration `yaml:"key_validity_period"`
	// Database is the one database every component uses. Dendrite's per-component
	// database blocks are not used by Myelin.
	Database Database `yaml:"database"`
	// WellKnownServerName is what /.well-known/matrix/server delegates to ("" serves 404).
	WellKnownServerName string `yaml:"well_known_server_name"`
	// WellKnownClientName is the base_url in /.well-known/matrix/client ("" serves 404).
	WellKnownClientName string `yaml:"well_known_client_name"`
	// DisableFederation turns off the federation API and all outbound federation.
	DisableFederation bool `yaml:"disable_federation"`
	// Presence says whether presence is received from and sent to other servers.
	Presence Presence `yaml:"presence"`
	// Metrics configures the Prometheus endpoint.
	Metrics Metrics `yaml:"metrics"`
}

// OldKey is a signing key the server used before, still published for verification.
// Either PrivateKeyPath, or both PublicKey and KeyID, must be set.
type OldKey struct {
	// PrivateKeyPath is the old key's PEM file, when it is still available.
	PrivateKeyPath string `yaml:"private_key"`
	// PublicKey is the old public key in unpadded base64, when only it is known.
	PublicKey string `yaml:"public_key"`
	// KeyID is the old key's ID, such as "ed25519:old"; required with PublicKey.
	KeyID string `yaml:"key_id"`
	// ExpiredAt is when the key stopped being used, in milliseconds since the Unix epoch.
	ExpiredAt int64 `yaml:"expired_at"`
}

// Database is a database connection block.
type Database struct {
	// ConnectionString is "file:path.db" (SQLite) or "postgres://…"/"postgresql://…".
	ConnectionString string `yaml:"connection_string"`
	// MaxOpenConns caps open connections (0 = unlimited).
	MaxOpenConns int `yaml:"max_open_conns"`
	// MaxIdleConns caps idle connections kept for reuse.
	MaxIdleConns int `yaml:"max_idle_conns"`
	// ConnMaxLifetime is how long a connection may be reused, in seconds (<= 0 unlimited).
	ConnMaxLifetime int `yaml:"conn_max_lifetime"` // seconds; -1 unlimited
}

// Presence is global.presence.
type Presence struct {
	// EnableInbound accepts presence from other servers.
	EnableInbound bool `yaml:"enable_inbound"`
	// EnableOutbound sends our users' presence to other servers.
	EnableOutbound bool `yaml:"enable_outbound"`
}

// Metrics is global.metrics.
type Metrics struct {
	// Enabled serves Prometheus metrics at /metrics.
	Enabled bool `yaml:"enabled"`
	// BasicAuth guards /metrics.
	BasicAuth BasicAuth `yaml:"basic_auth"`
}

// BasicAuth guards an endpoint with HTTP basic auth when Username is set.
type BasicAuth struct {
	// Username is the required user name ("" turns basic auth off).
	Username string `yaml:"username"`
	// Password is the required password.
	Password string `yaml:"password"`
}

// AppServiceAPI is the "app_service_api" section.
type AppServiceAPI struct {
	// ConfigFiles are the application service registration files (YAML, in the format of
	// the Application Service API), relative to the working directory.
	ConfigFiles []string `yaml:"config_files"`
}

// ClientAPI is the "client_api" section.
type ClientAPI struct {
	// RegistrationDisabled stops new sign-ups except through the shared secret. Myelin's
	// default is false (open), unlike Dendrite's true; see Default.
	RegistrationDisabled bool `yaml:"registration_disabled"`
	// RegistrationRequiresToken makes m.login.registration_token the only open flow.
	RegistrationRequiresToken bool `yaml:"registration_requires_token"`
	// GuestsDisabled stops guest accounts from being created.
	GuestsDisabled bool `yaml:"guests_disabled"`
	// RegistrationSharedSecret, when set, lets anyone knowing it register through the
	// admin registration API, even with registration disabled.
	RegistrationSharedSecret string `yaml:"registration_shared_secret"`
	// RegistrationTokens are tokens accepted by m.login.registration_token, besides those made through the admin API.
	RegistrationTokens []string `yaml:"registration_tokens"`
	// RateLimiting limits how fast one host may call rate-limited endpoints.
	RateLimiting RateLimiting `yaml:"rate_limiting"`
}

// RateLimiting is client_api.rate_limiting.
// A host may hold Threshold slots; each request takes one, released after CooloffMS.
type RateLimiting struct {
	// Enabled turns rate limiting on.
	Enabled bool `yaml:"enabled"`
	// Threshold is how many requests a host may have in flight within the cool-off.
	Threshold int64 `yaml:"threshold"`
	// CooloffMS is how long a slot stays taken, in milliseconds.
	CooloffMS int64 `yaml:"cooloff_ms"`
	// ExemptUserIDs are users never rate limited.
	ExemptUserIDs []string `yaml:"exempt_user_ids"`
}

// FederationAPI is the "federation_api" section.
type FederationAPI struct {
	// SendMaxRetries is how many times a failed transaction to one server is retried,
	// backing off 2**n seconds, before that server is treated as offline.
	SendMaxRetries uint32 `yaml:"send_max_retries"`
	// DisableTLSValidation skips certificate checks on outbound federation (never in production).
	DisableTLSValidation bool `yaml:"disable_tls_validation"`
	// DisableHTTPKeepalives closes outbound federation connections after each request.
	DisableHTTPKeepalives bool `yaml:"disable_http_keepalives"`
	// PreferDirectFetch asks a server for its own keys before asking KeyPerspectives.
	PreferDirectFetch bool `yaml:"prefer_direct_fetch"`
	// KeyPerspectives are notary servers trusted for other servers' keys.
	KeyPerspectives []KeyPerspective `yaml:"key_perspectives"`
	// AllowNetworks and DenyNetworks are CIDRs limiting which addresses outbound
	// federation may reach; DenyNetworks is checked first. Dendrite has the same keys here.
	AllowNetworks []string `yaml:"allow_networks"`
	// DenyNetworks: see AllowNetworks.
	DenyNetworks []string `yaml:"deny_networks"`
}

// KeyPerspective is a trusted notary server.
type KeyPerspective struct {
	// ServerName is the notary, such as "matrix.org".
	ServerName string `yaml:"server_name"`
	// Keys are the notary's own signing keys.
	Keys []KeyPerspectiveKey `yaml:"keys"`
}

// KeyPerspectiveKey is one notary key.
type KeyPerspectiveKey struct {
	// KeyID is such as "ed25519:auto".
	KeyID string `yaml:"key_id"`
	// PublicKey is unpadded base64.
	PublicKey string `yaml:"public_key"`
}

// MediaAPI is the "media_api" section.
type MediaAPI struct {
	// BasePath is the directory media is stored in.
	BasePath string `yaml:"base_path"`
	// MaxFileSizeBytes caps uploads (0 = unlimited).
	MaxFileSizeBytes int64 `yaml:"max_file_size_bytes"`
	// DynamicThumbnails generates thumbnails of requested sizes on demand.
	DynamicThumbnails bool `yaml:"dynamic_thumbnails"`
	// MaxThumbnailGenerators caps simultaneous thumbnail generation.
	MaxThumbnailGenerators int `yaml:"max_thumbnail_generators"`
	// ThumbnailSizes are generated for each uploaded image.
	ThumbnailSizes []ThumbnailSize `yaml:"thumbnail_sizes"`
}

// ThumbnailSize is one pre-generated thumbnail size.
type ThumbnailSize struct {
	// Width is the maximum width in pixels.
	Width int `yaml:"width"`
	// Height is the maximum height in pixels.
	Height int `yaml:"height"`
	// Method is "crop" (fill the size, cropping the excess) or "scale" (fit inside it).
	Method string `yaml:"method"` // "crop" or "scale"
}

// SyncAPI is the "sync_api" section.
type SyncAPI struct {
	// RealIPHeader names the header holding the client's address behind a reverse
	// proxy, such as "X-Real-IP" ("" uses the connection's address).
	RealIPHeader string `yaml:"real_ip_header"`
}

// UserAPI is the "user_api" section.
type UserAPI struct {
	// BCryptCost is the bcrypt cost of password hashes, 4 to 31.
	BCryptCost int `yaml:"bcrypt_cost"`
	// AutoJoinRooms are room IDs or aliases every new local user joins.
	AutoJoinRooms []string `yaml:"auto_join_rooms"`
	// OpenIDTokenLifetimeMS mirrors Dendrite's openid_token_lifetime_ms.
	OpenIDTokenLifetimeMS int64 `yaml:"openid_token_lifetime_ms"`
}

// RoomServer is the "room_server" section.
type RoomServer struct {
	// DefaultRoomVersion is the version of rooms created without one, "1" to "12".
	DefaultRoomVersion string `yaml:"default_room_version"`
}

// Logging is one entry of the "logging" list.
type Logging struct {
	// Type is "std" (standard error) or "file" (Params["path"] is the log directory).
	Type string `yaml:"type"` // "std" or "file"
	// Level is the least severe level logged: trace, debug, info, warn or error.
	Level string `yaml:"level"`
	// Params holds the type's settings.
	Params map[string]any `yaml:"params"`
}

// Myelin is the "myelin" section: settings Dendrite takes from flags or does not have.
type Myelin struct {
	// DataDir is where the SQLite database, signing key and media go when
	// global.database.connection_string, global.private_key and media_api.base_path are
	// not set: file:<data_dir>/myelin.db, <data_dir>/matrix_key.pem, <data_dir>/media.
	DataDir string `yaml:"data_dir"`
	// Listen is the plain-HTTP listener for the client and federation APIs.
	Listen string `yaml:"listen"`
	// ListenTLS is the HTTPS listener ("" for none); it serves the same routes.
	ListenTLS string `yaml:"listen_tls"`
	// TLSCert is the PEM certificate chain for ListenTLS.
	TLSCert string `yaml:"tls_cert"`
	// TLSKey is the PEM private key for ListenTLS.
	TLSKey string `yaml:"tls_key"`
	// AccessTokenLifetime, when non-zero, makes tokens issued with refresh tokens expire.
	AccessTokenLifetime time.Duration `yaml:"access_token_lifetime"`
	// MaxRequestBytes caps JSON request bodies.
	MaxRequestBytes int64 `yaml:"max_request_bytes"`
	// Media holds the media repository settings Dendrite's media_api section lacks.
	Media Media `yaml:"media"`
}

// Media is the "myelin.media" section.
type Media struct {
	// Storage is where media bytes live: "disk" (under media_api.base_path) or "s3".
	Storage string `yaml:"storage"`
	// S3 configures the "s3" storage.
	S3 S3 `yaml:"s3"`
	// LegacyEndpoints serves the unauthenticated /_matrix/media/v3 download and thumbnail
	// endpoints beside the authenticated /_matrix/client/v1/media ones (Synapse's
	// enable_authenticated_media: false).
	LegacyEndpoints bool `yaml:"legacy_endpoints"`
	// UnusedUploadExpiry is how long a media ID from /_matrix/media/v1/create waits for its
	// content before it is forgotten.
	UnusedUploadExpiry time.Duration `yaml:"unused_upload_expiry"`
	// MaxPendingUploads caps the media IDs one user holds that await content.
	MaxPendingUploads int `yaml:"max_pending_uploads"`
	// MaxImagePixels is the largest width×height decoded for a thumbnail; larger images
	// are stored and served but not thumbnailed.
	MaxImagePixels int64 `yaml:"max_image_pixels"`
	// URLPreviews configures /preview_url.
	URLPreviews URLPreviews `yaml:"url_previews"`
}

// S3 is the "myelin.media.s3" section: an S3-compatible bucket.
type S3 struct {
	// Endpoint is the server's host[:port], such as "s3.amazonaws.com".
	Endpoint string `yaml:"endpoint"`
	// Secure uses HTTPS to reach Endpoint.
	Secure bool `yaml:"secure"`
	// Region is the bucket's region ("" lets the client discover it).
	Region string `yaml:"region"`
	// Bucket holds the media; it must exist.
	Bucket string `yaml:"bucket"`
	// Prefix is prepended to every object name, such as "media/".
	Prefix string `yaml:"prefix"`
	// AccessKeyID and SecretAccessKey are the credentials. They are never logged.
	AccessKeyID     string `yaml:"access_key_id"`
	SecretAccessKey string `yaml:"secret_access_key"`
	// PathStyle addresses the bucket as endpoint/bucket rather than bucket.endpoint, as
	// most self-hosted S3 servers need.
	PathStyle bool `yaml:"path_style"`
}

// URLPreviews is the "myelin.media.url_previews" section.
type URLPreviews struct {
	// Enabled serves /preview_url; when false it answers 404 M_UNRECOGNIZED.
	Enabled bool `yaml:"enabled"`
	// AllowNetworks and DenyNetworks are CIDRs checked on every address a preview
	// connects to, after DNS resolution: deny wins; an empty allow list allows all.
	AllowNetworks []string `yaml:"allow_networks"`
	DenyNetworks  []string `yaml:"deny_networks"`
	// MaxBytes caps the bytes read from one previewed page or image.
	MaxBytes int64 `yaml:"max_bytes"`
	// Timeout bounds fetching one URL, redirects included.
	Timeout time.Duration `yaml:"timeout"`
	// CacheTTL is how long a preview is reused before the URL is fetched again.
	CacheTTL time.Duration `yaml:"cache_ttl"`
}
