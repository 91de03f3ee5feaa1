package ship

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/superfly/ltx"
)

// testRoundTrip puts, lists, reads and deletes files in an empty replica.
func testRoundTrip(t *testing.T, r ReplicaClient) {
	ctx := context.Background()
	if dbs, err := r.Databases(ctx); err != nil || len(dbs) != 0 {
		t.Fatalf("empty replica: Databases = %q, %v", dbs, err)
	}
	type file struct {
		db           string
		level        int
		minTX, maxTX ltx.TXID
	}
	files := []file{ // not in order: listings sort
		{"app.db", 0, 3, 5}, {"app.db", 0, 1, 1}, {"app.db", 0, 2, 2},
		{"app.db", 9, 1, 5}, {"other.db", 0, 1, 1},
	}
	content := func(f file) []byte { return fmt.Appendf(nil, "%s/%d/%d-%d", f.db, f.level, f.minTX, f.maxTX) }
	created := time.Now().Add(-time.Hour).Truncate(time.Second)
	for _, f := range files {
		if err := r.PutLTX(ctx, f.db, f.level, f.minTX, f.maxTX, content(f), created); err != nil {
			t.Fatalf("PutLTX %v: %v", f, err)
		}
	}

	infos, err := r.LTXFiles(ctx, "app.db", 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, fi := range infos {
		got = append(got, fmt.Sprintf("%d:%d-%d:%d", fi.Level, fi.MinTXID, fi.MaxTXID, fi.Size))
		if age := time.Since(fi.CreatedAt); age < -time.Minute || age > 2*time.Hour {
			t.Errorf("%d-%d: CreatedAt %v is not around now or the commit time", fi.MinTXID, fi.MaxTXID, fi.CreatedAt)
		}
	}
	want := []string{"0:1-1:12", "0:2-2:12", "0:3-5:12"}
	if !slices.Equal(got, want) {
		t.Fatalf("LTXFiles(app.db, 0) = %q, want %q", got, want)
	}
	if infos, err := r.LTXFiles(ctx, "app.db", 9); err != nil || len(infos) != 1 || infos[0].Level != 9 {
		t.Fatalf("LTXFiles(app.db, 9) = %v, %v", infos, err)
	}
	if infos, err := r.LTXFiles(ctx, "missing.db", 0); err != nil || len(infos) != 0 {
		t.Fatalf("LTXFiles(missing.db) = %v, %v; want empty", infos, err)
	}

	for _, f := range files {
		if b := readLTX(t, r, f.db, f.level, f.minTX, f.maxTX); !bytes.Equal(b, content(f)) {
			t.Fatalf("OpenLTX %v = %q, want %q", f, b, content(f))
		}
	}
	if _, err := r.OpenLTX(ctx, "app.db", 0, 7, 7); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenLTX of a missing file: %v, want ErrNotFound", err)
	}
	checkRanges(t, r, "app.db", 0, 1, 1, content(files[1]))
	if _, err := r.ReadLTXRange(ctx, "app.db", 0, 7, 7, 2, 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadLTXRange of a missing file: %v, want ErrNotFound", err)
	}

	err = r.PutLTX(ctx, "app.db", 0, 2, 2, []byte("a second writer"), time.Now())
	if !errors.Is(err, ErrExists) {
		t.Fatalf("PutLTX over an existing file: %v, want ErrExists", err)
	}
	if b := readLTX(t, r, "app.db", 0, 2, 2); !bytes.Equal(b, content(file{"app.db", 0, 2, 2})) {
		t.Fatalf("existing file was overwritten: %q", b)
	}

	if dbs, err := r.Databases(ctx); err != nil || !slices.Equal(dbs, []string{"app.db", "other.db"}) {
		t.Fatalf("Databases = %q, %v", dbs, err)
	}

	gone := []*ltx.FileInfo{{Level: 0, MinTXID: 2, MaxTXID: 2}, {Level: 0, MinTXID: 7, MaxTXID: 7}}
	for range 2 { // missing files (7-7, and all of them the second time) are fine
		if err := r.DeleteLTX(ctx, "app.db", gone); err != nil {
			t.Fatalf("DeleteLTX: %v", err)
		}
	}
	if _, err := r.OpenLTX(ctx, "app.db", 0, 2, 2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenLTX after DeleteLTX: %v, want ErrNotFound", err)
	}
	if infos, err := r.LTXFiles(ctx, "app.db", 0); err != nil || len(infos) != 2 {
		t.Fatalf("LTXFiles after DeleteLTX = %v, %v; want 2 files", infos, err)
	}
	// A deleted file can be put again.
	if err := r.PutLTX(ctx, "app.db", 0, 2, 2, []byte("again"), created); err != nil {
		t.Fatalf("PutLTX after DeleteLTX: %v", err)
	}
}

