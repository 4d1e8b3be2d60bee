package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/myelin-chat/myelin/internal/config"
)

// newLogger builds the logger the "logging" section asks for: each "std" entry writes to
// stderr, each "file" entry to myelin.log in its params.path folder, each at its own level.
// gomatrixserverlib logs through logrus, which is sent to the same place at warn level (debug
// when any entry is at debug). The returned closer closes the log files.
func newLogger(cfg *config.Config) (*slog.Logger, io.Closer, error) {
	var hs multiHandler
	var files closers
	debug := false
	for _, l := range cfg.Logging {
		level := parseLevel(l.Level)
		debug = debug || level <= slog.LevelDebug
		opts := &slog.HandlerOptions{Level: level}
		switch l.Type {
		case "file":
			dir, _ := l.Params["path"].(string)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, nil, fmt.Errorf("creating log folder: %w", err)
			}
			f, err := os.OpenFile(filepath.Join(dir, "myelin.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
			if err != nil {
				return nil, nil, fmt.Errorf("opening log file: %w", err)
			}
			files = append(files, f)
			hs = append(hs, slog.NewJSONHandler(f, opts))
		default:
			hs = append(hs, slog.NewTextHandler(os.Stderr, opts))
		}
	}
	if len(hs) == 0 {
		hs = append(hs, slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	log := slog.New(hs)
	logrus.SetOutput(slog.NewLogLogger(hs, slog.LevelWarn).Writer())
	logrus.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true, DisableColors: true})
	logrus.SetLevel(logrus.WarnLevel)
	if debug {
		logrus.SetLevel(logrus.DebugLevel)
	}
	return log, files, nil
}

func parseLevel(s string) slog.Level {
	switch strings.ToLower(s) {
	case "trace", "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// multiHandler sends each record to every handler that wants its level.
type multiHandler []slog.Handler

func (m multiHandler) Enabled(ctx context.Context, l slog.Level) bool {
	for _, h := range m {
		if h.Enabled(ctx, l) {
			return true
		}
	}
	return false
}

func (m multiHandler) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	for _, h := range m {
		if h.Enabled(ctx, r.Level) {
			errs = append(errs, h.Handle(ctx, r.Clone()))
		}
	}
	return errors.Join(errs...)
}

func (m multiHandler) WithAttrs(as []slog.Attr) slog.Handler {
	out := make(multiHandler, len(m))
	for i, h := range m {
		out[i] = h.WithAttrs(as)
	}
	return out
}

func (m multiHandler) WithGroup(name string) slog.Handler {
	out := make(multiHandler, len(m))
	for i, h := range m {
		out[i] = h.WithGroup(name)
	}
	return out
}

type closers []*os.File

func (c closers) Close() error {
	var errs []error
	for _, f := range c {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}
