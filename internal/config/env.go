package config

// Environment variables ApplyEnv reads.
const (
	// EnvServerName overrides global.server_name.
	EnvServerName = "MYELIN_SERVER_NAME"
	// EnvDatabase overrides global.database.connection_string.
	EnvDatabase = "MYELIN_DATABASE"
	// EnvListen overrides myelin.listen.
	EnvListen = "MYELIN_LISTEN"
	// EnvDataDir overrides myelin.data_dir, and with it the database, signing key and
	// media paths that still follow it (those neither the file nor MYELIN_DATABASE set).
	EnvDataDir = "MYELIN_DATA_DIR"
)

// ApplyEnv applies the MYELIN_* environment overrides, which win over the file. An
// empty or unset variable changes nothing. getenv is os.Getenv in production; tests pass
// a map lookup. Call it after Load or Parse and before Validate.
func (c *Config) ApplyEnv(getenv func(string) string) {
	if v := getenv(EnvServerName); v != "" {
		c.Global.ServerName = v
		c.fromEnv("global.server_name", EnvServerName)
	}
	if v := getenv(EnvDataDir); v != "" {
		c.Myelin.DataDir = v
		c.fromEnv("myelin.data_dir", EnvDataDir)
		c.deriveFromDataDir()
	}
	if v := getenv(EnvDatabase); v != "" {
		c.Global.Database.ConnectionString = v
		c.origin.derived.database = false
		c.fromEnv("global.database.connection_string", EnvDatabase)
	}
	if v := getenv(EnvListen); v != "" {
		c.Myelin.Listen = v
		c.fromEnv("myelin.listen", EnvListen)
	}
}

// fromEnv records that the value at path came from the environment variable name.
func (c *Config) fromEnv(path, name string) {
	if c.origin.env == nil {
		c.origin.env = map[string]string{}
	}
	c.origin.env[path] = name
}