// testDeleteMany deletes more files than one S3 request can name, together
// with one that does not exist, and keeps the newest: exactly that one is
// left.
func testDeleteMany(t *testing.T, r ReplicaClient) {
	ctx := context.Background()
	n := MaxDeleteBatch + 10
	var gone []*ltx.FileInfo
	for i := 1; i <= n; i++ {
		if err := r.PutLTX(ctx, "many.db", 1, ltx.TXID(i), ltx.TXID(i), []byte("x"), time.Now()); err != nil {
			t.Fatal(err)
		}
		if i < n {
			gone = append(gone, &ltx.FileInfo{Level: 1, MinTXID: ltx.TXID(i), MaxTXID: ltx.TXID(i)})
		}
	}
	gone = append(gone, &ltx.FileInfo{Level: 1, MinTXID: ltx.TXID(n + 1), MaxTXID: ltx.TXID(n + 1)})
	if err := r.DeleteLTX(ctx, "many.db", gone); err != nil {
		t.Fatalf("DeleteLTX of %d files: %v", len(gone), err)
	}
	left, err := r.LTXFiles(ctx, "many.db", 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].MinTXID != ltx.TXID(n) {
		t.Fatalf("after deleting %d of %d files, %d are left (first %v), want only %d", n-1, n, len(left), left[0], n)
	}
}

// testRacingPuts has writers race for one name: exactly one wins, the others
// get ErrExists, and the file holds the winner's bytes.
func testRacingPuts(t *testing.T, r ReplicaClient) {
	const writers = 8
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			errs[i] = r.PutLTX(context.Background(), "race.db", 0, 1, 1, fmt.Appendf(nil, "writer %d", i), time.Now())
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner < 0:
			winner = i
		case err == nil:
			t.Fatalf("writers %d and %d both stored race.db 1-1", winner, i)
		case !errors.Is(err, ErrExists):
			t.Fatalf("writer %d: %v, want ErrExists", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no writer stored race.db 1-1")
	}
	if b := readLTX(t, r, "race.db", 0, 1, 1); string(b) != fmt.Sprintf("writer %d", winner) {
		t.Fatalf("race.db 1-1 holds %q, want writer %d's bytes", b, winner)
	}
}

