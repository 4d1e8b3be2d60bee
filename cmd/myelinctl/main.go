// Command myelinctl administers a Myelin server: it generates signing keys, creates accounts
// and checks configuration files. It works on the same data folder as myelin (or --config).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/myelin-chat/myelin/appservice"
	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/serverkey"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/userapi"
)

const usage = `usage:
  myelinctl generate-keys [--config FILE] [--out FILE]
  myelinctl create-account -u NAME -p PASS [--admin] [--config FILE]
  myelinctl check-config FILE
`

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "myelinctl:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	switch args[0] {
	case "generate-keys":
		return generateKeys(args[1:], stdout)
	case "create-account":
		return createAccount(args[1:], stdout)
	case "check-config":
		return checkConfig(args[1:], stdout)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

// loadConfig loads FILE, or the defaults myelin uses without --config, with the environment.
func loadConfig(path string) (*config.Config, error) {
	cfg := config.Default()
	if path != "" {
		c, _, err := config.Load(path)
		if err != nil {
			return nil, err
		}
		cfg = c
	}
	cfg.ApplyEnv(os.Getenv)
	return cfg, cfg.Validate()
}

func generateKeys(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("generate-keys", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "dendrite.yaml whose private_key path to write")
	out := fs.String("out", "", "where to write the key (default: the config's private_key)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	path := *out
	if path == "" {
		cfg, err := loadConfig(*cfgPath)
		if err != nil {
			return err
		}
		path = cfg.Global.PrivateKeyPath
	}
	k, err := serverkey.Generate(path)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote signing key %s to %s\n", k.ID, path)
	return nil
}

func createAccount(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("create-account", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "dendrite.yaml (default: myelin's built-in settings)")
	user := fs.String("u", "", "localpart of the new user")
	pass := fs.String("p", "", "password")
	admin := fs.Bool("admin", false, "make the user a server admin")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *user == "" || *pass == "" {
		return errors.New("-u and -p are required")
	}
	if !matrix.ValidLocalpart(*user) {
		return fmt.Errorf("%q is not a valid localpart (a-z, 0-9, and ._=-/+)", *user)
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	ctx := context.Background()
	db, err := sqldb.Open(ctx, cfg.Global.Database.ConnectionString, sqldb.Options{})
	if err != nil {
		return err
	}
	defer db.Close()
	users, err := userapi.New(userapi.Config{ServerName: cfg.Global.ServerName, BCryptCost: cfg.UserAPI.BCryptCost},
		db, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return err
	}
	id, err := users.CreateAccount(ctx, userapi.NewAccount{Localpart: *user, Password: *pass, Admin: *admin})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created %s\n", id)
	return nil
}

func checkConfig(args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return errors.New("check-config takes one file")
	}
	cfg, warnings, err := config.Load(args[0])
	for _, w := range warnings {
		fmt.Fprintln(stdout, "warning:", w.String())
	}
	if err != nil {
		return err
	}
	cfg.ApplyEnv(os.Getenv)
	if err := cfg.Validate(); err != nil {
		return err
	}
	// The registration files are read as the server reads them at start.
	if _, err := appservice.Load(cfg.AppServiceAPI.ConfigFiles, cfg.Global.ServerName); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s is valid (%d warnings)\n", args[0], len(warnings))
	return nil
}
