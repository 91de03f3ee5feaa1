package ship

import (
	"context"
	"strings"
	"testing"
)

func TestParseReplicaURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want ReplicaURL
		str  string // String(), when it differs from url
		err  string // a part of the error, "" for none
	}{
		{url: "file:///var/backup", want: ReplicaURL{Scheme: "file", Path: "/var/backup"}},
		{url: "file:///var/backup/", want: ReplicaURL{Scheme: "file", Path: "/var/backup"}, str: "file:///var/backup"},
		{url: "file://localhost/var/backup", want: ReplicaURL{Scheme: "file", Path: "/var/backup"}, str: "file:///var/backup"},
		{url: "file:///a/../b", want: ReplicaURL{Scheme: "file", Path: "/b"}, str: "file:///b"},
		{url: "file:///with%20space", want: ReplicaURL{Scheme: "file", Path: "/with space"}},
		{url: "file://backup/dir", err: "absolute path"},
		{url: "file:backup", err: "absolute path"},
		{url: "file://", err: "absolute path"},
		{url: "file:///x?sync=1", err: "no user, query or fragment"},

		{url: "s3://bucket", want: ReplicaURL{Scheme: "s3", Bucket: "bucket"}},
		{url: "s3://bucket/", want: ReplicaURL{Scheme: "s3", Bucket: "bucket"}, str: "s3://bucket"},
		{url: "s3://bucket/backup", want: ReplicaURL{Scheme: "s3", Bucket: "bucket", Prefix: "backup"}},
		{url: "s3://bucket//a/b/", want: ReplicaURL{Scheme: "s3", Bucket: "bucket", Prefix: "a/b"}, str: "s3://bucket/a/b"},
		{
			url:  "s3://bucket/backup?endpoint=http://127.0.0.1:7070&region=eu-west-1",
			want: ReplicaURL{Scheme: "s3", Bucket: "bucket", Prefix: "backup", Endpoint: "http://127.0.0.1:7070", Region: "eu-west-1"},
		},
		{
			url:  "s3://b?endpoint=https%3A%2F%2Fuser%3Apw%40r2.example",
			want: ReplicaURL{Scheme: "s3", Bucket: "b", Endpoint: "https://user:pw@r2.example"},
			str:  "s3://b?endpoint=https://r2.example",
		},
		{url: "s3://", err: "no bucket"},
		{url: "s3:///prefix", err: "no bucket"},
		{url: "s3:bucket", err: "no bucket"},
		{url: "s3://key:secret@bucket/p", err: "credentials do not belong in the URL"},
		{url: "s3://b/p?endpoint=127.0.0.1:7070", err: "not an http:// or https:// URL"},
		{url: "s3://b/p?endpoint=ftp://host", err: "not an http:// or https:// URL"},
		{url: "s3://b/p?region=", err: "empty region"},
		{url: "s3://b/p?region=a&region=b", err: `"region" given 2 times`},
		{url: "s3://b/p?endpiont=http://x", err: `unknown parameter "endpiont"`},
		{url: "s3://b/p#frag", err: "no fragment"},

		{url: "gs://bucket/p", err: `unknown replica URL scheme "gs" (want file:// or s3://)`},
		{url: "/var/backup", err: "has no scheme"},
		{url: "backup", err: "has no scheme"},
		{url: "", err: "has no scheme"},
		{url: "s3://b/%zz", err: "invalid URL escape"},
	} {
		t.Run(tc.url, func(t *testing.T) {
			u, err := ParseReplicaURL(tc.url)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *u != tc.want {
				t.Errorf("got %+v, want %+v", *u, tc.want)
			}
			str := tc.str
			if str == "" {
				str = tc.url
			}
			if u.String() != str {
				t.Errorf("String() = %q, want %q", u.String(), str)
			}
		})
	}
}

func TestOpenReplica(t *testing.T) {
	ctx := context.Background()
	r, err := OpenReplica(ctx, "file:///var/backup")
	if err != nil {
		t.Fatal(err)
	}
	if fr, ok := r.(*FileReplica); !ok || fr.Root != "/var/backup" {
		t.Fatalf("file URL opened %#v", r)
	}
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	r, err = OpenReplica(ctx, "s3://bucket/backup?endpoint=http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.(*S3Replica); !ok || r.String() != "s3://bucket/backup?endpoint=http://127.0.0.1:1" {
		t.Fatalf("s3 URL opened %T %s", r, r)
	}
	if _, err := OpenReplica(ctx, "gs://bucket"); err == nil || !strings.Contains(err.Error(), `"gs"`) {
		t.Fatalf("gs URL: %v", err)
	}
}
