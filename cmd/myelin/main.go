// Command myelin is the Myelin homeserver. With no flags it serves server name "localhost" on
// 127.0.0.1:8008 from ./myelin-data (SQLite database, signing key, media), creating what is
// missing. --config takes a Dendrite-format dendrite.yaml.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/myelin-chat/myelin/appservice"
	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/federationapi"
	"github.com/myelin-chat/myelin/federationapi/fedclient"
	"github.com/myelin-chat/myelin/federationapi/sender"
	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/serverkey"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/tlsutil"
	"github.com/myelin-chat/myelin/mediaapi"
	"github.com/myelin-chat/myelin/mediaapi/blob"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/syncapi"
	"github.com/myelin-chat/myelin/userapi"
)

type flags struct {
	config     string
	httpAddr   string
	httpsAddr  string
	tlsCert    string
	tlsKey     string
	complement bool
}

func main() {
	var f flags
	fs := flag.NewFlagSet("myelin", flag.ExitOnError)
	fs.StringVar(&f.config, "config", "", "path to a dendrite.yaml (default: built-in single-machine settings)")
	fs.StringVar(&f.httpAddr, "http-bind-address", "", "plain HTTP listener, overriding myelin.listen")
	fs.StringVar(&f.httpsAddr, "https-bind-address", "", "HTTPS listener, overriding myelin.listen_tls")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "TLS certificate for the HTTPS listener")
	fs.StringVar(&f.tlsKey, "tls-key", "", "TLS key for the HTTPS listener")
	fs.BoolVar(&f.complement, "complement", false, "run as Complement's test image: server name from $SERVER_NAME, HTTP on :8008, HTTPS on :8448 with a certificate from the CA in /complement/ca")
	_ = fs.Parse(os.Args[1:])
	if err := run(f); err != nil {
		fmt.Fprintln(os.Stderr, "myelin:", err)
		os.Exit(1)
	}
}

