package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// defaultConfig is read when it exists and no -config is given.
var defaultConfig = "/etc/sqlfs.yml"

// configKeys are the keys a config file may hold. Each is the name of a
// flag, and sets that flag in every command that has it, unless the command
// line gives it:
//
//	data: /var/lib/sqlfs
//	mount-point: /data
//	replica: s3://bucket/backup
//	sync-replica: true
//	sync-timeout: 10s
//
// so that one file carries a server's whole setup.
var configKeys = []string{
	"data", "mount-point", "replica", "sync-replica", "sync-timeout", "shutdown-timeout",
	"restore-if-missing", "exec", "parallelism", "integrity-check",
	"levels", "snapshot-interval", "retention-l0", "retention",
	"max-backlog", "max-lag", "max-put-rate", "page-cache-mib",
}

// addConfigFlag gives a command the -config flag.
func addConfigFlag(fset *flag.FlagSet) {
	fset.String("config", "", "read flag values from the YAML `FILE` (default "+defaultConfig+" when it exists); flags on the command line win")
}

// applyConfig sets, from the config file, every flag of fs the command line
// did not set. It sets the flags' values without marking them set, so
// fs.Visit still reports the command line alone. A config file that cannot
// be read or holds a mistake is a usage error naming the file and the line.
func applyConfig(fset *flag.FlagSet) error {
	path, explicit := defaultConfig, false
	if f := fset.Lookup("config"); f != nil && f.Value.String() != "" {
		path, explicit = f.Value.String(), true
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return nil
	} else if err != nil {
		return usagef("config %s: %v", path, unwrapPathError(err))
	}
	values, err := parseConfig(data)
	if err != nil {
		return usagef("config %s: %v", path, err)
	}
	set := map[string]bool{}
	fset.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, v := range values {
		f := fset.Lookup(v.key)
		if f == nil || set[v.key] {
			continue
		}
		if err := f.Value.Set(v.value); err != nil {
			return usagef("config %s: line %d: %s: invalid value %q: %v", path, v.line, v.key, v.value, err)
		}
	}
	return nil
}

// configValue is one key of a config file, its value with $VAR and ${VAR}
// expanded, and its line for messages.
type configValue struct {
	key, value string
	line       int
}

// parseConfig reads a config file: a YAML mapping of known keys to scalars.
func parseConfig(data []byte) ([]configValue, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if len(doc.Content) == 0 {
		return nil, nil // empty file
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping of keys to values (data: /var/lib/sqlfs)", m.Line)
	}
	var values []configValue
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if !slices.Contains(configKeys, k.Value) {
			return nil, fmt.Errorf("line %d: unknown key %q (want one of %s)", k.Line, k.Value, strings.Join(configKeys, ", "))
		}
		if seen[k.Value] {
			return nil, fmt.Errorf("line %d: %s given twice", k.Line, k.Value)
		}
		seen[k.Value] = true
		if v.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("line %d: %s: want a single value", v.Line, k.Value)
		}
		values = append(values, configValue{key: k.Value, value: os.ExpandEnv(v.Value), line: v.Line})
	}
	return values, nil
}