func readLTX(t *testing.T, r Replica, db string, level int, minTXID, maxTXID ltx.TXID) []byte {
	t.Helper()
	rc, err := r.OpenLTX(context.Background(), db, level, minTXID, maxTXID)
	if err != nil {
		t.Fatalf("OpenLTX %s %d %d-%d: %v", db, level, minTXID, maxTXID, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFileReplicaClient(t *testing.T) {
	root := filepath.Join(t.TempDir(), "not", "yet")
	r, err := OpenReplica(context.Background(), "file://"+root)
	if err != nil {
		t.Fatal(err)
	}
	if r.String() != "file://"+root {
		t.Errorf("String = %q", r.String())
	}
	testRoundTrip(t, r)
	testRacingPuts(t, r)
	testDeleteMany(t, r)
	// The commit time is the file's modification time.
	fi, err := os.Stat(filepath.Join(root, LTXPath("app.db", 0, 1, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if age := time.Since(fi.ModTime()); age < 59*time.Minute || age > 61*time.Minute {
		t.Errorf("mtime %v is not the commit time an hour ago", fi.ModTime())
	}
	// Neither successful nor refused puts leave temporary files behind.
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if strings.HasSuffix(p, ".tmp") {
			t.Errorf("temporary file left: %s", p)
		}
		return err
	})
}

func TestS3Replica(t *testing.T) {
	endpoint, bucket := startS3(t)
	ctx := context.Background()
	r, err := OpenReplica(ctx, s3URL(endpoint, bucket, "backups/host1"))
	if err != nil {
		t.Fatal(err)
	}
	if s := r.String(); !strings.HasPrefix(s, "s3://"+bucket+"/backups/host1?endpoint=") || strings.Contains(s, testS3Secret) {
		t.Errorf("String = %q", s)
	}
	testRoundTrip(t, r)
	testRacingPuts(t, r)
	testDeleteMany(t, r)

	// The object keys follow the layout, and the metadata holds the commit time.
	s := r.(*S3Replica)
	head, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{
		Bucket: aws.String(bucket), Key: aws.String("backups/host1/app.db/0000/0000000000000003-0000000000000005.ltx"),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := time.Now().Add(-time.Hour).Truncate(time.Second)
	created, err := time.Parse(time.RFC3339Nano, head.Metadata["sqlfs-created"])
	if err != nil || created.Sub(want).Abs() > time.Minute {
		t.Errorf("metadata %v: sqlfs-created is not the commit time (%v)", head.Metadata, err)
	}
	if head.Metadata["sqlfs-max-txid"] != "0000000000000005" {
		t.Errorf("metadata %v: no sqlfs-max-txid", head.Metadata)
	}

	// The server itself refuses the conditional put (412 PreconditionFailed):
	// ErrExists does not come from a check made before the upload.
	_, err = s.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String("backups/host1/app.db/0000/0000000000000001-0000000000000001.ltx"),
		Body: strings.NewReader("clobber"), IfNoneMatch: aws.String("*"),
	})
	var ae smithy.APIError
	var re *smithyhttp.ResponseError
	if !errors.As(err, &ae) || ae.ErrorCode() != "PreconditionFailed" || !errors.As(err, &re) || re.HTTPStatusCode() != 412 {
		t.Errorf("PutObject If-None-Match * over an existing key: %v, want 412 PreconditionFailed", err)
	}

	// A prefix-less replica sees this one's prefix as a database name.
	root, err := OpenReplica(ctx, s3URL(endpoint, bucket, ""))
	if err != nil {
		t.Fatal(err)
	}
	if dbs, err := root.Databases(ctx); err != nil || !slices.Equal(dbs, []string{"backups"}) {
		t.Errorf("Databases at the bucket's root = %q, %v", dbs, err)
	}
}

func TestS3ListPaginates(t *testing.T) {
	endpoint, bucket := startS3(t)
	ctx := context.Background()
	r, err := OpenReplica(ctx, s3URL(endpoint, bucket, "many"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 1100
	next := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range next {
				tx := ltx.TXID(i + 1)
				errs <- r.PutLTX(ctx, "app.db", 0, tx, tx, []byte{byte(i)}, time.Now())
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// The server answers 1000 keys a page, so one request cannot list them all.
	page, err := r.(*S3Replica).client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
		Bucket: aws.String(bucket), Prefix: aws.String("many/app.db/0000/"),
	})
	if err != nil || !aws.ToBool(page.IsTruncated) {
		t.Fatalf("first page: truncated %v, %d keys, %v; want a truncated page", aws.ToBool(page.IsTruncated), len(page.Contents), err)
	}
	infos, err := r.LTXFiles(ctx, "app.db", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != n {
		t.Fatalf("LTXFiles = %d files, want %d", len(infos), n)
	}
	for i, fi := range infos {
		if fi.MinTXID != ltx.TXID(i+1) || fi.Size != 1 {
			t.Fatalf("file %d: %d-%d size %d", i, fi.MinTXID, fi.MaxTXID, fi.Size)
		}
	}
	// A listing bounded above stops paging early and still returns exactly
	// the files in range, on either side of a page boundary.
	for _, tt := range []struct{ after, upTo ltx.TXID }{{0, 1}, {5, 10}, {990, 1010}, {0, 1050}, {1090, 5000}} {
		infos, err := LTXFilesBetween(ctx, r, "app.db", 0, tt.after, tt.upTo)
		if err != nil {
			t.Fatal(err)
		}
		want := min(tt.upTo, n) - tt.after
		if ltx.TXID(len(infos)) != want || infos[0].MinTXID != tt.after+1 || infos[len(infos)-1].MinTXID != tt.after+want {
			t.Fatalf("LTXFilesBetween(%d, %d) = %d files, want %d from %d", tt.after, tt.upTo, len(infos), want, tt.after+1)
		}
	}
}

func TestS3Errors(t *testing.T) {
	endpoint, bucket := startS3(t)
	ctx := context.Background()

	t.Run("missing bucket", func(t *testing.T) {
		r, err := OpenReplica(ctx, s3URL(endpoint, "sqlfs-no-such-bucket", "p"))
		if err != nil {
			t.Fatal(err)
		}
		_, lerr := r.LTXFiles(ctx, "app.db", 0)
		perr := r.PutLTX(ctx, "app.db", 0, 1, 1, []byte("x"), time.Now())
		for _, err := range []error{lerr, perr} {
			if err == nil || errors.Is(err, ErrExists) || !strings.Contains(err.Error(), `bucket "sqlfs-no-such-bucket" does not exist`) {
				t.Errorf("got %v, want an error naming the missing bucket", err)
			}
		}
	})

	t.Run("wrong credentials", func(t *testing.T) {
		for _, env := range []string{"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"} {
			t.Setenv(env, "wrong")
			r, err := OpenReplica(ctx, s3URL(endpoint, bucket, "p"))
			if err != nil {
				t.Fatal(err)
			}
			_, err = r.LTXFiles(ctx, "app.db", 0)
			if err == nil || !strings.Contains(err.Error(), "rejected the credentials") {
				t.Errorf("wrong %s: got %v, want an error about the credentials", env, err)
			}
		}
	})

	t.Run("server down", func(t *testing.T) {
		r, err := OpenReplica(ctx, s3URL("http://127.0.0.1:1", bucket, "p"))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		if _, err := r.LTXFiles(ctx, "app.db", 0); err == nil || !strings.Contains(err.Error(), "s3://"+bucket+"/p/app.db/0000/") {
			t.Errorf("got %v, want an error naming the prefix", err)
		}
	})
}

// TestS3Config checks how the SDK's configuration and the URL combine,
// without a server.
func TestS3Config(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	envs := []string{"AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
		"AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"}
	for _, tc := range []struct {
		name     string
		env      map[string]string
		url      string
		endpoint string // "" for the SDK's own resolution
		region   string
		attempts int
	}{
		{name: "defaults", url: "s3://b/p", region: "us-east-1", attempts: s3MaxAttempts},
		{name: "env region", env: map[string]string{"AWS_REGION": "eu-west-1"}, url: "s3://b/p", region: "eu-west-1", attempts: s3MaxAttempts},
		{name: "query region wins", env: map[string]string{"AWS_REGION": "eu-west-1"}, url: "s3://b/p?region=auto", region: "auto", attempts: s3MaxAttempts},
		{name: "query endpoint", url: "s3://b/p?endpoint=http://127.0.0.1:7070", endpoint: "http://127.0.0.1:7070", region: "us-east-1", attempts: s3MaxAttempts},
		{name: "AWS_ENDPOINT_URL_S3", env: map[string]string{"AWS_ENDPOINT_URL_S3": "http://s3.local:9000"}, url: "s3://b", endpoint: "http://s3.local:9000", region: "us-east-1", attempts: s3MaxAttempts},
		{name: "AWS_ENDPOINT_URL", env: map[string]string{"AWS_ENDPOINT_URL": "http://all.local:9000"}, url: "s3://b", endpoint: "http://all.local:9000", region: "us-east-1", attempts: s3MaxAttempts},
		{name: "service endpoint wins", env: map[string]string{"AWS_ENDPOINT_URL": "http://all.local", "AWS_ENDPOINT_URL_S3": "http://s3.local"}, url: "s3://b", endpoint: "http://s3.local", region: "us-east-1", attempts: s3MaxAttempts},
		{name: "query endpoint wins", env: map[string]string{"AWS_ENDPOINT_URL_S3": "http://s3.local"}, url: "s3://b?endpoint=https://r2.example", endpoint: "https://r2.example", region: "us-east-1", attempts: s3MaxAttempts},
		{name: "ignored env endpoint", env: map[string]string{"AWS_ENDPOINT_URL_S3": "http://s3.local", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}, url: "s3://b", region: "us-east-1", attempts: s3MaxAttempts},
		{name: "AWS_MAX_ATTEMPTS", env: map[string]string{"AWS_MAX_ATTEMPTS": "2"}, url: "s3://b", region: "us-east-1", attempts: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range envs {
				unsetenv(t, k)
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			r, err := OpenReplica(context.Background(), tc.url)
			if err != nil {
				t.Fatal(err)
			}
			o := r.(*S3Replica).client.Options()
			if got := aws.ToString(o.BaseEndpoint); got != tc.endpoint {
				t.Errorf("endpoint %q, want %q", got, tc.endpoint)
			}
			if o.UsePathStyle != (tc.endpoint != "") {
				t.Errorf("path style %v with endpoint %q", o.UsePathStyle, tc.endpoint)
			}
			if o.Region != tc.region {
				t.Errorf("region %q, want %q", o.Region, tc.region)
			}
			if got := o.Retryer.MaxAttempts(); got != tc.attempts {
				t.Errorf("max attempts %d, want %d", got, tc.attempts)
			}
		})
	}
}
