package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"

	_ "github.com/mattn/go-sqlite3"
)

// integrityCheck runs PRAGMA integrity_check on the database file at path
// and returns an error holding what SQLite found unless it says "ok". The
// file is opened immutable: read-only, no locks, no journal or WAL looked
// for or created beside it.
func integrityCheck(ctx context.Context, path string) error {
	u := url.URL{Scheme: "file", Path: path, RawQuery: "mode=ro&immutable=1"}
	db, err := sql.Open("sqlite3", u.String())
	if err != nil {
		return err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return fmt.Errorf("integrity_check: %w", err)
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return fmt.Errorf("integrity_check: %w", err)
		}
		problems = append(problems, s)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("integrity_check: %w", err)
	}
	switch {
	case len(problems) == 1 && problems[0] == "ok":
		return nil
	case len(problems) == 0:
		return errors.New("integrity_check returned nothing")
	case len(problems) == 1:
		return fmt.Errorf("integrity_check: %s", problems[0])
	default:
		return fmt.Errorf("integrity_check: %s (and %d more problems)", strings.ReplaceAll(problems[0], "\n", " "), len(problems)-1)
	}
}
