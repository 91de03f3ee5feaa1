package ship

import (
	"context"
	"fmt"
	"net/url"
	"path"
	"strings"
)

// ReplicaURL is a parsed replica URL: file:///abs/path or
// s3://bucket/prefix?endpoint=…&region=…. Only the fields of its scheme are set.
type ReplicaURL struct {
	Scheme string // "file" or "s3"

	// Path is the absolute directory of a file:// replica, cleaned.
	Path string

	// Bucket and Prefix locate an s3:// replica. Prefix has no leading or
	// trailing '/' and may be empty.
	Bucket, Prefix string
	// Endpoint (?endpoint=) overrides the SDK's configured endpoint and
	// Region (?region=) its configured region; empty means the SDK decides.
	Endpoint, Region string
}

// ParseReplicaURL parses and checks a replica URL without touching the replica.
func ParseReplicaURL(rawURL string) (*ReplicaURL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("replica URL %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "file":
		return parseFileURL(rawURL, u)
	case "s3":
		return parseS3URL(rawURL, u)
	case "":
		return nil, fmt.Errorf("replica URL %q has no scheme (want file:// or s3://)", rawURL)
	default:
		return nil, fmt.Errorf("unknown replica URL scheme %q (want file:// or s3://)", u.Scheme)
	}
}

func parseFileURL(rawURL string, u *url.URL) (*ReplicaURL, error) {
	if u.Opaque != "" || (u.Host != "" && u.Host != "localhost") || !strings.HasPrefix(u.Path, "/") {
		return nil, fmt.Errorf("replica URL %q: a file URL needs an absolute path (file:///abs/path)", rawURL)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("replica URL %q: a file URL takes no user, query or fragment", rawURL)
	}
	return &ReplicaURL{Scheme: "file", Path: path.Clean(u.Path)}, nil
}

func parseS3URL(rawURL string, u *url.URL) (*ReplicaURL, error) {
	if u.Opaque != "" || u.Host == "" {
		return nil, fmt.Errorf("replica URL %q: no bucket (want s3://bucket/prefix)", rawURL)
	}
	if u.User != nil {
		return nil, fmt.Errorf("replica URL %q: credentials do not belong in the URL; use the AWS credential chain (AWS_ACCESS_KEY_ID, ~/.aws, …)", rawURL)
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("replica URL %q: an s3 URL takes no fragment", rawURL)
	}
	r := &ReplicaURL{Scheme: "s3", Bucket: u.Host, Prefix: strings.Trim(u.Path, "/")}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("replica URL %q: %w", rawURL, err)
	}
	for k, v := range q {
		if len(v) != 1 {
			return nil, fmt.Errorf("replica URL %q: parameter %q given %d times", rawURL, k, len(v))
		}
		switch k {
		case "endpoint":
			e, err := url.Parse(v[0])
			if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
				return nil, fmt.Errorf("replica URL %q: endpoint %q is not an http:// or https:// URL", rawURL, v[0])
			}
			r.Endpoint = v[0]
		case "region":
			if v[0] == "" {
				return nil, fmt.Errorf("replica URL %q: empty region", rawURL)
			}
			r.Region = v[0]
		default:
			return nil, fmt.Errorf("replica URL %q: unknown parameter %q (want endpoint or region)", rawURL, k)
		}
	}
	return r, nil
}

// String formats the URL back, without any credentials an endpoint may hold.
func (r *ReplicaURL) String() string {
	switch r.Scheme {
	case "file":
		return (&url.URL{Scheme: "file", Path: r.Path}).String()
	case "s3":
		u := url.URL{Scheme: "s3", Host: r.Bucket}
		if r.Prefix != "" {
			u.Path = "/" + r.Prefix
		}
		// The query is built by hand to keep "://" readable in messages.
		var q []string
		if r.Endpoint != "" {
			if e, err := url.Parse(r.Endpoint); err == nil {
				e.User = nil
				q = append(q, "endpoint="+queryEscape(e.String()))
			}
		}
		if r.Region != "" {
			q = append(q, "region="+queryEscape(r.Region))
		}
		u.RawQuery = strings.Join(q, "&")
		return u.String()
	}
	return r.Scheme + "://?"
}

// queryEscape escapes a query value but leaves ':' and '/' alone, which a
// query may hold as they are.
func queryEscape(s string) string {
	return strings.NewReplacer("%3A", ":", "%2F", "/").Replace(url.QueryEscape(s))
}

// OpenReplica opens the replica a URL names. Nothing is created or contacted:
// an s3:// replica only loads the AWS configuration, so a missing bucket or
// bad credentials show up at the first call.
func OpenReplica(ctx context.Context, rawURL string) (ReplicaClient, error) {
	u, err := ParseReplicaURL(rawURL)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "file":
		return NewFileReplica(u.Path), nil
	default: // "s3": ParseReplicaURL accepts nothing else
		return NewS3Replica(ctx, S3Config{Bucket: u.Bucket, Prefix: u.Prefix, Endpoint: u.Endpoint, Region: u.Region})
	}
}