func loadConfig(f flags) (*config.Config, error) {
	cfg := config.Default()
	if f.config != "" {
		c, warnings, err := config.Load(f.config)
		for _, w := range warnings {
			fmt.Fprintln(os.Stderr, "config warning:", w.String())
		}
		if err != nil {
			return nil, err
		}
		cfg = c
	}
	cfg.ApplyEnv(os.Getenv)
	if f.httpAddr != "" {
		cfg.Myelin.Listen = f.httpAddr
	}
	if f.httpsAddr != "" {
		cfg.Myelin.ListenTLS = f.httpsAddr
	}
	if f.tlsCert != "" {
		cfg.Myelin.TLSCert, cfg.Myelin.TLSKey = f.tlsCert, f.tlsKey
	}
	if f.complement {
		if name := os.Getenv("SERVER_NAME"); name != "" {
			cfg.Global.ServerName = name
		}
		cfg.Myelin.Listen = ":8008"
		// Complement copies the blueprint's application service registrations here.
		regs, _ := filepath.Glob("/complement/appservice/*.yaml")
		cfg.AppServiceAPI.ConfigFiles = append(cfg.AppServiceAPI.ConfigFiles, regs...)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func run(f flags) error {
	cfg, err := loadConfig(f)
	if err != nil {
		return err
	}
	log, logFiles, err := newLogger(cfg)
	if err != nil {
		return err
	}
	defer logFiles.Close()
	if err := os.MkdirAll(cfg.Myelin.DataDir, 0o700); err != nil {
		return fmt.Errorf("creating data folder: %w", err)
	}
	key, created, err := serverkey.LoadOrGenerate(cfg.Global.PrivateKeyPath)
	if err != nil {
		return fmt.Errorf("loading signing key: %w", err)
	}
	if created {
		log.Info("generated a new signing key", "path", cfg.Global.PrivateKeyPath, "key_id", key.ID)
	}

	ctx := context.Background()
	db, err := sqldb.Open(ctx, cfg.Global.Database.ConnectionString, sqldb.Options{
		MaxOpenConns:    cfg.Global.Database.MaxOpenConns,
		MaxIdleConns:    cfg.Global.Database.MaxIdleConns,
		ConnMaxLifetime: time.Duration(cfg.Global.Database.ConnMaxLifetime) * time.Second,
	})
	if err != nil {
		return err
	}
	defer db.Close()

	fedc, err := fedclient.New(fedclient.Config{
		ServerName: cfg.Global.ServerName, Key: key, OldKeys: cfg.Global.OldPrivateKeys,
		KeyValidityPeriod:    cfg.Global.KeyValidityPeriod,
		DisableTLSValidation: cfg.FederationAPI.DisableTLSValidation, DisableKeepAlives: cfg.FederationAPI.DisableHTTPKeepalives,
		AllowNetworks: cfg.FederationAPI.AllowNetworks, DenyNetworks: cfg.FederationAPI.DenyNetworks,
		KeyPerspectives: cfg.FederationAPI.KeyPerspectives, PreferDirectFetch: cfg.FederationAPI.PreferDirectFetch,
		UserAgent: "Myelin/" + clientapi.Version,
	}, db, log.With("component", "fedclient"))
	if err != nil {
		return err
	}

	roomEvents, accountData := bus.NewStream(0), bus.NewStream(0)
	users, err := userapi.New(userapi.Config{
		ServerName:          cfg.Global.ServerName,
		BCryptCost:          cfg.UserAPI.BCryptCost,
		AccessTokenLifetime: cfg.Myelin.AccessTokenLifetime,
		RegistrationTokens:  cfg.ClientAPI.RegistrationTokens,
	}, db, accountData, log.With("component", "userapi"))
	if err != nil {
		return err
	}
	remote := sender.NewRemote(sender.RemoteConfig{ServerName: cfg.Global.ServerName, KeyID: gmslKeyID(key.ID), PrivateKey: key.Private},
		fedc.Federation(), fedc.KeyRing())
	rooms, err := roomserver.New(roomserver.Config{
		ServerName:         cfg.Global.ServerName,
		KeyID:              gmslKeyID(key.ID),
		PrivateKey:         key.Private,
		DefaultRoomVersion: cfg.RoomServer.DefaultRoomVersion,
		Remote:             remote,
		Backfill:           fedc.Federation(),
		BackfillKeys:       fedc.KeyRing(),
	}, db, roomEvents, log.With("component", "roomserver"))
	if err != nil {
		return err
	}
	apps, err := appservice.Load(cfg.AppServiceAPI.ConfigFiles, cfg.Global.ServerName)
	if err != nil {
		return err
	}
	client := clientapi.New(cfg, users, rooms, remote, apps, log.With("component", "clientapi"))
	if err := client.CreateAppServiceSenders(ctx); err != nil {
		return err
	}
	syncer, err := syncapi.New(db, rooms, users, client.Authenticate, syncapi.Streams{
		Rooms: roomEvents, AccountData: accountData,
		Receipts: bus.NewStream(0), Presence: bus.NewStream(0),
		Typing: bus.NewStream(time.Now().UnixMilli()), // typing lives in memory; see syncapi
	}, log.With("component", "syncapi"))
	if err != nil {
		return err
	}
	fedCfg := federationapi.Config{
		ServerName: cfg.Global.ServerName, Key: key, Version: clientapi.Version,
	}
	fed := federationapi.New(fedCfg, fedc)
	inbound, err := federationapi.NewInbound(fedCfg, federationapi.Deps{
		DB: db, KeyRing: fedc.KeyRing(), Rooms: rooms, Users: users, EDUs: syncer, Remote: fedc.Federation(),
		Log: log.With("component", "federationapi"),
	})
	if err != nil {
		return err
	}

	blobs, err := blob.New(ctx, cfg)
	if err != nil {
		return err
	}
	media, err := mediaapi.New(cfg, mediaapi.Deps{
		DB: db, Blobs: blobs,
		Authenticate: func(r *http.Request) (string, error) {
			dev, err := client.Authenticate(r)
			if err != nil {
				return "", err
			}
			return dev.UserID, nil
		},
		VerifyFederation: inbound.Verify, Federation: fedc.Federation(), Key: key,
		Log: log.With("component", "mediaapi"),
	})
	if err != nil {
		return err
	}
	defer media.Close()

	outbound, err := sender.New(sender.Config{ServerName: cfg.Global.ServerName}, db, rooms, fedc.Federation(), roomEvents,
		syncer, log.With("component", "sender"))
	if err != nil {
		return err
	}
	if err := outbound.Start(ctx); err != nil {
		return err
	}
	defer outbound.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	router := httpx.NewRouter()
	router.Use(httpx.Observe(httpx.NewMetrics(reg), log), httpx.WithMaxBody(cfg.Myelin.MaxRequestBytes))
	router.Handle("/health", httpx.Handler(func(w http.ResponseWriter, r *http.Request) error {
		if _, err := db.CurrentSeq(r.Context(), "room_events"); err != nil {
			return err
		}
		return httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})).Methods(http.MethodGet)
	if cfg.Global.Metrics.Enabled {
		router.Handle("/metrics", basicAuth(cfg.Global.Metrics.BasicAuth, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))).Methods(http.MethodGet)
	}
	client.Register(router)
	syncer.Register(router)
	fed.Register(router)
	inbound.Register(router)
	media.Register(router)
	handler := httpx.CORS(router)

	var servers []*http.Server
	errc := make(chan error, 2)
	serve := func(addr string, tlsCfg *tls.Config) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", addr, err)
		}
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: 30 * time.Second, TLSConfig: tlsCfg,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
		servers = append(servers, srv)
		if tlsCfg != nil {
			ln = tls.NewListener(ln, tlsCfg)
		}
		log.Info("listening", "addr", ln.Addr().String(), "tls", tlsCfg != nil)
		go func() { errc <- srv.Serve(ln) }()
		return nil
	}
	// HTTPS first: a readiness probe on the plain listener (Complement's) then implies that
	// the federation port is up too.
	tlsCfg, tlsAddr, err := tlsSetup(cfg, f)
	if err != nil {
		return err
	}
	if tlsCfg != nil {
		if err := serve(tlsAddr, tlsCfg); err != nil {
			return err
		}
	}
	if cfg.Myelin.Listen != "" {
		if err := serve(cfg.Myelin.Listen, nil); err != nil {
			return err
		}
	}
	log.Info("Myelin is running", "server_name", cfg.Global.ServerName, "version", clientapi.Version, "database", db.Dialect().String())

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	select {
	case sig := <-stop:
		log.Info("stopping", "signal", sig.String())
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	syncer.Close()
	shutdownCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(shutdownCtx); err != nil {
			log.Warn("shutting down listener", "error", err)
		}
	}
	log.Info("stopped")
	return nil
}

// tlsSetup returns the HTTPS listener's config, if there is one.
func tlsSetup(cfg *config.Config, f flags) (*tls.Config, string, error) {
	if f.complement {
		cert, err := tlsutil.IssueFromCA("/complement/ca/ca.crt", "/complement/ca/ca.key", []string{cfg.Global.ServerName})
		if err != nil {
			return nil, "", fmt.Errorf("issuing the federation certificate: %w", err)
		}
		return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, ":8448", nil
	}
	if cfg.Myelin.ListenTLS == "" {
		return nil, "", nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.Myelin.TLSCert, cfg.Myelin.TLSKey)
	if err != nil {
		return nil, "", fmt.Errorf("loading TLS certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, cfg.Myelin.ListenTLS, nil
}

func basicAuth(a config.BasicAuth, next http.Handler) http.Handler {
	if a.Username == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != a.Username || p != a.Password {
			w.Header().Set("WWW-Authenticate", `Basic realm="metrics"`)
			http.Error(w, "unauthorised", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func gmslKeyID(id string) gomatrixserverlib.KeyID { return gomatrixserverlib.KeyID(id) }
