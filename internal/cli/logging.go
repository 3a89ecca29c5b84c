package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// logFlags are the logging flags every command shares.
type logFlags struct {
	level  string
	format string
	file   string
}

// build returns the one logger a command passes down.
func (f logFlags) build() (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(f.level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", f.level)
	}
	var cfg zap.Config
	switch f.format {
	case "json":
		cfg = zap.NewProductionConfig()
	case "console", "":
		cfg = zap.NewDevelopmentConfig()
		cfg.Development = false
		cfg.DisableStacktrace = true
	default:
		return nil, fmt.Errorf("--log-format %q: use console or json", f.format)
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Sampling = nil
	out := "stderr"
	if f.file != "" {
		if err := os.MkdirAll(filepath.Dir(f.file), 0o755); err != nil {
			return nil, err
		}
		out = f.file
	}
	cfg.OutputPaths, cfg.ErrorOutputPaths = []string{out}, []string{out}
	return cfg.Build()
}
